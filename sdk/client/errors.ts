import { SoulmeshError } from "../errors.js";
import type { UsageViolation } from "./usage.js";

/** No registered, active provider serves the model (or every one that does was excluded). */
export class NoProviderError extends SoulmeshError {
  override readonly name = "NoProviderError";
  constructor(
    readonly modelSha256: string,
    /** Why candidates were left out, one line each (unreachable, no quote, dropped for overcharging…). */
    readonly reasons: string[] = [],
  ) {
    super(
      `No active provider serves model ${modelSha256}: start one with \`soulmesh provider start\` or check the registry` +
        (reasons.length > 0 ? ` (${reasons.join("; ")}).` : "."),
    );
  }
}

/** Why one provider failed one attempt at a turn. */
export interface ProviderFailure {
  provider: string;
  /** A short kind: "stall", "died", "busy", "rejected", "receipt", "price", "funds", "error". */
  kind: ProviderFailureKind;
  error: unknown;
}

/**
 * "price": the provider asked more than it was ranked with (skipped for the rest of the chat); "funds": the
 * payer's lane with it, free deposit and wallet cannot cover a turn there.
 */
export type ProviderFailureKind = "stall" | "died" | "busy" | "rejected" | "receipt" | "price" | "funds" | "error";

/** Every provider the client could try failed the same turn; nothing was paid for it. */
export class AllProvidersFailedError extends SoulmeshError {
  override readonly name = "AllProvidersFailedError";
  constructor(
    readonly modelSha256: string,
    readonly failures: ProviderFailure[],
  ) {
    const lines = failures.map((f) => `${f.provider}: ${f.kind} (${f.error instanceof Error ? f.error.message : String(f.error)})`);
    super(
      `Every provider of model ${modelSha256} failed this turn, which was not charged: ${lines.join("; ")}. ` +
        `Send the turn again later, raise stallTimeoutMs if providers are slow, or start a provider with \`soulmesh provider start\`.`,
    );
  }
}

/** No chunk came from the provider within the stall timeout; the client gave up on it. */
export class ProviderStalledError extends SoulmeshError {
  override readonly name = "ProviderStalledError";
  constructor(
    readonly provider: string,
    readonly stallTimeoutMs: number,
  ) {
    super(
      `Provider ${provider} sent nothing for ${stallTimeoutMs} ms; the turn moves to another provider. ` +
        `Raise stallTimeoutMs if long prompts take longer to start.`,
    );
  }
}

/** The provider broke the stream's order (a chunk index skipped or repeated) or ended without a result. */
export class ProviderStreamCorruptError extends SoulmeshError {
  override readonly name = "ProviderStreamCorruptError";
  constructor(
    readonly provider: string,
    detail: string,
  ) {
    super(`Provider ${provider} sent a broken inference stream (${detail}); the turn moves to another provider.`);
  }
}

/** The provider refused to open a session (SessionRejected); `code` is its wire code. */
export class SessionRejectedError extends SoulmeshError {
  override readonly name = "SessionRejectedError";
  constructor(
    readonly provider: string,
    readonly code: string,
    readonly remoteMessage: string,
    readonly retryable: boolean,
  ) {
    super(`Provider ${provider} refused the session (${code}: ${remoteMessage}); trying another provider.`);
  }
}

/**
 * The provider's usage or receipt broke a rule (see `checkTurnUsage`). The client paid at most the capped,
 * correct amount and will not use this provider again.
 */
export class UsageViolationError extends SoulmeshError {
  override readonly name = "UsageViolationError";
  constructor(
    readonly provider: string,
    readonly violation: UsageViolation,
  ) {
    super(`Provider ${provider} broke the usage rules (${violation.kind}: ${violation.message}); it is dropped and was paid no more than was due.`);
  }
}

/** The next turn could cost more than what is left of the chat's spending cap (provider, royalty and fee together). */
export class SpendingCapReachedError extends SoulmeshError {
  override readonly name = "SpendingCapReachedError";
  constructor(
    readonly spent: bigint,
    readonly cap: bigint,
    readonly needed: bigint,
  ) {
    super(
      `This chat has spent ${spent} of its spending cap of ${cap} token units (provider, royalty and fee), and the next ` +
        `turn may cost up to ${needed}: open a new chat with a higher spendingCap, or ask for fewer maxTokens.`,
    );
  }
}

/** What the payer's funds held when a turn could not be paid for: all in token units. */
export interface FundsShortfall {
  /** The provider whose lane was short. */
  provider: string;
  /** The worst case of the next turn, full price. */
  needed: bigint;
  /** What the lane with `provider` holds beyond what this client vouched to it unsettled. */
  lane: bigint;
  /** The free deposit (in no lane). */
  deposit: bigint;
  /** Tokens in the payer's wallet (a permit could commit them). */
  wallet: bigint;
}

/**
 * The payer's funds cannot cover the next turn: its lane with the provider, its free deposit and its wallet
 * together fall short of the turn's worst-case cost (full price), or the chat's spending cap exceeds them
 * at every provider.
 */
export class EscrowTooLowError extends SoulmeshError {
  override readonly name = "EscrowTooLowError";
  constructor(
    readonly payer: string,
    readonly spendingCap: bigint,
    readonly shortfall?: FundsShortfall,
  ) {
    super(
      shortfall === undefined
        ? `The escrow deposit of ${payer} does not cover a spending cap of ${spendingCap} at any provider: ` +
            `deposit more in the InferenceEscrow, or open the chat with a lower spendingCap.`
        : `The funds of ${payer} cannot pay a turn at provider ${shortfall.provider}: it may cost up to ${shortfall.needed} ` +
            `token units (provider, royalty and fee), and the lane with it holds ${shortfall.lane}, the free deposit ` +
            `${shortfall.deposit}, the wallet ${shortfall.wallet}. Deposit more in the InferenceEscrow, or ask for fewer maxTokens.`,
    );
  }
}

/**
 * A provider's quote at session open asks more than the quote it was ranked with, or more than the ranking's
 * maxPrices (bait and switch). The client signs nothing at those prices; the provider is skipped for the rest
 * of the chat.
 */
export class QuoteRaisedError extends SoulmeshError {
  override readonly name = "QuoteRaisedError";
  constructor(
    readonly provider: string,
    /** The prices asked now, per million input/output tokens. */
    readonly quoted: { input: bigint; output: bigint },
    /** The most this chat accepts from it: the ranked quote, lowered to maxPrices. */
    readonly ceiling: { input: bigint; output: bigint },
  ) {
    super(
      `Provider ${provider} now asks ${quoted.input}/${quoted.output} per million input/output tokens, above the ` +
        `${ceiling.input}/${ceiling.output} it was chosen for: nothing was signed at those prices; the turn moves to another provider.`,
    );
  }
}

/**
 * The payer's lane with a provider has a release pending (a withdrawal was requested): the client does not
 * commit to it again nor open sessions against it, which would undo the withdrawal.
 */
export class LaneReleasingError extends SoulmeshError {
  override readonly name = "LaneReleasingError";
  constructor(
    readonly provider: string,
    readonly releaseAt: bigint,
  ) {
    super(
      `The lane with provider ${provider} is being released (a withdrawal was requested; it completes at ${releaseAt}): ` +
        `cancel the withdrawal to chat with this provider again (the escrow's cancelRelease), or let the turn use another provider.`,
    );
  }
}

/** Committing funds to a provider's lane failed: the one transaction the client sends did not go through. */
export class LaneCommitError extends SoulmeshError {
  override readonly name = "LaneCommitError";
  constructor(
    readonly provider: string,
    readonly amount: bigint,
    detail: string,
    options?: ErrorOptions,
  ) {
    super(
      `Could not commit ${amount} token units to the lane with provider ${provider}: ${detail}. The first chat with a ` +
        `provider sends one transaction: connect the signer to a JSON-RPC provider and give it gas, or commit with the escrow's commit().`,
      options,
    );
  }
}

/**
 * The client refused to sign a voucher whose cumulative cost (provider, royalty and fee) exceeds the session's
 * spending cap. Checks before the turn make this unreachable; it guards the rule itself.
 */
export class VoucherAboveCapError extends SoulmeshError {
  override readonly name = "VoucherAboveCapError";
  constructor(
    readonly provider: string,
    readonly cost: bigint,
    readonly cap: bigint,
  ) {
    super(`A voucher to ${provider} would cost ${cost} token units in all, above its session's cap of ${cap}: it was not signed.`);
  }
}

/** The agent, persona, model and adapter given to openChat disagree with the chain. */
export class PersonaMismatchError extends SoulmeshError {
  override readonly name = "PersonaMismatchError";
  constructor(detail: string) {
    super(`${detail}. Pass the agent's own personaId, the persona's base model SHA-256 and its adapter (CID and SHA-256) from its manifest.`);
  }
}

/** A chat turn was started while another one of the same chat was running. */
export class TurnInProgressError extends SoulmeshError {
  override readonly name = "TurnInProgressError";
  constructor() {
    super("A turn of this chat is still running: await it (or abort it with its signal) before sending the next one.");
  }
}

/** The chat was closed. */
export class ChatClosedError extends SoulmeshError {
  override readonly name = "ChatClosedError";
  constructor() {
    super("This chat is closed: open a new one with openChat().");
  }
}

/** Options that cannot work (e.g. a session shorter than the provider's minimum). */
export class InvalidChatOptionsError extends SoulmeshError {
  override readonly name = "InvalidChatOptionsError";
  constructor(detail: string) {
    super(`Invalid chat options: ${detail}.`);
  }
}
