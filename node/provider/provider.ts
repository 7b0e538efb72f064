/**
 * The provider daemon: models and engine, voucher book and settlement worker, libp2p host with the quote and
 * paid protocols, the on-chain registration, Prometheus metrics and a state file for `soulmesh provider
 * status`, started in order and stopped in the reverse one.
 */
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { getAddress, Wallet, type Provider } from "ethers";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { ChainMismatchError } from "../../sdk/chain/errors.js";
import { connectDeployment } from "../../sdk/chain/rpc.js";
import type { EscrowRef } from "../../sdk/chain/voucher.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { MAX_QUOTE_ADAPTERS, MAX_TOKENS_PER_TURN } from "../../sdk/protocol/index.js";
import { UnknownSessionError } from "../billing/errors.js";
import { SettlementWorker, type SettlementPolicy } from "../billing/settlement.js";
import { VoucherBook } from "../billing/voucher-book.js";
import {
  AdapterStore,
  createEngine,
  defaultThreads,
  FileHashCache,
  folderAdapterSource,
  ipfsAdapterSource,
  loadBaseModel,
  SessionStateStore,
  type InferenceEngine,
  type LoadedModel,
  type ModelLoadProgress,
} from "../engine/index.js";
import type { ProtocolService } from "../p2p/handler.js";
import { createProviderHost, type ProviderHost } from "../p2p/host.js";
import { chainViewOf, serveProviderProtocols, type ProviderProtocols } from "../p2p/provider-protocols.js";
import { serveQuotes } from "../p2p/quote.js";
import { ProviderAlreadyRunningError, ProviderConfigError } from "./errors.js";
import {
  ProviderMetrics,
  serveProviderHttp,
  settledProviderAmount,
  type ProviderHttpServer,
  type SettlementSummary,
} from "./metrics.js";
import { ensureProviderRegistered, type OnChainProvider, type RegistrationResult } from "./registration.js";
import { SerialSigner } from "./serial-signer.js";
import { isProcessAlive } from "../process.js";

/** The state file a running provider keeps in its data folder. */
export const STATE_FILE = "provider.json";
/** What the last start recorded (address, chain, deployment), kept after stop for `provider status`. */
export const LAST_RUN_FILE = "last-run.json";

/** Default settlement policy: every 5 minutes, or at 10 tokens (6 decimals) owed, 50 vouchers a batch. */
export const DEFAULT_SETTLEMENT_POLICY: SettlementPolicy = {
  intervalMs: 5 * 60_000,
  amountThreshold: 10_000_000n,
  maxBatch: 50,
};

export interface ProviderConfig {
  /** Peer key, voucher book, saved states, adapter cache and state file live here. */
  dataDir: string;
  /** GGUF paths or hf: URIs; at least one. */
  models: readonly string[];
  /** Where hf: models are downloaded and hashes cached; default `<dataDir>/models`. */
  modelsDir?: string;
  /** Never download: hf: models must already be in modelsDir. */
  offline?: boolean;
  /**
   * Folders holding persona adapters named by their CID (`<dir>/<cid>` or `<dir>/<cid>.gguf`), tried
   * before IPFS (`blockStore`).
   */
  adapterDirs?: readonly string[];
  /**
   * An IPFS block store (the local IPFS service or a Kubo daemon) to fetch persona adapters from by CID,
   * tried after the folders in `adapterDirs`. The provider does not start or stop it.
   */
  blockStore?: BlockStore;
  /** Size limit of the adapter cache; default 8 GiB. */
  adapterCacheBytes?: number;
  /** libp2p listen multiaddrs; default loopback TCP and WebSockets on free ports. */
  listen?: readonly string[];
  bootstrap?: readonly string[];
  /** Token units per million tokens. */
  prices: { input: bigint; output: bigint };
  /** Stake to hold in the registry; default its minimum. */
  stake?: bigint;
  /** 0 picks a free port; default 9464. */
  metricsPort?: number;
  /** Default 127.0.0.1. */
  metricsHost?: string;
  deployment: Deployment;
  /** Where the deployment was read from (recorded for `provider status`). */
  deploymentPath?: string;
  /** The JSON-RPC URL; default the deployment's. */
  rpcUrl?: string;
  /** An ethers provider to use instead of connecting to a URL (an in-process chain in tests). */
  rpc?: Provider;
  /** The provider's private key (0x + 64 hex): it registers, signs receipts and settles. */
  privateKey: string;
  settlement?: Partial<SettlementPolicy> & {
    /** A voucher expiring within this many seconds is not sent; default 20. */
    expiryMarginSeconds?: number;
    /** Longest wait for the settlement pass on stop; default 15 s. */
    stopTimeoutMs?: number;
  };
  engine?: {
    /** Default cores − 1. */
    threads?: number;
    contextSize?: number;
    sequencesPerContext?: number;
    maxConcurrent?: number;
    maxQueued?: number;
    memoryBudgetBytes?: number;
    sessionIdleMs?: number;
  };
  /**
   * A session is closed (and its voucher settled) this many seconds before its expiry; default 60, which is
   * also the voucher book's refusal margin: the last minute of a session cannot be paid for anyway.
   */
  sessionCloseMarginSeconds?: number;
  /** How often expired sessions are closed; default 5 s. */
  sessionSweepMs?: number;
  /** How often earningsOf(provider) is polled for the metrics; default 30 s. */
  earningsPollMs?: number;
  /** Saved KV states live this long; default the escrow's voucher lifetime. */
  stateTtlMs?: number;
  /** A llama.cpp binding to share (tests); default a CPU one created and disposed by the node. */
  llama?: Llama;
  /** Send registration transactions (default true); false only reads the record. */
  register?: boolean;
}

export type ProviderProgress =
  | { type: "step"; message: string }
  | { type: "model"; source: string; progress: ModelLoadProgress }
  | { type: "warning"; message: string; error?: unknown };

export interface StartProviderOptions {
  signal?: AbortSignal;
  onProgress?: (event: ProviderProgress) => void;
}

/** The state file's content. */
export interface ProviderStateFile {
  pid: number;
  peerId: string;
  multiaddrs: string[];
  address: string;
  metricsUrl: string;
  statusUrl: string;
  startedAt: string;
}

/** What `provider status` shows when the node is not running. */
export interface LastRunFile {
  address: string;
  chainId: number;
  providerRegistry: string;
  inferenceEscrow: string;
  rpcUrl: string;
  deploymentPath?: string;
}

/** GET /status. */
export interface ProviderStatus {
  state: "running" | "stopping";
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  peerId: string;
  multiaddrs: string[];
  address: string;
  chainId: number;
  contracts: { providerRegistry: string; inferenceEscrow: string };
  metricsUrl: string;
  registration: { action: RegistrationResult["action"] | "skipped"; txHashes: string[]; record: OnChainProvider | null; minStake: bigint };
  models: { sha256: string; source: string; path: string; architecture: string | undefined }[];
  prices: { input: bigint; output: bigint };
  sessions: {
    open: number;
    busy: number;
    served: { inputTokens: bigint; outputTokens: bigint };
    vouched: { inputTokens: bigint; outputTokens: bigint };
    list: {
      sessionId: string;
      payer: string;
      agentId: bigint;
      nextTurn: number;
      served: { inputTokens: bigint; outputTokens: bigint };
      vouched: { inputTokens: bigint; outputTokens: bigint };
      expiry: bigint;
    }[];
  };
  queue: InferenceEngine["load"];
  earnings: { unsettled: bigint; settled: bigint; claimable: bigint | null };
  settlement: SettlementSummary & { policy: SettlementPolicy; outstandingSessions: number };
}

/** A running provider. */
export interface ProviderNode {
  readonly peerId: string;
  readonly multiaddrs: string[];
  /** The provider's address (checksummed). */
  readonly address: string;
  /** e.g. http://127.0.0.1:9464/metrics */
  readonly metricsUrl: string;
  /** e.g. http://127.0.0.1:9464/status */
  readonly statusUrl: string;
  readonly registration: RegistrationResult | undefined;
  readonly models: readonly LoadedModel[];
  /** The parts, for tests and embedding. */
  readonly parts: {
    engine: InferenceEngine;
    book: VoucherBook;
    worker: SettlementWorker;
    host: ProviderHost;
    protocols: ProviderProtocols;
    metrics: ProviderMetrics;
  };
  status(): Promise<ProviderStatus>;
  /** Stops serving, settles what is outstanding (bounded), and releases everything. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * The state file of a provider running on `dataDir`, or undefined when none runs (a stale file, left by a
 * process that died, reads as none).
 *
 * @example
 * const running = await readProviderState(join(soulmeshHome(), "provider"))
 */
export async function readProviderState(dataDir: string): Promise<ProviderStateFile | undefined> {
  let state: ProviderStateFile;
  try {
    state = JSON.parse(await readFile(join(dataDir, STATE_FILE), "utf8")) as ProviderStateFile;
  } catch {
    return undefined;
  }
  if (typeof state?.pid !== "number" || !isProcessAlive(state.pid)) return undefined;
  return state;
}

/**
 * What the last start on `dataDir` recorded (address, chain), or undefined.
 *
 * @example
 * const last = await readLastRun(dataDir)
 */
export async function readLastRun(dataDir: string): Promise<LastRunFile | undefined> {
  try {
    return JSON.parse(await readFile(join(dataDir, LAST_RUN_FILE), "utf8")) as LastRunFile;
  } catch {
    return undefined;
  }
}


async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}

/** Resolves with `promise`'s outcome ignored, or after `ms`, whichever comes first. */
async function bounded(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a provider: loads the models, opens the voucher book and starts settling, starts the libp2p host
 * and serves the quote, session, inference and voucher protocols, registers (or updates) the provider on
 * chain, serves metrics and status, and writes `<dataDir>/provider.json`.
 *
 * @example
 * const node = await startProvider({
 *   dataDir, models: ["./models/tiny.gguf"], prices: { input: 500_000n, output: 1_500_000n },
 *   deployment, privateKey, metricsPort: 0,
 * }, { onProgress: (p) => p.type === "step" && console.error(p.message) })
 * console.log(node.peerId, node.metricsUrl)
 * await node.stop()
 * @throws ProviderConfigError, ProviderAlreadyRunningError, RpcUnreachableError, ChainMismatchError, model errors
 * (ModelNotFoundError, HashMismatchError…), InsufficientStakeTokensError, MetricsPortError. Whatever was
 * started is stopped again before the error is thrown.
 */
export async function startProvider(config: ProviderConfig, options: StartProviderOptions = {}): Promise<ProviderNode> {
  const { signal } = options;
  const step = (message: string): void => options.onProgress?.({ type: "step", message });
  const warn = (message: string, error?: unknown): void => options.onProgress?.({ type: "warning", message, error });
  checkConfig(config);
  signal?.throwIfAborted();
  const { deployment, dataDir } = config;

  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const running = await readProviderState(dataDir);
  if (running !== undefined && running.pid !== process.pid) throw new ProviderAlreadyRunningError(dataDir, running.pid);

  // Everything started is stopped again, in reverse, if a later step fails.
  const undo: (() => Promise<unknown>)[] = [];
  const unwind = async (): Promise<void> => {
    for (const f of undo.splice(0).reverse()) await f().catch(() => {});
  };

  try {
    // ------------------------------------------------------------------------------------ chain and wallet
    let rpc: Provider;
    if (config.rpc !== undefined) {
      rpc = config.rpc;
      const chainId = (await rpc.getNetwork()).chainId;
      if (chainId !== BigInt(deployment.chainId)) {
        throw new ChainMismatchError(BigInt(deployment.chainId), chainId, config.rpcUrl ?? deployment.rpcUrl);
      }
    } else {
      const owned = await connectDeployment(deployment, { ...(config.rpcUrl !== undefined && { rpcUrl: config.rpcUrl }), ...(signal && { signal }) });
      undo.push(async () => owned.destroy());
      rpc = owned;
    }
    const wallet = new Wallet(config.privateKey, rpc);
    const address = getAddress(wallet.address);
    const signer = new SerialSigner(wallet);
    const contracts = connectContracts(deployment, signer);
    const reader = connectContracts(deployment, rpc);
    const escrow: EscrowRef = { chainId: deployment.chainId, address: deployment.contracts.inferenceEscrow };
    // Vouchers expire by chain time, which a devnet's time travel (or a skewed host clock) moves away from
    // ours: the voucher book judges them by chain time, as the escrow will, estimated from the offset between
    // the two clocks, which the session sweep keeps fresh.
    let chainOffsetSeconds = 0;
    const readChainOffset = async (): Promise<void> => {
      const block = await rpc.getBlock("latest");
      if (block !== null) chainOffsetSeconds = block.timestamp - Math.floor(Date.now() / 1000);
    };
    await readChainOffset();
    step(`provider ${address} on chain ${deployment.chainId} (escrow ${escrow.address})`);

    // ------------------------------------------------------------------------------------ models and engine
    const llama = config.llama ?? (await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error }));
    if (config.llama === undefined) undo.push(() => llama.dispose());
    const modelsDir = config.modelsDir ?? join(dataDir, "models");
    await mkdir(modelsDir, { recursive: true });
    const hashCache = new FileHashCache({ path: join(modelsDir, "hashes.json") });
    const models: LoadedModel[] = [];
    const sources = new Map<string, string>();
    for (const source of config.models) {
      signal?.throwIfAborted();
      step(`loading model ${source}`);
      const loaded = await loadBaseModel(llama, {
        source,
        modelsDir,
        hashCache,
        gpuLayers: 0,
        download: config.offline !== true,
        showProgressBar: false,
        onProgress: (progress) => options.onProgress?.({ type: "model", source, progress }),
        ...(signal && { signal }),
      });
      undo.push(() => loaded.dispose());
      if (models.some((m) => m.sha256 === loaded.sha256)) {
        warn(`model ${source} is the same file as one already loaded (${loaded.sha256}); serving it once`);
        await loaded.dispose();
        continue;
      }
      models.push(loaded);
      sources.set(loaded.sha256, source);
      step(`model ${loaded.sha256} loaded (${loaded.architecture ?? "unknown architecture"})`);
    }

    const adapters = new AdapterStore({
      dir: join(dataDir, "adapters"),
      maxBytes: config.adapterCacheBytes ?? 8 * 2 ** 30,
      sources: [
        ...(config.adapterDirs ?? []).map((dir) => folderAdapterSource(dir)),
        ...(config.blockStore === undefined ? [] : [ipfsAdapterSource(config.blockStore)]),
      ],
    });
    await adapters.start(signal ? { signal } : {});
    undo.push(() => adapters.stop());
    // Payers choose how many sessions they open and how long their contexts grow: the saved states are bounded
    // (issue 14, attack 3), least recently used evicted first, and one state above its limit is simply not saved.
    const states = new SessionStateStore({
      dir: join(dataDir, "states"),
      ttlMs: config.stateTtlMs ?? deployment.parameters.maxVoucherLifetime * 1000,
      maxBytes: 2 * 2 ** 30,
      maxStateBytes: 256 * 2 ** 20,
    });
    await states.start(signal ? { signal } : {});
    undo.push(() => states.stop());
    const e = config.engine ?? {};
    const engine = createEngine({
      llama,
      models,
      adapters,
      states,
      threads: e.threads ?? defaultThreads(),
      ...(e.contextSize !== undefined && { contextSize: e.contextSize }),
      ...(e.sequencesPerContext !== undefined && { sequencesPerContext: e.sequencesPerContext }),
      ...(e.maxConcurrent !== undefined && { maxConcurrent: e.maxConcurrent }),
      ...(e.maxQueued !== undefined && { maxQueued: e.maxQueued }),
      ...(e.memoryBudgetBytes !== undefined && { memoryBudgetBytes: e.memoryBudgetBytes }),
      ...(e.sessionIdleMs !== undefined && { sessionIdleMs: e.sessionIdleMs }),
    });
    await engine.start();
    undo.push(() => engine.stop());

    // ------------------------------------------------------------------------------------ billing
    const book = new VoucherBook({
      dir: join(dataDir, "vouchers"),
      escrow,
      provider: address,
      maxLifetimeSeconds: deployment.parameters.maxVoucherLifetime,
      now: () => Math.floor(Date.now() / 1000) + chainOffsetSeconds,
    });
    await book.start(signal ? { signal } : {});
    undo.push(() => book.stop());
    const s = config.settlement ?? {};
    const policy: SettlementPolicy = {
      intervalMs: s.intervalMs ?? DEFAULT_SETTLEMENT_POLICY.intervalMs,
      amountThreshold: s.amountThreshold ?? DEFAULT_SETTLEMENT_POLICY.amountThreshold,
      maxBatch: s.maxBatch ?? DEFAULT_SETTLEMENT_POLICY.maxBatch,
    };
    const worker = new SettlementWorker({
      book,
      escrow: contracts.inferenceEscrow,
      policy,
      expiryMarginSeconds: s.expiryMarginSeconds ?? 20,
    });
    const metrics = new ProviderMetrics();
    undo.push(async () => metrics.close());
    metrics.bindEngine(engine);
    metrics.bindBook(book);
    metrics.bindWorker(worker);
    worker.start();
    undo.push(() => worker.stop());

    // ------------------------------------------------------------------------------------ network
    const host = await createProviderHost({
      dataDir,
      ...(config.listen !== undefined && { listen: [...config.listen] }),
      ...(config.bootstrap !== undefined && { bootstrap: [...config.bootstrap] }),
      ...(signal && { signal }),
    });
    host.addEventListener("peer:unreachable", (ev) => {
      const { multiaddr, error } = (ev as CustomEvent<{ multiaddr: string; error: unknown }>).detail;
      warn(`bootstrap peer ${multiaddr} is unreachable; running without it`, error);
    });
    await host.start(signal ? { signal } : {});
    undo.push(() => host.stop());
    const peerId = host.peerId.toString();
    step(`libp2p peer ${peerId} listening on ${host.multiaddrs().map(String).join(", ")}`);

    const prices = { ...config.prices };
    const protocols = await serveProviderProtocols({
      libp2p: host.libp2p,
      engine,
      book,
      chain: chainViewOf(reader),
      signer: wallet,
      escrow,
      prices: () => prices,
      expiryMarginSeconds: config.sessionCloseMarginSeconds ?? 60,
    });
    undo.push(() => protocols.stop());
    metrics.bindProtocols(protocols);
    let stopping = false;
    protocols.addEventListener("session:closed", (ev) => {
      // On stop, one settlement pass covers every session.
      if (stopping) return;
      worker.closeSession(ev.detail.sessionKey).catch((err: unknown) => {
        if (err instanceof UnknownSessionError) return; // no voucher arrived: nothing to settle
        warn(`settling session ${ev.detail.sessionId} failed; the timer will retry`, err);
      });
    });
    const maxTokens = Math.min(engine.contextSize, MAX_TOKENS_PER_TURN);
    const quotes: ProtocolService = await serveQuotes(host.libp2p, {
      quoteSource: () => {
        const load = engine.load;
        return {
          provider: address,
          models: models.map((m) => m.sha256),
          cachedAdapters: adapters
            .entries()
            .map((a) => a.sha256)
            .slice(-MAX_QUOTE_ADAPTERS),
          priceInputPerMillion: prices.input.toString(),
          priceOutputPerMillion: prices.output.toString(),
          queueLength: load.queued + load.running,
          maxTokens,
        };
      },
    });
    undo.push(() => quotes.stop());
    metrics.bindService(quotes, "quote");
    const sweeper = setInterval(() => {
      readChainOffset().catch((err: unknown) => warn("reading chain time failed", err));
      protocols.closeExpired().catch((err: unknown) => warn("closing expired sessions failed", err));
    }, config.sessionSweepMs ?? 5_000);
    sweeper.unref();
    undo.push(async () => clearInterval(sweeper));

    // ------------------------------------------------------------------------------------ registration
    let registration: RegistrationResult | undefined;
    const multiaddrs = host.multiaddrs().map(String);
    if (config.register !== false) {
      step("checking the on-chain registration…");
      registration = await ensureProviderRegistered({
        contracts,
        peerId,
        multiaddrs,
        modelHashes: models.map((m) => m.sha256),
        prices,
        ...(config.stake !== undefined && { stake: config.stake }),
        ...(signal && { signal }),
        onProgress: step,
      });
      step(`on-chain record ${registration.action}`);
    }

    // ------------------------------------------------------------------------------------ metrics and state
    metrics.pollEarnings(() => reader.inferenceEscrow.earningsOf(address), config.earningsPollMs ?? 30_000);
    const startedAt = new Date();
    let state: "running" | "stopping" = "running";
    let http: ProviderHttpServer | undefined;

    const status = async (): Promise<ProviderStatus> => {
      const sessions = protocols.sessions();
      const sum = (pick: (x: (typeof sessions)[number]) => { inputTokens: bigint; outputTokens: bigint }) =>
        sessions.reduce(
          (acc, x) => ({ inputTokens: acc.inputTokens + pick(x).inputTokens, outputTokens: acc.outputTokens + pick(x).outputTokens }),
          { inputTokens: 0n, outputTokens: 0n },
        );
      let unsettled = 0n;
      let settled = 0n;
      let outstandingSessions = 0;
      try {
        for (const c of await book.outstanding()) {
          unsettled += c.providerAmount;
          outstandingSessions += c.sessions;
        }
        for (const entry of await book.entries()) settled += settledProviderAmount(entry);
      } catch {
        // The book is closed (stopping).
      }
      return {
        state,
        pid: process.pid,
        startedAt: startedAt.toISOString(),
        uptimeSeconds: Math.round((Date.now() - startedAt.getTime()) / 1000),
        peerId,
        multiaddrs,
        address,
        chainId: deployment.chainId,
        contracts: { providerRegistry: deployment.contracts.providerRegistry, inferenceEscrow: deployment.contracts.inferenceEscrow },
        metricsUrl: http?.metricsUrl ?? "",
        registration: registration
          ? { action: registration.action, txHashes: registration.txHashes, record: registration.record, minStake: registration.minStake }
          : { action: "skipped", txHashes: [], record: null, minStake: BigInt(deployment.parameters.minStake) },
        models: models.map((m) => ({ sha256: m.sha256, source: sources.get(m.sha256) ?? m.path, path: m.path, architecture: m.architecture })),
        prices: { ...prices },
        sessions: {
          open: sessions.length,
          busy: sessions.filter((x) => x.busy).length,
          served: sum((x) => x.served),
          vouched: sum((x) => x.vouched),
          list: sessions.slice(0, 100).map((x) => ({
            sessionId: x.sessionId,
            payer: x.payer,
            agentId: x.agentId,
            nextTurn: x.nextTurn,
            served: x.served,
            vouched: x.vouched,
            expiry: x.expiry,
          })),
        },
        queue: engine.load,
        earnings: { unsettled, settled, claimable: metrics.claimable ?? null },
        settlement: { ...metrics.settlement, policy, outstandingSessions },
      };
    };

    http = await serveProviderHttp({ metrics, status, port: config.metricsPort ?? 9464, ...(config.metricsHost && { host: config.metricsHost }) });
    const server = http;
    undo.push(() => server.close());
    step(`metrics at ${server.metricsUrl}, status at ${server.url}/status`);

    const statePath = join(dataDir, STATE_FILE);
    const stateFile: ProviderStateFile = {
      pid: process.pid,
      peerId,
      multiaddrs,
      address,
      metricsUrl: server.metricsUrl,
      statusUrl: `${server.url}/status`,
      startedAt: startedAt.toISOString(),
    };
    await writeJsonAtomic(statePath, stateFile);
    undo.push(() => rm(statePath, { force: true }));
    const lastRun: LastRunFile = {
      address,
      chainId: deployment.chainId,
      providerRegistry: deployment.contracts.providerRegistry,
      inferenceEscrow: deployment.contracts.inferenceEscrow,
      rpcUrl: config.rpcUrl ?? deployment.rpcUrl,
      ...(config.deploymentPath !== undefined && { deploymentPath: config.deploymentPath }),
    };
    await writeJsonAtomic(join(dataDir, LAST_RUN_FILE), lastRun);
    signal?.throwIfAborted();

    let stopped: Promise<void> | undefined;
    const stop = (): Promise<void> =>
      (stopped ??= (async () => {
        state = "stopping";
        stopping = true;
        undo.length = 0; // from here on, the order below owns the shutdown
        clearInterval(sweeper);
        const stopTimeoutMs = s.stopTimeoutMs ?? 15_000;
        // 1. Stop accepting: no new quote, session, turn or voucher; running turns are aborted and counted.
        await quotes.stop().catch(() => {});
        await protocols.stop().catch((err: unknown) => warn("stopping the protocols failed", err));
        // 2. Settle what is outstanding, once, within a bound (a dead RPC must not hold the shutdown).
        const settled = await bounded(worker.settleNow({ trigger: "close" }), stopTimeoutMs);
        if (!settled) warn(`settlement did not finish within ${stopTimeoutMs} ms; it resumes on the next start`);
        await bounded(worker.stop(), stopTimeoutMs);
        // 3. Network, engine (saves hot sessions' states), stores, models.
        await host.stop().catch((err: unknown) => warn("stopping the libp2p host failed", err));
        await engine.stop().catch((err: unknown) => warn("stopping the engine failed", err));
        await states.stop().catch(() => {});
        await adapters.stop().catch(() => {});
        for (const m of models) await m.dispose().catch(() => {});
        if (config.llama === undefined) await llama.dispose().catch(() => {});
        await book.stop().catch((err: unknown) => warn("closing the voucher book failed", err));
        // 4. Metrics and the state file last: status answers "stopping" until here.
        metrics.close();
        await server.close();
        await rm(statePath, { force: true });
        if (config.rpc === undefined) (rpc as { destroy?: () => void }).destroy?.();
      })());

    return {
      peerId,
      multiaddrs,
      address,
      metricsUrl: server.metricsUrl,
      statusUrl: `${server.url}/status`,
      registration,
      models,
      parts: { engine, book, worker, host, protocols, metrics },
      status,
      stop,
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

function checkConfig(config: ProviderConfig): void {
  if (config.models.length === 0) throw new ProviderConfigError("No model to serve: pass --model <path|hf:…> at least once.");
  if (config.prices.input < 0n || config.prices.output < 0n) {
    throw new ProviderConfigError("Prices are token units per million tokens and cannot be negative.");
  }
  if (!/^0x[0-9a-fA-F]{64}$/.test(config.privateKey)) {
    throw new ProviderConfigError(
      "The provider key must be a 32-byte hex private key (0x…): pass --key, set SOULMESH_PROVIDER_KEY, " +
        "or on the devnet use --dev-account 3.",
    );
  }
}
