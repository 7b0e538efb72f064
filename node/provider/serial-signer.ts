import { AbstractSigner } from "ethers";
import type { Provider, Signer, TransactionRequest, TransactionResponse, TypedDataDomain, TypedDataField } from "ethers";

/**
 * A signer that sends its transactions one at a time: each waits until the previous one is broadcast, so
 * that the next reads a pending nonce that counts it. The daemon's registration and its settlement worker
 * send from the same key; concurrently, both would read the same nonce and one would fail.
 *
 * Unlike ethers' NonceManager it keeps no nonce of its own, so a transaction that fails before it is
 * broadcast (a revert in gas estimation) leaves no gap behind it.
 *
 * @example
 * const signer = new SerialSigner(new Wallet(key, rpc))
 * const worker = new SettlementWorker({ book, escrow: connectContracts(deployment, signer).inferenceEscrow, policy })
 */
export class SerialSigner extends AbstractSigner {
  #tail: Promise<unknown> = Promise.resolve();

  constructor(readonly signer: Signer) {
    super(signer.provider);
  }

  getAddress(): Promise<string> {
    return this.signer.getAddress();
  }

  connect(provider: Provider | null): SerialSigner {
    return new SerialSigner(this.signer.connect(provider));
  }

  signTransaction(tx: TransactionRequest): Promise<string> {
    return this.signer.signTransaction(tx);
  }

  signMessage(message: string | Uint8Array): Promise<string> {
    return this.signer.signMessage(message);
  }

  signTypedData(
    domain: TypedDataDomain,
    types: Record<string, TypedDataField[]>,
    value: Record<string, unknown>,
  ): Promise<string> {
    return this.signer.signTypedData(domain, types, value);
  }

  override sendTransaction(tx: TransactionRequest): Promise<TransactionResponse> {
    const run = this.#tail.then(() => this.signer.sendTransaction(tx));
    this.#tail = run.catch(() => undefined);
    return run;
  }
}
