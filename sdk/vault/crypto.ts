/**
 * Vault cryptography: the per-agent key, sealed records, the owner key derived from a wallet signature,
 * and sharing an agent key with another owner.
 *
 * Everything here is @noble/* and ethers only (no node:crypto), so a browser wallet derives the same keys
 * and opens the same blocks as the CLI.
 *
 * Key hierarchy:
 * - agent key: 32 random bytes per agent; seals every record of the agent (XChaCha20-Poly1305).
 * - owner key: HKDF of the owner's signature over a fixed EIP-712 message; wraps the agent key (a
 *   "key-wrap" record), so the wallet alone recovers the agent key on any machine.
 * - share: the agent key sealed to another secp256k1 public key (ECIES), for handing an agent over.
 */
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { concatBytes, randomBytes, utf8ToBytes } from "@noble/hashes/utils.js";
import {
  computeAddress,
  getAddress,
  getBytes,
  hexlify,
  isAddress,
  Signature,
  SigningKey,
  verifyTypedData,
} from "ethers";
import type { TypedDataDomain, TypedDataField } from "ethers";
import {
  InvalidKeyError,
  InvalidPublicKeyError,
  InvalidSignatureError,
  InvalidVaultInputError,
  NonDeterministicSignerError,
  OwnerSignatureMismatchError,
  RecipientMismatchError,
  SharedKeyDecryptError,
  VaultDecryptError,
  VaultEnvelopeError,
} from "./errors.js";
import type { RecordKind } from "./types.js";

// ---------------------------------------------------------------------------------------------------------
// Constants

/** Length of agent keys and owner keys, in bytes. */
export const KEY_LENGTH = 32;
/** XChaCha20-Poly1305 nonce length: 24 random bytes make nonce reuse negligible without any counter state. */
export const NONCE_LENGTH = 24;
/** Poly1305 tag length. */
export const TAG_LENGTH = 16;

/** Record envelope: "SMV" + version. */
const RECORD_MAGIC = Uint8Array.of(0x53, 0x4d, 0x56);
/** Shared-key envelope: "SMK" + version; another magic so a share can never be read as a record. */
const SHARE_MAGIC = Uint8Array.of(0x53, 0x4d, 0x4b);
/** The only envelope version this code writes and reads. */
export const ENVELOPE_VERSION = 1;
const HEADER_LENGTH = 4;
/** Bytes a sealed record adds to its plaintext: header, nonce and tag. */
export const RECORD_OVERHEAD = HEADER_LENGTH + NONCE_LENGTH + TAG_LENGTH;
const COMPRESSED_PUBLIC_KEY_LENGTH = 33;
/** Exact length of a shared agent key: header, ephemeral public key, nonce, sealed key and tag. */
export const SHARED_KEY_LENGTH = HEADER_LENGTH + COMPRESSED_PUBLIC_KEY_LENGTH + NONCE_LENGTH + KEY_LENGTH + TAG_LENGTH;

// Domain-separation labels: each derivation and each AAD layout has its own, so no output of one can be
// replayed as an input of another. The "/v1" moves with the formats, not with the package version.
const RECORD_AAD_LABEL = utf8ToBytes("soulmesh/vault/record/v1");
const SHARE_AAD_LABEL = utf8ToBytes("soulmesh/vault/share/v1");
const OWNER_KEY_SALT = utf8ToBytes("soulmesh/vault/owner-key/v1");
const SHARE_KDF_SALT = utf8ToBytes("soulmesh/vault/share-kdf/v1");
const SHARE_KEYPAIR_SALT = utf8ToBytes("soulmesh/vault/share-keypair/v1");

const UINT256_MAX = (1n << 256n) - 1n;

// ---------------------------------------------------------------------------------------------------------
// Types

/**
 * The deployment an agent lives in. An agent id is an ERC-721 token id, unique only within one
 * AgentRegistry on one chain (agent #1 exists on every deployment), so both are part of an agent's identity.
 */
export interface VaultDeployment {
  chainId: bigint | number;
  /** The AgentRegistry contract's address. */
  registry: string;
}

/** An agent, globally: its deployment and its token id. */
export interface AgentRef extends VaultDeployment {
  agentId: bigint;
}

/** Anything that signs EIP-712 typed data the ethers way: an ethers Wallet, a BrowserProvider signer. */
export interface TypedDataSigner {
  getAddress(): Promise<string>;
  signTypedData(
    domain: TypedDataDomain,
    types: Record<string, TypedDataField[]>,
    value: Record<string, unknown>
  ): Promise<string>;
}

/** A secp256k1 public key: 33 bytes compressed, 65 bytes uncompressed (0x04…) or 64 bytes x‖y; bytes or hex. */
export type PublicKeyInput = Uint8Array | string;
/** A secp256k1 private key: 32 bytes, or hex as ethers' `Wallet.privateKey`. */
export type PrivateKeyInput = Uint8Array | string;

// ---------------------------------------------------------------------------------------------------------
// Agent key and records

/**
 * A fresh random agent key, from the platform's CSPRNG (`crypto.getRandomValues`).
 *
 * @example
 * const agentKey = generateAgentKey() // Uint8Array(32)
 */
export function generateAgentKey(): Uint8Array {
  return randomBytes(KEY_LENGTH);
}

/**
 * Seals `plaintext` as a record of `kind` for agent `agentId` of the given deployment.
 * Envelope: `"SMV" ‖ version(1) ‖ nonce(24) ‖ ciphertext ‖ tag(16)`; the associated data binds the header,
 * the chain id, the AgentRegistry address, the agent id and the kind, so a block opens only as what it
 * was sealed as.
 *
 * @example
 * const sealed = sealRecord({ key: agentKey, chainId: 31337n, registry, agentId: 1n, kind: "profile", plaintext })
 * @throws InvalidKeyError, InvalidVaultInputError
 */
export function sealRecord(
  params: AgentRef & { key: Uint8Array; kind: RecordKind; plaintext: Uint8Array }
): Uint8Array {
  const key = checkSymmetricKey(params.key, "record key");
  const header = envelopeHeader(RECORD_MAGIC);
  const aad = recordAad(header, params, params.kind);
  const nonce = randomBytes(NONCE_LENGTH);
  const ciphertext = xchacha20poly1305(key, nonce, aad).encrypt(params.plaintext);
  return concatBytes(header, nonce, ciphertext);
}

/**
 * Opens a record sealed by {@link sealRecord}, with the same key, agent, deployment and kind.
 *
 * @example
 * const plaintext = openRecord({ key: agentKey, chainId: 31337n, registry, agentId: 1n, kind: "profile", sealed })
 * @throws VaultEnvelopeError for a truncated, foreign or newer-version block; VaultDecryptError when the key,
 *   the agent, the deployment or the kind do not match, or the block was altered.
 */
export function openRecord(params: AgentRef & { key: Uint8Array; kind: RecordKind; sealed: Uint8Array }): Uint8Array {
  const key = checkSymmetricKey(params.key, "record key");
  const { sealed } = params;
  checkEnvelope(sealed, RECORD_MAGIC, RECORD_OVERHEAD, "record");
  const header = sealed.subarray(0, HEADER_LENGTH);
  const aad = recordAad(header, params, params.kind);
  const nonce = sealed.subarray(HEADER_LENGTH, HEADER_LENGTH + NONCE_LENGTH);
  try {
    return xchacha20poly1305(key, nonce, aad).decrypt(sealed.subarray(HEADER_LENGTH + NONCE_LENGTH));
  } catch {
    throw new VaultDecryptError(params.agentId, params.kind, BigInt(params.chainId), getAddress(params.registry));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Owner key

/**
 * What the user reads in their wallet. The signature *is* the secret, so the text tells them not to sign
 * it anywhere else: a site that obtains it can read every memory of their agents.
 */
export const OWNER_KEY_PURPOSE =
  "Unlock my Soulmesh agents' memories. Only sign this on a Soulmesh app: anyone who gets this signature can read them.";

/** EIP-712 types of the vault-key message (ethers style: without `EIP712Domain`). */
export const OWNER_KEY_TYPES = {
  VaultKey: [
    { name: "purpose", type: "string" },
    { name: "owner", type: "address" },
  ],
} as const satisfies Record<string, { name: string; type: string }[]>;

/** The fixed vault-key message of one owner on one deployment. */
export interface OwnerKeyTypedData {
  domain: TypedDataDomain;
  types: Record<string, TypedDataField[]>;
  primaryType: "VaultKey";
  message: { purpose: string; owner: string };
}

/**
 * The EIP-712 message whose signature derives the owner key. It has no nonce or timestamp on purpose:
 * the same wallet must produce the same signature, hence the same key, every time and on every machine.
 * No contract ever verifies it; `verifyingContract` is the AgentRegistry only to scope the key to a
 * deployment and to show the user where it belongs.
 *
 * For a raw `eth_signTypedData_v4` request, build the JSON with ethers:
 * `TypedDataEncoder.getPayload(t.domain, t.types, t.message)`.
 *
 * @example
 * const t = ownerKeyTypedData({ chainId: 31337n, registry, owner: await wallet.getAddress() })
 * const signature = await wallet.signTypedData(t.domain, t.types, t.message)
 */
export function ownerKeyTypedData(params: VaultDeployment & { owner: string }): OwnerKeyTypedData {
  const ref = checkDeployment(params);
  const owner = checkAddress(params.owner, "owner");
  return {
    domain: { name: "Soulmesh Vault", version: "1", chainId: ref.chainId, verifyingContract: ref.registry },
    types: { VaultKey: OWNER_KEY_TYPES.VaultKey.map((f) => ({ ...f })) },
    primaryType: "VaultKey",
    message: { purpose: OWNER_KEY_PURPOSE, owner },
  };
}

/**
 * The owner key: HKDF-SHA256(ikm = r‖s of the signature, salt = "soulmesh/vault/owner-key/v1",
 * info = owner(20) ‖ chainId(32) ‖ registry(20)) → 32 bytes.
 *
 * This relies on the wallet signing deterministically (RFC 6979, as MetaMask, Ledger, Trezor and ethers
 * do): a wallet with random nonces or a smart-contract (ERC-1271) account cannot hold a vault this way
 * (see `checkDeterministic` of {@link ownerKeyFromSigner}). `v` is left out of the key material because
 * wallets encode it differently (0/1 or 27/28) for the same signature, and the recovery check below already
 * pins it. The signature is checked to recover to `owner` first, so a mistyped or foreign signature fails
 * loudly instead of yielding a key that unlocks nothing.
 *
 * @example
 * const ownerKey = deriveOwnerKey(signature, { owner, chainId: 31337n, registry })
 * @throws InvalidSignatureError, OwnerSignatureMismatchError, InvalidVaultInputError
 */
export function deriveOwnerKey(
  signature: string | Uint8Array,
  params: VaultDeployment & { owner: string }
): Uint8Array {
  const t = ownerKeyTypedData(params);
  const owner = t.message.owner;
  let sig: Signature;
  let recovered: string;
  try {
    sig = Signature.from(hexlify(signature));
    recovered = getAddress(verifyTypedData(t.domain, t.types, t.message, sig));
  } catch (err) {
    throw new InvalidSignatureError(err);
  }
  if (recovered !== owner) throw new OwnerSignatureMismatchError(owner, recovered);
  const ikm = concatBytes(getBytes(sig.r), getBytes(sig.s));
  const ref = checkDeployment(params);
  const info = concatBytes(getBytes(owner), uint256(ref.chainId), getBytes(ref.registry));
  return hkdf(sha256, ikm, OWNER_KEY_SALT, info, KEY_LENGTH);
}

/**
 * Asks `signer` to sign the vault-key message and derives the owner key from it.
 * Pass `checkDeterministic: true` when creating a vault: it asks for a second signature and refuses a wallet
 * whose two signatures differ, before any agent key is wrapped under a key that could never be derived again.
 *
 * @example
 * const ownerKey = await ownerKeyFromSigner(wallet, { chainId: 31337n, registry })
 * // browser: await ownerKeyFromSigner(await new BrowserProvider(window.ethereum).getSigner(), deployment)
 * @throws NonDeterministicSignerError, OwnerSignatureMismatchError, InvalidSignatureError
 */
export async function ownerKeyFromSigner(
  signer: TypedDataSigner,
  params: VaultDeployment & { checkDeterministic?: boolean }
): Promise<Uint8Array> {
  const owner = checkAddress(await signer.getAddress(), "signer address");
  const t = ownerKeyTypedData({ ...params, owner });
  const signature = await signer.signTypedData(t.domain, t.types, t.message);
  const key = deriveOwnerKey(signature, { ...params, owner });
  if (params.checkDeterministic) {
    const again = deriveOwnerKey(await signer.signTypedData(t.domain, t.types, t.message), { ...params, owner });
    if (!equalBytes(key, again)) throw new NonDeterministicSignerError(owner);
  }
  return key;
}

/**
 * Wraps the agent key under the owner key: a "key-wrap" record of the agent.
 *
 * @example
 * const wrapped = wrapAgentKey({ agentKey, ownerKey, chainId: 31337n, registry, agentId: 1n })
 * @throws InvalidKeyError, InvalidVaultInputError
 */
export function wrapAgentKey(params: AgentRef & { agentKey: Uint8Array; ownerKey: Uint8Array }): Uint8Array {
  const agentKey = checkSymmetricKey(params.agentKey, "agent key");
  return sealRecord({
    ...agentRef(params),
    key: checkSymmetricKey(params.ownerKey, "owner key"),
    kind: "key-wrap",
    plaintext: agentKey,
  });
}

/**
 * Recovers the agent key wrapped by {@link wrapAgentKey}.
 *
 * @example
 * const agentKey = unwrapAgentKey({ wrapped, ownerKey, chainId: 31337n, registry, agentId: 1n })
 * @throws VaultDecryptError (kind "key-wrap") for another wallet, agent or deployment; VaultEnvelopeError
 */
export function unwrapAgentKey(params: AgentRef & { wrapped: Uint8Array; ownerKey: Uint8Array }): Uint8Array {
  const key = checkSymmetricKey(params.ownerKey, "owner key");
  const agentKey = openRecord({ ...agentRef(params), key, kind: "key-wrap", sealed: params.wrapped });
  if (agentKey.length !== KEY_LENGTH) {
    throw new VaultEnvelopeError("bad-length", `the wrapped agent key is ${agentKey.length} bytes, not ${KEY_LENGTH}`);
  }
  return agentKey;
}

// ---------------------------------------------------------------------------------------------------------
// Sharing an agent key (ECIES on secp256k1)

/**
 * Seals the agent key to a secp256k1 public key, so that another owner can take over the agent and its
 * memories. ECIES: an ephemeral key pair, ECDH with the recipient's key, HKDF-SHA256(ikm = shared x,
 * salt = "soulmesh/vault/share-kdf/v1", info = ephemeral ‖ recipient, both compressed) → an XChaCha20-Poly1305
 * key. The associated data binds the header, the deployment, the agent id, the recipient's address and the
 * ephemeral key. Envelope: `"SMK" ‖ version(1) ‖ ephemeral(33) ‖ nonce(24) ‖ sealed key(32) ‖ tag(16)`.
 *
 * An address alone does not reveal its public key: take it from a signature of the recipient
 * ({@link recoverPublicKey}) or a past transaction of theirs, and pass `recipient` to check they match.
 * Never use the vault-key signature for this: it is the recipient's secret.
 *
 * The share does not authenticate its sender; the recipient learns that the key is genuine when it opens
 * the agent's records. The previous owner keeps knowing the agent key, so the new owner should rotate it
 * for new records.
 *
 * Browser wallets expose neither their private key nor ECDH. For such a recipient, share to the public key
 * of {@link deriveShareKeyPair} (derived from their owner key, so re-derivable from a wallet signature),
 * which they publish signed by their wallet.
 *
 * @example
 * const shared = shareAgentKey({ agentKey, recipientPublicKey, recipient: buyer, chainId: 31337n, registry, agentId: 1n })
 * @throws InvalidPublicKeyError, RecipientMismatchError, InvalidKeyError, InvalidVaultInputError
 */
export function shareAgentKey(
  params: AgentRef & { agentKey: Uint8Array; recipientPublicKey: PublicKeyInput; recipient?: string }
): Uint8Array {
  const agentKey = checkSymmetricKey(params.agentKey, "agent key");
  const recipientPublicKey = normalizePublicKey(params.recipientPublicKey);
  const recipientAddress = computeAddress(hexlify(recipientPublicKey));
  if (params.recipient !== undefined) {
    const expected = checkAddress(params.recipient, "recipient");
    if (expected !== recipientAddress) throw new RecipientMismatchError(expected, recipientAddress);
  }
  const ref = agentRef(params);
  const ephemeralSecret = secp256k1.utils.randomSecretKey();
  const ephemeralPublicKey = secp256k1.getPublicKey(ephemeralSecret, true);
  const key = shareKey(
    secp256k1.getSharedSecret(ephemeralSecret, recipientPublicKey, true),
    ephemeralPublicKey,
    recipientPublicKey
  );
  const header = envelopeHeader(SHARE_MAGIC);
  const aad = shareAad(header, ref, recipientAddress, ephemeralPublicKey);
  const nonce = randomBytes(NONCE_LENGTH);
  return concatBytes(header, ephemeralPublicKey, nonce, xchacha20poly1305(key, nonce, aad).encrypt(agentKey));
}

/**
 * Opens a key shared by {@link shareAgentKey} with the recipient's private key.
 *
 * @example
 * const agentKey = openSharedAgentKey({ shared, recipientPrivateKey: wallet.privateKey, chainId: 31337n, registry, agentId: 1n })
 * @throws SharedKeyDecryptError for another recipient, agent or deployment or altered bytes;
 *   VaultEnvelopeError; InvalidKeyError
 */
export function openSharedAgentKey(
  params: AgentRef & { shared: Uint8Array; recipientPrivateKey: PrivateKeyInput }
): Uint8Array {
  const secret = checkPrivateKey(params.recipientPrivateKey);
  const { shared } = params;
  checkEnvelope(shared, SHARE_MAGIC, SHARED_KEY_LENGTH, "shared agent key");
  if (shared.length !== SHARED_KEY_LENGTH) {
    throw new VaultEnvelopeError(
      "bad-length",
      `a shared agent key is ${SHARED_KEY_LENGTH} bytes, this one ${shared.length}`
    );
  }
  const ref = agentRef(params);
  const recipientPublicKey = secp256k1.getPublicKey(secret, true);
  const recipientAddress = computeAddress(hexlify(recipientPublicKey));
  const fail = () =>
    new SharedKeyDecryptError(ref.agentId, recipientAddress, BigInt(ref.chainId), getAddress(ref.registry));
  const header = shared.subarray(0, HEADER_LENGTH);
  let offset = HEADER_LENGTH;
  const ephemeralPublicKey = shared.subarray(offset, (offset += COMPRESSED_PUBLIC_KEY_LENGTH));
  const nonce = shared.subarray(offset, (offset += NONCE_LENGTH));
  let ecdh: Uint8Array;
  try {
    ecdh = secp256k1.getSharedSecret(secret, ephemeralPublicKey, true);
  } catch {
    throw fail(); // an altered ephemeral key that is no longer a curve point
  }
  const key = shareKey(ecdh, ephemeralPublicKey, recipientPublicKey);
  const aad = shareAad(header, ref, recipientAddress, ephemeralPublicKey);
  try {
    return xchacha20poly1305(key, nonce, aad).decrypt(shared.subarray(offset));
  } catch {
    throw fail();
  }
}

/**
 * A secp256k1 key pair derived from the owner key, for owners whose wallet cannot do ECDH (browser
 * wallets): shares sealed to its public key open with a private key re-derived from a wallet signature.
 * HKDF-SHA256(ikm = owner key, salt = "soulmesh/vault/share-keypair/v1") → 48 bytes, reduced mod n.
 *
 * @example
 * const { publicKey } = deriveShareKeyPair(ownerKey) // publish it, signed by the wallet
 * const agentKey = openSharedAgentKey({ shared, recipientPrivateKey: deriveShareKeyPair(ownerKey).privateKey, ...ref })
 */
export function deriveShareKeyPair(ownerKey: Uint8Array): { privateKey: Uint8Array; publicKey: Uint8Array } {
  const key = checkSymmetricKey(ownerKey, "owner key");
  const privateKey = secp256k1.utils.randomSecretKey(
    hkdf(sha256, key, SHARE_KEYPAIR_SALT, undefined, secp256k1.lengths.seed ?? 48)
  );
  return { privateKey, publicKey: secp256k1.getPublicKey(privateKey, true) };
}

/**
 * The compressed public key (33 bytes) that signed `digest`. The digest is what was signed: `hashMessage(text)`
 * for a personal_sign message, `TypedDataEncoder.hash(domain, types, value)` for typed data, the
 * unsigned-transaction hash for a transaction.
 *
 * @example
 * const recipientPublicKey = recoverPublicKey(hashMessage(request), requestSignature)
 * @throws InvalidSignatureError
 */
export function recoverPublicKey(digest: string | Uint8Array, signature: string | Uint8Array): Uint8Array {
  try {
    return normalizePublicKey(SigningKey.recoverPublicKey(digest, Signature.from(hexlify(signature))));
  } catch (err) {
    throw new InvalidSignatureError(err);
  }
}

/**
 * The checksummed address of a secp256k1 public key, in any accepted encoding.
 *
 * @example
 * publicKeyToAddress(recoverPublicKey(digest, signature)) // "0xAbC…"
 * @throws InvalidPublicKeyError
 */
export function publicKeyToAddress(publicKey: PublicKeyInput): string {
  return computeAddress(hexlify(normalizePublicKey(publicKey)));
}

// ---------------------------------------------------------------------------------------------------------
// Internals

function envelopeHeader(magic: Uint8Array): Uint8Array {
  return concatBytes(magic, Uint8Array.of(ENVELOPE_VERSION));
}

function checkEnvelope(bytes: Uint8Array, magic: Uint8Array, minLength: number, what: string): void {
  if (!(bytes instanceof Uint8Array)) throw new VaultEnvelopeError("too-short", `the ${what} is not bytes`);
  // Magic and version first: a foreign or newer block is reported as such even when it is short.
  if (bytes.length < HEADER_LENGTH) {
    throw new VaultEnvelopeError("too-short", `${bytes.length} bytes, a ${what} has at least ${minLength}`);
  }
  if (!equalBytes(bytes.subarray(0, magic.length), magic)) {
    throw new VaultEnvelopeError("bad-magic", `this block is not a Soulmesh ${what}`);
  }
  if (bytes[magic.length] !== ENVELOPE_VERSION) {
    throw new VaultEnvelopeError(
      "unknown-version",
      `${what} format version ${bytes[magic.length]}, this code reads ${ENVELOPE_VERSION}`
    );
  }
  if (bytes.length < minLength) {
    throw new VaultEnvelopeError("too-short", `${bytes.length} bytes, a ${what} has at least ${minLength}`);
  }
}

// Fixed-width fields first, the one variable field (kind) last and length-prefixed: no two distinct
// bindings can serialize to the same bytes.
function recordAad(header: Uint8Array, ref: AgentRef, kind: string): Uint8Array {
  const r = agentRef(ref);
  const kindBytes = utf8ToBytes(typeof kind === "string" ? kind : "");
  if (kindBytes.length === 0 || kindBytes.length > 255) {
    throw new InvalidVaultInputError([`record kind must be 1 to 255 bytes of text, got ${JSON.stringify(kind)}`]);
  }
  return concatBytes(
    header,
    RECORD_AAD_LABEL,
    uint256(r.chainId),
    getBytes(r.registry),
    uint256(r.agentId),
    Uint8Array.of(kindBytes.length),
    kindBytes
  );
}

function shareAad(
  header: Uint8Array,
  ref: { chainId: bigint; registry: string; agentId: bigint },
  recipient: string,
  ephemeralPublicKey: Uint8Array
): Uint8Array {
  return concatBytes(
    header,
    SHARE_AAD_LABEL,
    uint256(ref.chainId),
    getBytes(ref.registry),
    uint256(ref.agentId),
    getBytes(recipient),
    ephemeralPublicKey
  );
}

function shareKey(
  ecdhCompressed: Uint8Array,
  ephemeralPublicKey: Uint8Array,
  recipientPublicKey: Uint8Array
): Uint8Array {
  // The x coordinate alone is the ECDH secret; the prefix byte only carries y's parity.
  return hkdf(
    sha256,
    ecdhCompressed.subarray(1),
    SHARE_KDF_SALT,
    concatBytes(ephemeralPublicKey, recipientPublicKey),
    KEY_LENGTH
  );
}

function checkDeployment(d: VaultDeployment): { chainId: bigint; registry: string } {
  const problems: string[] = [];
  let chainId = 0n;
  if (typeof d.chainId === "bigint" || (typeof d.chainId === "number" && Number.isSafeInteger(d.chainId))) {
    chainId = BigInt(d.chainId);
    if (chainId <= 0n || chainId > UINT256_MAX) problems.push(`chainId ${chainId} is out of range`);
  } else {
    problems.push("chainId is not an integer");
  }
  const registryOk = typeof d.registry === "string" && isAddress(d.registry);
  if (!registryOk) problems.push(`registry ${String(d.registry)} is not an address`);
  if (problems.length > 0) throw new InvalidVaultInputError(problems);
  return { chainId, registry: getAddress(d.registry) };
}

function agentRef(ref: AgentRef): { chainId: bigint; registry: string; agentId: bigint } {
  if (typeof ref.agentId !== "bigint" || ref.agentId < 0n || ref.agentId > UINT256_MAX) {
    throw new InvalidVaultInputError([`agentId must be a uint256 bigint, got ${String(ref.agentId)}`]);
  }
  return { ...checkDeployment(ref), agentId: ref.agentId };
}

function checkAddress(address: string, what: string): string {
  if (typeof address !== "string" || !isAddress(address)) {
    throw new InvalidVaultInputError([`${what} ${String(address)} is not an address`]);
  }
  return getAddress(address);
}

function checkSymmetricKey(key: Uint8Array, which: string): Uint8Array {
  if (!(key instanceof Uint8Array)) throw new InvalidKeyError(which, "not a Uint8Array");
  if (key.length !== KEY_LENGTH) throw new InvalidKeyError(which, `${key.length} bytes instead of ${KEY_LENGTH}`);
  return key;
}

function checkPrivateKey(input: PrivateKeyInput): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = getBytes(input);
  } catch {
    throw new InvalidKeyError("private key", "not bytes or 0x-hex");
  }
  if (!secp256k1.utils.isValidSecretKey(bytes)) {
    throw new InvalidKeyError("private key", "not a secp256k1 scalar in [1, n-1]");
  }
  return bytes;
}

/** Any accepted encoding → 33-byte compressed, checked to be on the curve and not the identity. */
function normalizePublicKey(input: PublicKeyInput): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = getBytes(input);
  } catch {
    throw new InvalidPublicKeyError("not bytes or 0x-hex");
  }
  if (bytes.length === 64) bytes = concatBytes(Uint8Array.of(0x04), bytes);
  if (bytes.length !== 33 && bytes.length !== 65) throw new InvalidPublicKeyError(`${bytes.length} bytes`);
  try {
    return secp256k1.Point.fromBytes(bytes).toBytes(true);
  } catch {
    throw new InvalidPublicKeyError("not a point of secp256k1");
  }
}

function uint256(value: bigint): Uint8Array {
  const out = new Uint8Array(32);
  let v = value;
  for (let i = 31; i >= 0 && v > 0n; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
