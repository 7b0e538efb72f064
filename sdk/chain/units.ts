// Browser-safe: the CLI and the creator dashboard show amounts the same way.

/**
 * Token units as an exact decimal: every digit kept, no trailing zeros, no rounding (the CLI and the
 * dashboard show amounts this way).
 *
 * @example
 * formatUnitsFixed(1_500_000n, 6) // "1.5"
 */
export function formatUnitsFixed(amount: bigint, decimals: number): string {
  const negative = amount < 0n;
  const abs = negative ? -amount : amount;
  const base = 10n ** BigInt(decimals);
  const whole = abs / base;
  const frac = (abs % base).toString().padStart(decimals, "0").replace(/0+$/, "");
  return `${negative ? "-" : ""}${whole}${frac ? `.${frac}` : ""}`;
}
