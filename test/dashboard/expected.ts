/**
 * What the dashboard must show, computed straight from the contracts' logs and views at one block, without
 * readCreatorReport: the page's figures are checked against this, so a bug shared with the report code
 * cannot hide itself.
 */
import { getAddress } from "ethers";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";

/** One persona's figures. */
export interface ExpectedPersona {
  personaId: bigint;
  holder: string;
  agentsAdopted: number;
  adoptionPrice: bigint;
  adoptionRevenue: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  revenue: bigint;
  royaltyNow: bigint;
  scheduled?: { value: bigint; effectiveAt: number };
  /** UTC day → royalty revenue. */
  byDay: Map<string, bigint>;
  /** Checksummed provider → what its settlements paid. */
  byProvider: Map<string, { amount: bigint; inputTokens: bigint; outputTokens: bigint }>;
}

/** Every figure of the dashboard for one creator at one block. */
export interface ExpectedReport {
  block: number;
  pending: bigint;
  withdrawn: bigint;
  revenue: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  agentsAdopted: number;
  personas: Map<bigint, ExpectedPersona>;
}

/** Where a log sits in the chain, to order logs of different contracts. */
interface LogPosition {
  blockNumber: number;
  index: number;
}

function isBefore(a: LogPosition, b: LogPosition): boolean {
  return a.blockNumber < b.blockNumber || (a.blockNumber === b.blockNumber && a.index < b.index);
}

/**
 * Who held a persona when a log was emitted: the recipient of the last of its Transfer logs (mint included)
 * before that log, as the escrow pays the royalty to the holder of the moment.
 *
 * @example
 * holderAt(transfers, settlementLog) // "0x3C44…93BC"
 */
export function holderAt(transfers: readonly (LogPosition & { args: { to: string } })[], log: LogPosition): string | undefined {
  let holder: string | undefined;
  let latest: LogPosition | undefined;
  for (const t of transfers) {
    if (isBefore(t, log) && (latest === undefined || isBefore(latest, t))) {
      latest = t;
      holder = getAddress(t.args.to);
    }
  }
  return holder;
}

/**
 * Reads the creator's figures at `block` from the contracts: every persona ever transferred to them (minted
 * or received), with the royalties of the settlements made while they held it, as its Transfer logs tell.
 *
 * @example
 * const want = await expectedReport(contracts, creator.address, deployment.startBlock, 123)
 */
export async function expectedReport(
  contracts: Pick<SoulmeshContracts, "personaRegistry" | "agentRegistry" | "inferenceEscrow">,
  creatorAddress: string,
  fromBlock: number,
  block: number,
): Promise<ExpectedReport> {
  const creator = getAddress(creatorAddress);
  const { personaRegistry: personas, agentRegistry: agents, inferenceEscrow: escrow } = contracts;
  const provider = escrow.runner!.provider!;
  const at = { blockTag: block };
  const timestamps = new Map<number, number>();
  const timestampOf = async (n: number): Promise<number> => {
    if (!timestamps.has(n)) timestamps.set(n, (await provider.getBlock(n))!.timestamp);
    return timestamps.get(n)!;
  };

  const received = await personas.queryFilter(personas.filters.Transfer(undefined, creator), fromBlock, block);
  const ids = [...new Set(received.map((l) => l.args.tokenId))].sort((a, b) => (a < b ? -1 : 1));
  const out = new Map<bigint, ExpectedPersona>();
  for (const personaId of ids) {
    const [record, holder, [current, next, effectiveAt]] = await Promise.all([
      personas.personaOf(personaId, at),
      personas.ownerOf(personaId, at),
      personas.royaltyScheduleOf(personaId, at),
    ]);
    const [allSettled, transfers] = await Promise.all([
      escrow.queryFilter(escrow.filters.VoucherSettled(personaId), fromBlock, block),
      personas.queryFilter(personas.filters.Transfer(undefined, undefined, personaId), fromBlock, block),
    ]);
    const settled = allSettled.filter((log) => holderAt(transfers, log) === creator);
    const adoptions = await agents.queryFilter(agents.filters.AgentMinted(undefined, personaId), fromBlock, block);
    const e: ExpectedPersona = {
      personaId,
      holder,
      agentsAdopted: adoptions.length,
      adoptionPrice: record.adoptionPrice,
      adoptionRevenue: adoptions.filter((a) => getAddress(a.args.holder) === creator).reduce((s, a) => s + a.args.adoptionPrice, 0n),
      inputTokens: 0n,
      outputTokens: 0n,
      revenue: 0n,
      royaltyNow: current,
      ...(effectiveAt === 0n ? {} : { scheduled: { value: next, effectiveAt: Number(effectiveAt) } }),
      byDay: new Map(),
      byProvider: new Map(),
    };
    for (const log of settled) {
      const a = log.args;
      e.revenue += a.royaltyAmount;
      e.inputTokens += a.inputTokens;
      e.outputTokens += a.outputTokens;
      const day = new Date((await timestampOf(log.blockNumber)) * 1000).toISOString().slice(0, 10);
      e.byDay.set(day, (e.byDay.get(day) ?? 0n) + a.royaltyAmount);
      const key = getAddress(a.provider);
      const p = e.byProvider.get(key) ?? { amount: 0n, inputTokens: 0n, outputTokens: 0n };
      p.amount += a.royaltyAmount;
      p.inputTokens += a.inputTokens;
      p.outputTokens += a.outputTokens;
      e.byProvider.set(key, p);
    }
    out.set(personaId, e);
  }
  const withdrawals = await escrow.queryFilter(escrow.filters.EarningsWithdrawn(creator), fromBlock, block);
  const all = [...out.values()];
  return {
    block,
    pending: await escrow.earningsOf(creator, at),
    withdrawn: withdrawals.reduce((s, l) => s + l.args.amount, 0n),
    revenue: all.reduce((s, p) => s + p.revenue, 0n),
    inputTokens: all.reduce((s, p) => s + p.inputTokens, 0n),
    outputTokens: all.reduce((s, p) => s + p.outputTokens, 0n),
    agentsAdopted: all.reduce((s, p) => s + p.agentsAdopted, 0),
    personas: out,
  };
}
