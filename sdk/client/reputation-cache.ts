/**
 * Providers' settled history, read from the escrow's `VoucherSettled` logs once: a cache keeps what each payer
 * paid each provider and the block it has read up to (its cursor, with that block's hash), and each refresh
 * reads only the blocks after the cursor. A persistence hook (a file in the CLI's home) keeps the cursor across
 * runs. The cache is keyed by chain id, escrow address and first block, and a cursor whose block hash the chain
 * no longer has (a devnet started again with the same addresses, a reorg) makes it read everything again.
 *
 * What reputation is, and why (attack 7 of issue 14: 40 zero-value self-settlements outranked real usage):
 * anything a provider can do alone on chain, it can do to itself. Counting settled vouchers or distinct payer
 * addresses is free to fake (made-up wallets, vouchers at price 0 need no lane, and only the provider settles).
 * What is not free is value: a payer must commit tokens to a lane before a settlement can move them. So the
 * standing of a provider is the value (provider share + royalty + fee) paid to it by distinct payers, each
 * payer counted only once it paid at least `minPayerPaid` and for at most `payerCap`:
 * - zero-value settlements and dust count for nothing;
 * - a payer's contribution is capped, so that standing grows with the number of real customers rather than with
 *   one wallet cycling a large sum (a provider paying itself needs many funded wallets, each its own deposit,
 *   commit and settlement transactions);
 * - the ranking reads standing on a log scale, so doubling it takes twice the value.
 * A provider paying itself gets its own share back (and the royalty, if it owns the persona), but not the
 * protocol fee, nor the gas of a deposit, a commit and a settlement per made-up payer, and it must hold the
 * value in lanes meanwhile: faking standing S takes at least S / payerCap funded wallets and S of capital, and
 * costs fee × S plus their gas. That cannot be made impossible without identities; it is made to cost money in
 * proportion to what it buys, and reputation stays one factor of the ranking, beside price and latency.
 */
import { getAddress, type EventLog, type Log } from "ethers";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { InferenceEscrow } from "../chain/contracts.js";

/** A provider's settled history: what payers actually paid it on chain. */
export interface Reputation {
  /** Settlements that moved value; zero-value ones are ignored. */
  settledVouchers: number;
  /** Distinct payers among those settlements. */
  payers: number;
  /** Distinct payers that paid at least the policy's `minPayerPaid`: those that count for standing. */
  fundedPayers: number;
  /** The provider's share of every settled voucher, in token units. */
  paidToProvider: bigint;
  /** Full price of every settled voucher (provider share, royalty and fee), in token units. */
  paid: bigint;
  /**
   * Value paid by funded payers, each payer's contribution capped at the policy's `payerCap`, in token units:
   * what the ranking reads (on a log scale). See the module's header for why.
   */
  standing: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
}

export const EMPTY_REPUTATION: Reputation = Object.freeze({
  settledVouchers: 0,
  payers: 0,
  fundedPayers: 0,
  paidToProvider: 0n,
  paid: 0n,
  standing: 0n,
  inputTokens: 0n,
  outputTokens: 0n,
});

/** How settlements become standing, in token units (the defaults are for a 6-decimal token such as tUSD). */
export interface ReputationPolicy {
  /** A payer counts only once it has paid the provider at least this much. Default 10,000 (0.01 tUSD). */
  minPayerPaid: bigint;
  /** The most one payer adds to a provider's standing. Default 5,000,000 (5 tUSD). */
  payerCap: bigint;
}

export const DEFAULT_REPUTATION_POLICY: ReputationPolicy = Object.freeze({ minPayerPaid: 10_000n, payerCap: 5_000_000n });

/** What a provider's settlements add up to, per payer: the cache's state, from which any policy's reputation follows. */
export interface ProviderLedger {
  settledVouchers: number;
  paidToProvider: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  /** Full value paid, by checksummed payer address. */
  payers: Map<string, bigint>;
}

/** One `VoucherSettled` log, as the cache folds it. */
export interface SettlementEntry {
  provider: string;
  payer: string;
  providerAmount: bigint;
  royaltyAmount: bigint;
  feeAmount: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
}

/**
 * Adds settlements to ledgers (by checksummed provider address). A settlement that moved no value is
 * skipped: it proves nothing and costs its maker only gas.
 *
 * @example
 * foldSettlements(ledgers, entries)
 */
export function foldSettlements(ledgers: Map<string, ProviderLedger>, entries: Iterable<SettlementEntry>): void {
  for (const e of entries) {
    const value = e.providerAmount + e.royaltyAmount + e.feeAmount;
    if (value === 0n) continue;
    const provider = getAddress(e.provider);
    const payer = getAddress(e.payer);
    let ledger = ledgers.get(provider);
    if (ledger === undefined) {
      ledger = { settledVouchers: 0, paidToProvider: 0n, inputTokens: 0n, outputTokens: 0n, payers: new Map() };
      ledgers.set(provider, ledger);
    }
    ledger.settledVouchers += 1;
    ledger.paidToProvider += e.providerAmount;
    ledger.inputTokens += e.inputTokens;
    ledger.outputTokens += e.outputTokens;
    ledger.payers.set(payer, (ledger.payers.get(payer) ?? 0n) + value);
  }
}

/**
 * A provider's reputation from its ledger under a policy.
 *
 * @example
 * reputationOf(ledger).standing // value paid by funded payers, each capped
 */
export function reputationOf(ledger: ProviderLedger, policy: ReputationPolicy = DEFAULT_REPUTATION_POLICY): Reputation {
  let paid = 0n;
  let standing = 0n;
  let fundedPayers = 0;
  for (const value of ledger.payers.values()) {
    paid += value;
    if (value < policy.minPayerPaid) continue;
    fundedPayers += 1;
    standing += value < policy.payerCap ? value : policy.payerCap;
  }
  return {
    settledVouchers: ledger.settledVouchers,
    payers: ledger.payers.size,
    fundedPayers,
    paidToProvider: ledger.paidToProvider,
    paid,
    standing,
    inputTokens: ledger.inputTokens,
    outputTokens: ledger.outputTokens,
  };
}

function checkPolicy(policy: ReputationPolicy): ReputationPolicy {
  if (policy.minPayerPaid < 1n) throw new RangeError("minPayerPaid must be at least 1 token unit: a payer paying nothing proves nothing");
  if (policy.payerCap < policy.minPayerPaid) throw new RangeError("payerCap must be at least minPayerPaid");
  return policy;
}

function isEventLog(log: Log | EventLog): log is EventLog {
  return "args" in log;
}

/** The range of blocks read and the settlements found there. */
export interface LogsReadDetail {
  fromBlock: number;
  toBlock: number;
  settlements: number;
}

/**
 * Reads the `VoucherSettled` logs of blocks `fromBlock`..`toBlock` in chunks of `chunkSize` blocks.
 *
 * @example
 * const entries = await readSettlementEntries(escrow, 0, await provider.getBlockNumber())
 */
export async function readSettlementEntries(
  escrow: InferenceEscrow,
  fromBlock: number,
  toBlock: number,
  options: { chunkSize?: number; signal?: AbortSignal } = {},
): Promise<SettlementEntry[]> {
  const chunk = Math.max(1, Math.floor(options.chunkSize ?? 10_000));
  const filter = escrow.filters.VoucherSettled();
  const out: SettlementEntry[] = [];
  for (let from = fromBlock; from <= toBlock; from += chunk) {
    options.signal?.throwIfAborted();
    const logs = await escrow.queryFilter(filter, from, Math.min(toBlock, from + chunk - 1));
    for (const log of logs) {
      if (!isEventLog(log)) continue;
      const a = log.args;
      out.push({
        provider: a.provider,
        payer: a.payer,
        providerAmount: a.providerAmount,
        royaltyAmount: a.royaltyAmount,
        feeAmount: a.feeAmount,
        inputTokens: a.inputTokens,
        outputTokens: a.outputTokens,
      });
    }
  }
  return out;
}

// ------------------------------------------------------------------ persistence

const BIG = z.string().regex(/^\d{1,78}$/);
const ADDRESS = z.string().regex(/^0x[0-9a-fA-F]{40}$/);

const SnapshotSchema = z.strictObject({
  format: z.literal("soulmesh-reputation/1"),
  chainId: BIG,
  escrow: ADDRESS,
  fromBlock: z.number().int().nonnegative(),
  cursor: z.strictObject({ block: z.number().int().nonnegative(), hash: z.string().regex(/^0x[0-9a-fA-F]{64}$/) }),
  providers: z.record(
    ADDRESS,
    z.strictObject({
      settledVouchers: z.number().int().nonnegative(),
      paidToProvider: BIG,
      inputTokens: BIG,
      outputTokens: BIG,
      payers: z.record(ADDRESS, BIG),
    }),
  ),
});

/** The cache's state for one deployment, as JSON: what a {@link ReputationStore} keeps. */
export type ReputationSnapshot = z.infer<typeof SnapshotSchema>;

/**
 * Where a cache keeps its snapshots between runs. `load` returns what `save` was given for the key (or anything
 * else: it is validated, and thrown away when it does not parse); undefined when there is none.
 */
export interface ReputationStore {
  load(key: string, options?: { signal?: AbortSignal }): Promise<unknown>;
  save(key: string, snapshot: ReputationSnapshot): Promise<void>;
}

/**
 * A store of one JSON file per deployment in `dir` (e.g. `<home>/cache/reputation`), written atomically.
 *
 * @example
 * const cache = new ReputationCache({ store: fileReputationStore(join(home, "cache", "reputation")) })
 */
export function fileReputationStore(dir: string): ReputationStore {
  // Keys are made by the cache from numbers and addresses; anything else is refused rather than used as a path.
  const file = (key: string) => {
    if (!/^[0-9a-zA-Z-]{1,200}$/.test(key)) throw new RangeError(`not a reputation cache key: ${JSON.stringify(key)}`);
    return join(dir, `${key}.json`);
  };
  return {
    async load(key, options = {}) {
      options.signal?.throwIfAborted();
      let text: string;
      try {
        text = await readFile(file(key), "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
      try {
        return JSON.parse(text) as unknown;
      } catch {
        // A torn or edited file: start over from the logs.
        return undefined;
      }
    },
    async save(key, snapshot) {
      const path = file(key);
      await mkdir(dir, { recursive: true });
      const temp = `${path}.${process.pid}.${Date.now()}.tmp`;
      try {
        await writeFile(temp, JSON.stringify(snapshot));
        await rename(temp, path);
      } catch (err) {
        await rm(temp, { force: true });
        throw err;
      }
    },
  };
}

// ------------------------------------------------------------------ the cache

interface DeploymentState {
  chainId: bigint;
  escrow: string;
  fromBlock: number;
  /** The last block folded in, and its hash; undefined before the first read. */
  cursor: { block: number; hash: string } | undefined;
  ledgers: Map<string, ProviderLedger>;
}

export interface ReputationCacheOptions {
  /** Keeps snapshots across runs; without it the cache lives in memory only. */
  store?: ReputationStore;
  /** How settlements become standing. Default {@link DEFAULT_REPUTATION_POLICY}. */
  policy?: Partial<ReputationPolicy>;
  /** Blocks per `eth_getLogs` call, for nodes that cap ranges. Default 10,000. */
  chunkSize?: number;
}

export interface ReadCachedReputationOptions {
  /** First block to read; the deployment's `startBlock`. Default 0. */
  fromBlock?: number;
  /** Instead of the cache's own policy, for this read (the cache keeps per-payer totals: any policy applies). */
  policy?: Partial<ReputationPolicy>;
  signal?: AbortSignal;
}

/** Events of a {@link ReputationCache}. */
export interface ReputationCacheEvents {
  /** New blocks were read (only those after the cursor). */
  "logs:read": CustomEvent<LogsReadDetail>;
  /** The cached state was thrown away and the logs are read again from `fromBlock`. */
  "cache:reset": CustomEvent<{ key: string; reason: string }>;
  /** The store failed to save or load a snapshot; the cache goes on in memory. */
  "store:failed": CustomEvent<{ key: string; error: unknown }>;
}

/**
 * Reputation of every provider, kept up to date by reading only new blocks. Share one per process (and back it
 * with a file store in the CLI): every chat's provider refresh then costs one `eth_getLogs` over the blocks
 * since the last.
 *
 * @example
 * const cache = new ReputationCache({ store: fileReputationStore(join(home, "cache", "reputation")) })
 * const reputation = await cache.read(contracts.inferenceEscrow, { fromBlock: deployment.startBlock, signal })
 * reputation.get(provider)?.standing ?? 0n
 */
export class ReputationCache extends EventTarget {
  readonly policy: ReputationPolicy;
  readonly #store: ReputationStore | undefined;
  readonly #chunkSize: number;
  readonly #states = new Map<string, DeploymentState>();
  /** One refresh per deployment at a time: concurrent readers share it. */
  readonly #inflight = new Map<string, Promise<DeploymentState>>();

  constructor(options: ReputationCacheOptions = {}) {
    super();
    this.policy = checkPolicy({ ...DEFAULT_REPUTATION_POLICY, ...options.policy });
    this.#store = options.store;
    this.#chunkSize = Math.max(1, Math.floor(options.chunkSize ?? 10_000));
  }

  override addEventListener<K extends keyof ReputationCacheEvents>(
    type: K,
    listener: ((event: ReputationCacheEvents[K]) => void) | null,
    options?: AddEventListenerOptions | boolean,
  ): void;
  override addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: AddEventListenerOptions | boolean): void;
  override addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: AddEventListenerOptions | boolean): void {
    super.addEventListener(type, listener, options);
  }

  /**
   * The key of a deployment's state (and its file in a file store).
   *
   * @example
   * ReputationCache.keyOf(31337n, escrowAddress, 0) // "31337-0x5fbd…-0"
   */
  static keyOf(chainId: bigint, escrow: string, fromBlock: number): string {
    return `${chainId}-${getAddress(escrow).toLowerCase()}-${fromBlock}`;
  }

  /** The last block read for a deployment, if any. */
  cursorOf(chainId: bigint, escrow: string, fromBlock = 0): number | undefined {
    return this.#states.get(ReputationCache.keyOf(chainId, escrow, fromBlock))?.cursor?.block;
  }

  /**
   * Reads the blocks since the cursor (all of them the first time, or after a reset) and returns every
   * provider's reputation, keyed by checksummed address. An abort or a failed read leaves the cache as it was.
   *
   * @example
   * const reputation = await cache.read(escrow, { fromBlock: deployment.startBlock })
   * @throws the signal's reason; the RPC's errors.
   */
  async read(escrow: InferenceEscrow, options: ReadCachedReputationOptions = {}): Promise<Map<string, Reputation>> {
    const fromBlock = options.fromBlock ?? 0;
    if (!Number.isInteger(fromBlock) || fromBlock < 0) throw new RangeError(`fromBlock must be a block number, not ${fromBlock}`);
    const policy = options.policy === undefined ? this.policy : checkPolicy({ ...this.policy, ...options.policy });
    options.signal?.throwIfAborted();
    const provider = escrow.runner?.provider;
    if (provider == null) throw new TypeError("ReputationCache.read needs an escrow handle connected to a provider (it reads logs).");
    const [network, address] = await Promise.all([provider.getNetwork(), escrow.getAddress()]);
    const key = ReputationCache.keyOf(network.chainId, address, fromBlock);
    let state: DeploymentState;
    for (;;) {
      let refresh = this.#inflight.get(key);
      const shared = refresh !== undefined;
      if (refresh === undefined) {
        refresh = this.#refresh(escrow, key, network.chainId, getAddress(address), fromBlock, options.signal).finally(() => this.#inflight.delete(key));
        this.#inflight.set(key, refresh);
      }
      try {
        state = await refresh;
        break;
      } catch (err) {
        options.signal?.throwIfAborted();
        // The refresh this call joined was aborted by its starter's signal, not ours: run one of our own.
        if (shared && err instanceof Error && err.name === "AbortError") continue;
        throw err;
      }
    }
    const out = new Map<string, Reputation>();
    for (const [p, ledger] of state.ledgers) out.set(p, reputationOf(ledger, policy));
    return out;
  }

  async #refresh(
    escrow: InferenceEscrow,
    key: string,
    chainId: bigint,
    address: string,
    fromBlock: number,
    signal: AbortSignal | undefined,
  ): Promise<DeploymentState> {
    const provider = escrow.runner!.provider!;
    let state = this.#states.get(key) ?? (await this.#load(key, chainId, address, fromBlock, signal));
    if (state?.cursor !== undefined) {
      // The chain must still hold the block the cursor names: else this is another chain under the same id and
      // address (a devnet started again) or the blocks were reorganised, and what was read may be wrong.
      const block = await provider.getBlock(state.cursor.block);
      if (block?.hash !== state.cursor.hash) {
        this.#emit("cache:reset", { key, reason: `block ${state.cursor.block} is not the one read before (another chain, or a reorganisation)` });
        state = undefined;
      }
    }
    state ??= { chainId, escrow: address, fromBlock, cursor: undefined, ledgers: new Map() };
    const head = await provider.getBlock("latest");
    if (head === null || head.hash === null) throw new Error("the RPC returned no latest block");
    const start = state.cursor === undefined ? fromBlock : state.cursor.block + 1;
    if (start > head.number) {
      this.#states.set(key, state);
      return state;
    }
    const entries = await readSettlementEntries(escrow, start, head.number, { chunkSize: this.#chunkSize, ...(signal !== undefined && { signal }) });
    // Folded into a copy and swapped in whole: a failed or aborted read changes nothing.
    const ledgers = cloneLedgers(state.ledgers);
    foldSettlements(ledgers, entries);
    const next: DeploymentState = { ...state, ledgers, cursor: { block: head.number, hash: head.hash } };
    this.#states.set(key, next);
    this.#emit("logs:read", { fromBlock: start, toBlock: head.number, settlements: entries.length });
    if (this.#store !== undefined) {
      try {
        await this.#store.save(key, toSnapshot(next));
      } catch (error) {
        this.#emit("store:failed", { key, error });
      }
    }
    return next;
  }

  async #load(key: string, chainId: bigint, escrow: string, fromBlock: number, signal: AbortSignal | undefined): Promise<DeploymentState | undefined> {
    if (this.#store === undefined) return undefined;
    let raw: unknown;
    try {
      raw = await this.#store.load(key, signal === undefined ? {} : { signal });
    } catch (error) {
      signal?.throwIfAborted();
      this.#emit("store:failed", { key, error });
      return undefined;
    }
    if (raw === undefined) return undefined;
    const parsed = SnapshotSchema.safeParse(raw);
    const s = parsed.data;
    if (s === undefined || BigInt(s.chainId) !== chainId || getAddress(s.escrow) !== escrow || s.fromBlock !== fromBlock) {
      this.#emit("cache:reset", { key, reason: "the stored snapshot is unreadable or of another deployment" });
      return undefined;
    }
    const ledgers = new Map<string, ProviderLedger>();
    for (const [p, l] of Object.entries(s.providers)) {
      ledgers.set(getAddress(p), {
        settledVouchers: l.settledVouchers,
        paidToProvider: BigInt(l.paidToProvider),
        inputTokens: BigInt(l.inputTokens),
        outputTokens: BigInt(l.outputTokens),
        payers: new Map(Object.entries(l.payers).map(([payer, v]) => [getAddress(payer), BigInt(v)])),
      });
    }
    return { chainId, escrow, fromBlock, cursor: s.cursor, ledgers };
  }

  #emit<K extends keyof ReputationCacheEvents>(type: K, detail: ReputationCacheEvents[K]["detail"]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function cloneLedgers(ledgers: Map<string, ProviderLedger>): Map<string, ProviderLedger> {
  const out = new Map<string, ProviderLedger>();
  for (const [p, l] of ledgers) out.set(p, { ...l, payers: new Map(l.payers) });
  return out;
}

function toSnapshot(state: DeploymentState): ReputationSnapshot {
  const providers: ReputationSnapshot["providers"] = {};
  for (const [p, l] of state.ledgers) {
    providers[p] = {
      settledVouchers: l.settledVouchers,
      paidToProvider: l.paidToProvider.toString(),
      inputTokens: l.inputTokens.toString(),
      outputTokens: l.outputTokens.toString(),
      payers: Object.fromEntries([...l.payers].map(([payer, v]) => [payer, v.toString()])),
    };
  }
  return {
    format: "soulmesh-reputation/1",
    chainId: state.chainId.toString(),
    escrow: state.escrow,
    fromBlock: state.fromBlock,
    cursor: state.cursor!,
    providers,
  };
}
