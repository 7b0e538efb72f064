import { freemem } from "node:os";
import type { Llama, LlamaContextSequence } from "node-llama-cpp";
import { AdmissionQueue } from "./admission.js";
import { ContextPool, type ContextAdapter, type SequenceHolder } from "./context-pool.js";
import {
  EngineStoppedError,
  InvalidRequestError,
  ModelNotServedError,
  SessionConflictError,
  SessionNotFoundError,
  SessionStateError,
} from "./errors.js";
import { chatWrapperOf } from "../../sdk/client/tokenizer.js";
import { checkRequest, generate, type GenerateOptions, type GenerateResult } from "./generate.js";
import type { AdapterLease, AdapterStore } from "./adapters.js";
import type { LoadedModel } from "./models.js";
import type { SessionStateStore, StateBinding } from "./state-store.js";
import { defaultThreads } from "./threads.js";

/** A persona adapter a session runs with, as the persona registry names it. */
export interface AdapterRef {
  cid: string;
  /** The adapter's registered SHA-256 ("0x" + 64 hex digits). */
  sha256: string;
  /** LoRA scale; default 1. */
  scale?: number;
}

/** Fetches, verifies and pins adapters: the engine needs only this of {@link AdapterStore}. */
export type AdapterResolver = Pick<AdapterStore, "get">;

/** Options of {@link createEngine}. */
export interface EngineOptions {
  llama: Llama;
  /** The base models this node serves, loaded. */
  models: readonly LoadedModel[];
  adapters: AdapterResolver;
  /** Where evicted sessions' KV states go, encrypted. */
  states: SessionStateStore;
  /** Threads per context; default cores − 1, at least 1. */
  threads?: number;
  /** Tokens per session; default the model's training context, at most 4096. */
  contextSize?: number;
  /** The most sessions sharing one context (same model and adapters); contexts are sized by demand up to it. Default 4. */
  sequencesPerContext?: number;
  /** Memory all contexts may take; default half the free memory at creation. */
  memoryBudgetBytes?: number;
  /** Generations running at once; default 2. */
  maxConcurrent?: number;
  /** Generations waiting; one more gets ProviderBusy at once. Default 16. */
  maxQueued?: number;
  /** A session unused this long (ms) is closed and its state deleted. Default 1 hour. */
  sessionIdleMs?: number;
}

/** Opening a session: who it runs as, and the key its saved state is encrypted with. */
export interface OpenSessionOptions {
  /** The session's id, unique on this node (the client picks it; at most 128 characters). */
  sessionId: string;
  /** The base model, by the SHA-256 of its file. */
  modelSha256: string;
  /** The persona's adapters, applied in this order. */
  adapters?: readonly AdapterRef[];
  /** The base model the persona is registered for; refused unless it is `modelSha256`. */
  baseModelHash?: string;
  /** 32 bytes from the client: this session's state is encrypted with it on this node's disk. */
  stateKey: Uint8Array;
  signal?: AbortSignal;
  /** Adapter download progress (total when the source knows it). */
  onProgress?: (done: number, total: number | undefined) => void;
}

/** An open session, as the engine reports it. */
export interface SessionInfo {
  sessionId: string;
  modelSha256: string;
  adapters: readonly { sha256: string; scale: number }[];
  /** Whether the session holds a sequence in memory now (else its state is on disk, or it has none). */
  hot: boolean;
}

/** The result of a turn: the generation's, and whether a saved state was restored for it. */
export interface TurnResult extends GenerateResult {
  /** True when the session's KV state was loaded from disk before this turn. */
  restored: boolean;
}

/** Events of an {@link InferenceEngine}. */
export interface EngineEvents {
  "session:opened": CustomEvent<{ sessionId: string }>;
  "session:evicted": CustomEvent<{ sessionId: string; bytes: number }>;
  "session:restored": CustomEvent<{ sessionId: string; tokens: number }>;
  "session:state-discarded": CustomEvent<{ sessionId: string; reason: string }>;
  "session:closed": CustomEvent<{ sessionId: string }>;
  "context:created": CustomEvent<{ key: string; bytes: number }>;
  "context:disposed": CustomEvent<{ key: string; bytes: number }>;
}

const SESSION_ID = /^[\x21-\x7e]{1,128}$/;
const DEFAULT_MAX_CONTEXT = 4096;

class Session implements SequenceHolder {
  busy = false;
  lastUsed = Date.now();
  sequence: LlamaContextSequence | undefined;
  closed = false;
  #tail: Promise<unknown> = Promise.resolve();
  #evicting: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly model: LoadedModel,
    readonly adapters: readonly ContextAdapter[],
    readonly leases: readonly AdapterLease[],
    readonly binding: StateBinding,
    readonly key: Uint8Array,
    readonly engine: InferenceEngine,
  ) {
    this.poolKey = ContextPool.keyOf(model.sha256, adapters);
  }

  /** The context pool's key for this session's model and adapters: sessions with equal keys share contexts. */
  readonly poolKey: string;

  /** Runs turns one after another: a session's state is a single line of history. */
  serialize<T>(turn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(turn, turn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async evict(): Promise<void> {
    this.#evicting ??= this.engine._evict(this).finally(() => (this.#evicting = undefined));
    return this.#evicting;
  }

  /** Waits for an eviction under way, so a turn never runs on a sequence being saved and released. */
  async settled(): Promise<void> {
    await this.#evicting;
  }
}

/**
 * The provider's inference engine: sessions on base models and persona LoRA adapters, with KV state
 * kept across turns (in memory while hot, encrypted on disk when evicted), a context pool within a
 * memory budget, and admission control.
 *
 * @example
 * const engine = createEngine({ llama, models: [model], adapters: store, states })
 * await engine.openSession({ sessionId, modelSha256: model.sha256, adapters: [{ cid, sha256 }], stateKey })
 * const { text, usage } = await engine.generate(sessionId, { prompt: { chat: [{ role: "user", content: "Hi" }] } })
 * await engine.closeSession(sessionId)
 */
export class InferenceEngine extends EventTarget {
  readonly #models = new Map<string, LoadedModel>();
  readonly #sessions = new Map<string, Session>();
  readonly #adapters: AdapterResolver;
  readonly #states: SessionStateStore;
  readonly #queue: AdmissionQueue;
  readonly #pool: ContextPool;
  readonly contextSize: number;
  readonly #sessionIdleMs: number;
  #sweeper: NodeJS.Timeout | undefined;
  #running = false;

  constructor(options: EngineOptions) {
    super();
    if (options.models.length === 0) throw new InvalidRequestError("the engine needs at least one model");
    for (const m of options.models) this.#models.set(m.sha256, m);
    this.#adapters = options.adapters;
    this.#states = options.states;
    const trained = Math.min(...options.models.map((m) => m.model.trainContextSize));
    this.contextSize = options.contextSize ?? Math.min(trained, DEFAULT_MAX_CONTEXT);
    this.#sessionIdleMs = options.sessionIdleMs ?? 60 * 60_000;
    if (!(this.#sessionIdleMs > 0)) throw new InvalidRequestError("sessionIdleMs must be positive");
    this.#queue = new AdmissionQueue({ maxConcurrent: options.maxConcurrent ?? 2, maxQueued: options.maxQueued ?? 16 });
    this.#pool = new ContextPool({
      llama: options.llama,
      threads: options.threads ?? defaultThreads(),
      contextSize: this.contextSize,
      sequencesPerContext: options.sequencesPerContext ?? 4,
      memoryBudgetBytes: options.memoryBudgetBytes ?? Math.floor(freemem() / 2),
      onContextChange: ({ type, key, bytes }) =>
        this.dispatchEvent(new CustomEvent(`context:${type}`, { detail: { key, bytes } })),
    });
  }

  /** Starts serving. The injected adapter and state stores are started by their owner. */
  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    // node-llama-cpp picks a model's chat wrapper by rendering its template, ~0.5 s: done now, not in the
    // first client's time to first token.
    for (const m of this.#models.values()) chatWrapperOf(m.model);
    this.#sweeper = setInterval(() => void this.closeIdleSessions(), Math.min(this.#sessionIdleMs, 60_000));
    this.#sweeper.unref();
  }

  /**
   * Closes sessions unused for `sessionIdleMs` (deleting their saved state): a client that vanished
   * does not hold memory, adapters or state files forever. Runs periodically; returns how many closed.
   */
  async closeIdleSessions(now: number = Date.now()): Promise<number> {
    const isIdle = (s: Session): boolean => !s.busy && now - s.lastUsed >= this.#sessionIdleMs;
    let closed = 0;
    for (const session of [...this.#sessions.values()].filter(isIdle)) {
      // A turn may have arrived since: checked again once the session's queue is drained.
      if (await this.#close(session, () => isIdle(session)).catch(() => false)) closed++;
    }
    return closed;
  }

  /**
   * Stops serving: hot sessions' states are saved (encrypted) so that a restarted node resumes them,
   * then every context is disposed. Models stay loaded (their owner disposes them).
   */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearInterval(this.#sweeper);
    for (const session of this.#sessions.values()) {
      await session.serialize(() => session.evict()).catch(() => undefined);
      for (const lease of session.leases) lease.release();
    }
    this.#sessions.clear();
    await this.#pool.stop();
  }

  /** Generations running and waiting. */
  get load(): { running: number; queued: number; sessions: number; contexts: number; memoryBytes: number } {
    return {
      running: this.#queue.running,
      queued: this.#queue.queued,
      sessions: this.#sessions.size,
      contexts: this.#pool.contextCount,
      memoryBytes: this.#pool.usedBytes,
    };
  }

  /**
   * Opens a session: fetches and verifies its adapters (refusing a wrong hash or another base model)
   * before anything runs. A state saved earlier under the same id, model and adapters (a restarted
   * node) is resumed on the first turn; one saved under anything else is discarded, never loaded.
   */
  async openSession(options: OpenSessionOptions): Promise<SessionInfo> {
    this.#ensureRunning();
    const { sessionId } = options;
    if (typeof sessionId !== "string" || !SESSION_ID.test(sessionId)) {
      throw new InvalidRequestError("a session id has 1 to 128 printable ASCII characters");
    }
    if (!(options.stateKey instanceof Uint8Array) || options.stateKey.length !== 32) {
      throw new InvalidRequestError("the session's state key must be 32 bytes");
    }
    if (this.#sessions.has(sessionId)) throw new SessionConflictError(sessionId, "it is already open");
    const model = this.#models.get(options.modelSha256?.toLowerCase());
    if (model === undefined) throw new ModelNotServedError(options.modelSha256, [...this.#models.keys()]);
    const refs = options.adapters ?? [];
    for (const ref of refs) {
      if (ref.scale !== undefined && !(Number.isFinite(ref.scale) && ref.scale > 0 && ref.scale <= 16)) {
        throw new InvalidRequestError(`adapter ${ref.cid} has scale ${ref.scale}; use a number in (0, 16]`);
      }
    }

    const leases: AdapterLease[] = [];
    try {
      for (const ref of refs) {
        leases.push(
          await this.#adapters.get(
            {
              cid: ref.cid,
              sha256: ref.sha256,
              model,
              ...(options.baseModelHash !== undefined && { baseModelSha256: options.baseModelHash }),
            },
            {
              ...(options.signal !== undefined && { signal: options.signal }),
              ...(options.onProgress !== undefined && { onProgress: options.onProgress }),
            },
          ),
        );
      }
    } catch (err) {
      for (const lease of leases) lease.release();
      throw err;
    }
    if (this.#sessions.has(sessionId) || !this.#running) {
      for (const lease of leases) lease.release();
      if (!this.#running) throw new EngineStoppedError();
      throw new SessionConflictError(sessionId, "it is already open");
    }
    const adapters: ContextAdapter[] = refs.map((ref, i) => ({
      sha256: ref.sha256.toLowerCase(),
      scale: ref.scale ?? 1,
      path: leases[i]!.path,
      bytes: leases[i]!.size,
    }));
    const binding: StateBinding = {
      modelSha256: model.sha256,
      contextSize: this.contextSize,
      adapters: adapters.map(({ sha256, scale }) => ({ sha256, scale })),
    };
    const session = new Session(sessionId, model, adapters, leases, binding, options.stateKey.slice(), this);
    this.#sessions.set(sessionId, session);
    this.dispatchEvent(new CustomEvent("session:opened", { detail: { sessionId } }));
    return this.#info(session);
  }

  /** The open session with this id. */
  session(sessionId: string): SessionInfo {
    return this.#info(this.#session(sessionId));
  }

  /**
   * Runs one turn of a session. The prompt is the whole conversation (chat) or text; whatever prefix
   * the session's state already holds is not evaluated again. Admission is bounded: past the queue,
   * {@link ProviderBusyError} at once.
   */
  async generate(sessionId: string, options: GenerateOptions): Promise<TurnResult> {
    this.#ensureRunning();
    const session = this.#session(sessionId);
    const checked = checkRequest(session.model.model, this.contextSize, options);
    options.admit?.(checked.tokens.length);
    const signal = options.signal;
    return this.#queue.run(
      () =>
        session.serialize(async () => {
          if (session.closed) throw new SessionNotFoundError(sessionId);
          session.busy = true;
          try {
            await session.settled();
            const restored = await this.#ensureSequence(session, signal);
            const sequence = session.sequence!;
            const result = await generate(sequence, options, sequence.contextSize === this.contextSize ? checked : undefined);
            return { ...result, restored };
          } finally {
            session.busy = false;
            session.lastUsed = Date.now();
            this.#pool.notifyIdle();
          }
        }),
      signal !== undefined ? { signal } : {},
    );
  }

  /**
   * Saves a hot session's state to disk and frees its sequence (what the pool does under memory
   * pressure; exposed for operators and tests).
   */
  async evictSession(sessionId: string): Promise<void> {
    const session = this.#session(sessionId);
    await session.serialize(() => session.evict());
  }

  /** Closes a session: its sequence is freed and its saved state deleted. */
  async closeSession(sessionId: string): Promise<void> {
    await this.#close(this.#session(sessionId), () => true);
  }

  /** Closes the session once its pending turns are done, if `still()` holds then. */
  async #close(session: Session, still: () => boolean): Promise<boolean> {
    const closed = await session.serialize(async () => {
      if (session.closed || !still()) return false;
      session.closed = true;
      this.#sessions.delete(session.id);
      const sequence = session.sequence;
      session.sequence = undefined;
      if (sequence !== undefined) await this.#pool.release(sequence);
      for (const lease of session.leases) lease.release();
      await this.#states.delete(session.id);
      return true;
    });
    if (closed) this.dispatchEvent(new CustomEvent("session:closed", { detail: { sessionId: session.id } }));
    return closed;
  }

  /** @internal Called by a session asked to give up its sequence: saves the state, then releases it. */
  async _evict(session: Session): Promise<void> {
    const sequence = session.sequence;
    if (sequence === undefined) return;
    let bytes = 0;
    try {
      if (sequence.nextTokenIndex > 0) {
        ({ bytes } = await this.#states.save(session.id, session.key, session.binding, sequence.contextTokens, (p) =>
          sequence.saveStateToFile(p),
        ));
      }
    } catch (err) {
      // A state that cannot be saved costs one full evaluation on the next turn; the memory is freed anyway,
      // and the session asking for room is not failed for another session's disk.
      const reason = `saving it failed (${err instanceof Error ? err.message : String(err)})`;
      this.dispatchEvent(new CustomEvent("session:state-discarded", { detail: { sessionId: session.id, reason } }));
    } finally {
      session.sequence = undefined;
      await this.#pool.release(sequence);
    }
    this.dispatchEvent(new CustomEvent("session:evicted", { detail: { sessionId: session.id, bytes } }));
  }

  async #ensureSequence(session: Session, signal: AbortSignal | undefined): Promise<boolean> {
    if (session.sequence !== undefined) return false;
    let demand = 0;
    for (const s of this.#sessions.values()) {
      if (s.sequence === undefined && s.poolKey === session.poolKey) demand++;
    }
    const sequence = await this.#pool.acquire(session.model.model, session.model.sha256, session.adapters, session, {
      demand: Math.max(1, demand),
      ...(signal !== undefined && { signal }),
    });
    session.sequence = sequence;
    try {
      const restored = await this.#states.restore(session.id, session.key, session.binding, (p) =>
        sequence.loadStateFromFile(p, { acceptRisk: true }),
      );
      if (restored === undefined) return false;
      this.dispatchEvent(
        new CustomEvent("session:restored", { detail: { sessionId: session.id, tokens: restored.tokens.length } }),
      );
      return true;
    } catch (err) {
      if (!(err instanceof SessionStateError)) throw err;
      // The store already deleted the bad state; start from an empty sequence.
      await sequence.clearHistory();
      this.dispatchEvent(
        new CustomEvent("session:state-discarded", { detail: { sessionId: session.id, reason: err.reason } }),
      );
      return false;
    }
  }

  #session(sessionId: string): Session {
    const session = this.#sessions.get(sessionId);
    if (session === undefined) throw new SessionNotFoundError(sessionId);
    return session;
  }

  #info(session: Session): SessionInfo {
    return {
      sessionId: session.id,
      modelSha256: session.model.sha256,
      adapters: session.binding.adapters,
      hot: session.sequence !== undefined,
    };
  }

  #ensureRunning(): void {
    if (!this.#running) throw new EngineStoppedError();
  }
}

/**
 * Creates an inference engine over loaded models and injected adapter and state stores; call
 * `start()` before use and `stop()` to save hot sessions and free memory.
 *
 * @example
 * const engine = createEngine({ llama, models: [model], adapters, states, memoryBudgetBytes: 2 ** 30 })
 * await engine.start()
 */
export function createEngine(options: EngineOptions): InferenceEngine {
  return new InferenceEngine(options);
}
