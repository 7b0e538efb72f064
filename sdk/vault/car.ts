/**
 * A whole agent as a CAR file (CARv1): its head commit as the one root, then every block reachable from it
 * through the vault blocks' clear links (old commits, turn blocks, index blocks, memory items), each once.
 * Exporting needs no key and the file holds only what the block store holds: ciphertext and links.
 *
 * Importing checks every block's bytes against its CID before it is stored (a block that does not match is
 * refused, and never stored), that the CAR has exactly one root, and that every block reachable from that
 * root is in the CAR. Blocks are stored as they are verified, so a refused import may leave verified blocks
 * in the store; they are content-addressed bytes that nothing refers to, and no head points at them.
 */
import { CarBlockIterator } from "@ipld/car";
import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { varint } from "multiformats";
import { equalBytes } from "@noble/ciphers/utils.js";
import { blockLinks } from "./dag.js";
import { CarBlockMismatchError, CarFormatError, CarIncompleteError, CarRootsError } from "./errors.js";
import type { BlockStore } from "./types.js";

/** Blocks fetched at once while walking an agent's DAG (they are held in memory only until written out). */
const WALK_CONCURRENCY = 16;
/** Block puts in flight at once during an import. */
const PUT_CONCURRENCY = 16;

/** Progress of an export or import: blocks and bytes (of block data, CIDs included) so far. */
export interface CarProgress {
  blocks: number;
  bytes: number;
}

/** One block of an agent's DAG. */
export interface AgentBlock {
  cid: CID;
  bytes: Uint8Array;
}

/**
 * Every block reachable from `head` through the vault blocks' clear links, each once, parents before the
 * blocks they link to. Needs no key. Only the CIDs seen are kept, not the blocks: a few at a time are
 * fetched ahead.
 *
 * @example
 * for await (const { cid } of walkAgentBlocks({ store, head })) console.log(cid.toString())
 * @throws VaultBlockError for a block that is not a vault block; the store's errors for one it cannot get.
 */
export async function* walkAgentBlocks(params: {
  store: BlockStore;
  head: CID;
  signal?: AbortSignal;
}): AsyncGenerator<AgentBlock> {
  const { store, signal } = params;
  const options = signal !== undefined ? { signal } : {};
  const seen = new Set<string>([params.head.toString()]);
  const queue: CID[] = [params.head];
  let next = 0;
  while (next < queue.length) {
    signal?.throwIfAborted();
    const batch = queue.slice(next, next + WALK_CONCURRENCY);
    next += batch.length;
    const fetched = batch.map((cid) => store.get(cid, options));
    // Settle every fetch before yielding, so a failure does not leave rejected promises unobserved.
    const settled = await Promise.allSettled(fetched);
    for (let i = 0; i < batch.length; i++) {
      const result = settled[i]!;
      if (result.status === "rejected") throw result.reason;
      const cid = batch[i]!;
      for (const link of blockLinks(cid, result.value)) {
        const key = link.toString();
        if (seen.has(key)) continue;
        seen.add(key);
        queue.push(link);
      }
      yield { cid, bytes: result.value };
    }
    // The queue only grows; drop what was walked so a long history is not held twice.
    if (next > 4096) {
      queue.splice(0, next);
      next = 0;
    }
  }
}

/**
 * Exports an agent as a CARv1 stream: `head` is the root, then every block reachable from it, each once.
 * Blocks are read from the store as the stream is consumed (a few ahead), so memory does not grow with the
 * history. Write the chunks to a file, e.g. `await pipeline(Readable.from(car), createWriteStream(path))`.
 *
 * @example
 * const car = exportAgentCar({ store, head: vault.head!.cid, onProgress: ({ blocks }) => bar.update(blocks) })
 * await pipeline(Readable.from(car), createWriteStream("agent-42.car"))
 * @throws VaultBlockError for a block that is not a vault block; the store's errors (BlockNotFoundError…).
 */
export async function* exportAgentCar(params: {
  store: BlockStore;
  head: CID;
  signal?: AbortSignal;
  onProgress?: (progress: CarProgress) => void;
}): AsyncGenerator<Uint8Array> {
  const header = dagCbor.encode({ version: 1, roots: [params.head] });
  yield concat([varint.encodeTo(header.length, new Uint8Array(varint.encodingLength(header.length))), header]);
  const progress: CarProgress = { blocks: 0, bytes: 0 };
  for await (const { cid, bytes } of walkAgentBlocks(params)) {
    const length = cid.bytes.length + bytes.length;
    yield concat([varint.encodeTo(length, new Uint8Array(varint.encodingLength(length))), cid.bytes, bytes]);
    progress.blocks++;
    progress.bytes += length;
    params.onProgress?.({ ...progress });
  }
}

/** What {@link importAgentCar} stored. */
export interface ImportedCar {
  /** The CAR's root: the agent's head commit, to `loadAgent` or publish. */
  root: CID;
  /** Blocks reachable from the root (all in the CAR, all stored). */
  blocks: number;
  /** Blocks of the CAR that the root does not reach (verified and stored too, but not part of the agent). */
  unreferenced: number;
}

/**
 * Imports an agent exported by {@link exportAgentCar} (or any CAR of vault blocks with one root): each
 * block is checked against its CID before it is stored, and the import succeeds only when every block
 * reachable from the root was in the CAR. Blocks the CAR holds twice are stored once.
 *
 * @example
 * const { root } = await importAgentCar({ store, car: createReadStream("agent-42.car") })
 * const agent = await loadAgent({ store, agent: ref, ownerKey, head: root })
 * @throws CarFormatError (not a CAR, or truncated), CarRootsError (not exactly one root),
 *   CarBlockMismatchError (bytes that are not their CID's), CarIncompleteError (blocks missing),
 *   VaultBlockError (a block that is not a vault block), and the store's errors.
 */
export async function importAgentCar(params: {
  store: BlockStore;
  car: AsyncIterable<Uint8Array> | Uint8Array;
  signal?: AbortSignal;
  onProgress?: (progress: CarProgress) => void;
}): Promise<ImportedCar> {
  const { store, signal } = params;
  signal?.throwIfAborted();
  const options = signal !== undefined ? { signal } : {};
  let reader: CarBlockIterator;
  let roots: CID[];
  try {
    reader =
      params.car instanceof Uint8Array
        ? await CarBlockIterator.fromBytes(params.car)
        : await CarBlockIterator.fromIterable(params.car);
    roots = await reader.getRoots();
  } catch (err) {
    signal?.throwIfAborted();
    throw new CarFormatError("its header cannot be read", err);
  }
  if (roots.length !== 1) throw new CarRootsError(roots.map((r) => r.toString()));
  const root = CID.asCID(roots[0])!;

  // Links of every block received, to find what the root reaches once the whole CAR is read.
  const links = new Map<string, CID[]>();
  const progress: CarProgress = { blocks: 0, bytes: 0 };
  const puts = new Set<Promise<void>>();
  const settle = async (limit: number): Promise<void> => {
    while (puts.size > limit) await Promise.race(puts);
  };
  let failed: unknown;
  const put = (cid: CID, bytes: Uint8Array): void => {
    const p: Promise<void> = store.put(cid, bytes, options).then(
      () => {
        puts.delete(p);
      },
      (err: unknown) => {
        puts.delete(p);
        failed ??= err;
      },
    );
    puts.add(p);
  };

  try {
    const blocks = reader[Symbol.asyncIterator]();
    for (;;) {
      signal?.throwIfAborted();
      if (failed !== undefined) throw failed;
      let step: IteratorResult<{ cid: CID; bytes: Uint8Array }>;
      try {
        step = await blocks.next();
      } catch (err) {
        signal?.throwIfAborted();
        throw new CarFormatError(`it ends or breaks after ${progress.blocks} blocks`, err);
      }
      if (step.done === true) break;
      const cid = CID.asCID(step.value.cid)!;
      const { bytes } = step.value;
      await verifyBlock(cid, bytes);
      const key = cid.toString();
      if (links.has(key)) continue;
      links.set(key, blockLinks(cid, bytes));
      put(cid, bytes);
      await settle(PUT_CONCURRENCY);
      progress.blocks++;
      progress.bytes += cid.bytes.length + bytes.length;
      params.onProgress?.({ ...progress });
    }
  } finally {
    await settle(0);
  }
  if (failed !== undefined) throw failed;

  // Everything the root reaches must have come in the CAR.
  const reached = new Set<string>([root.toString()]);
  const missing: string[] = [];
  const queue: CID[] = [root];
  for (let i = 0; i < queue.length; i++) {
    const key = queue[i]!.toString();
    const children = links.get(key);
    if (children === undefined) {
      missing.push(key);
      continue;
    }
    for (const child of children) {
      const childKey = child.toString();
      if (reached.has(childKey)) continue;
      reached.add(childKey);
      queue.push(child);
    }
  }
  if (missing.length > 0) throw new CarIncompleteError(root.toString(), missing);
  return { root, blocks: reached.size, unreferenced: links.size - reached.size };
}

/**
 * The blocks reachable from `previous` that `head` no longer reaches: after a forget, the blocks that hold
 * what was forgotten (with the old commits), to unpin or delete where the store can. Walks both DAGs.
 *
 * @example
 * const { head, replaced } = await vault.forget({ turns: [3] })
 * if (replaced) for (const cid of await supersededBlocks({ store, previous: replaced.cid, head: head!.cid })) …
 */
export async function supersededBlocks(params: {
  store: BlockStore;
  previous: CID;
  head: CID;
  signal?: AbortSignal;
}): Promise<CID[]> {
  const { store, signal } = params;
  const keep = new Set<string>();
  for await (const { cid } of walkAgentBlocks({ store, head: params.head, ...(signal !== undefined && { signal }) })) {
    keep.add(cid.toString());
  }
  const gone: CID[] = [];
  for await (const { cid } of walkAgentBlocks({ store, head: params.previous, ...(signal !== undefined && { signal }) })) {
    if (!keep.has(cid.toString())) gone.push(cid);
  }
  return gone;
}

async function verifyBlock(cid: CID, bytes: Uint8Array): Promise<void> {
  if (cid.version !== 1 || cid.multihash.code !== sha256.code) {
    throw new CarBlockMismatchError(cid.toString(), "its CID is not a CIDv1 hashed with sha2-256, the only kind vault blocks have");
  }
  const digest = await sha256.digest(bytes);
  if (!equalBytes(digest.digest, cid.multihash.digest)) {
    throw new CarBlockMismatchError(cid.toString(), "its bytes do not hash to its CID");
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
