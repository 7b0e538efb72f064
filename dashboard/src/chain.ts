import { BrowserProvider, JsonRpcProvider } from "ethers";
import type { Eip1193Provider } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import type { TokenInfo } from "./format.js";

/** Read-only access to the chain through the dashboard server's /rpc. */
export interface ChainReader {
  provider: JsonRpcProvider;
  contracts: SoulmeshContracts;
  token: TokenInfo;
  /** Seconds between scheduling a royalty change and its taking effect. */
  royaltyDelay: number;
  /** The highest royalty per million tokens the persona registry accepts (fixed at deployment). */
  maxRoyaltyPerMillion: bigint;
  close(): void;
}

/** The same-origin JSON-RPC endpoint the dashboard server forwards to the chain. */
export function rpcUrl(): string {
  return new URL("/rpc", location.origin).toString();
}

/**
 * Connects read-only contract handles over /rpc and reads the token's symbol and decimals, the royalty delay and
 * the royalty cap.
 *
 * @example
 * const reader = await openChainReader(config.deployment)
 * reader.token // { symbol: "tUSD", decimals: 6 }
 */
export async function openChainReader(deployment: Deployment): Promise<ChainReader> {
  const provider = new JsonRpcProvider(rpcUrl(), deployment.chainId, { staticNetwork: true, pollingInterval: 1000 });
  const contracts = connectContracts(deployment, provider);
  try {
    const [symbol, decimals, delay, maxRoyalty] = await Promise.all([
      contracts.token.symbol(),
      contracts.token.decimals(),
      contracts.personaRegistry.royaltyDelay(),
      contracts.personaRegistry.maxRoyaltyPerMillion(),
    ]);
    return {
      provider,
      contracts,
      token: { symbol, decimals: Number(decimals) },
      royaltyDelay: Number(delay),
      maxRoyaltyPerMillion: maxRoyalty,
      close: () => provider.destroy(),
    };
  } catch (err) {
    provider.destroy();
    throw err;
  }
}

let rpcId = 0;

/**
 * An EIP-1193 object that sends every request to the dashboard's /rpc: on the devnet the node signs
 * `eth_sendTransaction` for its dev accounts, so no key ever reaches the page.
 *
 * @example
 * const signer = new BrowserProvider(devnetEip1193()).getSigner(address)
 */
export function devnetEip1193(): Eip1193Provider {
  return {
    async request({ method, params }: { method: string; params?: unknown[] | Record<string, unknown> }): Promise<unknown> {
      const res = await fetch(rpcUrl(), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params: params ?? [] }),
      });
      const body = (await res.json()) as { result?: unknown; error?: { code: number; message: string; data?: unknown } };
      if (body.error) throw Object.assign(new Error(body.error.message), body.error);
      return body.result;
    },
  };
}

/**
 * A BrowserProvider for signing through `eip1193`, polling receipts quickly (the devnet mines at once).
 *
 * @example
 * const provider = signingProvider(window.ethereum, 31337)
 */
export function signingProvider(eip1193: Eip1193Provider, chainId: number, pollingInterval = 250): BrowserProvider {
  return new BrowserProvider(eip1193, chainId, { pollingInterval, cacheTimeout: -1 });
}
