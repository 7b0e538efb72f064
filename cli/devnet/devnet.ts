import { readdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Wallet } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { deploySoulmesh } from "../../sdk/chain/deploy.js";
import type { DeployParameters, DeployProgress } from "../../sdk/chain/deploy.js";
import { devAccounts } from "../../sdk/chain/dev-accounts.js";
import { devnetDeploymentPath, writeDeployment } from "../../sdk/chain/deployment.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { isProcessAlive } from "../../node/process.js";
import { startLocalChain } from "./local-chain.js";
import type { LocalChain } from "./local-chain.js";
import { serveJsonRpc } from "./rpc-server.js";
import type { RpcServer } from "./rpc-server.js";

/** Tokens each dev account gets: 10,000 tUSD. */
export const DEV_FUNDING = 10_000n * 10n ** 6n;

/** What the devnet is doing, for progress output. */
export type DevnetEvent =
  | { type: "chain:started"; chainId: number }
  /** Local state of agents of an earlier devnet (same chain id, chain gone) was removed. */
  | { type: "state:cleared"; agents: string[] }
  | { type: "rpc:listening"; url: string }
  | { type: "deploy:progress"; progress: DeployProgress }
  | { type: "accounts:funded"; count: number; amount: bigint }
  | { type: "deployment:written"; path: string };

/** How long a recorded devnet's JSON-RPC gets to answer before it is taken for gone. */
const PROBE_TIMEOUT_MS = 2_000;

/** Another live process already runs the devnet of this home. */
export class DevnetRunningError extends SoulmeshError {
  override readonly name = "DevnetRunningError";
  constructor(
    readonly home: string,
    readonly pid: number,
    readonly rpcUrl: string,
  ) {
    super(
      `A Soulmesh devnet of ${home} already runs in process ${pid} (JSON-RPC at ${rpcUrl}). Use it (other soulmesh ` +
        `commands find it on their own), stop it (Ctrl-C in its terminal, or kill -TERM ${pid}), or pass another --home.`,
    );
  }
}

/** Options of {@link startDevnet}. */
export interface DevnetOptions {
  /** Loopback host to bind (default 127.0.0.1). */
  host?: string;
  /** Port (default 8545; 0 picks a free one). */
  port?: number;
  /** Where devnet.json is written (default `$SOULMESH_HOME`, else ~/.soulmesh). */
  home?: string;
  parameters?: Partial<DeployParameters>;
  onEvent?: (event: DevnetEvent) => void;
  signal?: AbortSignal;
}

/** A running local network. */
export interface Devnet {
  deployment: Deployment;
  deploymentPath: string;
  chain: LocalChain;
  rpc: RpcServer;
  /** Stops serving and removes devnet.json, which would point at a dead chain. */
  stop(): Promise<void>;
}

/**
 * Starts a local Soulmesh network: a Hardhat (EDR) chain served over JSON-RPC on loopback, every contract
 * deployed, each dev account funded with test tokens, and the deployment written to `<home>/devnet.json`
 * for other processes to use.
 *
 * @example
 * const devnet = await startDevnet({ port: 0, home: "/tmp/sm", onEvent: console.log })
 * // …
 * await devnet.stop()
 */
export async function startDevnet(options: DevnetOptions = {}): Promise<Devnet> {
  const { signal, onEvent } = options;
  const host = options.host ?? "127.0.0.1";
  const deploymentPath = devnetDeploymentPath(options.home);
  await refuseIfRunning(deploymentPath, signal);
  const chain = await startLocalChain();
  let rpc: RpcServer | undefined;
  try {
    onEvent?.({ type: "chain:started", chainId: chain.chainId });
    const cleared = await clearStaleAgents(dirname(deploymentPath), chain.chainId);
    if (cleared.length > 0) onEvent?.({ type: "state:cleared", agents: cleared });
    rpc = await serveJsonRpc(chain.eip1193, { host, port: options.port ?? 8545 });
    onEvent?.({ type: "rpc:listening", url: rpc.url });

    const accounts = devAccounts();
    const deployer = new Wallet(accounts[0]!.privateKey, chain.provider);
    const deployment = await deploySoulmesh({
      deployer,
      rpcUrl: rpc.url,
      parameters: options.parameters,
      signal,
      onProgress: (progress) => onEvent?.({ type: "deploy:progress", progress }),
    });

    const { token } = connectContracts(deployment, deployer);
    // Mint in parallel with explicit nonces: one block each, no waiting between them.
    const nonce = await deployer.getNonce();
    const txs = await Promise.all(accounts.map((a, i) => token.mint(a.address, DEV_FUNDING, { nonce: nonce + i })));
    await Promise.all(txs.map((tx) => tx.wait()));
    onEvent?.({ type: "accounts:funded", count: accounts.length, amount: DEV_FUNDING });

    signal?.throwIfAborted();
    const full: Deployment = { ...deployment, devAccounts: accounts, pid: process.pid };
    await writeDeployment(deploymentPath, full);
    onEvent?.({ type: "deployment:written", path: deploymentPath });

    const server = rpc;
    let stopped: Promise<void> | undefined;
    return {
      deployment: full,
      deploymentPath,
      chain,
      rpc: server,
      stop: () =>
        (stopped ??= (async () => {
          await rm(deploymentPath, { force: true });
          await server.close();
          await chain.close();
        })()),
    };
  } catch (err) {
    await rpc?.close().catch(() => {});
    await chain.close().catch(() => {});
    throw err;
  }
}

/** Throws DevnetRunningError when `deploymentPath` names a live process whose JSON-RPC answers. */
async function refuseIfRunning(deploymentPath: string, signal: AbortSignal | undefined): Promise<void> {
  let recorded: { pid?: unknown; rpcUrl?: unknown };
  try {
    recorded = JSON.parse(await readFile(deploymentPath, "utf8")) as typeof recorded;
  } catch {
    return;
  }
  const { pid, rpcUrl } = recorded;
  if (typeof pid !== "number" || typeof rpcUrl !== "string" || !isProcessAlive(pid)) return;
  const timeout = AbortSignal.timeout(PROBE_TIMEOUT_MS);
  try {
    const res = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
      signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
    });
    if (!res.ok) return;
  } catch {
    signal?.throwIfAborted();
    // Recorded and alive, but nothing answers: a reused pid. Its file is overwritten.
    return;
  }
  throw new DevnetRunningError(dirname(deploymentPath), pid, rpcUrl);
}

/**
 * Removes `<home>/agents/<chainId>-*`: the devnet's chain lives in memory, so a new one reuses the chain id and,
 * deploying from the same account, the same contract addresses and agent ids. An old agent's journal and key
 * would then be taken for the new agent of the same id. Returns the folder names removed.
 *
 * @example
 * await clearStaleAgents("/tmp/sm", 31337) // ["31337-1"]
 */
export async function clearStaleAgents(home: string, chainId: number): Promise<string[]> {
  const dir = join(home, "agents");
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const stale = names.filter((n) => n.startsWith(`${chainId}-`));
  for (const name of stale) await rm(join(dir, name), { recursive: true, force: true });
  return stale;
}
