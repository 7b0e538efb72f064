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
    if (turnBlockCount % TURN_BLOCKS_PER_INDEX === 0) {
      // The last 64 turn blocks, newest first, walked back through their prev links (local, and few).
      const group: CID[] = [turnsHead];
      while (group.length < TURN_BLOCKS_PER_INDEX) {
        const { links: l, payload } = await getBlock(ctx, group.at(-1)!, "turns", signal);
        const back = linkAt(group.at(-1)!, l, (payload as { prev?: unknown }).prev);
        if (back === null) throw new VaultBlockError(group.at(-1)!.toString(), "the turn chain ends early");
        group.push(back);
      }
      group.reverse();
      const indexLinks = new Links();
      const previousIndex = indexLinks.add(indexHead);
      const blocks = group.map((cid) => indexLinks.add(cid));
      indexHead = await putBlock(
        ctx,
        "segment-index",
        { first: turnBlockCount - TURN_BLOCKS_PER_INDEX, blocks, prev: previousIndex },
        indexLinks.list,
        signal,
      );
    }
  }

  const items: Partial<Record<ItemKind, CID>> = { ...(prev?.items ?? {}) };
  for (const kind of ITEM_KINDS) {
    const content = changes.items?.[kind];
    if (content === undefined) continue;
    if (content === null) delete items[kind];
    else items[kind] = await putBlock(ctx, kind, { content }, [], signal);
  }

  const links = new Links();
  const time = options.now ?? Date.now();
  const seq = (prev?.seq ?? 0) + 1;
  const payload = {
    seq,
    time,
    prev: links.add(prev?.cid),
    turnCount,
    turnBlockCount,
    turnsHead: links.add(turnsHead),
    indexHead: links.add(indexHead),
    items: Object.fromEntries(ITEM_KINDS.filter((k) => items[k] !== undefined).map((k) => [k, links.add(items[k])])),
  };
  const cid = await putBlock(ctx, "commit", payload, links.list, signal, options.wrappedKey);
  return { cid, seq, time, prev: prev?.cid ?? null, turnCount, turnBlockCount, turnsHead, indexHead, items };
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
  const { signal } = options;
  const indexed = Math.floor(commit.turnBlockCount / TURN_BLOCKS_PER_INDEX) * TURN_BLOCKS_PER_INDEX;

  // The unindexed tail, newest first.
  const tail: TurnBlock[] = [];
  let cursor = commit.turnsHead;
  for (let n = commit.turnBlockCount - 1; n >= indexed; n--) {
    if (cursor === null) throw new VaultBlockError(commit.cid.toString(), "its turn chain ends early");
    const block = await readTurnBlock(ctx, cursor, signal);
    if (block.n !== n) throw new VaultBlockError(cursor.toString(), `it is turn block ${block.n}, not ${n}`);
    tail.push(block);
    cursor = block.prev;
  }

  // Full groups, from the index chain (newest first), then fetched in parallel.
  const groups: CID[][] = [];
  let index = commit.indexHead;
  for (let first = indexed - TURN_BLOCKS_PER_INDEX; first >= 0; first -= TURN_BLOCKS_PER_INDEX) {
    if (index === null) throw new VaultBlockError(commit.cid.toString(), "its index chain ends early");
    const { links, payload } = await getBlock(ctx, index, "segment-index", signal);
    const p = payload as { first?: unknown; blocks?: unknown; prev?: unknown };
    if (p.first !== first || !Array.isArray(p.blocks) || p.blocks.length !== TURN_BLOCKS_PER_INDEX) {
      throw new VaultBlockError(index.toString(), `it is not the index of turn blocks ${first}…`);
    }
    groups.push(p.blocks.map((i) => linkAt(index!, links, i)!));
    index = linkAt(index, links, p.prev);
  }
  const cids = groups.reverse().flat();
  const blocks = await mapLimited(cids, LOAD_CONCURRENCY, (cid) => readTurnBlock(ctx, cid, signal));
  blocks.forEach((block, n) => {
    if (block.n !== n) throw new VaultBlockError(cids[n]!.toString(), `it is turn block ${block.n}, not ${n}`);
  });

  const turns: Uint8Array[] = [];
  for (const block of [...blocks, ...tail.reverse()]) {
    if (block.first !== turns.length) {
      throw new VaultBlockError(commit.cid.toString(), `turn block ${block.n} starts at turn ${block.first}, not ${turns.length}`);
    }
    turns.push(...block.turns);
  }
  if (turns.length !== commit.turnCount) {
    throw new VaultBlockError(commit.cid.toString(), `it claims ${commit.turnCount} turns but holds ${turns.length}`);
  }
  return turns;
}
