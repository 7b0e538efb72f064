/**
 * How a CLI process opens an agent it owns: the one path shared by `chat`, `memory`, `serve` and `up`. It reads
 * the agent's persona from the chain and IPFS, loads the offline embedder (converting its cache on first use,
 * with progress), starts a client libp2p host when the agent will chat, and opens the agent runtime on the
 * home's folder `<home>/agents/<chainId>-<agentId>/`, turning the SDK's failures into errors that say which
 * command fixes them.
 */
import { join } from "node:path";
import { InvalidArgumentError } from "commander";
import { getAddress } from "ethers";
import type { Wallet } from "ethers";
import { ContractRevertError } from "../sdk/chain/errors.js";
import { withRevertDecoding } from "../sdk/chain/revert.js";
import { EscrowTooLowError, LaneReleasingError, NoProviderError, SpendingCapReachedError } from "../sdk/client/errors.js";
import type { FundsShortfall } from "../sdk/client/errors.js";
import { setSharedReputationCache } from "../sdk/client/discovery.js";
import { createClientHost } from "../sdk/client/host.js";
import type { ClientHost } from "../sdk/client/host.js";
import { openAgent } from "../sdk/client/agent/agent.js";
import type { Agent, HeadPublished } from "../sdk/client/agent/agent.js";
import { NotAgentOwnerError } from "../sdk/client/agent/errors.js";
import { fileReputationStore, ReputationCache } from "../sdk/client/reputation-cache.js";
import type { LocalTokenizer } from "../sdk/client/tokenizer.js";
import { SoulmeshError } from "../sdk/errors.js";
import { readPersona } from "../sdk/memory/persona/publish.js";
import type { PersonaInfo } from "../sdk/memory/persona/publish.js";
import type { Embedder } from "../sdk/memory/retrieval/embedder.js";
import { loadWordVectorEmbedder } from "../sdk/memory/retrieval/word-vectors.js";
import type { WordVectorProgress } from "../sdk/memory/retrieval/word-vectors.js";
import { BlockNotFoundError, BlockStoreLockedError, KuboUnreachableError } from "../sdk/vault/block-store-errors.js";
import { readLanes, tokenInfo } from "./commands/escrow.js";
import { loadModelTokenizer } from "./models.js";
import type { TokenInfo } from "./commands/escrow.js";
import type { CommandContext } from "./context.js";
import type { LocalIpfs } from "./ipfs/local-ipfs.js";
import { formatUnitsFixed } from "../sdk/chain/units.js";

/**
 * The share of the account's escrow funds (free deposit and lanes) a chat may spend when no cap is given: the
 * rest leaves room for the agent's maintenance chat and for a second provider when the first fails.
 */
export const DEFAULT_CAP_PERCENT = 90n;

/** The account has nothing in escrow (free deposit or lanes) nor in its wallet, so no turn can be paid for. */
export class NoDepositError extends SoulmeshError {
  override readonly name = "NoDepositError";
  constructor(readonly account: string) {
    super(
      `${account} has nothing deposited in escrow to pay for chats: deposit with \`soulmesh deposit 10\` ` +
        "(it pays providers per token; see it with `soulmesh balance`), then chat again.",
    );
  }
}

/** No agent of that id exists on this chain. */
export class UnknownAgentError extends SoulmeshError {
  override readonly name = "UnknownAgentError";
  constructor(readonly agentId: bigint) {
    super(
      `There is no agent #${agentId} on this chain: list yours with \`soulmesh agent list\`, or mint one from a ` +
        "persona with `soulmesh agent mint --persona ID` (see `soulmesh persona list`).",
    );
  }
}

/** The account opening the agent does not own it (said the CLI way). Nothing was opened. */
export class NotYourAgentError extends NotAgentOwnerError {
  constructor(agentId: bigint, owner: string, account: string) {
    super(agentId, owner, account);
    this.message =
      `Agent #${agentId} belongs to ${owner}, not to ${account}: its memory opens only with the owner's wallet. ` +
      "Pass the owner's account with --account (or SOULMESH_ACCOUNT), or mint an agent of your own with " +
      "`soulmesh agent mint --persona ID`.";
  }
}

/** No provider serves the agent's base model (or every one failed to quote). */
export class NoModelProviderError extends NoProviderError {
  constructor(modelSha256: string, reasons: string[], model: string | undefined) {
    super(modelSha256, reasons);
    const which = model === undefined ? `model ${modelSha256}` : `${model} (${modelSha256})`;
    this.message =
      `No provider on the network serves ${which}: start one with \`soulmesh provider start --model ${model ?? "PATH|hf:URI"}\` ` +
      "or run everything locally with `npm start`" +
      (reasons.length > 0 ? ` (providers left out: ${reasons.join("; ")}).` : ".");
  }
}

/** The IPFS node holding agents' memories and personas cannot be reached. */
export class IpfsUnreachableError extends SoulmeshError {
  override readonly name = "IpfsUnreachableError";
  constructor(
    readonly where: string,
    cause: unknown,
  ) {
    super(
      `Cannot reach IPFS (${where}): ${cause instanceof Error ? cause.message : String(cause)} ` +
        "Start the local IPFS service with `soulmesh up` or `soulmesh devnet` (other commands find it on their own), " +
        "or pass --ipfs-api URL (SOULMESH_IPFS_API) of a running Kubo daemon.",
      { cause },
    );
  }
}

/** The persona's card or manifest is on no IPFS node this machine reaches. */
export class PersonaUnreadableError extends SoulmeshError {
  override readonly name = "PersonaUnreadableError";
  constructor(
    readonly personaId: bigint,
    readonly where: string,
    cause: unknown,
  ) {
    super(
      `Persona #${personaId}'s card could not be read from IPFS (${where}). Use the IPFS node it was published to ` +
        "(the same --home, or --ipfs-api URL of that node), or connect this node to one that pins it.",
      { cause },
    );
  }
}

/** The account's funds (its lane with the provider, free deposit and wallet) cannot pay the next turn. */
export class DepositTooLowError extends EscrowTooLowError {
  constructor(payer: string, spendingCap: bigint, shortfall?: FundsShortfall) {
    super(payer, spendingCap, shortfall);
    this.message =
      shortfall === undefined
        ? `The escrow funds of ${payer}, less what providers are still owed for earlier chats, do not cover this chat's ` +
          `spending cap of ${spendingCap} token units at any provider: deposit more with \`soulmesh deposit 10\`, or chat with a lower --max-spend.`
        : `The funds of ${payer} cannot pay the next reply at provider ${shortfall.provider}: it may cost up to ` +
          `${shortfall.needed} token units (provider, royalty and fee), and the lane with that provider holds ${shortfall.lane} ` +
          `beyond what it is still owed, the free deposit ${shortfall.deposit}, the wallet ${shortfall.wallet}. Deposit more with ` +
          "`soulmesh deposit 10` (see `soulmesh balance`), or ask for a shorter reply with --max-tokens.";
  }
}

/** The chat reached its spending cap. */
export class ChatCapReachedError extends SpendingCapReachedError {
  constructor(spent: bigint, cap: bigint, needed: bigint) {
    super(spent, cap, needed);
    this.message =
      `This chat has spent ${spent} of its cap of ${cap} token units (provider, royalty and fee) and the next reply may ` +
      `cost up to ${needed}: start the chat again with a higher --max-spend, or ask for a shorter reply with --max-tokens.`;
  }
}

/** The lane with the provider is being released (`withdraw request --all`): chats do not undo it. */
export class LaneBeingReleasedError extends LaneReleasingError {
  constructor(provider: string, releaseAt: bigint) {
    super(provider, releaseAt);
    this.message =
      `Your lane with provider ${provider} is being released (\`soulmesh withdraw request --all\`; ready at ` +
      `${new Date(Number(releaseAt) * 1000).toISOString()}): run \`soulmesh withdraw cancel\` to chat with it again, ` +
      "or `soulmesh withdraw complete` once it is ready and deposit again.";
  }
}

/**
 * The CLI's wording of an error a turn may end with (funds too low, cap reached, lane released), else the
 * error itself.
 *
 * @example
 * catch (err) { throw explainTurnError(err) }
 */
export function explainTurnError(err: unknown): unknown {
  if (err instanceof EscrowTooLowError && !(err instanceof DepositTooLowError)) return new DepositTooLowError(err.payer, err.spendingCap, err.shortfall);
  if (err instanceof SpendingCapReachedError && !(err instanceof ChatCapReachedError)) return new ChatCapReachedError(err.spent, err.cap, err.needed);
  if (err instanceof LaneReleasingError && !(err instanceof LaneBeingReleasedError)) return new LaneBeingReleasedError(err.provider, err.releaseAt);
  return err;
}

/** What {@link openCliAgent} takes. */
export interface OpenCliAgentOptions {
  /**
   * Find a provider and open the chat now (default true), so that a missing provider shows before the first
   * message. `false` for the memory commands: no provider, no host, no deposit needed.
   */
  connect?: boolean;
  /**
   * The most this process's turns may cost, full price (provider, royalty and fee), in token units; default 90%
   * of the account's escrow funds (free deposit and lanes) at start. Each session is bounded by the funds read
   * live too.
   */
  spendingCap?: bigint;
  /** Reply length when a send does not say (default the SDK's, 256). */
  maxTokens?: number;
  /** Background memory maintenance through a paid chat (default: on when connecting). */
  maintenance?: boolean;
  /** Progress lines for humans (the embedder's first-use conversion, the provider search…). */
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

/** An opened agent and what it was opened with; close() once. */
export interface CliAgent {
  agent: Agent;
  persona: PersonaInfo;
  /** The payment token (symbol, decimals) for showing costs. */
  token: TokenInfo;
  /** The spending cap in force, in token units. */
  spendingCap: bigint;
  /** This machine's folder of the agent (journal, wrapped key). */
  dataDir: string;
  /** The chain id of the deployment. */
  chainId: number;
  /** The IPFS node used, in words. */
  ipfs: string;
  /** The owner's wallet. */
  signer: Wallet;
  /**
   * Closes the agent (saving its memory and publishing the head when it moved) and the libp2p host. The IPFS
   * store is the context's: `ctx.close()` closes it. Safe to call twice.
   */
  close(options?: { signal?: AbortSignal }): Promise<{ published: HeadPublished | undefined }>;
}

/**
 * Parses an agent id argument (a positive integer, `#` allowed) for commander.
 *
 * @example
 * program.argument("<agent>", "the agent's id", parseAgentId) // "7" → 7n
 */
export function parseAgentId(value: string): bigint {
  const text = value.trim().replace(/^#/, "");
  if (!/^\d{1,78}$/.test(text) || BigInt(text) === 0n) {
    throw new InvalidArgumentError("expected an agent id, a positive integer (see `soulmesh agent list`).");
  }
  return BigInt(text);
}

/** Where an agent's local files live under a home. */
export function agentDataDir(home: string, chainId: number | bigint, agentId: bigint): string {
  return join(home, "agents", `${chainId}-${agentId}`);
}

/**
 * Opens agent `agentId`, owned by the context's account: checks ownership (and, when connecting, the
 * deposit), reads its persona, loads the embedder, starts a client host and opens the agent runtime, then,
 * when `connect` is on, finds a provider of the persona's model.
 *
 * @example
 * const { agent, persona, close } = await openCliAgent(ctx, 1n, { onProgress: (m) => ctx.out.progress(m), signal: ctx.signal })
 * try { console.log((await agent.send("Hello!")).reply) } finally { await close() }
 * @throws UnknownAgentError, NotYourAgentError, NoDepositError, NoModelProviderError, IpfsUnreachableError,
 *   PersonaUnreadableError, and openAgent's other errors (MemoryHeadUnreadableError…). Whatever it opened is
 *   closed again before it throws.
 */
export async function openCliAgent(ctx: CommandContext, agentId: bigint, options: OpenCliAgentOptions): Promise<CliAgent> {
  const { signal, onProgress } = options;
  const connect = options.connect ?? true;
  const deployment = await ctx.deployment();
  const signer = await ctx.signer();
  const contracts = await ctx.contracts();
  const account = getAddress(signer.address);
  await checkOwner(contracts.agentRegistry, agentId, account);

  // Without a chat no turn is paid, and any positive cap will do (the memory commands): no funds to read.
  const [token, deposit, lanes] = await Promise.all([
    tokenInfo(contracts),
    connect ? contracts.inferenceEscrow.depositOf(account) : 0n,
    connect ? readLanes(contracts, account) : [],
  ]);
  // Lanes being released are on their way out: chats do not draw on them.
  const committed = lanes.filter((l) => l.releaseAt === 0).reduce((sum, l) => sum + l.amount, 0n);
  if (connect && deposit + committed === 0n) {
    // With --max-spend the client can still commit from the wallet, with a permit, at a provider's first use.
    if (options.spendingCap === undefined || (await contracts.token.balanceOf(account)) === 0n) throw new NoDepositError(account);
  }
  let spendingCap = options.spendingCap;
  if (spendingCap === undefined) {
    // The cap is a ceiling: every session is also bounded by the lane and free deposit read when it opens
    // (so a withdrawal lowers what a running chat may spend, and never stops it for good).
    const funds = deposit + committed;
    spendingCap = funds > 0n ? (funds * DEFAULT_CAP_PERCENT) / 100n || funds : 1n;
    if (connect) {
      onProgress?.(
        `spending cap: ${formatUnitsFixed(spendingCap, token.decimals)} ${token.symbol}, ${DEFAULT_CAP_PERCENT}% of your escrow funds ` +
          "(provider, royalty and fee; the rest leaves room for memory upkeep and a second provider; set a cap with --max-spend)",
      );
    }
  }

  // Reputation is read from the escrow's logs incrementally, from a cursor kept in the home across commands.
  setSharedReputationCache(new ReputationCache({ store: fileReputationStore(join(ctx.home, "cache", "reputation")) }));
  const ipfs = await openIpfs(ctx);
  let host: ClientHost | undefined;
  let agent: Agent | undefined;
  let tokenizer: LocalTokenizer | undefined;
  try {
    const personaId = await withRevertDecoding(contracts.agentRegistry.personaOf(agentId));
    const persona = await readPersona({ registry: contracts.personaRegistry, store: ipfs.store, personaId, ...(signal && { signal }) }).catch(
      (err: unknown) => {
        if (err instanceof BlockNotFoundError || err instanceof KuboUnreachableError) throw new PersonaUnreadableError(personaId, ipfs.description, err);
        throw err;
      },
    );
    const embedder = await loadEmbedder(onProgress, signal);
    // The model's vocabulary, when this machine has the model file (soulmesh up, a provider's home): billed
    // tokens are then checked against the model's own count of the text, not only against its bytes.
    tokenizer = connect ? await loadModelTokenizer(persona.baseModelHash, { home: ctx.home, ...(signal && { signal }) }) : undefined;
    // Started even without `connect`: a later send opens its chat on it. With no listen address it opens no port.
    host = await createClientHost(signal ? { signal } : {});
    const libp2p = await host.start(signal ? { signal } : {});
    const dataDir = agentDataDir(ctx.home, deployment.chainId, agentId);
    if (connect) onProgress?.(`looking for a provider of ${persona.manifest.baseModel.name ?? persona.baseModelHash}…`);
    agent = await openAgent({
      libp2p,
      contracts,
      signer,
      escrow: { chainId: deployment.chainId, address: deployment.contracts.inferenceEscrow },
      agentId,
      store: ipfs.store,
      dataDir,
      persona: {
        personaId,
        card: persona.card,
        modelSha256: persona.baseModelHash,
        ...(persona.adapterCid !== undefined && persona.adapterSha256 !== undefined && { adapter: { cid: persona.adapterCid, sha256: persona.adapterSha256 } }),
        creator: persona.holder,
      },
      embedder,
      ...(tokenizer !== undefined && { tokenizer }),
      spendingCap,
      ...(options.maxTokens !== undefined && { maxTokens: options.maxTokens }),
      maintenance: (options.maintenance ?? connect) ? {} : false,
      connect,
      chat: { fromBlock: deployment.startBlock },
      ...(signal && { signal }),
    }).catch((err: unknown) => {
      if (err instanceof NotAgentOwnerError && !(err instanceof NotYourAgentError)) throw new NotYourAgentError(agentId, err.owner, err.account);
      if (err instanceof EscrowTooLowError || err instanceof SpendingCapReachedError) throw explainTurnError(err);
      if (err instanceof NoProviderError && !(err instanceof NoModelProviderError)) {
        throw new NoModelProviderError(err.modelSha256, err.reasons, persona.manifest.baseModel.uri ?? persona.manifest.baseModel.name);
      }
      throw err;
    });
    const opened = agent;
    const openedHost = host;
    const openedTokenizer = tokenizer;
    opened.addEventListener("lane:committed", (e) =>
      onProgress?.(
        `committed ${formatUnitsFixed(e.detail.amount, token.decimals)} ${token.symbol} to provider ${e.detail.provider} ` +
          `(${e.detail.method === "permit" ? "from your wallet, " : ""}one transaction at its first use: ${e.detail.txHash})`,
      ),
    );
    let closing: Promise<{ published: HeadPublished | undefined }> | undefined;
    return {
      agent: opened,
      persona,
      token,
      spendingCap,
      dataDir,
      chainId: deployment.chainId,
      ipfs: ipfs.description,
      signer,
      close(o = {}) {
        closing ??= (async () => {
          try {
            return await opened.close(o.signal ? { signal: o.signal } : {});
          } finally {
            // IPFS is the context's (cached by ctx.ipfs(), closed by ctx.close()): another agent of the same
            // command may still use it.
            await openedHost.stop().catch(() => undefined);
            await openedTokenizer?.dispose();
          }
        })();
        return closing;
      },
    };
  } catch (err) {
    await agent?.close({ publish: false }).catch(() => undefined);
    await host?.stop().catch(() => undefined);
    await tokenizer?.dispose();
    throw err;
  }
}

async function checkOwner(registry: CommandContextContracts["agentRegistry"], agentId: bigint, account: string): Promise<void> {
  let owner: string;
  try {
    owner = getAddress(await withRevertDecoding(registry.ownerOf(agentId)));
  } catch (err) {
    if (err instanceof ContractRevertError && /Nonexistent|UnknownAgent/.test(err.reason)) throw new UnknownAgentError(agentId);
    throw err;
  }
  if (owner !== account) throw new NotYourAgentError(agentId, owner, account);
}

type CommandContextContracts = Awaited<ReturnType<CommandContext["contracts"]>>;

async function openIpfs(ctx: CommandContext): Promise<LocalIpfs> {
  try {
    return await ctx.ipfs();
  } catch (err) {
    if (err instanceof KuboUnreachableError || err instanceof BlockStoreLockedError) {
      throw new IpfsUnreachableError(err instanceof KuboUnreachableError ? "the IPFS RPC API given" : `the repository in ${ctx.home}/ipfs`, err);
    }
    throw err;
  }
}

/** The offline embedder; its first use converts a large cache, which deserves a progress line. */
async function loadEmbedder(onProgress: ((message: string) => void) | undefined, signal: AbortSignal | undefined): Promise<Embedder> {
  let lastShown = "";
  const progress = (p: WordVectorProgress): void => {
    if (p.phase === "loading" || onProgress === undefined) return;
    const percent = p.total > 0 ? Math.floor((100 * p.done) / p.total) : 0;
    // A line per tenth is enough to show it moves without flooding the terminal.
    const step = `${p.phase}:${Math.floor(percent / 10)}`;
    if (step === lastShown) return;
    lastShown = step;
    onProgress(`preparing the memory search's word vectors (first use only): ${p.phase} ${percent}%`);
  };
  return loadWordVectorEmbedder({ onProgress: progress, ...(signal && { signal }) });
}
