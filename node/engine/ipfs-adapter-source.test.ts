import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { tinyFixtures, type TinyFixtures } from "../../test/fixtures/gguf/llama.js";
import { createHeliaBlockStore, type HeliaBlockStore } from "../../sdk/vault/block-store.js";
import { addFile } from "../../sdk/vault/files.js";
import { AdapterStore, folderAdapterSource, type AdapterBase, type AdapterFetchedDetail } from "./adapters.js";
import { AdapterNotFoundError, HashMismatchError } from "./errors.js";
import { ipfsAdapterSource } from "./ipfs-adapter-source.js";
import { readBaseModelInfo } from "./models.js";

describe("ipfsAdapterSource", () => {
  let fx: TinyFixtures;
  let base: AdapterBase;
  let root: string;
  let publisher: HeliaBlockStore;
  let provider: HeliaBlockStore;
  let cids: string[];
  const stores: AdapterStore[] = [];

  beforeAll(async () => {
    fx = await tinyFixtures();
    base = { ...(await readBaseModelInfo(fx.base.path)), sha256: fx.base.sha256 };
    root = await mkdtemp(join(tmpdir(), "soulmesh-ipfs-adapters-"));
    publisher = createHeliaBlockStore({ dir: join(root, "publisher") });
    await publisher.start();
    cids = [];
    for (const adapter of fx.adapters) {
      const { cid } = await addFile(publisher, await readFile(adapter.path));
      await publisher.pin(cid);
      cids.push(cid.toString());
    }
    // The provider's own node holds nothing: every adapter comes from the publisher over bitswap.
    provider = createHeliaBlockStore({ dir: join(root, "provider"), peers: [publisher.multiaddrs()[0]!], fetchTimeoutMs: 10_000 });
    await provider.start();
  });

  afterEach(async () => {
    for (const s of stores.splice(0)) await s.stop();
  });

  afterAll(async () => {
    await provider?.stop();
    await publisher?.stop();
    await rm(root, { recursive: true, force: true });
  });

  async function started(name: string, sources = [ipfsAdapterSource(provider, { timeoutMs: 2_000 })]): Promise<AdapterStore> {
    const store = new AdapterStore({ dir: join(root, name), maxBytes: 64 * 2 ** 20, sources });
    stores.push(store);
    await store.start();
    return store;
  }

  it("fetches an adapter by CID from another node, verified and cached", async () => {
    const store = await started("cache-ok");
    const fetched: AdapterFetchedDetail[] = [];
    store.addEventListener("adapter:fetched", (e) => fetched.push(e.detail));
    const lease = await store.get({ cid: cids[0]!, sha256: fx.adapters[0]!.sha256, model: base });
    expect(Buffer.from(await readFile(lease.path)).equals(await readFile(fx.adapters[0]!.path))).toBe(true);
    expect(fetched).toEqual([{ cid: cids[0], sha256: fx.adapters[0]!.sha256, size: lease.size, source: "ipfs" }]);
    lease.release();
  });

  it("refuses bytes on IPFS that are not the registered ones: nothing cached", async () => {
    const dir = "cache-mismatch";
    const store = await started(dir);
    // The CID serves adapter 1; the persona registered adapter 0's hash.
    const err = await store.get({ cid: cids[1]!, sha256: fx.adapters[0]!.sha256, model: base }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HashMismatchError);
    expect(store.entries()).toEqual([]);
    expect(store.has(fx.adapters[0]!.sha256)).toBe(false);
    expect(store.has(fx.adapters[1]!.sha256)).toBe(false);
    expect((await readdir(join(root, dir))).filter((name) => name.endsWith(".gguf"))).toEqual([]);
    expect(await readdir(join(root, dir, "tmp"))).toEqual([]);
  });

  it("lets the next source serve the right bytes after IPFS served wrong ones", async () => {
    // A folder holding adapter 0 under adapter 1's CID, tried after IPFS.
    const folder = join(root, "folder");
    await mkdir(folder, { recursive: true });
    await copyFile(fx.adapters[0]!.path, join(folder, cids[1]!));
    const store = await started("cache-fallback", [ipfsAdapterSource(provider, { timeoutMs: 2_000 }), folderAdapterSource(folder)]);
    const lease = await store.get({ cid: cids[1]!, sha256: fx.adapters[0]!.sha256, model: base });
    expect(lease.sha256).toBe(fx.adapters[0]!.sha256);
    lease.release();
  });

  it("answers undefined for what it cannot serve, so the store reports the adapter not found", async () => {
    const source = ipfsAdapterSource(provider, { timeoutMs: 1_000 });
    expect(await source.open("not a cid")).toBeUndefined();
    // A dag-cbor record is no file.
    const record = dagCbor.encode({ persona: 1 });
    const recordCid = CID.createV1(dagCbor.code, await sha256.digest(record));
    await provider.put(recordCid, record);
    expect(await source.open(recordCid.toString())).toBeUndefined();
    // A file nobody holds: its root does not arrive in time.
    const missing = CID.createV1(0x55, await sha256.digest(new TextEncoder().encode("nobody has this")));
    expect(await source.open(missing.toString())).toBeUndefined();

    const store = await started("cache-missing", [source]);
    await expect(store.get({ cid: missing.toString(), sha256: fx.adapters[0]!.sha256, model: base })).rejects.toBeInstanceOf(
      AdapterNotFoundError,
    );
  });

  it("gives the file's size up front and stops on the caller's signal", async () => {
    const source = ipfsAdapterSource(provider);
    const stream = await source.open(cids[2]!);
    expect(stream?.size).toBe((await readFile(fx.adapters[2]!.path)).length);
    await expect(source.open(cids[2]!, { signal: AbortSignal.abort(new Error("gone")) })).rejects.toThrow("gone");
  });
});
