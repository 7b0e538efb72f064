/**
 * The KV-state store for persistent sessions.
 *
 * A hot session keeps its sequence in the engine; an evicted one has its state saved here
 * (`sequence.saveStateToFile`) and restored on its next turn (`sequence.loadStateFromFile`), so that only the
 * new tokens are evaluated. Three properties matter more than speed:
 *
 * - A state is restored only under the exact configuration it was made under. llama.cpp checks the shapes and
 *   types of the KV cache when it loads a state, but not the weights: a state made under another fine-tune of the
 *   same architecture, another adapter or another adapter scale loads silently and yields garbage. So every file
 *   carries a {@link bindingId} and a state whose binding differs is deleted, never loaded.
 * - State files hold the user's tokens. They are encrypted at rest (AES-256-GCM) with a key derived from a
 *   32-byte key the client supplies with each turn, which this store never keeps; the plaintext that
 *   node-llama-cpp reads and writes only exists in a private staging folder, in RAM (`/dev/shm`) when there is one,
 *   and is removed as soon as the call ends, whatever happens.
 * - States expire: each save stamps an expiry (`ttlMs` after it), and restore and the periodic sweep delete
 *   expired files.
 * - States are bounded in size, because whoever opens a session decides how many there are and how long they are:
 *   a payer opening and abandoning sessions, or one very long context, must not fill the provider's disk (issue 14,
 *   attack 3). One state above `maxStateBytes` is not saved (StateTooLargeError; the session evaluates its prompt
 *   again next turn), and a save that takes the whole folder above `maxBytes` deletes the least recently used
 *   states (saved or restored), never one a call is using, until it fits. Sizes are kept in memory, built by the
 *   sweep at start, so a save never scans the folder.
 *
 * On-disk format, `<dir>/<fileId>.state`, where fileId = SHA-256 of the session id (so no id can name a path
 * outside the folder, and file names do not reveal session ids):
 *
 * ```
 * header (104 bytes, authenticated as AAD together with the fileId):
 *   "SMKV" | version u16 | flags u16 | salt 32 | nonce 12 | binding id 32 | savedAt u64 ms | expiresAt u64 ms |
 *   token count u32                                                     (integers big-endian)
 * ciphertext of: token ids (u32 little-endian each) | node-llama-cpp's state file
 * GCM tag (16 bytes)
 * ```
 *
 * The file key is HKDF-SHA256(client key, salt, info), with a fresh random salt per file: a random nonce under a
 * key used for one file only can never repeat, however many states a client key encrypts.
 *
 * One store per folder: start() treats temporary and staging files in it as leftovers of a crash.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, chmod, lstat, mkdir, mkdtemp, open, readdir, rename, rm, stat, statfs } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import {
  InvalidSessionIdError,
  InvalidSessionKeyError,
  InvalidStateBindingError,
  SessionStateError,
  StateStoreStoppedError,
  StateTooLargeError,
} from "./errors.js";
import { TypedEventTarget } from "../../sdk/events.js";
import { isProcessAlive } from "../process.js";

/** The configuration a KV state was computed under; a state is only valid under the same one. */
export interface StateBinding {
  /** SHA-256 of the base model's GGUF file: "0x" + 64 hex digits. */
  modelSha256: string;
  /** The context size (tokens) of the sequence the state comes from. */
  contextSize: number;
  /** The LoRA adapters applied, with their scales. Their order does not matter (see {@link bindingId}). */
  adapters: readonly { sha256: string; scale: number }[];
}

/** What {@link SessionStateStore.restore} gives back: the tokens the loaded state covers. */
export interface RestoredState {
  /** The token ids the restored state covers, in order: only the tokens after them need evaluating. */
  tokens: number[];
  /** When the state was saved (ms since the epoch, by the store's clock). */
  savedAt: number;
}

/** Why a state file was deleted without being restored. */
export type StateDiscardReason =
  /** Saved under another model, context size, adapter set or scale. */
  | "binding-mismatch"
  /** Older than its TTL. */
  | "expired"
  /** Does not decrypt with the key given: a wrong key, or the file was altered. */
  | "undecryptable"
  /** Not a state file (bad magic, version or size). */
  | "corrupt"
  /** Decrypted, but the engine's `read` callback failed to load it. */
  | "unloadable"
  /** Removed, least recently used first, to keep the store under `maxBytes`. */
  | "evicted";

/** The detail of a `discard` event. */
export interface StateDiscardedDetail {
  /** The file's id (SHA-256 of the session id, hex); the session id itself is not known to a sweep. */
  fileId: string;
  /** The session id, when the discard happened in a call that named it. */
  sessionId?: string;
  reason: StateDiscardReason;
  /** The size of the file removed. */
  bytes: number;
}

/** Events of a {@link SessionStateStore}. */
export interface SessionStateStoreEvents {
  /** A state file was deleted by the store itself (not by delete()). */
  discard: CustomEvent<StateDiscardedDetail>;
}

/** Options of {@link SessionStateStore}. */
export interface SessionStateStoreInit {
  /** The folder of the encrypted state files; created with mode 0700. */
  dir: string;
  /** How long a saved state lives (ms after its save). */
  ttlMs: number;
  /**
   * Where plaintext states are staged while node-llama-cpp writes or reads them: a private folder is made inside.
   * Default `/dev/shm` when it exists and is writable, so plaintext never touches a disk; without one, or when a
   * state does not fit there, a 0700 folder inside `dir`.
   */
  stagingDir?: string;
  /**
   * The most bytes of state files to keep; above it the least recently used states are evicted. Default
   * {@link DEFAULT_MAX_STATE_STORE_BYTES}: the folder must stay bounded whatever clients do, and a state is only a
   * cache (an evicted one costs its session one prompt evaluation).
   */
  maxBytes?: number;
  /**
   * The most bytes of one state file; a larger state is not saved (StateTooLargeError). Default
   * {@link DEFAULT_MAX_STATE_BYTES}, or `maxBytes` when that is lower: without it one long context could take the
   * whole budget and evict every other session's state at each save.
   */
  maxStateBytes?: number;
  /** How often the background sweep runs (ms). Default: ttlMs, at most 5 minutes, at least 1 second. */
  sweepIntervalMs?: number;
  /** The clock (ms since the epoch); injectable for tests. */
  now?: () => number;
}

/** The options every async call of the store takes. */
export interface AbortOptions {
  signal?: AbortSignal;
}

/** Writes a plaintext state to `plainPath`; the engine passes `(p) => sequence.saveStateToFile(p)`. */
export type WriteState = (plainPath: string, options: AbortOptions) => Promise<unknown>;

/**
 * Loads the plaintext state at `plainPath`; the engine passes
 * `(p) => sequence.loadStateFromFile(p, { acceptRisk: true })`.
 */
export type ReadState = (plainPath: string, options: AbortOptions) => Promise<unknown>;

/**
 * Default of {@link SessionStateStoreInit.maxBytes}: 2 GiB, room for some hundred states of a small model's full
 * context (a 0.5B model's KV cache is about 12 KiB per token) on any disk that can hold a model at all.
 */
export const DEFAULT_MAX_STATE_STORE_BYTES = 2 * 2 ** 30;
/**
 * Default of {@link SessionStateStoreInit.maxStateBytes}: 256 MiB, a full 8K context of a model with grouped-query
 * attention and a few billion parameters in f16; longer states are cheaper to recompute than to keep in eight.
 */
export const DEFAULT_MAX_STATE_BYTES = 256 * 2 ** 20;

const MAGIC = Buffer.from("SMKV", "ascii");
const VERSION = 1;
const SALT_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const ID_BYTES = 32;
const HEADER_BYTES = 4 + 2 + 2 + SALT_BYTES + NONCE_BYTES + ID_BYTES + 8 + 8 + 4;
const KEY_BYTES = 32;
const HKDF_INFO = Buffer.from("soulmesh/session-state/v1 aes-256-gcm", "utf8");
const FILE_ID_DOMAIN = "soulmesh/session-state/v1 file\0";
const BINDING_DOMAIN = "soulmesh/state-binding/v1";
const MAX_SESSION_ID_LENGTH = 256;
const STATE_SUFFIX = ".state";
const TMP_SUFFIX = ".tmp";
const PLAIN_SUFFIX = ".plain";
const STAGING_PREFIX = "soulmesh-state-";
const DISK_STAGING = ".staging";
const CHUNK_BYTES = 1 << 20;
// Below this much free space after a failed write, the RAM staging folder was full: retry on disk.
const RAM_FULL_SLACK_BYTES = 8 << 20;
const HASH = /^0x[0-9a-fA-F]{64}$/;
const STATE_NAME = /^([0-9a-f]{64})\.state$/;
// Control characters would let an id forge log lines; lone surrogates would encode to U+FFFD in UTF-8 and make
// two ids share one file.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The canonical text of a binding, from which {@link bindingId} is hashed. It follows what llama.cpp does with
 * adapters (llama_context::set_adapters_lora, llama.cpp as bundled with node-llama-cpp 3.21.1):
 *
 * - Adapters are sorted by hash: llama.cpp keeps them in an unordered_map keyed by adapter pointer and applies
 *   them in that map's order, so the caller's order never reaches the computation (and floating-point rounding
 *   differs between runs of the same list anyway). Keeping the order would only cause false mismatches.
 * - Scales are compared as the float32 llama.cpp receives (node-llama-cpp converts with FloatValue): 0.1 and
 *   0.1 + 1e-12 are one scale, and written as their exact bits, not a decimal rendering.
 * - Adapters whose float32 scale is zero are dropped: llama.cpp never applies them.
 * - The same adapter twice is refused: llama.cpp keeps the first scale for one loaded adapter but applies both for
 *   two loads of one file, so no canonical form could tell those apart.
 *
 * @example
 * canonicalBinding({ modelSha256: "0xab…", contextSize: 4096, adapters: [{ sha256: "0xcd…", scale: 0.5 }] })
 * // "soulmesh/state-binding/v1\nmodel 0xab…\ncontext 4096\nadapter 0xcd… 3f000000"
 * @throws InvalidStateBindingError for a malformed hash, context size or scale, or a repeated adapter.
 */
export function canonicalBinding(binding: StateBinding): string {
  const model = canonicalHash(binding.modelSha256, "modelSha256");
  if (!Number.isSafeInteger(binding.contextSize) || binding.contextSize <= 0) {
    throw new InvalidStateBindingError(`contextSize must be a positive integer, not ${binding.contextSize}`);
  }
  const adapters = new Map<string, string>();
  binding.adapters.forEach((adapter, i) => {
    const sha = canonicalHash(adapter.sha256, `adapters[${i}].sha256`);
    const bits = float32Bits(adapter.scale, i);
    if (bits === undefined) return;
    if (adapters.has(sha)) throw new InvalidStateBindingError(`adapter ${sha} is listed twice`);
    adapters.set(sha, bits);
  });
  const lines = [BINDING_DOMAIN, `model ${model}`, `context ${binding.contextSize}`];
  for (const sha of [...adapters.keys()].sort()) lines.push(`adapter ${sha} ${adapters.get(sha)}`);
  return lines.join("\n");
}

/**
 * The id of a binding: "0x" + SHA-256 of its {@link canonicalBinding} text. Two bindings share an id exactly when
 * llama.cpp computes the same KV cache under them.
 *
 * @example
 * bindingId({ modelSha256: model, contextSize: 4096, adapters: [] }) // "0x5f1c…"
 * @throws InvalidStateBindingError when the binding is malformed.
 */
export function bindingId(binding: StateBinding): string {
  return `0x${createHash("sha256").update(canonicalBinding(binding), "utf8").digest("hex")}`;
}

/**
 * The id of a session's state file: SHA-256 of the session id (hex, no prefix). Hashing keeps any id, however
 * hostile, inside the folder, and keeps session ids out of file names.
 *
 * @example
 * stateFileId("9b2e7c1a-…") // "3a7f…" (64 hex digits)
 * @throws InvalidSessionIdError for an empty, over-long or unprintable id.
 */
export function stateFileId(sessionId: string): string {
  checkSessionId(sessionId);
  return createHash("sha256").update(FILE_ID_DOMAIN, "utf8").update(sessionId, "utf8").digest("hex");
}

interface IndexEntry {
  bytes: number;
  savedAt: number;
  expiresAt: number;
  /** The last save or restore (the save time for states found by a sweep): eviction order. */
  lastUsed: number;
}

interface Header {
  /** The header as stored: the AAD, byte for byte. */
  raw: Buffer;
  salt: Buffer;
  nonce: Buffer;
  binding: Buffer;
  savedAt: number;
  expiresAt: number;
  tokenCount: number;
}

/**
 * Encrypted, expiring, binding-checked storage of node-llama-cpp sequence states, one per session.
 *
 * @example
 * const store = new SessionStateStore({ dir: join(home, "states"), ttlMs: 3_600_000 })
 * await store.start()
 * await store.save(id, key, binding, sequence.contextTokens, (p) => sequence.saveStateToFile(p))
 * const restored = await store.restore(id, key, binding, (p) => sequence.loadStateFromFile(p, { acceptRisk: true }))
 * if (restored) evaluateOnly(prompt.slice(restored.tokens.length))
 * store.addEventListener("discard", (e) => log(e.detail.reason))
 * await store.stop()
 */
export class SessionStateStore extends TypedEventTarget<SessionStateStoreEvents> {
  /** The folder of the encrypted state files. */
  readonly dir: string;
  /** The most bytes of state files kept (see {@link SessionStateStoreInit.maxBytes}). */
  readonly maxBytes: number;
  /** The most bytes of one state file (see {@link SessionStateStoreInit.maxStateBytes}). */
  readonly maxStateBytes: number;
  private readonly ttlMs: number;
  private readonly sweepIntervalMs: number;
  private readonly now: () => number;
  private readonly stagingBase: string | undefined;
  private readonly diskStaging: string;
  private ramStaging: string | undefined;
  private started = false;
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<number> | undefined;
  // Least recently used first: Map keeps insertion order, and touch() re-inserts, so eviction takes from the front.
  private readonly index = new Map<string, IndexEntry>();
  private indexedBytes = 0;
  private readonly locks = new Map<string, Promise<void>>();
  // Temporary and staging files of calls in progress: a sweep must not take them for crash leftovers.
  private readonly inFlight = new Set<string>();
  private readonly running = new Set<Promise<unknown>>();

  constructor(init: SessionStateStoreInit) {
    super();
    if (!(init.ttlMs > 0) || !Number.isFinite(init.ttlMs)) {
      throw new RangeError(`ttlMs must be positive, not ${init.ttlMs}`);
    }
    if (init.maxBytes !== undefined && !(init.maxBytes > 0)) {
      throw new RangeError(`maxBytes must be positive, not ${init.maxBytes}`);
    }
    const maxBytes = init.maxBytes ?? DEFAULT_MAX_STATE_STORE_BYTES;
    if (init.maxStateBytes !== undefined && !(init.maxStateBytes > 0 && init.maxStateBytes <= maxBytes)) {
      // A state larger than the whole store would be saved only to be evicted at once.
      throw new RangeError(
        `maxStateBytes must be positive and at most maxBytes (${maxBytes}), not ${init.maxStateBytes}`,
      );
    }
    this.dir = init.dir;
    this.ttlMs = init.ttlMs;
    this.maxBytes = maxBytes;
    this.maxStateBytes = init.maxStateBytes ?? Math.min(DEFAULT_MAX_STATE_BYTES, maxBytes);
    this.sweepIntervalMs = init.sweepIntervalMs ?? Math.max(1000, Math.min(init.ttlMs, 300_000));
    this.now = init.now ?? Date.now;
    this.stagingBase = init.stagingDir;
    this.diskStaging = join(init.dir, DISK_STAGING);
  }

  /**
   * Creates the folder (0700), removes what a crash left behind (temporary files, staged plaintext, expired
   * states) and starts the periodic sweep. Idempotent.
   *
   * @example
   * await store.start()
   */
  async start(options: AbortOptions = {}): Promise<void> {
    if (this.started) return;
    options.signal?.throwIfAborted();
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // mkdir leaves an existing folder's mode alone, and this one holds users' (encrypted) conversations.
    await chmod(this.dir, 0o700);
    // Plaintext left by a crash: one store per folder, so nothing in here belongs to a live call.
    await rm(this.diskStaging, { recursive: true, force: true });
    await mkdir(this.diskStaging, { mode: 0o700 });
    this.ramStaging = await this.openRamStaging();
    this.started = true;
    try {
      await this.sweep(options);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.timer = setInterval(() => {
      // A failed background sweep (a transient fs error) is retried by the next one; restore checks expiry itself.
      this.sweep().catch(() => undefined);
    }, this.sweepIntervalMs);
    this.timer.unref();
  }

  /**
   * Stops the sweep, waits for the calls in progress and removes the RAM staging folder. Saved states stay.
   *
   * @example
   * await store.stop()
   */
  async stop(): Promise<void> {
    this.started = false;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.allSettled([...this.running]);
    if (this.ramStaging !== undefined) await rm(this.ramStaging, { recursive: true, force: true });
    this.ramStaging = undefined;
  }

  /**
   * Saves a session's state, replacing the previous one atomically: `write` writes the plaintext state into a
   * private staging file, which is encrypted into `<dir>/<fileId>.state` through a temporary file and a rename, and
   * removed in all cases. If anything fails (or the signal aborts), the previous state is left as it was. A state
   * above `maxStateBytes` is not saved (StateTooLargeError); when the store is then above `maxBytes`, the least
   * recently used states not in use are deleted (`discard` events, reason "evicted") before save() returns.
   *
   * @param key the client's 32-byte session key; not kept.
   * @param tokens the token ids the state covers (the sequence's context tokens).
   * @example
   * const { bytes } = await store.save(id, key, binding, sequence.contextTokens, (p) => sequence.saveStateToFile(p))
   * @throws InvalidSessionIdError, InvalidSessionKeyError, InvalidStateBindingError, StateStoreStoppedError;
   *   StateTooLargeError (nothing changed); whatever `write` throws; the signal's reason when it aborts.
   */
  async save(
    sessionId: string,
    key: Uint8Array,
    binding: StateBinding,
    tokens: readonly number[],
    write: WriteState,
    options: AbortOptions = {},
  ): Promise<{ bytes: number }> {
    const fileId = stateFileId(sessionId);
    checkKey(sessionId, key);
    const binding32 = Buffer.from(bindingId(binding).slice(2), "hex");
    const tokenBytes = encodeTokens(tokens);
    this.ensureStarted();
    options.signal?.throwIfAborted();
    // The tokens alone can prove a state too large before the engine writes it out (into RAM, usually).
    const floor = HEADER_BYTES + tokenBytes.length + TAG_BYTES;
    if (floor > this.maxStateBytes) throw new StateTooLargeError(sessionId, floor, this.maxStateBytes);
    const result = await this.track(
      this.withLock(fileId, () =>
        this.saveLocked(sessionId, fileId, key, binding32, tokens.length, tokenBytes, write, options),
      ),
    );
    await this.track(this.enforceBudget(fileId, sessionId));
    return result;
  }

  /**
   * Restores a session's state: decrypts it into a private staging file, calls `read` on it, and removes it in all
   * cases. Gives undefined when there is nothing to restore: no state, an expired one, or one saved under another
   * binding (both deleted; a `discard` event says why). The state file stays after a restore; delete() it when the
   * session closes.
   *
   * @example
   * const restored = await store.restore(id, key, binding, (p) => sequence.loadStateFromFile(p, { acceptRisk: true }))
   * @throws SessionStateError (and deletes the file) when the key does not decrypt it, it was altered, or `read`
   *   fails; InvalidSessionIdError, InvalidSessionKeyError, InvalidStateBindingError, StateStoreStoppedError; the
   *   signal's reason when it aborts (the file is kept).
   */
  async restore(
    sessionId: string,
    key: Uint8Array,
    binding: StateBinding,
    read: ReadState,
    options: AbortOptions = {},
  ): Promise<RestoredState | undefined> {
    const fileId = stateFileId(sessionId);
    checkKey(sessionId, key);
    const binding32 = Buffer.from(bindingId(binding).slice(2), "hex");
    this.ensureStarted();
    options.signal?.throwIfAborted();
    return this.track(
      this.withLock(fileId, () => this.restoreLocked(sessionId, fileId, key, binding32, read, options)),
    );
  }

  /**
   * Deletes a session's state (the session closed). True when there was one.
   *
   * @example
   * await store.delete(id)
   */
  async delete(sessionId: string, options: AbortOptions = {}): Promise<boolean> {
    const fileId = stateFileId(sessionId);
    this.ensureStarted();
    options.signal?.throwIfAborted();
    return this.track(
      this.withLock(fileId, async () => {
        this.forget(fileId);
        try {
          await rm(this.pathOf(fileId));
          return true;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
          throw err;
        }
      }),
    );
  }

  /**
   * Whether an unexpired state of this session is stored (it may still be of another binding).
   *
   * @example
   * if (store.has(id)) await store.restore(id, key, binding, read)
   */
  has(sessionId: string): boolean {
    const entry = this.index.get(stateFileId(sessionId));
    return entry !== undefined && entry.expiresAt > this.now();
  }

  /** The bytes of all state files (as of the last save, restore or sweep). */
  get totalBytes(): number {
    return this.indexedBytes;
  }

  /**
   * The path of a session's state file, for diagnostics and tests.
   *
   * @example
   * store.statePath("9b2e7c1a-…") // "/var/soulmesh/states/3a7f….state"
   */
  statePath(sessionId: string): string {
    return this.pathOf(stateFileId(sessionId));
  }

  /**
   * Deletes expired and unreadable states and crash leftovers (temporary and staging files not in use), refreshes
   * the size accounting, and evicts the least recently used states above `maxBytes`. Runs periodically after
   * start(); concurrent calls share one run. Returns the number of files removed.
   *
   * @example
   * const removed = await store.sweep()
   */
  async sweep(options: AbortOptions = {}): Promise<number> {
    this.ensureStarted();
    options.signal?.throwIfAborted();
    this.sweeping ??= this.track(this.sweepOnce(options)).finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  private async saveLocked(
    sessionId: string,
    fileId: string,
    key: Uint8Array,
    binding32: Buffer,
    tokenCount: number,
    tokenBytes: Buffer,
    write: WriteState,
    { signal }: AbortOptions,
  ): Promise<{ bytes: number }> {
    signal?.throwIfAborted();
    let plainPath = await this.newStagingFile(this.index.get(fileId)?.bytes);
    try {
      try {
        await write(plainPath, { signal });
      } catch (err) {
        if (signal?.aborted || !(await this.ramWasFull(plainPath))) throw err;
        await this.removeStaged(plainPath);
        plainPath = await this.newStagingFile(Number.POSITIVE_INFINITY);
        await write(plainPath, { signal });
      }
      signal?.throwIfAborted();
      const bytes = HEADER_BYTES + tokenBytes.length + (await stat(plainPath)).size + TAG_BYTES;
      if (bytes > this.maxStateBytes) throw new StateTooLargeError(sessionId, bytes, this.maxStateBytes);
      return await this.encryptInto(fileId, key, binding32, tokenCount, tokenBytes, plainPath, signal);
    } finally {
      await this.removeStaged(plainPath);
    }
  }

  private async encryptInto(
    fileId: string,
    key: Uint8Array,
    binding32: Buffer,
    tokenCount: number,
    tokenBytes: Buffer,
    plainPath: string,
    signal: AbortSignal | undefined,
  ): Promise<{ bytes: number }> {
    const savedAt = Math.max(0, Math.floor(this.now()));
    const header: Omit<Header, "raw"> = {
      salt: randomBytes(SALT_BYTES),
      nonce: randomBytes(NONCE_BYTES),
      binding: binding32,
      savedAt,
      expiresAt: Math.min(Number.MAX_SAFE_INTEGER, savedAt + Math.ceil(this.ttlMs)),
      tokenCount,
    };
    const headerBytes = encodeHeader(header);
    const cipher = createCipheriv("aes-256-gcm", fileKey(key, header.salt), header.nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.concat([headerBytes, Buffer.from(fileId, "hex")]));
    const finalPath = this.pathOf(fileId);
    const tmp = join(this.dir, `${fileId}.${randomBytes(8).toString("hex")}${TMP_SUFFIX}`);
    this.inFlight.add(tmp);
    let renamed = false;
    try {
      let bytes = 0;
      const out = await open(tmp, "wx", 0o600);
      try {
        const put = async (chunk: Buffer): Promise<void> => {
          await writeAll(out, chunk);
          bytes += chunk.length;
        };
        await put(headerBytes);
        await put(cipher.update(tokenBytes));
        const plain = await open(plainPath, "r");
        try {
          const { size } = await plain.stat();
          for await (const chunk of readRange(plain, 0, size, signal)) await put(cipher.update(chunk));
        } finally {
          await plain.close();
        }
        await put(cipher.final());
        await put(cipher.getAuthTag());
        // Durable before it replaces the previous state: a crash leaves the old file or the new, never half of one.
        await out.sync();
      } finally {
        await out.close();
      }
      signal?.throwIfAborted();
      await rename(tmp, finalPath);
      renamed = true;
      await syncDir(this.dir);
      this.touch(fileId, { bytes, savedAt: header.savedAt, expiresAt: header.expiresAt, lastUsed: this.now() });
      return { bytes };
    } finally {
      if (!renamed) await rm(tmp, { force: true });
      this.inFlight.delete(tmp);
    }
  }

  private async restoreLocked(
    sessionId: string,
    fileId: string,
    key: Uint8Array,
    binding32: Buffer,
    read: ReadState,
    { signal }: AbortOptions,
  ): Promise<RestoredState | undefined> {
    signal?.throwIfAborted();
    const path = this.pathOf(fileId);
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      this.forget(fileId);
      return undefined;
    }
    try {
      const { size } = await fh.stat();
      const header = await readHeader(fh, size);
      if (header === undefined) {
        await this.discard(fileId, sessionId, "corrupt", size);
        throw new SessionStateError(sessionId, "the file is not a session state (bad header)");
      }
      if (header.expiresAt <= this.now()) {
        await this.discard(fileId, sessionId, "expired", size);
        return undefined;
      }
      if (!header.binding.equals(binding32)) {
        await this.discard(fileId, sessionId, "binding-mismatch", size);
        return undefined;
      }
      // Restoring is using: this state goes to the back of the eviction order.
      this.touch(fileId, { bytes: size, savedAt: header.savedAt, expiresAt: header.expiresAt, lastUsed: this.now() });
      const aad = Buffer.concat([header.raw, Buffer.from(fileId, "hex")]);
      const stateBytes = size - HEADER_BYTES - TAG_BYTES - header.tokenCount * 4;
      const decrypt = async (plainPath: string): Promise<number[]> => {
        const tag = Buffer.alloc(TAG_BYTES);
        await readExactly(fh, tag, size - TAG_BYTES);
        const decipher = createDecipheriv("aes-256-gcm", fileKey(key, header.salt), header.nonce, {
          authTagLength: TAG_BYTES,
        });
        decipher.setAAD(aad);
        decipher.setAuthTag(tag);
        return decryptInto(fh, size, header.tokenCount, decipher, plainPath, signal);
      };
      let plainPath = await this.newStagingFile(stateBytes);
      try {
        let tokens: number[];
        try {
          try {
            tokens = await decrypt(plainPath);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "ENOSPC" || !this.isRamStaged(plainPath)) throw err;
            await this.removeStaged(plainPath);
            plainPath = await this.newStagingFile(Number.POSITIVE_INFINITY);
            tokens = await decrypt(plainPath);
          }
        } catch (err) {
          if (!(err instanceof UnusableStateError) || signal?.aborted) throw err;
          await this.discard(fileId, sessionId, err.reason, size);
          throw new SessionStateError(sessionId, err.message, { cause: err.cause });
        }
        signal?.throwIfAborted();
        try {
          await read(plainPath, { signal });
        } catch (err) {
          if (signal?.aborted) throw err;
          await this.discard(fileId, sessionId, "unloadable", size);
          throw new SessionStateError(sessionId, `the engine could not load it (${(err as Error).message})`, {
            cause: err,
          });
        }
        return { tokens, savedAt: header.savedAt };
      } finally {
        await this.removeStaged(plainPath);
      }
    } finally {
      await fh.close();
    }
  }

  private async sweepOnce({ signal }: AbortOptions): Promise<number> {
    let removed = 0;
    const seen = new Set<string>();
    // States saved while readdir runs are not in its list but are real: only entries known before may be stale.
    const known = new Set(this.index.keys());
    for (const name of await readdir(this.dir)) {
      signal?.throwIfAborted();
      const path = join(this.dir, name);
      if (name.endsWith(TMP_SUFFIX)) {
        if (!this.inFlight.has(path)) {
          await rm(path, { force: true });
          removed++;
        }
        continue;
      }
      const fileId = STATE_NAME.exec(name)?.[1];
      // Anything else in the folder is not the store's: leave it alone.
      if (fileId === undefined) continue;
      seen.add(fileId);
      if (await this.withLock(fileId, () => this.sweepState(fileId))) removed++;
    }
    for (const fileId of known) if (!seen.has(fileId)) this.forget(fileId);
    // States found on disk were appended in readdir's order: put the whole index back in order of use.
    const ordered = [...this.index.entries()].sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    this.index.clear();
    for (const [fileId, entry] of ordered) this.index.set(fileId, entry);
    for (const folder of [this.diskStaging, this.ramStaging]) {
      if (folder === undefined) continue;
      for (const name of await readdir(folder).catch(() => [] as string[])) {
        const path = join(folder, name);
        if (this.inFlight.has(path)) continue;
        await rm(path, { recursive: true, force: true });
        removed++;
      }
    }
    return removed + (await this.enforceBudget(undefined, undefined));
  }

  /** Checks one state file's header; true when it was removed. */
  private async sweepState(fileId: string): Promise<boolean> {
    let fh: FileHandle;
    try {
      fh = await open(this.pathOf(fileId), "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      this.forget(fileId);
      return false;
    }
    let size: number;
    let header: Header | undefined;
    try {
      size = (await fh.stat()).size;
      header = await readHeader(fh, size);
    } finally {
      await fh.close();
    }
    if (header === undefined) {
      await this.discard(fileId, undefined, "corrupt", size);
      return true;
    }
    if (header.expiresAt <= this.now()) {
      await this.discard(fileId, undefined, "expired", size);
      return true;
    }
    // A sweep is not a use: a known state keeps its place; one found on disk (a restart) was last used when saved.
    const lastUsed = this.index.get(fileId)?.lastUsed ?? header.savedAt;
    this.setEntry(fileId, { bytes: size, savedAt: header.savedAt, expiresAt: header.expiresAt, lastUsed });
    return false;
  }

  /**
   * Evicts the least recently used states while above maxBytes; returns how many. States a call is using or waiting
   * for (a restore reading one) are skipped, and the state just saved (`keep`) goes last. When only states in use
   * are left, the store stays above the limit until the next save or sweep: those calls end soon.
   */
  private async enforceBudget(keep: string | undefined, keepSessionId: string | undefined): Promise<number> {
    let evicted = 0;
    while (this.indexedBytes > this.maxBytes) {
      let fileId: string | undefined;
      for (const id of this.index.keys()) {
        if (id !== keep && !this.locks.has(id)) {
          fileId = id;
          break;
        }
      }
      if (fileId === undefined && keep !== undefined && this.index.has(keep) && !this.locks.has(keep)) fileId = keep;
      if (fileId === undefined) break;
      await this.withLock(fileId, async () => {
        const entry = this.index.get(fileId);
        if (entry === undefined) return;
        await this.discard(fileId, fileId === keep ? keepSessionId : undefined, "evicted", entry.bytes);
        evicted++;
      });
    }
    return evicted;
  }

  /** Records a state's size and times in place (its place in the eviction order is kept). */
  private setEntry(fileId: string, entry: IndexEntry): void {
    this.indexedBytes += entry.bytes - (this.index.get(fileId)?.bytes ?? 0);
    this.index.set(fileId, entry);
  }

  /** Records a state as just used: it moves to the back of the eviction order. */
  private touch(fileId: string, entry: IndexEntry): void {
    this.forget(fileId);
    this.setEntry(fileId, entry);
  }

  private forget(fileId: string): void {
    const entry = this.index.get(fileId);
    if (entry === undefined) return;
    this.indexedBytes -= entry.bytes;
    this.index.delete(fileId);
  }

  private async discard(
    fileId: string,
    sessionId: string | undefined,
    reason: StateDiscardReason,
    bytes: number,
  ): Promise<void> {
    this.forget(fileId);
    await rm(this.pathOf(fileId), { force: true });
    const detail: StateDiscardedDetail = { fileId, reason, bytes };
    if (sessionId !== undefined) detail.sessionId = sessionId;
    this.dispatchEvent(new CustomEvent("discard", { detail }));
  }

  /** Creates an empty 0600 staging file: RAM when the state should fit there, else the folder on disk. */
  private async newStagingFile(expectedBytes: number | undefined): Promise<string> {
    let folder = this.diskStaging;
    if (this.ramStaging !== undefined && expectedBytes !== Number.POSITIVE_INFINITY) {
      const free = await freeBytes(this.ramStaging);
      if (expectedBytes === undefined || free >= expectedBytes + RAM_FULL_SLACK_BYTES) folder = this.ramStaging;
    }
    const path = join(folder, `${randomBytes(12).toString("hex")}${PLAIN_SUFFIX}`);
    this.inFlight.add(path);
    // Made here, 0600, so that node-llama-cpp (fopen "wb") writes into a private file rather than a 0644 one.
    await (await open(path, "wx", 0o600)).close();
    return path;
  }

  private async removeStaged(path: string): Promise<void> {
    try {
      await rm(path, { force: true });
    } finally {
      this.inFlight.delete(path);
    }
  }

  private isRamStaged(path: string): boolean {
    return this.ramStaging !== undefined && path.startsWith(this.ramStaging + "/");
  }

  /** After a failed write: whether it failed because the RAM staging folder filled up (node-llama-cpp hides errno). */
  private async ramWasFull(path: string): Promise<boolean> {
    if (!this.isRamStaged(path) || this.ramStaging === undefined) return false;
    return (await freeBytes(this.ramStaging).catch(() => Number.POSITIVE_INFINITY)) < RAM_FULL_SLACK_BYTES;
  }

  /** Makes this process's private staging folder in RAM, after removing those of dead processes. */
  private async openRamStaging(): Promise<string | undefined> {
    let base = this.stagingBase;
    if (base === undefined) {
      if (!(await isWritableDir("/dev/shm"))) return undefined;
      base = "/dev/shm";
    } else {
      await mkdir(base, { recursive: true, mode: 0o700 });
    }
    await removeDeadStagingFolders(base);
    try {
      return await mkdtemp(join(base, `${STAGING_PREFIX}${process.pid}-`));
    } catch (err) {
      if (this.stagingBase !== undefined) throw err;
      return undefined;
    }
  }

  private pathOf(fileId: string): string {
    return join(this.dir, `${fileId}${STATE_SUFFIX}`);
  }

  private ensureStarted(): void {
    if (!this.started) throw new StateStoreStoppedError();
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.running.add(promise);
    const forget = (): void => {
      this.running.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  /** Runs `fn` after the calls queued before it on the same file: no save, restore or sweep of one file overlap. */
  private async withLock<T>(fileId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(fileId) ?? Promise.resolve();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => gate);
    this.locks.set(fileId, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(fileId) === tail) this.locks.delete(fileId);
    }
  }
}

/** A state file that decryption proved unusable (as opposed to an I/O failure or an abort). */
class UnusableStateError extends Error {
  override readonly name = "UnusableStateError";
  constructor(
    readonly reason: StateDiscardReason,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

function checkSessionId(sessionId: string): void {
  if (typeof sessionId !== "string" || sessionId.length === 0) throw new InvalidSessionIdError("it is empty");
  if (sessionId.length > MAX_SESSION_ID_LENGTH) {
    throw new InvalidSessionIdError(`it is ${sessionId.length} characters long, above ${MAX_SESSION_ID_LENGTH}`);
  }
  if (CONTROL.test(sessionId)) throw new InvalidSessionIdError("it contains control characters");
  if (LONE_SURROGATE.test(sessionId)) throw new InvalidSessionIdError("it is not well-formed Unicode");
}

function checkKey(sessionId: string, key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== KEY_BYTES) {
    throw new InvalidSessionKeyError(sessionId, key instanceof Uint8Array ? key.length : 0);
  }
}

function canonicalHash(value: string, field: string): string {
  if (typeof value !== "string" || !HASH.test(value)) {
    throw new InvalidStateBindingError(`${field} must be "0x" followed by 64 hex digits`);
  }
  return value.toLowerCase();
}

/** The float32 bits of a scale as 8 hex digits; undefined for a scale llama.cpp treats as zero. */
function float32Bits(scale: number, index: number): string | undefined {
  const single = typeof scale === "number" ? Math.fround(scale) : Number.NaN;
  if (!Number.isFinite(single)) {
    throw new InvalidStateBindingError(`adapters[${index}].scale must be a finite float32, not ${scale}`);
  }
  if (single === 0) return undefined;
  const bits = Buffer.alloc(4);
  bits.writeFloatBE(single);
  return bits.toString("hex");
}

function encodeTokens(tokens: readonly number[]): Buffer {
  const bytes = Buffer.alloc(tokens.length * 4);
  tokens.forEach((token, i) => {
    if (!Number.isInteger(token) || token < 0 || token > 0xffff_ffff) {
      throw new RangeError(`tokens[${i}] is not a token id: ${token}`);
    }
    bytes.writeUInt32LE(token, i * 4);
  });
  return bytes;
}

function fileKey(key: Uint8Array, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync("sha256", key, salt, HKDF_INFO, 32));
}

function encodeHeader(header: Omit<Header, "raw">): Buffer {
  const out = Buffer.alloc(HEADER_BYTES);
  let at = MAGIC.copy(out, 0);
  at = out.writeUInt16BE(VERSION, at);
  at = out.writeUInt16BE(0, at);
  at += header.salt.copy(out, at);
  at += header.nonce.copy(out, at);
  at += header.binding.copy(out, at);
  at = out.writeBigUInt64BE(BigInt(header.savedAt), at);
  at = out.writeBigUInt64BE(BigInt(header.expiresAt), at);
  out.writeUInt32BE(header.tokenCount, at);
  return out;
}

/** Reads and parses a header; undefined when the file cannot be a state file of this version. */
async function readHeader(fh: FileHandle, size: number): Promise<Header | undefined> {
  if (size < HEADER_BYTES + TAG_BYTES) return undefined;
  const bytes = Buffer.alloc(HEADER_BYTES);
  await readExactly(fh, bytes, 0);
  if (!bytes.subarray(0, 4).equals(MAGIC) || bytes.readUInt16BE(4) !== VERSION || bytes.readUInt16BE(6) !== 0) {
    return undefined;
  }
  let at = 8;
  const take = (n: number): Buffer => Buffer.from(bytes.subarray(at, (at += n)));
  const salt = take(SALT_BYTES);
  const nonce = take(NONCE_BYTES);
  const binding = take(ID_BYTES);
  const savedAt = Number(bytes.readBigUInt64BE(at));
  const expiresAt = Number(bytes.readBigUInt64BE(at + 8));
  const tokenCount = bytes.readUInt32BE(at + 16);
  if (HEADER_BYTES + tokenCount * 4 + TAG_BYTES > size) return undefined;
  return { raw: bytes, salt, nonce, binding, savedAt, expiresAt, tokenCount };
}

/** Decrypts the body into the token list and the plaintext state file; UnusableStateError when GCM rejects it. */
async function decryptInto(
  fh: FileHandle,
  size: number,
  tokenCount: number,
  decipher: ReturnType<typeof createDecipheriv>,
  plainPath: string,
  signal: AbortSignal | undefined,
): Promise<number[]> {
  const tokenBytes = Buffer.alloc(tokenCount * 4);
  let filled = 0;
  const out = await open(plainPath, "w", 0o600);
  try {
    const sink = async (plain: Buffer): Promise<void> => {
      const n = Math.min(tokenBytes.length - filled, plain.length);
      plain.copy(tokenBytes, filled, 0, n);
      filled += n;
      if (n < plain.length) await writeAll(out, plain.subarray(n));
    };
    for await (const chunk of readRange(fh, HEADER_BYTES, size - TAG_BYTES, signal)) await sink(decipher.update(chunk));
    let last: Buffer;
    try {
      last = decipher.final();
    } catch (err) {
      throw new UnusableStateError(
        "undecryptable",
        "it does not decrypt with the key given (a wrong key, or the file was altered)",
        { cause: err },
      );
    }
    await sink(last);
  } finally {
    await out.close();
  }
  const tokens = new Array<number>(tokenCount);
  for (let i = 0; i < tokenCount; i++) tokens[i] = tokenBytes.readUInt32LE(i * 4);
  return tokens;
}

async function* readRange(
  fh: FileHandle,
  start: number,
  end: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<Buffer> {
  const buffer = Buffer.allocUnsafe(Math.min(CHUNK_BYTES, Math.max(1, end - start)));
  for (let at = start; at < end; ) {
    signal?.throwIfAborted();
    const { bytesRead } = await fh.read(buffer, 0, Math.min(buffer.length, end - at), at);
    if (bytesRead === 0) throw new UnusableStateError("corrupt", "the file is shorter than its header says");
    at += bytesRead;
    // No copy: for-await asks for the next chunk only once the consumer is done with this one.
    yield buffer.subarray(0, bytesRead);
  }
}

async function readExactly(fh: FileHandle, into: Buffer, position: number): Promise<void> {
  for (let at = 0; at < into.length; ) {
    const { bytesRead } = await fh.read(into, at, into.length - at, position + at);
    if (bytesRead === 0) throw new UnusableStateError("corrupt", "the file is shorter than its header says");
    at += bytesRead;
  }
}

async function writeAll(fh: FileHandle, bytes: Buffer): Promise<void> {
  for (let at = 0; at < bytes.length; ) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.length - at);
    at += bytesWritten;
  }
}

/** Makes a rename durable; some file systems refuse to fsync a folder, which only weakens durability. */
async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Best effort, see above.
  }
}

async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

async function isWritableDir(dir: string): Promise<boolean> {
  try {
    if (!(await stat(dir)).isDirectory()) return false;
    await access(dir, fsConstants.W_OK | fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Removes staging folders of processes that died without stop(): they may hold users' plaintext states. */
async function removeDeadStagingFolders(base: string): Promise<void> {
  const uid = process.getuid?.();
  for (const name of await readdir(base).catch(() => [] as string[])) {
    const match = /^soulmesh-state-(\d+)-/.exec(name);
    const pid = Number(match?.[1]);
    if (match === null || pid === process.pid || isProcessAlive(pid)) continue;
    const path = join(base, name);
    const info = await lstat(path).catch(() => undefined);
    if (info === undefined || !info.isDirectory() || (uid !== undefined && info.uid !== uid)) continue;
    await rm(path, { recursive: true, force: true });
  }
}

