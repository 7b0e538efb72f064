/**
 * The turn journal: every turn of an agent is written, sealed, to a local LevelDB before it is acknowledged,
 * and stays there until the vault has committed it to IPFS. At start the vault reads `pending()` and commits
 * what a crash left behind, so killing the process at any point loses no acknowledged turn.
 *
 * Durability: `append`, `markCommitted` and `setMeta` resolve only after LevelDB wrote them with
 * `{ sync: true }`, i.e. after its write-ahead log was fsync'ed. A resolved write therefore survives a kill of
 * the process (which a completed write would survive anyway: the data is in the OS's page cache) *and* a
 * crash of the OS or a power cut, as far as the disk honours flushes. Writes are applied in call order, so a
 * resolved `append` also implies that every `append` called before it is durable.
 *
 * Nothing in the folder is plaintext: every value is a vault record of kind "journal" sealed with the agent
 * key (XChaCha20-Poly1305, bound to the agent, chain and AgentRegistry), and metadata names are keyed
 * hashes. What leaks to someone reading the folder: how many turns are pending, their seqs and sizes.
 *
 * Layout (keys are bytes):
 * - `0x01`: the header, a sealed constant; opening it proves the key and agent at `open()`.
 * - `0x02 ‖ seq (u64 big-endian)`: a turn; plaintext `0x02 ‖ seq ‖ entry`, so an entry moved to another key
 *   is detected.
 * - `0x03`: the commit watermark (highest committed seq), so seqs never go back after everything was
 *   committed and deleted.
 * - `0x04 ‖ HMAC(name)`: a metadata value; plaintext `0x04 ‖ len ‖ name ‖ value`.
 */
import { mkdir, chmod } from "node:fs/promises";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { concatBytes, utf8ToBytes } from "@noble/hashes/utils.js";
import { Level } from "level";
import { openRecord, sealRecord } from "./crypto.js";
import type { AgentRef } from "./crypto.js";
import {
  InvalidVaultInputError,
  JournalCommitRangeError,
  JournalCorruptError,
  JournalEntryCorruptError,
  JournalKeyMismatchError,
  JournalLockedError,
  JournalNotOpenError,
  JournalWriteError,
  VaultDecryptError,
} from "./errors.js";

// ---------------------------------------------------------------------------------------------------------
// Types

export interface TurnJournalInit extends AgentRef {
  /** The journal's folder (one per agent); created 0700 if missing. */
  dir: string;
  /** The agent key (32 bytes): seals every record of the journal. Copied. */
  key: Uint8Array;
}

/** A journaled turn: its seq and the bytes given to `append`. */
export interface JournalEntry {
  seq: bigint;
  entry: Uint8Array;
}

export interface PendingOptions {
  signal?: AbortSignal;
  /**
   * Called for each entry that does not open, which is then skipped; without it, `pending` throws the first
   * such `JournalEntryCorruptError`.
   */
  onCorrupt?: (error: JournalEntryCorruptError) => void;
}

export interface MarkCommittedOptions {
  signal?: AbortSignal;
  /**
   * Metadata written in the same atomic batch (`null` deletes a name): e.g. the new local head, so a crash
   * can never leave turns both in the new head and still pending, nor deleted but not in the head.
   */
  meta?: Record<string, Uint8Array | null>;
}

// ---------------------------------------------------------------------------------------------------------
// Constants

const HEADER_TAG = 0x01;
const ENTRY_TAG = 0x02;
const WATERMARK_TAG = 0x03;
const META_TAG = 0x04;

const HEADER_KEY = Uint8Array.of(HEADER_TAG);
const WATERMARK_KEY = Uint8Array.of(WATERMARK_TAG);
const ENTRY_RANGE = { gte: Uint8Array.of(ENTRY_TAG), lt: Uint8Array.of(ENTRY_TAG + 1) };
const ENTRY_KEY_LENGTH = 9;
const HEADER_TEXT = utf8ToBytes("soulmesh/vault/journal/v1");
const META_NAME_SALT = utf8ToBytes("soulmesh/vault/journal-meta-name/v1");
const U64_MAX = (1n << 64n) - 1n;
const MAX_META_NAME_BYTES = 255;

// One fsync per batch: appends queued while a write is in flight go out together in the next one, up to
// these bounds so that a burst does not build one huge write.
const MAX_GROUP_ENTRIES = 512;
const MAX_GROUP_BYTES = 4 * 1024 * 1024;

type Db = Level<Uint8Array, Uint8Array>;
type BatchOp = { type: "put"; key: Uint8Array; value: Uint8Array } | { type: "del"; key: Uint8Array };

interface QueuedAppend {
  type: "append";
  detach?: () => void;
  entry: Uint8Array;
  signal: AbortSignal | undefined;
  resolve(seq: bigint): void;
  reject(err: unknown): void;
}

interface QueuedWrite {
  type: "write";
  detach?: () => void;
  signal: AbortSignal | undefined;
  run(db: Db): Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

type Queued = QueuedAppend | QueuedWrite;

interface OpenState {
  db: Db;
  lastSeq: bigint;
  committedSeq: bigint;
}

// ---------------------------------------------------------------------------------------------------------
// TurnJournal

/**
 * One agent's local journal of turns not yet committed to IPFS, plus a little sealed metadata (the local
 * head between publishes). Created closed; `open()` checks the key against the folder.
 *
 * @example
 * const journal = new TurnJournal({ dir: join(home, "journal", "1"), key: agentKey, agentId: 1n, chainId: 31337n, registry })
 * await journal.open()
 * for (const { seq, entry } of await journal.pending()) await commitTurn(seq, entry) // left by a crash
 * const { seq } = await journal.append(encodeTurn(turn)) // durable now: acknowledge the turn
 * await journal.markCommitted(seq, { meta: { head: newHeadCid.bytes } })
 * await journal.close()
 */
export class TurnJournal {
  readonly dir: string;
  private readonly ref: AgentRef;
  private readonly key: Uint8Array;
  private readonly metaNameKey: Uint8Array;
  private state: OpenState | undefined;
  private closing = false;
  // open() and close() wait on one another instead of racing over the LevelDB handle.
  private transition: Promise<void> = Promise.resolve();
  private readonly queue: Queued[] = [];
  // Reads in progress: close() lets them finish instead of closing the store under their iterators.
  private readonly reads = new Set<Promise<unknown>>();
  private writing: Promise<void> | undefined;

  /** @throws InvalidKeyError, InvalidVaultInputError */
  constructor(init: TurnJournalInit) {
    this.dir = init.dir;
    this.ref = { agentId: init.agentId, chainId: init.chainId, registry: init.registry };
    this.key = init.key instanceof Uint8Array ? init.key.slice() : init.key;
    // Checks the key and the agent reference with the very rules every record of the journal will meet, so a
    // bad argument fails here rather than at the first turn.
    sealRecord({ ...this.ref, key: this.key, kind: "journal", plaintext: new Uint8Array(0) });
    this.metaNameKey = hkdf(sha256, this.key, META_NAME_SALT, new Uint8Array(0), 32);
  }

  /**
   * Opens (or creates) the journal and checks that it belongs to this agent and key. Idempotent.
   *
   * @example
   * await journal.open({ signal: AbortSignal.timeout(10_000) })
   * @throws JournalLockedError, JournalKeyMismatchError, JournalCorruptError, AbortError
   */
  async open(options: { signal?: AbortSignal } = {}): Promise<void> {
    const run = this.transition.then(() => this.doOpen(options.signal));
    this.transition = run.catch(() => undefined);
    return run;
  }

  /**
   * Writes the appends and commits already called, then closes the store. Idempotent.
   *
   * @example
   * await journal.close()
   */
  async close(): Promise<void> {
    const run = this.transition.then(() => this.doClose());
    this.transition = run.catch(() => undefined);
    return run;
  }

  /** Whether `open()` succeeded and `close()` has not begun. */
  get isOpen(): boolean {
    return this.state !== undefined && !this.closing;
  }

  /** The highest seq handed out (0n before the first turn); never decreases, across restarts too. */
  get lastSeq(): bigint {
    return this.opened("read lastSeq").lastSeq;
  }

  /** The highest seq marked committed (0n if none). */
  get committedSeq(): bigint {
    return this.opened("read committedSeq").committedSeq;
  }

  /**
   * Journals one turn (opaque bytes, copied at call time) and resolves with its seq once it is on disk.
   * Seqs are consecutive and follow call order. The signal is honoured until the turn's write begins; once it
   * has, the call resolves, so a rejected append is never in the journal.
   *
   * @example
   * const { seq } = await journal.append(encodeTurn(turn), { signal })
   * @throws JournalNotOpenError, JournalWriteError, AbortError
   */
  append(entry: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<{ seq: bigint }> {
    if (!(entry instanceof Uint8Array)) {
      return Promise.reject(new InvalidVaultInputError(["a journal entry must be a Uint8Array"]));
    }
    const copy = entry.slice();
    return new Promise<bigint>((resolve, reject) => {
      this.enqueue({ type: "append", entry: copy, signal: options.signal, resolve, reject });
    }).then((seq) => ({ seq }));
  }

  /**
   * The turns not yet committed, in seq order, decrypted.
   *
   * @example
   * const left = await journal.pending({ onCorrupt: (err) => log.warn(err.message) })
   * @throws JournalEntryCorruptError (without `onCorrupt`), JournalCorruptError, JournalNotOpenError, AbortError
   */
  pending(options: PendingOptions = {}): Promise<JournalEntry[]> {
    return this.reading("read pending turns", (state) => this.readPending(state, options));
  }

  private async readPending({ db, committedSeq }: OpenState, options: PendingOptions): Promise<JournalEntry[]> {
    options.signal?.throwIfAborted();
    const out: JournalEntry[] = [];
    for await (const [key, value] of db.iterator(ENTRY_RANGE)) {
      options.signal?.throwIfAborted();
      if (key.length !== ENTRY_KEY_LENGTH) {
        throw new JournalCorruptError(this.dir, "key", `a turn key of ${key.length} bytes instead of ${ENTRY_KEY_LENGTH}`);
      }
      const seq = readU64(key, 1);
      // markCommitted deletes in the batch that moves the watermark; a turn below it is a leftover to hide.
      if (seq <= committedSeq) continue;
      let entry: Uint8Array;
      try {
        entry = this.openEntry(seq, value);
      } catch (err) {
        const corrupt = new JournalEntryCorruptError(this.dir, seq, err);
        if (options.onCorrupt === undefined) throw corrupt;
        options.onCorrupt(corrupt);
        continue;
      }
      out.push({ seq, entry });
    }
    return out;
  }

  /**
   * Records that every turn up to `uptoSeq` is committed elsewhere: deletes them and moves the watermark in
   * one atomic, synced batch, with `meta` if given. A seq at or below the watermark only writes `meta`.
   *
   * @example
   * await journal.markCommitted(last.seq, { meta: { head: headCid.bytes } })
   * @throws JournalCommitRangeError, JournalNotOpenError, JournalWriteError, AbortError
   */
  markCommitted(uptoSeq: bigint, options: MarkCommittedOptions = {}): Promise<void> {
    if (typeof uptoSeq !== "bigint" || uptoSeq < 0n) {
      return Promise.reject(new InvalidVaultInputError([`uptoSeq must be a non-negative bigint, got ${String(uptoSeq)}`]));
    }
    let metaOps: BatchOp[];
    try {
      metaOps = Object.entries(options.meta ?? {}).map(([name, value]) => this.metaOp(name, value));
    } catch (err) {
      return Promise.reject(err);
    }
    return this.write(options.signal, async (db) => {
      const state = this.state!;
      if (uptoSeq > state.lastSeq) throw new JournalCommitRangeError(uptoSeq, state.lastSeq);
      const ops: BatchOp[] = [...metaOps];
      const moves = uptoSeq > state.committedSeq;
      if (moves) {
        for await (const key of db.keys({ gte: ENTRY_RANGE.gte, lte: entryKey(uptoSeq) })) {
          ops.push({ type: "del", key });
        }
        ops.push({ type: "put", key: WATERMARK_KEY, value: this.seal(concatBytes(Uint8Array.of(WATERMARK_TAG), u64(uptoSeq))) });
      }
      if (ops.length === 0) return;
      await this.batch(db, ops, "mark turns committed");
      if (moves) state.committedSeq = uptoSeq;
    });
  }

  /**
   * A metadata value set by `setMeta` (or `markCommitted`'s `meta`), or undefined.
   *
   * @example
   * const head = await journal.getMeta("head")
   * @throws JournalCorruptError, JournalNotOpenError, AbortError
   */
  getMeta(name: string, options: { signal?: AbortSignal } = {}): Promise<Uint8Array | undefined> {
    return this.reading("read metadata", ({ db }) => this.readMeta(db, name, options));
  }

  private async readMeta(db: Db, name: string, options: { signal?: AbortSignal }): Promise<Uint8Array | undefined> {
    const nameBytes = checkMetaName(name);
    options.signal?.throwIfAborted();
    const sealed = await db.get(this.metaKey(nameBytes));
    if (sealed === undefined) return undefined;
    let plain: Uint8Array;
    try {
      plain = this.unseal(sealed);
    } catch (err) {
      throw new JournalCorruptError(this.dir, "meta", `the value of "${name}" does not open`, err);
    }
    const prefix = metaPrefix(nameBytes);
    if (plain.length < prefix.length || !equalBytes(plain.subarray(0, prefix.length), prefix)) {
      throw new JournalCorruptError(this.dir, "meta", `the value stored for "${name}" was written for another name`);
    }
    return plain.slice(prefix.length);
  }

  /**
   * Stores (or, with `null`, deletes) a small metadata value, sealed, durably.
   *
   * @example
   * await journal.setMeta("head", headCid.bytes)
   * @throws JournalNotOpenError, JournalWriteError, AbortError, InvalidVaultInputError
   */
  setMeta(name: string, value: Uint8Array | null, options: { signal?: AbortSignal } = {}): Promise<void> {
    let op: BatchOp;
    try {
      op = this.metaOp(name, value);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.write(options.signal, (db) => this.batch(db, [op], `set metadata "${name}"`));
  }

  // -------------------------------------------------------------------------------------------------------
  // Open and close

  private async doOpen(signal: AbortSignal | undefined): Promise<void> {
    if (this.state !== undefined) return;
    signal?.throwIfAborted();
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // mkdir leaves an existing folder's mode alone; the folder holds (sealed) conversations.
    await chmod(this.dir, 0o700);
    // Values are ciphertext: compressing them only costs time.
    const db: Db = new Level<Uint8Array, Uint8Array>(this.dir, {
      keyEncoding: "view",
      valueEncoding: "view",
      createIfMissing: true,
      compression: false,
    });
    try {
      await db.open();
    } catch (err) {
      await db.close().catch(() => undefined);
      if (levelCode(err) === "LEVEL_LOCKED") throw new JournalLockedError(this.dir, err);
      if (levelCode(err) === "LEVEL_CORRUPTION") throw new JournalCorruptError(this.dir, "store", "LevelDB reports corruption", err);
      throw err;
    }
    try {
      signal?.throwIfAborted();
      this.state = await this.load(db);
      this.closing = false;
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
  }

  private async load(db: Db): Promise<OpenState> {
    const header = await db.get(HEADER_KEY);
    if (header === undefined) {
      // A header is written before any other record, so a journal without one must be empty; otherwise it
      // would silently accept any key.
      for await (const _ of db.keys({ limit: 1 })) {
        throw new JournalCorruptError(this.dir, "header", "records exist but the header is missing");
      }
      const sealed = this.seal(concatBytes(Uint8Array.of(HEADER_TAG), HEADER_TEXT));
      try {
        await db.put(HEADER_KEY, sealed, { sync: true });
      } catch (err) {
        throw new JournalWriteError(this.dir, "create the journal", err);
      }
      return { db, lastSeq: 0n, committedSeq: 0n };
    }
    let plain: Uint8Array;
    try {
      plain = this.unseal(header);
    } catch (err) {
      if (err instanceof VaultDecryptError) {
        throw new JournalKeyMismatchError(this.dir, this.ref.agentId, err.chainId, err.registry, err);
      }
      throw new JournalCorruptError(this.dir, "header", "not a vault record", err);
    }
    if (!equalBytes(plain, concatBytes(Uint8Array.of(HEADER_TAG), HEADER_TEXT))) {
      throw new JournalCorruptError(this.dir, "header", "unknown header content");
    }
    let committedSeq = 0n;
    const watermark = await db.get(WATERMARK_KEY);
    if (watermark !== undefined) {
      let w: Uint8Array;
      try {
        w = this.unseal(watermark);
      } catch (err) {
        throw new JournalCorruptError(this.dir, "watermark", "the commit watermark does not open", err);
      }
      if (w.length !== 9 || w[0] !== WATERMARK_TAG) {
        throw new JournalCorruptError(this.dir, "watermark", "the commit watermark is malformed");
      }
      committedSeq = readU64(w, 1);
    }
    let lastSeq = committedSeq;
    for await (const key of db.keys({ ...ENTRY_RANGE, reverse: true, limit: 1 })) {
      if (key.length !== ENTRY_KEY_LENGTH) {
        throw new JournalCorruptError(this.dir, "key", `a turn key of ${key.length} bytes instead of ${ENTRY_KEY_LENGTH}`);
      }
      const seq = readU64(key, 1);
      if (seq > lastSeq) lastSeq = seq;
    }
    return { db, lastSeq, committedSeq };
  }

  private async doClose(): Promise<void> {
    const state = this.state;
    if (state === undefined) return;
    this.closing = true;
    while (this.writing !== undefined) await this.writing;
    await Promise.allSettled([...this.reads]);
    this.state = undefined;
    this.closing = false;
    await state.db.close();
  }

  // -------------------------------------------------------------------------------------------------------
  // The write queue: one writer at a time, in call order, so a resolved write implies every earlier one is
  // on disk and seqs follow call order.

  private write(signal: AbortSignal | undefined, run: (db: Db) => Promise<void>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.enqueue({ type: "write", signal, run, resolve, reject });
    });
  }

  private enqueue(op: Queued): void {
    if (this.state === undefined || this.closing) {
      op.reject(new JournalNotOpenError(op.type === "append" ? "append a turn" : "write to the journal"));
      return;
    }
    if (op.signal?.aborted) {
      op.reject(op.signal.reason);
      return;
    }
    // A queued op leaves the queue at once when aborted; one already taken by the writer completes.
    const signal = op.signal;
    if (signal !== undefined) {
      const onAbort = (): void => {
        const i = this.queue.indexOf(op);
        if (i >= 0) {
          this.queue.splice(i, 1);
          op.reject(signal.reason);
        }
      };
      signal.addEventListener("abort", onAbort, { once: true });
      op.detach = () => signal.removeEventListener("abort", onAbort);
    }
    this.queue.push(op);
    this.writing ??= this.drain();
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const state = this.state!;
        const first = this.queue[0]!;
        if (first.type === "write") {
          this.queue.shift();
          first.detach?.();
          try {
            await first.run(state.db);
            first.resolve();
          } catch (err) {
            first.reject(err);
          }
          continue;
        }
        const group: QueuedAppend[] = [];
        let bytes = 0;
        while (group.length < MAX_GROUP_ENTRIES && this.queue[0]?.type === "append") {
          const next = this.queue[0] as QueuedAppend;
          if (group.length > 0 && bytes + next.entry.length > MAX_GROUP_BYTES) break;
          this.queue.shift();
          next.detach?.();
          group.push(next);
          bytes += next.entry.length;
        }
        await this.writeGroup(state, group);
      }
    } finally {
      // Cleared synchronously after the last check of an empty queue, so the next enqueue starts a new drain.
      this.writing = undefined;
    }
  }

  private async writeGroup(state: OpenState, group: QueuedAppend[]): Promise<void> {
    const ops: BatchOp[] = [];
    let seq = state.lastSeq;
    try {
      for (const op of group) {
        seq += 1n;
        if (seq > U64_MAX) throw new InvalidVaultInputError(["the journal ran out of 64-bit seqs"]);
        const plain = concatBytes(Uint8Array.of(ENTRY_TAG), u64(seq), op.entry);
        ops.push({ type: "put", key: entryKey(seq), value: this.seal(plain) });
      }
      await this.batch(state.db, ops, group.length === 1 ? "append a turn" : `append ${group.length} turns`);
    } catch (err) {
      for (const op of group) op.reject(err);
      return;
    }
    const first = state.lastSeq + 1n;
    state.lastSeq = seq;
    group.forEach((op, i) => op.resolve(first + BigInt(i)));
  }

  private async batch(db: Db, ops: BatchOp[], operation: string): Promise<void> {
    try {
      await db.batch(ops, { sync: true });
    } catch (err) {
      throw new JournalWriteError(this.dir, operation, err);
    }
  }

  // -------------------------------------------------------------------------------------------------------
  // Records

  private reading<T>(operation: string, read: (state: OpenState) => Promise<T>): Promise<T> {
    let state: OpenState;
    try {
      state = this.opened(operation);
    } catch (err) {
      return Promise.reject(err);
    }
    const run = read(state);
    this.reads.add(run);
    void run.then(
      () => this.reads.delete(run),
      () => this.reads.delete(run)
    );
    return run;
  }

  private opened(operation: string): OpenState {
    if (this.state === undefined || this.closing) throw new JournalNotOpenError(operation);
    return this.state;
  }

  private seal(plaintext: Uint8Array): Uint8Array {
    return sealRecord({ ...this.ref, key: this.key, kind: "journal", plaintext });
  }

  private unseal(sealed: Uint8Array): Uint8Array {
    return openRecord({ ...this.ref, key: this.key, kind: "journal", sealed });
  }

  private openEntry(seq: bigint, sealed: Uint8Array): Uint8Array {
    const plain = this.unseal(sealed);
    if (plain.length < ENTRY_KEY_LENGTH || plain[0] !== ENTRY_TAG || readU64(plain, 1) !== seq) {
      throw new Error(`the record stored under turn #${seq} is not that turn`);
    }
    return plain.slice(ENTRY_KEY_LENGTH);
  }

  private metaKey(nameBytes: Uint8Array): Uint8Array {
    // Keys are not encrypted by LevelDB, so names are keyed hashes: the folder shows no name in clear.
    return concatBytes(Uint8Array.of(META_TAG), hmac(sha256, this.metaNameKey, nameBytes));
  }

  private metaOp(name: string, value: Uint8Array | null): BatchOp {
    const nameBytes = checkMetaName(name);
    const key = this.metaKey(nameBytes);
    if (value === null) return { type: "del", key };
    if (!(value instanceof Uint8Array)) {
      throw new InvalidVaultInputError([`metadata "${name}" must be a Uint8Array or null`]);
    }
    return { type: "put", key, value: this.seal(concatBytes(metaPrefix(nameBytes), value)) };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

function checkMetaName(name: string): Uint8Array {
  const bytes = typeof name === "string" ? utf8ToBytes(name) : new Uint8Array(0);
  if (bytes.length === 0 || bytes.length > MAX_META_NAME_BYTES) {
    throw new InvalidVaultInputError([
      `a metadata name must be 1 to ${MAX_META_NAME_BYTES} bytes of text, got ${JSON.stringify(name)}`,
    ]);
  }
  return bytes;
}

// The name is sealed with the value so that a value moved under another name's key is refused.
function metaPrefix(nameBytes: Uint8Array): Uint8Array {
  return concatBytes(Uint8Array.of(META_TAG, nameBytes.length), nameBytes);
}

function entryKey(seq: bigint): Uint8Array {
  return concatBytes(Uint8Array.of(ENTRY_TAG), u64(seq));
}

function u64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value);
  return out;
}

function readU64(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset);
}

function levelCode(err: unknown): string | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("LEVEL_") && code !== "LEVEL_DATABASE_NOT_OPEN") return code;
  }
  return undefined;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
