import type { ContractTransactionResponse, TransactionReceipt } from "ethers";
import { decodeRevert } from "../../sdk/chain/revert.js";
import { el } from "./dom.js";
import { showable } from "./errors.js";

/**
 * The error banner: shows a failure's name (`data-error-name`) and message until dismissed or replaced.
 *
 * @example
 * const banner = new ErrorBanner(byTestId(document, "error")); banner.show(err)
 */
export class ErrorBanner {
  constructor(private readonly node: HTMLElement) {}

  show(err: unknown): void {
    const { name, message } = showable(err);
    const close = el("button", { type: "button", class: "dismiss", "aria-label": "Dismiss", text: "×" });
    close.addEventListener("click", () => this.clear());
    this.node.dataset.errorName = name;
    this.node.replaceChildren(el("strong", { text: name }), el("span", { class: "message", text: ` ${message}` }), close);
    this.node.hidden = false;
  }

  clear(): void {
    this.node.hidden = true;
    delete this.node.dataset.errorName;
    this.node.replaceChildren();
  }
}

/**
 * Tracks the last transaction the page sent in the `tx-status` element: pending (with its hash once known),
 * confirmed or failed. Reverts are rethrown decoded (ContractRevertError naming the custom error).
 *
 * @example
 * const receipt = await tracker.send("Withdraw", () => escrow.withdrawEarnings(me))
 */
export class TxTracker {
  #pending = 0;

  constructor(private readonly node: HTMLElement) {}

  /** Whether a transaction is being signed or mined. */
  get busy(): boolean {
    return this.#pending > 0;
  }

  async send(label: string, submit: () => Promise<ContractTransactionResponse>): Promise<TransactionReceipt> {
    this.#pending++;
    this.#state("pending", `${label}: waiting for the signature…`);
    delete this.node.dataset.txHash;
    try {
      const tx = await submit();
      this.node.dataset.txHash = tx.hash;
      this.#state("pending", `${label}: sent ${tx.hash}, waiting for it to be mined…`);
      const receipt = await tx.wait();
      if (!receipt) throw new Error(`${label}: the transaction ${tx.hash} was dropped; send it again.`);
      this.#state("confirmed", `${label}: confirmed in block ${receipt.blockNumber} (${tx.hash}).`);
      return receipt;
    } catch (err) {
      const decoded = decodeRevert(err) ?? err;
      const hash = (err as { receipt?: { hash?: string } }).receipt?.hash;
      if (hash) this.node.dataset.txHash = hash;
      this.#state("failed", `${label} failed.`);
      throw decoded;
    } finally {
      this.#pending--;
    }
  }

  #state(state: "pending" | "confirmed" | "failed", text: string): void {
    this.node.hidden = false;
    this.node.dataset.state = state;
    this.node.textContent = text;
  }
}
