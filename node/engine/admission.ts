import { ProviderBusyError } from "./errors.js";

/** Limits of an {@link AdmissionQueue}. */
export interface AdmissionOptions {
  /** Requests running at once. */
  maxConcurrent: number;
  /** Requests waiting for a slot; one more is refused at once with {@link ProviderBusyError}. */
  maxQueued: number;
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

/**
 * Admission control for the engine: a bounded queue in front of a fixed number of slots. Past the
 * bound a request fails immediately, so a client can go to another provider instead of waiting on an
 * overloaded one.
 *
 * @example
 * const queue = new AdmissionQueue({ maxConcurrent: 1, maxQueued: 8 })
 * const text = await queue.run(() => generate(...), { signal })
 */
export class AdmissionQueue {
  readonly #options: AdmissionOptions;
  readonly #waiting: Waiter[] = [];
  #running = 0;

  constructor(options: AdmissionOptions) {
    if (!Number.isInteger(options.maxConcurrent) || options.maxConcurrent < 1) {
      throw new RangeError(`maxConcurrent must be a positive integer, got ${options.maxConcurrent}`);
    }
    if (!Number.isInteger(options.maxQueued) || options.maxQueued < 0) {
      throw new RangeError(`maxQueued must be a non-negative integer, got ${options.maxQueued}`);
    }
    this.#options = { ...options };
  }

  /** Requests running now. */
  get running(): number {
    return this.#running;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.#waiting.length;
  }

  /**
   * Runs `task` once a slot is free. Throws {@link ProviderBusyError} without queueing when the queue
   * is full, and the signal's reason when aborted while waiting (the task then never runs).
   */
  async run<T>(task: () => Promise<T>, options: { signal?: AbortSignal } = {}): Promise<T> {
    await this.#acquire(options.signal);
    try {
      return await task();
    } finally {
      this.#release();
    }
  }

  #acquire(signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    if (this.#running < this.#options.maxConcurrent && this.#waiting.length === 0) {
      this.#running++;
      return Promise.resolve();
    }
    if (this.#waiting.length >= this.#options.maxQueued) {
      return Promise.reject(new ProviderBusyError(this.#waiting.length, this.#options.maxQueued));
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.#waiting.indexOf(waiter);
          if (i >= 0) this.#waiting.splice(i, 1);
          reject(signal?.reason);
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next === undefined) {
      this.#running--;
      return;
    }
    // The slot passes straight to the next waiter, so a newcomer can't overtake the queue.
    next.signal?.removeEventListener("abort", next.onAbort);
    next.resolve();
  }
}
