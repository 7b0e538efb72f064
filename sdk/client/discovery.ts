/**
 * Finding providers: their public records in the ProviderRegistry, their settled history in the escrow's
 * `VoucherSettled` events (value paid by distinct funded payers, read incrementally through a cache: see
 * reputation-cache.ts), and a dialable address for each (the registry's, else the DHT's).
 */
import type { PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import type { InferenceEscrow, ProviderRegistry } from "../chain/contracts.js";
import { readProviderRecord, type ProviderRecord } from "../chain/providers.js";
import { SoulmeshError } from "../errors.js";
import {
  DEFAULT_REPUTATION_POLICY,
  foldSettlements,
  readSettlementEntries,
  ReputationCache,
  reputationOf,
  type ProviderLedger,
  type Reputation,
  type ReputationPolicy,
} from "./reputation-cache.js";

export type { ProviderRecord };
export * from "./reputation-cache.js";

/** A provider with an address the local node has dialed successfully. */
export interface ResolvedProvider {
  record: ProviderRecord;
  peerId: PeerId;
  /**
   * Where the working address came from: the registry's record, the DHT, or addresses libp2p already knew
   * for the peer (it adds those to any dial: e.g. learnt from an earlier DHT query).
   */
  source: "registry" | "dht" | "peer-store";
}

/** Neither the registry's addresses nor the DHT led to the provider. */
export class ProviderUnreachableError extends SoulmeshError {
  override readonly name = "ProviderUnreachableError";
  constructor(
    readonly provider: string,
    readonly peerId: string,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot reach provider ${provider} (peer ${peerId}) at its registered addresses nor through the DHT; ` +
        `it may be offline. Pass bootstrap peers to createClientHost so that the DHT can find it, or pick another provider.`,
      options,
    );
  }
}

export interface ReadProvidersOptions {
  /** Only providers announcing this model (SHA-256). */
  modelSha256?: string;
  /** Keep providers below the minimum stake too. Default false. */
  includeInactive?: boolean;
  /** Addresses per `providers(offset, limit)` call. Default 100. */
  pageSize?: number;
  signal?: AbortSignal;
}

/**
 * Every provider in the registry (active ones by default), optionally only those announcing a model.
 *
 * @example
 * const records = await readProviders(contracts.providerRegistry, { modelSha256 })
 */
export async function readProviders(registry: ProviderRegistry, options: ReadProvidersOptions = {}): Promise<ProviderRecord[]> {
  const pageSize = BigInt(options.pageSize ?? 100);
  const model = options.modelSha256?.toLowerCase();
  options.signal?.throwIfAborted();
  const count = await registry.providerCount();
  const addresses: string[] = [];
  for (let offset = 0n; offset < count; offset += pageSize) {
    options.signal?.throwIfAborted();
    addresses.push(...(await registry.providers(offset, pageSize)));
  }
  const records = await Promise.all(
    addresses.map(async (address): Promise<ProviderRecord> => {
      options.signal?.throwIfAborted();
      const record = await readProviderRecord(registry, address);
      // Listed by the registry itself, so registered: a missing record is a node out of sync, not a gap.
      if (record === undefined) throw new Error(`The registry lists ${address} but has no record of it.`);
      return record;
    }),
  );
  return records.filter((r) => (options.includeInactive === true || r.active) && (model === undefined || r.modelHashes.includes(model)));
}

export interface ReadReputationOptions {
  /** First block to read; the deployment's `startBlock`. Default 0. */
  fromBlock?: number;
  /** Last block to read: a view of the past, read whole and not cached. Default: the latest, through the cache. */
  toBlock?: number;
  /** Blocks per `eth_getLogs` call, for nodes that cap ranges. Default 10,000 (a `cache`'s own setting wins). */
  chunkSize?: number;
  /**
   * Where logs already read are kept, so that a refresh reads only new blocks: default one cache shared by
   * the process (in memory); pass one backed by a file store to keep it across runs, or false to read all.
   */
  cache?: ReputationCache | false;
  /** How settlements become standing. Default the cache's policy, else {@link DEFAULT_REPUTATION_POLICY}. */
  policy?: Partial<ReputationPolicy>;
  signal?: AbortSignal;
}

let sharedCache: ReputationCache | undefined;

/**
 * The process's shared in-memory reputation cache: what {@link readReputation} uses unless told otherwise.
 *
 * @example
 * sharedReputationCache().addEventListener("logs:read", (e) => console.log(e.detail))
 */
export function sharedReputationCache(): ReputationCache {
  return (sharedCache ??= new ReputationCache());
}

/**
 * Replaces the process's shared reputation cache: the CLI backs it with a file in its home, so that each run
 * reads only the blocks since the last run, through every chat that calls {@link readReputation}.
 *
 * @example
 * setSharedReputationCache(new ReputationCache({ store: fileReputationStore(join(home, "cache", "reputation")) }))
 */
export function setSharedReputationCache(cache: ReputationCache): void {
  sharedCache = cache;
}

/**
 * The settled history of every provider that has one, keyed by checksummed address: value paid by distinct
 * funded payers, zero-value settlements ignored (see reputation-cache.ts for why). Through a cache, only the
 * blocks after its cursor are read; one pass over the escrow's `VoucherSettled` logs serves all providers.
 *
 * @example
 * const reputation = await readReputation(contracts.inferenceEscrow, { fromBlock: deployment.startBlock })
 * reputation.get(provider)?.standing ?? 0n
 */
export async function readReputation(escrow: InferenceEscrow, options: ReadReputationOptions = {}): Promise<Map<string, Reputation>> {
  const provider = escrow.runner?.provider;
  if (provider == null) throw new TypeError("readReputation needs an escrow handle connected to a provider (it reads logs).");
  const fromBlock = options.fromBlock ?? 0;
  const signal = options.signal;
  if (options.toBlock === undefined && options.cache !== false) {
    const cache = options.cache ?? sharedReputationCache();
    return await cache.read(escrow, {
      fromBlock,
      ...(options.policy !== undefined && { policy: options.policy }),
      ...(signal !== undefined && { signal }),
    });
  }
  signal?.throwIfAborted();
  const policy = { ...DEFAULT_REPUTATION_POLICY, ...options.policy };
  const toBlock = options.toBlock ?? (await provider.getBlockNumber());
  const entries = await readSettlementEntries(escrow, fromBlock, toBlock, {
    ...(options.chunkSize !== undefined && { chunkSize: options.chunkSize }),
    ...(signal !== undefined && { signal }),
  });
  const ledgers = new Map<string, ProviderLedger>();
  foldSettlements(ledgers, entries);
  const out = new Map<string, Reputation>();
  for (const [address, ledger] of ledgers) out.set(address, reputationOf(ledger, policy));
  return out;
}

/**
 * The registry's multiaddrs as dialable addresses of `peerId`: each ends in /p2p/<peerId>, so that Noise
 * proves the remote is the registered peer. Unparseable addresses, and those naming another peer, are
 * left out rather than trusted.
 *
 * @example
 * registryAddresses(record) // [Multiaddr("/ip4/10.0.0.5/tcp/4001/p2p/12D3Koo…")]
 */
export function registryAddresses(record: Pick<ProviderRecord, "peerId" | "multiaddrs">): Multiaddr[] {
  const out: Multiaddr[] = [];
  for (const text of record.multiaddrs) {
    let addr: Multiaddr;
    try {
      addr = multiaddr(text);
    } catch {
      continue;
    }
    const p2p = addr.getComponents().filter((c) => c.name === "p2p");
    if (p2p.length === 0) out.push(addr.encapsulate(`/p2p/${record.peerId}`));
    else if (p2p.length === 1 && p2p[0]!.value === record.peerId) out.push(addr);
  }
  return out;
}

export interface ResolveProviderOptions {
  /** Time for each way (registry addresses, then the DHT). Default 5 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Connects to a provider: its registered addresses first, and the DHT (peer routing by its peer id) when
 * those are empty or all fail, since a provider whose IP changed may not have updated its record yet.
 * Later requests to `peerId` reuse the connection, or the addresses now in the peer store.
 *
 * @example
 * const { peerId, source } = await resolveProvider(libp2p, record, { signal })
 * @throws ProviderUnreachableError when neither way works.
 */
export async function resolveProvider(
  libp2p: Libp2p,
  record: ProviderRecord,
  options: ResolveProviderOptions = {},
): Promise<ResolvedProvider> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const within = () => (options.signal === undefined ? AbortSignal.timeout(timeoutMs) : AbortSignal.any([options.signal, AbortSignal.timeout(timeoutMs)]));
  let peerId: PeerId;
  try {
    peerId = peerIdFromString(record.peerId);
  } catch (err) {
    throw new ProviderUnreachableError(record.address, record.peerId, { cause: err });
  }
  const errors: unknown[] = [];
  const addrs = registryAddresses(record);
  if (addrs.length > 0) {
    try {
      const connection = await libp2p.dial(addrs, { signal: within() });
      const bare = addrs.map((a) => a.decapsulateCode(421));
      const remote = connection.remoteAddr.decapsulateCode(421);
      const viaRegistry = bare.some((a) => a.equals(remote));
      if (viaRegistry) await libp2p.peerStore.merge(peerId, { multiaddrs: bare });
      return { record, peerId, source: viaRegistry ? "registry" : "peer-store" };
    } catch (err) {
      options.signal?.throwIfAborted();
      errors.push(err);
    }
  }
  try {
    const signal = within();
    // Not from the cache: a failed dial leaves the peer in the peer store with no (or dead) addresses.
    const found = await libp2p.peerRouting.findPeer(peerId, { signal, useCache: false });
    if (found.multiaddrs.length === 0) throw new Error("the DHT knows the peer but no address for it");
    await libp2p.peerStore.merge(peerId, { multiaddrs: found.multiaddrs });
    await libp2p.dial(peerId, { signal });
    return { record, peerId, source: "dht" };
  } catch (err) {
    options.signal?.throwIfAborted();
    errors.push(err);
  }
  throw new ProviderUnreachableError(record.address, record.peerId, { cause: new AggregateError(errors) });
}
