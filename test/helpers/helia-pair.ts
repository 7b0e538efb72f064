import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHeliaBlockStore } from "../../sdk/vault/block-store.js";
import type { HeliaBlockStore } from "../../sdk/vault/block-store.js";

/** Two started Helia nodes in a temporary folder, `b` dialling `a`. */
export interface HeliaPair {
  /** The publishing machine. */
  a: HeliaBlockStore;
  /** Another machine (a provider, another user's): it gets what it lacks from `a` over bitswap. */
  b: HeliaBlockStore;
  /** Stops both and removes their folder. */
  stop(): Promise<void>;
}

/**
 * Starts two real Helia nodes over TCP on loopback, the second connected to the first.
 *
 * @example
 * const { a, b, stop } = await startHeliaPair("soulmesh-files-")
 */
export async function startHeliaPair(prefix: string, options: { fetchTimeoutMs?: number } = {}): Promise<HeliaPair> {
  const root = await mkdtemp(join(tmpdir(), prefix));
  const a = createHeliaBlockStore({ dir: join(root, "a") });
  await a.start();
  const b = createHeliaBlockStore({ dir: join(root, "b"), peers: [a.multiaddrs()[0]!], fetchTimeoutMs: options.fetchTimeoutMs ?? 10_000 });
  await b.start();
  return {
    a,
    b,
    async stop() {
      await b.stop();
      await a.stop();
      await rm(root, { recursive: true, force: true });
    },
  };
}
