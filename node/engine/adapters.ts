import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import type { Stats } from "node:fs";
import { chmod, mkdir, open, readFile, readdir, rename, rm, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import {
  AdapterBaseMismatchError,
  AdapterNotFoundError,
  AdapterTooLargeError,
  EngineStoppedError,
  HashMismatchError,
  InvalidGgufError,
} from "./errors.js";
import { SharedWork, normalizeSha256, sha256File, writeFileAtomic } from "./file-hash.js";
import type { SharedTask } from "./file-hash.js";
import { ggufMetadataValue, readGgufHeader, tensorShapes } from "./models.js";
import type { BaseModelInfo } from "./models.js";
import { TypedEventTarget } from "../../sdk/events.js";

/** The bytes of an adapter as a source serves them; `size` when the source knows it up front (for progress). */
export type AdapterStream = AsyncIterable<Uint8Array> & { readonly size?: number };

/**
 * Somewhere adapters can be fetched from by CID: a local folder today, IPFS (the vault's Helia node) later.
 * Bytes from a source are never trusted: the store hashes them against the registered SHA-256.
 */
export interface AdapterSource {
  /** For logs and events, e.g. "folder:/var/lib/soulmesh/adapters" or "ipfs". */
  readonly name: string;
  /** The adapter's bytes, or undefined when this source does not have it. */
  open(cid: string, options?: { signal?: AbortSignal }): Promise<AdapterStream | undefined>;
}

// A CID is one path segment of letters and digits; anything else (a slash, "..") never names a file here.
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * A source serving `<dir>/<cid>` or `<dir>/<cid>.gguf`, for nodes without IPFS and for tests.
 *
 * @example
 * const store = new AdapterStore({ dir, maxBytes: 4 * 2 ** 30, sources: [folderAdapterSource("/srv/adapters")] })
 */
export function folderAdapterSource(dir: string): AdapterSource {
  return {
    name: `folder:${dir}`,
    async open(cid: string, options: { signal?: AbortSignal } = {}): Promise<AdapterStream | undefined> {
      options.signal?.throwIfAborted();
      if (!SAFE_NAME.test(cid)) return undefined;
      for (const path of [join(dir, cid), join(dir, `${cid}.gguf`)]) {
        let size: number;
        try {
          const stats = await stat(path);
          if (!stats.isFile()) continue;
          size = stats.size;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") {
            continue;
          }
          throw err;
        }
        // Opened only when read, so that a stream nobody reads holds no file descriptor.
        return {
          size,
          [Symbol.asyncIterator]: () =>
            createReadStream(path, { signal: options.signal, highWaterMark: 2 ** 20 })[Symbol.asyncIterator](),
        };
      }
      return undefined;
    },
  };
}

/** What the compatibility check reads from an adapter's GGUF header. */
export interface AdapterHeader {
  /** `general.type`: "adapter" for a LoRA. */
  readonly generalType: string | undefined;
  /** `adapter.type`: "lora". */
  readonly adapterType: string | undefined;
  /** `general.architecture`, e.g. "llama". */
  readonly architecture: string | undefined;
  /** Every tensor's dimensions in ggml `ne` order. */
  readonly tensorShapes: ReadonlyMap<string, readonly number[]>;
}

/**
 * Reads what the compatibility check needs from an adapter file (its header only).
 *
 * @example
 * const header = await readAdapterHeader(lease.path)
 * @throws InvalidGgufError when the file is not GGUF.
 */
export async function readAdapterHeader(path: string, options: { signal?: AbortSignal } = {}): Promise<AdapterHeader> {
  const info = await readGgufHeader(path, { signal: options.signal, spliceSplitFiles: false });
  const text = (key: string): string | undefined => {
    const value = ggufMetadataValue(info, key);
    return typeof value === "string" ? value : undefined;
  };
  return {
    generalType: text("general.type"),
    adapterType: text("adapter.type"),
    architecture: text("general.architecture"),
    tensorShapes: tensorShapes(info),
  };
}

function showShape(shape: readonly number[] | undefined): string {
  return shape === undefined ? "none" : `[${shape.join(", ")}]`;
}

// ggml pads every tensor to 4 dimensions with 1s; a file may store fewer.
function ne(shape: readonly number[], i: number): number {
  return shape[i] ?? 1;
}

function isMatrix(shape: readonly number[]): boolean {
  return shape.slice(2).every((d) => d === 1);
}

/**
 * Why llama.cpp would refuse (or misapply) this LoRA on this base model, or undefined when it fits. The rules are
 * those of llama.cpp's `llama_adapter_lora_init`: general.type "adapter", adapter.type "lora", the same
 * architecture, every tensor a `.lora_a`/`.lora_b` pair (norm vectors ignored) of a base tensor X, with
 * lora_a = [n_in, rank] and lora_b = [rank, n_out] for X = [n_in, n_out] (ggml `ne` order); for token_embd
 * [n_embd, n_vocab], lora_a = [rank, n_vocab] and lora_b = [rank, n_embd].
 *
 * @example
 * adapterMismatch(header, base) // "it adapts blk.9.attn_q.weight, which the base model does not have"
 */
export function adapterMismatch(adapter: AdapterHeader, base: BaseModelInfo): string | undefined {
  if (adapter.generalType !== "adapter") {
    return `its general.type is ${JSON.stringify(adapter.generalType ?? null)}, not "adapter": it is no adapter`;
  }
  if (adapter.adapterType !== "lora") {
    return `its adapter.type is ${JSON.stringify(adapter.adapterType ?? null)}, not "lora"`;
  }
  if (adapter.architecture !== base.architecture) {
    return `it is for the ${JSON.stringify(
      adapter.architecture ?? null,
    )} architecture, the base model is ${JSON.stringify(base.architecture)}`;
  }

  const pairs = new Map<string, { a?: readonly number[]; b?: readonly number[] }>();
  for (const [name, shape] of adapter.tensorShapes) {
    const suffix = name.endsWith(".lora_a") ? "a" : name.endsWith(".lora_b") ? "b" : undefined;
    if (suffix === undefined) {
      // llama.cpp skips norm vectors for now and refuses anything else.
      if (name.endsWith("_norm.weight")) continue;
      return `its tensor ${name} is neither a .lora_a nor a .lora_b tensor`;
    }
    const target = name.slice(0, -".lora_a".length);
    const pair = pairs.get(target) ?? {};
    pair[suffix] = shape;
    pairs.set(target, pair);
  }

  for (const [target, { a, b }] of pairs) {
    if (a === undefined || b === undefined)
      return `${target} has a lora_${a === undefined ? "b" : "a"} but no lora_${a === undefined ? "a" : "b"}`;
    const x = base.tensorShapes.get(target);
    if (x === undefined) return `it adapts ${target}, which the base model does not have`;
    if (!isMatrix(a) || !isMatrix(b))
      return `${target}'s lora_a ${showShape(a)} or lora_b ${showShape(b)} is not a matrix`;
    const fits = target.endsWith("token_embd.weight")
      ? // The embedding is a lookup: llama.cpp takes rows of lora_a [rank, n_vocab], then multiplies by
        // lora_b [rank, n_embd]. It checks no rank there and would hit a ggml assertion (a crash) later: we do.
        ne(x, 0) === ne(b, 1) && ne(x, 1) === ne(a, 1) && ne(a, 0) === ne(b, 0)
      : ne(x, 0) === ne(a, 0) && ne(x, 1) === ne(b, 1) && ne(a, 1) === ne(b, 0);
    if (!fits) {
      return `${target} is ${showShape(x)} in the base model, which lora_a ${showShape(a)} and lora_b ${showShape(
        b,
      )} do not fit`;
    }
  }
  return undefined;
}

/**
 * Refuses an adapter that does not fit a base model (see {@link adapterMismatch}).
 *
 * @example
 * checkAdapterCompatibility(cid, await readAdapterHeader(path), loadedModel)
 * @throws AdapterBaseMismatchError naming the first reason found.
 */
export function checkAdapterCompatibility(cid: string, adapter: AdapterHeader, base: BaseModelInfo): void {
  const reason = adapterMismatch(adapter, base);
  if (reason !== undefined) throw new AdapterBaseMismatchError(cid, reason);
}

/** The base model an adapter is asked for: a {@link LoadedModel} fits. */
export interface AdapterBase extends BaseModelInfo {
  /** "0x" + 64 hex digits. */
  readonly sha256: string;
}

/** One adapter wanted for a session. */
export interface AdapterRequest {
  cid: string;
  /** The adapter's SHA-256 as registered with the persona. */
  sha256: string;
  /** The model it will be applied to. */
  model: AdapterBase;
  /** The persona's registered base model hash, when known: refused before any fetch when it is not `model`'s. */
  baseModelSha256?: string;
}

/** Options of {@link AdapterStore.get}. */
export interface GetAdapterOptions {
  signal?: AbortSignal;
  /** Bytes fetched so far, and the total when the source knows it. Only a caller that starts the fetch sees it. */
  onProgress?: (done: number, total: number | undefined) => void;
}

/**
 * A verified adapter file held in the cache: it is not evicted until released. Release it when the last context
 * using it is gone.
 */
export interface AdapterLease {
  readonly cid: string;
  readonly sha256: string;
  /** The verified local file, to give llama.cpp. */
  readonly path: string;
  readonly size: number;
  /** Idempotent. */
  release(): void;
}

/** A cached adapter, as {@link AdapterStore.entries} lists it. */
export interface AdapterCacheEntry {
  readonly sha256: string;
  /** Unknown for a file adopted on start without an index entry. */
  readonly cid: string | undefined;
  readonly size: number;
  /** Leases held on it now. */
  readonly pins: number;
}

export interface AdapterFetchedDetail {
  cid: string;
  sha256: string;
  size: number;
  /** The name of the source that served it. */
  source: string;
}

export interface AdapterEvictedDetail {
  cid: string | undefined;
  sha256: string;
  size: number;
}

/** Events of an {@link AdapterStore}. */
export interface AdapterStoreEvents {
  "adapter:fetched": CustomEvent<AdapterFetchedDetail>;
  "adapter:evicted": CustomEvent<AdapterEvictedDetail>;
}

/** Options of {@link AdapterStore}. */
export interface AdapterStoreOptions {
  /** The cache folder: one store per folder. */
  dir: string;
  /** The cache's size limit; least recently used adapters not in use are deleted above it. */
  maxBytes: number;
  /** Tried in order; the first that has the adapter serves it. */
  sources: readonly AdapterSource[];
}

interface Entry {
  sha256: string;
  cid: string | undefined;
  size: number;
  mtimeMs: number;
  ino: number;
  /** A counter, not a clock: two uses in one millisecond still have an order. */
  lastUsed: number;
  pins: number;
}

interface IndexFile {
  format: "soulmesh-adapter-index/1";
  entries: Array<Omit<Entry, "pins">>;
}

const INDEX_FORMAT = "soulmesh-adapter-index/1";
const CACHED_FILE = /^([0-9a-f]{64})\.gguf$/;

function isIndexEntry(value: unknown): value is Omit<Entry, "pins"> {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.sha256 === "string" &&
    /^0x[0-9a-f]{64}$/.test(v.sha256) &&
    (v.cid === undefined || (typeof v.cid === "string" && v.cid.length > 0)) &&
    typeof v.size === "number" &&
    typeof v.mtimeMs === "number" &&
    typeof v.ino === "number" &&
    typeof v.lastUsed === "number"
  );
}

/**
 * The provider's cache of persona LoRA adapters. `get()` fetches an adapter from the first source that has it,
 * hashing the bytes as they arrive; bytes whose SHA-256 is not the registered one never enter the cache. The
 * cache is bounded by `maxBytes` (least recently used first out) and never deletes an adapter under a lease.
 *
 * When a source serves bytes with the wrong hash, the next source is tried: a stale file in a folder must not
 * hide the right bytes on IPFS. HashMismatchError is thrown only when no source served the right bytes and at
 * least one served wrong ones.
 *
 * @example
 * const sources = [folderAdapterSource("/srv/adapters")]
 * const adapters = new AdapterStore({ dir: join(home, "adapters"), maxBytes: 2 ** 32, sources })
 * await adapters.start()
 * const lease = await adapters.get({ cid, sha256, model: base }, { signal })
 * const lora = lease.path // give it to the context; lease.release() when the context is disposed
 */
export class AdapterStore extends TypedEventTarget<AdapterStoreEvents> {
  readonly dir: string;
  readonly maxBytes: number;
  readonly sources: readonly AdapterSource[];
  #started = false;
  #starting: Promise<void> | undefined;
  readonly #entries = new Map<string, Entry>();
  // Headers read once per file: the check of a cached adapter then costs no I/O.
  readonly #headers = new Map<string, AdapterHeader>();
  readonly #fetches = new SharedWork<string, Entry>();
  // A file being deleted: a new download of the same adapter waits before renaming onto its path.
  readonly #deleting = new Map<string, Promise<void>>();
  #useCounter = 0;
  #saving: Promise<void> = Promise.resolve();

  constructor(options: AdapterStoreOptions) {
    super();
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes <= 0) {
      throw new RangeError(`maxBytes must be a positive integer, not ${options.maxBytes}`);
    }
    this.dir = options.dir;
    this.maxBytes = options.maxBytes;
    this.sources = [...options.sources];
  }

  /** Whether {@link start} has run and {@link stop} has not. */
  get started(): boolean {
    return this.#started;
  }

  /** The bytes of all cached adapters. */
  get usedBytes(): number {
    let total = 0;
    for (const entry of this.#entries.values()) total += entry.size;
    return total;
  }

  /**
   * Opens the cache: reads the index, drops what a crash left half done, adopts or deletes files the index does
   * not know (by re-hashing them: a file is named by its SHA-256), and trims the cache to `maxBytes`.
   *
   * @example
   * await adapters.start()
   */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#started) return;
    this.#starting ??= this.#start(options).finally(() => (this.#starting = undefined));
    await this.#starting;
  }

  async #start(options: { signal?: AbortSignal }): Promise<void> {
    await mkdir(this.#tmpDir(), { recursive: true });
    // Partial downloads of a previous run: nothing resumes them.
    for (const name of await readdir(this.#tmpDir())) await rm(join(this.#tmpDir(), name), { force: true });

    const indexed = await this.#readIndex();
    const files = new Set<string>();
    for (const name of await readdir(this.dir)) {
      const match = CACHED_FILE.exec(name);
      if (match !== null) files.add(`0x${match[1]}`);
    }
    this.#entries.clear();
    this.#headers.clear();
    let changed = false;
    for (const sha256 of new Set([...files, ...indexed.keys()])) {
      options.signal?.throwIfAborted();
      const known = indexed.get(sha256);
      const entry = files.has(sha256) ? await this.#reconcile(sha256, known, options.signal) : undefined;
      if (entry !== undefined) this.#entries.set(sha256, entry);
      if (entry !== known) changed = true;
    }
    this.#useCounter = Math.max(0, ...[...this.#entries.values()].map((e) => e.lastUsed));
    this.#started = true;
    const evicted = await this.#evictToBudget();
    if (changed || evicted > 0) await this.#save();
  }

  /**
   * Closes the cache: aborts downloads under way (their callers get EngineStoppedError) and waits for the
   * index to be written. Leases stay valid: files are only deleted by eviction, which needs a started store.
   *
   * @example
   * await adapters.stop()
   */
  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    await this.#fetches.abortAll(new EngineStoppedError());
    await Promise.allSettled(this.#deleting.values());
    await this.#saving;
  }

  /** Whether the adapter with this SHA-256 is in the cache (not whether it fits a model). */
  has(sha256: string): boolean {
    return this.#entries.has(normalizeSha256(sha256, "adapter"));
  }

  /** The cached adapters, least recently used first. */
  entries(): AdapterCacheEntry[] {
    return [...this.#entries.values()]
      .sort((x, y) => x.lastUsed - y.lastUsed)
      .map(({ sha256, cid, size, pins }) => ({ sha256, cid, size, pins }));
  }

  /**
   * The verified local file of an adapter, fetched into the cache if needed, checked against the model it will
   * be applied to, and leased so that it is not evicted while in use. Concurrent calls for the same adapter share
   * one download.
   *
   * @example
   * const { adapterCid: cid, adapterSha256: sha256 } = persona
   * const lease = await adapters.get({ cid, sha256, model: base }, { signal })
   * try { await useAdapter(lease.path) } finally { lease.release() }
   * @throws AdapterBaseMismatchError (another base model), HashMismatchError (sources served other bytes),
   * AdapterNotFoundError (no source has it), AdapterTooLargeError (larger than the whole cache), InvalidGgufError
   * (the registered bytes are not GGUF), InvalidHashError, EngineStoppedError; the signal's reason when aborted.
   */
  async get(request: AdapterRequest, options: GetAdapterOptions = {}): Promise<AdapterLease> {
    const { signal } = options;
    if (!this.#started) throw new EngineStoppedError();
    const { cid, model } = request;
    const sha256 = normalizeSha256(request.sha256, "adapter");
    if (request.baseModelSha256 !== undefined) {
      const wanted = normalizeSha256(request.baseModelSha256, "base model");
      const served = normalizeSha256(model.sha256, "base model");
      if (wanted !== served) {
        throw new AdapterBaseMismatchError(cid, `the persona names base model ${wanted}, this model is ${served}`);
      }
    }
    signal?.throwIfAborted();

    let entry = await this.#cached(sha256);
    if (entry === undefined) {
      entry = await this.#fetches.run(sha256, (task) => this.#fetch(cid, sha256, task, options.onProgress), { signal });
    }
    // From here `entry` holds one pin for this call: every way out below either returns it in a lease or drops it.
    try {
      signal?.throwIfAborted();
      const header = await this.#header(entry, signal);
      checkAdapterCompatibility(cid, header, model);
    } catch (err) {
      this.#unpin(entry);
      throw err;
    }
    entry.lastUsed = ++this.#useCounter;
    this.#save().catch(() => undefined);
    return this.#lease(entry, cid);
  }

  /** A pinned cached entry whose file is still the one written, or undefined (a damaged file is dropped). */
  async #cached(sha256: string): Promise<Entry | undefined> {
    const entry = this.#entries.get(sha256);
    if (entry === undefined) return undefined;
    // Pinned before the stat so that eviction cannot delete it while we look.
    entry.pins += 1;
    try {
      const stats = await stat(this.#path(sha256));
      if (stats.isFile() && stats.size === entry.size && stats.mtimeMs === entry.mtimeMs && stats.ino === entry.ino) {
        return entry;
      }
    } catch {
      // missing: dropped below
    }
    entry.pins -= 1;
    // Someone changed or removed the file behind our back: its bytes are no longer known good.
    if (this.#entries.get(sha256) === entry) {
      this.#entries.delete(sha256);
      this.#headers.delete(sha256);
      await this.#delete(sha256);
      await this.#save();
    }
    return undefined;
  }

  async #fetch(
    cid: string,
    sha256: string,
    task: SharedTask,
    onProgress: GetAdapterOptions["onProgress"],
  ): Promise<Entry> {
    const { signal } = task;
    const mismatches: HashMismatchError[] = [];
    const failures: unknown[] = [];
    let tooLarge: AdapterTooLargeError | undefined;
    for (const source of this.sources) {
      signal.throwIfAborted();
      let stream: AdapterStream | undefined;
      try {
        stream = await source.open(cid, { signal });
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        failures.push(err);
        continue;
      }
      if (stream === undefined) continue;
      if (stream.size !== undefined && stream.size > this.maxBytes) {
        tooLarge = new AdapterTooLargeError(cid, stream.size, this.maxBytes);
        continue;
      }

      const tmp = join(this.#tmpDir(), `${sha256.slice(2)}.${randomBytes(6).toString("hex")}.part`);
      let actual: string;
      let header: AdapterHeader;
      try {
        actual = await this.#download(stream, tmp, cid, signal, onProgress);
        if (actual === sha256) header = await readAdapterHeader(tmp, { signal });
      } catch (err) {
        await rm(tmp, { force: true });
        if (signal.aborted) throw signal.reason;
        if (err instanceof AdapterTooLargeError) tooLarge = err;
        // The registered bytes themselves are no GGUF: every source serves the same, so stop here.
        else if (err instanceof InvalidGgufError) throw new InvalidGgufError(`adapter ${cid}`, err.reason);
        else failures.push(err);
        continue;
      }
      if (actual !== sha256) {
        await rm(tmp, { force: true });
        mismatches.push(new HashMismatchError("adapter", cid, sha256, actual));
        continue;
      }
      return await this.#admit(cid, sha256, tmp, header!, source.name, task);
    }
    if (tooLarge !== undefined) throw tooLarge;
    if (mismatches[0] !== undefined) throw mismatches[0];
    throw new AdapterNotFoundError(
      cid,
      failures.length > 0 ? { cause: failures.length === 1 ? failures[0] : new AggregateError(failures) } : undefined,
    );
  }

  /** Streams a source into `tmp`, hashing as it goes; returns the SHA-256 of what was written. */
  async #download(
    stream: AdapterStream,
    tmp: string,
    cid: string,
    signal: AbortSignal,
    onProgress: GetAdapterOptions["onProgress"],
  ): Promise<string> {
    const hash = createHash("sha256");
    const handle = await open(tmp, "wx", 0o600);
    const iterator = stream[Symbol.asyncIterator]();
    // Every read races the signal: a source that stalls and ignores it still cannot hold an aborted fetch.
    let onAbort = (): void => undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason as Error);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    aborted.catch(() => undefined);
    let finished = false;
    try {
      signal.throwIfAborted();
      let done = 0;
      for (;;) {
        const step = iterator.next();
        step.catch(() => undefined);
        const next = await Promise.race([step, aborted]);
        if (next.done === true) break;
        const chunk = next.value;
        done += chunk.byteLength;
        // Stopped at once: a lying or endless source must not fill the disk.
        if (done > this.maxBytes) throw new AdapterTooLargeError(cid, done, this.maxBytes, false);
        hash.update(chunk);
        let written = 0;
        while (written < chunk.byteLength) {
          written += (await handle.write(chunk, written, chunk.byteLength - written)).bytesWritten;
        }
        onProgress?.(done, stream.size);
      }
      finished = true;
      signal.throwIfAborted();
      // On disk before the rename makes it part of the cache: a crash must not leave a short file named by a hash.
      await handle.sync();
    } finally {
      signal.removeEventListener("abort", onAbort);
      // Lets the source close its side (file, connection) when we stop reading early.
      if (!finished) iterator.return?.().catch(() => undefined);
      await handle.close();
    }
    return `0x${hash.digest("hex")}`;
  }

  /** Moves a verified download into the cache and hands one pin to each caller waiting for it. */
  async #admit(
    cid: string,
    sha256: string,
    tmp: string,
    header: AdapterHeader,
    source: string,
    task: SharedTask,
  ): Promise<Entry> {
    const path = this.#path(sha256);
    await this.#deleting.get(sha256);
    let stats: Stats;
    try {
      // Read-only: nothing of ours ever writes to a cached adapter.
      await chmod(tmp, 0o444);
      await rename(tmp, path);
      stats = await stat(path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    const entry: Entry = {
      sha256,
      cid,
      size: stats.size,
      mtimeMs: stats.mtimeMs,
      ino: stats.ino,
      lastUsed: ++this.#useCounter,
      // This download's own pin, until the callers have theirs: nothing may evict it in between.
      pins: 1,
    };
    this.#entries.set(sha256, entry);
    this.#headers.set(sha256, header);
    this.dispatchEvent(new CustomEvent("adapter:fetched", { detail: { cid, sha256, size: entry.size, source } }));
    try {
      await this.#evictToBudget();
      await this.#save();
    } catch {
      // Bookkeeping only: the adapter is verified and in place, and start() reconciles the index with the files.
    }
    entry.pins += task.claim() - 1;
    return entry;
  }

  async #header(entry: Entry, signal: AbortSignal | undefined): Promise<AdapterHeader> {
    let header = this.#headers.get(entry.sha256);
    if (header === undefined) {
      header = await readAdapterHeader(this.#path(entry.sha256), { signal });
      this.#headers.set(entry.sha256, header);
    }
    return header;
  }

  #lease(entry: Entry, cid: string): AdapterLease {
    let released = false;
    return {
      cid,
      sha256: entry.sha256,
      path: this.#path(entry.sha256),
      size: entry.size,
      release: () => {
        if (released) return;
        released = true;
        this.#unpin(entry);
      },
    };
  }

  #unpin(entry: Entry): void {
    entry.pins = Math.max(0, entry.pins - 1);
    // The cache may have gone over its limit while everything was pinned.
    if (entry.pins === 0 && this.#started && this.usedBytes > this.maxBytes) {
      this.#evictToBudget()
        .then((evicted) => (evicted > 0 ? this.#save() : undefined))
        .catch(() => undefined);
    }
  }

  /**
   * Deletes least recently used unpinned adapters until the cache fits `maxBytes`; returns how many. When all
   * that is left is pinned the cache stays over its limit until a lease is released.
   */
  async #evictToBudget(): Promise<number> {
    let used = this.usedBytes;
    if (used <= this.maxBytes) return 0;
    // Chosen synchronously, so that no pin can be taken between the choice and the removal from the index.
    const victims: Entry[] = [];
    for (const entry of [...this.#entries.values()].sort((x, y) => x.lastUsed - y.lastUsed)) {
      if (used <= this.maxBytes) break;
      if (entry.pins > 0) continue;
      victims.push(entry);
      used -= entry.size;
      this.#entries.delete(entry.sha256);
      this.#headers.delete(entry.sha256);
    }
    for (const entry of victims) {
      this.dispatchEvent(
        new CustomEvent("adapter:evicted", { detail: { cid: entry.cid, sha256: entry.sha256, size: entry.size } }),
      );
    }
    await Promise.all(victims.map((entry) => this.#delete(entry.sha256)));
    return victims.length;
  }

  #delete(sha256: string): Promise<void> {
    const deleting = unlink(this.#path(sha256))
      .catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      })
      .finally(() => {
        if (this.#deleting.get(sha256) === deleting) this.#deleting.delete(sha256);
      });
    this.#deleting.set(sha256, deleting);
    return deleting;
  }

  /** The entry for a file found on start, re-hashing it when the index does not vouch for it. */
  async #reconcile(sha256: string, known: Entry | undefined, signal?: AbortSignal): Promise<Entry | undefined> {
    const path = this.#path(sha256);
    let stats: Stats;
    try {
      stats = await stat(path);
    } catch {
      return undefined;
    }
    if (
      known !== undefined &&
      stats.isFile() &&
      stats.size === known.size &&
      stats.mtimeMs === known.mtimeMs &&
      stats.ino === known.ino
    ) {
      return known;
    }
    // Unknown or changed: a crash between rename and index write, or a hand-copied file. Keep it only if its
    // bytes are what its name says.
    const actual = stats.isFile() ? await sha256File(path, { signal }).catch(() => undefined) : undefined;
    if (actual !== sha256) {
      await rm(path, { force: true, recursive: true });
      return undefined;
    }
    return {
      sha256,
      cid: known?.cid,
      size: stats.size,
      mtimeMs: stats.mtimeMs,
      ino: stats.ino,
      lastUsed: known?.lastUsed ?? 0,
      pins: 0,
    };
  }

  async #readIndex(): Promise<Map<string, Entry>> {
    const entries = new Map<string, Entry>();
    let text: string;
    try {
      text = await readFile(this.#indexPath(), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return entries;
      throw err;
    }
    // A damaged index costs a re-hash of the cached files on start, nothing more.
    try {
      const doc = JSON.parse(text) as Partial<IndexFile>;
      if (doc.format === INDEX_FORMAT && Array.isArray(doc.entries)) {
        for (const e of doc.entries) {
          if (isIndexEntry(e)) entries.set(e.sha256, { ...e, pins: 0 });
        }
      }
    } catch {
      // fall through with an empty index
    }
    return entries;
  }

  #save(): Promise<void> {
    // Chained: two renames never race, and the last state wins.
    const next = this.#saving.then(async () => {
      const doc: IndexFile = {
        format: INDEX_FORMAT,
        entries: [...this.#entries.values()].map(({ sha256, cid, size, mtimeMs, ino, lastUsed }) => ({
          sha256,
          cid,
          size,
          mtimeMs,
          ino,
          lastUsed,
        })),
      };
      await writeFileAtomic(this.#indexPath(), `${JSON.stringify(doc, null, 2)}\n`);
    });
    this.#saving = next.catch(() => undefined);
    return next;
  }

  #path(sha256: string): string {
    return join(this.dir, `${sha256.slice(2)}.gguf`);
  }

  #tmpDir(): string {
    return join(this.dir, "tmp");
  }

  #indexPath(): string {
    return join(this.dir, "index.json");
  }
}
