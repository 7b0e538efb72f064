import type { ContractTransactionResponse, TransactionReceipt } from "ethers";
import { withRevertDecoding } from "../sdk/chain/revert.js";
import { SoulmeshError } from "../sdk/errors.js";
import type { CommandContext } from "./context.js";

/** The node dropped a transaction it had accepted (replaced or evicted from its pool). */
export class TransactionDroppedError extends SoulmeshError {
  override readonly name = "TransactionDroppedError";
  constructor(readonly hash: string) {
    super(`Transaction ${hash} was dropped by the chain's node before it was mined: check the account's balance and run the command again.`);
  }
}

/**
 * Sends a transaction with a progress line, waits for it and decodes a revert; the wait (not the
 * transaction) gives up on Ctrl-C.
 *
 * @example
 * const receipt = await sendTransaction(ctx, "minting…", () => agents.mint(1n, 0n))
 * @throws ContractRevertError with the contract's custom error and what to do; TransactionDroppedError.
 */
export async function sendTransaction(
  ctx: CommandContext,
  what: string,
  tx: () => Promise<ContractTransactionResponse>,
): Promise<TransactionReceipt> {
  ctx.signal.throwIfAborted();
  ctx.out.progress(what);
  const response = await ctx.abortable(withRevertDecoding(tx()));
  const receipt = await ctx.abortable(withRevertDecoding(response.wait()));
  if (receipt === null) throw new TransactionDroppedError(response.hash);
  return receipt;
}
