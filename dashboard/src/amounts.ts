import { parseUnits } from "ethers";
import { InvalidAmountInputError } from "./errors.js";

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
