// Browser-safe: the creator dashboard imports this module, so no node: imports here.
import { getAddress, isAddress } from "ethers";
import type { Provider } from "ethers";
import { SoulmeshError } from "../errors.js";
import type { SoulmeshContracts } from "./contracts.js";
import { BlockTimestamps, readAdoptions, readSettlements, utcDay } from "./usage.js";
import type { Adoption, Settlement } from "./usage.js";

/** The creator address given to a report is not an address. */
export class InvalidCreatorAddressError extends SoulmeshError {
  override readonly name = "InvalidCreatorAddressError";
  constructor(readonly input: string) {
    super(`"${input}" is not an address. Give the creator's 0x-prefixed 20-byte address.`);
  }
}

/** The block range given to a report is not a usable range. */
export class InvalidBlockRangeError extends SoulmeshError {
  override readonly name = "InvalidBlockRangeError";
  constructor(
    readonly fromBlock: number,
    readonly toBlock: number | undefined,
  ) {
    super(
      `Cannot read logs from block ${fromBlock}${toBlock === undefined ? "" : ` to block ${toBlock}`}: blocks are ` +
        "whole numbers from 0 and the range must not end before it starts. Use the deployment's startBlock as fromBlock.",
    );
  }
}

/** Decoded logs of one query, covering every block from `fromBlock` to `toBlock` inclusive. */
export interface CachedLogs<T> {
  fromBlock: number;
  toBlock: number;
  logs: T[];
}

/** Decoded logs kept between reports, keyed by chain, contract, event and filter. */
export interface LogCache {
  get<T>(key: string): CachedLogs<T> | undefined;
  put<T>(key: string, entry: CachedLogs<T>): void;
}

/** What a log cache needs of a persistent storage: the Web Storage API's (`localStorage`) get and set. */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Options of {@link createLogCache}. */
export interface LogCacheOptions {
  /** Where to persist entries (`localStorage`, or the dashboard's IndexedDB-backed storage); in memory only when absent. */
  storage?: KeyValueStorage;
  /** Prefix of the storage keys (default `"soulmesh:logs:"`). */
  prefix?: string;
}

const BIGINT_TAG = "$bigint";

/**
 * JSON text for a value that may hold bigints, which plain JSON cannot carry.
 *
 * @example
 * stringifyWithBigints({ a: 1n }) // '{"a":{"$bigint":"1"}}'
 */
export function stringifyWithBigints(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? { [BIGINT_TAG]: v.toString() } : v));
}

/**
 * The value of {@link stringifyWithBigints} text, bigints restored.
 *
 * @example
 * parseWithBigints('{"a":{"$bigint":"1"}}') // { a: 1n }
 */
export function parseWithBigints(text: string): unknown {
  return JSON.parse(text, (_k, v: unknown) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      const keys = Object.keys(v);
      const tagged = (v as Record<string, unknown>)[BIGINT_TAG];
      if (keys.length === 1 && typeof tagged === "string") return BigInt(tagged);
    }
    return v;
  });
}

/**
 * A log cache, in memory, and persisted to `storage` when one is given (bigints survive).
 *
 * @example
 * const cache = createLogCache({ storage: window.localStorage })
 * await readCreatorReport({ contracts, creator, fromBlock: deployment.startBlock, cache })
 */
export function createLogCache(options: LogCacheOptions = {}): LogCache {
  const prefix = options.prefix ?? "soulmesh:logs:";
  const memory = new Map<string, CachedLogs<unknown>>();
  return {
    get<T>(key: string): CachedLogs<T> | undefined {
      let entry = memory.get(key);
      if (entry === undefined && options.storage) {
        const text = options.storage.getItem(prefix + key);
        if (text !== null) {
          try {
            entry = parseWithBigints(text) as CachedLogs<unknown>;
            memory.set(key, entry);
          } catch {
            // A corrupt entry only costs a full re-read.
          }
        }
      }
      return entry as CachedLogs<T> | undefined;
    },
    put<T>(key: string, entry: CachedLogs<T>): void {
      memory.set(key, entry);
      if (options.storage) {
        try {
          options.storage.setItem(prefix + key, stringifyWithBigints(entry));
        } catch {
          // Storage full or refused: the memory copy still serves this session.
        }
      }
    },
  };
}

/**
 * Decoded logs from `fromBlock` to `toBlock`, reading only the blocks the cache has not seen.
 *
 * @example
 * const logs = await readCached(cache, "1:0xabc:Transfer", 0, 120, (a, b) => fetchTransfers(a, b))
 */
export async function readCached<T extends { blockNumber: number }>(
  cache: LogCache | undefined,
  key: string,
  fromBlock: number,
  toBlock: number,
  fetch: (from: number, to: number) => Promise<T[]>,
): Promise<T[]> {
  const hit = cache?.get<T>(key);
  // Only a hit that starts at or before `fromBlock` and leaves no gap up to it can be extended.
  const usable = hit !== undefined && hit.fromBlock <= fromBlock && hit.toBlock >= fromBlock - 1;
  let logs = usable ? hit.logs : [];
  if (!usable || hit.toBlock < toBlock) {
    const start = usable ? hit.toBlock + 1 : fromBlock;
    logs = [...logs, ...(await fetch(start, toBlock))];
    cache?.put<T>(key, { fromBlock: usable ? hit.fromBlock : fromBlock, toBlock, logs });
  }
  return logs.filter((l) => l.blockNumber >= fromBlock && l.blockNumber <= toBlock);
}

async function chunked<T>(
  from: number,
  to: number,
  size: number,
  signal: AbortSignal | undefined,
  fetchChunk: (a: number, b: number) => Promise<T[]>,
): Promise<T[]> {
  const out: T[] = [];
  for (let a = from; a <= to; a += size) {
    signal?.throwIfAborted();
    out.push(...(await fetchChunk(a, Math.min(to, a + size - 1))));
  }
  return out;
}

/** One persona NFT transfer (a mint when `from` is the zero address). */
export interface PersonaTransfer {
  blockNumber: number;
  logIndex: number;
  transactionHash: string;
  personaId: bigint;
  from: string;
  to: string;
}

/**
 * A persona NFT's Transfer log as a {@link PersonaTransfer}.
 *
 * @example
 * const transfers = (await personas.queryFilter(personas.filters.Transfer(undefined, creator))).map(personaTransferOf)
 */
export function personaTransferOf(log: {
  blockNumber: number;
  index: number;
  transactionHash: string;
  args: { tokenId: bigint; from: string; to: string };
}): PersonaTransfer {
  return {
    blockNumber: log.blockNumber,
    logIndex: log.index,
    transactionHash: log.transactionHash,
    personaId: log.args.tokenId,
    from: log.args.from,
    to: log.args.to,
  };
}

/** One withdrawal of earnings. */
export interface EarningsWithdrawal {
  blockNumber: number;
  logIndex: number;
  transactionHash: string;
  to: string;
  amount: bigint;
}

function before(a: { blockNumber: number; logIndex: number }, b: { blockNumber: number; logIndex: number }): boolean {
  return a.blockNumber < b.blockNumber || (a.blockNumber === b.blockNumber && a.logIndex < b.logIndex);
}

/**
 * The settlements whose royalty the contract paid to `holder`: those settled while `holder` held the persona,
 * as its transfers tell (`transfers` must hold every transfer to and from `holder` of those personas).
 *
 * @example
 * const mine = settlementsPaidTo("0x3C44…93BC", transfers, settlements)
 */
export function settlementsPaidTo(
  holder: string,
  transfers: readonly PersonaTransfer[],
  settlements: readonly Settlement[],
): Settlement[] {
  const h = holder.toLowerCase();
  const byPersona = new Map<bigint, PersonaTransfer[]>();
  for (const t of transfers) {
    if (t.to.toLowerCase() !== h && t.from.toLowerCase() !== h) continue;
    byPersona.set(t.personaId, [...(byPersona.get(t.personaId) ?? []), t]);
  }
  for (const list of byPersona.values()) list.sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
  return settlements.filter((s) => {
    const last = byPersona.get(s.personaId)?.filter((t) => before(t, s)).at(-1);
    return last !== undefined && last.to.toLowerCase() === h;
  });
}

/** Revenue of one UTC day. */
export interface DayRevenue {
  /** `YYYY-MM-DD`, UTC. */
  day: string;
  amount: bigint;
}

/** What one provider's settlements paid the creator. */
export interface ProviderRevenue {
  provider: string;
  amount: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
}

/** One persona the creator holds or held, and what it paid them. */
export interface PersonaReport {
  personaId: bigint;
  manifestCid: string;
  /** Its holder at the report's block (royalties now go there). */
  holder: string;
  royaltyNow: bigint;
  /** A royalty change not yet in force, and when it takes effect (Unix seconds). */
  royaltyScheduled?: { value: bigint; effectiveAt: number };
  adoptionPrice: bigint;
  /** Every adoption of the persona in the range, whoever held it. */
  agentsAdopted: number;
  /** Adoption prices paid to the creator. */
  adoptionRevenue: bigint;
  /** Tokens of the settlements whose royalty went to the creator. */
  inputTokens: bigint;
  outputTokens: bigint;
  /** Royalties the contract credited to the creator, in token units. */
  revenue: bigint;
  /** Oldest day first; days without revenue are left out. */
  revenueByDay: DayRevenue[];
  /** Highest amount first. */
  topProviders: ProviderRevenue[];
}

/** Everything the creator dashboard shows, from the chain alone. */
export interface CreatorReport {
  creator: string;
  personas: PersonaReport[];
  totals: { revenue: bigint; inputTokens: bigint; outputTokens: bigint };
  /** `pending`: the escrow's `earningsOf(creator)` (royalties and any other earnings); `withdrawn`: EarningsWithdrawn sums. */
  earnings: { pending: bigint; withdrawn: bigint };
  fromBlock: number;
  /** The block every figure was read at. */
  block: number;
}

/** Options of {@link readCreatorReport}. */
export interface CreatorReportOptions {
  /** Read-only handles are enough. */
  contracts: Pick<SoulmeshContracts, "personaRegistry" | "agentRegistry" | "inferenceEscrow">;
  creator: string;
  /** First block to read; use the deployment's `startBlock`. */
  fromBlock: number;
  /** Block to read at; defaults to the latest. */
  toBlock?: number;
  /** Keeps decoded logs so that the next report reads only newer blocks. */
  cache?: LogCache;
  /** Blocks per `eth_getLogs` call (default 10,000). */
  chunkSize?: number;
  signal?: AbortSignal;
}

function sum<T>(xs: readonly T[], f: (x: T) => bigint): bigint {
  return xs.reduce((a, x) => a + f(x), 0n);
}

function byAmountDesc(a: { amount: bigint }, b: { amount: bigint }): number {
  return a.amount > b.amount ? -1 : a.amount < b.amount ? 1 : 0;
}

function summarize(paid: readonly Settlement[]): Pick<PersonaReport, "revenue" | "inputTokens" | "outputTokens" | "revenueByDay" | "topProviders"> {
  const days = new Map<string, bigint>();
  const providers = new Map<string, ProviderRevenue>();
  for (const s of paid) {
    const day = utcDay(s.timestamp);
    days.set(day, (days.get(day) ?? 0n) + s.royaltyAmount);
    const p = providers.get(s.provider) ?? { provider: s.provider, amount: 0n, inputTokens: 0n, outputTokens: 0n };
    p.amount += s.royaltyAmount;
    p.inputTokens += s.inputTokens;
    p.outputTokens += s.outputTokens;
    providers.set(s.provider, p);
  }
  return {
    revenue: sum(paid, (s) => s.royaltyAmount),
    inputTokens: sum(paid, (s) => s.inputTokens),
    outputTokens: sum(paid, (s) => s.outputTokens),
    revenueByDay: [...days].map(([day, amount]) => ({ day, amount })).sort((a, b) => (a.day < b.day ? -1 : 1)),
    topProviders: [...providers.values()].sort((a, b) => byAmountDesc(a, b) || (a.provider < b.provider ? -1 : 1)),
  };
}

/**
 * Reads what a creator's personas earned, from logs (incrementally through `cache`) and the contracts' state
 * at one block. Royalties count for the creator only while they held the persona, as the escrow paid them.
 *
 * @example
 * const cache = createLogCache({ storage: localStorage })
 * const report = await readCreatorReport({ contracts, creator: "0x3C44…93BC", fromBlock: deployment.startBlock, cache })
 * report.personas[0].revenueByDay // [{ day: "2026-11-23", amount: 1200n }, …]
 * @throws InvalidCreatorAddressError, InvalidBlockRangeError before any request.
 */
export async function readCreatorReport(options: CreatorReportOptions): Promise<CreatorReport> {
  if (!isAddress(options.creator)) throw new InvalidCreatorAddressError(String(options.creator));
  const { fromBlock, toBlock: requestedTo, signal } = options;
  const validBlock = (n: number | undefined): boolean => n === undefined || (Number.isSafeInteger(n) && n >= 0);
  if (!validBlock(fromBlock) || !validBlock(requestedTo) || (requestedTo !== undefined && requestedTo < fromBlock)) {
    throw new InvalidBlockRangeError(fromBlock, requestedTo);
  }
  signal?.throwIfAborted();
  const creator = getAddress(options.creator);
  const { personaRegistry: personas, agentRegistry: agents, inferenceEscrow: escrow } = options.contracts;
  const provider: Provider | null | undefined = escrow.runner?.provider;
  if (!provider) throw new Error("the escrow handle needs a provider to read logs");
  const block = requestedTo ?? (await provider.getBlockNumber());
  if (block < fromBlock) throw new InvalidBlockRangeError(fromBlock, block);
  const size = Math.max(1, options.chunkSize ?? 10_000);
  const [{ chainId }, personasAt, escrowAt] = await Promise.all([
    provider.getNetwork(),
    personas.getAddress(),
    escrow.getAddress(),
  ]);
  const agentsAt = await agents.getAddress();
  const key = (contract: string, event: string, filter: string): string =>
    `${chainId}:${contract.toLowerCase()}:${event}:${filter.toLowerCase()}`;
  const timestamps = new BlockTimestamps(provider);
  const cached = <T extends { blockNumber: number }>(k: string, fetch: (a: number, b: number) => Promise<T[]>) =>
    readCached(options.cache, k, fromBlock, block, fetch);

  const transfersWhere = (from: string | undefined, to: string | undefined) => (a: number, b: number) =>
    chunked(a, b, size, signal, async (x, y): Promise<PersonaTransfer[]> =>
      (await personas.queryFilter(personas.filters.Transfer(from, to, undefined), x, y)).map(personaTransferOf),
    );
  const [transfersIn, transfersOut, withdrawals] = await Promise.all([
    cached(key(personasAt, "Transfer", `to=${creator}`), transfersWhere(undefined, creator)),
    cached(key(personasAt, "Transfer", `from=${creator}`), transfersWhere(creator, undefined)),
    cached(key(escrowAt, "EarningsWithdrawn", `account=${creator}`), (a, b) =>
      chunked(a, b, size, signal, async (x, y): Promise<EarningsWithdrawal[]> =>
        (await escrow.queryFilter(escrow.filters.EarningsWithdrawn(creator, undefined), x, y)).map((l) => ({
          blockNumber: l.blockNumber,
          logIndex: l.index,
          transactionHash: l.transactionHash,
          to: l.args.to,
          amount: l.args.amount,
        })),
      ),
    ),
  ]);
  const transfers = [...transfersIn, ...transfersOut];
  const ids = [...new Set(transfersIn.map((t) => t.personaId))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const at = { blockTag: block };

  const [pending, reports] = await Promise.all([
    escrow.earningsOf(creator, at),
    Promise.all(
      ids.map(async (personaId): Promise<PersonaReport> => {
        const [settlements, adoptions, record, schedule, holder] = await Promise.all([
          cached<Settlement>(key(escrowAt, "VoucherSettled", `persona=${personaId}`), (a, b) =>
            readSettlements(escrow, { fromBlock: a, toBlock: b, chunkSize: size, signal }, { personaId }, timestamps),
          ),
          cached<Adoption>(key(agentsAt, "AgentMinted", `persona=${personaId}`), (a, b) =>
            readAdoptions(agents, { fromBlock: a, toBlock: b, chunkSize: size, signal }, personaId, timestamps),
          ),
          personas.personaOf(personaId, at),
          personas.royaltyScheduleOf(personaId, at),
          personas.ownerOf(personaId, at),
        ]);
        const [current, next, effectiveAt] = schedule;
        const paid = settlementsPaidTo(creator, transfers, settlements);
        return {
          personaId,
          manifestCid: record.manifestCid,
          holder,
          royaltyNow: current,
          ...(effectiveAt !== 0n ? { royaltyScheduled: { value: next, effectiveAt: Number(effectiveAt) } } : {}),
          adoptionPrice: record.adoptionPrice,
          agentsAdopted: adoptions.length,
          adoptionRevenue: sum(
            adoptions.filter((a) => a.holder.toLowerCase() === creator.toLowerCase()),
            (a) => a.adoptionPrice,
          ),
          ...summarize(paid),
        };
      }),
    ),
  ]);
  return {
    creator,
    personas: reports,
    totals: {
      revenue: sum(reports, (p) => p.revenue),
      inputTokens: sum(reports, (p) => p.inputTokens),
      outputTokens: sum(reports, (p) => p.outputTokens),
    },
    earnings: { pending, withdrawn: sum(withdrawals, (w) => w.amount) },
    fromBlock,
    block,
  };
}
