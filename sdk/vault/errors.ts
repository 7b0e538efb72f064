import { SoulmeshError } from "../errors.js";

/** Why a sealed block could not be parsed, before any decryption was tried. */
export type VaultEnvelopeProblem = "too-short" | "bad-magic" | "unknown-version" | "bad-length";

/**
 * A block that is not a vault envelope this version can read: truncated, foreign (another magic), or
 * sealed by a newer format version. Nothing was decrypted.
 */
export class VaultEnvelopeError extends SoulmeshError {
  override readonly name = "VaultEnvelopeError";
  constructor(readonly problem: VaultEnvelopeProblem, readonly detail: string) {
    const next =
      problem === "unknown-version"
        ? "Update Soulmesh to read it."
        : "The block is truncated or is not a Soulmesh vault block: fetch it again by its CID, or restore it from your own copy.";
    super(`Not a readable Soulmesh vault block (${problem}): ${detail}. ${next}`);
  }
}

/**
 * The AEAD refused a record. Authenticated encryption cannot tell a wrong key from a block of another
 * agent, kind or deployment, or from altered bytes: all fail the same tag check. The error carries the
 * bindings that were checked so the caller can tell which of them it may have got wrong.
 */
export class VaultDecryptError extends SoulmeshError {
  override readonly name = "VaultDecryptError";
  readonly reason = "authentication-failed" as const;
  constructor(readonly agentId: bigint, readonly kind: string, readonly chainId: bigint, readonly registry: string) {
    const next =
      kind === "key-wrap"
        ? "Unlock with the wallet that owns this agent, on the same chain and AgentRegistry; if the agent changed hands, ask its previous owner to share its key."
        : "Open it with this agent's own key and the record kind it was written as; if the block came from the network, fetch it again or restore it from your own copy.";
    super(
      `Cannot open a "${kind}" record of agent #${agentId} (chain ${chainId}, AgentRegistry ${registry}): ` +
        `the key is wrong, the block belongs to another agent, kind or deployment, or it was altered. ${next}`
    );
  }
}

/** A shared agent key that the given private key cannot open. */
export class SharedKeyDecryptError extends SoulmeshError {
  override readonly name = "SharedKeyDecryptError";
  readonly reason = "authentication-failed" as const;
  constructor(
    readonly agentId: bigint,
    readonly recipient: string,
    readonly chainId: bigint,
    readonly registry: string
  ) {
    super(
      `Cannot open the key shared for agent #${agentId} (chain ${chainId}, AgentRegistry ${registry}) ` +
        `as ${recipient}: it was shared to another key, for another agent or deployment, or it was altered. ` +
        `Open it with the private key whose public key it was shared to, or ask the sender to share it again.`
    );
  }
}

/** Key material of the wrong length or out of range (not a secp256k1 scalar, not 32 bytes). */
export class InvalidKeyError extends SoulmeshError {
  override readonly name = "InvalidKeyError";
  constructor(readonly which: string, readonly problem: string) {
    super(
      `Invalid ${which}: ${problem}. Pass the key exactly as Soulmesh produced it ` +
        `(agent and owner keys are 32 bytes; a private key is a 32-byte secp256k1 scalar).`
    );
  }
}

/** Bytes that are not a point of secp256k1 in any accepted encoding. */
export class InvalidPublicKeyError extends SoulmeshError {
  override readonly name = "InvalidPublicKeyError";
  constructor(readonly problem: string) {
    super(
      `Invalid secp256k1 public key: ${problem}. Pass 33 bytes (compressed), 65 bytes (0x04…) or 64 bytes ` +
        `(x‖y); recover it from a signature of the recipient with recoverPublicKey().`
    );
  }
}

/** A public key that does not belong to the address the caller meant to share with. */
export class RecipientMismatchError extends SoulmeshError {
  override readonly name = "RecipientMismatchError";
  constructor(readonly expected: string, readonly actual: string) {
    super(
      `The public key belongs to ${actual}, not to the recipient ${expected}. Recover the recipient's ` +
        `public key from a signature they made (recoverPublicKey) and share again.`
    );
  }
}

/** A signature that cannot be parsed or recovered at all. */
export class InvalidSignatureError extends SoulmeshError {
  override readonly name = "InvalidSignatureError";
  constructor(cause?: unknown) {
    super(
      `The signature is malformed: expected 65 bytes (r‖s‖v) or 64 bytes (EIP-2098) with a canonical s. ` +
        `Sign again with the wallet.`,
      { cause }
    );
  }
}

/**
 * The vault-key signature recovers to another address than the owner's: deriving from it would silently
 * yield another key, one that unlocks nothing.
 */
export class OwnerSignatureMismatchError extends SoulmeshError {
  override readonly name = "OwnerSignatureMismatchError";
  constructor(readonly owner: string, readonly recovered: string) {
    super(
      `The vault-key signature was made by ${recovered}, not by the owner ${owner}. Sign the vault-key ` +
        `message (ownerKeyTypedData) with the owner's wallet, for the same chain and AgentRegistry.`
    );
  }
}

/**
 * The wallet signed the same vault-key message twice with different signatures. The owner key is derived
 * from the signature, so such a wallet (random ECDSA nonces, some MPC or smart-account wallets) would lose
 * the key on the next unlock.
 */
export class NonDeterministicSignerError extends SoulmeshError {
  override readonly name = "NonDeterministicSignerError";
  constructor(readonly owner: string) {
    super(
      `The wallet ${owner} signs non-deterministically (two signatures of the same message differ), so a ` +
        `vault key derived from its signature could never be recovered. Use a wallet that signs per RFC 6979 ` +
        `(MetaMask, Ledger, Trezor, an ethers Wallet), or keep the agent key in a local keystore instead.`
    );
  }
}

/** Agent reference or parameters out of range: agent id, chain id, registry address, record kind. */
export class InvalidVaultInputError extends SoulmeshError {
  override readonly name = "InvalidVaultInputError";
  constructor(readonly problems: string[]) {
    super(`Invalid vault input: ${problems.join("; ")}.`);
  }
}

/** A vault block that is not what its place in the agent's DAG says it is (malformed, spliced, truncated). */
export class VaultBlockError extends SoulmeshError {
  override readonly name = "VaultBlockError";
  constructor(
    readonly cid: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `The vault block ${cid} cannot be used: ${reason}. The agent's data was altered or mixed with another ` +
        `agent's; load it from an earlier head, or from a copy you exported.`,
      options,
    );
  }
}
