/**
 * The vault's content-addressed layout. Every block is dag-cbor `{ v: 1, l: [CID…], b: <sealed bytes> }`:
 * the links are in the clear, so IPFS can pin, fetch and export an agent as a CAR without its key, while
 * everything else (turns, memory items, which link is what) is sealed with the agent key, the record kind
 * bound as associated data. The network sees the graph's shape and ciphertext, never content.
 *
 * One commit writes only what changed, so the bytes written per turn do not grow with the history:
 * - a commit block: the previous commit, the latest turn block, the latest index block, the current item
 *   of each memory kind;
 * - one turn block with the turns since the last commit, linking the previous turn block;
 * - every {@link TURN_BLOCKS_PER_INDEX} turn blocks, an index block listing them (and the previous index),
 *   so a load fetches turn blocks in parallel instead of walking 10,000 links one by one;
 * - a block per memory item that changed.
 *
 * Forgetting ({@link writeForgetCommit}) is the one operation that rewrites: the turn blocks from the first
 * one holding a forgotten turn onward (and the index blocks covering them) are written again without it, and
 * the new commit starts a new commit chain (`prev: null`, `seq` still one above the old head's, and a
 * cumulative `forgotten` count), so nothing reachable from the new head leads back to the forgotten content.
 */
import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { sha256 as sha256Sync } from "@noble/hashes/sha2.js";
import { equalBytes } from "@noble/ciphers/utils.js";
import { openRecord, sealRecord, type AgentRef } from "./crypto.js";
import { VaultBlockError } from "./errors.js";
import type { BlockStore, RecordKind } from "./types.js";

/** The memory items a commit carries, one current block per kind. */
export const ITEM_KINDS = ["profile", "summaries", "topics", "notebook", "working-memory", "retrieval-index"] as const;
export type ItemKind = (typeof ITEM_KINDS)[number];

/** Turn blocks per index block. */
export const TURN_BLOCKS_PER_INDEX = 64;

const BLOCK_VERSION = 1;
const LOAD_CONCURRENCY = 32;

/** What reading and writing the DAG needs: where blocks go, and the agent they are sealed for. */
export interface DagContext {
  store: BlockStore;
  agent: AgentRef;
  /** The agent key (32 bytes). */
  key: Uint8Array;
}

/** A commit as the vault knows it after writing or reading it. */
export interface Commit {
  cid: CID;
  /** 1 for the first commit, then +1 per commit. */
  seq: number;
  /** Milliseconds since the epoch, as the writer's clock said. */
  time: number;
  prev: CID | null;
  /** Turns in the whole history. */
  turnCount: number;
  /** Turn blocks in the whole history. */
  turnBlockCount: number;
  turnsHead: CID | null;
  indexHead: CID | null;
  items: Partial<Record<ItemKind, CID>>;
  /**
   * Present when this commit's chain was started by a forget ({@link writeForgetCommit}): how many turns and
   * memory items were forgotten in all, up to this commit. Its chain's oldest commit then has `prev: null`
   * although its `seq` is above 1 (the history before it was cut, so the forgotten content is unreachable).
   */
  forgotten?: Forgotten;
}

/** Cumulative counts of what forgets removed from an agent's history. */
export interface Forgotten {
  turns: number;
  items: number;
}

/** What a new commit adds to the previous one. */
export interface CommitChanges {
  /** Turns since the previous commit (encoded by the caller; opaque here), oldest first. */
  turns?: readonly Uint8Array[];
  /** Memory items that changed (their whole new content); `null` removes the item. */
  items?: Partial<Record<ItemKind, Uint8Array | null>>;
}

function linksDigest(links: readonly CID[]): Uint8Array {
  return sha256Sync(dagCbor.encode([...links]));
}

interface Envelope {
  links: CID[];
  sealed: Uint8Array;
  wrappedKey: Uint8Array | undefined;
}

/** Encodes, seals and stores one block; returns its CID. */
async function putBlock(
  ctx: DagContext,
  kind: RecordKind,
  payload: unknown,
  links: readonly CID[],
  signal?: AbortSignal,
  wrappedKey?: Uint8Array,
): Promise<CID> {
  // The links are in the clear for IPFS, so their digest is sealed with the payload: a swapped link is caught.
  const plaintext = dagCbor.encode({ p: payload, h: linksDigest(links) });
  const sealed = sealRecord({ ...ctx.agent, key: ctx.key, kind, plaintext });
  // A commit carries the agent key wrapped for its owner (sealed under the owner key, bound to the agent), so
  // the owner's wallet opens the agent from its head CID on any machine.
  const bytes = dagCbor.encode({
    v: BLOCK_VERSION,
    l: [...links],
    b: sealed,
    ...(wrappedKey !== undefined && { k: wrappedKey }),
  });
  const cid = CID.createV1(dagCbor.code, await sha256.digest(bytes));
  await ctx.store.put(cid, bytes, signal !== undefined ? { signal } : {});
  return cid;
}

function decodeEnvelope(cid: CID, bytes: Uint8Array): Envelope {
  let value: unknown;
  try {
    value = dagCbor.decode(bytes);
  } catch (err) {
    throw new VaultBlockError(cid.toString(), "it is not dag-cbor", { cause: err });
  }
  const v = value as { v?: unknown; l?: unknown; b?: unknown; k?: unknown };
  if (typeof value !== "object" || value === null || v.v !== BLOCK_VERSION) {
    throw new VaultBlockError(cid.toString(), "it is not a Soulmesh vault block (version 1)");
  }
  if (!Array.isArray(v.l) || !v.l.every((l) => CID.asCID(l) !== null) || !(v.b instanceof Uint8Array)) {
    throw new VaultBlockError(cid.toString(), "its links or sealed body are malformed");
  }
  if (v.k !== undefined && !(v.k instanceof Uint8Array)) throw new VaultBlockError(cid.toString(), "its key slot is malformed");
  return { links: v.l.map((l) => CID.asCID(l)!), sealed: v.b, wrappedKey: v.k };
}

/**
 * The clear links of a vault block, read without any key: what pinning, exporting and importing an agent as
 * a CAR follow. Anything that is not a vault block (version 1 dag-cbor envelope) is refused.
 *
 * @example
 * for (const child of blockLinks(cid, await store.get(cid))) queue.push(child)
 * @throws VaultBlockError when the bytes are not a vault block.
 */
export function blockLinks(cid: CID, bytes: Uint8Array): CID[] {
  if (cid.code !== dagCbor.code) throw new VaultBlockError(cid.toString(), "it is not a dag-cbor block");
  return decodeEnvelope(cid, bytes).links;
}

/**
 * The agent key, wrapped for the owner, that a commit carries: read without any key, then unwrapped with
 * the owner key (`unwrapAgentKey`).
 *
 * @example
 * const agentKey = unwrapAgentKey({ ...agent, ownerKey, wrapped: await readWrappedKey(store, head) })
 */
export async function readWrappedKey(
  store: BlockStore,
  cid: CID,
  options: { signal?: AbortSignal } = {},
): Promise<Uint8Array> {
  const { wrappedKey } = decodeEnvelope(cid, await store.get(cid, options.signal !== undefined ? { signal: options.signal } : {}));
  if (wrappedKey === undefined) throw new VaultBlockError(cid.toString(), "it carries no wrapped agent key (not a commit)");
  return wrappedKey;
}

/** Fetches, checks and opens one block: its links and its decrypted payload. */
async function getBlock(
  ctx: DagContext,
  cid: CID,
  kind: RecordKind,
  signal?: AbortSignal,
): Promise<{ links: CID[]; payload: unknown }> {
  const bytes = await ctx.store.get(cid, signal !== undefined ? { signal } : {});
  const { links, sealed } = decodeEnvelope(cid, bytes);
  const plaintext = openRecord({ ...ctx.agent, key: ctx.key, kind, sealed });
  let body: { p?: unknown; h?: unknown };
  try {
    body = dagCbor.decode(plaintext) as { p?: unknown; h?: unknown };
  } catch (err) {
    throw new VaultBlockError(cid.toString(), "its sealed payload is not dag-cbor", { cause: err });
  }
  if (!(body?.h instanceof Uint8Array) || !equalBytes(body.h, linksDigest(links))) {
    throw new VaultBlockError(cid.toString(), "its links are not the ones it was sealed with");
  }
  return { links, payload: body.p };
}

/** A link by its index in the block's link list, or null; anything else is a malformed block. */
function linkAt(cid: CID, links: readonly CID[], index: unknown): CID | null {
  if (index === null || index === undefined) return null;
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= links.length) {
    throw new VaultBlockError(cid.toString(), `it refers to link ${String(index)} of ${links.length}`);
  }
  return links[index]!;
}

function nonNegativeInteger(cid: CID, name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new VaultBlockError(cid.toString(), `its ${name} is not a non-negative integer`);
  }
  return value;
}

/** Collects links into a list, returning each one's index (or null): payloads refer to links by index. */
class Links {
  readonly list: CID[] = [];
  add(cid: CID | null | undefined): number | null {
    if (cid === null || cid === undefined) return null;
    this.list.push(cid);
    return this.list.length - 1;
  }
}

/**
 * Writes a commit on top of `prev` (undefined for an agent's first commit): only the new turns, changed
 * items, and every 64th turn block an index block, are written.
 *
 * @example
 * const c1 = await writeCommit(ctx, undefined, { turns: [encodeTurn(t)], items: { profile: bytes } })
 * const c2 = await writeCommit(ctx, c1, { turns: [encodeTurn(t2)] })
 */
export async function writeCommit(
  ctx: DagContext,
  prev: Commit | undefined,
  changes: CommitChanges,
  options: { signal?: AbortSignal; now?: number; wrappedKey?: Uint8Array } = {},
): Promise<Commit> {
  const { signal } = options;
  let turnsHead = prev?.turnsHead ?? null;
  let indexHead = prev?.indexHead ?? null;
  let turnBlockCount = prev?.turnBlockCount ?? 0;
  const turns = changes.turns ?? [];
  const turnCount = (prev?.turnCount ?? 0) + turns.length;
  let tail: CID[] | undefined = prev === undefined ? [] : undefined;

  if (turns.length > 0) {
    const links = new Links();
    const prevIndex = links.add(turnsHead);
    turnsHead = await putBlock(
      ctx,
      "turns",
      { n: turnBlockCount, first: prev?.turnCount ?? 0, turns: [...turns], prev: prevIndex },
      links.list,
      signal,
    );
    turnBlockCount++;
    const known = prev === undefined ? [] : unindexedTail.get(prev);
    tail = known !== undefined && known.length === (turnBlockCount - 1) % TURN_BLOCKS_PER_INDEX ? [...known, turnsHead] : undefined;
    if (turnBlockCount % TURN_BLOCKS_PER_INDEX === 0) {
      let group = tail;
      if (group === undefined) {
        // Not written by this process: the last 64 turn blocks, walked back through their prev links.
        group = [turnsHead];
        while (group.length < TURN_BLOCKS_PER_INDEX) {
          const { links: l, payload } = await getBlock(ctx, group.at(-1)!, "turns", signal);
          const back = linkAt(group.at(-1)!, l, (payload as { prev?: unknown }).prev);
          if (back === null) throw new VaultBlockError(group.at(-1)!.toString(), "the turn chain ends early");
          group.push(back);
        }
        group.reverse();
      }
      indexHead = await putIndexBlock(ctx, turnBlockCount - TURN_BLOCKS_PER_INDEX, group, indexHead, signal);
      tail = [];
    }
  } else if (prev !== undefined) {
    tail = unindexedTail.get(prev);
  }

  const items: Partial<Record<ItemKind, CID>> = { ...(prev?.items ?? {}) };
  for (const kind of ITEM_KINDS) {
    const content = changes.items?.[kind];
    if (content === undefined) continue;
    if (content === null) delete items[kind];
    else items[kind] = await putBlock(ctx, kind, { content }, [], signal);
  }

  const commit = await putCommit(
    ctx,
    {
      seq: (prev?.seq ?? 0) + 1,
      time: options.now ?? Date.now(),
      prev: prev?.cid ?? null,
      turnCount,
      turnBlockCount,
      turnsHead,
      indexHead,
      items,
      ...(prev?.forgotten !== undefined && { forgotten: prev.forgotten }),
    },
    signal,
    options.wrappedKey,
  );
  if (tail !== undefined) unindexedTail.set(commit, tail);
  return commit;
}

/**
 * The turn blocks written since the last index block, for commits this process wrote: the 64th turn block's
 * commit then writes its index without reading the 63 before it back (that read cost 15–40 ms per index).
 */
const unindexedTail = new WeakMap<Commit, CID[]>();

/** Writes the commit block of `commit` (all but its CID) and returns the commit with its CID. */
async function putCommit(
  ctx: DagContext,
  commit: Omit<Commit, "cid">,
  signal: AbortSignal | undefined,
  wrappedKey: Uint8Array | undefined,
): Promise<Commit> {
  const links = new Links();
  const { items } = commit;
  const payload = {
    seq: commit.seq,
    time: commit.time,
    prev: links.add(commit.prev),
    turnCount: commit.turnCount,
    turnBlockCount: commit.turnBlockCount,
    turnsHead: links.add(commit.turnsHead),
    indexHead: links.add(commit.indexHead),
    items: Object.fromEntries(ITEM_KINDS.filter((k) => items[k] !== undefined).map((k) => [k, links.add(items[k])])),
    ...(commit.forgotten !== undefined && { forgotten: { turns: commit.forgotten.turns, items: commit.forgotten.items } }),
  };
  const cid = await putBlock(ctx, "commit", payload, links.list, signal, wrappedKey);
  return { cid, ...commit };
}

/** Which turns and memory items a forget removes. */
export interface ForgetSelection {
  /** Whether a turn (as encoded by the caller) at this index of the history is forgotten. */
  turn?: (turn: Uint8Array, index: number) => boolean;
  /** Memory items removed from the head (and, with the history cut, every earlier version of them). */
  items?: readonly ItemKind[];
}

/** A forget's new head and what it removed. */
export interface ForgetCommit {
  commit: Commit;
  /** Turns forgotten by this forget. */
  turns: number;
  /** Items removed by this forget (those of `items` the head had). */
  items: ItemKind[];
}

/**
 * Writes a commit whose history no longer holds the selected turns and items, or returns undefined when
 * nothing is selected (no block is written). Turn blocks before the first one holding a forgotten turn, and
 * the index blocks of the groups wholly before it, are kept as they are; that block and every later one are
 * written again without the forgotten turns (a block left empty is dropped; the blocks after it are
 * renumbered, and each block's first turn follows the turns before it), with new index blocks for every
 * group they complete. The new commit has `prev: null` (an old commit would lead back to the forgotten
 * content), `seq` one above `prev`'s (AgentRegistry accepts only rising sequences) and a cumulative
 * `forgotten` count.
 *
 * The old blocks stay in the store that holds them: nothing links to them from the new head, and a network
 * that never learned the old head's CID cannot ask for them. Do not publish the old head afterwards.
 *
 * @example
 * const done = await writeForgetCommit(ctx, head, { turn: (t) => decodeTurn(t).text.includes("password") })
 * if (done) head = done.commit
 */
export async function writeForgetCommit(
  ctx: DagContext,
  prev: Commit,
  select: ForgetSelection,
  options: { signal?: AbortSignal; now?: number; wrappedKey?: Uint8Array } = {},
): Promise<ForgetCommit | undefined> {
  const { signal } = options;
  const droppedItems = ITEM_KINDS.filter((k) => select.items?.includes(k) === true && prev.items[k] !== undefined);

  let turnsHead = prev.turnsHead;
  let indexHead = prev.indexHead;
  let turnBlockCount = prev.turnBlockCount;
  let turnCount = prev.turnCount;
  let droppedTurns = 0;
  if (select.turn !== undefined) {
    const loaded = await loadTurnBlocks(ctx, prev, signal);
    let index = 0;
    let firstAffected = -1;
    const kept = loaded.blocks.map((block, n) => {
      const keep = block.turns.filter((turn) => !select.turn!(turn, index++));
      if (keep.length !== block.turns.length && firstAffected < 0) firstAffected = n;
      droppedTurns += block.turns.length - keep.length;
      return keep;
    });
    if (firstAffected >= 0) {
      const cids = loaded.cids.slice(0, firstAffected);
      const groups = Math.floor(firstAffected / TURN_BLOCKS_PER_INDEX);
      indexHead = groups > 0 ? loaded.indexes[groups - 1]! : null;
      turnsHead = cids.at(-1) ?? null;
      turnCount = loaded.blocks[firstAffected]!.first;
      for (let n = firstAffected; n < kept.length; n++) {
        const turns = kept[n]!;
        if (turns.length === 0) continue;
        const links = new Links();
        const prevIndex = links.add(turnsHead);
        turnsHead = await putBlock(ctx, "turns", { n: cids.length, first: turnCount, turns, prev: prevIndex }, links.list, signal);
        cids.push(turnsHead);
        turnCount += turns.length;
        if (cids.length % TURN_BLOCKS_PER_INDEX === 0) {
          indexHead = await putIndexBlock(ctx, cids.length - TURN_BLOCKS_PER_INDEX, cids.slice(-TURN_BLOCKS_PER_INDEX), indexHead, signal);
        }
      }
      turnBlockCount = cids.length;
    }
  }
  if (droppedTurns === 0 && droppedItems.length === 0) return undefined;

  const items: Partial<Record<ItemKind, CID>> = { ...prev.items };
  for (const kind of droppedItems) delete items[kind];
  const commit = await putCommit(
    ctx,
    {
      seq: prev.seq + 1,
      time: options.now ?? Date.now(),
      prev: null,
      turnCount,
      turnBlockCount,
      turnsHead,
      indexHead,
      items,
      forgotten: {
        turns: (prev.forgotten?.turns ?? 0) + droppedTurns,
        items: (prev.forgotten?.items ?? 0) + droppedItems.length,
      },
    },
    signal,
    options.wrappedKey,
  );
  return { commit, turns: droppedTurns, items: droppedItems };
}

/** Writes the index block of turn blocks `first…first+63` (`group`, oldest first), after `prevIndex`. */
async function putIndexBlock(
  ctx: DagContext,
  first: number,
  group: readonly CID[],
  prevIndex: CID | null,
  signal: AbortSignal | undefined,
): Promise<CID> {
  const links = new Links();
  const previous = links.add(prevIndex);
  const blocks = group.map((cid) => links.add(cid));
  return putBlock(ctx, "segment-index", { first, blocks, prev: previous }, links.list, signal);
}

/**
 * Reads a commit: fetched, checked to be this agent's (the seal binds agent, chain, registry and kind),
 * decrypted.
 *
 * @example
 * const head = await readCommit(ctx, CID.parse(memoryHeadCid))
 */
export async function readCommit(ctx: DagContext, cid: CID, options: { signal?: AbortSignal } = {}): Promise<Commit> {
  const { links, payload } = await getBlock(ctx, cid, "commit", options.signal);
  const p = payload as Record<string, unknown>;
  if (typeof p !== "object" || p === null) throw new VaultBlockError(cid.toString(), "its commit payload is malformed");
  const items: Partial<Record<ItemKind, CID>> = {};
  const rawItems = (p.items ?? {}) as Record<string, unknown>;
  for (const [kind, index] of Object.entries(rawItems)) {
    if (!(ITEM_KINDS as readonly string[]).includes(kind)) {
      throw new VaultBlockError(cid.toString(), `it names an unknown memory kind ${JSON.stringify(kind)}`);
    }
    items[kind as ItemKind] = linkAt(cid, links, index) ?? undefined;
  }
  let forgotten: Forgotten | undefined;
  if (p.forgotten !== undefined) {
    const f = p.forgotten as { turns?: unknown; items?: unknown } | null;
    if (typeof f !== "object" || f === null) throw new VaultBlockError(cid.toString(), "its forgotten count is malformed");
    forgotten = { turns: nonNegativeInteger(cid, "forgotten turns", f.turns), items: nonNegativeInteger(cid, "forgotten items", f.items) };
  }
  return {
    cid,
    seq: nonNegativeInteger(cid, "seq", p.seq),
    time: nonNegativeInteger(cid, "time", p.time),
    prev: linkAt(cid, links, p.prev),
    turnCount: nonNegativeInteger(cid, "turnCount", p.turnCount),
    turnBlockCount: nonNegativeInteger(cid, "turnBlockCount", p.turnBlockCount),
    turnsHead: linkAt(cid, links, p.turnsHead),
    indexHead: linkAt(cid, links, p.indexHead),
    items,
    ...(forgotten !== undefined && { forgotten }),
  };
}

/**
 * The current content of one memory item of a commit, or undefined when the commit has none.
 *
 * @example
 * const profile = await readItem(ctx, head, "profile")
 */
export async function readItem(
  ctx: DagContext,
  commit: Commit,
  kind: ItemKind,
  options: { signal?: AbortSignal } = {},
): Promise<Uint8Array | undefined> {
  const cid = commit.items[kind];
  if (cid === undefined) return undefined;
  const { payload } = await getBlock(ctx, cid, kind, options.signal);
  const content = (payload as { content?: unknown }).content;
  if (!(content instanceof Uint8Array)) throw new VaultBlockError(cid.toString(), "its item content is malformed");
  return content;
}

interface TurnBlock {
  n: number;
  first: number;
  turns: Uint8Array[];
  prev: CID | null;
}

async function readTurnBlock(ctx: DagContext, cid: CID, signal?: AbortSignal): Promise<TurnBlock> {
  const { links, payload } = await getBlock(ctx, cid, "turns", signal);
  const p = payload as Record<string, unknown>;
  if (!Array.isArray(p.turns) || !p.turns.every((t) => t instanceof Uint8Array)) {
    throw new VaultBlockError(cid.toString(), "its turns are malformed");
  }
  return {
    n: nonNegativeInteger(cid, "block number", p.n),
    first: nonNegativeInteger(cid, "first turn", p.first),
    turns: p.turns as Uint8Array[],
    prev: linkAt(cid, links, p.prev),
  };
}

/** Runs `fn` over `items` with at most `limit` at once, keeping the order of results. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * Every turn of a commit's history, oldest first. Index blocks give the turn blocks of full groups, fetched
 * in parallel; the newest (unindexed) turn blocks are walked back from the head. Each block's number and
 * first turn are checked, so a block spliced in from elsewhere in the history is refused.
 *
 * @example
 * const turns = await readTurns(ctx, head) // Uint8Array[] of encoded turns
 */
export async function readTurns(
  ctx: DagContext,
  commit: Commit,
  options: { signal?: AbortSignal } = {},
): Promise<Uint8Array[]> {
  return (await loadTurnBlocks(ctx, commit, options.signal)).blocks.flatMap((block) => block.turns);
}

/** A commit's turn blocks (oldest first, with their CIDs) and index blocks (oldest group first), checked. */
async function loadTurnBlocks(
  ctx: DagContext,
  commit: Commit,
  signal: AbortSignal | undefined,
): Promise<{ cids: CID[]; blocks: TurnBlock[]; indexes: CID[] }> {
  const indexed = Math.floor(commit.turnBlockCount / TURN_BLOCKS_PER_INDEX) * TURN_BLOCKS_PER_INDEX;

  // The unindexed tail, newest first.
  const tail: TurnBlock[] = [];
  const tailCids: CID[] = [];
  let cursor = commit.turnsHead;
  for (let n = commit.turnBlockCount - 1; n >= indexed; n--) {
    if (cursor === null) throw new VaultBlockError(commit.cid.toString(), "its turn chain ends early");
    const block = await readTurnBlock(ctx, cursor, signal);
    if (block.n !== n) throw new VaultBlockError(cursor.toString(), `it is turn block ${block.n}, not ${n}`);
    tail.push(block);
    tailCids.push(cursor);
    cursor = block.prev;
  }

  // Full groups, from the index chain (newest first), then fetched in parallel.
  const groups: CID[][] = [];
  const indexes: CID[] = [];
  let index = commit.indexHead;
  for (let first = indexed - TURN_BLOCKS_PER_INDEX; first >= 0; first -= TURN_BLOCKS_PER_INDEX) {
    if (index === null) throw new VaultBlockError(commit.cid.toString(), "its index chain ends early");
    const { links, payload } = await getBlock(ctx, index, "segment-index", signal);
    const p = payload as { first?: unknown; blocks?: unknown; prev?: unknown };
    if (p.first !== first || !Array.isArray(p.blocks) || p.blocks.length !== TURN_BLOCKS_PER_INDEX) {
      throw new VaultBlockError(index.toString(), `it is not the index of turn blocks ${first}…`);
    }
    groups.push(p.blocks.map((i) => linkAt(index!, links, i)!));
    indexes.push(index);
    index = linkAt(index, links, p.prev);
  }
  const cids = groups.reverse().flat();
  indexes.reverse();
  const blocks = await mapLimited(cids, LOAD_CONCURRENCY, (cid) => readTurnBlock(ctx, cid, signal));
  blocks.forEach((block, n) => {
    if (block.n !== n) throw new VaultBlockError(cids[n]!.toString(), `it is turn block ${block.n}, not ${n}`);
  });
  blocks.push(...tail.reverse());
  cids.push(...tailCids.reverse());

  let turns = 0;
  for (const block of blocks) {
    if (block.first !== turns) {
      throw new VaultBlockError(commit.cid.toString(), `turn block ${block.n} starts at turn ${block.first}, not ${turns}`);
    }
    turns += block.turns.length;
  }
  if (turns !== commit.turnCount) {
    throw new VaultBlockError(commit.cid.toString(), `it claims ${commit.turnCount} turns but holds ${turns}`);
  }
  return { cids, blocks, indexes };
}
