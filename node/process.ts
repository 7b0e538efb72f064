/**
 * Whether a process with this pid exists: a state file or staging folder left by a dead process can be taken
 * over, one of a live process must not be.
 *
 * @example
 * if (!isProcessAlive(state.pid)) await rm(stateFile)
 */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: alive, but another user's.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
