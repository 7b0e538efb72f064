// Shared fixtures of the node/p2p tests (not a test file itself).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeVarint } from "../../sdk/protocol/index.js";
import { createProviderHost, type ProviderHost, type ProviderHostOptions } from "./host.js";
import type { QuoteFacts } from "./quote.js";
export { prng } from "../../test/helpers/prng.js";
import { prng } from "../../test/helpers/prng.js";

export const MODEL_A = `0x${"ab".repeat(32)}`;
export const MODEL_B = `0x${"cd".repeat(32)}`;
export const ADAPTER_A = `0x${"01".repeat(32)}`;

export const FACTS: QuoteFacts = {
  provider: `0x${"11".repeat(20)}`,
  models: [MODEL_A, MODEL_B],
  cachedAdapters: [ADAPTER_A],
  priceInputPerMillion: "100",
  priceOutputPerMillion: "300",
  queueLength: 2,
  maxTokens: 4096,
};

/** Temp folders and hosts that `cleanup()` stops and removes. */
export class Fixture {
  readonly hosts: ProviderHost[] = [];
  readonly dirs: string[] = [];

  async dir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), "soulmesh-p2p-"));
    this.dirs.push(dir);
    return dir;
  }

  async host(options: Partial<ProviderHostOptions> = {}): Promise<ProviderHost> {
    const host = await createProviderHost({ dataDir: options.dataDir ?? (await this.dir()), ...options });
    this.hosts.push(host);
    await host.start();
    return host;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.hosts.splice(0).map((h) => h.stop().catch(() => {})));
    await Promise.all(this.dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  }
}


/** `body` behind its varint length prefix, whatever the body holds: for sending malformed frames. */
export function rawFrame(body: Uint8Array): Uint8Array {
  const prefix = encodeVarint(body.length);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix);
  out.set(body, prefix.length);
  return out;
}

/** A frame of `value`'s JSON, unchecked by any schema. */
export const rawJsonFrame = (value: unknown): Uint8Array => rawFrame(new TextEncoder().encode(JSON.stringify(value)));
