/**
 * The provider's on-chain record in the ProviderRegistry: registered (stake approved and locked) when absent,
 * updated when the peer id, addresses, models or prices changed, left alone when equal, so that a restart
 * with the same setup costs no transaction.
 */
import { getAddress, isHexString } from "ethers";
import type { ContractTransactionResponse } from "ethers";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
import { readProviderRecord as readRecord, type ProviderRecord } from "../../sdk/chain/providers.js";
import { InsufficientStakeTokensError, InvalidProviderRecordError, StakeBelowMinimumError } from "./errors.js";

/** The registry's limits (ProviderRegistry.sol constants). */
export const REGISTRY_LIMITS = { maxMultiaddrs: 16, maxModels: 32, maxAddressBytes: 256 } as const;

/** A provider's record as the registry holds it (the SDK's ProviderRecord). */
export type OnChainProvider = ProviderRecord;

export interface EnsureRegisteredOptions {
  /** Connected to the provider's signer: it registers, pays the gas and stakes. */
  contracts: SoulmeshContracts;
  peerId: string;
  multiaddrs: readonly string[];
  /** SHA-256 of each model file served (0x-prefixed). */
  modelHashes: readonly string[];
  /** Token units per million tokens. */
  prices: { input: bigint; output: bigint };
  /**
   * The stake to hold: locked on registration (default the registry's minimum), and topped up to when an
   * already registered provider holds less (e.g. after unbonding).
   */
  stake?: bigint;
  signal?: AbortSignal;
  /** One line per transaction sent, for progress output. */
  onProgress?: (message: string) => void;
}

export interface RegistrationResult {
  action: "registered" | "updated" | "unchanged";
  txHashes: string[];
  /** The record after the call. */
  record: OnChainProvider;
  minStake: bigint;
}

/**
 * The registry's record of `address`, or undefined when it is not registered.
 *
 * @example
 * const record = await readProviderRecord(connectContracts(deployment, rpc), wallet.address)
 */
export function readProviderRecord(
  contracts: Pick<SoulmeshContracts, "providerRegistry">,
  address: string,
): Promise<OnChainProvider | undefined> {
  return readRecord(contracts.providerRegistry, address);
}

/**
 * The multiaddrs worth announcing, within the registry's limits: deduplicated, at most 16, each at most 256
 * bytes, loopback and private ones kept (a devnet or a LAN needs them).
 *
 * @example
 * announceableMultiaddrs(host.multiaddrs().map(String))
 */
export function announceableMultiaddrs(multiaddrs: readonly string[]): string[] {
  const seen = new Set<string>();
  for (const ma of multiaddrs) {
    if (ma.length === 0 || Buffer.byteLength(ma) > REGISTRY_LIMITS.maxAddressBytes) continue;
    seen.add(ma);
  }
  return [...seen].slice(0, REGISTRY_LIMITS.maxMultiaddrs);
}

/**
 * Makes the registry hold this provider's record: registers it (approving the stake first) when absent,
 * updates it when the peer id, addresses, models or prices differ (addresses and models compared as sets),
 * tops the stake up when it is below `stake`, and sends nothing when all is equal.
 *
 * @example
 * const { action, txHashes } = await ensureProviderRegistered({
 *   contracts: connectContracts(deployment, wallet), peerId: host.peerId.toString(),
 *   multiaddrs: host.multiaddrs().map(String), modelHashes: [model.sha256], prices: { input: 500_000n, output: 1_500_000n },
 * })
 * @throws StakeBelowMinimumError, InsufficientStakeTokensError (the wallet lacks tokens), InvalidProviderRecordError,
 * ContractRevertError (other reverts, decoded).
 */
export async function ensureProviderRegistered(options: EnsureRegisteredOptions): Promise<RegistrationResult> {
  const { contracts, signal } = options;
  const registry = contracts.providerRegistry;
  const runner = registry.runner;
  if (runner === null || typeof (runner as { getAddress?: unknown }).getAddress !== "function") {
    throw new TypeError("ensureProviderRegistered needs contracts connected to the provider's signer");
  }
  const address = getAddress(await (runner as unknown as { getAddress(): Promise<string> }).getAddress());
  const wanted = normalize(options);
  const minStake = await registry.minStake();
  const stake = options.stake ?? minStake;
  if (stake < minStake) throw new StakeBelowMinimumError(stake, minStake, Number(await contracts.token.decimals()));
  signal?.throwIfAborted();

  const txHashes: string[] = [];
  const send = async (what: string, tx: Promise<ContractTransactionResponse>): Promise<void> => {
    const sent = await withRevertDecoding(tx);
    txHashes.push(sent.hash);
    options.onProgress?.(`${what} (tx ${sent.hash})`);
    await withRevertDecoding(sent.wait());
  };
  const approve = async (amount: bigint): Promise<void> => {
    const balance = await contracts.token.balanceOf(address);
    if (balance < amount) throw new InsufficientStakeTokensError(address, amount, balance);
    const spender = await registry.getAddress();
    if ((await contracts.token.allowance(address, spender)) < amount) {
      signal?.throwIfAborted();
      await send(`approved ${amount} stake token units`, contracts.token.approve(spender, amount));
    }
  };

  const current = await readProviderRecord(contracts, address);
  if (current === undefined) {
    await approve(stake);
    signal?.throwIfAborted();
    await send(
      `registered ${address} with a stake of ${stake}`,
      registry.register(wanted.peerId, wanted.multiaddrs, wanted.modelHashes, wanted.prices.input, wanted.prices.output, stake),
    );
    return { action: "registered", txHashes, record: (await readProviderRecord(contracts, address))!, minStake };
  }

  let changed = false;
  if (!sameRecord(current, wanted)) {
    signal?.throwIfAborted();
    await send(
      `updated the record of ${address}`,
      registry.update(wanted.peerId, wanted.multiaddrs, wanted.modelHashes, wanted.prices.input, wanted.prices.output),
    );
    changed = true;
  }
  if (current.stake < stake) {
    const topUp = stake - current.stake;
    await approve(topUp);
    signal?.throwIfAborted();
    await send(`added ${topUp} to the stake`, registry.addStake(topUp));
    changed = true;
  }
  if (!changed) return { action: "unchanged", txHashes, record: current, minStake };
  return { action: "updated", txHashes, record: (await readProviderRecord(contracts, address))!, minStake };
}

interface WantedRecord {
  peerId: string;
  multiaddrs: string[];
  modelHashes: string[];
  prices: { input: bigint; output: bigint };
}

function normalize(options: EnsureRegisteredOptions): WantedRecord {
  const { peerId } = options;
  if (peerId.length === 0 || Buffer.byteLength(peerId) > REGISTRY_LIMITS.maxAddressBytes) {
    throw new InvalidProviderRecordError(`the peer id "${peerId}" is empty or longer than 256 bytes`);
  }
  const multiaddrs = announceableMultiaddrs(options.multiaddrs);
  if (multiaddrs.length === 0) throw new InvalidProviderRecordError("the node has no address to announce; check --listen");
  const modelHashes = [...new Set(options.modelHashes.map((h) => h.toLowerCase()))];
  if (modelHashes.length === 0) throw new InvalidProviderRecordError("no model is served");
  if (modelHashes.length > REGISTRY_LIMITS.maxModels) {
    throw new InvalidProviderRecordError(`${modelHashes.length} models are served; the registry takes at most 32`);
  }
  for (const h of modelHashes) {
    if (!isHexString(h, 32) || /^0x0{64}$/.test(h)) throw new InvalidProviderRecordError(`"${h}" is not a model SHA-256`);
  }
  const { input, output } = options.prices;
  const max = (1n << 128n) - 1n;
  if (input < 0n || output < 0n || input > max || output > max) {
    throw new InvalidProviderRecordError("prices must be whole token units per million, from 0 to 2^128 − 1");
  }
  return { peerId, multiaddrs, modelHashes, prices: { input, output } };
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}

function sameRecord(current: OnChainProvider, wanted: WantedRecord): boolean {
  return (
    current.peerId === wanted.peerId &&
    sameSet(current.multiaddrs, wanted.multiaddrs) &&
    sameSet(current.modelHashes, wanted.modelHashes) &&
    current.prices.input === wanted.prices.input &&
    current.prices.output === wanted.prices.output
  );
}
