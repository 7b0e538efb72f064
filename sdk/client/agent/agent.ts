/**
 * The agent runtime: one object that a CLI chat, the OpenAI gateway and `soulmesh up` all drive. Each turn
 * assembles a bounded prompt from the agent's memory (decrypted locally), streams it through a metered chat,
 * records the user's message and the reply in the journal before returning, commits them to IPFS, and
 * publishes the memory head on chain every few turns and on close. Opening finds the memory wherever it is
 * newest: this machine's folder, or the head on chain (any machine with the owner's wallet recovers it).
 */
import { join } from "node:path";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import { getAddress, isAddress, type Signer } from "ethers";
import type { Libp2p } from "libp2p";
import type { SoulmeshContracts } from "../../chain/contracts.js";
import { withRevertDecoding } from "../../chain/revert.js";
import type { EscrowRef } from "../../chain/voucher.js";
import { TypedEventTarget } from "../../events.js";
import { assemblePrompt, DEFAULT_MEMORY_BUDGET, DEFAULT_PERSONA_BUDGET, type DroppedItem } from "../../memory/assemble.js";
import { completeThroughChat } from "../../memory/complete.js";
import { AgentMemory, type MaintenanceFailed } from "../../memory/memory.js";
import type { CharacterCard } from "../../memory/persona/card.js";
import type { Embedder } from "../../memory/retrieval/embedder.js";
import { estimateTokens, type Complete, type TokenCounter } from "../../memory/types.js";
import type { StopReason, Usage } from "../../protocol/messages.js";
import { sleep } from "../../time.js";
import { generateAgentKey, ownerKeyFromSigner, unwrapAgentKey, wrapAgentKey, type AgentRef } from "../../vault/crypto.js";
import type { Commit } from "../../vault/dag.js";
import { VaultBlockError, VaultDecryptError, VaultEnvelopeError } from "../../vault/errors.js";
import { publishHead, readPublishedHead, type PublishedHead } from "../../vault/head.js";
import { TurnJournal } from "../../vault/journal.js";
import type { BlockStore } from "../../vault/types.js";
import { AgentVault, loadAgent, VAULT_HEAD_META, type LoadedAgent, type Turn } from "../../vault/vault.js";
import { TurnInProgressError } from "../errors.js";
import { LaneLedger } from "../lanes.js";
import { openChat, type ChatEvents, type ChatSession, type OpenChatOptions } from "../session.js";
import type { LocalTokenizer } from "../tokenizer.js";
import type { TokenTotals } from "../usage.js";
import { AgentClosedError, InvalidAgentOptionsError, MemoryHeadUnreadableError, NotAgentOwnerError, TurnCancelledError } from "./errors.js";
import { LazyChat } from "./lazy-chat.js";
import { readLocalState, writeLocalState, type LocalAgentState, type SyncedHead } from "./local-state.js";


/** Longest `close()` waits for background maintenance before cutting it off. */
const DEFAULT_MAINTENANCE_DEADLINE_MS = 30_000;

/** The persona the agent runs, resolved by the caller (its card read from IPFS by the manifest CID). */
export interface AgentPersona {
  personaId: bigint;
  card: CharacterCard;
  /** SHA-256 of the persona's base model file. */
  modelSha256: string;
  /** The persona's LoRA adapter, required when it has one. */
  adapter?: { cid: string; sha256: string };
  /** The creator's user id: instructions they give the agent go in its notebook like the owner's. */
  creator?: string;
}

/** What {@link openAgent} needs. */
export interface OpenAgentOptions {
  libp2p: Libp2p;
  /** Contract handles on a read provider; head publishes are sent by `signer`. */
  contracts: Pick<SoulmeshContracts, "providerRegistry" | "personaRegistry" | "agentRegistry" | "inferenceEscrow">;
  /** The agent's owner: derives the memory key, pays the turns (vouchers) and publishes the head (transactions). */
  signer: Signer;
  escrow: EscrowRef;
  agentId: bigint;
  /** Where the agent's encrypted blocks live; started by the caller, not stopped by the agent. */
  store: BlockStore;
  /** This agent's local folder (its journal and wrapped key); created when missing. */
  dataDir: string;
  persona: AgentPersona;
  embedder: Embedder;
  /** The model's vocabulary: prompts are then budgeted in its tokens and the provider's input counts checked exactly. */
  tokenizer?: LocalTokenizer;
  /** The most the user's turns may cost, full price (provider, royalty and fee), in token units. */
  spendingCap: bigint;
  /** Tokens for memories and recent turns in each prompt (default 2,048); the persona and the message are apart. */
  memoryBudget?: number;
  /** Tokens for the persona part of each prompt (default 1,024). */
  personaBudget?: number;
  /** Reply length when `send` is not told (default 256). */
  maxTokens?: number;
  /** The head is published every this many turns (default 5), and on close. */
  headEveryTurns?: number;
  /** Publish the head on chain at all (default true); off, memory is still committed to IPFS every turn. */
  publishHead?: boolean;
  /**
   * Background maintenance (summaries, profile, follow-ups) through a second chat of its own, so the user's
   * turns never wait behind it; `false` turns it off. Its cap defaults to a fifth of `spendingCap`.
   */
  maintenance?: false | { spendingCap?: bigint; deadlineMs?: number; segmentTurns?: number };
  /** Open the chat (find and quote providers) now rather than at the first turn (default true). */
  connect?: boolean;
  /** Passed to both chats (stall timeout, session length, ranking, a shared blocklist…). */
  chat?: Pick<OpenChatOptions, "stallTimeoutMs" | "turnTimeoutMs" | "requestTimeoutMs" | "sessionSeconds" | "fromBlock" | "blocklist" | "ranking">;
  signal?: AbortSignal;
}

/** Where opened memory came from. */
export interface MemoryLoaded {
  from: "local" | "chain" | "new";
  /** The head opened, if any. */
  cid?: string;
  seq?: number;
  turns: number;
  /** Local turns not yet published, carried over onto a newer head from chain (another machine chatted since). */
  carried: number;
  /** The local head set aside for the chain's newer one. */
  replacedLocal?: { cid: string; seq: number };
}

/** What {@link Agent.send} takes besides the message. */
export interface SendOptions {
  /** Who speaks (default the owner's address). */
  speaker?: string;
  /** Said in confidence: only this speaker hears it again. */
  confidential?: boolean;
  maxTokens?: number;
  /** Each piece of the reply as it streams. After a `turn:retry` event the reply starts over. */
  onToken?: (text: string) => void;
  /** Cancels the turn while it streams: TurnCancelledError, nothing recorded or paid. */
  signal?: AbortSignal;
}

/** A turn's reply and what it cost. */
export interface AgentReply {
  reply: string;
  usage: Usage;
  /** Tokens this turn was paid for. */
  billed: TokenTotals;
  /**
   * What this turn takes from the payer's lane, full price (provider, royalty and fee), in token units: the
   * chat's `TurnResult.cost.total`.
   */
  cost: bigint;
  /** What this agent has vouched so far (its turns and maintenance), full price, in token units. */
  totalSpent: bigint;
  /** The provider that served it (checksummed address). */
  provider: string;
  stopReason: StopReason;
  /** Memories in the prompt besides the recent turns (profile facts, rules, notes, retrieved items). */
  retrieved: number;
  /** Tokens of memories and recent turns in the prompt, counted with the agent's counter: at most `memoryBudget`. */
  promptTokens: number;
  /** Candidates left out of the prompt for the budget. */
  dropped: DroppedItem[];
  /** Indexes of the recorded user and agent turns in the history. */
  turns: [number, number];
}

/** A published head. */
export interface HeadPublished {
  cid: string;
  seq: number;
  transactionHash: string;
}

export interface AgentEvents {
  "memory:loaded": CustomEvent<MemoryLoaded>;
  "turn:done": CustomEvent<AgentReply & { message: string; speaker: string }>;
  /** The reply restarts on another provider: clear what was shown of it. */
  "turn:retry": CustomEvent<{ failed: string; discardedText: string }>;
  /**
   * A turn was cancelled mid-stream: nothing recorded; what was delivered was paid (`cost`, full price, counted
   * in `totalSpent`), or nothing when the provider's count was not believable (`paid` false).
   */
  "turn:cancelled": CustomEvent<{ message: string; provider: string; billed: { inputTokens: bigint; outputTokens: bigint }; cost: bigint; paid: boolean; totalSpent: bigint }>;
  "head:published": CustomEvent<HeadPublished>;
  /** Committing to IPFS or publishing on chain failed; the turn is safe in the journal and it is tried again next time. */
  "head:failed": CustomEvent<{ stage: "commit" | "publish"; error: unknown; seq?: number }>;
  "maintenance:failed": CustomEvent<MaintenanceFailed>;
  /** The user's chat committed funds to a provider's lane: the one transaction a first use of a provider sends. */
  "lane:committed": CustomEvent<ChatEvents["lane:committed"]["detail"]>;
}

/**
 * Opens an agent owned by `signer`: its memory from this machine's folder or, when the chain holds a newer
 * head (or the folder is new), from IPFS by the published head; a new vault when it has none. Checks that
 * the signer owns the agent first.
 *
 * @example
 * const agent = await openAgent({ libp2p, contracts, signer: wallet, escrow, agentId: 7n, store, dataDir,
 *   persona: { personaId, card, modelSha256 }, embedder, spendingCap: 5_000_000n })
 * const { reply, cost } = await agent.send("Hello!", { onToken: (t) => process.stdout.write(t) })
 * await agent.close()
 * @throws NotAgentOwnerError; MemoryHeadUnreadableError when the published head is not on any reachable IPFS
 *   node; LocalAgentStateError; InvalidAgentOptionsError; the vault's errors for tampered blocks; NoProviderError
 *   (and openChat's other errors) when `connect` is on.
 */
export async function openAgent(options: OpenAgentOptions): Promise<Agent> {
  checkOptions(options);
  const { signal, contracts, agentId } = options;
  const o = signal !== undefined ? { signal } : {};
  signal?.throwIfAborted();
  const account = getAddress(await options.signer.getAddress());
  const owner = getAddress(await withRevertDecoding(contracts.agentRegistry.ownerOf(agentId)));
  if (owner !== account) throw new NotAgentOwnerError(agentId, owner, account);
  const ref: AgentRef = { agentId, chainId: BigInt(options.escrow.chainId), registry: getAddress(await contracts.agentRegistry.getAddress()) };
  const [chainHead, local] = await Promise.all([readPublishedHead(contracts.agentRegistry, agentId), readLocalState(options.dataDir, ref)]);
  signal?.throwIfAborted();

  const opened = await openVault(options, ref, local, chainHead, o);
  let memory: AgentMemory | undefined;
  try {
    // Both chats draw on the same lanes: each counts what the other's open sessions reserve there.
    const lanes = new LaneLedger();
    const chatOptions = (spendingCap: bigint, s: AbortSignal | undefined): OpenChatOptions => ({
      ...options.chat,
      lanes,
      libp2p: options.libp2p,
      contracts,
      signer: options.signer,
      escrow: options.escrow,
      agentId,
      personaId: options.persona.personaId,
      modelSha256: options.persona.modelSha256,
      ...(options.persona.adapter !== undefined && { adapter: options.persona.adapter }),
      ...(options.tokenizer !== undefined && { tokenizer: options.tokenizer }),
      spendingCap,
      ...(s !== undefined && { signal: s }),
    });
    const maintenance = options.maintenance === false ? undefined : (options.maintenance ?? {});
    const background =
      maintenance === undefined ? undefined : new LazyChat((s) => openChat(chatOptions(maintenance.spendingCap ?? options.spendingCap / 5n, s)));
    const complete: Complete | undefined =
      background === undefined ? undefined : async (request) => completeThroughChat(await background.get(request.signal))(request);
    const tokenizer = options.tokenizer;
    const countTokens: TokenCounter = tokenizer === undefined ? estimateTokens : (text) => tokenizer.count({ kind: "text", text });
    memory = await AgentMemory.open({
      vault: opened.vault,
      embedder: options.embedder,
      owner: account,
      persona: options.persona.card,
      countTokens,
      ...(options.persona.creator !== undefined && { creator: options.persona.creator }),
      ...(complete !== undefined && { complete }),
      ...(maintenance?.segmentTurns !== undefined && { segmentTurns: maintenance.segmentTurns }),
      ...o,
    });
    const agent = new Agent({
      options,
      ref,
      account,
      memory,
      vault: opened.vault,
      journal: opened.journal,
      local: opened.local,
      publishedSeq: chainHead?.seq ?? 0n,
      chat: new LazyChat((s) => openChat(chatOptions(options.spendingCap, s))),
      background,
      maintenanceDeadlineMs: maintenance?.deadlineMs ?? DEFAULT_MAINTENANCE_DEADLINE_MS,
    });
    const loaded: MemoryLoaded = { ...opened.loaded, turns: memory.turns.length };
    agent.loaded = loaded;
    if (options.connect !== false) {
      try {
        await agent.connect(o);
      } catch (err) {
        await agent.close({ publish: false });
        throw err;
      }
    }
    // Listeners can only attach once open returns: the event goes out on the next turn of the event loop
    // (`agent.loaded` holds the same for a caller that attaches later).
    setTimeout(() => agent.dispatchEvent(new CustomEvent("memory:loaded", { detail: loaded })), 0);
    return agent;
  } catch (err) {
    if (memory !== undefined) await memory.close({ save: false }).catch(() => undefined);
    if (opened.journal.isOpen) await opened.journal.close();
    throw err;
  }
}

/** What {@link openVault} opened. */
interface OpenedVault {
  vault: AgentVault;
  journal: TurnJournal;
  local: LocalAgentState;
  loaded: Omit<MemoryLoaded, "turns">;
}

/**
 * The vault at the newest head: the local one unless the chain moved past what this machine last synced,
 * then the chain's, with the local unpublished turns carried over on top of it.
 */
async function openVault(
  options: OpenAgentOptions,
  ref: AgentRef,
  local: LocalAgentState | undefined,
  chainHead: PublishedHead | undefined,
  o: { signal?: AbortSignal },
): Promise<OpenedVault> {
  const { store, dataDir, signer } = options;
  const deployment = { chainId: ref.chainId, registry: ref.registry };
  if (local === undefined && chainHead === undefined) {
    // A key wrapped under a key the wallet cannot derive again would lock the agent away: check first.
    const ownerKey = await ownerKeyFromSigner(signer, { ...deployment, checkDeterministic: true });
    const agentKey = generateAgentKey();
    const state: LocalAgentState = { wrappedKey: wrapAgentKey({ ...ref, agentKey, ownerKey }) };
    // The wrapped key is on disk before any turn is sealed with it.
    await writeLocalState(dataDir, ref, state);
    const { vault, journal } = await openLocalVault({ store, dataDir, ref, agentKey, ownerKey }, undefined, o);
    return { vault, journal, local: state, loaded: { from: "new", carried: 0 } };
  }
  const ownerKey = await ownerKeyFromSigner(signer, deployment);
  if (local === undefined) {
    const loaded = await loadHead(store, ref, ownerKey, chainHead!, o);
    const state: LocalAgentState = { wrappedKey: wrapAgentKey({ ...ref, agentKey: loaded.agentKey, ownerKey }), synced: syncedOf(loaded.head) };
    await writeLocalState(dataDir, ref, state);
    const { vault, journal } = await openLocalVault({ store, dataDir, ref, agentKey: loaded.agentKey, ownerKey }, loaded.head, o);
    return { vault, journal, local: state, loaded: { from: "chain", ...headOf(loaded.head), carried: 0 } };
  }

  const agentKey = unwrapAgentKey({ ...ref, ownerKey, wrapped: local.wrappedKey });
  const opened = await openLocalVault({ store, dataDir, ref, agentKey, ownerKey }, undefined, o);
  const head = opened.vault.head;
  const base = local.synced?.seq ?? head?.seq ?? 0;
  const chainMoved = chainHead !== undefined && chainHead.seq > BigInt(base) && chainHead.cid.toString() !== head?.cid.toString();
  if (!chainMoved) return { ...opened, local, loaded: { from: "local", ...headOf(head), carried: 0 } };

  // Another machine chatted since this one last synced: its head wins, and this machine's unpublished turns
  // (acknowledged to the user, so never dropped) are carried over onto it.
  let loaded: LoadedAgent;
  let unpublished: Turn[];
  try {
    loaded = await loadHead(store, ref, ownerKey, chainHead, o);
    unpublished = (await opened.vault.turns(o)).slice(local.synced?.turnCount ?? 0);
  } catch (err) {
    await opened.journal.close();
    throw err;
  }
  let journal = opened.journal;
  if (bytesToHex(loaded.agentKey) !== bytesToHex(agentKey)) {
    // The agent was re-keyed elsewhere: its journal is sealed with the new key, in a folder of its own.
    await journal.close();
    journal = await openJournal(dataDir, ref, loaded.agentKey, o);
  }
  const state: LocalAgentState = { wrappedKey: wrapAgentKey({ ...ref, agentKey: loaded.agentKey, ownerKey }), synced: syncedOf(loaded.head) };
  try {
    await journal.setMeta(VAULT_HEAD_META, loaded.head.cid.bytes, o);
    await writeLocalState(dataDir, ref, state);
    const vault = await AgentVault.open({ store, journal, agent: ref, agentKey: loaded.agentKey, ownerKey }, o);
    for (const turn of unpublished) await vault.appendTurn(turn, o);
    return {
      vault,
      journal,
      local: state,
      loaded: {
        from: "chain",
        ...headOf(loaded.head),
        carried: unpublished.length,
        ...(head !== undefined && { replacedLocal: { cid: head.cid.toString(), seq: head.seq } }),
      },
    };
  } catch (err) {
    await journal.close();
    throw err;
  }
}

/** Opens the journal of `agentKey` and the vault on it, at `startAt` when the journal has no head yet. */
async function openLocalVault(
  p: { store: BlockStore; dataDir: string; ref: AgentRef; agentKey: Uint8Array; ownerKey: Uint8Array },
  startAt: Commit | undefined,
  o: { signal?: AbortSignal },
): Promise<{ vault: AgentVault; journal: TurnJournal }> {
  const journal = await openJournal(p.dataDir, p.ref, p.agentKey, o);
  try {
    if (startAt !== undefined && (await journal.getMeta(VAULT_HEAD_META, o)) === undefined) {
      await journal.setMeta(VAULT_HEAD_META, startAt.cid.bytes, o);
    }
    const vault = await AgentVault.open({ store: p.store, journal, agent: p.ref, agentKey: p.agentKey, ownerKey: p.ownerKey }, o);
    return { vault, journal };
  } catch (err) {
    await journal.close();
    throw err;
  }
}

/** The journal lives in a folder named after its key's hash, so a re-keyed agent never meets the old journal. */
async function openJournal(dataDir: string, ref: AgentRef, agentKey: Uint8Array, o: { signal?: AbortSignal }): Promise<TurnJournal> {
  const dir = join(dataDir, `journal-${bytesToHex(sha256(agentKey)).slice(0, 16)}`);
  const journal = new TurnJournal({ ...ref, dir, key: agentKey });
  await journal.open(o);
  return journal;
}

/** Loads and checks the whole agent at the chain's head; blocks no node serves become MemoryHeadUnreadableError. */
async function loadHead(store: BlockStore, ref: AgentRef, ownerKey: Uint8Array, head: PublishedHead, o: { signal?: AbortSignal }): Promise<LoadedAgent> {
  try {
    return await loadAgent({ store, agent: ref, ownerKey, head: head.cid, ...o });
  } catch (err) {
    // Blocks that arrived but are wrong say the data is bad, not missing: those errors say so themselves.
    if (o.signal?.aborted || err instanceof VaultDecryptError || err instanceof VaultBlockError || err instanceof VaultEnvelopeError) throw err;
    throw new MemoryHeadUnreadableError(ref.agentId, head.cid.toString(), err);
  }
}

function syncedOf(head: Commit): SyncedHead {
  return { cid: head.cid.toString(), seq: head.seq, turnCount: head.turnCount };
}

function headOf(head: Commit | undefined): { cid?: string; seq?: number } {
  return head === undefined ? {} : { cid: head.cid.toString(), seq: head.seq };
}

function checkOptions(options: OpenAgentOptions): void {
  const problems: string[] = [];
  const positive = (name: string, value: number | undefined) => {
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) problems.push(`${name} is a positive integer`);
  };
  positive("headEveryTurns", options.headEveryTurns);
  positive("maxTokens", options.maxTokens);
  if (options.memoryBudget !== undefined && (!Number.isSafeInteger(options.memoryBudget) || options.memoryBudget < 0)) {
    problems.push("memoryBudget is a non-negative integer of tokens");
  }
  if (options.personaBudget !== undefined && (!Number.isSafeInteger(options.personaBudget) || options.personaBudget < 0)) {
    problems.push("personaBudget is a non-negative integer of tokens");
  }
  if (typeof options.spendingCap !== "bigint" || options.spendingCap <= 0n) problems.push("spendingCap is a positive bigint of token units");
  const m = options.maintenance;
  if (m !== undefined && m !== false && m.spendingCap !== undefined && m.spendingCap <= 0n) problems.push("maintenance.spendingCap is positive");
  if (typeof options.dataDir !== "string" || options.dataDir.length === 0) problems.push("dataDir is a folder path");
  if (problems.length > 0) throw new InvalidAgentOptionsError(problems);
}

interface AgentInit {
  options: OpenAgentOptions;
  ref: AgentRef;
  account: string;
  memory: AgentMemory;
  vault: AgentVault;
  journal: TurnJournal;
  local: LocalAgentState;
  publishedSeq: bigint;
  chat: LazyChat;
  background: LazyChat | undefined;
  maintenanceDeadlineMs: number;
}

/**
 * An opened agent: send turns, read and change its memory, publish its head. Turns run one at a time. Create
 * it with {@link openAgent}; `close()` it to save, publish and release the journal.
 */
export class Agent extends TypedEventTarget<AgentEvents> {
  readonly agentId: bigint;
  /** The owner's address: the default speaker. */
  readonly owner: string;
  /** The agent's memory (show, search, profile, notebook); change it through the agent while it runs. */
  readonly memory: AgentMemory;
  /** The vault under the memory (forget, export). */
  readonly vault: AgentVault;
  /** Where the memory came from at open (also sent as the `memory:loaded` event). */
  loaded!: MemoryLoaded;
  readonly #init: AgentInit;
  readonly #countTokens: TokenCounter;
  #local: LocalAgentState;
  #publishedSeq: bigint;
  #turnsSincePublish = 0;
  /** Scheduled publishes, one after the other; close and publish() wait for them. */
  #publishing: Promise<unknown> = Promise.resolve();
  #sending = false;
  #closed = false;
  /** The chat whose retries are forwarded as this agent's `turn:retry`. */
  #forwarding: ChatSession | undefined;

  /** @internal Use {@link openAgent}. */
  constructor(init: AgentInit) {
    super();
    this.#init = init;
    this.agentId = init.ref.agentId;
    this.owner = init.account;
    this.memory = init.memory;
    this.vault = init.vault;
    this.#local = init.local;
    this.#publishedSeq = init.publishedSeq;
    this.#countTokens = init.memory.countTokens;
    init.memory.addEventListener("maintenance:failed", (e) => this.dispatchEvent(new CustomEvent("maintenance:failed", { detail: e.detail })));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Provider share paid by this agent's chats so far (turns and maintenance), in token units. */
  get spent(): bigint {
    return this.#init.chat.spent + (this.#init.background?.spent ?? 0n);
  }

  /** The sequence number of the head last seen on chain. */
  get publishedSeq(): bigint {
    return this.#publishedSeq;
  }

  /** The history, oldest first. */
  history(): Turn[] {
    return this.memory.turns.map((t) => t.turn);
  }

  /**
   * Opens the chat now (finds and quotes providers), for a caller that wants to fail early; `send` does it anyway.
   *
   * @example
   * await agent.connect({ signal: AbortSignal.timeout(20_000) })
   * @throws NoProviderError and openChat's other errors.
   */
  async connect(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#closed) throw new AgentClosedError("connect");
    await this.#chat(options.signal);
  }

  async #chat(signal: AbortSignal | undefined): Promise<ChatSession> {
    const chat = await this.#init.chat.get(signal);
    if (this.#forwarding !== chat) {
      this.#forwarding = chat;
      chat.addEventListener("turn:retry", (e) =>
        this.dispatchEvent(new CustomEvent("turn:retry", { detail: { failed: e.detail.failed, discardedText: e.detail.discardedText } })),
      );
      chat.addEventListener("lane:committed", (e) => this.dispatchEvent(new CustomEvent("lane:committed", { detail: e.detail })));
    }
    return chat;
  }

  /**
   * Sends a message and returns the agent's reply once it is journaled (it survives any crash from then on).
   * The prompt holds the persona, what the agent remembers for this speaker and the recent turns, within the
   * budget. Cancelled while streaming, nothing is recorded; what was delivered is paid (TurnCancelledError.cost), and the next send works.
   *
   * @example
   * const ctl = new AbortController() // ctl.abort() on Ctrl-C
   * const { reply, cost, totalSpent } = await agent.send("How was your day?", { onToken: (t) => out.write(t), signal: ctl.signal })
   * @throws TurnCancelledError; TurnInProgressError while another send runs; AgentClosedError; the chat's
   *   errors (NoProviderError, AllProvidersFailedError, SpendingCapReachedError, EscrowTooLowError…), with
   *   nothing recorded.
   */
  async send(message: string, options: SendOptions = {}): Promise<AgentReply> {
    if (this.#closed) throw new AgentClosedError("send a message");
    if (this.#sending) throw new TurnInProgressError();
    if (typeof message !== "string" || message.trim().length === 0) throw new InvalidAgentOptionsError(["the message is a non-empty string"]);
    this.#sending = true;
    try {
      return await this.#send(message, options);
    } finally {
      this.#sending = false;
    }
  }

  async #send(message: string, options: SendOptions): Promise<AgentReply> {
    const { signal } = options;
    const o = this.#init.options;
    const speaker = options.speaker === undefined ? this.owner : isAddress(options.speaker) ? getAddress(options.speaker) : options.speaker;
    const started = Date.now();
    let prompt: Awaited<ReturnType<typeof assemblePrompt>>;
    let chat: ChatSession | undefined;
    let result: Awaited<ReturnType<ChatSession["turn"]>>;
    // What the chat paid for a turn cancelled mid-stream (it was delivered).
    let cancelledPart: ChatEvents["turn:cancelled"]["detail"] | undefined;
    const onCancelled = (e: ChatEvents["turn:cancelled"]): void => void (cancelledPart = e.detail);
    const cancelled = (err: unknown): unknown => {
      if (signal?.aborted !== true) return err;
      const part = cancelledPart;
      if (part !== undefined) {
        this.dispatchEvent(
          new CustomEvent("turn:cancelled", {
            detail: { message, provider: part.provider, billed: part.billed, cost: part.cost.total, paid: part.paid, totalSpent: this.spent },
          }),
        );
      }
      return new TurnCancelledError(signal.reason, part?.cost.total ?? 0n, part?.paid === true ? part.billed : undefined);
    };
    try {
      signal?.throwIfAborted();
      prompt = await assemblePrompt({
        memory: this.memory,
        listener: { userId: speaker, isOwner: speaker === this.owner },
        message,
        budget: o.memoryBudget ?? DEFAULT_MEMORY_BUDGET,
        personaBudget: o.personaBudget ?? DEFAULT_PERSONA_BUDGET,
        now: started,
        ...(signal !== undefined && { signal }),
      });
      chat = await this.#chat(signal);
      chat.addEventListener("turn:cancelled", onCancelled);
      result = await chat.turn({
        prompt: prompt.messages,
        maxTokens: options.maxTokens ?? o.maxTokens ?? 256,
        ...(options.onToken !== undefined && { onChunk: options.onToken }),
        ...(signal !== undefined && { signal }),
      });
    } catch (err) {
      throw cancelled(err);
    } finally {
      chat?.removeEventListener("turn:cancelled", onCancelled);
    }
    // Delivered and paid: recorded even if the caller gives up now, so no signal from here on.
    const cost = result.cost.total;
    const user = await this.memory.recordTurn({ role: "user", speaker, text: message, time: started, ...(options.confidential === true && { confidential: true }) });
    const reply = await this.memory.recordTurn({ role: "assistant", text: result.text, time: Math.max(Date.now(), started) });
    await this.#commit();
    this.#turnsSincePublish++;
    if (o.publishHead !== false && this.#turnsSincePublish >= (o.headEveryTurns ?? 5)) this.#schedulePublish();

    const historyTurns = prompt.messages.length - 1 - (prompt.messages[0]?.role === "system" ? 1 : 0);
    const answer: AgentReply = {
      reply: result.text,
      usage: result.usage,
      billed: result.billed,
      cost,
      totalSpent: this.spent,
      provider: result.provider,
      stopReason: result.stopReason,
      retrieved: prompt.included.length - historyTurns,
      promptTokens: prompt.tokens,
      dropped: prompt.dropped,
      turns: [user.index, reply.index],
    };
    this.dispatchEvent(new CustomEvent("turn:done", { detail: { ...answer, message, speaker } }));
    return answer;
  }

  /** Commits the journaled turns to IPFS; a failure leaves them in the journal for the next commit. */
  async #commit(): Promise<void> {
    try {
      await this.vault.commit();
    } catch (error) {
      this.dispatchEvent(new CustomEvent("head:failed", { detail: { stage: "commit", error } }));
    }
  }

  #schedulePublish(): void {
    this.#turnsSincePublish = 0;
    this.#publishing = this.#publishing.then(() => this.#publishNow({}).catch(() => undefined));
  }

  /**
   * Saves the memory and publishes its head on chain, if it moved since the last publish. Scheduled publishes
   * run in the background; this waits for them first.
   *
   * @example
   * const published = await agent.publish({ signal })
   * if (published) console.log(`head ${published.cid} (#${published.seq}) in ${published.transactionHash}`)
   * @throws ContractRevertError (no gas, not authorized…) after a `head:failed` event; the next publish tries again.
   */
  async publish(options: { signal?: AbortSignal } = {}): Promise<HeadPublished | undefined> {
    if (this.#closed) throw new AgentClosedError("publish the head");
    const run = this.#publishing.then(() => this.#publishNow(options));
    this.#publishing = run.catch(() => undefined);
    return run;
  }

  async #publishNow(options: { signal?: AbortSignal }): Promise<HeadPublished | undefined> {
    const o = options.signal !== undefined ? { signal: options.signal } : {};
    let head: Commit | undefined;
    try {
      head = await this.memory.save(o);
    } catch (error) {
      this.dispatchEvent(new CustomEvent("head:failed", { detail: { stage: "commit", error } }));
      throw error;
    }
    return this.#publishHead(head, o);
  }

  async #publishHead(head: Commit | undefined, o: { signal?: AbortSignal }): Promise<HeadPublished | undefined> {
    if (head === undefined || BigInt(head.seq) <= this.#publishedSeq) return undefined;
    o.signal?.throwIfAborted();
    let transactionHash: string;
    try {
      const agents = this.#init.options.contracts.agentRegistry.connect(this.#init.options.signer);
      ({ transactionHash } = await publishHead(agents, this.agentId, head));
    } catch (error) {
      this.dispatchEvent(new CustomEvent("head:failed", { detail: { stage: "publish", error, seq: head.seq } }));
      throw error;
    }
    this.#publishedSeq = BigInt(head.seq);
    this.#local = { ...this.#local, synced: syncedOf(head) };
    // The chain has it either way; a stale local note only makes the next open compare against an older base.
    await writeLocalState(this.#init.options.dataDir, this.#init.ref, this.#local).catch(() => undefined);
    const published: HeadPublished = { cid: head.cid.toString(), seq: head.seq, transactionHash };
    this.dispatchEvent(new CustomEvent("head:published", { detail: published }));
    return published;
  }

  /**
   * Waits (up to the maintenance deadline) for background maintenance, saves the memory, publishes the head
   * if it moved, closes the chats and the journal. The store and libp2p are the caller's. Closing twice is
   * harmless. A failed publish is reported by a `head:failed` event and tried again at the next open.
   *
   * @example
   * await agent.close({ signal: AbortSignal.timeout(60_000) })
   */
  async close(options: { signal?: AbortSignal; publish?: boolean } = {}): Promise<{ published: HeadPublished | undefined }> {
    if (this.#closed) return { published: undefined };
    this.#closed = true;
    const o = options.signal !== undefined ? { signal: options.signal } : {};
    let published: HeadPublished | undefined;
    try {
      await this.#publishing;
      const deadline = new AbortController();
      await Promise.race([this.memory.settled(), sleep(this.#init.maintenanceDeadlineMs, deadline.signal).catch(() => undefined)]);
      deadline.abort();
      await this.memory.close(o);
      if (options.publish !== false && this.#init.options.publishHead !== false) {
        published = await this.#publishHead(this.vault.head, o).catch(() => undefined);
      }
    } finally {
      // Closes the providers' sessions too, so that they settle them now; bounded, and never fails.
      await Promise.all([this.#init.chat.close(), this.#init.background?.close()]);
      await this.#init.journal.close();
    }
    return { published };
  }

  /** Counts tokens as prompts are budgeted (the model's tokenizer when given, else an estimate). */
  countTokens(text: string): number {
    return this.#countTokens(text);
  }
}
