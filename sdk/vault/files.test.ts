import * as dagCbor from "@ipld/dag-cbor";
import { exporter } from "ipfs-unixfs-exporter";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryBlockStore } from "../../test/helpers/memory-block-store.js";
import { prng } from "../../test/helpers/prng.js";
import { startHeliaPair, type HeliaPair } from "../../test/helpers/helia-pair.js";
import type { HeliaBlockStore } from "./block-store.js";
import { addFile, catFile, FILE_CHUNK_BYTES, fileSize, FileTooLargeError, NotAFileError, readFile } from "./files.js";

const KiB = 1024;
const MiB = 1024 * KiB;

function randomBytes(length: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(next() * 256);
  return out;
}

async function rawCid(bytes: Uint8Array): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(bytes));
}

async function* inPieces(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size);
}

const DAG_PB = 0x70;

describe("files on a block store", () => {
  it.each([
    ["0 B", 0],
    ["1 B", 1],
    ["256 KiB", 256 * KiB],
    ["256 KiB + 1", 256 * KiB + 1],
    ["3 MiB", 3 * MiB],
  ])("round-trips %s", async (_label, length) => {
    const store = new MemoryBlockStore();
    const bytes = randomBytes(length, length + 1);
    const progress: number[] = [];
    const { cid, size } = await addFile(store, bytes, { onProgress: (n) => progress.push(n) });
    expect(size).toBe(length);
    if (length > 0) expect(progress.at(-1)).toBe(length);
    expect(await fileSize(store, cid)).toBe(length);
    expect(Buffer.from(await readFile(store, cid)).equals(Buffer.from(bytes))).toBe(true);
  });

  it("lays a file out as Kubo's `ipfs add --cid-version 1` does: one chunk is one raw block", async () => {
    const store = new MemoryBlockStore();
    // The CIDv1 of the empty file, as Kubo and every IPFS implementation print it.
    expect((await addFile(store, new Uint8Array(0))).cid.toString()).toBe(
      "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    );
    const chunk = randomBytes(FILE_CHUNK_BYTES, 7);
    const { cid } = await addFile(store, chunk);
    expect(cid.equals(await rawCid(chunk))).toBe(true);
  });

  it("lays a larger file out as a balanced dag-pb DAG over 256 KiB raw leaves", async () => {
    const store = new MemoryBlockStore();
    const bytes = randomBytes(3 * MiB + 5, 3);
    const { cid } = await addFile(store, bytes);
    expect(cid.version).toBe(1);
    expect(cid.code).toBe(DAG_PB);
    const entry = await exporter(cid, {
      async *get(c: CID) {
        yield await store.get(c);
      },
    });
    if (entry.type !== "file") throw new Error(`expected a UnixFS file, got ${entry.type}`);
    // 12 full chunks and a 5-byte tail, each linked straight from the root (174 links fit in one node).
    expect(entry.node.Links).toHaveLength(13);
    for (const [i, link] of entry.node.Links.entries()) {
      const slice = bytes.subarray(i * FILE_CHUNK_BYTES, (i + 1) * FILE_CHUNK_BYTES);
      expect(link.Hash.equals(await rawCid(slice))).toBe(true);
    }
  });

  it("gives a stream the CID the same bytes have in one piece", async () => {
    const bytes = randomBytes(700 * KiB, 11);
    const whole = await addFile(new MemoryBlockStore(), bytes);
    const streamed = await addFile(new MemoryBlockStore(), inPieces(bytes, 100_003));
    expect(streamed.cid.equals(whole.cid)).toBe(true);
    expect(streamed.size).toBe(bytes.length);
  });

  it("streams a file in pieces", async () => {
    const store = new MemoryBlockStore();
    const bytes = randomBytes(600 * KiB, 13);
    const { cid } = await addFile(store, bytes);
    const pieces: Uint8Array[] = [];
    for await (const piece of catFile(store, cid)) pieces.push(piece);
    expect(pieces.length).toBeGreaterThan(1);
    expect(Buffer.concat(pieces).equals(Buffer.from(bytes))).toBe(true);
  });

  it("refuses a file above maxBytes from its root, before fetching its content", async () => {
    const store = new MemoryBlockStore();
    const { cid } = await addFile(store, randomBytes(600 * KiB, 17));
    const gets: string[] = [];
    const counting = Object.assign(Object.create(store) as MemoryBlockStore, {
      get: (c: CID) => (gets.push(c.toString()), store.get(c)),
    });
    const err = await readFile(counting, cid, { maxBytes: 512 * KiB }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FileTooLargeError);
    expect(err).toMatchObject({ size: 600 * KiB, maxBytes: 512 * KiB });
    expect(gets).toEqual([cid.toString()]);
    await expect(fileSize(store, cid, { maxBytes: 600 * KiB })).resolves.toBe(600 * KiB);
  });

  it("refuses a CID that is not a file", async () => {
    const store = new MemoryBlockStore();
    const bytes = dagCbor.encode({ not: "a file" });
    const cid = CID.createV1(dagCbor.code, await sha256.digest(bytes));
    await store.put(cid, bytes);
    await expect(readFile(store, cid)).rejects.toBeInstanceOf(NotAFileError);
    await expect(fileSize(store, cid)).rejects.toBeInstanceOf(NotAFileError);
  });

  it("stops on an aborted signal, adding or reading", async () => {
    const store = new MemoryBlockStore();
    const aborted = AbortSignal.abort(new Error("stop"));
    await expect(addFile(store, randomBytes(10, 1), { signal: aborted })).rejects.toThrow("stop");
    expect(store.blocks.size).toBe(0);
    const { cid } = await addFile(store, randomBytes(10, 1));
    await expect(readFile(store, cid, { signal: aborted })).rejects.toThrow("stop");
  });
});

describe("files between two Helia nodes", () => {
  let nodes: HeliaPair;
  let a: HeliaBlockStore;
  let b: HeliaBlockStore;

  beforeAll(async () => {
    nodes = await startHeliaPair("soulmesh-files-");
    ({ a, b } = nodes);
  });

  afterAll(() => nodes?.stop());

  it.each([
    ["one raw block", 1_000],
    ["a dag-pb DAG", 3 * MiB + 1],
  ])("a file added on one node is read byte for byte on the other (%s)", async (_label, length) => {
    const bytes = randomBytes(length, length);
    const { cid } = await addFile(a, bytes);
    await a.pin(cid);
    expect(await b.has(cid)).toBe(false);
    expect(Buffer.from(await readFile(b, cid)).equals(Buffer.from(bytes))).toBe(true);
  });
});
