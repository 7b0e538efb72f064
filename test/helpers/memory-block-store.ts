import type { CID } from "multiformats/cid";
import type { BlockStore } from "../../sdk/vault/types.js";

/**
 * A BlockStore in memory for unit tests of the vault's layout (the Helia and Kubo stores have their own
 * tests): it counts the bytes of blocks newly written, and tests may reach into `blocks` to tamper.
 *
 * @example
 * const store = new MemoryBlockStore()
 * await writeCommit({ store, agent, key }, undefined, { turns })
 */
export class MemoryBlockStore implements BlockStore {
  readonly blocks = new Map<string, Uint8Array>();
  written = 0;

  async put(cid: CID, bytes: Uint8Array): Promise<void> {
    if (!this.blocks.has(cid.toString())) this.written += bytes.length;
    this.blocks.set(cid.toString(), bytes);
  }

  async get(cid: CID): Promise<Uint8Array> {
    const bytes = this.blocks.get(cid.toString());
    if (bytes === undefined) throw new Error(`no block ${cid}`);
    return bytes;
  }

  async has(cid: CID): Promise<boolean> {
    return this.blocks.has(cid.toString());
  }

  async start(): Promise<void> {}
  async stop(): Promise<void> {}
}
