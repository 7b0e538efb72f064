import type { Llama, LlamaContext, LlamaContextSequence, LlamaModel } from "node-llama-cpp";
import { EngineStoppedError, MemoryBudgetError } from "./errors.js";

/** A LoRA adapter as a context applies it: a verified local file and its scale. */
export interface ContextAdapter {
  sha256: string;
  path: string;
  scale: number;
  /** File size, counted against the memory budget. */
  bytes: number;
}

/**
 * Who holds a sequence between turns (a hot session). The pool asks an idle holder to give its sequence
 * back (saving its state first) when another session needs the memory.
 */
export interface SequenceHolder {
  /** True while a generation runs on the sequence: it is never taken then. */
  readonly busy: boolean;
  /** When the holder last used its sequence (ms since epoch), for LRU order. */
  readonly lastUsed: number;
  /** Saves what must survive and lets go of the sequence (it calls {@link ContextPool.release}). */
  evict(): Promise<void>;
}

/** Options of a {@link ContextPool}. */
export interface ContextPoolOptions {
  llama: Llama;
  /** Threads per context. */
  threads: number;
  /** Tokens per sequence. */
  contextSize: number;
  /**
   * The most sequences a context has: sessions on the same adapter set share a context, batched together.
   * A context is sized by demand within this bound (see {@link ContextPool.acquire}), because each sequence
   * reserves a whole context size of KV cache: a persona with one session should not pay for four.
   */
  sequencesPerContext: number;
  /** Memory the pool's contexts may use in all, by node-llama-cpp's own estimate plus adapter sizes. */
  memoryBudgetBytes: number;
  /** Called when a context is created or disposed, for events and metrics. */
  onContextChange?: (change: { type: "created" | "disposed"; key: string; bytes: number }) => void;
}

interface Entry {
  key: string;
  model: LlamaModel;
  context: LlamaContext;
  bytes: number;
  holders: Map<LlamaContextSequence, SequenceHolder>;
  lastUsed: number;
}

/**
 * Contexts keyed by model and adapter set. node-llama-cpp applies LoRA adapters per context, so
 * sessions on different adapter sets need different contexts, while sessions on the same set share one
 * context's sequences. Contexts live within a memory budget; when a new one does not fit, idle sessions
 * are evicted (their state saved by their holder) and idle contexts disposed, least recently used first.
 *
 * @example
 * const pool = new ContextPool({ llama, threads: 1, contextSize: 4096, sequencesPerContext: 4, memoryBudgetBytes: 2 ** 30 })
 * const sequence = await pool.acquire(model, modelSha256, [], holder)
 * // ... generate ...
 * await pool.release(sequence)
 */
export class ContextPool {
  readonly #options: ContextPoolOptions;
  readonly #entries = new Map<string, Entry[]>();
  // KV and compute memory by model and sequence count: node-llama-cpp's estimate reads the GGUF insights.
  readonly #estimates = new WeakMap<LlamaModel, Map<number, number>>();
  #waiters: (() => void)[] = [];
  #stopped = false;
  // Serializes acquisitions, so two of them never evict or create for the same room.
  #lock: Promise<void> = Promise.resolve();

  constructor(options: ContextPoolOptions) {
    this.#options = { ...options };
  }

  /** Bytes the pool's contexts take by estimate. */
  get usedBytes(): number {
    let total = 0;
    for (const list of this.#entries.values()) for (const e of list) total += e.bytes;
    return total;
  }

  /** Contexts alive now. */
  get contextCount(): number {
    let n = 0;
    for (const list of this.#entries.values()) n += list.length;
    return n;
  }

  /** The key of a model with an adapter set: contexts are shared only under the same key. */
  static keyOf(modelSha256: string, adapters: readonly ContextAdapter[]): string {
    return [modelSha256, ...adapters.map((a) => `${a.sha256}@${a.scale}`)].join("|");
  }

  /**
   * A sequence of a context for `model` with `adapters` applied, held by `holder` until released.
   * Waits (until `signal` aborts) when everything is busy and nothing fits the budget.
   *
   * `demand` is how many sessions of this adapter set want a sequence now (this one included). A new
   * context gets that many sequences, at least twice what the set already has (so a growing persona's
   * contexts grow geometrically), at most `sequencesPerContext`.
   */
  async acquire(
    model: LlamaModel,
    modelSha256: string,
    adapters: readonly ContextAdapter[],
    holder: SequenceHolder,
    options: { signal?: AbortSignal; demand?: number } = {},
  ): Promise<LlamaContextSequence> {
    const key = ContextPool.keyOf(modelSha256, adapters);
    for (;;) {
      options.signal?.throwIfAborted();
      if (this.#stopped) throw new EngineStoppedError();
      const sequence = await this.#locked(() => this.#tryAcquire(key, model, adapters, holder, options.demand ?? 1));
      if (sequence !== undefined) return sequence;
      await this.#waitForIdle(options.signal);
    }
  }

  /** Gives a sequence back: its tokens are dropped and the slot serves another session. */
  async release(sequence: LlamaContextSequence): Promise<void> {
    for (const list of this.#entries.values()) {
      for (const entry of list) {
        if (entry.holders.delete(sequence)) {
          entry.lastUsed = Date.now();
          if (!sequence.disposed) await sequence.dispose();
          this.notifyIdle();
          return;
        }
      }
    }
  }

  /** Wakes acquisitions waiting for room: call it when a holder stops being busy. */
  notifyIdle(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  /** Disposes every context; holders must have saved their state before (the engine evicts them first). */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.notifyIdle();
    const entries = [...this.#entries.values()].flat();
    this.#entries.clear();
    for (const entry of entries) await this.#dispose(entry);
  }

  async #locked<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.#lock;
    let unlock!: () => void;
    this.#lock = new Promise((resolve) => (unlock = resolve));
    await previous;
    try {
      return await fn();
    } finally {
      unlock();
    }
  }

  async #tryAcquire(
    key: string,
    model: LlamaModel,
    adapters: readonly ContextAdapter[],
    holder: SequenceHolder,
    demand: number,
  ): Promise<LlamaContextSequence | undefined> {
    const list = this.#entries.get(key) ?? [];
    const withRoom = list.find((e) => e.context.sequencesLeft > 0);
    if (withRoom !== undefined) return this.#take(withRoom, holder);

    const capacity = list.reduce((sum, e) => sum + e.context.totalSequences, 0);
    const sequences = Math.min(this.#options.sequencesPerContext, Math.max(1, Math.floor(demand), 2 * capacity));
    const bytes = await this.#estimate(model, adapters, sequences);
    if (bytes > this.#options.memoryBudgetBytes) throw new MemoryBudgetError(bytes, this.#options.memoryBudgetBytes);
    if (this.usedBytes + bytes <= this.#options.memoryBudgetBytes) {
      return this.#take(await this.#create(key, model, adapters, sequences, bytes), holder);
    }

    // A context of the same key with an idle session: that session's sequence is the cheapest room.
    const idleHere = this.#lruIdleHolder(list);
    if (idleHere !== undefined) {
      await idleHere.holder.evict();
      return this.#take(idleHere.entry, holder);
    }

    // Otherwise free whole contexts whose sessions are all idle, least recently used first, until it fits.
    const idleContexts = [...this.#entries.values()]
      .flat()
      .filter((e) => [...e.holders.values()].every((h) => !h.busy))
      .sort((a, b) => lastUse(a) - lastUse(b));
    for (const entry of idleContexts) {
      if (this.usedBytes + bytes <= this.#options.memoryBudgetBytes) break;
      // A session may have started a turn while an earlier context was being freed.
      if ([...entry.holders.values()].some((h) => h.busy)) continue;
      for (const h of [...entry.holders.values()]) await h.evict();
      this.#remove(entry);
      await this.#dispose(entry);
    }
    if (this.usedBytes + bytes <= this.#options.memoryBudgetBytes) {
      return this.#take(await this.#create(key, model, adapters, sequences, bytes), holder);
    }
    return undefined;
  }

  #lruIdleHolder(list: readonly Entry[]): { entry: Entry; holder: SequenceHolder } | undefined {
    let best: { entry: Entry; holder: SequenceHolder } | undefined;
    for (const entry of list) {
      for (const h of entry.holders.values()) {
        if (!h.busy && (best === undefined || h.lastUsed < best.holder.lastUsed)) best = { entry, holder: h };
      }
    }
    return best;
  }

  #take(entry: Entry, holder: SequenceHolder): LlamaContextSequence {
    const sequence = entry.context.getSequence();
    entry.holders.set(sequence, holder);
    entry.lastUsed = Date.now();
    return sequence;
  }

  async #estimate(model: LlamaModel, adapters: readonly ContextAdapter[], sequences: number): Promise<number> {
    let byCount = this.#estimates.get(model);
    if (byCount === undefined) this.#estimates.set(model, (byCount = new Map()));
    let kv = byCount.get(sequences);
    if (kv === undefined) {
      const { cpuRam, gpuVram } = await model.fileInsights.estimateContextResourceRequirementsV2({
        contextSize: this.#options.contextSize,
        sequences,
        modelGpuLayers: model.gpuLayers,
      });
      kv = cpuRam + gpuVram;
      byCount.set(sequences, kv);
    }
    return kv + adapters.reduce((sum, a) => sum + a.bytes, 0);
  }

  async #create(
    key: string,
    model: LlamaModel,
    adapters: readonly ContextAdapter[],
    sequences: number,
    bytes: number,
  ): Promise<Entry> {
    const context = await model.createContext({
      contextSize: this.#options.contextSize,
      sequences,
      threads: this.#options.threads,
      ...(adapters.length > 0 && {
        lora: { adapters: adapters.map((a) => ({ filePath: a.path, scale: a.scale })) },
      }),
    });
    const entry: Entry = { key, model, context, bytes, holders: new Map(), lastUsed: Date.now() };
    const list = this.#entries.get(key) ?? [];
    list.push(entry);
    this.#entries.set(key, list);
    this.#options.onContextChange?.({ type: "created", key, bytes });
    return entry;
  }

  #remove(entry: Entry): void {
    const list = this.#entries.get(entry.key);
    if (list === undefined) return;
    const rest = list.filter((e) => e !== entry);
    if (rest.length === 0) this.#entries.delete(entry.key);
    else this.#entries.set(entry.key, rest);
  }

  async #dispose(entry: Entry): Promise<void> {
    await entry.context.dispose();
    this.#options.onContextChange?.({ type: "disposed", key: entry.key, bytes: entry.bytes });
  }

  #waitForIdle(signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve, reject) => {
      const onAbort = (): void => reject(signal?.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }
}

function lastUse(entry: Entry): number {
  let latest = entry.lastUsed;
  for (const h of entry.holders.values()) latest = Math.max(latest, h.lastUsed);
  return latest;
}
