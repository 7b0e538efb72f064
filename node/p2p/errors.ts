import { SoulmeshError } from "../../sdk/errors.js";

/**
 * The peer key file exists but does not hold a libp2p private key. Deliberately not regenerated: a new key
 * is a new peer id, which every client and registry entry that knew this provider would lose.
 *
 * @example
 * catch (err) { if (err instanceof PeerKeyCorruptError) console.error(err.message) }
 */
export class PeerKeyCorruptError extends SoulmeshError {
  override readonly name = "PeerKeyCorruptError";
  constructor(
    readonly path: string,
    options?: ErrorOptions,
  ) {
    super(
      `The peer key file ${path} is corrupt. Restore it from a backup to keep this provider's peer id, ` +
        `or delete it to start under a new peer id (clients and the registry must then learn the new one).`,
      options,
    );
  }
}

/** The host was used before start() or after stop(). */
export class HostNotRunningError extends SoulmeshError {
  override readonly name = "HostNotRunningError";
}

export { ProtocolStreamError } from "../../sdk/protocol/errors.js";

/**
 * The provider's protocols were given parts that do not fit together (a signer that is not the voucher
 * book's provider, an escrow that is not the book's): receipts and vouchers would name different parties.
 */
export class ProviderProtocolsConfigError extends SoulmeshError {
  override readonly name = "ProviderProtocolsConfigError";
  constructor(reason: string) {
    super(`The provider protocols cannot start: ${reason}. Use one provider key and one deployment for both.`);
  }
}
