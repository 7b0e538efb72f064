import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { tinyFixtures } from "../../test/fixtures/gguf/llama.js";
import type { TinyFixtures } from "../../test/fixtures/gguf/llama.js";
import {
  AdapterStore,
  adapterMismatch,
  checkAdapterCompatibility,
  folderAdapterSource,
  readAdapterHeader,
} from "./adapters.js";
import type {
  AdapterBase,
  AdapterEvictedDetail,
  AdapterFetchedDetail,
  AdapterHeader,
  AdapterRequest,
  AdapterSource,
  AdapterStream,
} from "./adapters.js";
import {
  AdapterBaseMismatchError,
  AdapterNotFoundError,
  AdapterTooLargeError,
  EngineStoppedError,
  HashMismatchError,
  InvalidGgufError,
  InvalidHashError,
} from "./errors.js";
import { sha256File } from "./file-hash.js";
import { readBaseModelInfo } from "./models.js";

let dir: string;
let cacheDir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-adapters-"));
  cacheDir = join(dir, "cache");
});
afterEach(() => rm(dir, { recursive: true, force: true }));

function sha256Of(bytes: Uint8Array | string): string {
  return `0x${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Files in the cache folder and its temp folder, index aside. */
async function cacheFiles(): Promise<string[]> {
  const top = (await readdir(cacheDir)).filter((n) => n !== "tmp" && n !== "index.json");
  const tmp = (await readdir(join(cacheDir, "tmp"))).map((n) => `tmp/${n}`);
  return [...top, ...tmp].sort();
}

/** A source serving bytes from memory, counting how often it is asked. */
function memorySource(name: string, files: Record<string, Uint8Array>): AdapterSource & { opens: number } {
  const source = {
    name,
    opens: 0,
    async open(cid: string): Promise<AdapterStream | undefined> {
      source.opens += 1;
      const bytes = files[cid];
      if (bytes === undefined) return undefined;
      return {
        size: bytes.length,
        async *[Symbol.asyncIterator]() {
          // Several chunks, with a turn of the event loop between, like a network source.
          for (let i = 0; i < bytes.length; i += 1024) {
            await new Promise((r) => setImmediate(r));
            yield bytes.subarray(i, i + 1024);
          }
        },
      };
    },
  };
  return source;
}

/** A source that serves one chunk and then hangs until aborted. */
function stallingSource(): AdapterSource & { started: Promise<void> } {
  let markStarted!: () => void;
  const started = new Promise<void>((r) => (markStarted = r));
  return {
    name: "stalling",
    started,
    async open(_cid: string, options: { signal?: AbortSignal } = {}): Promise<AdapterStream> {
      const signal = options.signal;
      return {
        async *[Symbol.asyncIterator]() {
          yield new Uint8Array(4096);
          markStarted();
          await new Promise((_, reject) => {
            if (signal?.aborted) reject(signal.reason as Error);
            signal?.addEventListener("abort", () => reject(signal.reason as Error), { once: true });
          });
        },
      };
    },
  };
}

const fakeBase: AdapterBase = {
  sha256: `0x${"ba".repeat(32)}`,
  architecture: "llama",
  tensorShapes: new Map([["blk.0.attn_q.weight", [64, 64]]]),
};

describe("folderAdapterSource", () => {
  it("serves <dir>/<cid> or <dir>/<cid>.gguf, and nothing outside the folder", async () => {
    const folder = join(dir, "folder");
    await mkdir(join(folder, "isdir"), { recursive: true });
    await writeFile(join(folder, "bafyplain"), "plain");
    await writeFile(join(folder, "bafyext.gguf"), "with extension");
    await writeFile(join(dir, "secret"), "outside");
    const source = folderAdapterSource(folder);
    const read = async (cid: string): Promise<string | undefined> => {
      const stream = await source.open(cid);
      if (stream === undefined) return undefined;
      const chunks: Uint8Array[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      return Buffer.concat(chunks).toString();
    };
    expect(await read("bafyplain")).toBe("plain");
    expect(await read("bafyext")).toBe("with extension");
    expect((await source.open("bafyext"))?.size).toBe("with extension".length);
    expect(await read("bafymissing")).toBeUndefined();
    expect(await read("isdir")).toBeUndefined();
    expect(await read("../secret")).toBeUndefined();
    expect(await read("..")).toBeUndefined();
  });
});

describe("adapterMismatch (llama.cpp's rules)", () => {
  const header = (over: Partial<AdapterHeader> = {}): AdapterHeader => ({
    generalType: "adapter",
    adapterType: "lora",
    architecture: "llama",
    tensorShapes: new Map([
      ["blk.0.attn_q.weight.lora_a", [64, 8]],
      ["blk.0.attn_q.weight.lora_b", [8, 32]],
    ]),
    ...over,
  });
  const base = {
    architecture: "llama",
    tensorShapes: new Map([
      ["blk.0.attn_q.weight", [64, 32]],
      ["token_embd.weight", [64, 100]],
      ["blk.0.attn_norm.weight", [64]],
    ]),
  };

  it("accepts lora_a [n_in, rank] and lora_b [rank, n_out] on a base weight [n_in, n_out]", () => {
    expect(adapterMismatch(header(), base)).toBeUndefined();
    // Norm vectors are ignored by llama.cpp, so they are no reason to refuse.
    const withNorm = new Map(header().tensorShapes).set("blk.0.attn_norm.weight", [64]);
    expect(adapterMismatch(header({ tensorShapes: withNorm }), base)).toBeUndefined();
  });

  it("accepts token_embd's pair the other way round, as llama.cpp applies it", () => {
    const embd = new Map([
      ["token_embd.weight.lora_a", [8, 100]],
      ["token_embd.weight.lora_b", [8, 64]],
    ]);
    expect(adapterMismatch(header({ tensorShapes: embd }), base)).toBeUndefined();
    const wrong = new Map([
      ["token_embd.weight.lora_a", [64, 8]],
      ["token_embd.weight.lora_b", [8, 100]],
    ]);
    expect(adapterMismatch(header({ tensorShapes: wrong }), base)).toContain("token_embd.weight");
    // Ranks that differ would pass llama.cpp's load and crash it at the first token.
    const ranks = new Map([
      ["token_embd.weight.lora_a", [8, 100]],
      ["token_embd.weight.lora_b", [4, 64]],
    ]);
    expect(adapterMismatch(header({ tensorShapes: ranks }), base)).toContain("token_embd.weight");
  });

  it("names each reason to refuse", () => {
    const cases: Array<[Partial<AdapterHeader>, string]> = [
      [{ generalType: "model" }, "general.type"],
      [{ generalType: undefined }, "general.type"],
      [{ adapterType: "control_vector" }, "adapter.type"],
      [{ architecture: "qwen2" }, "qwen2"],
      [{ tensorShapes: new Map([["blk.0.attn_q.weight.lora_a", [64, 8]]]) }, "no lora_b"],
      [{ tensorShapes: new Map([["blk.0.attn_q.weight", [64, 32]]]) }, "neither"],
      [
        {
          tensorShapes: new Map([
            ["blk.9.attn_q.weight.lora_a", [64, 8]],
            ["blk.9.attn_q.weight.lora_b", [8, 32]],
          ]),
        },
        "blk.9.attn_q.weight, which the base model does not have",
      ],
      [
        {
          tensorShapes: new Map([
            ["blk.0.attn_q.weight.lora_a", [48, 8]],
            ["blk.0.attn_q.weight.lora_b", [8, 32]],
          ]),
        },
        "[64, 32] in the base model",
      ],
      [
        {
          tensorShapes: new Map([
            ["blk.0.attn_q.weight.lora_a", [64, 8]],
            ["blk.0.attn_q.weight.lora_b", [8, 48]],
          ]),
        },
        "[64, 32] in the base model",
      ],
      // Ranks that disagree: the shape of lora_a that the old "finetune" example wrote, transposed.
      [
        {
          tensorShapes: new Map([
            ["blk.0.attn_q.weight.lora_a", [64, 8]],
            ["blk.0.attn_q.weight.lora_b", [4, 32]],
          ]),
        },
        "do not fit",
      ],
    ];
    for (const [over, reason] of cases) expect(adapterMismatch(header(over), base)).toContain(reason);
  });

  it("checkAdapterCompatibility throws AdapterBaseMismatchError with the reason", () => {
    const err = (() => {
      try {
        checkAdapterCompatibility("bafyx", header({ architecture: "gemma" }), base);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(AdapterBaseMismatchError);
    expect(err).toMatchObject({ name: "AdapterBaseMismatchError", cid: "bafyx" });
    expect((err as Error).message).toContain("gemma");
  });
});

describe("AdapterStore with sources that fail", () => {
  let store: AdapterStore | undefined;
  afterEach(async () => {
    await store?.stop();
    store = undefined;
  });

  async function started(sources: AdapterSource[], maxBytes = 1 << 20): Promise<AdapterStore> {
    store = new AdapterStore({ dir: cacheDir, maxBytes, sources });
    await store.start();
    return store;
  }

  it("refuses calls before start and after stop", async () => {
    const s = new AdapterStore({ dir: cacheDir, maxBytes: 1000, sources: [] });
    await expect(s.get({ cid: "bafy", sha256: sha256Of("x"), model: fakeBase })).rejects.toBeInstanceOf(
      EngineStoppedError,
    );
    await s.start();
    await s.stop();
    await expect(s.get({ cid: "bafy", sha256: sha256Of("x"), model: fakeBase })).rejects.toBeInstanceOf(
      EngineStoppedError,
    );
  });

  it("refuses an adapter that no source has", async () => {
    const a = memorySource("a", {});
    const b = memorySource("b", {});
    const s = await started([a, b]);
    const err = await s.get({ cid: "bafymissing", sha256: sha256Of("x"), model: fakeBase }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterNotFoundError);
    expect(err).toMatchObject({ name: "AdapterNotFoundError", cid: "bafymissing" });
    expect(a.opens).toBe(1);
    expect(b.opens).toBe(1);
    expect(await cacheFiles()).toEqual([]);
  });

  it("names a source's failure as the cause when none has it", async () => {
    const broken: AdapterSource = {
      name: "broken",
      open: () => Promise.reject(new Error("connection refused")),
    };
    const err = await (await started([broken]))
      .get({ cid: "bafy", sha256: sha256Of("x"), model: fakeBase })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterNotFoundError);
    expect(String((err as Error).cause)).toContain("connection refused");
  });

  it("refuses bytes whose hash is not the registered one: nothing is cached", async () => {
    const registered = sha256Of("the creator's adapter");
    const source = memorySource("evil", { bafy: new Uint8Array(5000).fill(3) });
    const s = await started([source]);
    const err = await s.get({ cid: "bafy", sha256: registered, model: fakeBase }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HashMismatchError);
    expect(err).toMatchObject({
      what: "adapter",
      id: "bafy",
      expected: registered,
      actual: sha256Of(new Uint8Array(5000).fill(3)),
    });
    expect(await cacheFiles()).toEqual([]);
    expect(s.entries()).toEqual([]);
    expect(s.has(registered)).toBe(false);
  });

  it("refuses a malformed registered hash, which could otherwise name a path", async () => {
    const s = await started([memorySource("a", {})]);
    await expect(s.get({ cid: "bafy", sha256: "0x../../etc/passwd", model: fakeBase })).rejects.toBeInstanceOf(
      InvalidHashError,
    );
  });

  it("refuses before fetching when the persona names another base model", async () => {
    const source = memorySource("a", { bafy: new Uint8Array(10) });
    const s = await started([source]);
    const err = await s
      .get({
        cid: "bafy",
        sha256: sha256Of(new Uint8Array(10)),
        model: fakeBase,
        baseModelSha256: `0x${"cd".repeat(32)}`,
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterBaseMismatchError);
    expect((err as Error).message).toContain(`0x${"cd".repeat(32)}`);
    expect(source.opens).toBe(0);
  });

  it("stops a fetch when aborted and removes its temporary file", async () => {
    const source = stallingSource();
    const s = await started([source]);
    const controller = new AbortController();
    const reason = new Error("client went away");
    const pending = s.get({ cid: "bafy", sha256: sha256Of("x"), model: fakeBase }, { signal: controller.signal });
    await source.started;
    // The partial download is on disk while it runs...
    expect((await cacheFiles()).filter((n) => n.startsWith("tmp/"))).toHaveLength(1);
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    // ...and gone once aborted.
    expect(await cacheFiles()).toEqual([]);
  });

  it("aborts fetches under way on stop", async () => {
    const source = stallingSource();
    const s = await started([source]);
    const pending = s.get({ cid: "bafy", sha256: sha256Of("x"), model: fakeBase });
    await source.started;
    await s.stop();
    await expect(pending).rejects.toBeInstanceOf(EngineStoppedError);
    expect(await cacheFiles()).toEqual([]);
  });

  it("refuses an adapter larger than the whole cache, known up front or found while streaming", async () => {
    const big = new Uint8Array(3000);
    const s = await started([memorySource("a", { bafy: big })], 2000);
    const err = await s.get({ cid: "bafy", sha256: sha256Of(big), model: fakeBase }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterTooLargeError);
    expect(err).toMatchObject({ size: 3000, maxBytes: 2000 });

    // A source that does not tell the size is cut off as soon as it passes the limit.
    const unsized: AdapterSource = {
      name: "unsized",
      async open() {
        return (async function* () {
          for (;;) yield new Uint8Array(512);
        })();
      },
    };
    await s.stop();
    const s2 = await started([unsized], 2000);
    const err2 = await s2.get({ cid: "bafy", sha256: sha256Of(big), model: fakeBase }).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(AdapterTooLargeError);
    expect((err2 as AdapterTooLargeError).sizeKnown).toBe(false);
    expect(await cacheFiles()).toEqual([]);
  });
});

describe("readAdapterHeader", () => {
  it("refuses a file that is not GGUF", async () => {
    const path = join(dir, "junk.gguf");
    await writeFile(path, "not a gguf file, not at all, not even close to one");
    await expect(readAdapterHeader(path)).rejects.toBeInstanceOf(InvalidGgufError);
  });

  it("refuses registered bytes that are not GGUF when fetched: nothing is cached", async () => {
    const junk = Buffer.from("not a gguf file, not at all, not even close to one");
    const store = new AdapterStore({ dir: cacheDir, maxBytes: 1 << 20, sources: [memorySource("a", { bafy: junk })] });
    await store.start();
    const err = await store.get({ cid: "bafy", sha256: sha256Of(junk), model: fakeBase }).catch((e: unknown) => e);
    await store.stop();
    expect(err).toBeInstanceOf(InvalidGgufError);
    expect(await cacheFiles()).toEqual([]);
  });
});

describe("AdapterStore with real GGUF adapters", () => {
  let fx: TinyFixtures;
  let base: AdapterBase;
  let folder: string;
  const stores: AdapterStore[] = [];
  beforeAll(async () => {
    fx = await tinyFixtures();
    base = { ...(await readBaseModelInfo(fx.base.path)), sha256: fx.base.sha256 };
  });
  beforeEach(async () => {
    // Served by CID: the folder holds the adapters under made-up CIDs.
    folder = join(dir, "folder");
    await mkdir(folder, { recursive: true });
    for (const [i, adapter] of fx.adapters.entries()) await copyFile(adapter.path, join(folder, `bafyadapter${i}`));
    await copyFile(fx.otherBaseAdapter.path, join(folder, "bafyother.gguf"));
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.stop();
  });

  async function started(options: { maxBytes?: number; sources?: AdapterSource[] } = {}): Promise<AdapterStore> {
    const store = new AdapterStore({
      dir: cacheDir,
      maxBytes: options.maxBytes ?? 64 * 2 ** 20,
      sources: options.sources ?? [folderAdapterSource(folder)],
    });
    stores.push(store);
    await store.start();
    return store;
  }

  const request = (i: number): AdapterRequest => ({
    cid: `bafyadapter${i}`,
    sha256: fx.adapters[i]!.sha256,
    model: base,
  });

  it("fetches, verifies and caches an adapter under its hash, which llama.cpp then loads", async () => {
    const store = await started();
    const fetched: AdapterFetchedDetail[] = [];
    store.addEventListener("adapter:fetched", (e) => fetched.push(e.detail));
    const progress: number[] = [];
    const lease = await store.get(request(0), { onProgress: (done) => progress.push(done) });
    const { size } = await stat(fx.adapters[0]!.path);
    expect(lease).toMatchObject({ cid: "bafyadapter0", sha256: fx.adapters[0]!.sha256, size });
    expect(lease.path).toBe(join(cacheDir, `${fx.adapters[0]!.sha256.slice(2)}.gguf`));
    expect(await sha256File(lease.path)).toBe(fx.adapters[0]!.sha256);
    expect(progress.at(-1)).toBe(size);
    expect(fetched).toEqual([
      { cid: "bafyadapter0", sha256: fx.adapters[0]!.sha256, size, source: `folder:${folder}` },
    ]);
    expect(store.entries()).toEqual([{ sha256: fx.adapters[0]!.sha256, cid: "bafyadapter0", size, pins: 1 }]);
    lease.release();
    lease.release();
    expect(store.entries()[0]!.pins).toBe(0);

    // What our check accepts, llama.cpp accepts.
    const llama = await getLlama({ gpu: false, build: "never" });
    const model = await llama.loadModel({ modelPath: fx.base.path });
    const context = await model.createContext({
      threads: 1,
      contextSize: 128,
      lora: { adapters: [{ filePath: lease.path }] },
    });
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  });

  it("accepts the registered hash in upper case", async () => {
    const store = await started();
    const lease = await store.get({ ...request(0), sha256: fx.adapters[0]!.sha256.toUpperCase().replace("0X", "0x") });
    expect(lease.sha256).toBe(fx.adapters[0]!.sha256);
    lease.release();
  });

  it("refuses an adapter made for another base model, keeping its verified bytes cached", async () => {
    const store = await started();
    const err = await store
      .get({ cid: "bafyother", sha256: fx.otherBaseAdapter.sha256, model: base })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterBaseMismatchError);
    expect((err as Error).message).toContain("do not fit");
    // No lease was handed out: nothing holds it.
    expect(store.entries()).toMatchObject([{ sha256: fx.otherBaseAdapter.sha256, pins: 0 }]);
    // Asked again, the cached header answers the same.
    await expect(
      store.get({ cid: "bafyother", sha256: fx.otherBaseAdapter.sha256, model: base }),
    ).rejects.toBeInstanceOf(AdapterBaseMismatchError);

    // And llama.cpp agrees.
    const llama = await getLlama({ gpu: false, build: "never" });
    const model = await llama.loadModel({ modelPath: fx.base.path });
    await expect(
      model.createContext({
        threads: 1,
        contextSize: 128,
        lora: { adapters: [{ filePath: fx.otherBaseAdapter.path }] },
      }),
    ).rejects.toThrow();
    await model.dispose();
    await llama.dispose();
  });

  it("refuses an adapter whose architecture is another", async () => {
    const store = await started();
    const err = await store.get({ ...request(0), model: { ...base, architecture: "qwen2" } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterBaseMismatchError);
    expect((err as Error).message).toContain("qwen2");
  });

  it("refuses a base model given where an adapter is registered", async () => {
    await copyFile(fx.base.path, join(folder, "bafymodel"));
    const store = await started();
    const err = await store.get({ cid: "bafymodel", sha256: fx.base.sha256, model: base }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdapterBaseMismatchError);
    expect((err as Error).message).toContain("general.type");
  });

  it("skips a source serving wrong bytes when a later one serves the right ones", async () => {
    const stale = join(dir, "stale");
    await mkdir(stale);
    // The CID of adapter 0 holds adapter 1's bytes here.
    await copyFile(fx.adapters[1]!.path, join(stale, "bafyadapter0"));
    const store = await started({ sources: [folderAdapterSource(stale), folderAdapterSource(folder)] });
    const fetched: string[] = [];
    store.addEventListener("adapter:fetched", (e) => fetched.push(e.detail.source));
    const lease = await store.get(request(0));
    expect(await sha256File(lease.path)).toBe(fx.adapters[0]!.sha256);
    expect(fetched).toEqual([`folder:${folder}`]);
    lease.release();
  });

  it("refuses wrong bytes from every source: nothing enters the cache", async () => {
    const stale = join(dir, "stale");
    await mkdir(stale);
    await copyFile(fx.adapters[1]!.path, join(stale, "bafyadapter0"));
    const store = await started({ sources: [folderAdapterSource(stale)] });
    const err = await store.get(request(0)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HashMismatchError);
    expect(err).toMatchObject({ expected: fx.adapters[0]!.sha256, actual: fx.adapters[1]!.sha256 });
    expect(await cacheFiles()).toEqual([]);
    expect(store.entries()).toEqual([]);
  });

  it("downloads once for concurrent gets, and leases each caller", async () => {
    const source = memorySource("memory", { bafyadapter0: await readFile(fx.adapters[0]!.path) });
    const store = await started({ sources: [source] });
    const fetched = vi.fn();
    store.addEventListener("adapter:fetched", fetched);
    const leases = await Promise.all([store.get(request(0)), store.get(request(0)), store.get(request(0))]);
    expect(source.opens).toBe(1);
    expect(fetched).toHaveBeenCalledTimes(1);
    expect(new Set(leases.map((l) => l.path)).size).toBe(1);
    expect(store.entries()[0]!.pins).toBe(3);
    for (const lease of leases) lease.release();
    expect(store.entries()[0]!.pins).toBe(0);
  });

  it("keeps a shared download going when one of its callers aborts", async () => {
    const bytes = await readFile(fx.adapters[0]!.path);
    // Serves the first half, then waits for the test to let it go on.
    let firstHalfServed!: () => void;
    const servedHalf = new Promise<void>((r) => (firstHalfServed = r));
    let goOn!: () => void;
    const gate = new Promise<void>((r) => (goOn = r));
    let opens = 0;
    const gated: AdapterSource = {
      name: "gated",
      async open() {
        opens += 1;
        return (async function* () {
          yield bytes.subarray(0, bytes.length >> 1);
          firstHalfServed();
          await gate;
          yield bytes.subarray(bytes.length >> 1);
        })();
      },
    };
    const store = await started({ sources: [gated] });
    const controller = new AbortController();
    const leaving = store.get(request(0), { signal: controller.signal });
    const staying = store.get(request(0));
    await servedHalf;
    controller.abort(new Error("left"));
    await expect(leaving).rejects.toThrow("left");
    goOn();
    const lease = await staying;
    expect(opens).toBe(1);
    expect(await sha256File(lease.path)).toBe(fx.adapters[0]!.sha256);
    // Only the caller that stayed holds a pin.
    expect(store.entries()[0]!.pins).toBe(1);
    lease.release();
  });

  it("serves a cached adapter without any source, also after a restart", async () => {
    const first = await started();
    (await first.get(request(0))).release();
    await first.stop();

    const source = memorySource("memory", {});
    const second = await started({ sources: [source] });
    expect(second.has(fx.adapters[0]!.sha256)).toBe(true);
    const lease = await second.get(request(0));
    expect(source.opens).toBe(0);
    expect(await sha256File(lease.path)).toBe(fx.adapters[0]!.sha256);
    lease.release();
  });

  it("fetches again when a cached file was changed behind its back", async () => {
    const source = memorySource("memory", { bafyadapter0: await readFile(fx.adapters[0]!.path) });
    const store = await started({ sources: [source] });
    const lease = await store.get(request(0));
    lease.release();
    await chmod(lease.path, 0o644);
    await writeFile(lease.path, "tampered");
    const again = await store.get(request(0));
    expect(source.opens).toBe(2);
    expect(await sha256File(again.path)).toBe(fx.adapters[0]!.sha256);
    again.release();
  });

  it("on start, adopts cached files whose bytes match their name and deletes the rest", async () => {
    const first = await started();
    (await first.get(request(0))).release();
    (await first.get(request(1))).release();
    await first.stop();
    // A lost index, a file with a lying name, a partial download left by a crash.
    await rm(join(cacheDir, "index.json"));
    const liar = join(cacheDir, `${fx.adapters[2]!.sha256.slice(2)}.gguf`);
    await copyFile(fx.adapters[0]!.path, liar);
    await writeFile(join(cacheDir, "tmp", "abc.part"), "partial");

    const second = await started({ sources: [] });
    expect(second.has(fx.adapters[0]!.sha256)).toBe(true);
    expect(second.has(fx.adapters[1]!.sha256)).toBe(true);
    expect(second.has(fx.adapters[2]!.sha256)).toBe(false);
    expect(await cacheFiles()).toEqual(
      [fx.adapters[0]!.sha256, fx.adapters[1]!.sha256].map((h) => `${h.slice(2)}.gguf`).sort(),
    );
  });

  describe("eviction", () => {
    let size: number;
    beforeAll(async () => {
      size = (await stat(fx.adapters[0]!.path)).size;
      // The eviction tests count in adapters: all three must be the same size.
      for (const a of fx.adapters) expect((await stat(a.path)).size).toBe(size);
    });

    it("deletes the least recently used adapters once over the limit", async () => {
      const store = await started({ maxBytes: 2 * size + 100 });
      const evicted: AdapterEvictedDetail[] = [];
      store.addEventListener("adapter:evicted", (e) => evicted.push(e.detail));
      (await store.get(request(0))).release();
      (await store.get(request(1))).release();
      // Used again: adapter 1 is now the least recently used.
      (await store.get(request(0))).release();
      (await store.get(request(2))).release();
      expect(evicted).toEqual([{ cid: "bafyadapter1", sha256: fx.adapters[1]!.sha256, size }]);
      expect(store.entries().map((e) => e.sha256)).toEqual([fx.adapters[0]!.sha256, fx.adapters[2]!.sha256]);
      expect(store.usedBytes).toBeLessThanOrEqual(2 * size + 100);
      expect(await cacheFiles()).toHaveLength(2);
    });

    it("keeps the order across a restart", async () => {
      const first = await started({ maxBytes: 3 * size });
      (await first.get(request(0))).release();
      (await first.get(request(1))).release();
      (await first.get(request(2))).release();
      (await first.get(request(0))).release();
      await first.stop();
      // A smaller cache on the next start trims it to size, oldest first.
      const second = await started({ maxBytes: size + 100, sources: [] });
      expect(second.entries().map((e) => e.sha256)).toEqual([fx.adapters[0]!.sha256]);
    });

    it("never deletes a leased adapter, and catches up once it is released", async () => {
      const store = await started({ maxBytes: 2 * size + 100 });
      const evicted: string[] = [];
      store.addEventListener("adapter:evicted", (e) => evicted.push(e.detail.sha256));
      const a = await store.get(request(0));
      (await store.get(request(1))).release();
      // Adapter 0 is the least recently used, but leased: adapter 1 goes instead.
      const c = await store.get(request(2));
      expect(evicted).toEqual([fx.adapters[1]!.sha256]);
      expect(await sha256File(a.path)).toBe(fx.adapters[0]!.sha256);

      // Everything leased: the cache goes over its limit rather than delete a file in use...
      const b = await store.get(request(1));
      expect(store.usedBytes).toBe(3 * size);
      expect(evicted).toHaveLength(1);
      // ...and trims itself when a lease is released.
      a.release();
      await vi.waitFor(() => expect(evicted).toEqual([fx.adapters[1]!.sha256, fx.adapters[0]!.sha256]));
      expect(store.usedBytes).toBe(2 * size);
      b.release();
      c.release();
    });
  });
});
