/**
 * Checking what a provider bills for a turn before paying it. A provider is trusted for nothing it could
 * inflate: output tokens are bounded by the turn's maxTokens and by the text it streamed (every token the
 * client did not see must be accounted for: see {@link outputTokenUpperBound}), input tokens by the client's
 * own count (exact with a local tokenizer, else a generous bound from the prompt's size), and the receipt
 * must be the provider's signature over exactly this turn. When the numbers are too high the client pays the
 * capped, correct amount and drops the provider; when the receipt cannot be trusted at all it pays nothing.
 */
import { getAddress } from "ethers";
import type { EscrowRef } from "../chain/voucher.js";
import type { Prompt, Receipt, Usage } from "../protocol/messages.js";
import { hashOutput, hashPrompt, verifyReceipt } from "../protocol/signing.js";

/** Cumulative (or per-turn) billed token totals: input counts only the tokens not reused from the KV cache. */
export interface TokenTotals {
  inputTokens: bigint;
  outputTokens: bigint;
}

export const ZERO_TOTALS: TokenTotals = Object.freeze({ inputTokens: 0n, outputTokens: 0n });

/** Tokens a chat template may add per message (role markers, separators), generously. */
export const TEMPLATE_TOKENS_PER_MESSAGE = 32;
/** Tokens a template may add once (BOS, a default system preamble, the open assistant turn), generously. */
export const TEMPLATE_TOKENS_BASE = 256;

/**
 * A bound no honest provider's input count exceeds, without the model's vocabulary: every token of a
 * byte-level or byte-fallback tokenizer covers at least one UTF-8 byte of the text, and the chat template
 * adds a bounded number of tokens per message.
 *
 * @example
 * promptTokenUpperBound({ kind: "text", text: "Hello" }) // 261
 */
export function promptTokenUpperBound(prompt: Prompt): number {
  const encoder = new TextEncoder();
  if (prompt.kind === "text") return encoder.encode(prompt.text).length + TEMPLATE_TOKENS_BASE;
  let bytes = 0;
  for (const m of prompt.messages) bytes += encoder.encode(m.content).length + TEMPLATE_TOKENS_PER_MESSAGE;
  return bytes + TEMPLATE_TOKENS_BASE;
}

/**
 * Output tokens a turn may bill beyond what its streamed text accounts for: the end-of-sequence token (counted,
 * never shown), the chat template's stop trigger (cut from the text; one special token in most templates, a
 * few text tokens in some), and one token in flight whose bytes were not yet a whole character when the turn
 * ended. 8 covers 1 + 6 + 1 with no room for a provider to bill more than a handful of invisible tokens.
 */
export const OUTPUT_TOKEN_SLACK = 8;

/**
 * With the model's tokenizer, a share of the text's own count added to it: a sampled reply need not be the
 * canonical tokenization of its text ("he" + "llo" where the tokenizer would say "hello"), so an honest
 * provider's count may exceed the re-tokenized one by a little. One token in 16 is far above what sampling
 * yields on real models, and far below the 3 to 4 bytes per token of the byte bound it tightens.
 */
export const OUTPUT_RETOKENIZE_SHARE = 16;

/**
 * Counts a raw text's tokens with a model's vocabulary, no BOS or template: a LocalTokenizer. One without
 * `countText` leaves the byte bound.
 */
export interface TextTokenCounter {
  countText?(text: string): number;
}

export interface OutputTokenBoundOptions {
  /**
   * The turn's stop strings: a reply cut at one was billed the tokens of the stop string too (it is not in the
   * text), so the longest one's UTF-8 bytes are allowed on top.
   */
  stop?: readonly string[];
  /** A tokenizer of the session's model: the bound is then its count of the text, not the byte count. */
  tokenizer?: TextTokenCounter;
}

/**
 * The most output tokens an honest provider can have generated for `text`, the concatenation of what it
 * streamed. Without a tokenizer: the text's UTF-8 byte count, since every token but the special ones decodes
 * to at least one byte (byte-level BPE and SentencePiece byte fallback alike); with one: its count of the text
 * plus one token in {@link OUTPUT_RETOKENIZE_SHARE}, never above the byte bound. Either way plus
 * {@link OUTPUT_TOKEN_SLACK} and the longest stop string's bytes.
 *
 * @example
 * outputTokenUpperBound("ok") // 10: 2 bytes + 8
 * outputTokenUpperBound(reply, { tokenizer, stop: ["\nUser:"] })
 */
export function outputTokenUpperBound(text: string, options: OutputTokenBoundOptions = {}): number {
  const encoder = new TextEncoder();
  const stopBytes = Math.max(0, ...(options.stop ?? []).map((s) => encoder.encode(s).length));
  const extra = OUTPUT_TOKEN_SLACK + stopBytes;
  const bytes = encoder.encode(text).length;
  const countText = options.tokenizer?.countText;
  if (countText === undefined) return bytes + extra;
  const tokens = countText.call(options.tokenizer, text);
  return Math.min(bytes, tokens + Math.ceil(tokens / OUTPUT_RETOKENIZE_SHARE)) + extra;
}

/** The kinds of broken rule, each with a stable name. */
export type UsageViolationKind =
  // Overcharges: the numbers are too high; the turn is kept and paid at the capped amount.
  | "output-over-max"
  | "output-over-text"
  | "cached-over-input"
  | "input-mismatch"
  | "input-over-bound"
  | "cumulative-mismatch"
  // Integrity: the receipt is not this turn's, or not the provider's; nothing is paid.
  | "usage-mismatch"
  | "receipt-field"
  | "output-hash"
  | "receipt-signature";

export interface UsageViolation {
  kind: UsageViolationKind;
  /** What was wrong, with the figures. */
  message: string;
}

/** The receipt fields the client knows in advance: they must be repeated exactly. */
export interface ExpectedReceipt {
  payer: string;
  provider: string;
  agentId: bigint | string;
  session: bigint | string;
  turn: number;
  modelSha256: string;
  adapterSha256s: readonly string[];
}

export interface TurnUsageInput {
  /** The usage the provider reported in InferenceDone. */
  usage: Usage;
  /** The turn's maxTokens. */
  maxTokens: number;
  /** The prompt sent; its hash must be the receipt's. */
  prompt: Prompt;
  /** The exact input count from a LocalTokenizer of the session's model, when the client has the file. */
  expectedInputTokens?: number;
  /** Used when `expectedInputTokens` is unknown. Default {@link promptTokenUpperBound}(prompt). */
  promptUpperBound?: number;
  /** All chunks' text, concatenated: its hash must be the receipt's. */
  outputText: string;
  /**
   * The most output tokens `outputText` can account for. Default {@link outputTokenUpperBound}(outputText,
   * { stop }): pass `outputTokenUpperBound(outputText, { stop, tokenizer })` when the client has the model.
   */
  outputUpperBound?: number;
  /** The turn's stop strings, for the default `outputUpperBound`. */
  stop?: readonly string[];
  /** The session's cumulative totals before this turn: what the last voucher carried. */
  previous: TokenTotals;
  receipt: Receipt;
  receiptSignature: string;
  expected: ExpectedReceipt;
  escrow: EscrowRef;
}

/**
 * What to do with a turn. "ok": pay `cumulative` (the receipt's). "overcharge": keep the turn, pay only
 * `cumulative` (previous + the capped `billed`), drop the provider. "invalid": the receipt is not a valid
 * record of this turn; pay nothing, drop the provider and run the turn elsewhere.
 */
export type TurnUsageCheck =
  | { status: "ok"; billed: TokenTotals; cumulative: TokenTotals; violations: [] }
  | { status: "overcharge"; billed: TokenTotals; cumulative: TokenTotals; violations: UsageViolation[] }
  | { status: "invalid"; violations: UsageViolation[] };

const sameHex = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
const min = (a: bigint, b: bigint) => (a < b ? a : b);
const max = (a: bigint, b: bigint) => (a > b ? a : b);

function sameAddress(a: string, b: string): boolean {
  try {
    return getAddress(a) === getAddress(b);
  } catch {
    return false;
  }
}

/** Integrity: whether the receipt is the provider's, over this turn, with the usage it streamed. */
function receiptProblems(input: TurnUsageInput): UsageViolation[] {
  const { receipt: r, expected: e, usage } = input;
  const out: UsageViolation[] = [];
  const field = (name: string, ok: boolean, got: unknown, want: unknown) => {
    if (!ok) out.push({ kind: "receipt-field", message: `receipt ${name} is ${String(got)}, expected ${String(want)}` });
  };
  field("payer", sameAddress(r.payer, e.payer), r.payer, e.payer);
  field("provider", sameAddress(r.provider, e.provider), r.provider, e.provider);
  field("agentId", r.agentId === e.agentId.toString(), r.agentId, e.agentId);
  field("session", r.session === e.session.toString(), r.session, e.session);
  field("turn", r.turn === e.turn, r.turn, e.turn);
  field("modelSha256", sameHex(r.modelSha256, e.modelSha256), r.modelSha256, e.modelSha256);
  field(
    "adapterSha256s",
    r.adapterSha256s.length === e.adapterSha256s.length && r.adapterSha256s.every((h, i) => sameHex(h, e.adapterSha256s[i]!)),
    r.adapterSha256s.join(","),
    e.adapterSha256s.join(","),
  );
  field("promptHash", sameHex(r.promptHash, hashPrompt(input.prompt)), r.promptHash, "hashPrompt(prompt)");
  if (!sameHex(r.outputHash, hashOutput(input.outputText))) {
    out.push({ kind: "output-hash", message: "receipt outputHash is not the hash of the text streamed" });
  }
  const u = r.usage;
  if (u.inputTokens !== usage.inputTokens || u.cachedInputTokens !== usage.cachedInputTokens || u.outputTokens !== usage.outputTokens) {
    out.push({ kind: "usage-mismatch", message: `receipt usage ${JSON.stringify(u)} differs from the streamed usage ${JSON.stringify(usage)}` });
  }
  let signed = false;
  try {
    signed = verifyReceipt(r, input.escrow, input.receiptSignature);
  } catch {
    // A receipt that does not even parse is no signature of anything.
  }
  if (!signed) out.push({ kind: "receipt-signature", message: `the receipt is not signed by provider ${e.provider}` });
  return out;
}

/**
 * Checks a turn's usage and receipt, and says what to pay. Pure: no network, no clock.
 *
 * Rules: outputTokens ≤ maxTokens and ≤ what the streamed text can hold; cachedInputTokens ≤ inputTokens;
 * inputTokens equals the local count when known, else ≤ the prompt's bound; the receipt's cumulative totals
 * equal previous + billed; the receipt repeats the turn's payer, provider, agent, session, turn, model,
 * adapters, prompt and output hashes and usage, and is signed by the provider.
 *
 * @example
 * const check = checkTurnUsage({ usage, maxTokens: 256, prompt, outputText, previous, receipt, receiptSignature, expected, escrow })
 * if (check.status !== "invalid") await payVoucher(check.cumulative)
 */
export function checkTurnUsage(input: TurnUsageInput): TurnUsageCheck {
  const { usage, maxTokens, previous, receipt } = input;
  const violations: UsageViolation[] = [];
  let output = BigInt(usage.outputTokens);
  if (usage.outputTokens > maxTokens) {
    violations.push({ kind: "output-over-max", message: `outputTokens ${usage.outputTokens} exceeds maxTokens ${maxTokens}` });
    output = BigInt(maxTokens);
  }
  // Tokens the client never saw are not believed: only what the streamed text (and the slack) can hold is paid.
  const textBound =
    input.outputUpperBound ?? outputTokenUpperBound(input.outputText, input.stop === undefined ? {} : { stop: input.stop });
  if (usage.outputTokens > textBound) {
    violations.push({
      kind: "output-over-text",
      message: `outputTokens ${usage.outputTokens} exceeds the ${textBound} that the ${new TextEncoder().encode(input.outputText).length} bytes streamed can hold`,
    });
    output = min(output, BigInt(textBound));
  }
  let inputTokens = BigInt(usage.inputTokens);
  if (input.expectedInputTokens !== undefined) {
    if (usage.inputTokens !== input.expectedInputTokens) {
      violations.push({
        kind: "input-mismatch",
        message: `inputTokens ${usage.inputTokens} differs from the local tokenizer's count ${input.expectedInputTokens}`,
      });
      inputTokens = min(inputTokens, BigInt(input.expectedInputTokens));
    }
  } else {
    const bound = input.promptUpperBound ?? promptTokenUpperBound(input.prompt);
    if (usage.inputTokens > bound) {
      violations.push({ kind: "input-over-bound", message: `inputTokens ${usage.inputTokens} exceeds the prompt's bound ${bound}` });
      inputTokens = BigInt(bound);
    }
  }
  let cached = BigInt(usage.cachedInputTokens);
  if (usage.cachedInputTokens > usage.inputTokens) {
    violations.push({ kind: "cached-over-input", message: `cachedInputTokens ${usage.cachedInputTokens} exceeds inputTokens ${usage.inputTokens}` });
  }
  // Cached tokens lower the bill, so they are believed; but never beyond the (capped) prompt itself.
  cached = min(cached, inputTokens);
  const billed: TokenTotals = { inputTokens: inputTokens - cached, outputTokens: output };
  const due: TokenTotals = { inputTokens: previous.inputTokens + billed.inputTokens, outputTokens: previous.outputTokens + billed.outputTokens };
  const claimed: TokenTotals = { inputTokens: BigInt(receipt.cumulativeInputTokens), outputTokens: BigInt(receipt.cumulativeOutputTokens) };
  const claimedTurn: TokenTotals = {
    inputTokens: BigInt(usage.inputTokens) - BigInt(Math.min(usage.cachedInputTokens, usage.inputTokens)),
    outputTokens: BigInt(usage.outputTokens),
  };
  if (
    claimed.inputTokens !== previous.inputTokens + claimedTurn.inputTokens ||
    claimed.outputTokens !== previous.outputTokens + claimedTurn.outputTokens
  ) {
    violations.push({
      kind: "cumulative-mismatch",
      message:
        `receipt cumulative ${claimed.inputTokens}/${claimed.outputTokens} is not the previous ` +
        `${previous.inputTokens}/${previous.outputTokens} plus the turn's ${claimedTurn.inputTokens}/${claimedTurn.outputTokens}`,
    });
  }
  // A receipt that is not this turn's makes its figures meaningless: listed with the rest, but nothing is due.
  const integrity = receiptProblems(input);
  if (integrity.length > 0) return { status: "invalid", violations: [...integrity, ...violations] };
  if (violations.length === 0) return { status: "ok", billed, cumulative: claimed, violations: [] };
  // Never more than due, never more than the provider itself claims (it refuses vouchers above what it
  // served), and never below the last voucher (vouchers only grow).
  const cumulative: TokenTotals = {
    inputTokens: max(previous.inputTokens, min(due.inputTokens, claimed.inputTokens)),
    outputTokens: max(previous.outputTokens, min(due.outputTokens, claimed.outputTokens)),
  };
  return {
    status: "overcharge",
    billed: { inputTokens: cumulative.inputTokens - previous.inputTokens, outputTokens: cumulative.outputTokens - previous.outputTokens },
    cumulative,
    violations,
  };
}
