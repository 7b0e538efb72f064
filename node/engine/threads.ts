import { availableParallelism } from "node:os";

/**
 * The thread count the engine gives node-llama-cpp when none is configured: one core left for the
 * node's networking and I/O, at least one thread. node-llama-cpp's own default (4) oversubscribes
 * small machines: on 2 cores it was measured about 80 times slower at generation than 1 thread.
 *
 * @example
 * const context = await model.createContext({ threads: defaultThreads() })
 */
export function defaultThreads(cores: number = availableParallelism()): number {
  return Math.max(1, Math.floor(cores) - 1);
}
