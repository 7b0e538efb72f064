import type { EventLog, Log, Provider } from "ethers";
import type { AgentRegistry, InferenceEscrow } from "./contracts.js";

/** One settled voucher, as its `VoucherSettled` event tells it. */
export interface Settlement {
  blockNumber: number;
  transactionHash: string;
  logIndex: number;
  /** Unix seconds of the block. */
  timestamp: number;
  personaId: bigint;
  provider: string;
  agentId: bigint;
  payer: string;
  session: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  providerAmount: bigint;
  royaltyAmount: bigint;
  feeAmount: bigint;
}

/** One adoption, as its `AgentMinted` event tells it. */
export interface Adoption {
  blockNumber: number;
  transactionHash: string;
  logIndex: number;
  timestamp: number;
  agentId: bigint;
  personaId: bigint;
  owner: string;
  /** The persona's holder at adoption, who was paid the adoption price. */
  holder: string;
  adoptionPrice: bigint;
}

/** Where and how far to read logs. */
export interface LogRange {
  /** First block to read; use the deployment's `startBlock`. */
  fromBlock: number;
  /** Last block to read; defaults to the latest. */
  toBlock?: number;
  /** Blocks per `eth_getLogs` call, for nodes that cap ranges (default 10,000). */
  chunkSize?: number;
  signal?: AbortSignal;
  /** Called after each chunk with the last block read and the last block to read. */
  onProgress?: (done: { block: number; toBlock: number }) => void;
}

/** Filters on settlements; each one narrows the logs the node returns (they are indexed topics). */
export interface SettlementFilter {
  personaId?: bigint;
  provider?: string;
  agentId?: bigint;
}

/** Caches block timestamps so that logs of the same block cost one `eth_getBlockByNumber`. */
export class BlockTimestamps {
  readonly #provider: Provider;
  readonly #cache = new Map<number, Promise<number>>();

  constructor(provider: Provider) {
    this.#provider = provider;
  }

  /** The timestamp of block `n`, in Unix seconds. */
  get(n: number): Promise<number> {
    let ts = this.#cache.get(n);
    if (ts === undefined) {
      ts = this.#provider.getBlock(n).then((b) => {
        if (b === null) throw new Error(`block ${n} not found`);
        return b.timestamp;
      });
      ts.catch(() => this.#cache.delete(n));
      this.#cache.set(n, ts);
    }
    return ts;
  }
}

async function queryChunked<T>(
  fetchChunk: (from: number, to: number) => Promise<T[]>,
  provider: Provider,
  range: LogRange,
): Promise<T[]> {
  const toBlock = range.toBlock ?? (await provider.getBlockNumber());
  const chunk = Math.max(1, range.chunkSize ?? 10_000);
  const out: T[] = [];
  for (let from = range.fromBlock; from <= toBlock; from += chunk) {
    range.signal?.throwIfAborted();
    const to = Math.min(toBlock, from + chunk - 1);
    out.push(...(await fetchChunk(from, to)));
    range.onProgress?.({ block: to, toBlock });
  }
  return out;
}

function isEventLog(log: Log | EventLog): log is EventLog {
  return "args" in log;
}

/**
 * Reads every `VoucherSettled` event in a block range, oldest first.
 *
 * @example
 * const settlements = await readSettlements(escrow, { fromBlock: deployment.startBlock }, { personaId: 1n })
 */
export async function readSettlements(
  escrow: InferenceEscrow,
  range: LogRange,
  filter: SettlementFilter = {},
  timestamps?: BlockTimestamps,
): Promise<Settlement[]> {
  const provider = escrow.runner?.provider;
  if (!provider) throw new Error("the escrow handle needs a provider to read logs");
  const blocks = timestamps ?? new BlockTimestamps(provider);
  const eventFilter = escrow.filters.VoucherSettled(filter.personaId, filter.provider, filter.agentId);
  const logs = await queryChunked((from, to) => escrow.queryFilter(eventFilter, from, to), provider, range);
  return Promise.all(
    logs.filter(isEventLog).map(async (log) => {
      const a = log.args;
      return {
        blockNumber: log.blockNumber,
        transactionHash: log.transactionHash,
        logIndex: log.index,
        timestamp: await blocks.get(log.blockNumber),
        personaId: a.personaId,
        provider: a.provider,
        agentId: a.agentId,
        payer: a.payer,
        session: a.session,
        inputTokens: a.inputTokens,
        outputTokens: a.outputTokens,
        providerAmount: a.providerAmount,
        royaltyAmount: a.royaltyAmount,
        feeAmount: a.feeAmount,
      };
    }),
  );
}

/**
 * Reads every `AgentMinted` event (adoptions and what they paid) in a block range, oldest first.
 *
 * @example
 * const adoptions = await readAdoptions(agentRegistry, { fromBlock: deployment.startBlock }, 1n)
 */
export async function readAdoptions(
  agents: AgentRegistry,
  range: LogRange,
  personaId?: bigint,
  timestamps?: BlockTimestamps,
): Promise<Adoption[]> {
  const provider = agents.runner?.provider;
  if (!provider) throw new Error("the agent registry handle needs a provider to read logs");
  const blocks = timestamps ?? new BlockTimestamps(provider);
  const eventFilter = agents.filters.AgentMinted(undefined, personaId);
  const logs = await queryChunked((from, to) => agents.queryFilter(eventFilter, from, to), provider, range);
  return Promise.all(
    logs.filter(isEventLog).map(async (log) => ({
      blockNumber: log.blockNumber,
      transactionHash: log.transactionHash,
      logIndex: log.index,
      timestamp: await blocks.get(log.blockNumber),
      agentId: log.args.agentId,
      personaId: log.args.personaId,
      owner: log.args.owner,
      holder: log.args.holder,
      adoptionPrice: log.args.adoptionPrice,
    })),
  );
}

/** Usage and revenue of one persona or provider on one UTC day. */
export interface UsageRow {
  /** The persona id (as a decimal string) or provider address the row is about. */
  key: string;
  /** UTC day, `YYYY-MM-DD`. */
  day: string;
  settlements: number;
  inputTokens: bigint;
  outputTokens: bigint;
  providerAmount: bigint;
  royaltyAmount: bigint;
  feeAmount: bigint;
  adoptions: number;
  adoptionRevenue: bigint;
}

/**
 * The UTC day of a Unix timestamp.
 *
 * @example
 * utcDay(0) // "1970-01-01"
 */
export function utcDay(timestamp: number): string {
  return new Date(timestamp * 1000).toISOString().slice(0, 10);
}

function emptyRow(key: string, day: string): UsageRow {
  return {
    key,
    day,
    settlements: 0,
    inputTokens: 0n,
    outputTokens: 0n,
    providerAmount: 0n,
    royaltyAmount: 0n,
    feeAmount: 0n,
    adoptions: 0,
    adoptionRevenue: 0n,
  };
}

/**
 * Sums settlements (and, per persona, adoptions) by persona or provider and UTC day, sorted by key then day.
 *
 * @example
 * aggregateUsage(settlements, "persona", adoptions) // [{ key: "1", day: "2026-11-23", inputTokens: 1200n, … }]
 */
export function aggregateUsage(
  settlements: readonly Settlement[],
  by: "persona" | "provider",
  adoptions: readonly Adoption[] = [],
): UsageRow[] {
  const rows = new Map<string, UsageRow>();
  const row = (key: string, timestamp: number): UsageRow => {
    const day = utcDay(timestamp);
    const id = `${key}\u0000${day}`;
    let r = rows.get(id);
    if (!r) rows.set(id, (r = emptyRow(key, day)));
    return r;
  };
  for (const s of settlements) {
    const r = row(by === "persona" ? s.personaId.toString() : s.provider, s.timestamp);
    r.settlements += 1;
    r.inputTokens += s.inputTokens;
    r.outputTokens += s.outputTokens;
    r.providerAmount += s.providerAmount;
    r.royaltyAmount += s.royaltyAmount;
    r.feeAmount += s.feeAmount;
  }
  if (by === "persona") {
    for (const a of adoptions) {
      const r = row(a.personaId.toString(), a.timestamp);
      r.adoptions += 1;
      r.adoptionRevenue += a.adoptionPrice;
    }
  }
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return [...rows.values()].sort((a, b) => {
    const byKey =
      by === "persona" ? Number(BigInt(a.key) - BigInt(b.key)) : cmp(a.key.toLowerCase(), b.key.toLowerCase());
    return byKey !== 0 ? Math.sign(byKey) : cmp(a.day, b.day);
  });
}

/**
 * Reads settlements (and adoptions, per persona) and sums them by persona or provider and UTC day.
 *
 * @example
 * const rows = await readUsage({ escrow, agents }, "persona", { fromBlock: deployment.startBlock })
 */
export async function readUsage(
  contracts: { escrow: InferenceEscrow; agents: AgentRegistry },
  by: "persona" | "provider",
  range: LogRange,
  filter: SettlementFilter = {},
): Promise<UsageRow[]> {
  const provider = contracts.escrow.runner?.provider;
  if (!provider) throw new Error("the escrow handle needs a provider to read logs");
  const toBlock = range.toBlock ?? (await provider.getBlockNumber());
  const fixed = { ...range, toBlock };
  const timestamps = new BlockTimestamps(provider);
  const [settlements, adoptions] = await Promise.all([
    readSettlements(contracts.escrow, fixed, filter, timestamps),
    by === "persona" ? readAdoptions(contracts.agents, fixed, filter.personaId, timestamps) : Promise.resolve([]),
  ]);
  return aggregateUsage(settlements, by, adoptions);
}
