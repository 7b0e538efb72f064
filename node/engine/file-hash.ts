import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readFile, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import type { Stats } from "node:fs";
import { dirname } from "node:path";
import { InvalidHashError } from "./errors.js";

/** Called as bytes are read: `done` bytes of `total`. */
export type HashProgress = (done: number, total: number) => void;

/** Options of {@link sha256File} and {@link FileHashCache.sha256}. */
export interface HashFileOptions {
  signal?: AbortSignal;
  onProgress?: HashProgress;
}

// Large reads keep the per-chunk overhead (and progress callbacks) low on multi-GB models.
const CHUNK_BYTES = 4 * 2 ** 20;

const SHA256_PATTERN = /^0x[0-9a-f]{64}$/;

/**
 * Checks a SHA-256 written as "0x" + 64 hex digits and returns it in lower case, the form used
 * everywhere in Soulmesh (it matches an on-chain bytes32 as ethers prints it).
 *
 * @example
 * normalizeSha256("0xAB…", "adapter") // "0xab…"
 * @throws InvalidHashError when it is anything else (which also keeps it safe to use as a file name).
 */
export function normalizeSha256(value: string, what: string): string {
  const lower = typeof value === "string" ? value.toLowerCase() : "";
  if (!SHA256_PATTERN.test(lower)) throw new InvalidHashError(String(value), what);
  return lower;
}

/**
 * The SHA-256 of a file's bytes, streamed (a model never sits in memory whole).
 *
 * @example
 * const sha256 = await sha256File("models/tiny.gguf", { onProgress: (done, total) => bar.update(done / total) })
 * // "0x3b0c…"
 * @throws the signal's reason when aborted; the file system's error (ENOENT, EISDIR) otherwise.
 */
export async function sha256File(path: string, options: HashFileOptions = {}): Promise<string> {
  const { signal, onProgress } = options;
  signal?.throwIfAborted();
  const handle = await open(path, "r");
  try {
    // The size of the file opened, not of whatever the path names by the time we read.
    const total = (await handle.stat()).size;
    const hash = createHash("sha256");
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
    let done = 0;
    onProgress?.(0, total);
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await handle.read(buffer, 0, CHUNK_BYTES, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      done += bytesRead;
      onProgress?.(done, Math.max(total, done));
    }
    return `0x${hash.digest("hex")}`;
  } finally {
    await handle.close();
  }
}

/** What identifies one version of a file without reading it. */
interface FileVersion {
  size: number;
  mtimeMs: number;
  ino: number;
}

interface CacheEntry extends FileVersion {
  sha256: string;
}

interface CacheFile {
  format: "soulmesh-file-hashes/1";
  entries: Record<string, CacheEntry>;
}

function versionOf(stats: Stats): FileVersion {
  return { size: stats.size, mtimeMs: stats.mtimeMs, ino: stats.ino };
}

function sameVersion(a: FileVersion, b: FileVersion): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino;
}

function isCacheEntry(value: unknown): value is CacheEntry {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.size === "number" &&
    typeof v.mtimeMs === "number" &&
    typeof v.ino === "number" &&
    typeof v.sha256 === "string" &&
    SHA256_PATTERN.test(v.sha256)
  );
}

/**
 * Writes a file so that a reader (or a crash) never sees half of it: a temporary file beside it, then a rename.
 *
 * @example
 * await writeFileAtomic("/data/hashes.json", JSON.stringify(doc))
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    await writeFile(tmp, data, { mode: 0o600 });
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Remembers the SHA-256 of files (models: several GB, minutes to hash) across restarts, in a JSON file.
 * An entry is keyed by the file's real path and holds only while its size, mtime and inode are those it was
 * hashed with, so a file replaced or rewritten is hashed again.
 *
 * @example
 * const hashes = new FileHashCache({ path: join(home, "hashes.json") })
 * const sha256 = await hashes.sha256("models/tiny.gguf") // reads the file the first time only
 */
export class FileHashCache {
  readonly path: string;
  #entries: Map<string, CacheEntry> | undefined;
  #loading: Promise<Map<string, CacheEntry>> | undefined;
  // One hashing per file version at a time: two loads of the same model share it.
  readonly #hashing = new SharedWork<string, string>();
  #saving: Promise<void> = Promise.resolve();

  constructor(options: { path: string }) {
    this.path = options.path;
  }

  /**
   * The SHA-256 of the file at `path`, from the cache when the file has not changed since it was hashed.
   *
   * @example
   * const sha256 = await hashes.sha256(modelPath, { signal, onProgress })
   * @throws the signal's reason when aborted; the file system's error when the file cannot be read.
   */
  async sha256(path: string, options: HashFileOptions = {}): Promise<string> {
    options.signal?.throwIfAborted();
    const real = await realpath(path);
    const before = versionOf(await stat(real));
    const cached = (await this.#load()).get(real);
    if (cached !== undefined && sameVersion(cached, before)) {
      options.onProgress?.(before.size, before.size);
      return cached.sha256;
    }
    const key = `${real}\0${before.size}\0${before.mtimeMs}\0${before.ino}`;
    // Only the first caller's onProgress sees the bytes go by; the others wait for the result.
    return await this.#hashing.run(
      key,
      (task) => this.#hashAndRemember(real, before, { signal: task.signal, onProgress: options.onProgress }),
      { signal: options.signal },
    );
  }

  /**
   * The cached SHA-256 of a file if its entry still holds, without reading the file.
   *
   * @example
   * if ((await hashes.peek(path)) === undefined) console.log("hashing the model, this takes a while")
   */
  async peek(path: string): Promise<string | undefined> {
    let real: string;
    let version: FileVersion;
    try {
      real = await realpath(path);
      version = versionOf(await stat(real));
    } catch {
      return undefined;
    }
    const cached = (await this.#load()).get(real);
    return cached !== undefined && sameVersion(cached, version) ? cached.sha256 : undefined;
  }

  /** Resolves once every write started so far has reached the disk. */
  async flush(): Promise<void> {
    await this.#saving;
  }

  async #hashAndRemember(real: string, before: FileVersion, options: HashFileOptions): Promise<string> {
    const sha256 = await sha256File(real, options);
    const after = versionOf(await stat(real));
    // A file written while we read it has no single hash: return what we read, but remember nothing.
    if (!sameVersion(before, after)) return sha256;
    const entries = await this.#load();
    entries.set(real, { ...after, sha256 });
    await this.#save();
    return sha256;
  }

  async #load(): Promise<Map<string, CacheEntry>> {
    if (this.#entries !== undefined) return this.#entries;
    this.#loading ??= this.#read().then((entries) => (this.#entries = entries));
    return await this.#loading;
  }

  async #read(): Promise<Map<string, CacheEntry>> {
    const entries = new Map<string, CacheEntry>();
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return entries;
      throw err;
    }
    // It is only a cache: a damaged file costs a re-hash, never a refusal to start.
    try {
      const doc = JSON.parse(text) as Partial<CacheFile>;
      if (doc.format === "soulmesh-file-hashes/1" && typeof doc.entries === "object" && doc.entries !== null) {
        for (const [path, entry] of Object.entries(doc.entries)) {
          if (isCacheEntry(entry)) {
            entries.set(path, { size: entry.size, mtimeMs: entry.mtimeMs, ino: entry.ino, sha256: entry.sha256 });
          }
        }
      }
    } catch {
      // fall through with what was read
    }
    return entries;
  }

  #save(): Promise<void> {
    // Writes are chained so that two rename()s never race and the last state always wins.
    const next = this.#saving.then(async () => {
      const doc: CacheFile = { format: "soulmesh-file-hashes/1", entries: Object.fromEntries(this.#entries ?? []) };
      await writeFileAtomic(this.path, `${JSON.stringify(doc, null, 2)}\n`);
    });
    this.#saving = next.catch(() => undefined);
    return next;
  }
}

/** Lets the work of a {@link SharedWork} task hand its result to exactly the callers still waiting. */
export interface SharedTask {
  /** Aborted once every caller has stopped waiting (or {@link SharedWork.abortAll}). */
  readonly signal: AbortSignal;
  /**
   * Closes the task: from now on no caller's abort can take the result away from it, and a new `run()` of the
   * same key starts afresh. Returns how many callers will receive the result. Call it synchronously right
   * before returning, when the result carries a resource per caller (a pin, a lease).
   */
  claim(): number;
}

interface Task<T> {
  promise: Promise<T>;
  controller: AbortController;
  waiters: number;
  closed: boolean;
}

/**
 * Runs one piece of work per key however many callers ask for it at once (two requests for the same adapter,
 * one download). The work is aborted only when every caller waiting for it has aborted, not when the first does.
 *
 * @example
 * const downloads = new SharedWork<string, string>()
 * const path = await downloads.run(cid, (task) => download(cid, task.signal), { signal })
 */
export class SharedWork<K, T> {
  readonly #tasks = new Map<K, Task<T>>();

  /** Whether work for `key` is under way. */
  has(key: K): boolean {
    return this.#tasks.has(key);
  }

  /**
   * Joins the work for `key`, starting it when none is under way.
   *
   * @example
   * const sha256 = await hashing.run(path, (task) => sha256File(path, { signal: task.signal }), { signal })
   * @throws the caller's signal's reason when it aborts first; the work's error otherwise.
   */
  run(key: K, work: (task: SharedTask) => Promise<T>, options: { signal?: AbortSignal } = {}): Promise<T> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    let task = this.#tasks.get(key);
    if (task === undefined) task = this.#start(key, work);
    const joined = task;
    joined.waiters += 1;
    return new Promise<T>((resolve, reject) => {
      // Once this caller has left, the work's outcome is no longer its own: it gets the abort reason.
      let left = false;
      const onAbort = (): void => {
        if (joined.closed) return;
        left = true;
        joined.waiters -= 1;
        if (joined.waiters > 0) {
          reject(signal?.reason as Error);
          return;
        }
        // The last caller waits for the work to wind down (temporary files removed) before it sees the abort,
        // so that what it aborted is over when its call returns.
        joined.controller.abort(signal?.reason);
        const done = (): void => reject(signal?.reason as Error);
        joined.promise.then(done, done);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      joined.promise.then(
        (value) => {
          signal?.removeEventListener("abort", onAbort);
          if (!left) resolve(value);
        },
        (err: unknown) => {
          signal?.removeEventListener("abort", onAbort);
          if (!left) reject(err as Error);
        },
      );
    });
  }

  /** Aborts all work under way (on stop), and waits for it to settle. */
  async abortAll(reason?: unknown): Promise<void> {
    const tasks = [...this.#tasks.values()];
    for (const task of tasks) task.controller.abort(reason);
    await Promise.allSettled(tasks.map((t) => t.promise));
  }

  #start(key: K, work: (task: SharedTask) => Promise<T>): Task<T> {
    const controller = new AbortController();
    const task: Task<T> = { promise: undefined as unknown as Promise<T>, controller, waiters: 0, closed: false };
    const close = (): void => {
      if (task.closed) return;
      task.closed = true;
      if (this.#tasks.get(key) === task) this.#tasks.delete(key);
    };
    const handle: SharedTask = {
      signal: controller.signal,
      claim: () => {
        close();
        return task.waiters;
      },
    };
    // Started on the next microtask so that `waiters` already counts the caller that started it.
    task.promise = Promise.resolve()
      .then(() => work(handle))
      .finally(close);
    // Each caller gets its own rejection; this keeps the shared promise itself from being reported unhandled.
    task.promise.catch(() => undefined);
    this.#tasks.set(key, task);
    return task;
  }
}
