import { getAddress } from "ethers";
import { formatUnitsFixed } from "../../sdk/chain/units.js";

/** What the page needs to know about the payment token. */
export interface TokenInfo {
  symbol: string;
  decimals: number;
}

/**
 * An exact decimal amount with the token's symbol, as the CLI writes it (never rounded).
 *
 * @example
 * formatToken(1_234_567n, { symbol: "tUSD", decimals: 6 }) // "1.234567 tUSD"
 */
export function formatToken(units: bigint, token: TokenInfo): string {
  return `${formatUnitsFixed(units, token.decimals)} ${token.symbol}`;
}

/**
 * A royalty per million tokens, as decimal token units.
 *
 * @example
 * formatRoyalty(200_000n, { symbol: "tUSD", decimals: 6 }) // "0.2 tUSD / 1M tokens"
 */
export function formatRoyalty(units: bigint, token: TokenInfo): string {
  return `${formatToken(units, token)} / 1M tokens`;
}

/**
 * A whole count with thousands separators.
 *
 * @example
 * formatCount(1234567n) // "1,234,567"
 */
export function formatCount(n: bigint | number): string {
  const digits = BigInt(n).toString();
  const negative = digits.startsWith("-");
  const body = (negative ? digits.slice(1) : digits).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return negative ? `-${body}` : body;
}

/**
 * An address shortened for labels, checksummed.
 *
 * @example
 * shortAddress("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc") // "0x3C44…93BC"
 */
export function shortAddress(address: string): string {
  const a = getAddress(address);
  return `${a.slice(0, 6)}…${a.slice(-4)}`;
}

/**
 * A duration in words, to the minute ("1 h 0 min", "2 d 3 h", "45 s").
 *
 * @example
 * formatDuration(3600) // "1 h 0 min"
 */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min`;
  return `${s} s`;
}

/**
 * A Unix time as a local date and time, and how far it is from `now` ("in 1 h 0 min" or "5 min ago").
 *
 * @example
 * formatWhen(1_700_003_600, 1_700_000_000) // "14/11/2023, 23:13 (in 1 h 0 min)"
 */
export function formatWhen(at: number, now: number): string {
  const local = new Date(at * 1000).toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
  const relative = at >= now ? `in ${formatDuration(at - now)}` : `${formatDuration(now - at)} ago`;
  return `${local} (${relative})`;
}

/**
 * A byte count for progress text.
 *
 * @example
 * formatBytes(1_572_864) // "1.5 MiB"
 */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
