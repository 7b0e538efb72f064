// Helpers the benchmarks share (files starting with "_" are not benchmarks themselves).

/** Progress for humans, on stderr: stdout carries only the figures' JSON line. */
export const log = (msg: string): void => void process.stderr.write(`${msg}\n`);

/**
 * A positive integer option `--NAME N` of the benchmark's command line, or `fallback`.
 *
 * @example
 * const runs = argNumber("runs", 3) // npm run bench -- kv-resume --runs 5
 */
export function argNumber(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(process.argv[i + 1]);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} needs a positive integer`);
  return value;
}

/** The median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** A figure rounded for the JSON line. */
export const round = (value: number, digits = 1): number => Number(value.toFixed(digits));
