/**
 * An agent's vault: turns are journaled locally (sealed, durable) before they are acknowledged, then
 * committed to IPFS as a DAG sealed with the agent key; the local head lives in the journal between
 * publishes. Anyone with the owner's wallet loads the agent from its head CID on any machine.
 */
import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import { unwrapAgentKey, wrapAgentKey, type AgentRef } from "./crypto.js";
import {
  ITEM_KINDS,
  readCommit,
  readItem,
  readTurns,
  readWrappedKey,
  writeCommit,
  writeForgetCommit,
  type Commit,
  type DagContext,
  type ItemKind,
} from "./dag.js";
import { InvalidVaultInputError, VaultBlockError } from "./errors.js";
import type { TurnJournal } from "./journal.js";
import type { BlockStore } from "./types.js";

/** One turn of a conversation, as the vault stores it. */
export interface Turn {
  role: "user" | "assistant" | "system";
  /** Who spoke, for a user turn in a shared agent (an address or a name); the assistant is the agent. */
  speaker?: string;
  text: string;
  /** Milliseconds since the epoch. */
  time: number;
  /** Said in confidence: memory keeps it to its speaker (absent on turns written before it existed). */
  confidential?: boolean;
}

type JournalRecord = { t: "turn"; turn: Turn } | { t: "item"; kind: ItemKind; content: Uint8Array | null };

/**
 * The journal metadata under which the vault keeps its local head. A caller that loaded a newer head from the
 * chain (another machine chatted since) writes it here before `open`, so the vault continues from it.
 */
export const VAULT_HEAD_META = "head";
const HEAD_META = VAULT_HEAD_META;
const MAX_TEXT = 1 << 20;

function checkTurn(turn: Turn): Turn {
  const problems: string[] = [];
  if (turn === null || typeof turn !== "object") problems.push("a turn is an object");
  else {
    if (!["user", "assistant", "system"].includes(turn.role)) problems.push(`role ${JSON.stringify(turn.role)} is not user, assistant or system`);
    if (typeof turn.text !== "string" || turn.text.length > MAX_TEXT) problems.push(`text is a string of at most ${MAX_TEXT} characters`);
    if (!Number.isSafeInteger(turn.time) || turn.time < 0) problems.push("time is milliseconds since the epoch");
    if (turn.speaker !== undefined && (typeof turn.speaker !== "string" || turn.speaker.length > 256)) problems.push("speaker is a string of at most 256 characters");
    if (turn.confidential !== undefined && typeof turn.confidential !== "boolean") problems.push("confidential is a boolean");
  }
  if (problems.length > 0) throw new InvalidVaultInputError(problems);
  return {
    role: turn.role,
    text: turn.text,
    time: turn.time,
    ...(turn.speaker !== undefined && { speaker: turn.speaker }),
    // Only a true flag is written, so a turn without confidence encodes to the same bytes as before it existed.
    ...(turn.confidential === true && { confidential: true }),
  };
}

/**
 * Encodes a turn for the journal and the DAG.
 *
 * @example
 * decodeTurn(encodeTurn({ role: "user", text: "hi", time: 0 })) // { role: "user", text: "hi", time: 0 }
 */
export function encodeTurn(turn: Turn): Uint8Array {
  return dagCbor.encode(checkTurn(turn));
}

/** Decodes a turn written by {@link encodeTurn}; anything else is refused. */
export function decodeTurn(bytes: Uint8Array): Turn {
  let value: unknown;
  try {
    value = dagCbor.decode(bytes);
  } catch {
    throw new InvalidVaultInputError(["a turn is not dag-cbor"]);
  }
  return checkTurn(value as Turn);
}

/** What {@link AgentVault.forget} removes. */
export interface ForgetRequest {
  /**
   * The turns to forget: a predicate over every committed turn and its index in the history (oldest is 0),
   * or the indexes themselves (each must be below the number of turns).
   */
  turns?: ((turn: Turn, index: number) => boolean) | readonly number[];
  /** Memory items to remove, with every earlier version of them. */
  items?: readonly ItemKind[];
}

/** What {@link AgentVault.forget} did. */
export interface ForgetResult {
  /** The head now: a new commit, or the unchanged head when nothing matched. */
  head: Commit | undefined;
  /**
   * The head it replaced, when a new commit was written. Its blocks hold the forgotten content: never
   * publish it again (AgentRegistry refuses its lower seq anyway once the new head is published); its
   * blocks no longer reachable from the new head are listed by `supersededBlocks` (car.ts).
   */
  replaced?: Commit;
  /** How many turns were forgotten. */
  turns: number;
  /** Which items were removed (those asked for that the head had). */
  items: ItemKind[];
}

/** What opening a vault needs. */
export interface AgentVaultInit {
  store: BlockStore;
  /** The agent's journal, opened. */
  journal: TurnJournal;
  agent: AgentRef;
  agentKey: Uint8Array;
  /** Wraps the agent key into every commit, so the owner's wallet opens it anywhere. */
  ownerKey: Uint8Array;
}

/**
 * A writable agent vault. `appendTurn` returns once the turn is durable in the journal (acknowledge it to
 * the user then); `commit` moves journaled turns and item changes to IPFS and the local head. Opening a
 * vault commits whatever a crash left in the journal.
 *
 * @example
 * const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey })
 * await vault.appendTurn({ role: "user", text: "hello", time: Date.now() })
 * const head = await vault.commit() // publish head.cid with AgentRegistry.setMemoryHead
 */
export class AgentVault {
  readonly #init: AgentVaultInit;
  readonly #ctx: DagContext;
  #head: Commit | undefined;
  #wrappedKey: Uint8Array;
  #busy: Promise<unknown> | undefined;

  private constructor(init: AgentVaultInit, head: Commit | undefined) {
    this.#init = init;
    this.#ctx = { store: init.store, agent: init.agent, key: init.agentKey };
    this.#head = head;
    this.#wrappedKey = wrapAgentKey({ ...init.agent, agentKey: init.agentKey, ownerKey: init.ownerKey });
  }

  /** Opens the vault at its local head and commits what the journal holds from before a crash. */
  static async open(init: AgentVaultInit, options: { signal?: AbortSignal } = {}): Promise<AgentVault> {
    const ctx: DagContext = { store: init.store, agent: init.agent, key: init.agentKey };
    const headBytes = await init.journal.getMeta(HEAD_META, options);
    const head = headBytes === undefined ? undefined : await readCommit(ctx, CID.decode(headBytes), options);
    const vault = new AgentVault(init, head);
    await vault.commit(options);
    return vault;
  }

  /** The latest commit, or undefined before the first. */
  get head(): Commit | undefined {
    return this.#head;
  }

  /** Journals a turn; when this resolves the turn survives any crash. */
  async appendTurn(turn: Turn, options: { signal?: AbortSignal } = {}): Promise<{ seq: bigint }> {
    return this.#init.journal.append(dagCbor.encode({ t: "turn", turn: checkTurn(turn) }), options);
  }

  /** Journals a new content for a memory item (`null` removes it). */
  async setItem(kind: ItemKind, content: Uint8Array | null, options: { signal?: AbortSignal } = {}): Promise<{ seq: bigint }> {
    if (!(ITEM_KINDS as readonly string[]).includes(kind)) throw new InvalidVaultInputError([`unknown memory kind ${JSON.stringify(kind)}`]);
    if (content !== null && !(content instanceof Uint8Array)) throw new InvalidVaultInputError(["item content is bytes or null"]);
    return this.#init.journal.append(dagCbor.encode({ t: "item", kind, content }), options);
  }

  /**
   * Commits every journaled turn and item change in one DAG commit, then, in one atomic journal batch,
   * moves the local head and drops the committed entries. Returns the new head (or the old one if the
   * journal was empty).
   */
  async commit(options: { signal?: AbortSignal } = {}): Promise<Commit | undefined> {
    return this.#exclusive(() => this.#commit(options));
  }

  /**
   * Forgets turns and memory items: what is journaled is committed first, then a new commit is written whose
   * whole history lacks them (see `writeForgetCommit`): the turn blocks from the first forgotten turn on and
   * their index blocks are rewritten, and the new commit starts a new commit chain (`prev: null`, `seq` still
   * rising, `forgotten` counting what all forgets removed), since any link back to an old commit would reach
   * the forgotten content. Earlier commits' times and sequence are not kept; turns and items are.
   *
   * Turn indexes shift down past forgotten turns. Items derived from the turns (summaries, topics, retrieval
   * index) are not recomputed: `setItem` their new content before forgetting, or forget them too. The old
   * blocks stay in the local block store until it drops them (BlockStore has no delete); nothing reachable
   * from the new head refers to them. Nothing matching writes nothing and returns the head unchanged.
   *
   * @example
   * const { head } = await vault.forget({ turns: (t) => t.text.includes("my password"), items: ["retrieval-index"] })
   * await publishHead(agents, agentId, head!)
   * @throws InvalidVaultInputError for an unknown item kind or a turn index out of range (nothing written).
   */
  async forget(request: ForgetRequest, options: { signal?: AbortSignal; now?: number } = {}): Promise<ForgetResult> {
    const problems: string[] = [];
    for (const kind of request.items ?? []) {
      if (!(ITEM_KINDS as readonly string[]).includes(kind)) problems.push(`unknown memory kind ${JSON.stringify(kind)}`);
    }
    const { turns } = request;
    if (turns !== undefined && typeof turns !== "function" && !Array.isArray(turns)) {
      problems.push("turns is a predicate or an array of turn indexes");
    }
    if (problems.length > 0) throw new InvalidVaultInputError(problems);
    return this.#exclusive(async () => {
      const signal = options.signal;
      const head = await this.#commit(signal !== undefined ? { signal } : {});
      if (head === undefined) return { head, turns: 0, items: [] };
      let select: ((turn: Uint8Array, index: number) => boolean) | undefined;
      if (typeof turns === "function") select = (turn, index) => turns(decodeTurn(turn), index);
      else if (turns !== undefined && turns.length > 0) {
        const bad = turns.filter((i) => !Number.isSafeInteger(i) || i < 0 || i >= head.turnCount);
        if (bad.length > 0) {
          throw new InvalidVaultInputError([`turn indexes ${bad.join(", ")} are not among the ${head.turnCount} committed turns`]);
        }
        const chosen = new Set(turns);
        select = (_turn, index) => chosen.has(index);
      }
      const done = await writeForgetCommit(
        this.#ctx,
        head,
        { ...(select !== undefined && { turn: select }), ...(request.items !== undefined && { items: request.items }) },
        { ...options, wrappedKey: this.#wrappedKey },
      );
      if (done === undefined) return { head, turns: 0, items: [] };
      await this.#init.store.flush?.(signal !== undefined ? { signal } : {});
      await this.#init.journal.setMeta(HEAD_META, done.commit.cid.bytes, signal !== undefined ? { signal } : {});
      this.#head = done.commit;
      return { head: done.commit, replaced: head, turns: done.turns, items: done.items };
    });
  }

  /** Runs `fn` when no other commit or forget is running: two would both build on the same head. */
  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#busy !== undefined) await this.#busy.catch(() => undefined);
    const run = fn();
    this.#busy = run;
    try {
      return await run;
    } finally {
      this.#busy = undefined;
    }
  }

  async #commit(options: { signal?: AbortSignal }): Promise<Commit | undefined> {
    const pending = await this.#init.journal.pending(options);
    if (pending.length === 0) return this.#head;
    const turns: Uint8Array[] = [];
    const items: Partial<Record<ItemKind, Uint8Array | null>> = {};
    for (const { seq, entry } of pending) {
      const record = dagCbor.decode(entry) as JournalRecord;
      if (record?.t === "turn") turns.push(encodeTurn(record.turn));
      else if (record?.t === "item" && (ITEM_KINDS as readonly string[]).includes(record.kind)) items[record.kind] = record.content;
      else throw new VaultBlockError(`journal#${seq}`, "it is neither a turn nor an item change");
    }
    const head = await writeCommit(this.#ctx, this.#head, { turns, items }, { ...options, wrappedKey: this.#wrappedKey });
    // The journal's batch is fsynced; the blocks it names must be on disk before it, or a power cut could
    // leave a head without blocks and the journal already emptied.
    await this.#init.store.flush?.(options);
    await this.#init.journal.markCommitted(pending.at(-1)!.seq, { ...options, meta: { [HEAD_META]: head.cid.bytes } });
    this.#head = head;
    return head;
  }

  /** Every committed turn, oldest first (journaled turns appear after the next commit). */
  async turns(options: { signal?: AbortSignal } = {}): Promise<Turn[]> {
    if (this.#head === undefined) return [];
    return (await readTurns(this.#ctx, this.#head, options)).map(decodeTurn);
  }

  /** A committed memory item's content. */
  async item(kind: ItemKind, options: { signal?: AbortSignal } = {}): Promise<Uint8Array | undefined> {
    if (this.#head === undefined) return undefined;
    return readItem(this.#ctx, this.#head, kind, options);
  }
}

/** An agent loaded from its head: what the owner's wallet recovers on any machine. */
export interface LoadedAgent {
  agentKey: Uint8Array;
  head: Commit;
  turns: Turn[];
  items: Partial<Record<ItemKind, Uint8Array>>;
}

/**
 * Loads an agent from a head CID: the agent key is unwrapped with the owner key, then every block is
 * fetched, checked and decrypted. A wrong owner, another agent's head, or altered blocks are refused with
 * typed errors.
 *
 * @example
 * const ownerKey = await ownerKeyFromSigner(wallet, { chainId, registry })
 * const agent = await loadAgent({ store, agent: { agentId, chainId, registry }, ownerKey, head: CID.parse(cid) })
 */
export async function loadAgent(
  params: { store: BlockStore; agent: AgentRef; head: CID; signal?: AbortSignal } & (
    | { ownerKey: Uint8Array }
    /** The agent key itself, e.g. opened from a share (`openSharedAgentKey`). */
    | { agentKey: Uint8Array }
  ),
): Promise<LoadedAgent> {
  const options = params.signal !== undefined ? { signal: params.signal } : {};
  const agentKey =
    "agentKey" in params
      ? params.agentKey
      : unwrapAgentKey({
          ...params.agent,
          ownerKey: params.ownerKey,
          wrapped: await readWrappedKey(params.store, params.head, options),
        });
  const ctx: DagContext = { store: params.store, agent: params.agent, key: agentKey };
  const head = await readCommit(ctx, params.head, options);
  const turns = (await readTurns(ctx, head, options)).map(decodeTurn);
  const items: Partial<Record<ItemKind, Uint8Array>> = {};
  for (const kind of ITEM_KINDS) {
    const content = await readItem(ctx, head, kind, options);
    if (content !== undefined) items[kind] = content;
  }
  return { agentKey, head, turns, items };
}
