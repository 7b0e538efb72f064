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

// ---------------------------------------------------------------------------------------------------------
// Turn journal (journal.ts)

/** A journal call made before `open()` resolved, or after `close()` began. */
export class JournalNotOpenError extends SoulmeshError {
  override readonly name = "JournalNotOpenError";
  constructor(readonly operation: string) {
    super(`Cannot ${operation}: the turn journal is not open. Call \`await journal.open()\` first.`);
  }
}

/** The journal folder is held open by another process or another journal object (LevelDB's lock). */
export class JournalLockedError extends SoulmeshError {
  override readonly name = "JournalLockedError";
  constructor(readonly dir: string, cause?: unknown) {
    super(
      `The turn journal at ${dir} is in use by another process or journal (another soulmesh CLI or node for ` +
        `the same agent?). Stop it, or close the other journal first: one journal per agent at a time.`,
      { cause }
    );
  }
}

/**
 * The journal was written for another agent key, agent or deployment: its sealed header does not open.
 * Nothing was read or written; the journal is left as it was.
 */
export class JournalKeyMismatchError extends SoulmeshError {
  override readonly name = "JournalKeyMismatchError";
  constructor(
    readonly dir: string,
    readonly agentId: bigint,
    readonly chainId: bigint,
    readonly registry: string,
    cause?: unknown
  ) {
    super(
      `The turn journal at ${dir} does not belong to agent #${agentId} (chain ${chainId}, AgentRegistry ` +
        `${registry}) with this key: the agent key is wrong, or the folder is another agent's or deployment's. ` +
        `Unlock the agent with its owner's wallet to get its key, or use that agent's own journal folder.`,
      { cause }
    );
  }
}

/**
 * One journaled turn does not open although the journal's header did (so the key is right): its bytes
 * were altered or truncated on disk. The other entries stay readable.
 */
export class JournalEntryCorruptError extends SoulmeshError {
  override readonly name = "JournalEntryCorruptError";
  constructor(readonly dir: string, readonly seq: bigint, cause?: unknown) {
    super(
      `Turn #${seq} of the journal at ${dir} is corrupted and cannot be decrypted. Read the others with ` +
        `\`pending({ onCorrupt })\`; to drop it, include its seq in \`markCommitted\` once the turns before it ` +
        `are committed.`,
      { cause }
    );
  }
}

/** What part of a journal could not be read, besides a single turn. */
export type JournalRecord = "header" | "watermark" | "meta" | "key" | "store";

/** A journal's own records (header, commit watermark, metadata, key layout) or its LevelDB store are damaged. */
export class JournalCorruptError extends SoulmeshError {
  override readonly name = "JournalCorruptError";
  constructor(readonly dir: string, readonly record: JournalRecord, readonly detail: string, cause?: unknown) {
    super(
      `The turn journal at ${dir} is damaged (${record}: ${detail}). Its uncommitted turns may be lost: ` +
        `restore the folder from a backup, or move it aside and start a new journal from the agent's ` +
        `published memory.`,
      { cause }
    );
  }
}

/** `markCommitted` named a seq the journal never handed out. */
export class JournalCommitRangeError extends SoulmeshError {
  override readonly name = "JournalCommitRangeError";
  constructor(readonly uptoSeq: bigint, readonly lastSeq: bigint) {
    super(
      `Cannot mark turns up to #${uptoSeq} committed: the journal's last turn is #${lastSeq}. Pass the seq of ` +
        `the last turn actually committed (from \`pending()\` or \`append()\`).`
    );
  }
}

/** LevelDB refused a journal write (disk full, I/O error); nothing of that write is in the journal. */
export class JournalWriteError extends SoulmeshError {
  override readonly name = "JournalWriteError";
  constructor(readonly dir: string, readonly operation: string, cause?: unknown) {
    super(
      `Could not ${operation} in the turn journal at ${dir}: ${cause instanceof Error ? cause.message : String(cause)}. ` +
        `Free disk space or fix the folder's permissions, then retry; the turn was not acknowledged.`,
      { cause }
    );
  }
}

// ---------------------------------------------------------------------------------------------------------
// Agent CAR files (car.ts)

/** Bytes that are not a readable CAR: not one at all, or truncated or broken partway through. */
export class CarFormatError extends SoulmeshError {
  override readonly name = "CarFormatError";
  constructor(readonly problem: string, cause?: unknown) {
    super(
      `The agent CAR cannot be read: ${problem}${cause instanceof Error ? ` (${cause.message})` : ""}. ` +
        `The file is truncated or is not a CAR: copy it again in full, or export the agent again.`,
      { cause },
    );
  }
}

/** A CAR whose header names no root or several: an agent's CAR has exactly one, its head commit. */
export class CarRootsError extends SoulmeshError {
  override readonly name = "CarRootsError";
  constructor(readonly roots: string[]) {
    super(
      `An agent CAR has exactly one root (the agent's head commit), this one has ${roots.length}` +
        `${roots.length > 0 ? ` (${roots.join(", ")})` : ""}. Export the agent with \`exportAgentCar\`, from its head CID.`,
    );
  }
}

/** A block of a CAR whose bytes are not its CID's: altered, or corrupted in transit. Nothing of it was stored. */
export class CarBlockMismatchError extends SoulmeshError {
  override readonly name = "CarBlockMismatchError";
  constructor(readonly cid: string, readonly reason: string) {
    super(
      `Block ${cid} of the agent CAR was refused: ${reason}. The file was altered or corrupted; export the ` +
        `agent again from a store that holds it, or use another copy.`,
    );
  }
}

/** A CAR that lacks blocks its root reaches: the agent cannot be loaded from it. */
export class CarIncompleteError extends SoulmeshError {
  override readonly name = "CarIncompleteError";
  constructor(readonly root: string, readonly missing: string[]) {
    const shown = missing.slice(0, 5).join(", ") + (missing.length > 5 ? `, … (${missing.length - 5} more)` : "");
    super(
      `The agent CAR of ${root} lacks ${missing.length} block${missing.length === 1 ? "" : "s"} that its root ` +
        `links to: ${shown}. Export it again from a store that holds the whole agent (pin its head there first).`,
    );
  }
}
