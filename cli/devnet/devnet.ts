import { rm } from "node:fs/promises";
import { Wallet } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { deploySoulmesh } from "../../sdk/chain/deploy.js";
import type { DeployParameters, DeployProgress } from "../../sdk/chain/deploy.js";
import { devAccounts } from "../../sdk/chain/dev-accounts.js";
import { devnetDeploymentPath, writeDeployment } from "../../sdk/chain/deployment.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { startLocalChain } from "./local-chain.js";
import type { LocalChain } from "./local-chain.js";
import { serveJsonRpc } from "./rpc-server.js";
import type { RpcServer } from "./rpc-server.js";

/** Tokens each dev account gets: 10,000 tUSD. */
export const DEV_FUNDING = 10_000n * 10n ** 6n;

/** What the devnet is doing, for progress output. */
export type DevnetEvent =
  | { type: "chain:started"; chainId: number }
  | { type: "rpc:listening"; url: string }
  | { type: "deploy:progress"; progress: DeployProgress }
  | { type: "accounts:funded"; count: number; amount: bigint }
  | { type: "deployment:written"; path: string };

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
  const chain = await startLocalChain();
  let rpc: RpcServer | undefined;
  try {
    onEvent?.({ type: "chain:started", chainId: chain.chainId });
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
