import { createInterface } from "node:readline/promises";
import { Writable } from "node:stream";
import { SoulmeshError } from "../../sdk/errors.js";

/** No password in the environment and no terminal to ask on. */
export class PasswordRequiredError extends SoulmeshError {
  override readonly name = "PasswordRequiredError";
  constructor(readonly purpose: string) {
    super(`A password is needed to ${purpose}, and there is no terminal to ask on: set SOULMESH_PASSWORD.`);
  }
}

/** The two passwords typed for a new keystore differ, or the password is empty. */
export class PasswordMismatchError extends SoulmeshError {
  override readonly name = "PasswordMismatchError";
  constructor(reason: "mismatch" | "empty") {
    super(
      reason === "empty"
        ? "The password is empty; choose a non-empty one (or set SOULMESH_PASSWORD)."
        : "The two passwords differ; run the command again and type the same password twice.",
    );
  }
}

/** Where secrets are read from; the process's own by default, replaceable in tests. */
export interface SecretIo {
  env: NodeJS.ProcessEnv;
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
}

const processIo = (): SecretIo => ({ env: process.env, stdin: process.stdin, stderr: process.stderr });

/**
 * Asks a question on the terminal without echoing the answer.
 *
 * @example
 * const pw = await promptHidden("Password: ")
 */
export async function promptHidden(prompt: string, io: SecretIo = processIo(), signal?: AbortSignal): Promise<string> {
  // readline echoes what is typed to its output: give it one that drops everything.
  const muted = new Writable({ write: (_chunk, _enc, done) => done() });
  const rl = createInterface({ input: io.stdin, output: muted, terminal: true });
  io.stderr.write(prompt);
  try {
    return await rl.question("", signal ? { signal } : {});
  } finally {
    rl.close();
    io.stderr.write("\n");
  }
}

/**
 * The password of an existing keystore: SOULMESH_PASSWORD, else a hidden prompt on a terminal.
 *
 * @example
 * const password = await readPassword("unlock wallet savings")
 * @throws PasswordRequiredError when neither is available.
 */
export async function readPassword(purpose: string, io: SecretIo = processIo(), signal?: AbortSignal): Promise<string> {
  const env = io.env.SOULMESH_PASSWORD;
  if (env !== undefined && env !== "") return env;
  if (!io.stdin.isTTY) throw new PasswordRequiredError(purpose);
  return promptHidden(`Password to ${purpose}: `, io, signal);
}

/**
 * The password for a new keystore: SOULMESH_PASSWORD, else typed twice on a terminal.
 *
 * @example
 * const password = await readNewPassword("encrypt wallet savings")
 * @throws PasswordRequiredError without either; PasswordMismatchError when the two typed differ.
 */
export async function readNewPassword(purpose: string, io: SecretIo = processIo(), signal?: AbortSignal): Promise<string> {
  const env = io.env.SOULMESH_PASSWORD;
  if (env !== undefined && env !== "") return env;
  if (!io.stdin.isTTY) throw new PasswordRequiredError(purpose);
  const first = await promptHidden(`New password to ${purpose}: `, io, signal);
  if (first === "") throw new PasswordMismatchError("empty");
  const second = await promptHidden("Type it again: ", io, signal);
  if (first !== second) throw new PasswordMismatchError("mismatch");
  return first;
}

/**
 * Reads a secret from standard input: a hidden prompt on a terminal, else everything piped in, trimmed.
 *
 * @example
 * const key = await readSecretFromStdin("Private key (0x…) or mnemonic: ")
 */
export async function readSecretFromStdin(prompt: string, io: SecretIo = processIo(), signal?: AbortSignal): Promise<string> {
  if (io.stdin.isTTY) return (await promptHidden(prompt, io, signal)).trim();
  const chunks: Buffer[] = [];
  for await (const chunk of io.stdin) {
    signal?.throwIfAborted();
    chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
  }
  return Buffer.concat(chunks).toString("utf8").trim();
}
