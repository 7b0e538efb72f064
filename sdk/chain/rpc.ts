import { JsonRpcProvider, Network } from "ethers";
import type { Deployment } from "./deployment.js";
import { ChainMismatchError, RpcUnreachableError } from "./errors.js";

/** Options of {@link connectRpc}. */
export interface ConnectRpcOptions {
  /** Fail unless the endpoint serves this chain. */
  expectedChainId?: number;
  /** Give up reaching the endpoint after this long (default 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Connects to a JSON-RPC endpoint and checks that it answers, and serves the expected chain. The provider
 * never caches calls: ethers' default 250 ms cache hands a second transaction sent right after the first
 * the same nonce.
 *
 * @example
 * const provider = await connectRpc(deployment.rpcUrl, { expectedChainId: deployment.chainId })
 * @throws RpcUnreachableError when the endpoint does not answer; ChainMismatchError on another chain.
 */
export async function connectRpc(url: string, options: ConnectRpcOptions = {}): Promise<JsonRpcProvider> {
  const timeout = AbortSignal.timeout(options.timeoutMs ?? 10_000);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  let chainId: bigint;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
      signal,
    });
    const body = (await response.json()) as { result?: unknown };
    if (typeof body.result !== "string") throw new Error(`unexpected answer to eth_chainId: ${JSON.stringify(body)}`);
    chainId = BigInt(body.result);
  } catch (err) {
    options.signal?.throwIfAborted();
    throw new RpcUnreachableError(url, err);
  }
  if (options.expectedChainId !== undefined && chainId !== BigInt(options.expectedChainId)) {
    throw new ChainMismatchError(BigInt(options.expectedChainId), chainId, url);
  }
  return new JsonRpcProvider(url, Network.from(chainId), {
    staticNetwork: true,
    cacheTimeout: -1,
    pollingInterval: 250,
  });
}

/**
 * Connects to the chain of a deployment (or to `rpcUrl` when given, e.g. from --rpc), checking its chain id.
 *
 * @example
 * const provider = await connectDeployment(await readDeployment(devnetDeploymentPath()))
 */
export function connectDeployment(
  deployment: Deployment,
  options: { rpcUrl?: string; signal?: AbortSignal } = {},
): Promise<JsonRpcProvider> {
  return connectRpc(options.rpcUrl ?? deployment.rpcUrl, {
    expectedChainId: deployment.chainId,
    signal: options.signal,
  });
}
