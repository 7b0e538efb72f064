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

/** Chat text the bench model tokenizes into whole words (its vocabulary's). */
const WORDS = (
  "the people of the world live near the river and the sea they work in the city at night and walk home through " +
  "the old town where children play music in the street while their mother and father read a book about the " +
  "mountain the north wind and the long story of a little ship that came back from the ocean"
).split(" ");

/** A sentence of `n` words from the vocabulary, different for each `seed`. */
export function sentence(seed: number, n: number): string {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(WORDS[(seed * 13 + i * 7) % WORDS.length]!);
  return `${out.join(" ")}.`;
}

/**
 * The `p`th percentile (0–100) of `values`, interpolated between ranks; NaN for an empty list.
 *
 * @example
 * percentile([1, 2, 3, 4], 50) // 2.5
 */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}
