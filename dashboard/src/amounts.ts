import { parseUnits } from "ethers";
import { InvalidAmountInputError, RoyaltyAboveMaxError } from "./errors.js";
import { formatToken } from "./format.js";
import type { TokenInfo } from "./format.js";

/**
 * Parses a decimal token amount typed in a form (0 allowed), exactly.
 *
 * @example
 * parseAmountInput("Royalty", "0.2", 6) // 200_000n
 * @throws InvalidAmountInputError for anything but a non-negative decimal with at most `decimals` fraction digits.
 */
export function parseAmountInput(field: string, input: string, decimals: number): bigint {
  const text = input.trim();
  const match = /^(\d*)(?:\.(\d*))?$/.exec(text);
  if (!match || text === "" || text === "." || (match[2]?.length ?? 0) > decimals) {
    throw new InvalidAmountInputError(field, input, decimals);
  }
  return parseUnits(text.startsWith(".") ? `0${text}` : text.endsWith(".") ? text.slice(0, -1) : text, decimals);
}

/**
 * Parses a royalty per million tokens typed in a form, exactly, and refuses one above the registry's cap: the
 * registry would revert it, so nothing must be uploaded or sent for it.
 *
 * @example
 * parseRoyaltyInput("Royalty", "0.2", { symbol: "tUSD", decimals: 6 }, 1_000_000_000n) // 200_000n
 * @throws InvalidAmountInputError for text that is not an amount; RoyaltyAboveMaxError above `maxRoyaltyPerMillion`.
 */
export function parseRoyaltyInput(field: string, input: string, token: TokenInfo, maxRoyaltyPerMillion: bigint): bigint {
  const units = parseAmountInput(field, input, token.decimals);
  if (units > maxRoyaltyPerMillion) {
    throw new RoyaltyAboveMaxError(field, units, maxRoyaltyPerMillion, {
      royalty: formatToken(units, token),
      max: formatToken(maxRoyaltyPerMillion, token),
    });
  }
  return units;
}
