import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CarBlockIterator, CarWriter } from "@ipld/car";
import * as dagCbor from "@ipld/dag-cbor";
import { Wallet } from "ethers";
import { varint } from "multiformats";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHeliaBlockStore } from "./block-store.js";
import { exportAgentCar, importAgentCar, walkAgentBlocks, type CarProgress } from "./car.js";
import { generateAgentKey, ownerKeyFromSigner, type AgentRef } from "./crypto.js";
import { TURN_BLOCKS_PER_INDEX } from "./dag.js";
import { CarBlockMismatchError, CarFormatError, CarIncompleteError, CarRootsError, VaultBlockError } from "./errors.js";
import { TurnJournal } from "./journal.js";
import type { BlockStore } from "./types.js";
import { AgentVault, loadAgent, type Turn } from "./vault.js";
import { MemoryBlockStore } from "../../test/helpers/memory-block-store.js";


const deployment = { chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const agent: AgentRef = { ...deployment, agentId: 9n };
const MARKER = "CAR-PLAINTEXT-MARKER-90d1";
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const turn = (i: number): Turn => ({ role: i % 2 === 0 ? "user" : "assistant", text: `turn ${i} ${MARKER}`, time: 1_700_000_000_000 + i });

let root: string;
let ownerKey: Uint8Array;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-car-"));
  ownerKey = await ownerKeyFromSigner(Wallet.createRandom(), deployment);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let journals = 0;
/** An agent with `commits` commits (one turn each, so more than 64 makes index blocks) and two items. */
async function writeAgent(store: BlockStore, commits: number): Promise<CID> {
  const agentKey = generateAgentKey();
  const journal = new TurnJournal({ ...agent, dir: join(root, `journal-${journals++}`), key: agentKey });
  await journal.open();
  try {
    const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey });
    await vault.setItem("profile", enc(`an old profile ${MARKER}`));
    for (let i = 0; i < commits; i++) {
      await vault.appendTurn(turn(i));
      if (i === 3) await vault.setItem("profile", enc(`likes the sea ${MARKER}`));
      if (i === 5) await vault.setItem("notebook", enc(`notes ${MARKER}`));
      await vault.commit();
    }
    return vault.head!.cid;
  } finally {
    await journal.close();
  }
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const chunk of chunks) out.push(chunk);
  return out;
}

async function exportBytes(store: BlockStore, head: CID): Promise<Uint8Array> {
  return Buffer.concat(await collect(exportAgentCar({ store, head })));
}

async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

async function blocksOf(car: Uint8Array): Promise<{ roots: CID[]; blocks: { cid: CID; bytes: Uint8Array }[] }> {
  const reader = await CarBlockIterator.fromBytes(car);
  const blocks: { cid: CID; bytes: Uint8Array }[] = [];
  for await (const block of reader) blocks.push(block);
  return { roots: await reader.getRoots(), blocks };
}

async function encodeCar(roots: CID[], blocks: readonly { cid: CID; bytes: Uint8Array }[]): Promise<Uint8Array> {
  const { writer, out } = CarWriter.create(roots);
  const done = collect(out);
  for (const block of blocks) await writer.put(block);
  await writer.close();
  return Buffer.concat(await done);
}

describe("agent CAR", () => {
  it("exports an agent from one Helia node and imports it into another, which loads the same agent", async () => {
    const a = createHeliaBlockStore({ dir: join(root, "ipfs-a") });
    const b = createHeliaBlockStore({ dir: join(root, "ipfs-b") }); // not connected to a: only the CAR links them
    await a.start();
    await b.start();
    try {
      const head = await writeAgent(a, TURN_BLOCKS_PER_INDEX + 6);
      const exported: CarProgress[] = [];
      const chunks = await collect(exportAgentCar({ store: a, head, onProgress: (p) => exported.push(p) }));
      // Streamed: the header, then one chunk per block.
      expect(chunks.length).toBe(exported.length + 1);
      const car = Buffer.concat(chunks);
      expect(car.includes(Buffer.from(MARKER))).toBe(false);

      const { roots, blocks } = await blocksOf(car);
      expect(roots.map(String)).toEqual([head.toString()]);
      expect(blocks[0]!.cid.equals(head)).toBe(true);
      // Each block once; and exactly what the head reaches.
      expect(new Set(blocks.map((bl) => bl.cid.toString())).size).toBe(blocks.length);
      let reachable = 0;
      for await (const _ of walkAgentBlocks({ store: a, head })) reachable++;
      expect(blocks.length).toBe(reachable);
      const blockBytes = blocks.reduce((n, bl) => n + bl.cid.bytes.length + bl.bytes.length, 0);
      expect(exported.at(-1)).toEqual({ blocks: blocks.length, bytes: blockBytes });

      const imported: CarProgress[] = [];
      const result = await importAgentCar({ store: b, car: chunked(car, 997), onProgress: (p) => imported.push(p) });
      expect(result).toEqual({ root: head, blocks: blocks.length, unreferenced: 0 });
      expect(imported.length).toBe(blocks.length);
      expect(imported.at(-1)!.blocks).toBe(blocks.length);

      const fromA = await loadAgent({ store: a, agent, ownerKey, head });
      const fromB = await loadAgent({ store: b, agent, ownerKey, head: result.root });
      expect(fromB.turns).toEqual(Array.from({ length: TURN_BLOCKS_PER_INDEX + 6 }, (_, i) => turn(i)));
      expect(fromB.turns).toEqual(fromA.turns);
      expect(fromB.items).toEqual(fromA.items);
      expect(new TextDecoder().decode(fromB.items.profile)).toBe(`likes the sea ${MARKER}`);
      // The old commits came along: the previous head loads too.
      expect(fromB.head.prev).not.toBeNull();
      await loadAgent({ store: b, agent, ownerKey, head: fromB.head.prev! });
    } finally {
      await b.stop();
      await a.stop();
    }
  });

  it("refuses a tampered block, storing nothing of it", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 4);
    const car = await exportBytes(source, head);
    const { blocks } = await blocksOf(car);
    const last = blocks.at(-1)!;

    // A byte of the last block's data flipped in the file.
    const tampered = new Uint8Array(car);
    tampered[tampered.length - 1]! ^= 1;
    const target = new MemoryBlockStore();
    const err = await importAgentCar({ store: target, car: tampered }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CarBlockMismatchError);
    expect((err as CarBlockMismatchError).cid).toBe(last.cid.toString());
    expect(await target.has(last.cid)).toBe(false);

    // A block re-encoded under another block's CID, in the middle of the CAR.
    const swapped = blocks.map((bl, i) => (i === 2 ? { cid: bl.cid, bytes: blocks[3]!.bytes } : bl));
    const other = new MemoryBlockStore();
    await expect(importAgentCar({ store: other, car: await encodeCar([head], swapped) })).rejects.toBeInstanceOf(
      CarBlockMismatchError,
    );
    expect(await other.has(blocks[2]!.cid)).toBe(false);
  });

  it("refuses a truncated CAR: cut inside a block, or a block short", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 4);
    const car = await exportBytes(source, head);
    for (const cut of [5, 100, car.length - 10]) {
      await expect(importAgentCar({ store: new MemoryBlockStore(), car: chunked(car.subarray(0, cut), 64) })).rejects.toBeInstanceOf(
        CarFormatError,
      );
    }
    // Cut exactly after a block: the CAR parses, but the agent is incomplete.
    const { blocks } = await blocksOf(car);
    const lastLength = blocks.at(-1)!.cid.bytes.length + blocks.at(-1)!.bytes.length;
    const cut = car.length - lastLength - varint.encodingLength(lastLength);
    const err = await importAgentCar({ store: new MemoryBlockStore(), car: car.subarray(0, cut) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CarIncompleteError);
    expect((err as CarIncompleteError).missing).toEqual([blocks.at(-1)!.cid.toString()]);
  });

  it("refuses a CAR missing a block, listing what is missing", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 6);
    const { blocks } = await blocksOf(await exportBytes(source, head));
    const dropped = [blocks[3]!.cid.toString(), blocks[5]!.cid.toString()];
    const car = await encodeCar(
      [head],
      blocks.filter((bl) => !dropped.includes(bl.cid.toString())),
    );
    const err = await importAgentCar({ store: new MemoryBlockStore(), car }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CarIncompleteError);
    expect(new Set((err as CarIncompleteError).missing)).toEqual(new Set(dropped));
    expect((err as CarIncompleteError).root).toBe(head.toString());
    // The root itself missing.
    const noRoot = await encodeCar([head], blocks.slice(1));
    await expect(importAgentCar({ store: new MemoryBlockStore(), car: noRoot })).rejects.toThrow(/lacks 1 block/);
  });

  it("refuses a CAR without exactly one root, and bytes that are not a CAR", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 2);
    const { blocks } = await blocksOf(await exportBytes(source, head));
    for (const roots of [[], [head, blocks[1]!.cid]]) {
      const err = await importAgentCar({ store: new MemoryBlockStore(), car: await encodeCar(roots, blocks) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CarRootsError);
      expect((err as CarRootsError).roots.length).toBe(roots.length);
    }
    await expect(importAgentCar({ store: new MemoryBlockStore(), car: enc("not a car at all") })).rejects.toBeInstanceOf(CarFormatError);
    await expect(importAgentCar({ store: new MemoryBlockStore(), car: new Uint8Array() })).rejects.toBeInstanceOf(CarFormatError);
  });

  it("stores duplicates once, counts blocks the root does not reach, and refuses blocks that are not vault blocks", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 3);
    const { blocks } = await blocksOf(await exportBytes(source, head));
    const strayBytes = (await blocksOf(await exportBytes(source, await writeAgent(source, 1)))).blocks[0]!;
    const target = new MemoryBlockStore();
    const result = await importAgentCar({ store: target, car: await encodeCar([head], [...blocks, blocks[1]!, strayBytes]) });
    expect(result).toEqual({ root: head, blocks: blocks.length, unreferenced: 1 });
    expect(target.blocks.size).toBe(blocks.length + 1);

    const foreign = dagCbor.encode({ hello: "world" });
    const foreignCid = CID.createV1(dagCbor.code, await sha256.digest(foreign));
    await expect(
      importAgentCar({ store: new MemoryBlockStore(), car: await encodeCar([foreignCid], [{ cid: foreignCid, bytes: foreign }]) }),
    ).rejects.toBeInstanceOf(VaultBlockError);
  });

  it("stops on an aborted signal", async () => {
    const source = new MemoryBlockStore();
    const head = await writeAgent(source, 3);
    const car = await exportBytes(source, head);
    const controller = new AbortController();
    controller.abort();
    await expect(importAgentCar({ store: new MemoryBlockStore(), car, signal: controller.signal })).rejects.toThrow(/abort/i);
    await expect(collect(exportAgentCar({ store: source, head, signal: controller.signal }))).rejects.toThrow(/abort/i);
  });
});
