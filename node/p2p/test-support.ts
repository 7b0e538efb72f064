// Shared fixtures of the node/p2p tests (not a test file itself).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Signer } from "ethers";
import type { EscrowRef } from "../../sdk/chain/voucher.js";
import {
  encodeVarint,
  sessionRequestTypedData,
  type SessionOpen,
  type SessionRequest,
} from "../../sdk/protocol/index.js";
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

/** What a test's session requests hold unless a case says otherwise; each file passes its own. */
export interface SessionRequestDefaults {
  payer: string;
  provider: string;
  agentId: bigint;
  personaId: bigint;
  prices: { input: bigint; output: bigint };
  /** The royalty and fee the request signs; default 200,000 per million (createPersona's default) and 0. */
  royaltyPerMillion?: bigint;
  feeBps?: bigint;
  spendingCap: bigint;
  escrow: EscrowRef;
  /** The chain's time, in seconds: the request expires `ttlSeconds` after it. */
  now: () => Promise<number>;
  ttlSeconds: number;
}

// Past any session a run before this one used, and never the same twice in a run.
let sessionNumber = BigInt(Date.now()) * 1000n;

/**
 * A session request on `defaults` with a fresh session number, `fields` overriding any of it.
 *
 * @example
 * const request = await buildSessionRequest(defaults, { chainId: "1" })
 */
export async function buildSessionRequest(
  defaults: SessionRequestDefaults,
  fields: Partial<SessionRequest> = {},
): Promise<SessionRequest> {
  return {
    payer: defaults.payer,
    provider: defaults.provider,
    agentId: defaults.agentId.toString(),
    personaId: defaults.personaId.toString(),
    session: (++sessionNumber).toString(),
    priceInputPerMillion: defaults.prices.input.toString(),
    priceOutputPerMillion: defaults.prices.output.toString(),
    royaltyPerMillion: (defaults.royaltyPerMillion ?? 200_000n).toString(),
    feeBps: (defaults.feeBps ?? 0n).toString(),
    spendingCap: defaults.spendingCap.toString(),
    expiry: ((await defaults.now()) + defaults.ttlSeconds).toString(),
    chainId: defaults.escrow.chainId.toString(),
    escrow: defaults.escrow.address,
    ...fields,
  };
}

/**
 * The session.open of `request` signed by `signer`, whoever that is: it signs the typed data directly, since
 * signSessionRequest refuses to forge and these tests must.
 *
 * @example
 * const forged = await signedSessionOpen(request, stranger)
 */
export async function signedSessionOpen(
  request: SessionRequest,
  signer: Signer,
  extras: { adapterCid?: string; stateKey?: string } = {},
): Promise<SessionOpen> {
  const { domain, types, value } = sessionRequestTypedData(request);
  return {
    type: "session.open",
    request,
    signature: await signer.signTypedData(domain, types, value),
    ...(extras.adapterCid !== undefined && { adapterCid: extras.adapterCid }),
    ...(extras.stateKey !== undefined && { stateKey: extras.stateKey }),
  };
}
