import { SoulmeshError } from "../../sdk/errors.js";

/** The signature does not recover the voucher's payer for this escrow and chain: forged or corrupted. */
export class VoucherSignatureError extends SoulmeshError {
  override readonly name = "VoucherSignatureError";
  constructor(readonly payer: string) {
    super(
      `The voucher's signature is not ${payer}'s for this escrow and chain: refusing it. ` +
        `The client must sign the voucher with the payer's key (smart-contract wallets are not accepted offline).`
    );
  }
}

/** The payer signed for another chain or another escrow contract than this node settles on. */
export class VoucherWrongDomainError extends SoulmeshError {
  override readonly name = "VoucherWrongDomainError";
  constructor(
    readonly expected: { chainId: bigint; address: string },
    readonly actual: { chainId: bigint; address: string }
  ) {
    super(
      `The voucher is signed for escrow ${actual.address} on chain ${actual.chainId}, but this provider settles on ` +
        `${expected.address} on chain ${expected.chainId}. The client must use this provider's deployment.`
    );
  }
}

/** The voucher pays another provider than this node. */
export class VoucherWrongProviderError extends SoulmeshError {
  override readonly name = "VoucherWrongProviderError";
  constructor(readonly expected: string, readonly actual: string) {
    super(`The voucher pays provider ${actual}, but this node is ${expected}. The client must name this provider.`);
  }
}

/** The voucher expired, or expires too soon to be settled. */
export class VoucherExpiredError extends SoulmeshError {
  override readonly name = "VoucherExpiredError";
  constructor(readonly expiry: bigint, readonly latestAcceptable: bigint) {
    super(
      `The voucher expires at ${expiry}, before ${latestAcceptable} (now plus the time needed to settle it). ` +
        `The client must sign vouchers with a later expiry.`
    );
  }
}

/** The voucher's expiry is further away than the escrow allows: it could not settle now. */
export class VoucherExpiryTooFarError extends SoulmeshError {
  override readonly name = "VoucherExpiryTooFarError";
  constructor(readonly expiry: bigint, readonly latestAllowed: bigint) {
    super(
      `The voucher expires at ${expiry}, after ${latestAllowed}: the escrow's longest voucher lifetime. ` +
        `The client must sign vouchers with an earlier expiry.`
    );
  }
}

/** The voucher repeats the session's totals already accepted: nothing new to pay. */
export class VoucherReplayError extends SoulmeshError {
  override readonly name = "VoucherReplayError";
  constructor(readonly key: string, readonly inputTokens: bigint, readonly outputTokens: bigint) {
    super(
      `A voucher with totals ${inputTokens}/${outputTokens} was already accepted for session ${key}: replay refused.`
    );
  }
}

/** A cumulative total is below what was already accepted for the session. */
export class VoucherCumulativeDecreasedError extends SoulmeshError {
  override readonly name = "VoucherCumulativeDecreasedError";
  constructor(
    readonly key: string,
    readonly accepted: { inputTokens: bigint; outputTokens: bigint },
    readonly offered: { inputTokens: bigint; outputTokens: bigint }
  ) {
    super(
      `Session ${key} already has a voucher for ${accepted.inputTokens}/${accepted.outputTokens} tokens; ` +
        `one for ${offered.inputTokens}/${offered.outputTokens} is below it. Vouchers carry cumulative totals.`
    );
  }
}

/** The session number is below the channel's latest: it could never settle after the later one. */
export class VoucherSessionSupersededError extends SoulmeshError {
  override readonly name = "VoucherSessionSupersededError";
  constructor(readonly channel: string, readonly latestSession: bigint, readonly session: bigint) {
    super(
      `Session ${session} of channel ${channel} is below its latest session ${latestSession}. ` +
        `Open a new session with nextSessionNumber(${latestSession}).`
    );
  }
}

/** The voucher's prices differ from those agreed (or from the session's earlier vouchers). */
export class VoucherPriceMismatchError extends SoulmeshError {
  override readonly name = "VoucherPriceMismatchError";
  constructor(
    readonly expected: { input: bigint; output: bigint },
    readonly actual: { input: bigint; output: bigint }
  ) {
    super(
      `The voucher prices ${actual.input}/${actual.output} per million tokens, but ${expected.input}/${expected.output} ` +
        `were agreed. The client must sign the agreed prices.`
    );
  }
}

/**
 * The voucher's royalty or fee differs from the session's agreed one (or from the session's earlier vouchers):
 * the escrow charges exactly what a voucher carries, so a lower rate could fail to settle and a higher one would
 * charge the payer more than it agreed.
 */
export class VoucherRateMismatchError extends SoulmeshError {
  override readonly name = "VoucherRateMismatchError";
  constructor(readonly rate: "royaltyPerMillion" | "feeBps", readonly expected: bigint, readonly actual: bigint) {
    super(
      `The voucher's ${rate} is ${actual}, but ${expected} was agreed for its session. The client must sign the ` +
        `session's agreed royalty and fee.`
    );
  }
}

/** The book was used before `start()` or after `stop()`. */
export class VoucherBookClosedError extends SoulmeshError {
  override readonly name = "VoucherBookClosedError";
  constructor(readonly dir: string) {
    super(`The voucher book at ${dir} is not open: call start() first (and not after stop()).`);
  }
}

/** No session with this key in the book. */
export class UnknownSessionError extends SoulmeshError {
  override readonly name = "UnknownSessionError";
  constructor(readonly key: string) {
    super(`No voucher was accepted for session ${key}.`);
  }
}

/** A settlement attempt failed and will be retried on the next trigger. */
export class SettlementFailedError extends SoulmeshError {
  override readonly name = "SettlementFailedError";
  constructor(readonly keys: readonly string[], readonly attempts: number, cause: unknown) {
    super(
      `Settling ${keys.length} voucher(s) failed after ${attempts} attempt(s): ` +
        `${
          cause instanceof Error ? cause.message : String(cause)
        }. They stay in the book and are retried on the next ` +
        `trigger; check the RPC endpoint and the provider's gas balance.`,
      { cause }
    );
  }
}

/**
 * The escrow refused this node's settlement transaction's sender: it is neither the vouchers' provider nor a
 * settler the provider authorised. The node's own misconfiguration, not the vouchers' fault: they stay in the
 * book, untouched, until the key is fixed.
 */
export class SettlerNotAuthorisedError extends SoulmeshError {
  override readonly name = "SettlerNotAuthorisedError";
  constructor(readonly provider: string, readonly sender: string) {
    super(
      `The escrow refused to let ${sender} settle vouchers of provider ${provider} (Escrow__NotProviderOrSettler). ` +
        `Settle with the provider's own key, or authorise this key with the escrow's setSettler(${sender}, true) ` +
        `sent from the provider. The vouchers stay in the book.`
    );
  }
}
