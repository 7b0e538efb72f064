import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { fileURLToPath } from "node:url";

export const SOULMESH_BIN = fileURLToPath(new URL("../../cli/bin/soulmesh.js", import.meta.url));

/** A `soulmesh` child process with its output collected. */
export interface CliProcess {
  child: ChildProcessWithoutNullStreams;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stdout line that parses as JSON. */
  firstJson<T = unknown>(timeoutMs?: number): Promise<T>;
  /** Resolves with the exit code. */
  exited(): Promise<number | null>;
}

/**
 * Runs `soulmesh ARGS…` with this Node.js.
 *
 * @example
 * const cli = runCli(["devnet", "--port", "0", "--json"], { SOULMESH_HOME: home })
 */
export function runCli(args: string[], env: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, [SOULMESH_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited: () => exit,
    firstJson<T>(timeoutMs = 60_000) {
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no JSON within ${timeoutMs} ms; stderr: ${err}`)), timeoutMs);
        const check = () => {
          for (const line of out.split("\n")) {
            try {
              const value = JSON.parse(line) as T;
              clearTimeout(timer);
              child.stdout.off("data", check);
              return resolve(value);
            } catch {
              // Not JSON yet.
            }
          }
        };
        child.stdout.on("data", check);
        void exit.then((code) => reject(new Error(`exited with ${code} before printing JSON; stderr: ${err}`)));
        check();
      });
    },
  };
}
