/**
 * The voucher protocol (/soulmesh/voucher/1.0.0), provider side: the payer's signed cumulative voucher for
 * an open session. It must pay for no more than the session has served (a client never pays ahead, so a
 * voucher can never stand for tokens still to come), at exactly the session's rates (prices, royalty and fee:
 * the escrow charges what the voucher carries), and its full cumulative cost must stay within the session's
 * spending cap, which its open reserved against the payer's lane; the voucher book then checks the signature,
 * domain and expiry and keeps it for settlement, and the session counts it as paid. A session its payer closed
 * takes only the voucher for exactly its served totals, and is removed (and settled) once it holds it.
 */
import { InvalidVoucherError } from "../../sdk/chain/errors.js";
import { sessionCost, type Voucher } from "../../sdk/chain/voucher.js";
import {
  InternalError,
  InvalidMessageError,
  InvalidSignatureError,
  ProtocolError,
  SessionExpiredError,
  SessionNotFoundError,
  voucherFromWire,
  type VoucherAck,
  type VoucherMessage,
} from "../../sdk/protocol/index.js";
import {
  VoucherCumulativeDecreasedError,
  VoucherExpiredError,
  VoucherExpiryTooFarError,
  VoucherPriceMismatchError,
  VoucherRateMismatchError,
  VoucherReplayError,
  VoucherSessionSupersededError,
  VoucherSignatureError,
  VoucherWrongDomainError,
  VoucherWrongProviderError,
} from "../billing/errors.js";
import { sessionKeyOf, type VoucherBook } from "../billing/voucher-book.js";
import type { ProviderSession, SessionTable } from "./sessions.js";

/** What the voucher protocol needs of the provider. */
export interface VoucherContext {
  book: VoucherBook;
  table: SessionTable;
  onAccepted: (session: ProviderSession, totals: { inputTokens: bigint; outputTokens: bigint }) => void;
}

/**
 * The voucher protocol's handler: answers VoucherAck with the totals the provider now counts as paid.
 *
 * @example
 * const accept = voucherHandler({ book, table, onAccepted })
 * await handleProtocol(libp2p, "voucher", { handler: (message, { signal }) => accept(message, signal) })
 */
export function voucherHandler(ctx: VoucherContext): (message: VoucherMessage, signal: AbortSignal) => Promise<VoucherAck> {
  return async (message, signal) => {
    let voucher: Voucher;
    try {
      voucher = voucherFromWire(message.voucher);
    } catch (err) {
      throw wireError(err);
    }
    const session = ctx.table.byKey(sessionKeyOf(voucher));
    if (session === undefined) {
      throw new SessionNotFoundError(
        `No open session ${voucher.session} of payer ${voucher.payer} and agent ${voucher.agentId} on this provider.`,
      );
    }
    if (voucher.inputTokens > session.served.inputTokens || voucher.outputTokens > session.served.outputTokens) {
      throw new InvalidMessageError(
        `The voucher pays ${voucher.inputTokens}/${voucher.outputTokens} input/output tokens but session ` +
          `${session.sessionId} has served ${session.served.inputTokens}/${session.served.outputTokens}: vouchers carry ` +
          `the cumulative totals of the last receipt, never more.`,
      );
    }
    if (voucher.priceInputPerMillion !== session.prices.input || voucher.priceOutputPerMillion !== session.prices.output) {
      throw new InvalidMessageError(
        `The voucher prices ${voucher.priceInputPerMillion}/${voucher.priceOutputPerMillion} per million tokens; the ` +
          `session was opened at ${session.prices.input}/${session.prices.output}.`,
      );
    }
    if (voucher.royaltyPerMillion !== session.rates.royaltyPerMillion || voucher.feeBps !== session.rates.feeBps) {
      throw new InvalidMessageError(
        `The voucher carries royalty ${voucher.royaltyPerMillion} per million tokens and fee ${voucher.feeBps} bps; the ` +
          `session was opened at ${session.rates.royaltyPerMillion} and ${session.rates.feeBps}.`,
      );
    }
    // A session its payer closed with a turn unpaid takes one voucher more: exactly the served totals that its
    // session.closed answered, nothing less (it then leaves and is settled).
    if (
      session.ending === "closed" &&
      (voucher.inputTokens !== session.served.inputTokens || voucher.outputTokens !== session.served.outputTokens)
    ) {
      throw new InvalidMessageError(
        `Session ${session.sessionId} is closing: it takes only the voucher for its served totals ` +
          `${session.served.inputTokens}/${session.served.outputTokens}, not ${voucher.inputTokens}/${voucher.outputTokens}.`,
      );
    }
    const cost = sessionCost(voucher, session.rates);
    if (cost > session.spendingCap) {
      throw new InvalidMessageError(
        `The voucher's totals cost ${cost} in all (provider, royalty and fee), above session ${session.sessionId}'s ` +
          `spending cap ${session.spendingCap}: only the cap is reserved against the payer's lane.`,
      );
    }
    // The book keeps only a session's latest voucher: one expiring sooner than the session would leave the
    // whole session unsettleable once it lapses (and one later than the escrow's lifetime could not settle
    // before the payer withdraws), while the credit rule counts it as paid. Vouchers carry the request's expiry.
    if (voucher.expiry !== session.expiry) {
      throw new InvalidMessageError(
        `The voucher expires at ${voucher.expiry}; session ${session.sessionId} was opened to expire at ` +
          `${session.expiry}, the expiry every voucher of it must carry.`,
      );
    }
    try {
      await ctx.book.accept(voucher, message.signature, { rates: session.rates, signal });
    } catch (err) {
      signal.throwIfAborted();
      // The same voucher sent again (its ack was lost on the way back) is acknowledged again, not refused:
      // the client could not otherwise tell a lost ack from a refusal, and would fail over for nothing.
      if (!(err instanceof VoucherReplayError && (await isHeld(ctx.book, voucher, message.signature, signal)))) throw wireError(err);
    }
    // Vouchers of a session are accepted in the book's order, each above the last; max() keeps a late
    // resolution from lowering what is counted as paid.
    session.vouched = {
      inputTokens: max(session.vouched.inputTokens, voucher.inputTokens),
      outputTokens: max(session.vouched.outputTokens, voucher.outputTokens),
    };
    ctx.onAccepted(session, { inputTokens: voucher.inputTokens, outputTokens: voucher.outputTokens });
    // Closed or superseded, and now fully vouched: removed and settled.
    session.finishIfPaid();
    return {
      type: "voucher.ack",
      session: voucher.session.toString(),
      inputTokens: voucher.inputTokens.toString(),
      outputTokens: voucher.outputTokens.toString(),
    };
  };
}

const max = (a: bigint, b: bigint): bigint => (a > b ? a : b);

/** Whether the book's latest voucher of the session is exactly this one. */
async function isHeld(book: VoucherBook, voucher: Voucher, signature: string, signal: AbortSignal): Promise<boolean> {
  const entry = await book.get(sessionKeyOf(voucher), { signal });
  return (
    entry !== undefined &&
    entry.signature.toLowerCase() === signature.toLowerCase() &&
    entry.voucher.inputTokens === voucher.inputTokens &&
    entry.voucher.outputTokens === voucher.outputTokens
  );
}

/** The book's refusals as the wire names them. */
function wireError(err: unknown): ProtocolError {
  if (err instanceof ProtocolError) return err;
  if (err instanceof VoucherSignatureError) return new InvalidSignatureError(err.message);
  if (err instanceof VoucherExpiredError) return new SessionExpiredError(err.message);
  if (
    err instanceof VoucherWrongProviderError ||
    err instanceof VoucherWrongDomainError ||
    err instanceof VoucherExpiryTooFarError ||
    err instanceof VoucherReplayError ||
    err instanceof VoucherCumulativeDecreasedError ||
    err instanceof VoucherSessionSupersededError ||
    err instanceof VoucherPriceMismatchError ||
    err instanceof VoucherRateMismatchError ||
    err instanceof InvalidVoucherError
  ) {
    return new InvalidMessageError(err.message);
  }
  return new InternalError("The provider could not record the voucher; retry later.", { cause: err });
}
