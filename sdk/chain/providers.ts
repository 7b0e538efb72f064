/**
 * Reading the ProviderRegistry: one record type for every reader (the provider deciding whether to register
 * or update, the client choosing whom to talk to, `soulmesh provider status`).
 */
import { getAddress } from "ethers";
import type { ProviderRegistry } from "./contracts.js";
import { decodeRevert } from "./revert.js";

/** A provider's record as the registry holds it. */
export interface ProviderRecord {
  /** Checksummed address: the provider's identity for sessions, receipts and vouchers. */
  address: string;
  /** libp2p peer id, as registered. */
  peerId: string;
  multiaddrs: string[];
  /** SHA-256 of each model file it serves, lower-case 0x hex. */
  modelHashes: string[];
  /** Registered prices, token units per million tokens (a quote may differ; sessions use the quote's). */
  prices: { input: bigint; output: bigint };
  stake: bigint;
  /** Stake on its way out (requested unbond). */
  unbonding: bigint;
  /** Unix seconds. */
  registeredAt: number;
  /** Registered with at least the minimum stake. */
  active: boolean;
}

/**
 * The registry's record of `address`, or undefined when it is not registered.
 *
 * @example
 * const record = await readProviderRecord(contracts.providerRegistry, wallet.address)
 */
export async function readProviderRecord(registry: ProviderRegistry, address: string): Promise<ProviderRecord | undefined> {
  let p: Awaited<ReturnType<ProviderRegistry["providerOf"]>>;
  let active: boolean;
  try {
    [p, active] = await Promise.all([registry.providerOf(address), registry.isActive(address)]);
  } catch (err) {
    if (decodeRevert(err)?.reason === "Provider__NotRegistered") return undefined;
    throw err;
  }
  return {
    address: getAddress(address),
    peerId: p.peerId,
    multiaddrs: [...p.multiaddrs],
    modelHashes: p.modelHashes.map((h) => h.toLowerCase()),
    prices: { input: p.priceInputPerMillion, output: p.priceOutputPerMillion },
    stake: p.stake,
    unbonding: p.unbonding,
    registeredAt: Number(p.registeredAt),
    active,
  };
}
