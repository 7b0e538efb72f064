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

/** What a finished `soulmesh … --json` printed: its exit code, its last stdout line as JSON, and its output. */
export interface CliJsonRun {
  code: number | null;
  /** Loosely typed on purpose: each test asserts the shape of what it reads. */
  json: Record<string, any> & { error?: { name: string; message: string } };
  stdout: string;
  stderr: string;
}

/**
 * Runs `soulmesh ARGS… --json` to the end in `home` against `deployment`, with the SOULMESH_* variables of this
 * environment cleared so that only what the test passes counts (`account` sets SOULMESH_ACCOUNT).
 *
 * @example
 * const { code, json } = await runCliJson(["balance"], { home, deployment: devnet.deploymentPath, account: "user" })
 */
export async function runCliJson(
  args: string[],
  options: { home: string; deployment: string; account?: string; json?: boolean; env?: Record<string, string> },
): Promise<CliJsonRun> {
  const p = runCli([...args, ...(options.json === false ? [] : ["--json"]), "--home", options.home, "--deployment", options.deployment], {
    SOULMESH_ACCOUNT: options.account ?? "",
    SOULMESH_PASSWORD: "",
    SOULMESH_RPC_URL: "",
    SOULMESH_IPFS_API: "",
    ...options.env,
  });
  p.child.stdin.end();
  const code = await p.exited();
  let json: CliJsonRun["json"] = {};
  if (options.json !== false) {
    const line = p.stdout().trim().split("\n").at(-1) ?? "";
    try {
      json = JSON.parse(line) as CliJsonRun["json"];
    } catch {
      throw new Error(`no JSON (exit ${code}); stdout: ${p.stdout()} stderr: ${p.stderr()}`);
    }
  }
  return { code, json, stdout: p.stdout(), stderr: p.stderr() };
}
