/**
 * A chat with an agent over the provider network. The client opens a metered session with the best provider,
 * streams each turn, checks its usage and receipt, and pays it with a cumulative voucher before the turn
 * returns (the provider serves the next turn only once the last is paid). When a provider dies, stalls or is
 * busy, the same turn runs again, from scratch, on the next provider; the failed attempt is never vouched,
 * so the user pays only for turns delivered, and a provider risks at most one unpaid turn.
 *
 * Money rules. Every figure the chat shows or caps is the full price, provider + royalty + fee, computed as
 * the escrow computes it (`sessionCost`, `voucherCost`): what leaves the payer's lane. A session signs the
 * royalty and fee in force when it opens (or the higher rate of a pending rise, when the rise would come
 * before a workable expiry), and every voucher carries exactly the session's rates. A session opens only
 * at prices no higher than the quote its provider was ranked with (and the ranking's maxPrices), only on a
 * lane that covers its cap (the client commits the shortfall first, the one transaction it ever sends), and
 * the client never signs a voucher above the session's cap.
 *
 * A cancelled turn is paid for what was delivered. When the caller aborts a turn mid-stream (Ctrl-C, a
 * gateway client gone), the provider has generated tokens that it counts as served, and it serves the payer
 * nothing more until they are paid. The client closes the session (`session.close`), which answers the
 * session's served totals once the provider has counted the aborted turn; it pays them when they are
 * plausible: the aborted turn's output at most the UTF-8 bytes of the text received (a token covers at least
 * one byte) plus CANCEL_OUTPUT_SLACK_TOKENS for tokens generated while the abort travelled to the provider,
 * and its input at most the prompt's bound. A provider claiming more is paid nothing and dropped. The cost is
 * counted in `spent` as any turn's, reported by `turn:cancelled`, and the next turn opens a new session.
 *
 * Sessions are closed when the chat closes (`close()`), so providers settle them at once; a provider gone
 * away does not hold the close up beyond CLOSE_TIMEOUT_MS, and its failure is only reported
 * (`session:close-failed`).
 */
import { getAddress, hexlify, randomBytes, type Signer } from "ethers";
import type { Libp2p } from "libp2p";
import type { SoulmeshContracts } from "../chain/contracts.js";
import {
  sessionCost,
  signVoucher,
  voucherCost,
  type EscrowRef,
  type Voucher,
  type VoucherCost,
  type VoucherRates,
} from "../chain/voucher.js";
import { TypedEventTarget } from "../events.js";
import {
  InsufficientEscrowError,
  PaymentRequiredError,
  ProtocolError,
  ProtocolStreamError,
  ProtocolTimeoutError,
  ProviderBusyError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionSupersededError,
} from "../protocol/errors.js";
import type {
  ChatMessage,
  InferenceDone,
  InferenceRequestInput,
  Prompt,
  Receipt,
  Sampling,
  SessionRequest,
  StopReason,
  Usage,
  VoucherAck,
} from "../protocol/messages.js";
import { hashSessionRequest, signSessionRequest, voucherToWire } from "../protocol/signing.js";
import { requestProtocol, streamProtocol } from "../protocol/stream.js";
import { ProviderBlocklist } from "./blocklist.js";
import { TestStablecoin__factory } from "../chain/contracts.js";
import { readProviders, readReputation } from "./discovery.js";
import {
  AllProvidersFailedError,
  ChatClosedError,
  EscrowTooLowError,
  InvalidChatOptionsError,
  LaneReleasingError,
  NoProviderError,
  PersonaMismatchError,
  ProviderStalledError,
  QuoteRaisedError,
  ProviderStreamCorruptError,
  SessionRejectedError,
  SpendingCapReachedError,
  TurnInProgressError,
  UsageViolationError,
  VoucherAboveCapError,
  type ProviderFailure,
  type ProviderFailureKind,
} from "./errors.js";
import { gatherQuotes, rankProviders, requestQuote, type QuotedProvider, type RankOptions } from "./selection.js";
import type { LocalTokenizer } from "./tokenizer.js";
import { checkTurnUsage, outputTokenUpperBound, promptTokenUpperBound, ZERO_TOTALS, type TokenTotals, type UsageViolation } from "./usage.js";
import { commitToLane, LaneLedger, unsettledVouched, type LaneFunding, type LedgerSession } from "./lanes.js";
import { sleep } from "../time.js";

const ZERO_HASH = `0x${"00".repeat(32)}`;
/** A session is renewed this long before its expiry: the provider refuses turns in its last 30 s. */
const RENEW_MARGIN_S = 120;
/** Rounds of waiting for busy providers before a turn fails, and the first wait (doubled each round). */
const BUSY_ROUNDS = 3;
const BUSY_BACKOFF_MS = 150;

/** Kept off the escrow's longest voucher lifetime, for clock skew between client, provider and chain. */
const LIFETIME_MARGIN_S = 60;
/** A session signed at the rates in force ends this long before a pending rise of them takes effect. */
const RATE_MARGIN_S = 60;
/** A session's cap covers at most this many worst-case turns (see #ensureSession). */
const SESSION_CAP_TURNS = 32n;
/** Longer than a provider caches a lane's reading (node/p2p/session.ts, 1 s). */
const LANE_READ_SETTLE_MS = 1_100;
/** Opens retried when a provider finds the lane short: a commit, then caps halved toward the turn's worst case. */
const MAX_CAP_RETRIES = 8;
/** The shortest session worth opening: below it, the higher rate of a pending rise is signed instead. */
const MIN_WORKABLE_SESSION_S = RENEW_MARGIN_S + 60;
/**
 * Output tokens a cancelled turn may bill beyond the UTF-8 bytes of the text received: tokens generated while
 * the abort travelled to the provider (one network trip at the model's speed), tokens that decode to no text
 * (an end-of-sequence, a multi-byte character cut between tokens) and text held back by stop sequences.
 */
export const CANCEL_OUTPUT_SLACK_TOKENS = 64;
/** Longest wait for a provider's answer to a session close (and the voucher after it). */
const CLOSE_TIMEOUT_MS = 5_000;

/** What a turn sends: a wire prompt, chat messages, or one user message as a string. */
export type ChatPrompt = Prompt | ChatMessage[] | string;

export interface OpenChatOptions {
  /** A started (or startable) libp2p node, e.g. `await (await createClientHost()).start()`. */
  libp2p: Libp2p;
  /** Contract handles connected to a read provider. */
  contracts: Pick<SoulmeshContracts, "providerRegistry" | "personaRegistry" | "agentRegistry" | "inferenceEscrow">;
  /**
   * The payer's wallet: signs session requests and vouchers and, once per provider whose lane is short, sends
   * the one transaction that commits funds to it (so it must be connected to a JSON-RPC provider then).
   */
  signer: Signer;
  escrow: EscrowRef;
  agentId: bigint;
  personaId: bigint;
  /** SHA-256 of the model file: the persona's base model. */
  modelSha256: string;
  /** The persona's LoRA adapter (CID from its manifest, SHA-256 as registered); required when it has one. */
  adapter?: { cid: string; sha256: string };
  /**
   * The most this chat may cost, over all its sessions, in token units: full price (provider, royalty and fee),
   * what leaves the payer's lanes. The funds read live at each session open bound it too.
   */
  spendingCap: bigint;
  /** Sessions shared with the payer's other chats in this process (an agent's chat and its maintenance chat). */
  lanes?: LaneLedger;
  /** Length of each provider session (renewed as needed). Default 3600, capped by the escrow's voucher lifetime. */
  sessionSeconds?: number;
  /** A vocabulary of the same model: input tokens are then checked exactly. */
  tokenizer?: LocalTokenizer;
  /** Longest wait for the next chunk (or the first) before the provider counts as stalled. Default 30 s. */
  stallTimeoutMs?: number;
  /** Longest a turn may stream on one provider. Default 10 min. */
  turnTimeoutMs?: number;
  /** Time for quotes, session opens and vouchers. Default 10 s. */
  requestTimeoutMs?: number;
  /** First block of the escrow's logs, for reputation (the deployment's `startBlock`). Default 0. */
  fromBlock?: number;
  /** Providers never to use; overchargers are added to it. Share it between chats. */
  blocklist?: ProviderBlocklist;
  /** Tuning of the ranking (weights, typical turn, price ceilings). */
  ranking?: Omit<RankOptions, "modelSha256" | "adapterSha256">;
  signal?: AbortSignal;
}

export interface TurnOptions {
  prompt: ChatPrompt;
  maxTokens: number;
  sampling?: Sampling;
  stop?: string[];
  /** Each chunk as it arrives. After a `turn:retry` event, chunks start over from another provider. */
  onChunk?: (text: string, info: { provider: string; index: number }) => void;
  /**
   * Aborts the turn while it streams (the partial turn is not paid and its session is left). Once the
   * provider has finished, the voucher is sent regardless: the turn was delivered.
   */
  signal?: AbortSignal;
}

/** What a turn cost, full price, split as the escrow pays it; `total` is what it takes from the lane. */
export type TurnCost = VoucherCost;

const ZERO_COST: TurnCost = Object.freeze({ providerAmount: 0n, royaltyAmount: 0n, feeAmount: 0n, total: 0n });

/** What the client paid for a turn. */
export interface TurnPayment {
  voucher: Voucher;
  signature: string;
  /** The provider's acknowledgement, or undefined when the voucher could not be delivered. */
  ack: VoucherAck | undefined;
}

export interface TurnResult {
  text: string;
  stopReason: StopReason;
  /** The usage the provider reported. */
  usage: Usage;
  /** What this turn was paid for: the reported billed tokens, or less when the provider overcharged. */
  billed: TokenTotals;
  receipt: Receipt;
  receiptSignature: string;
  /** The provider that served the turn (checksummed address). */
  provider: string;
  peerId: string;
  /** Undefined when the turn cost nothing (no new billed token). */
  payment: TurnPayment | undefined;
  /**
   * What this turn adds to what leaves the payer's lane: `voucherCost` of its voucher over the session's
   * previous one (zeros when nothing was vouched).
   */
  cost: TurnCost;
  /** Attempts at this turn that failed, before the one that served it. */
  failovers: ProviderFailure[];
  /** Rules the provider broke; non-empty means it was paid the capped amount and dropped. */
  violations: UsageViolation[];
}

export interface ChatEvents {
  /** A session opened with a provider. */
  "session:opened": CustomEvent<{
    provider: string;
    sessionId: string;
    session: bigint;
    expiry: bigint;
    spendingCap: bigint;
    royaltyPerMillion: bigint;
    feeBps: bigint;
  }>;
  /** Funds were committed to the payer's lane with a provider: the one transaction the client sends. */
  "lane:committed": CustomEvent<{ provider: string; amount: bigint; txHash: string; method: LaneFunding["method"] }>;
  /** An attempt at a turn failed; the turn goes on with another provider (or fails if none is left). */
  "provider:failed": CustomEvent<{ provider: string; turn: number; kind: ProviderFailureKind; error: unknown; discardedText: string }>;
  /** The turn starts again on another provider: a UI should clear the text it showed for the failed attempt. */
  "turn:retry": CustomEvent<{ turn: number; attempt: number; failed: string; discardedText: string }>;
  /** A provider broke the usage rules and is never used again by this client. */
  "provider:dropped": CustomEvent<{ provider: string; violations: UsageViolation[] }>;
  /** A voucher was signed and the provider acknowledged it. */
  "voucher:sent": CustomEvent<{ provider: string; voucher: Voucher; signature: string; ack: VoucherAck }>;
  /** A signed voucher could not be delivered (the provider went away after the turn); its session is left. */
  "voucher:failed": CustomEvent<{ provider: string; voucher: Voucher; signature: string; error: unknown }>;
  /**
   * A turn was cancelled mid-stream: what the provider served of it was paid (`paid`, at `cost`, counted in
   * `spent`) when plausible against `text`, the text received; else the provider is dropped and paid nothing.
   */
  "turn:cancelled": CustomEvent<{ provider: string; turn: number; text: string; billed: TokenTotals; cost: TurnCost; paid: boolean }>;
  /** A session was closed with its provider (chat closed, turn cancelled, session renewed). */
  "session:closed": CustomEvent<{ provider: string; sessionId: string; served: TokenTotals }>;
  /** A session could not be closed (the provider is gone or slow): it lapses on its own; nothing else fails. */
  "session:close-failed": CustomEvent<{ provider: string; sessionId: string; error: unknown }>;
}

/** A session with one provider, as the client tracks it. */
interface ProviderSession extends LedgerSession {
  quoted: QuotedProvider;
  request: SessionRequest;
  sessionId: string;
  nextTurn: number;
  /** Totals of the last voucher signed (acknowledged or not: the signature is out there). */
  vouched: TokenTotals;
  /** False once a turn failed or was not paid in full: the provider's counters and ours may differ. */
  usable: boolean;
  /** Set once a session.close was sent (or the provider no longer has it). */
  closed: boolean;
}

/** Input tokens a turn may bill at most: the tokenizer's count, else the bound `checkTurnUsage` caps input to. */
function inputBound(prompt: Prompt, expectedInputTokens: number | undefined): bigint {
  return BigInt(expectedInputTokens ?? promptTokenUpperBound(prompt));
}

function toPrompt(prompt: ChatPrompt): Prompt {
  if (typeof prompt === "string") return { kind: "chat", messages: [{ role: "user", content: prompt }] };
  if (Array.isArray(prompt)) return { kind: "chat", messages: prompt };
  return prompt;
}

const wallNow = () => BigInt(Math.floor(Date.now() / 1000));

/**
 * Opens a chat: checks the agent, persona, model and adapter against the chain, finds the providers of the
 * model, asks each for a quote and ranks them. Sessions open lazily, on the first turn.
 *
 * @example
 * const chat = await openChat({ libp2p, contracts, signer: wallet, escrow, agentId, personaId, modelSha256,
 *   spendingCap: 5_000_000n, stallTimeoutMs: 15_000 })
 * const { text } = await chat.turn({ prompt: "Hello!", maxTokens: 256, onChunk: (t) => process.stdout.write(t) })
 * await chat.close()
 * @throws NoProviderError when no reachable provider serves the model; PersonaMismatchError when the
 *   agent, persona, model or adapter disagree with the chain; InvalidChatOptionsError.
 */
export async function openChat(options: OpenChatOptions): Promise<ChatSession> {
  const { signal } = options;
  signal?.throwIfAborted();
  if (options.spendingCap <= 0n) throw new InvalidChatOptionsError("spendingCap must be positive");
  const stallTimeoutMs = options.stallTimeoutMs ?? 30_000;
  if (!(stallTimeoutMs > 0)) throw new InvalidChatOptionsError("stallTimeoutMs must be positive");
  const model = options.modelSha256.toLowerCase();
  const tokenizerModel = options.tokenizer?.modelSha256;
  if (tokenizerModel !== undefined && tokenizerModel.toLowerCase() !== model) {
    throw new InvalidChatOptionsError(`the tokenizer is of model ${tokenizerModel}, not ${model}: load the same model file`);
  }
  const { contracts } = options;
  const [payer, agentPersona, persona, maxLifetime] = await Promise.all([
    options.signer.getAddress(),
    contracts.agentRegistry.personaOf(options.agentId),
    contracts.personaRegistry.personaOf(options.personaId),
    contracts.inferenceEscrow.maxVoucherLifetime(),
  ]);
  signal?.throwIfAborted();
  if (agentPersona !== options.personaId) {
    throw new PersonaMismatchError(`Agent #${options.agentId} runs persona #${agentPersona}, not #${options.personaId}`);
  }
  if (persona.baseModelHash.toLowerCase() !== model) {
    throw new PersonaMismatchError(`Persona #${options.personaId} runs on model ${persona.baseModelHash}, not ${model}`);
  }
  const adapterSha = persona.adapterSha256.toLowerCase();
  if (adapterSha !== ZERO_HASH && options.adapter === undefined) {
    throw new PersonaMismatchError(`Persona #${options.personaId} needs its adapter ${adapterSha}, and none was given`);
  }
  if (options.adapter !== undefined && options.adapter.sha256.toLowerCase() !== adapterSha) {
    throw new PersonaMismatchError(`Persona #${options.personaId}'s adapter is ${adapterSha}, not ${options.adapter.sha256}`);
  }
  const sessionSeconds = Math.min(options.sessionSeconds ?? 3600, Number(maxLifetime) - LIFETIME_MARGIN_S);
  if (!(sessionSeconds >= RENEW_MARGIN_S + 60)) {
    throw new InvalidChatOptionsError(`sessionSeconds must be at least ${RENEW_MARGIN_S + 60} (and the escrow's voucher lifetime allow it)`);
  }
  if (options.libp2p.status !== "started") await options.libp2p.start();
  const chat = new ChatSession({ ...options, modelSha256: model, stallTimeoutMs, sessionSeconds, maxLifetime: Number(maxLifetime) }, getAddress(payer));
  await chat.refreshProviders({ ...(signal !== undefined && { signal }) });
  return chat;
}

interface ChatConfig extends OpenChatOptions {
  stallTimeoutMs: number;
  sessionSeconds: number;
  maxLifetime: number;
}

/**
 * One chat: turns run one at a time, each on the current provider or, after a failure, the next. Create it
 * with {@link openChat}.
 */
export class ChatSession extends TypedEventTarget<ChatEvents> {
  /** The payer's address. */
  readonly payer: string;
  /** Providers never to use (shared with other chats when given to openChat). */
  readonly blocklist: ProviderBlocklist;
  readonly #config: ChatConfig;
  /** Candidates, best first, from the last ranking. */
  #ranked: QuotedProvider[] = [];
  /** Why providers were left out of the last ranking, for NoProviderError. */
  #unranked: string[] = [];
  /** Providers that died or stalled in this chat: skipped for the rest of it. */
  readonly #failed = new Map<string, ProviderFailure>();
  readonly #sessions = new Map<string, ProviderSession>();
  /** Chain time minus wall time, in seconds, from the last block read. */
  #clockOffset = 0n;
  /** Every session this chat ever opened, for the spending total. */
  readonly #allSessions: ProviderSession[] = [];
  /** This chat's sessions and those of the payer's other chats sharing the ledger. */
  readonly #lanes: LaneLedger;
  /** The payment token, for the wallet's balance when a permit could fund a lane. */
  #token: string | undefined;
  /** The provider of the last successful turn: kept while it works, for its warm KV cache. */
  #current: string | undefined;
  #running = false;
  /** The running turn, for close() to wait for (its cancelled part paid). */
  #turnDone: Promise<unknown> | undefined;
  readonly #closing = new AbortController();
  #closed: Promise<void> | undefined;
  #turns = 0;

  /** @internal Use {@link openChat}. */
  constructor(config: ChatConfig, payer: string) {
    super();
    this.#config = config;
    this.payer = payer;
    this.blocklist = config.blocklist ?? new ProviderBlocklist();
    this.#lanes = config.lanes ?? new LaneLedger();
  }

  /** Turns completed. */
  get turns(): number {
    return this.#turns;
  }

  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  /** Chain time now, estimated from the last block read and the wall clock since. */
  #chainNow(): bigint {
    return wallNow() + this.#clockOffset;
  }

  /**
   * What this chat has vouched so far, over all its sessions, full price (provider, royalty and fee) in token
   * units: what its vouchers take from the payer's lanes when they settle.
   */
  get spent(): bigint {
    return this.#allSessions.reduce((sum, s) => sum + sessionCost(s.vouched, s.rates), 0n);
  }

  /** The ranked candidates' addresses, best first, without those dropped or failed. */
  get providers(): string[] {
    return this.#ranked.filter((p) => this.#eligible(p.address)).map((p) => p.address);
  }

  /**
   * Finds, quotes and ranks the model's providers again (say, after a long idle time or a failure of all).
   *
   * @example
   * await chat.refreshProviders({ signal })
   * @throws NoProviderError when none is left.
   */
  async refreshProviders(options: { signal?: AbortSignal; exclude?: ReadonlySet<string> } = {}): Promise<void> {
    const c = this.#config;
    const signal = options.signal;
    const [records, reputation] = await Promise.all([
      readProviders(c.contracts.providerRegistry, { modelSha256: c.modelSha256, ...(signal !== undefined && { signal }) }),
      readReputation(c.contracts.inferenceEscrow, { fromBlock: c.fromBlock ?? 0, ...(signal !== undefined && { signal }) }),
    ]);
    const reasons: string[] = [];
    const candidates = records.filter((r) => {
      if (this.blocklist.has(r.address)) reasons.push(`${r.address} dropped for breaking the usage rules`);
      else if (this.#failed.has(r.address)) reasons.push(`${r.address} failed earlier in this chat`);
      else if (options.exclude?.has(r.address) === true) reasons.push(`${r.address} failed this turn`);
      else return true;
      return false;
    });
    const { quoted, unreachable } = await gatherQuotes(c.libp2p, candidates, {
      modelSha256: c.modelSha256,
      ...(c.adapter !== undefined && { adapterSha256: c.adapter.sha256 }),
      timeoutMs: c.requestTimeoutMs ?? 10_000,
      reputation,
      ...(signal !== undefined && { signal }),
    });
    for (const u of unreachable) reasons.push(`${u.record.address} unreachable (${u.error instanceof Error ? u.error.message : String(u.error)})`);
    const ranked = rankProviders(quoted, {
      ...c.ranking,
      modelSha256: c.modelSha256,
      ...(c.adapter !== undefined && { adapterSha256: c.adapter.sha256 }),
    });
    if (ranked.length < quoted.length) reasons.push(`${quoted.length - ranked.length} quoted but did not qualify (model, address or limits)`);
    this.#unranked = reasons;
    // Nothing new qualifies: the last ranking stays (its providers failed this turn only, e.g. busy).
    if (ranked.length === 0) throw new NoProviderError(c.modelSha256, reasons);
    // Those left out as failing this turn stay candidates for later turns, after the fresh ones.
    const excluded = this.#ranked.filter((p) => options.exclude?.has(p.address) === true && !ranked.some((r) => r.candidate.address === p.address));
    this.#ranked = [...ranked.map((r) => r.candidate), ...excluded];
  }

  /**
   * Runs one turn and pays for it. On a provider failure the turn starts over with the next provider
   * (`turn:retry`); what the failed one streamed is discarded and not paid.
   *
   * @example
   * const { text, provider, failovers } = await chat.turn({ prompt: [{ role: "user", content: "Hi" }], maxTokens: 128 })
   * @throws AllProvidersFailedError when every provider failed the turn (nothing was paid);
   *   SpendingCapReachedError; EscrowTooLowError (with the `shortfall`: lane, free deposit, wallet) or
   *   LaneReleasingError when no provider's funds can back the turn; LaneCommitError when the one commit
   *   transaction failed; TurnInProgressError; ChatClosedError; the signal's reason.
   */
  async turn(options: TurnOptions): Promise<TurnResult> {
    if (this.closed) throw new ChatClosedError();
    if (this.#running) throw new TurnInProgressError();
    if (!Number.isInteger(options.maxTokens) || options.maxTokens < 1) throw new InvalidChatOptionsError("maxTokens must be a positive integer");
    this.#running = true;
    const run = this.#turn(options);
    this.#turnDone = run.catch(() => undefined);
    try {
      return await run;
    } finally {
      this.#running = false;
    }
  }

  /**
   * Ends the chat: a running turn is aborted (what it delivered paid, as for any cancelled turn), then every
   * session still open is closed with its provider, so that it settles them now rather than at expiry. Never
   * fails: a provider that does not answer within CLOSE_TIMEOUT_MS is reported by `session:close-failed`.
   * Closing twice returns the first close.
   *
   * @example
   * await chat.close()
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing.abort(new ChatClosedError());
      await this.#turnDone;
      await Promise.all(this.#allSessions.filter((s) => !s.closed).map((s) => this.#closeSession(s).catch(() => undefined)));
    })();
    return this.#closed;
  }

  #eligible(address: string): boolean {
    return !this.blocklist.has(address) && !this.#failed.has(address);
  }

  #pick(tried: ReadonlySet<string>): QuotedProvider | undefined {
    const ok = (p: QuotedProvider) => this.#eligible(p.address) && !tried.has(p.address);
    const current = this.#ranked.find((p) => p.address === this.#current);
    if (current !== undefined && ok(current)) return current;
    return this.#ranked.find(ok);
  }

  async #turn(options: TurnOptions): Promise<TurnResult> {
    const prompt = toPrompt(options.prompt);
    const signal = options.signal === undefined ? this.#closing.signal : AbortSignal.any([options.signal, this.#closing.signal]);
    const tokenizer = this.#config.tokenizer;
    const expectedInputTokens = tokenizer?.count(prompt);
    const failures: ProviderFailure[] = [];
    const tried = new Set<string>();
    let refreshed = false;
    let busyRounds = 0;
    let last: { address: string; discardedText: string } | undefined;
    for (let attempt = 0; ; attempt++) {
      signal.throwIfAborted();
      let provider = this.#pick(tried);
      if (provider === undefined && !refreshed) {
        // Every known candidate failed: the registry may know others by now.
        refreshed = true;
        try {
          await this.refreshProviders({ signal, exclude: tried });
        } catch (err) {
          if (!(err instanceof NoProviderError)) throw err;
        }
        provider = this.#pick(tried);
      }
      if (provider === undefined && busyRounds < BUSY_ROUNDS) {
        // Every candidate left is only busy: wait a little (backing off, with jitter so that clients refused
        // together do not return together) and ask them again rather than failing the turn.
        const busy = [...tried].filter((address) => failures.findLast((f) => f.provider === address)?.kind === "busy");
        if (busy.length > 0) {
          await sleep(BUSY_BACKOFF_MS * 2 ** busyRounds * (1 + Math.random()), signal);
          busyRounds++;
          for (const address of busy) tried.delete(address);
          provider = this.#pick(tried);
        }
      }
      if (provider === undefined) throw this.#exhausted(failures);
      if (last !== undefined) {
        this.dispatchEvent(
          new CustomEvent("turn:retry", { detail: { turn: this.#turns, attempt, failed: last.address, discardedText: last.discardedText } }),
        );
      }
      tried.add(provider.address);
      const partial = { text: "" };
      try {
        const result = await this.#attempt(provider, prompt, options, signal, partial, expectedInputTokens);
        this.#turns++;
        return { ...result, failovers: failures };
      } catch (err) {
        const kind = failureKind(err);
        if (kind === undefined || signal.aborted) throw signal.aborted ? signal.reason : err;
        const failure: ProviderFailure = { provider: provider.address, kind, error: err };
        failures.push(failure);
        if (kind === "stall" || kind === "died" || kind === "error" || kind === "price") this.#failed.set(provider.address, failure);
        if (this.#current === provider.address) this.#current = undefined;
        this.dispatchEvent(
          new CustomEvent("provider:failed", {
            detail: { provider: provider.address, turn: this.#turns, kind, error: err, discardedText: partial.text },
          }),
        );
        last = { address: provider.address, discardedText: partial.text };
      }
    }
  }

  #exhausted(failures: ProviderFailure[]): Error {
    if (failures.length === 0) return new NoProviderError(this.#config.modelSha256, this.#unranked);
    const escrowShort = failures.every(
      (f) =>
        f.kind === "funds" ||
        f.error instanceof InsufficientEscrowError ||
        (f.error instanceof SessionRejectedError && f.error.code === "InsufficientEscrowError"),
    );
    if (escrowShort) {
      // The client's own figures say what to do better than a provider's refusal.
      const own = failures.findLast((f) => f.error instanceof EscrowTooLowError || f.error instanceof LaneReleasingError)?.error;
      return own instanceof Error ? own : new EscrowTooLowError(this.payer, this.#config.spendingCap - this.spent);
    }
    return new AllProvidersFailedError(this.#config.modelSha256, failures);
  }

  /**
   * One attempt at the turn on `provider`, run while no other chat of the ledger runs a turn there (the
   * provider refuses a payer's turn while another of its turns runs or is unpaid). Any throw leaves its
   * session: our counters may no longer match. A session a newer one of its channel replaced is renewed once.
   */
  async #attempt(
    provider: QuotedProvider,
    prompt: Prompt,
    options: TurnOptions,
    signal: AbortSignal,
    partial: { text: string },
    expectedInputTokens: number | undefined,
  ): Promise<Omit<TurnResult, "failovers">> {
    return this.#lanes.exclusive(provider.address, signal, async () => {
      try {
        return await this.#attemptOn(provider, prompt, options, signal, partial, expectedInputTokens);
      } catch (err) {
        // Refused before it started because the session is gone: another chat of the channel opened a newer one
        // (the provider refuses the older one's turns, or already removed it), the provider restarted, or chain
        // time passed the session's expiry while this clock did not (a devnet's time travel: opening a new
        // session reads the chain's time again). Once, on a new session with the same provider.
        if (!sessionGone(err) || partial.text !== "") throw err;
        return this.#attemptOn(provider, prompt, options, signal, partial, expectedInputTokens);
      }
    });
  }

  async #attemptOn(
    provider: QuotedProvider,
    prompt: Prompt,
    options: TurnOptions,
    signal: AbortSignal,
    partial: { text: string },
    expectedInputTokens: number | undefined,
  ): Promise<Omit<TurnResult, "failovers">> {
    const c = this.#config;
    const session = await this.#ensureSession(provider, options.maxTokens, inputBound(prompt, expectedInputTokens), signal);
    const request: InferenceRequestInput = {
      type: "inference.request",
      sessionId: session.sessionId,
      turn: session.nextTurn,
      model: c.modelSha256,
      adapters: c.adapter === undefined ? [] : [c.adapter.sha256],
      prompt,
      sampling: options.sampling ?? {},
      maxTokens: options.maxTokens,
      stop: options.stop ?? [],
    };
    // Consumed even if the turn fails, as on the provider.
    session.nextTurn++;
    let done: InferenceDone;
    try {
      done = await this.#stream(provider, request, options, signal, partial);
    } catch (err) {
      if (err instanceof ProviderBusyError && partial.text === "") {
        // Refused before it started: the provider kept its turn number and counters, so the session stays.
        session.nextTurn--;
      } else {
        session.usable = false;
        if (sessionGone(err)) session.closed = true;
        // Cancelled by the caller (or the chat closing): what the provider delivered is paid, and the session ends.
        else if (signal.aborted) await this.#settleCancelled(session, request.turn, prompt, expectedInputTokens, options.maxTokens, partial.text);
      }
      throw err;
    }
    const check = checkTurnUsage({
      usage: done.usage,
      maxTokens: options.maxTokens,
      prompt,
      ...(expectedInputTokens !== undefined && { expectedInputTokens }),
      promptUpperBound: promptTokenUpperBound(prompt),
      outputText: partial.text,
      outputUpperBound: outputTokenUpperBound(partial.text, {
        stop: request.stop ?? [],
        ...(c.tokenizer !== undefined && { tokenizer: c.tokenizer }),
      }),
      previous: session.vouched,
      receipt: done.receipt,
      receiptSignature: done.signature,
      expected: {
        payer: this.payer,
        provider: provider.address,
        agentId: c.agentId,
        session: session.request.session,
        turn: request.turn,
        modelSha256: c.modelSha256,
        adapterSha256s: request.adapters ?? [],
      },
      escrow: c.escrow,
    });
    if (check.status !== "ok") {
      session.usable = false;
      this.blocklist.drop(provider.address, check.violations);
      this.dispatchEvent(new CustomEvent("provider:dropped", { detail: { provider: provider.address, violations: check.violations } }));
      // A receipt that is not this turn's proves nothing was delivered as billed: run the turn elsewhere.
      if (check.status === "invalid") throw new UsageViolationError(provider.address, check.violations[0]!);
    }
    const { payment, cost } = await this.#pay(session, check.cumulative);
    if (check.status === "ok" && payment?.ack !== undefined) this.#current = provider.address;
    return {
      text: partial.text,
      stopReason: done.stopReason,
      usage: done.usage,
      billed: check.billed,
      receipt: done.receipt,
      receiptSignature: done.signature,
      provider: provider.address,
      peerId: provider.peerId.toString(),
      payment,
      cost,
      violations: check.violations,
    };
  }

  /** Streams the turn; throws ProviderStalledError when no message comes within the stall timeout. */
  async #stream(
    provider: QuotedProvider,
    request: InferenceRequestInput,
    options: TurnOptions,
    signal: AbortSignal,
    partial: { text: string },
  ): Promise<InferenceDone> {
    const c = this.#config;
    const stall = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => stall.abort(new ProviderStalledError(provider.address, c.stallTimeoutMs)), c.stallTimeoutMs);
    };
    arm();
    let done: InferenceDone | undefined;
    let index = 0;
    try {
      const responses = streamProtocol(c.libp2p, provider.peerId, "inference", request, {
        signal: AbortSignal.any([signal, stall.signal]),
        timeoutMs: c.turnTimeoutMs ?? 600_000,
      });
      for await (const msg of responses) {
        arm();
        if (done !== undefined) throw new ProviderStreamCorruptError(provider.address, "a message after inference.done");
        if (msg.type === "inference.done") {
          done = msg;
          continue;
        }
        if (msg.index !== index) throw new ProviderStreamCorruptError(provider.address, `chunk ${msg.index} where ${index} was due`);
        index++;
        partial.text += msg.text;
        options.onChunk?.(msg.text, { provider: provider.address, index: msg.index });
      }
    } catch (err) {
      if (stall.signal.aborted && !signal.aborted) throw stall.signal.reason;
      throw err;
    } finally {
      clearTimeout(timer);
    }
    // A provider shutting down closes its streams cleanly: an end without a result is a provider gone away.
    if (done === undefined) throw new ProtocolStreamError(`Provider ${provider.address} closed the inference stream before the end of the turn.`);
    return done;
  }

  /**
   * The usable session with `provider`, or a new one; renews one that nears its expiry or whose cap cannot
   * take the turn. A new session: a fresh quote no higher than the ranked one, the rates in force, and a lane
   * that covers its cap (funded first when short).
   */
  async #ensureSession(provider: QuotedProvider, maxTokens: number, turnInput: bigint, signal: AbortSignal): Promise<ProviderSession> {
    const c = this.#config;
    // The turn's worst case: every input token the usage check lets through, and maxTokens of output.
    const turnBound = (vouched: TokenTotals, rates: VoucherRates) =>
      sessionCost({ inputTokens: vouched.inputTokens + turnInput, outputTokens: vouched.outputTokens + BigInt(maxTokens) }, rates);
    const existing = this.#sessions.get(provider.address);
    if (existing !== undefined && existing.usable && this.#chainNow() < existing.expiry - BigInt(RENEW_MARGIN_S)) {
      // The provider checks the same bound (served + the turn within the cap) and would refuse the turn.
      if (turnBound(existing.vouched, existing.rates) <= existing.spendingCap) return existing;
    }
    // Prices may have changed since the ranking: lower is taken, higher is a bait and switch.
    const { quote } = await requestQuote(c.libp2p, provider.peerId, {
      modelSha256: c.modelSha256,
      ...(c.adapter !== undefined && { adapterSha256: c.adapter.sha256 }),
      timeoutMs: c.requestTimeoutMs ?? 10_000,
      signal,
    });
    const prices = { input: BigInt(quote.priceInputPerMillion), output: BigInt(quote.priceOutputPerMillion) };
    const ceiling = this.#priceCeiling(provider);
    if (prices.input > ceiling.input || prices.output > ceiling.output) throw new QuoteRaisedError(provider.address, prices, ceiling);

    const escrow = c.contracts.inferenceEscrow;
    const runner = escrow.runner?.provider;
    const [block, settled, lane, royalty, fee, free] = await Promise.all([
      runner?.getBlock("latest"),
      escrow.settledOf(this.payer, provider.address, c.agentId),
      escrow.laneOf(this.payer, provider.address),
      c.contracts.personaRegistry.royaltyScheduleOf(c.personaId),
      escrow.protocolFee(),
      escrow.depositOf(this.payer),
    ]);
    signal.throwIfAborted();
    if (block != null) this.#clockOffset = BigInt(block.timestamp) - wallNow();
    // Chain time is the one that judges a voucher (the escrow) and the provider's checks; a devnet's time
    // travel moves it away from the wall clock, so the expiry is reckoned from it.
    const chain = this.#chainNow();
    const royaltyRate = rateFor(royalty, chain, chain + BigInt(Math.min(c.sessionSeconds, c.maxLifetime - LIFETIME_MARGIN_S)));
    const feeRate = rateFor(fee, chain, royaltyRate.expiry);
    const expiry = feeRate.expiry;
    const rates: VoucherRates = {
      priceInputPerMillion: prices.input,
      priceOutputPerMillion: prices.output,
      royaltyPerMillion: royaltyRate.rate,
      feeBps: feeRate.rate,
    };
    const spent = this.spent;
    const remaining = c.spendingCap - spent;
    const needed = turnBound(ZERO_TOTALS, rates);
    if (needed > remaining) throw new SpendingCapReachedError(spent, c.spendingCap, needed);

    // The lane, less what this payer's chats vouched to the provider unsettled and what their other open
    // sessions there reserve: what this session may count on.
    const [laneAmount, releaseAt] = lane;
    if (releaseAt !== 0n) throw new LaneReleasingError(provider.address, releaseAt);
    const owed = unsettledVouched(this.#lanes.sessions, provider.address, c.agentId, { session: settled[0], paid: settled[3] });
    const reserved = this.#lanes.reservedBy(provider.address, chain, new Set(existing === undefined ? [] : [existing]));
    let available = laneAmount > owed + reserved ? laneAmount - owed - reserved : 0n;
    let deposit = free;
    if (available < remaining) {
      const funded = await this.#fundLane(provider.address, remaining - available, needed - available, deposit, signal);
      if (funded !== undefined) {
        available += funded.amount;
        if (funded.method === "commit") deposit -= funded.amount;
      }
    }
    if (available < needed) {
      throw new EscrowTooLowError(this.payer, c.spendingCap, {
        provider: provider.address,
        needed,
        lane: available,
        deposit,
        wallet: await this.#walletBalance(),
      });
    }

    // What the session asks for: the chat's remaining cap, within what the lane holds for it, and no more than
    // SESSION_CAP_TURNS worst-case turns: the provider holds a session's cap against the lane while it is open,
    // so a smaller one leaves the lane to the payer's other chats and processes (the next session takes over
    // once it is used up).
    const sessionCap = () => [remaining, available, needed * SESSION_CAP_TURNS].reduce((a, b) => (a < b ? a : b));
    let cap = sessionCap();
    let refunded = false;
    let renumbered = false;
    let floor = settled[0];
    // The session it replaces is closed first: the provider then stops holding its cap against the lane.
    if (existing !== undefined && !existing.closed) {
      existing.usable = false;
      await this.#closeSession(existing).catch(() => undefined);
    }
    for (let attempt = 0; ; attempt++) {
      // A fresh number for every open asked, from the one source of the channel's numbers that this payer's
      // chats share: a provider refuses a number at or below one it has seen (attack 8 of issue 14).
      const number = this.#lanes.nextSession(provider.address, c.agentId, floor);
      const request: SessionRequest = {
        payer: this.payer,
        provider: provider.address,
        agentId: c.agentId.toString(),
        personaId: c.personaId.toString(),
        session: number.toString(),
        priceInputPerMillion: prices.input.toString(),
        priceOutputPerMillion: prices.output.toString(),
        royaltyPerMillion: rates.royaltyPerMillion.toString(),
        feeBps: rates.feeBps.toString(),
        spendingCap: cap.toString(),
        expiry: expiry.toString(),
        chainId: BigInt(c.escrow.chainId).toString(),
        escrow: getAddress(c.escrow.address),
      };
      const signature = await signSessionRequest(c.signer, request);
      const response = await requestProtocol(
        c.libp2p,
        provider.peerId,
        "session",
        {
          type: "session.open",
          request,
          signature,
          // A fresh key per session: the provider's saved KV state of this session is readable with it alone.
          stateKey: hexlify(randomBytes(32)),
          ...(c.adapter !== undefined && { adapterCid: c.adapter.cid }),
        },
        { signal, timeoutMs: c.requestTimeoutMs ?? 10_000 },
      );
      if (response.type === "session.closed") {
        throw new ProviderStreamCorruptError(provider.address, "a session open answered session.closed");
      }
      if (response.type === "session.rejected") {
        // Another chat of the channel (another device, a clock behind) numbered a session higher: once above it.
        if (response.code === "SessionNumberTooLowError" && response.latestSession !== undefined && !renumbered) {
          renumbered = true;
          const latest = BigInt(response.latestSession);
          if (latest > floor) floor = latest;
          continue;
        }
        // The provider counts more against the lane than this client knows of (another process's sessions
        // still open there, vouchers it holds unsettled): commit once more from the free deposit, then ask
        // for smaller caps, down to the turn's worst case.
        if (response.code === "InsufficientEscrowError" && attempt < MAX_CAP_RETRIES) {
          if (!refunded && deposit > 0n) {
            refunded = true;
            const funded = await this.#fundLane(provider.address, remaining < deposit ? remaining : deposit, 1n, deposit, signal);
            if (funded !== undefined) {
              available += funded.amount;
              deposit -= funded.amount;
              cap = sessionCap();
              // Providers cache a lane's reading for a moment: ask once it shows the commit.
              await sleep(LANE_READ_SETTLE_MS, signal);
              continue;
            }
          }
          if (cap / 2n >= needed) {
            cap /= 2n;
            continue;
          }
        }
        throw new SessionRejectedError(provider.address, response.code, response.message, response.retryable);
      }
      const sessionId = hashSessionRequest(request);
      if (response.sessionId.toLowerCase() !== sessionId.toLowerCase()) {
        throw new ProviderStreamCorruptError(provider.address, `session id ${response.sessionId} is not the request's hash ${sessionId}`);
      }
      if (existing !== undefined) existing.usable = false;
      const session: ProviderSession = {
        provider: provider.address,
        quoted: provider,
        agentId: c.agentId,
        session: number,
        rates,
        spendingCap: cap,
        request,
        sessionId,
        expiry: BigInt(response.expiry) < expiry ? BigInt(response.expiry) : expiry,
        nextTurn: 0,
        vouched: ZERO_TOTALS,
        usable: true,
        closed: false,
      };
      this.#sessions.set(provider.address, session);
      this.#allSessions.push(session);
      this.#lanes.add(session);
      this.dispatchEvent(
        new CustomEvent("session:opened", {
          detail: {
            provider: provider.address,
            sessionId,
            session: number,
            expiry,
            spendingCap: cap,
            royaltyPerMillion: rates.royaltyPerMillion,
            feeBps: rates.feeBps,
          },
        }),
      );
      return session;
    }
  }

  /** The most a session with `provider` may charge per million tokens: its ranked quote, within maxPrices. */
  #priceCeiling(provider: QuotedProvider): { input: bigint; output: bigint } {
    const min = (a: bigint, b: bigint | undefined) => (b !== undefined && b < a ? b : a);
    const max = this.#config.ranking?.maxPrices;
    return {
      input: min(BigInt(provider.quote.priceInputPerMillion), max?.input),
      output: min(BigInt(provider.quote.priceOutputPerMillion), max?.output),
    };
  }

  async #walletBalance(): Promise<bigint> {
    const c = this.#config;
    const runner = c.contracts.inferenceEscrow.runner;
    this.#token ??= await c.contracts.inferenceEscrow.token();
    return TestStablecoin__factory.connect(this.#token, runner).balanceOf(this.payer);
  }

  /**
   * Commits up to `want` to the lane with `provider`: from the free deposit when it holds at least `minimum`
   * (the turn's shortfall), else from the wallet with a permit when the wallet does. Undefined when neither
   * can, or the lane already covers a turn and the free deposit is empty.
   */
  async #fundLane(provider: string, want: bigint, minimum: bigint, free: bigint, signal: AbortSignal): Promise<LaneFunding | undefined> {
    const c = this.#config;
    let amount: bigint;
    let method: LaneFunding["method"];
    if (free > 0n && free >= minimum) {
      amount = want < free ? want : free;
      method = "commit";
    } else {
      if (minimum <= 0n) return undefined;
      const wallet = await this.#walletBalance();
      if (wallet < minimum) return undefined;
      amount = want < wallet ? want : wallet;
      method = "permit";
    }
    const funded = await commitToLane({ escrow: c.contracts.inferenceEscrow, signer: c.signer, provider, amount, method, signal });
    this.dispatchEvent(new CustomEvent("lane:committed", { detail: { provider, amount, txHash: funded.txHash, method } }));
    return funded;
  }

  /**
   * Closes `session` with its provider (bounded by CLOSE_TIMEOUT_MS) and returns the served totals it
   * answered. Only this client's libp2p peer, which opened the session, may close it.
   * @throws what the session protocol answered (SessionNotFoundError once the provider dropped the session), or
   *   the timeout; `session:close-failed` reports it.
   */
  async #closeSession(session: ProviderSession): Promise<{ served: TokenTotals; vouched: TokenTotals }> {
    const c = this.#config;
    session.closed = true;
    session.usable = false;
    try {
      const answer = await requestProtocol(
        c.libp2p,
        session.quoted.peerId,
        "session",
        { type: "session.close", sessionId: session.sessionId },
        { timeoutMs: Math.min(c.requestTimeoutMs ?? 10_000, CLOSE_TIMEOUT_MS) },
      );
      if (answer.type !== "session.closed" || answer.sessionId.toLowerCase() !== session.sessionId.toLowerCase()) {
        throw new ProviderStreamCorruptError(session.provider, `a session close answered ${answer.type}`);
      }
      const totals = (t: { inputTokens: string; outputTokens: string }): TokenTotals => ({ inputTokens: BigInt(t.inputTokens), outputTokens: BigInt(t.outputTokens) });
      const served = totals(answer.served);
      this.dispatchEvent(new CustomEvent("session:closed", { detail: { provider: session.provider, sessionId: session.sessionId, served } }));
      return { served, vouched: totals(answer.vouched) };
    } catch (error) {
      this.dispatchEvent(new CustomEvent("session:close-failed", { detail: { provider: session.provider, sessionId: session.sessionId, error } }));
      throw error;
    }
  }

  /**
   * After the caller aborted turn `turn` mid-stream: closes the session and pays what the provider served of
   * the turn, when plausible against `text` (the text received) and the prompt's bound; else pays nothing and
   * drops the provider. Never throws: a provider that does not answer is left to its session's expiry.
   */
  async #settleCancelled(
    session: ProviderSession,
    turn: number,
    prompt: Prompt,
    expectedInputTokens: number | undefined,
    maxTokens: number,
    text: string,
  ): Promise<void> {
    let served: TokenTotals;
    try {
      ({ served } = await this.#closeSession(session));
    } catch {
      return;
    }
    const base = session.vouched;
    const owed: TokenTotals = {
      inputTokens: served.inputTokens > base.inputTokens ? served.inputTokens - base.inputTokens : 0n,
      outputTokens: served.outputTokens > base.outputTokens ? served.outputTokens - base.outputTokens : 0n,
    };
    const detail = { provider: session.provider, turn, text, billed: owed };
    if (owed.inputTokens === 0n && owed.outputTokens === 0n) {
      this.dispatchEvent(new CustomEvent("turn:cancelled", { detail: { ...detail, cost: ZERO_COST, paid: false } }));
      return;
    }
    // A provider's counts below ours, on either side, would make its totals a decrease: nothing is signed.
    const outputBound = BigInt(new TextEncoder().encode(text).length + CANCEL_OUTPUT_SLACK_TOKENS);
    const maxOutput = outputBound < BigInt(maxTokens) ? outputBound : BigInt(maxTokens);
    const inputMax = inputBound(prompt, expectedInputTokens);
    const violations: UsageViolation[] = [];
    if (served.inputTokens < base.inputTokens || served.outputTokens < base.outputTokens) {
      violations.push({ kind: "cumulative-mismatch", message: `served totals ${served.inputTokens}/${served.outputTokens} below the vouched ${base.inputTokens}/${base.outputTokens}` });
    }
    if (owed.outputTokens > maxOutput) {
      violations.push({
        kind: "output-over-max",
        message: `a cancelled turn billed ${owed.outputTokens} output tokens for ${text.length} characters received (at most ${maxOutput})`,
      });
    }
    if (owed.inputTokens > inputMax) {
      violations.push({ kind: "input-over-bound", message: `a cancelled turn billed ${owed.inputTokens} input tokens for a prompt of at most ${inputMax}` });
    }
    if (violations.length > 0) {
      this.blocklist.drop(session.provider, violations);
      this.dispatchEvent(new CustomEvent("provider:dropped", { detail: { provider: session.provider, violations } }));
      this.dispatchEvent(new CustomEvent("turn:cancelled", { detail: { ...detail, cost: ZERO_COST, paid: false } }));
      return;
    }
    try {
      const { payment, cost } = await this.#pay(session, served);
      this.dispatchEvent(new CustomEvent("turn:cancelled", { detail: { ...detail, cost, paid: payment?.ack !== undefined } }));
    } catch (error) {
      // Above the session's cap (VoucherAboveCapError): not signed; the provider keeps its turn unpaid.
      this.dispatchEvent(new CustomEvent("turn:cancelled", { detail: { ...detail, cost: ZERO_COST, paid: false } }));
      void error;
    }
  }

  /**
   * Signs and sends the voucher for `cumulative`, unless it adds nothing. Not tied to the turn's signal: the
   * turn was delivered, so it is paid even if the caller has meanwhile given up on it. Never signs above the
   * session's cap.
   */
  async #pay(session: ProviderSession, cumulative: TokenTotals): Promise<{ payment: TurnPayment | undefined; cost: TurnCost }> {
    const c = this.#config;
    if (cumulative.inputTokens === session.vouched.inputTokens && cumulative.outputTokens === session.vouched.outputTokens) {
      return { payment: undefined, cost: ZERO_COST };
    }
    const r = session.request;
    const voucher: Voucher = {
      payer: r.payer,
      provider: r.provider,
      agentId: BigInt(r.agentId),
      session: BigInt(r.session),
      inputTokens: cumulative.inputTokens,
      outputTokens: cumulative.outputTokens,
      ...session.rates,
      expiry: BigInt(r.expiry),
    };
    const provider = session.provider;
    const full = sessionCost(cumulative, session.rates);
    if (full > session.spendingCap) {
      session.usable = false;
      throw new VoucherAboveCapError(provider, full, session.spendingCap);
    }
    const cost = voucherCost(voucher, session.vouched);
    const signature = await signVoucher(c.signer, voucher, c.escrow);
    try {
      const ack = await requestProtocol(
        c.libp2p,
        session.quoted.peerId,
        "voucher",
        { type: "voucher", voucher: voucherToWire(voucher), signature },
        // Not cut by close(): the turn was delivered, and its voucher is what close() waits for.
        { timeoutMs: c.requestTimeoutMs ?? 10_000 },
      );
      if (ack.session !== r.session || BigInt(ack.inputTokens) !== voucher.inputTokens || BigInt(ack.outputTokens) !== voucher.outputTokens) {
        throw new ProviderStreamCorruptError(provider, `voucher acknowledged as ${ack.inputTokens}/${ack.outputTokens} of session ${ack.session}`);
      }
      // Counted as spent even if unacknowledged below: the signature is out there and can be settled.
      session.vouched = cumulative;
      this.dispatchEvent(new CustomEvent("voucher:sent", { detail: { provider, voucher, signature, ack } }));
      return { payment: { voucher, signature, ack }, cost };
    } catch (error) {
      session.vouched = cumulative;
      session.usable = false;
      this.dispatchEvent(new CustomEvent("voucher:failed", { detail: { provider, voucher, signature, error } }));
      return { payment: { voucher, signature, ack: undefined }, cost };
    }
  }
}

/**
 * The rate to sign from a schedule (in force, next, when next takes effect) for a session from `now` to
 * `expiry`, and the expiry to use: the rate in force, with the session ended before a pending rise (the
 * escrow would refuse its vouchers after it); or, when that leaves no workable session, the higher rate.
 */
function rateFor([current, next, effectiveAt]: readonly [bigint, bigint, bigint], now: bigint, expiry: bigint): { rate: bigint; expiry: bigint } {
  if (effectiveAt === 0n || next <= current) return { rate: current, expiry };
  const before = effectiveAt - BigInt(RATE_MARGIN_S);
  if (expiry <= before) return { rate: current, expiry };
  if (before - now >= BigInt(MIN_WORKABLE_SESSION_S)) return { rate: current, expiry: before };
  return { rate: next, expiry };
}

/** Whether the provider refused a turn because its session is over (replaced, unknown, or expired). */
function sessionGone(err: unknown): boolean {
  return err instanceof SessionSupersededError || err instanceof SessionNotFoundError || err instanceof SessionExpiredError;
}

/** Which failures move a turn to another provider; undefined for those that would fail anywhere. */
function failureKind(err: unknown): ProviderFailureKind | undefined {
  if (err instanceof ProviderStalledError || err instanceof ProtocolTimeoutError) return "stall";
  if (err instanceof ProviderBusyError) return "busy";
  if (err instanceof ProtocolStreamError) return "died";
  if (err instanceof SessionRejectedError) return "rejected";
  // Replaced by a newer session of the channel twice in a row: another chat is using the provider; next one.
  if (err instanceof SessionSupersededError) return "rejected";
  if (err instanceof UsageViolationError) return "receipt";
  // The session is gone on the provider (restart, expiry) or its counters disagree with ours: the provider
  // may well serve a new session later, so it is only skipped for this turn.
  if (err instanceof SessionNotFoundError || err instanceof SessionExpiredError || err instanceof PaymentRequiredError) return "rejected";
  if (err instanceof InsufficientEscrowError) return "rejected";
  // Priced above the quote it was chosen for: skipped for the rest of the chat.
  if (err instanceof QuoteRaisedError) return "price";
  // The payer's funds cannot back a session there (another provider's lane may).
  if (err instanceof EscrowTooLowError || err instanceof LaneReleasingError) return "funds";
  if (err instanceof ProviderStreamCorruptError || err instanceof ProtocolError) return "error";
  // Anything else (the signer refusing, the chain unreachable, a lane commit that failed (LaneCommitError),
  // a bug in onChunk) would fail on any provider.
  return undefined;
}
