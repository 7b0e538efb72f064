import { getAddress, isAddress, JsonRpcSigner, toQuantity } from "ethers";
import type { Eip1193Provider } from "ethers";
import { TypedEventTarget } from "../../sdk/events.js";
import type { DashboardConfig } from "./api-types.js";
import { devnetEip1193, signingProvider } from "./chain.js";
import { NoBrowserWalletError, WrongChainError } from "./errors.js";

/** The account whose figures the page shows, and how it signs (a read-only view has no signer). */
export type Account =
  | { mode: "dev"; address: string; label: string; signer: JsonRpcSigner }
  | { mode: "wallet"; address: string; signer: JsonRpcSigner }
  | { mode: "view"; address: string; signer?: undefined };

/** A browser wallet as injected by extensions: EIP-1193 plus its event methods. */
export interface InjectedWallet extends Eip1193Provider {
  on?(event: string, listener: (...args: unknown[]) => void): void;
  removeListener?(event: string, listener: (...args: unknown[]) => void): void;
}

/** Events of {@link ConnectionController}. */
export interface ConnectionEvents {
  /** The shown account changed (undefined: disconnected). */
  "account:changed": CustomEvent<Account | undefined>;
  /** A wallet event failed in the background (e.g. switched to another chain). */
  "account:error": CustomEvent<unknown>;
}

type Remembered = { mode: "dev"; address: string } | { mode: "wallet" };

/** The injected browser wallet, if any. */
export function injectedWallet(): InjectedWallet | undefined {
  return (globalThis as { ethereum?: InjectedWallet }).ethereum;
}

/**
 * Who the page is connected as: a devnet dev account (signed by the node through /rpc), a browser wallet
 * (EIP-1193), or an address viewed read-only (`?creator=0x…`). The choice survives reloads (localStorage).
 *
 * @example
 * const connection = new ConnectionController(config)
 * connection.addEventListener("account:changed", (e) => show(e.detail))
 * await connection.restore()
 */
export class ConnectionController extends TypedEventTarget<ConnectionEvents> {
  #account: Account | undefined;
  #wallet: InjectedWallet | undefined;
  readonly #storageKey: string;
  readonly #onAccounts = (accounts: unknown): void => {
    const list = Array.isArray(accounts) ? accounts : [];
    if (list.length === 0) this.disconnect();
    else this.#guard(this.connectWallet(false));
  };
  readonly #onChain = (): void => this.#guard(this.connectWallet(false));

  constructor(private readonly config: DashboardConfig) {
    super();
    this.#storageKey = `soulmesh:dashboard:connection:${config.chainId}`;
  }

  get account(): Account | undefined {
    return this.#account;
  }

  /**
   * Restores the connection: `?creator=0x…` first (read-only), else the remembered choice. A wallet is asked
   * only for the accounts it already exposes (no prompt on load).
   *
   * @example
   * await connection.restore(new URLSearchParams(location.search))
   */
  async restore(params: URLSearchParams = new URLSearchParams(location.search)): Promise<void> {
    const viewed = params.get("creator");
    if (viewed !== null && isAddress(viewed)) {
      this.#set({ mode: "view", address: getAddress(viewed) });
      return;
    }
    let remembered: Remembered | undefined;
    try {
      remembered = JSON.parse(localStorage.getItem(this.#storageKey) ?? "null") as Remembered | undefined;
    } catch {
      remembered = undefined;
    }
    if (remembered?.mode === "dev" && this.config.devAccounts.some((a) => a.address.toLowerCase() === remembered.address.toLowerCase())) {
      this.connectDev(remembered.address);
    } else if (remembered?.mode === "wallet" && injectedWallet()) {
      await this.connectWallet(false);
    }
  }

  /**
   * Connects as one of the devnet's dev accounts; the devnet node signs its transactions.
   *
   * @example
   * connection.connectDev("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
   */
  connectDev(address: string): void {
    const checksummed = getAddress(address);
    const dev = this.config.devAccounts.find((a) => a.address.toLowerCase() === checksummed.toLowerCase());
    const provider = signingProvider(devnetEip1193(), this.config.chainId);
    this.#detachWallet();
    this.#remember({ mode: "dev", address: checksummed });
    this.#set({ mode: "dev", address: checksummed, label: dev?.label ?? "dev", signer: new JsonRpcSigner(provider, checksummed) });
  }

  /**
   * Connects the browser wallet, switching it to the deployment's chain (adding the chain when it does not know it).
   * With `prompt` false only an already authorized account is used, and nothing happens without one.
   *
   * @example
   * await connection.connectWallet(true)
   * @throws NoBrowserWalletError, WrongChainError; the wallet's refusal (code 4001).
   */
  async connectWallet(prompt: boolean): Promise<void> {
    const wallet = injectedWallet();
    if (!wallet) throw new NoBrowserWalletError();
    const accounts = (await wallet.request({ method: prompt ? "eth_requestAccounts" : "eth_accounts" })) as string[];
    const first = accounts[0];
    if (first === undefined) {
      if (this.#account?.mode === "wallet") this.disconnect();
      return;
    }
    await this.#switchChain(wallet);
    this.#attachWallet(wallet);
    const provider = signingProvider(wallet, this.config.chainId, 1000);
    const address = getAddress(first);
    this.#remember({ mode: "wallet" });
    this.#set({ mode: "wallet", address, signer: new JsonRpcSigner(provider, address) });
  }

  /**
   * Forgets the connection (and the remembered choice).
   *
   * @example
   * connection.disconnect()
   */
  disconnect(): void {
    this.#detachWallet();
    localStorage.removeItem(this.#storageKey);
    if (this.#account?.mode === "view") history.replaceState(null, "", location.pathname);
    this.#set(undefined);
  }

  async #switchChain(wallet: InjectedWallet): Promise<void> {
    const want = this.config.chainId;
    const current = Number(await wallet.request({ method: "eth_chainId" }));
    if (current === want) return;
    const chainId = toQuantity(want);
    try {
      await wallet.request({ method: "wallet_switchEthereumChain", params: [{ chainId }] });
    } catch (err) {
      if ((err as { code?: unknown }).code !== 4902) throw err;
      await wallet.request({
        method: "wallet_addEthereumChain",
        params: [
          {
            chainId,
            chainName: want === 31337 ? "Soulmesh devnet" : `Soulmesh (chain ${want})`,
            rpcUrls: [this.config.deployment.rpcUrl],
            nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
          },
        ],
      });
    }
    const after = Number(await wallet.request({ method: "eth_chainId" }));
    if (after !== want) throw new WrongChainError(want, after);
  }

  #attachWallet(wallet: InjectedWallet): void {
    if (this.#wallet === wallet) return;
    this.#detachWallet();
    wallet.on?.("accountsChanged", this.#onAccounts);
    wallet.on?.("chainChanged", this.#onChain);
    this.#wallet = wallet;
  }

  #detachWallet(): void {
    this.#wallet?.removeListener?.("accountsChanged", this.#onAccounts);
    this.#wallet?.removeListener?.("chainChanged", this.#onChain);
    this.#wallet = undefined;
  }

  #guard(work: Promise<void>): void {
    work.catch((err: unknown) => {
      this.disconnect();
      this.dispatchEvent(new CustomEvent("account:error", { detail: err }));
    });
  }

  #remember(choice: Remembered): void {
    try {
      localStorage.setItem(this.#storageKey, JSON.stringify(choice));
    } catch {
      // Storage refused (private mode): the choice lasts this visit only.
    }
  }

  #set(account: Account | undefined): void {
    this.#account = account;
    this.dispatchEvent(new CustomEvent("account:changed", { detail: account }));
  }
}
