/**
 * `soulmesh up` without the terminal: the whole local network in this process. A devnet chain with the
 * contracts, the home's IPFS service, a provider serving the model, the demo persona published by the devnet's
 * creator, an agent of it minted for the devnet's user, and a deposit to pay for chats.
 *
 * The creator dashboard is served too (cli/up/dashboard.ts), unless told not to; when it cannot be, a warning says
 * why and the network starts without it.
 *
 * The chain lives in memory, so every start is a fresh chain with the same chain id, contract addresses and ids
 * (persona 1, agent 1): local state bound to the previous chain is cleared first (the agents' folders by
 * startDevnet, the provider's vouchers and saved sessions here). The provider of `up` keeps its own data folder,
 * `<home>/up/provider`, so a provider started with `soulmesh provider start` on the same home (whose vouchers may
 * be worth money on a real chain) is never touched.
 */
import { readFile, rm } from "node:fs/promises";
import { basename, join } from "node:path";
import { Wallet } from "ethers";
import type { Log } from "ethers";
import { startProvider } from "../../node/provider/provider.js";
import type { ProviderNode } from "../../node/provider/provider.js";
import type { ModelLoadProgress } from "../../node/engine/models.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { AgentRegistry, SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import type { DevAccount } from "../../sdk/chain/dev-accounts.js";
import { findEvent } from "../../sdk/chain/receipt.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { publishPersona } from "../../sdk/memory/persona/publish.js";
import { dashboardAssetsDir } from "../dashboard/assets.js";
import { startDevnet } from "../devnet/devnet.js";
import type { Devnet, DevnetEvent } from "../devnet/devnet.js";
import { startLocalIpfsService } from "../ipfs/local-ipfs.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import type { LocalIpfsService } from "../ipfs/local-ipfs.js";
import { startUpDashboard, UP_DASHBOARD_PORT } from "./dashboard.js";
import { resolveUpModel } from "./model.js";
import type { ModelDownloader, UpModel } from "./model.js";
import type { ModelProbe } from "../../node/engine/model-probe.js";

/** The demo persona's character card. */
export const DEMO_PERSONA_CARD = new URL("./demo-persona.json", import.meta.url);

/** What `up` sets up by default: token amounts in units of the 6-decimal test token. */
export const UP_DEFAULTS = {
  /** Deposited in escrow for the user: 50 tUSD. */
  deposit: 50_000_000n,
  /** The provider's prices per million tokens (as `soulmesh provider start`'s defaults): 0.5 and 1.5 tUSD. */
  prices: { input: 500_000n, output: 1_500_000n },
  /** The demo persona's royalty per million tokens: 0.2 tUSD. */
  royaltyPerMillion: 200_000n,
  adoptionPrice: 0n,
} as const;

/** The devnet accounts' roles in `up`. */
export const UP_ACCOUNTS = { user: 1, creator: 2, provider: 3 } as const;

/** The steps of {@link startLocalNetwork}, in order. */
export type LocalNetworkStep = "chain" | "ipfs" | "dashboard" | "model" | "provider" | "persona" | "agent" | "deposit" | "ready";

/** What {@link startLocalNetwork} is doing, for progress output. */
export type LocalNetworkEvent =
  | { type: "step"; step: LocalNetworkStep; message: string }
  /** A detail within the current step (a deployed contract, the provider's registration…). */
  | { type: "detail"; message: string }
  /** Model download (bytes), hashing (bytes) or loading (fraction of 1). */
  | { type: "model:progress"; progress: ModelLoadProgress }
  /** The model could not be had and the generated tiny model is served instead. */
  | { type: "model:fallback"; reason: string; message: string }
  | { type: "warning"; message: string };

/** Options of {@link startLocalNetwork}. */
export interface LocalNetworkOptions {
  /** The soulmesh home: devnet.json, ipfs/, models/, agents/, up/provider/. */
  home: string;
  /** A GGUF path or `hf:` URI; default DEFAULT_MODEL_URI (with the tiny model as fallback). */
  model?: string;
  /** Never download: an `hf:` model must already be in `<home>/models`, otherwise the tiny model is used. */
  offline?: boolean;
  /** Chain JSON-RPC port on 127.0.0.1 (default 8545; 0 picks a free one). */
  port?: number;
  /** IPFS RPC API port (default 0: a free one, recorded in `<home>/ipfs/api.json`). */
  ipfsPort?: number;
  /** Provider metrics and status port (default 0: a free one, recorded in the provider's state file). */
  metricsPort?: number;
  /** The creator dashboard's port on 127.0.0.1 (default 5173; 0 picks a free one); false serves no dashboard. */
  dashboardPort?: number | false;
  /** The dashboard's built page (default dashboardAssetsDir(): SOULMESH_DASHBOARD_DIST, else dashboard/dist). */
  dashboardAssetsDir?: string;
  /** Escrow deposit for the user, token units (default 50 tUSD). */
  deposit?: bigint;
  /** Draw the download progress bar (a TTY). Default false. */
  showProgressBar?: boolean;
  /** Replace the model host check / download (tests). */
  probe?: ModelProbe;
  download?: ModelDownloader;
  onEvent?: (event: LocalNetworkEvent) => void;
  signal?: AbortSignal;
}

/** A running local network. */
export interface LocalNetwork {
  home: string;
  devnet: Devnet;
  deployment: Deployment;
  ipfs: LocalIpfsService;
  provider: ProviderNode;
  /** The provider's data folder (for `soulmesh provider status --data-dir`). */
  providerDataDir: string;
  model: UpModel & { sha256: string };
  personaId: bigint;
  personaName: string;
  agentId: bigint;
  /** Dev account 1, the agent's owner and payer. */
  user: DevAccount;
  /** Dev account 2, the persona's creator. */
  creator: DevAccount;
  /** Dev account 3, the provider. */
  providerAccount: DevAccount;
  /** The user's escrow deposit after `up`'s deposit, token units. */
  deposit: bigint;
  /** The creator dashboard this process serves; undefined when it serves none (see dashboardNotServed). */
  dashboard: { url: string } | undefined;
  /** Why no dashboard is served ("--no-dashboard", a page not built, a port in use); undefined when one is. */
  dashboardNotServed: string | undefined;
  /** Stops the provider (settling what it is owed while the chain still runs), the dashboard, IPFS and the chain. Idempotent. */
  stop(): Promise<void>;
}

/** Ctrl-C (or SIGTERM) arrived while the local network was starting; what had started was stopped. */
export class LocalNetworkInterruptedError extends SoulmeshError {
  override readonly name = "LocalNetworkInterruptedError";
  constructor() {
    super("Interrupted while starting the local network; everything it had started is stopped. Run `soulmesh up` again to start over.");
  }
}

/**
 * Starts the whole local network in this process, step by step (each announced through `onEvent`): chain and
 * contracts, IPFS, the creator dashboard, model, provider, demo persona, agent, deposit. A dashboard that cannot be
 * served (page not built, port in use) is a warning event, not a failure.
 *
 * @example
 * const net = await startLocalNetwork({ home, port: 0, offline: true, onEvent: (e) => e.type === "step" && console.error(e.message) })
 * console.log(net.agentId, net.deployment.rpcUrl)
 * await net.stop()
 * @throws DevnetRunningError, IpfsServiceRunningError, PortInUseError (something else runs on this home or port),
 * ModelNotFoundError / InvalidModelUriError (a bad --model), the provider's start errors, LocalNetworkInterruptedError.
 * Whatever was started is stopped again before it throws.
 */
export async function startLocalNetwork(options: LocalNetworkOptions): Promise<LocalNetwork> {
  const { home, signal } = options;
  const emit = (event: LocalNetworkEvent): void => options.onEvent?.(event);
  const step = (s: LocalNetworkStep, message: string): void => {
    signal?.throwIfAborted();
    emit({ type: "step", step: s, message });
  };
  const undo: (() => Promise<unknown>)[] = [];
  try {
    step("chain", "starting the devnet chain and deploying the contracts…");
    const devnet = await startDevnet({
      port: options.port ?? 8545,
      home,
      onEvent: (e) => emit({ type: "detail", message: describeDevnetEvent(e) }),
      ...(signal && { signal }),
    });
    undo.push(() => devnet.stop());
    const { deployment } = devnet;
    const accounts = deployment.devAccounts!;
    const user = accounts[UP_ACCOUNTS.user]!;
    const creator = accounts[UP_ACCOUNTS.creator]!;
    const providerAccount = accounts[UP_ACCOUNTS.provider]!;
    const rpc = devnet.chain.provider;

    step("ipfs", "starting the IPFS node…");
    const ipfs = await startLocalIpfsService({
      home,
      port: options.ipfsPort ?? 0,
      onProgress: (message) => emit({ type: "detail", message }),
      ...(signal && { signal }),
    });
    undo.push(() => ipfs.stop());

    let dashboard: LocalNetwork["dashboard"];
    let dashboardNotServed: string | undefined = "--no-dashboard";
    if (options.dashboardPort !== false) {
      const port = options.dashboardPort ?? UP_DASHBOARD_PORT;
      step("dashboard", `serving the creator dashboard on 127.0.0.1, ${port === 0 ? "a free port" : `port ${port}`}…`);
      const served = await startUpDashboard({
        rpcUrl: devnet.rpc.url,
        deployment,
        store: ipfs.store,
        assetsDir: options.dashboardAssetsDir ?? dashboardAssetsDir(),
        home,
        port,
        ...(signal && { signal }),
      });
      if (served.server !== undefined) {
        const { server } = served;
        undo.push(() => server.close());
        dashboard = { url: server.url };
        dashboardNotServed = undefined;
        emit({ type: "detail", message: `the creator dashboard is at ${server.url}` });
      } else {
        dashboardNotServed = served.reason;
        emit({ type: "warning", message: served.warning });
      }
    }

    step("model", `getting the model ${options.model ?? "(default)"}…`);
    const modelsDir = join(home, "models");
    const model = await resolveUpModel({
      modelsDir,
      ...(options.model !== undefined && { source: options.model }),
      ...(options.offline !== undefined && { offline: options.offline }),
      showProgressBar: options.showProgressBar ?? false,
      onProgress: (done, total) => emit({ type: "model:progress", progress: { phase: "download", done, total } }),
      onFallback: (f) => emit({ type: "model:fallback", ...f }),
      ...(options.probe && { probe: options.probe }),
      ...(options.download && { download: options.download }),
      ...(signal && { signal }),
    });

    step("provider", `starting the provider (dev account ${UP_ACCOUNTS.provider}, ${providerAccount.address})…`);
    const providerDataDir = join(home, "up", "provider");
    await clearChainBoundProviderState(providerDataDir);
    const provider = await startProvider(
      {
        dataDir: providerDataDir,
        models: [model.path],
        modelsDir,
        offline: true,
        blockStore: ipfs.store,
        prices: { ...UP_DEFAULTS.prices },
        metricsPort: options.metricsPort ?? 0,
        deployment,
        deploymentPath: devnet.deploymentPath,
        rpc,
        privateKey: providerAccount.privateKey,
      },
      {
        ...(signal && { signal }),
        onProgress: (p) => {
          if (p.type === "step") emit({ type: "detail", message: p.message });
          else if (p.type === "model") emit({ type: "model:progress", progress: p.progress });
          else emit({ type: "warning", message: `${p.message}${p.error instanceof Error ? ` (${p.error.message})` : ""}` });
        },
      },
    );
    undo.push(() => provider.stop());
    const sha256 = provider.models[0]!.sha256;

    step("persona", `publishing the demo persona as the creator (dev account ${UP_ACCOUNTS.creator}, ${creator.address})…`);
    const asCreator = connectContracts(deployment, new Wallet(creator.privateKey, rpc));
    const card = await readFile(DEMO_PERSONA_CARD);
    const persona = await publishPersona({
      store: ipfs.store,
      registry: asCreator.personaRegistry,
      card,
      baseModelHash: sha256,
      baseModelName: model.tiny ? `${basename(model.path)} (generated tiny model)` : basename(model.path),
      ...(model.uri !== undefined && { baseModelUri: model.uri }),
      royaltyPerMillion: UP_DEFAULTS.royaltyPerMillion,
      adoptionPrice: UP_DEFAULTS.adoptionPrice,
      ...(signal && { signal }),
    });

    step("agent", `minting an agent of ${persona.manifest.name} for the user (dev account ${UP_ACCOUNTS.user}, ${user.address})…`);
    const asUser = connectContracts(deployment, new Wallet(user.privateKey, rpc));
    const agentId = await mintAgent(asUser, persona.personaId);

    const amount = options.deposit ?? UP_DEFAULTS.deposit;
    step("deposit", `depositing ${formatUnitsFixed(amount, deployment.token.decimals)} ${deployment.token.symbol} in escrow for the user…`);
    const deposit = await depositFor(asUser, deployment, amount);

    step("ready", "the local network is ready");
    let stopping: Promise<void> | undefined;
    return {
      home,
      devnet,
      deployment,
      ipfs,
      provider,
      providerDataDir,
      model: { ...model, sha256 },
      personaId: persona.personaId,
      personaName: persona.manifest.name,
      agentId,
      user,
      creator,
      providerAccount,
      deposit,
      dashboard,
      dashboardNotServed,
      stop: () => (stopping ??= unwind(undo)),
    };
  } catch (err) {
    await unwind(undo);
    if (signal?.aborted) throw new LocalNetworkInterruptedError();
    throw err;
  }
}

/** Runs the undo steps in reverse, each once, ignoring failures (a stop must stop everything it can). */
async function unwind(undo: (() => Promise<unknown>)[]): Promise<void> {
  for (const f of undo.splice(0).reverse()) await f().catch(() => {});
}

/**
 * The vouchers and saved sessions of the provider of a previous `up`: bound to a chain that is gone, and on the
 * new chain (same escrow address) they would be sent for settlement and revert.
 */
async function clearChainBoundProviderState(dataDir: string): Promise<void> {
  for (const name of ["vouchers", "states"]) await rm(join(dataDir, name), { recursive: true, force: true });
}

async function mintAgent(asUser: SoulmeshContracts, personaId: bigint): Promise<bigint> {
  const [, price] = await asUser.personaRegistry.adoptionTermsOf(personaId);
  if (price > 0n) {
    await (await withRevertDecoding(asUser.token.approve(await asUser.agentRegistry.getAddress(), price))).wait();
  }
  const receipt = await withRevertDecoding(asUser.agentRegistry.mint(personaId, price).then((tx) => tx.wait()));
  const agentId = mintedAgentId(asUser.agentRegistry, receipt?.logs ?? []);
  if (agentId === undefined) throw new Error(`minting an agent of persona ${personaId} emitted no AgentMinted event`);
  return agentId;
}

function mintedAgentId(registry: AgentRegistry, logs: readonly Log[]): bigint | undefined {
  return findEvent(registry, logs, "AgentMinted")?.args.agentId as bigint | undefined;
}

async function depositFor(asUser: SoulmeshContracts, deployment: Deployment, amount: bigint): Promise<bigint> {
  const escrow = deployment.contracts.inferenceEscrow;
  await (await withRevertDecoding(asUser.token.approve(escrow, amount))).wait();
  await (await withRevertDecoding(asUser.inferenceEscrow.deposit(amount))).wait();
  const runner = asUser.inferenceEscrow.runner as Wallet;
  return asUser.inferenceEscrow.depositOf(runner.address);
}

function describeDevnetEvent(event: DevnetEvent): string {
  switch (event.type) {
    case "chain:started":
      return `chain ${event.chainId} started (Hardhat EDR, in process)`;
    case "state:cleared":
      return `removed the local state of agent(s) ${event.agents.join(", ")} of an earlier devnet (its chain is gone)`;
    case "rpc:listening":
      return `JSON-RPC listening on ${event.url}`;
    case "deploy:progress":
      return `[${event.progress.step}/${event.progress.steps}] ${event.progress.contract} at ${event.progress.address}`;
    case "accounts:funded":
      return `funded ${event.count} dev accounts`;
    case "deployment:written":
      return `deployment written to ${event.path}`;
  }
}
