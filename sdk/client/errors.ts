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
  /** A short kind: "stall", "died", "busy", "rejected", "receipt", "error". */
  kind: ProviderFailureKind;
  error: unknown;
}

export type ProviderFailureKind = "stall" | "died" | "busy" | "rejected" | "receipt" | "error";

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

/** The next turn could cost more than what is left of the chat's spending cap. */
export class SpendingCapReachedError extends SoulmeshError {
  override readonly name = "SpendingCapReachedError";
  constructor(
    readonly spent: bigint,
    readonly cap: bigint,
    readonly needed: bigint,
  ) {
    super(
      `This chat has spent ${spent} of its spending cap of ${cap} token units, and the next turn may cost up to ${needed}: ` +
        `open a new chat with a higher spendingCap, or ask for fewer maxTokens.`,
    );
  }
}

/** The payer's escrow deposit does not cover the spending cap at any provider. */
export class EscrowTooLowError extends SoulmeshError {
  override readonly name = "EscrowTooLowError";
  constructor(
    readonly payer: string,
    readonly spendingCap: bigint,
  ) {
    super(
      `The escrow deposit of ${payer} does not cover a spending cap of ${spendingCap} at any provider: ` +
        `deposit more in the InferenceEscrow, or open the chat with a lower spendingCap.`,
    );
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
