import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, describe, expect, it } from "vitest";
import { createHeliaBlockStore } from "./block-store.js";
import { generateAgentKey, type AgentRef } from "./crypto.js";
import { readCommit, readItem, readTurns, TURN_BLOCKS_PER_INDEX, writeCommit, type Commit, type DagContext } from "./dag.js";
import { VaultBlockError, VaultDecryptError } from "./errors.js";
import type { BlockStore } from "./types.js";
import { MemoryBlockStore } from "../../test/helpers/memory-block-store.js";


const agent: AgentRef = { agentId: 7n, chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

function context(store: BlockStore = new MemoryBlockStore(), key = generateAgentKey()): DagContext {
  return { store, agent, key };
}

async function commitTurns(ctx: DagContext, count: number, from?: Commit, label = "turn"): Promise<Commit> {
  let head = from;
  const start = head?.turnCount ?? 0;
  for (let i = start; i < start + count; i++) head = await writeCommit(ctx, head, { turns: [enc(`${label} ${i}`)] });
  return head!;
}

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe("vault DAG", () => {
  it("round-trips turns and items across commits, writing only what changed", async () => {
    const ctx = context();
    const c1 = await writeCommit(ctx, undefined, {
      turns: [enc("hello"), enc("hi there")],
      items: { profile: enc("likes the sea"), notebook: enc("don't say 'indeed'") },
    });
    const c2 = await writeCommit(ctx, c1, { turns: [enc("how are you?")], items: { profile: enc("likes mountains") } });
    const c3 = await writeCommit(ctx, c2, { items: { notebook: null } });

    const read = await readCommit(ctx, c3.cid);
    expect(read).toEqual(c3);
    expect(read).toMatchObject({ seq: 3, turnCount: 3, prev: c2.cid });
    expect((await readTurns(ctx, read)).map(dec)).toEqual(["hello", "hi there", "how are you?"]);
    expect(dec((await readItem(ctx, read, "profile"))!)).toBe("likes mountains");
    expect(await readItem(ctx, read, "notebook")).toBeUndefined();
    // The unchanged profile of c1 is still c1's block in c2: nothing rewritten.
    expect(c3.items.profile!.equals(c2.items.profile!)).toBe(true);
    expect(dec((await readItem(ctx, await readCommit(ctx, c1.cid), "notebook"))!)).toBe("don't say 'indeed'");
  });

  it("loads long histories through the index, in order", async () => {
    const ctx = context();
    const blocks = TURN_BLOCKS_PER_INDEX * 2 + 5;
    const head = await commitTurns(ctx, blocks);
    expect(head.turnBlockCount).toBe(blocks);
    expect(head.indexHead).not.toBeNull();
    const turns = (await readTurns(ctx, await readCommit(ctx, head.cid))).map(dec);
    expect(turns).toEqual(Array.from({ length: blocks }, (_, i) => `turn ${i}`));
    // A writer that resumes from a head it read back (another process) walks the chain for the index.
    const ctx3 = context();
    const before = await commitTurns(ctx3, 40);
    const resumed = await commitTurns(ctx3, 30, await readCommit(ctx3, before.cid));
    expect(resumed.indexHead).not.toBeNull();
    expect((await readTurns(ctx3, await readCommit(ctx3, resumed.cid))).map(dec)).toEqual(
      Array.from({ length: 70 }, (_, i) => `turn ${i}`),
    );
    // Exactly at a group boundary, too.
    const ctx2 = context();
    const edge = await commitTurns(ctx2, TURN_BLOCKS_PER_INDEX);
    expect((await readTurns(ctx2, edge)).length).toBe(TURN_BLOCKS_PER_INDEX);
  });

  it("writes the same bytes per turn whatever the length of the history", async () => {
    const store = new MemoryBlockStore();
    const ctx = context(store);
    let head = await commitTurns(ctx, 10);
    const perTurn = async (turns: number): Promise<number> => {
      const before = store.written;
      head = await commitTurns(ctx, turns, head);
      return (store.written - before) / turns;
    };
    const early = await perTurn(TURN_BLOCKS_PER_INDEX * 2);
    head = await commitTurns(ctx, 1000, head);
    const late = await perTurn(TURN_BLOCKS_PER_INDEX * 2);
    expect(Math.abs(late - early) / early).toBeLessThan(0.1);
  });

  it("holds no plaintext in any block", async () => {
    const store = new MemoryBlockStore();
    const ctx = context(store);
    const marker = "MARKER-7f3a9c";
    await writeCommit(ctx, undefined, { turns: [enc(`secret ${marker}`)], items: { profile: enc(marker) } });
    const needle = Buffer.from(marker);
    for (const bytes of store.blocks.values()) expect(Buffer.from(bytes).includes(needle)).toBe(false);
  });

  it("refuses a wrong key, another agent's commit and tampered or foreign blocks with typed errors", async () => {
    const store = new MemoryBlockStore();
    const ctx = context(store);
    const head = await commitTurns(ctx, 3);
    await expect(readCommit({ ...ctx, key: generateAgentKey() }, head.cid)).rejects.toBeInstanceOf(VaultDecryptError);
    await expect(readCommit({ ...ctx, agent: { ...agent, agentId: 8n } }, head.cid)).rejects.toBeInstanceOf(
      VaultDecryptError,
    );
    // A turn block is not a commit, even under the right key: the kind is bound.
    await expect(readCommit(ctx, head.turnsHead!)).rejects.toBeInstanceOf(VaultDecryptError);

    // A foreign block under a CID (not dag-cbor, or not ours).
    const put = async (bytes: Uint8Array, codec: number = dagCbor.code): Promise<CID> => {
      const cid = CID.createV1(codec, await sha256.digest(bytes));
      await store.put(cid, bytes);
      return cid;
    };
    await expect(readCommit(ctx, await put(enc("not cbor at all"), 0x55))).rejects.toBeInstanceOf(VaultBlockError);
    await expect(readCommit(ctx, await put(dagCbor.encode({ hello: "world" })))).rejects.toBeInstanceOf(VaultBlockError);

    // Tampered blocks stored under the same CID (as a lying peer or a corrupted disk would serve them).
    const original = dagCbor.decode(await store.get(head.cid)) as { v: number; l: CID[]; b: Uint8Array };
    const sealed = new Uint8Array(original.b);
    sealed[sealed.length - 3]! ^= 1;
    store.blocks.set(head.cid.toString(), dagCbor.encode({ ...original, b: sealed }));
    await expect(readCommit(ctx, head.cid)).rejects.toBeInstanceOf(VaultDecryptError);
    // Links are in the clear; swapping one (prev ↔ turnsHead) is caught by the sealed digest of the links.
    store.blocks.set(head.cid.toString(), dagCbor.encode({ ...original, l: [...original.l].reverse() }));
    await expect(readCommit(ctx, head.cid)).rejects.toThrow(/links are not the ones it was sealed with/);
  });

  it("refuses a history whose turn blocks were swapped for others of the same agent", async () => {
    const ctx = context();
    const a = await commitTurns(ctx, 3, undefined, "a");
    const b = await commitTurns(ctx, 5, undefined, "b");
    // A commit of b's that claims a's turn chain: the counts and block numbers don't add up.
    const forged = await writeCommit(ctx, { ...b, turnsHead: a.turnsHead }, {});
    await expect(readTurns(ctx, forged)).rejects.toBeInstanceOf(VaultBlockError);
  });
});

describe("vault DAG over Helia", () => {
  it("one node writes an agent's commits, another reads them by CID over loopback", async () => {
    const dirA = await mkdtemp(join(tmpdir(), "soulmesh-dag-a-"));
    const dirB = await mkdtemp(join(tmpdir(), "soulmesh-dag-b-"));
    dirs.push(dirA, dirB);
    const a = await createHeliaBlockStore({ dir: dirA });
    await a.start();
    const b = await createHeliaBlockStore({ dir: dirB, peers: a.multiaddrs() });
    await b.start();
    try {
      const key = generateAgentKey();
      const head = await writeCommit({ store: a, agent, key }, await commitTurns({ store: a, agent, key }, 4), {
        items: { "working-memory": enc("follow up about the trip on Friday") },
      });
      const reader: DagContext = { store: b, agent, key };
      const read = await readCommit(reader, head.cid);
      expect((await readTurns(reader, read)).map(dec)).toEqual(["turn 0", "turn 1", "turn 2", "turn 3"]);
      expect(dec((await readItem(reader, read, "working-memory"))!)).toBe("follow up about the trip on Friday");
    } finally {
      await b.stop();
      await a.stop();
    }
  });
});
