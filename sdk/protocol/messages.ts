import { isAddress } from "ethers";
import { z } from "zod";
import {
  MAX_CHAT_MESSAGES,
  MAX_CHUNK_TEXT_CHARS,
  MAX_ERROR_MESSAGE_CHARS,
  MAX_PROMPT_TEXT_CHARS,
  MAX_QUOTE_ADAPTERS,
  MAX_QUOTE_MODELS,
  MAX_STOP_SEQUENCE_CHARS,
  MAX_STOP_SEQUENCES,
  MAX_TOKENS_PER_TURN,
  MAX_TURN_ADAPTERS,
} from "./limits.js";

export const UINT64_MAX = (1n << 64n) - 1n;
export const UINT128_MAX = (1n << 128n) - 1n;
export const UINT256_MAX = (1n << 256n) - 1n;

/**
 * A non-negative integer up to `max`, as a decimal string without leading zeros: JSON numbers lose
 * precision above 2^53, and one spelling per value keeps signed encodings canonical.
 *
 * @example
 * uintString(UINT64_MAX).parse("18446744073709551615")
 */
export function uintString(max: bigint) {
  // 78 digits is 2^256's length; the length cap keeps BigInt() from parsing megabytes of digits.
  return z
    .string()
    .regex(UINT_DIGITS, "expected a decimal integer string")
    // zod runs a string's checks on even after one fails: BigInt() must only see what the regex let through,
    // or "1.5" would throw a SyntaxError out of safeParse (and a 64 KiB digit string would be parsed).
    .refine((s) => !UINT_DIGITS.test(s) || BigInt(s) <= max, `out of range (0..${max})`);
}

const UINT_DIGITS = /^(0|[1-9][0-9]{0,77})$/;

export const Uint16String = uintString(0xffffn);
export const Uint64String = uintString(UINT64_MAX);
export const Uint96String = uintString((1n << 96n) - 1n);
export const Uint128String = uintString(UINT128_MAX);
export const Uint256String = uintString(UINT256_MAX);

/** A 20-byte hex address; mixed case must be a valid EIP-55 checksum. */
export const Address = z
  .string()
  .regex(/^0x[0-9a-fA-F]{40}$/, "expected a 0x address")
  .refine((s) => isAddress(s), "bad address checksum");

/** A 32-byte hash as 0x + 64 hex digits (SHA-256 of a file, keccak-256 of a text, an EIP-712 digest). */
export const Bytes32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/, "expected 0x + 64 hex digits");

/** A 65-byte ECDSA signature (r, s, v). */
export const Signature = z.string().regex(/^0x[0-9a-fA-F]{130}$/, "expected a 65-byte 0x signature");

/** Token counts of one turn; JSON numbers, since a turn never nears 2^53 tokens. */
const TokenCount = z.int().min(0).max(0xffff_ffff);

// ---------------------------------------------------------------------------------------------------- errors

/** An error answered on any protocol. `code` is the error class's `name` (see `errorToWire`). */
export const ErrorMessageSchema = z.strictObject({
  type: z.literal("error"),
  code: z.string().regex(/^[A-Za-z][A-Za-z0-9]{0,63}$/, "expected an error code"),
  message: z.string().max(MAX_ERROR_MESSAGE_CHARS),
  retryable: z.boolean(),
});
export type ErrorMessage = z.infer<typeof ErrorMessageSchema>;

// ----------------------------------------------------------------------------------------------------- quote

/** Asks a provider for its offer; `models`/`adapters` narrow the answer to what the client cares about. */
export const QuoteRequestSchema = z.strictObject({
  type: z.literal("quote.request"),
  models: z.array(Bytes32).max(MAX_QUOTE_MODELS).optional(),
  adapters: z.array(Bytes32).max(MAX_QUOTE_ADAPTERS).optional(),
});
export type QuoteRequest = z.infer<typeof QuoteRequestSchema>;

/** A provider's offer: its models and cached adapters by SHA-256, its prices and its load. */
export const QuoteSchema = z.strictObject({
  type: z.literal("quote"),
  provider: Address,
  models: z.array(Bytes32).max(MAX_QUOTE_MODELS),
  cachedAdapters: z.array(Bytes32).max(MAX_QUOTE_ADAPTERS),
  /** Token units per million input tokens. */
  priceInputPerMillion: Uint128String,
  /** Token units per million output tokens. */
  priceOutputPerMillion: Uint128String,
  queueLength: z.int().min(0).max(1_000_000),
  maxTokens: z.int().min(1).max(MAX_TOKENS_PER_TURN),
});
export type Quote = z.infer<typeof QuoteSchema>;

export const QuoteResponseSchema = z.discriminatedUnion("type", [QuoteSchema, ErrorMessageSchema]);
export type QuoteResponse = z.infer<typeof QuoteResponseSchema>;

// --------------------------------------------------------------------------------------------------- session

/**
 * What the payer signs to open a session (EIP-712, see `signSessionRequest`). The provider checks the
 * payer's lane with it against `spendingCap`, and the persona, royalty and fee on chain, before accepting.
 * Every voucher of the session carries exactly these rates and this expiry.
 */
export const SessionRequestSchema = z.strictObject({
  payer: Address,
  provider: Address,
  agentId: Uint256String,
  personaId: Uint256String,
  /** The session's number on its channel (payer, provider, agent); see `nextSessionNumber`. */
  session: Uint64String,
  priceInputPerMillion: Uint128String,
  priceOutputPerMillion: Uint128String,
  /** The persona's royalty per million tokens the payer pays (at least the one in force). */
  royaltyPerMillion: Uint96String,
  /** The protocol fee in basis points the payer pays (at least the one in force). */
  feeBps: Uint16String,
  /** The most the session may cost the payer, provider, royalty and fee together, in token units. */
  spendingCap: Uint256String,
  /** Unix seconds. */
  expiry: Uint64String,
  chainId: Uint256String,
  escrow: Address,
});
export type SessionRequest = z.infer<typeof SessionRequestSchema>;

export const SessionOpenSchema = z.strictObject({
  type: z.literal("session.open"),
  request: SessionRequestSchema,
  signature: Signature,
  /**
   * 32 random bytes the provider encrypts this session's saved KV state with on its disk and keeps only in
   * memory; a client that sends the same key when it reopens the session after a provider restart resumes
   * the saved state. Not signed: it protects the client's own conversation, nobody's money.
   */
  stateKey: Bytes32.optional(),
  /**
   * Where the persona's LoRA adapter can be fetched (an IPFS CID, from the persona's manifest). Not signed:
   * the provider checks the fetched bytes against the persona's on-chain adapter SHA-256 before loading.
   */
  adapterCid: z.string().regex(/^[A-Za-z0-9]{1,128}$/, "expected a CID").optional(),
});
export type SessionOpen = z.infer<typeof SessionOpenSchema>;

/** `sessionId` is the EIP-712 digest of the signed request (`hashSessionRequest`). */
export const SessionAcceptedSchema = z.strictObject({
  type: z.literal("session.accepted"),
  sessionId: Bytes32,
  /** Unix seconds until which the provider keeps the session open. */
  expiry: Uint64String,
});
export type SessionAccepted = z.infer<typeof SessionAcceptedSchema>;

/**
 * A refusal the payer could act on (top up escrow, pick another persona); `code` as in ErrorMessage. A session
 * number at or below one the provider has seen or settled on the channel is refused with code
 * `SessionNumberTooLowError` and `latestSession`, the highest it knows: the client numbers the session above it.
 */
export const SessionRejectedSchema = z.strictObject({
  type: z.literal("session.rejected"),
  code: ErrorMessageSchema.shape.code,
  message: ErrorMessageSchema.shape.message,
  retryable: z.boolean(),
  /** The highest session number the provider has seen or settled on the request's channel. */
  latestSession: Uint64String.optional(),
});
export type SessionRejected = z.infer<typeof SessionRejectedSchema>;

/**
 * The payer is done with a session (its chat ended, or it aborted a turn): the provider serves no more turns
 * on it, and removes it and settles it at once when everything it served is vouched; else it keeps it only
 * to take the voucher for exactly the served totals that `session.closed` reports. Only the libp2p peer that
 * opened the session may close it.
 */
export const SessionCloseSchema = z.strictObject({
  type: z.literal("session.close"),
  sessionId: Bytes32,
});
export type SessionClose = z.infer<typeof SessionCloseSchema>;

/** What the session protocol takes: an open, or the close of a session the same peer opened. */
export const SessionRequestMessageSchema = z.discriminatedUnion("type", [SessionOpenSchema, SessionCloseSchema]);
export type SessionRequestMessage = z.infer<typeof SessionRequestMessageSchema>;

/**
 * A session closed (or closing): its cumulative totals as the provider counts them, served and vouched. When
 * `served` exceeds `vouched`, the provider waits for the voucher of exactly `served` before it removes the
 * session; the payer checks those totals against what it received before signing.
 */
export const SessionClosedSchema = z.strictObject({
  type: z.literal("session.closed"),
  sessionId: Bytes32,
  served: z.strictObject({ inputTokens: Uint64String, outputTokens: Uint64String }),
  vouched: z.strictObject({ inputTokens: Uint64String, outputTokens: Uint64String }),
});
export type SessionClosed = z.infer<typeof SessionClosedSchema>;

export const SessionResponseSchema = z.discriminatedUnion("type", [
  SessionAcceptedSchema,
  SessionRejectedSchema,
  SessionClosedSchema,
  ErrorMessageSchema,
]);
export type SessionResponse = z.infer<typeof SessionResponseSchema>;

// ------------------------------------------------------------------------------------------------- inference

export const ChatMessageSchema = z.strictObject({
  role: z.enum(["system", "user", "assistant"]),
  content: z.string().max(MAX_PROMPT_TEXT_CHARS),
});
export type ChatMessage = z.infer<typeof ChatMessageSchema>;

/** Chat messages (the provider applies the model's chat template) or raw text (already templated). */
export const PromptSchema = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("chat"), messages: z.array(ChatMessageSchema).min(1).max(MAX_CHAT_MESSAGES) }),
  z.strictObject({ kind: z.literal("text"), text: z.string().min(1).max(MAX_PROMPT_TEXT_CHARS) }),
]);
export type Prompt = z.infer<typeof PromptSchema>;

export const SamplingSchema = z.strictObject({
  temperature: z.number().min(0).max(10).optional(),
  topP: z.number().gt(0).max(1).optional(),
  topK: z.int().min(0).max(100_000).optional(),
  minP: z.number().min(0).max(1).optional(),
  repeatPenalty: z.number().min(0).max(10).optional(),
  seed: z.int().min(0).max(0xffff_ffff).optional(),
});
export type Sampling = z.infer<typeof SamplingSchema>;

export const InferenceRequestSchema = z.strictObject({
  type: z.literal("inference.request"),
  sessionId: Bytes32,
  /** The turn's number in the session, from 0; the receipt repeats it. */
  turn: z.int().min(0).max(0xffff_ffff),
  model: Bytes32,
  adapters: z.array(Bytes32).max(MAX_TURN_ADAPTERS).default([]),
  prompt: PromptSchema,
  sampling: SamplingSchema.default({}),
  maxTokens: z.int().min(1).max(MAX_TOKENS_PER_TURN),
  stop: z.array(z.string().min(1).max(MAX_STOP_SEQUENCE_CHARS)).max(MAX_STOP_SEQUENCES).default([]),
});
export type InferenceRequest = z.infer<typeof InferenceRequestSchema>;
/** What a client writes: the defaulted fields may be left out. */
export type InferenceRequestInput = z.input<typeof InferenceRequestSchema>;

export const InferenceChunkSchema = z.strictObject({
  type: z.literal("inference.chunk"),
  /** 0, 1, 2…: lets the client notice a lost or reordered chunk. */
  index: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
  text: z.string().max(MAX_CHUNK_TEXT_CHARS),
});
export type InferenceChunk = z.infer<typeof InferenceChunkSchema>;

/**
 * A turn's token counts. `inputTokens` is the whole prompt's length in tokens, `cachedInputTokens` the part of
 * it the session's KV state already held. Billed input is `inputTokens - cachedInputTokens`: a session pays
 * for each prompt token once, not again on every turn that repeats the history.
 */
export const UsageSchema = z
  .strictObject({ inputTokens: TokenCount, cachedInputTokens: TokenCount, outputTokens: TokenCount })
  .refine((u) => u.cachedInputTokens <= u.inputTokens, "cachedInputTokens exceeds inputTokens");
export type Usage = z.infer<typeof UsageSchema>;

/**
 * What the provider signs at the end of a turn (EIP-712, see `signReceipt`): which model and adapters ran
 * on which prompt, what came out, and the usage of the turn and of the session so far.
 */
export const ReceiptSchema = z
  .strictObject({
    payer: Address,
    provider: Address,
    agentId: Uint256String,
    session: Uint64String,
    turn: z.int().min(0).max(0xffff_ffff),
    modelSha256: Bytes32,
    adapterSha256s: z.array(Bytes32).max(MAX_TURN_ADAPTERS),
    /** `hashPrompt(prompt)`. */
    promptHash: Bytes32,
    /** `hashOutput(text)` of the whole streamed output. */
    outputHash: Bytes32,
    usage: UsageSchema,
    /**
     * Session totals including this turn: what the next voucher should carry. Input counts billed tokens
     * (`inputTokens - cachedInputTokens` of each turn).
     */
    cumulativeInputTokens: Uint64String,
    cumulativeOutputTokens: Uint64String,
  })
  .refine((r) => {
    // zod runs this even when a field failed its own check (then reported already): such values must not
    // throw out of safeParse.
    try {
      return (
        BigInt(r.cumulativeInputTokens) >= BigInt(r.usage.inputTokens - r.usage.cachedInputTokens) &&
        BigInt(r.cumulativeOutputTokens) >= BigInt(r.usage.outputTokens)
      );
    } catch {
      return true;
    }
  }, "cumulative totals below the turn's billed usage");
export type Receipt = z.infer<typeof ReceiptSchema>;

export const StopReasonSchema = z.enum(["stop", "length", "abort", "error"]);
export type StopReason = z.infer<typeof StopReasonSchema>;

export const InferenceDoneSchema = z.strictObject({
  type: z.literal("inference.done"),
  usage: UsageSchema,
  stopReason: StopReasonSchema,
  receipt: ReceiptSchema,
  /** The provider's EIP-712 signature over `receipt`. */
  signature: Signature,
});
export type InferenceDone = z.infer<typeof InferenceDoneSchema>;

export const InferenceResponseSchema = z.discriminatedUnion("type", [
  InferenceChunkSchema,
  InferenceDoneSchema,
  ErrorMessageSchema,
]);
export type InferenceResponse = z.infer<typeof InferenceResponseSchema>;

// --------------------------------------------------------------------------------------------------- voucher

/** `Voucher` of sdk/chain/voucher.ts with its bigints as decimal strings; see `voucherToWire`. */
export const VoucherWireSchema = z.strictObject({
  payer: Address,
  provider: Address,
  agentId: Uint256String,
  session: Uint64String,
  inputTokens: Uint64String,
  outputTokens: Uint64String,
  priceInputPerMillion: Uint128String,
  priceOutputPerMillion: Uint128String,
  royaltyPerMillion: Uint96String,
  feeBps: Uint16String,
  expiry: Uint64String,
});
export type VoucherWire = z.infer<typeof VoucherWireSchema>;

export const VoucherMessageSchema = z.strictObject({
  type: z.literal("voucher"),
  voucher: VoucherWireSchema,
  /** The payer's EIP-712 signature (`signVoucher`). */
  signature: Signature,
});
export type VoucherMessage = z.infer<typeof VoucherMessageSchema>;

/** The provider holds the voucher: totals it now counts as paid. */
export const VoucherAckSchema = z.strictObject({
  type: z.literal("voucher.ack"),
  session: Uint64String,
  inputTokens: Uint64String,
  outputTokens: Uint64String,
});
export type VoucherAck = z.infer<typeof VoucherAckSchema>;

export const VoucherResponseSchema = z.discriminatedUnion("type", [VoucherAckSchema, ErrorMessageSchema]);
export type VoucherResponse = z.infer<typeof VoucherResponseSchema>;

/**
 * The schema each side of each protocol decodes with.
 *
 * @example
 * decodeFrames(stream, { maxFrameBytes: FRAME_LIMITS.quote.request, schema: PROTOCOL_SCHEMAS.quote.request })
 */
export const PROTOCOL_SCHEMAS = {
  quote: { request: QuoteRequestSchema, response: QuoteResponseSchema },
  session: { request: SessionRequestMessageSchema, response: SessionResponseSchema },
  inference: { request: InferenceRequestSchema, response: InferenceResponseSchema },
  voucher: { request: VoucherMessageSchema, response: VoucherResponseSchema },
} as const;

