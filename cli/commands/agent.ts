import type { Command } from "commander";
import type { Log } from "ethers";
import type { AgentRegistry, SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { findEvent } from "../../sdk/chain/receipt.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
import { readSettlements } from "../../sdk/chain/usage.js";
import { SoulmeshError } from "../../sdk/errors.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import { sendTransaction } from "../transactions.js";
import { money, NoGasError, parseAmountOrZero, showMoney, tokenInfo } from "./escrow.js";
import type { TokenInfo } from "./escrow.js";
import {
  optionalStore,
  parseAddressOption,
  parseId,
  requirePersona,
  tryManifest,
} from "./persona.js";

/** Blocks per log query, for nodes that cap ranges. */
const LOG_CHUNK = 10_000;

/** No agent has this id. */
export class UnknownAgentError extends SoulmeshError {
  override readonly name = "UnknownAgentError";
  constructor(
    readonly agentId: bigint,
    readonly total: bigint,
  ) {
    super(
      total === 0n
        ? `No agent ${agentId}: none is minted yet. Adopt a persona with \`soulmesh agent mint --persona ID\`.`
        : `No agent ${agentId}: ids go from 1 to ${total}. See yours with \`soulmesh agent list\`.`,
    );
  }
}

/** The persona's adoption price is above what the user agreed to pay (--max-price). Nothing was sent. */
export class AdoptionPriceAboveMaxError extends SoulmeshError {
  override readonly name = "AdoptionPriceAboveMaxError";
  constructor(
    readonly personaId: bigint,
    readonly price: bigint,
    readonly maxPrice: bigint,
    token: TokenInfo,
  ) {
    super(
      `Adopting persona ${personaId} costs ${showMoney(price, token)}, above your --max-price of ${showMoney(maxPrice, token)}. ` +
        `Raise --max-price to ${formatUnitsFixed(price, token.decimals)} if that is fine, or leave it out to pay the current price.`,
    );
  }
}

/** The wallet holds fewer tokens than the adoption price. Nothing was sent. */
export class InsufficientTokensForAdoptionError extends SoulmeshError {
  override readonly name = "InsufficientTokensForAdoptionError";
  constructor(
    readonly address: string,
    readonly price: bigint,
    readonly available: bigint,
    token: TokenInfo,
    devnet: boolean,
  ) {
    super(
      `Adopting costs ${showMoney(price, token)} but ${address} holds ${showMoney(available, token)} in its wallet ` +
        "(tokens deposited in escrow do not count: withdraw them with `soulmesh withdraw request`). " +
        (devnet
          ? "On the devnet each dev account holds 10000 tUSD: use one with --account user, or send tokens to this one."
          : `Get ${token.symbol} (token ${token.address}) into this account first.`),
    );
  }
}

// -------------------------------------------------------------------------------------------------- mint

function agentMintedArgs(registry: AgentRegistry, logs: readonly Log[]): Record<string, unknown> | undefined {
  return findEvent(registry, logs, "AgentMinted")?.args.toObject() as Record<string, unknown> | undefined;
}

async function runMint(ctx: CommandContext, opts: { persona: string; maxPrice?: string }): Promise<void> {
  const personaId = parseId(opts.persona, "persona");
  const read = await ctx.contracts();
  const token = await tokenInfo(read);
  const maxPrice = opts.maxPrice === undefined ? undefined : parseAmountOrZero(opts.maxPrice, token.decimals);
  await requirePersona(read.personaRegistry, personaId);
  const [holder, price] = await read.personaRegistry.adoptionTermsOf(personaId);
  if (maxPrice !== undefined && price > maxPrice) throw new AdoptionPriceAboveMaxError(personaId, price, maxPrice, token);

  const signer = await ctx.signer();
  const c = await ctx.contracts(signer);
  const registryAddress = await c.agentRegistry.getAddress();
  const [balance, allowance, native] = await Promise.all([
    c.token.balanceOf(signer.address),
    c.token.allowance(signer.address, registryAddress),
    signer.provider!.getBalance(signer.address),
  ]);
  if (balance < price) {
    throw new InsufficientTokensForAdoptionError(signer.address, price, balance, token, (await ctx.deployment()).devAccounts !== undefined);
  }
  if (native === 0n) throw new NoGasError(signer.address);

  const txHashes: string[] = [];
  if (price > 0n && allowance < price) {
    const r = await sendTransaction(ctx, `approving the agent registry to take the adoption price, ${showMoney(price, token)}…`, () =>
      c.token.approve(registryAddress, price),
    );
    txHashes.push(r.hash);
  }
  let receipt;
  try {
    // The current price as the maximum unless told otherwise: a price raised after we read it makes the mint
    // revert instead of charging more than was shown.
    receipt = await sendTransaction(ctx, `adopting persona ${personaId} for ${price === 0n ? "free" : showMoney(price, token)}…`, () =>
      c.agentRegistry.mint(personaId, maxPrice ?? price),
    );
  } catch (err) {
    if (err instanceof ContractRevertError && err.reason === "Agent__AdoptionPriceAboveMax") {
      throw new AdoptionPriceAboveMaxError(personaId, err.args[0] as bigint, err.args[1] as bigint, token);
    }
    throw err;
  }
  txHashes.push(receipt.hash);
  const minted = agentMintedArgs(c.agentRegistry, receipt.logs);
  const agentId = minted?.agentId as bigint;
  const paid = (minted?.adoptionPrice as bigint | undefined) ?? price;
  const paidTo = (minted?.holder as string | undefined) ?? holder;
  ctx.out.result(
    {
      agentId,
      personaId,
      owner: signer.address,
      holder: paidTo,
      adoptionPrice: money(paid, token),
      tx: receipt.hash,
      txHashes,
    },
    [
      `Minted agent ${agentId} from persona ${personaId} for ${signer.address}` +
        (paid === 0n ? " (free)." : `; ${showMoney(paid, token)} paid to ${paidTo}.`),
      `Chat with it: \`soulmesh chat ${agentId}\` (deposit for chats first with \`soulmesh deposit AMOUNT\`).`,
    ].join("\n"),
  );
}

// -------------------------------------------------------------------------------------------------- list

/** The agents `owner` holds now: every agent transferred to it, still its own. */
async function ownedAgents(agents: AgentRegistry, owner: string, fromBlock: number, signal: AbortSignal): Promise<bigint[]> {
  const toBlock = await agents.runner!.provider!.getBlockNumber();
  const received = new Set<bigint>();
  const filter = agents.filters.Transfer(undefined, owner);
  for (let from = fromBlock; from <= toBlock; from += LOG_CHUNK) {
    signal.throwIfAborted();
    for (const log of await agents.queryFilter(filter, from, Math.min(toBlock, from + LOG_CHUNK - 1))) received.add(log.args.tokenId);
  }
  const ids = [...received].sort((a, b) => (a < b ? -1 : 1));
  const owners = await Promise.all(ids.map((id) => agents.ownerOf(id)));
  return ids.filter((_, i) => owners[i]!.toLowerCase() === owner.toLowerCase());
}

/** Persona names by id, fetched once each. */
function personaNames(contracts: SoulmeshContracts, store: BlockStore | undefined, signal: AbortSignal): (id: bigint) => Promise<string | null> {
  const cache = new Map<bigint, Promise<string | null>>();
  return (id) => {
    let name = cache.get(id);
    if (name === undefined) {
      name = contracts.personaRegistry
        .personaOf(id)
        .then(async (p) => (await tryManifest(store, p.manifestCid, signal))?.name ?? null);
      cache.set(id, name);
    }
    return name;
  };
}

function headJson(cid: string, seq: bigint): { cid: string; seq: bigint } | null {
  return seq === 0n && cid === "" ? null : { cid, seq };
}

async function runList(ctx: CommandContext, opts: { owner?: string }): Promise<void> {
  const owner = opts.owner !== undefined ? parseAddressOption("--owner", opts.owner) : await ctx.address();
  const deployment = await ctx.deployment();
  const contracts = await ctx.contracts();
  const ids = await ctx.abortable(ownedAgents(contracts.agentRegistry, owner, deployment.startBlock, ctx.signal));
  const store = ids.length > 0 ? await optionalStore(ctx) : undefined;
  const nameOf = personaNames(contracts, store, ctx.signal);
  const agents = await ctx.abortable(
    Promise.all(
      ids.map(async (agentId) => {
        const a = await contracts.agentRegistry.agentOf(agentId);
        return { agentId, personaId: a.personaId, personaName: await nameOf(a.personaId), memoryHead: headJson(a.headCid, a.headSeq) };
      }),
    ),
  );
  const lines = agents.map(
    (a) =>
      `${String(a.agentId).padStart(4)}  persona ${a.personaId} ${a.personaName === null ? "" : `"${a.personaName}" `}` +
      `memory ${a.memoryHead === null ? "not published yet" : `seq ${a.memoryHead.seq} at ${a.memoryHead.cid}`}`,
  );
  ctx.out.result(
    { owner, count: agents.length, agents },
    agents.length === 0
      ? `${owner} owns no agents. Adopt a persona with \`soulmesh agent mint --persona ID\` (see \`soulmesh persona list\`).`
      : [`${owner} owns ${agents.length} agent${agents.length === 1 ? "" : "s"}:`, ...lines].join("\n"),
  );
}

// -------------------------------------------------------------------------------------------------- show

/** The head operators `owner` has approved and not revoked, from HeadOperatorSet logs. */
async function headOperators(agents: AgentRegistry, owner: string, fromBlock: number): Promise<string[]> {
  const logs = await agents.queryFilter(agents.filters.HeadOperatorSet(owner), fromBlock);
  const candidates = [...new Set(logs.map((l) => l.args.operator))];
  const approved = await Promise.all(candidates.map((op) => agents.isHeadOperator(owner, op)));
  return candidates.filter((_, i) => approved[i]);
}

async function runShow(ctx: CommandContext, idText: string): Promise<void> {
  const agentId = parseId(idText, "agent");
  const deployment = await ctx.deployment();
  const contracts = await ctx.contracts();
  const registry = contracts.agentRegistry;
  const total = await registry.totalAgents();
  if (agentId > total) throw new UnknownAgentError(agentId, total);
  const token = await tokenInfo(contracts);
  const [owner, agent, approved] = await withRevertDecoding(
    Promise.all([registry.ownerOf(agentId), registry.agentOf(agentId), registry.getApproved(agentId)]),
  );
  const [settlements, operators] = await ctx.abortable(
    Promise.all([
      readSettlements(contracts.inferenceEscrow, { fromBlock: deployment.startBlock, signal: ctx.signal }, { agentId }),
      headOperators(registry, owner, deployment.startBlock),
    ]),
  );
  const store = await optionalStore(ctx);
  const personaName = await personaNames(contracts, store, ctx.signal)(agent.personaId);

  let inputTokens = 0n;
  let outputTokens = 0n;
  let toProviders = 0n;
  let toCreator = 0n;
  let fees = 0n;
  const providers = new Set<string>();
  for (const s of settlements) {
    inputTokens += s.inputTokens;
    outputTokens += s.outputTokens;
    toProviders += s.providerAmount;
    toCreator += s.royaltyAmount;
    fees += s.feeAmount;
    providers.add(s.provider);
  }
  const spentTotal = toProviders + toCreator + fees;
  const head = headJson(agent.headCid, agent.headSeq);
  const zero = "0x0000000000000000000000000000000000000000";
  ctx.out.result(
    {
      agentId,
      owner,
      persona: { personaId: agent.personaId, name: personaName },
      memoryHead: head,
      spent: {
        settlements: settlements.length,
        inputTokens,
        outputTokens,
        total: money(spentTotal, token),
        toProviders: money(toProviders, token),
        toCreator: money(toCreator, token),
        fees: money(fees, token),
        providers: [...providers],
      },
      headOperators: operators,
      approved: approved === zero ? null : approved,
    },
    [
      `agent       ${agentId}`,
      `owner       ${owner}`,
      `persona     ${agent.personaId}${personaName === null ? "" : ` "${personaName}"`}`,
      `memory      ${head === null ? "not published yet (it is, after the first chat)" : `seq ${head.seq} at ${head.cid}`}`,
      `spent       ${showMoney(spentTotal, token)} in ${settlements.length} settled voucher${settlements.length === 1 ? "" : "s"} ` +
        `(${inputTokens} input / ${outputTokens} output tokens; providers ${showMoney(toProviders, token)}, ` +
        `creator ${showMoney(toCreator, token)}, fees ${showMoney(fees, token)})`,
      `operators   ${operators.length === 0 ? "none" : operators.join(", ")}`,
      ...(approved === zero ? [] : [`approved    ${approved} (may move this agent)`]),
      "",
      "Vouchers not yet settled by providers are not counted above.",
    ].join("\n"),
  );
}

// ---------------------------------------------------------------------------------------------- register

/** Registers `soulmesh agent mint|list|show`. */
export function registerAgent(program: Command): void {
  const agent = program.command("agent").description("Adopt personas as agents you own, and see your agents");

  agent
    .command("mint")
    .description("Adopt a persona: mint an agent NFT to the account, paying the persona's adoption price")
    .requiredOption("--persona <id>", "the persona to adopt (see `soulmesh persona list`)")
    .option("--max-price <amount>", "the most you agree to pay (default: the current price, as shown)")
    .addHelpText(
      "after",
      `
The adoption price goes to the persona's holder; the registry is approved for exactly that amount first.

Examples:
  $ soulmesh agent mint --persona 1
  $ soulmesh agent mint --persona 2 --max-price 5 --account user --json`,
    )
    .action((opts: { persona: string; maxPrice?: string }, cmd: Command) => withContext(cmd, (ctx) => runMint(ctx, opts)));

  agent
    .command("list")
    .description("The agents an account owns, with their persona and memory head")
    .option("--owner <address>", "list this address's agents instead of the account's")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh agent list
  $ soulmesh agent list --owner 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --json`,
    )
    .action((opts: { owner?: string }, cmd: Command) => withContext(cmd, (ctx) => runList(ctx, opts)));

  agent
    .command("show")
    .description("One agent: owner, persona, memory head, what its chats cost so far, head operators")
    .argument("<id>", "the agent's id")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh agent show 1
  $ soulmesh agent show 1 --json`,
    )
    .action((id: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runShow(ctx, id)));
}
