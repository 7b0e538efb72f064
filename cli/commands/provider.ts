import { join, resolve } from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError, Option } from "commander";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { devnetDeploymentPath, readDeployment, soulmeshHome, type Deployment } from "../../sdk/chain/deployment.js";
import { connectDeployment } from "../../sdk/chain/rpc.js";
import { SoulmeshError } from "../../sdk/errors.js";
import type { ModelLoadProgress } from "../../node/engine/index.js";
import {
  readLastRun,
  readProviderState,
  startProvider,
  type ProviderConfig,
  type ProviderStatus,
} from "../../node/provider/provider.js";
import { readProviderRecord, type OnChainProvider } from "../../node/provider/registration.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { stopSignals } from "../context.js";
import { IpfsServiceRunningError, openLocalIpfs, startLocalIpfsService } from "../ipfs/local-ipfs.js";
import { createOutput, type Output } from "../output.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import { InvalidAmountError, parseAmountOrZero } from "./escrow.js";
import { globalOptions, parsePort } from "./options.js";

/** The provider key is missing or given twice. */
export class ProviderKeyError extends SoulmeshError {
  override readonly name = "ProviderKeyError";
}

/** A signal arrived before the provider finished starting; everything started was stopped again. */
export class ProviderInterruptedError extends SoulmeshError {
  override readonly name = "ProviderInterruptedError";
  constructor() {
    super("Interrupted before the provider finished starting; nothing was left running.");
  }
}

/** `provider status` found no provider running on the data folder. */
export class ProviderNotRunningError extends SoulmeshError {
  override readonly name = "ProviderNotRunningError";
}

/** The registry stores each price as a uint128. */
const MAX_PRICE = (1n << 128n) - 1n;

/** The amount options of `provider start` as typed: decimal token amounts, prices per million tokens. */
export interface ProviderAmountOptions {
  priceIn: string;
  priceOut: string;
  stake?: string;
  settleThreshold: string;
}

/** The amount options in token base units. */
export interface ProviderAmounts {
  prices: { input: bigint; output: bigint };
  stake?: bigint;
  settleThreshold: bigint;
}

/**
 * Parses the amount options of `provider start` exactly with the deployment's token decimals, the way every other
 * command parses amounts. Zero is allowed: a free provider, no settlement threshold, a registry without a minimum stake.
 *
 * @example
 * parseProviderAmounts({ priceIn: "0.5", priceOut: "1.5", stake: "150", settleThreshold: "10" }, 6)
 * // { prices: { input: 500_000n, output: 1_500_000n }, stake: 150_000_000n, settleThreshold: 10_000_000n }
 * @throws InvalidAmountError for junk, negatives, more decimals than the token has, and prices above the registry's uint128.
 */
export function parseProviderAmounts(opts: ProviderAmountOptions, decimals: number): ProviderAmounts {
  const price = (input: string): bigint => {
    const units = parseAmountOrZero(input, decimals);
    if (units > MAX_PRICE) throw new InvalidAmountError(input, "it is above the largest price the registry can hold");
    return units;
  };
  const prices = { input: price(opts.priceIn), output: price(opts.priceOut) };
  const stake = opts.stake === undefined ? undefined : parseAmountOrZero(opts.stake, decimals);
  return { prices, ...(stake !== undefined && { stake }), settleThreshold: parseAmountOrZero(opts.settleThreshold, decimals) };
}

function parseIndex(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected an account index (0, 1, 2…).");
  return Number(value);
}

function parsePositiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError("expected a positive whole number.");
  return Number(value);
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

interface StartOptions extends ProviderAmountOptions {
  model: string[];
  adaptersDir: string[];
  dataDir?: string;
  modelsDir?: string;
  offline: boolean;
  listen?: string[];
  bootstrap: string[];
  /** False with --no-ipfs. */
  ipfs: boolean;
  ipfsApi?: string;
  metricsPort: number;
  deployment?: string;
  rpc?: string;
  key?: string;
  devAccount?: number;
  threads?: number;
  contextSize?: number;
  settleInterval: number;
}

interface StatusOptions {
  dataDir?: string;
  deployment?: string;
  rpc?: string;
  address?: string;
}

/** Progress lines for a model's download, hash and load: at most one line per phase per 10%. */
function modelProgress(out: Output): (source: string, p: ModelLoadProgress) => void {
  const shown = new Map<string, number>();
  return (source, { phase, done, total }) => {
    if (!(total > 0)) return;
    const tenth = Math.floor((done / total) * 10);
    const key = `${source}:${phase}`;
    if ((shown.get(key) ?? -1) >= tenth) return;
    shown.set(key, tenth);
    out.progress(`  ${phase === "hash" ? "hashing" : phase === "load" ? "loading" : "downloading"} ${tenth * 10}%`);
  };
}

/** The provider key from --key, --dev-account or SOULMESH_PROVIDER_KEY, in that order. */
function providerKey(opts: StartOptions, deployment: Deployment): string {
  if (opts.key !== undefined && opts.devAccount !== undefined) {
    throw new ProviderKeyError("Pass either --key or --dev-account, not both.");
  }
  if (opts.devAccount !== undefined) {
    const accounts = deployment.devAccounts;
    if (accounts === undefined) {
      throw new ProviderKeyError(
        "--dev-account works only on a local devnet (its deployment lists the dev accounts). " +
          "On another chain pass --key or set SOULMESH_PROVIDER_KEY.",
      );
    }
    const account = accounts[opts.devAccount];
    if (account === undefined) {
      throw new ProviderKeyError(`The devnet has dev accounts 0 to ${accounts.length - 1}; account 3 is the "provider" one.`);
    }
    return account.privateKey;
  }
  const key = opts.key ?? process.env.SOULMESH_PROVIDER_KEY;
  if (key === undefined || key === "") {
    throw new ProviderKeyError(
      "No provider key: set SOULMESH_PROVIDER_KEY (or pass --key 0x…); on the devnet, --dev-account 3 uses the funded " +
        '"provider" account.',
    );
  }
  if (!/^0x[0-9a-fA-F]{64}$/.test(key)) throw new ProviderKeyError("The provider key must be a 32-byte hex private key (0x…).");
  return key;
}

/** The token amounts are shown in; the devnet's when no deployment can be read. */
type TokenView = Pick<Deployment["token"], "decimals" | "symbol">;
const DEVNET_TOKEN: TokenView = { decimals: 6, symbol: "tUSD" };

/**
 * Prices per million tokens for people, in the token's decimal units (they are token base units on chain).
 *
 * @example
 * describePrices({ input: 500_000n, output: 1_500_000n }, { decimals: 6, symbol: "tUSD" })
 * // "0.5 input / 1.5 output tUSD per million tokens"
 */
function describePrices(prices: { input: bigint | string; output: bigint | string }, token: TokenView): string {
  const show = (v: bigint | string): string => formatUnitsFixed(BigInt(v), token.decimals);
  return `${show(prices.input)} input / ${show(prices.output)} output ${token.symbol} per million tokens`;
}

function describeRecord(record: OnChainProvider | undefined | null, token: TokenView): string[] {
  if (record == null) return ["on chain   not registered"];
  const amount = (v: bigint): string => `${formatUnitsFixed(v, token.decimals)} ${token.symbol}`;
  return [
    `on chain   ${record.active ? "active" : "inactive (stake below the minimum)"}, stake ${amount(record.stake)}` +
      (record.unbonding > 0n ? `, unbonding ${amount(record.unbonding)}` : ""),
    `  peer     ${record.peerId}`,
    ...record.multiaddrs.map((m) => `  address  ${m}`),
    ...record.modelHashes.map((h) => `  model    ${h}`),
    `  prices   ${describePrices(record.prices, token)}`,
  ];
}

function describeStatus(st: ProviderStatus, token: TokenView): string {
  const amount = (v: unknown): string => `${formatUnitsFixed(BigInt(String(v)), token.decimals)} ${token.symbol}`;
  const up = st.uptimeSeconds;
  const uptime = up >= 3600 ? `${Math.floor(up / 3600)}h${Math.floor((up % 3600) / 60)}m` : up >= 60 ? `${Math.floor(up / 60)}m${up % 60}s` : `${up}s`;
  return [
    `provider   ${st.state} (pid ${st.pid}, up ${uptime})`,
    `address    ${st.address}`,
    `peer       ${st.peerId}`,
    ...st.multiaddrs.map((m) => `listening  ${m}`),
    ...st.models.map((m) => `model      ${m.sha256}  ${m.source}`),
    `prices     ${describePrices(st.prices, token)}`,
    `sessions   ${st.sessions.open} open (${st.sessions.busy} generating); served ${st.sessions.served.inputTokens} input / ` +
      `${st.sessions.served.outputTokens} output tokens`,
    `queue      ${st.queue.running} running, ${st.queue.queued} waiting; ${st.queue.contexts} contexts, ` +
      `${(st.queue.memoryBytes / 2 ** 20).toFixed(1)} MiB`,
    `earnings   ${amount(st.earnings.unsettled)} unsettled, ${amount(st.earnings.settled)} settled` +
      (st.earnings.claimable === null ? "" : `, ${amount(st.earnings.claimable)} claimable on chain`),
    `settlement ${st.settlement.sent} sent, ${st.settlement.confirmed} confirmed, ${st.settlement.failures} failures, ` +
      `${st.settlement.dropped} dropped; ${st.settlement.outstandingSessions} sessions outstanding` +
      (st.settlement.lastError ? `; last error: ${st.settlement.lastError}` : ""),
    `registry   ${st.registration.action}${st.registration.txHashes.length > 0 ? ` (${st.registration.txHashes.join(", ")})` : ""}`,
    `metrics    ${st.metricsUrl}`,
  ].join("\n");
}

/**
 * Where the provider fetches adapters: --ipfs-api, else the IPFS service already running on this home, else a
 * service of its own on <home>/ipfs (so that other soulmesh commands on this home reach the same blocks).
 */
async function providerIpfs(
  home: string,
  api: string | undefined,
  signal: AbortSignal,
  out: Output,
): Promise<{ store: BlockStore; close(): Promise<void> }> {
  if (api !== undefined) return openLocalIpfs({ home, api, signal });
  try {
    const service = await startLocalIpfsService({ home, signal, onProgress: (m) => out.progress(m) });
    out.progress(`IPFS API for this home at ${service.api.url}`);
    return { store: service.store, close: () => service.stop() };
  } catch (err) {
    if (!(err instanceof IpfsServiceRunningError)) throw err;
    const local = await openLocalIpfs({ home, signal });
    out.progress(`using ${local.description}`);
    return local;
  }
}

async function runStart(opts: StartOptions, out: Output, home: string): Promise<void> {
  const stops = stopSignals(() => new ProviderInterruptedError());
  let stopIpfs: (() => Promise<void>) | undefined;
  try {
    const deploymentPath = resolve(opts.deployment ?? devnetDeploymentPath(home));
    const deployment = await readDeployment(deploymentPath);
    // Before anything starts: a mistyped amount must not leave a half-started provider or a changed registry record.
    const amounts = parseProviderAmounts(opts, deployment.token.decimals);
    const token = deployment.token;
    const privateKey = providerKey(opts, deployment);
    const dataDir = resolve(opts.dataDir ?? join(home, "provider"));
    const ipfs = opts.ipfs ? await providerIpfs(home, opts.ipfsApi, stops.signal, out) : undefined;
    stopIpfs = ipfs?.close;
    const config: ProviderConfig = {
      dataDir,
      models: opts.model,
      modelsDir: resolve(opts.modelsDir ?? join(home, "models")),
      offline: opts.offline,
      adapterDirs: opts.adaptersDir.map((d) => resolve(d)),
      ...(ipfs !== undefined && { blockStore: ipfs.store }),
      ...(opts.listen !== undefined && { listen: opts.listen }),
      bootstrap: opts.bootstrap,
      prices: amounts.prices,
      ...(amounts.stake !== undefined && { stake: amounts.stake }),
      metricsPort: opts.metricsPort,
      deployment,
      deploymentPath,
      ...(opts.rpc !== undefined && { rpcUrl: opts.rpc }),
      privateKey,
      settlement: { intervalMs: opts.settleInterval * 1000, amountThreshold: amounts.settleThreshold },
      engine: {
        ...(opts.threads !== undefined && { threads: opts.threads }),
        ...(opts.contextSize !== undefined && { contextSize: opts.contextSize }),
      },
    };
    out.progress(`starting the provider (data in ${dataDir})…`);
    const showModel = modelProgress(out);
    let node;
    try {
      node = await startProvider(config, {
        signal: stops.signal,
        onProgress: (p) => {
          if (p.type === "step") out.progress(p.message);
          else if (p.type === "model") showModel(p.source, p.progress);
          else process.stderr.write(`warning: ${p.message}${p.error instanceof Error ? ` (${p.error.message})` : ""}\n`);
        },
      });
    } catch (err) {
      if (stops.signal.aborted) throw new ProviderInterruptedError();
      throw err;
    }
    const result = {
      pid: process.pid,
      peerId: node.peerId,
      multiaddrs: node.multiaddrs,
      address: node.address,
      metricsUrl: node.metricsUrl,
      statusUrl: node.statusUrl,
      dataDir,
      chainId: deployment.chainId,
      models: node.models.map((m) => m.sha256),
      prices: config.prices,
      registration: node.registration
        ? { action: node.registration.action, txHashes: node.registration.txHashes }
        : { action: "skipped", txHashes: [] },
    };
    out.result(
      result,
      [
        "",
        `Soulmesh provider ${node.address} running on chain ${deployment.chainId}`,
        `  peer id      ${node.peerId}`,
        ...node.multiaddrs.map((m) => `  listening    ${m}`),
        `  on chain     ${result.registration.action}` +
          (node.registration ? `, stake ${formatUnitsFixed(node.registration.record.stake, token.decimals)} ${token.symbol}` : ""),
        `  prices       ${describePrices(config.prices, token)}`,
        `  metrics      ${node.metricsUrl}`,
        `  status       ${node.statusUrl}  (or \`soulmesh provider status\`)`,
        "Press Ctrl-C to stop.",
      ].join("\n"),
    );
    if (!stops.signal.aborted) await new Promise((r) => stops.signal.addEventListener("abort", r, { once: true }));
    out.progress("stopping: settling outstanding vouchers, saving sessions… (Ctrl-C again to force)");
    await node.stop();
    out.progress("provider stopped");
  } finally {
    await stopIpfs?.().catch(() => {});
    stops.release();
  }
}

async function onChainRecord(
  opts: StatusOptions,
  home: string,
  last: Awaited<ReturnType<typeof readLastRun>>,
): Promise<{ address?: string; record?: OnChainProvider | null; token: TokenView; problem?: string }> {
  const address = opts.address ?? last?.address;
  if (address === undefined) {
    return { token: DEVNET_TOKEN, problem: "no provider address known: pass --address, or start the provider once on this data folder" };
  }
  let deployment: Deployment;
  try {
    deployment = await readDeployment(opts.deployment ?? last?.deploymentPath ?? devnetDeploymentPath(home));
  } catch (err) {
    return { address, token: DEVNET_TOKEN, problem: (err as Error).message };
  }
  try {
    const rpc = await connectDeployment(deployment, { rpcUrl: opts.rpc ?? last?.rpcUrl ?? deployment.rpcUrl });
    try {
      const record = await readProviderRecord(connectContracts(deployment, rpc), address);
      return { address, record: record ?? null, token: deployment.token };
    } finally {
      rpc.destroy();
    }
  } catch (err) {
    return { address, token: deployment.token, problem: (err as Error).message };
  }
}

async function runStatus(opts: StatusOptions, out: Output, home: string): Promise<void> {
  const dataDir = resolve(opts.dataDir ?? join(home, "provider"));
  const running = await readProviderState(dataDir);
  if (running !== undefined) {
    let st: ProviderStatus | undefined;
    let problem: string | undefined;
    try {
      const res = await fetch(running.statusUrl, { signal: AbortSignal.timeout(10_000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      st = (await res.json()) as ProviderStatus;
    } catch (err) {
      problem = (err as Error).message;
    }
    if (st !== undefined) {
      const token = (await readDeploymentQuiet(opts, home, await readLastRun(dataDir)))?.token ?? DEVNET_TOKEN;
      out.result({ running: true, dataDir, ...st }, describeStatus(st, token));
      return;
    }
    throw new ProviderNotRunningError(
      `A provider runs on ${dataDir} (pid ${running.pid}) but its status endpoint ${running.statusUrl} does not answer ` +
        `(${problem}). It may be starting or stuck; check its log, or stop it with kill -TERM ${running.pid}.`,
    );
  }
  const last = await readLastRun(dataDir);
  const chain = await onChainRecord(opts, home, last);
  const message = `No provider is running on ${dataDir}: start it with \`soulmesh provider start\`.`;
  out.result(
    {
      running: false,
      dataDir,
      message,
      address: chain.address ?? null,
      onChain: chain.record ?? null,
      ...(chain.problem !== undefined && { onChainProblem: chain.problem }),
    },
    [
      message,
      ...(chain.address !== undefined ? [`address    ${chain.address}`] : []),
      ...(chain.problem !== undefined ? [`on chain   unknown: ${chain.problem}`] : describeRecord(chain.record, chain.token)),
    ].join("\n"),
  );
  process.exitCode = 1;
}

async function readDeploymentQuiet(
  opts: StatusOptions,
  home: string,
  last: Awaited<ReturnType<typeof readLastRun>>,
): Promise<Deployment | undefined> {
  try {
    return await readDeployment(opts.deployment ?? last?.deploymentPath ?? devnetDeploymentPath(home));
  } catch {
    return undefined;
  }
}

/** Registers `soulmesh provider start` and `soulmesh provider status`. */
export function registerProvider(program: Command): void {
  const provider = program.command("provider").description("Run a compute provider: serve models, get paid per token");

  provider
    .command("start")
    .description("Load the models, join the network, register on chain and serve until Ctrl-C")
    .requiredOption("--model <path|hf:…>", "a GGUF model to serve (repeat for several)", collect)
    .option("--adapters-dir <dir>", "a folder of persona adapters named by CID (repeat for several)", collect, [])
    .option("--data-dir <dir>", "peer key, vouchers, session states (default <home>/provider)")
    .option("--models-dir <dir>", "where hf: models are downloaded (default <home>/models)")
    .option("--offline", "never download: an hf: model must already be in the models folder", false)
    .option("--listen <multiaddr>", "a libp2p listen address (repeat; default loopback TCP and WebSockets)", collect)
    .option("--bootstrap <multiaddr>", "a peer to dial on start, with /p2p/<id> (repeat)", collect, [])
    // Amounts stay strings until the deployment gives the token's decimals (parsed in runStart, before anything starts).
    .addOption(new Option("--price-in <amount>", "price per million input tokens, in the deployment's token").default("0.5", "0.5 tUSD"))
    .addOption(new Option("--price-out <amount>", "price per million output tokens, in the deployment's token").default("1.5", "1.5 tUSD"))
    .option("--stake <amount>", "stake to hold in the registry, in the deployment's token (default its minimum, 100 tUSD on the devnet)")
    .option("--metrics-port <port>", "Prometheus /metrics and /status on 127.0.0.1 (0 = any free port)", parsePort, 9464)
    .addOption(new Option("--key <hex>", "the provider's private key (prefer env SOULMESH_PROVIDER_KEY)"))
    .option("--dev-account <i>", "use devnet account i as the provider (3 is the funded \"provider\" account)", parseIndex)
    .option("--threads <n>", "CPU threads per context (default cores − 1)", parsePositiveInt)
    .option("--context-size <n>", "tokens per session (default the model's, at most 4096)", parsePositiveInt)
    .option("--settle-interval <s>", "settle outstanding vouchers this often, seconds (0 = only at session close)", (v) => {
      if (!/^\d+$/.test(v)) throw new InvalidArgumentError("expected whole seconds.");
      return Number(v);
    }, 300)
    .addOption(
      new Option("--settle-threshold <amount>", "settle as soon as this much is owed, in the deployment's token (0 = off)").default("10", "10 tUSD"),
    )
    .option("--no-ipfs", "fetch persona adapters only from --adapters-dir, never from IPFS")
    .addHelpText(
      "after",
      `
The provider key signs receipts, registers the provider and pays settlement gas. It comes from --key,
--dev-account (devnet only) or the SOULMESH_PROVIDER_KEY environment variable.

Examples:
  $ soulmesh devnet &                                        # a local chain
  $ soulmesh provider start --model ./models/qwen2.5-0.5b-instruct-q4_k_m.gguf --dev-account 3
  $ SOULMESH_PROVIDER_KEY=0x… soulmesh provider start --deployment ./base-sepolia.json \\
      --model hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf \\
      --listen /ip4/0.0.0.0/tcp/4001 --price-in 0.2 --price-out 0.6 --stake 150 --json

Persona adapters (LoRA) are fetched from IPFS by CID and checked against their registered SHA-256: through
--ipfs-api (a Kubo daemon), else the IPFS service of a running \`soulmesh up\`/\`devnet\` on this home, else
the provider runs that service itself on <home>/ipfs.`,
    )
    .action(async (opts: StartOptions, cmd: Command) => {
      const g = globalOptions(cmd);
      // --deployment and --rpc are global options: the program parses them wherever they appear.
      await runStart(
        {
          ...opts,
          deployment: g.deployment,
          rpc: g.rpc,
          ipfsApi: g.ipfsApi,
        },
        createOutput({ json: g.json }),
        g.home ?? soulmeshHome(),
      );
    });

  provider
    .command("status")
    .description("Show the running provider's status, or its on-chain record when it is not running (exit code 1)")
    .option("--data-dir <dir>", "the provider's data folder (default <home>/provider)")
    .option("--address <address>", "the provider address to look up on chain (default: the last one started here)")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh provider status
  $ soulmesh provider status --data-dir /var/lib/soulmesh --json`,
    )
    .action(async (opts: StatusOptions, cmd: Command) => {
      const g = globalOptions(cmd);
      await runStatus({ ...opts, deployment: g.deployment, rpc: g.rpc }, createOutput({ json: g.json }), g.home ?? soulmeshHome());
    });
}
