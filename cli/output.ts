import { SoulmeshError } from "../sdk/errors.js";

/**
 * How a command talks to its user: progress goes to stderr as it happens, the result to stdout at the end,
 * as text or, with `--json`, as one JSON object (bigints as decimal strings).
 */
export interface Output {
  readonly json: boolean;
  /** A progress line for humans; silent with --json. */
  progress(message: string): void;
  /** The command's result: `text` for humans, `value` as JSON. */
  result(value: unknown, text: string): void;
}

/**
 * Creates the output of a command.
 *
 * @example
 * const out = createOutput({ json: opts.json })
 * out.progress("deploying…")
 * out.result({ chainId: 31337 }, "Deployed on chain 31337")
 */
export function createOutput(options: { json: boolean }): Output {
  return {
    json: options.json,
    progress(message) {
      if (!options.json) process.stderr.write(`${message}\n`);
    },
    result(value, text) {
      process.stdout.write(options.json ? `${toJson(value)}\n` : `${text}\n`);
    },
  };
}

/**
 * JSON with bigints as decimal strings.
 *
 * @example
 * toJson({ amount: 5n }) // '{"amount":"5"}'
 */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
}

/**
 * Prints an error the way every command does, and returns the exit code: 1 for a known failure (whose
 * message says what to do next), 2 for a bug.
 */
export function reportError(err: unknown, json: boolean): number {
  const known = err instanceof SoulmeshError;
  const name = err instanceof Error ? err.name : "Error";
  const message = err instanceof Error ? err.message : String(err);
  if (json) {
    process.stdout.write(`${toJson({ error: { name, message } })}\n`);
  } else {
    process.stderr.write(`error: ${message}\n`);
    if (!known && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  }
  return known ? 1 : 2;
}

/**
 * A count with its noun, in the plural when it is not 1.
 *
 * @example
 * plural(1, "turn") // "1 turn"
 */
export function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}
