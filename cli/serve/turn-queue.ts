import { OpenAiRequestError } from "./errors.js";

/**
 * One turn at a time, the others waiting their turn in order, up to a limit: an agent answers one message
 * after the other (its memory records each turn before the next is assembled). A waiting request whose
 * client goes away leaves the line.
 *
 * @example
 * const queue = new TurnQueue(8)
 * const release = await queue.acquire(signal)
 * try { await agent.send(text) } finally { release() }
 */
export class TurnQueue {
  readonly #maxWaiting: number;
  #running = false;
  readonly #waiting: Array<() => void> = [];

  constructor(maxWaiting: number) {
    this.#maxWaiting = maxWaiting;
  }

  /** Requests waiting for the running turn. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /**
   * Waits for this request's turn; call the returned function when the turn is over.
   *
   * @throws OpenAiRequestError 429 when the line is full; the signal's reason when it aborts while waiting.
   */
  async acquire(signal: AbortSignal): Promise<() => void> {
    signal.throwIfAborted();
    if (this.#running) {
      if (this.#waiting.length >= this.#maxWaiting) {
        throw new OpenAiRequestError(
          429,
          "rate_limit_error",
          "rate_limit_exceeded",
          `The agent is answering another message and ${this.#waiting.length} more are waiting: send this one again in a moment.`,
        );
      }
      await new Promise<void>((resolve, reject) => {
        const go = (): void => {
          signal.removeEventListener("abort", leave);
          resolve();
        };
        const leave = (): void => {
          const i = this.#waiting.indexOf(go);
          if (i >= 0) this.#waiting.splice(i, 1);
          reject(signal.reason as Error);
        };
        this.#waiting.push(go);
        signal.addEventListener("abort", leave, { once: true });
      });
    }
    this.#running = true;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next !== undefined) next();
      else this.#running = false;
    };
  }
}
