import { getAddress, hashMessage, Signature, TypedDataEncoder, verifyTypedData, Wallet } from "ethers";
import { describe, expect, it } from "vitest";
import {
  deriveOwnerKey,
  deriveShareKeyPair,
  generateAgentKey,
  openRecord,
  openSharedAgentKey,
  OWNER_KEY_PURPOSE,
  ownerKeyFromSigner,
  ownerKeyTypedData,
  publicKeyToAddress,
  recoverPublicKey,
  RECORD_OVERHEAD,
  sealRecord,
  shareAgentKey,
  SHARED_KEY_LENGTH,
  unwrapAgentKey,
  wrapAgentKey,
  type TypedDataSigner,
} from "./crypto.js";
import { SoulmeshError } from "../errors.js";

// Fixed keys so the suite is reproducible; Hardhat's first two dev accounts.
const OWNER_PK = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const OTHER_PK = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a7412f4603b6b78690d";
const REGISTRY = getAddress("0x5fbdb2315678afecb367f032d93f642f64180aa3");
const OTHER_REGISTRY = getAddress("0xe7f1725e7734ce288f8367e1bb143e90bb3f0512");
const CHAIN = 31337n;
const REF = { chainId: CHAIN, registry: REGISTRY, agentId: 7n };
const MARKER = "SECRET-MARKER-do-not-leak";

const text = (s: string) => new TextEncoder().encode(s);
const contains = (hay: Uint8Array, needle: Uint8Array) => Buffer.from(hay).includes(Buffer.from(needle));
function flip(bytes: Uint8Array, index: number): Uint8Array {
  const copy = bytes.slice();
  copy[index]! ^= 0x01;
  return copy;
}
function errorName(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SoulmeshError);
    return (err as Error).name;
  }
  throw new Error("expected a throw");
}
async function asyncErrorName(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SoulmeshError);
    return (err as Error).name;
  }
  throw new Error("expected a rejection");
}

describe("records", () => {
  const key = generateAgentKey();
  const plaintext = text(`{"profile":"${MARKER}"}`);
  const sealed = sealRecord({ ...REF, key, kind: "profile", plaintext });

  it("generates distinct 32-byte agent keys", () => {
    expect(key).toHaveLength(32);
    expect(generateAgentKey()).not.toEqual(key);
  });

  it("round-trips, with the documented overhead and a fresh nonce each time", () => {
    expect(sealed).toHaveLength(plaintext.length + RECORD_OVERHEAD);
    expect(openRecord({ ...REF, key, kind: "profile", sealed })).toEqual(plaintext);
    expect(sealRecord({ ...REF, key, kind: "profile", plaintext })).not.toEqual(sealed);
    const empty = sealRecord({ ...REF, key, kind: "turns", plaintext: new Uint8Array() });
    expect(openRecord({ ...REF, key, kind: "turns", sealed: empty })).toHaveLength(0);
    // A number chain id and a lowercase registry name the same deployment.
    expect(
      openRecord({ ...REF, chainId: 31337, registry: REGISTRY.toLowerCase(), key, kind: "profile", sealed })
    ).toEqual(plaintext);
  });

  it("never shows the plaintext", () => {
    expect(contains(sealed, text(MARKER))).toBe(false);
    expect(contains(sealed, text("SECRET"))).toBe(false);
  });

  it("rejects a wrong key, another agent, kind, chain or registry as VaultDecryptError", () => {
    const open = (over: Record<string, unknown>) => () =>
      openRecord({ ...REF, key, kind: "profile", sealed, ...over } as Parameters<typeof openRecord>[0]);
    expect(errorName(open({ key: generateAgentKey() }))).toBe("VaultDecryptError");
    expect(errorName(open({ agentId: 8n }))).toBe("VaultDecryptError");
    expect(errorName(open({ kind: "notebook" }))).toBe("VaultDecryptError");
    expect(errorName(open({ chainId: 1n }))).toBe("VaultDecryptError");
    expect(errorName(open({ registry: OTHER_REGISTRY }))).toBe("VaultDecryptError");
    try {
      open({ agentId: 8n })();
    } catch (err) {
      expect(err).toMatchObject({
        reason: "authentication-failed",
        agentId: 8n,
        kind: "profile",
        chainId: CHAIN,
        registry: REGISTRY,
      });
    }
  });

  it("rejects a flipped bit in the version, nonce, ciphertext or tag", () => {
    const open = (bytes: Uint8Array) => () => openRecord({ ...REF, key, kind: "profile", sealed: bytes });
    const nonceAt = 4;
    const ciphertextAt = 4 + 24;
    const tagAt = sealed.length - 1;
    for (const at of [nonceAt, nonceAt + 23, ciphertextAt, ciphertextAt + 5, tagAt - 15, tagAt]) {
      expect(errorName(open(flip(sealed, at)))).toBe("VaultDecryptError");
    }
    expect(errorName(open(flip(sealed, 0)))).toBe("VaultEnvelopeError"); // magic
    expect(errorName(open(flip(sealed, 3)))).toBe("VaultEnvelopeError"); // version
  });

  it("rejects truncated, foreign and newer-version blocks as VaultEnvelopeError", () => {
    const problem = (bytes: Uint8Array) => {
      try {
        openRecord({ ...REF, key, kind: "profile", sealed: bytes });
      } catch (err) {
        expect((err as Error).name).toBe("VaultEnvelopeError");
        return (err as { problem: string }).problem;
      }
      throw new Error("expected a throw");
    };
    expect(problem(new Uint8Array())).toBe("too-short");
    expect(problem(sealed.subarray(0, RECORD_OVERHEAD - 1))).toBe("too-short");
    expect(problem(text(`{"not":"a vault block at all, but long enough to be one"}`))).toBe("bad-magic");
    const v2 = sealed.slice();
    v2[3] = 2;
    expect(problem(v2)).toBe("unknown-version");
    // Truncated by a byte: still long enough to parse, so it fails the tag.
    expect(errorName(() => openRecord({ ...REF, key, kind: "profile", sealed: sealed.subarray(0, -1) }))).toBe(
      "VaultDecryptError"
    );
  });

  it("refuses bad keys and inputs with typed errors", () => {
    expect(errorName(() => sealRecord({ ...REF, key: new Uint8Array(16), kind: "profile", plaintext }))).toBe(
      "InvalidKeyError"
    );
    expect(errorName(() => sealRecord({ ...REF, agentId: -1n, key, kind: "profile", plaintext }))).toBe(
      "InvalidVaultInputError"
    );
    expect(errorName(() => sealRecord({ ...REF, registry: "0x1234", key, kind: "profile", plaintext }))).toBe(
      "InvalidVaultInputError"
    );
    expect(errorName(() => sealRecord({ ...REF, chainId: 0n, key, kind: "profile", plaintext }))).toBe(
      "InvalidVaultInputError"
    );
  });
});

describe("owner key", () => {
  const owner = new Wallet(OWNER_PK);
  const deployment = { chainId: CHAIN, registry: REGISTRY };

  it("is an EIP-712 message any wallet verifies", async () => {
    const t = ownerKeyTypedData({ ...deployment, owner: owner.address });
    expect(t.domain).toEqual({ name: "Soulmesh Vault", version: "1", chainId: CHAIN, verifyingContract: REGISTRY });
    expect(t.message).toEqual({ purpose: OWNER_KEY_PURPOSE, owner: owner.address });
    const signature = await owner.signTypedData(t.domain, t.types, t.message);
    expect(verifyTypedData(t.domain, t.types, t.message, signature)).toBe(owner.address);
    // The JSON a browser wallet gets for eth_signTypedData_v4.
    const payload = TypedDataEncoder.getPayload(t.domain, t.types, t.message);
    expect(payload.primaryType).toBe("VaultKey");
    expect(JSON.stringify(payload)).toContain("Only sign this on a Soulmesh app");
  });

  it("is the same twice and on another machine, and differs per wallet, chain and registry", async () => {
    const k1 = await ownerKeyFromSigner(owner, deployment);
    const k2 = await ownerKeyFromSigner(owner, { ...deployment, checkDeterministic: true });
    const elsewhere = await ownerKeyFromSigner(new Wallet(OWNER_PK), deployment); // a fresh "machine"
    expect(k1).toHaveLength(32);
    expect(k2).toEqual(k1);
    expect(elsewhere).toEqual(k1);
    const other = await ownerKeyFromSigner(new Wallet(OTHER_PK), deployment);
    const otherChain = await ownerKeyFromSigner(owner, { ...deployment, chainId: 1n });
    const otherRegistry = await ownerKeyFromSigner(owner, { ...deployment, registry: OTHER_REGISTRY });
    for (const k of [other, otherChain, otherRegistry]) expect(k).not.toEqual(k1);
  });

  it("ignores how the wallet encodes v (0/1 or 27/28, or EIP-2098 compact)", async () => {
    const t = ownerKeyTypedData({ ...deployment, owner: owner.address });
    const sig = Signature.from(await owner.signTypedData(t.domain, t.types, t.message));
    const k = deriveOwnerKey(sig.serialized, { ...deployment, owner: owner.address });
    const raw = Buffer.from(sig.serialized.slice(2), "hex");
    raw[64] = raw[64]! - 27;
    expect(deriveOwnerKey(raw, { ...deployment, owner: owner.address })).toEqual(k);
    expect(deriveOwnerKey(sig.compactSerialized, { ...deployment, owner: owner.address })).toEqual(k);
  });

  it("refuses a signature of another address, of another deployment, or a malformed one", async () => {
    const other = new Wallet(OTHER_PK);
    const tOther = ownerKeyTypedData({ ...deployment, owner: owner.address });
    const foreign = await other.signTypedData(tOther.domain, tOther.types, tOther.message);
    expect(errorName(() => deriveOwnerKey(foreign, { ...deployment, owner: owner.address }))).toBe(
      "OwnerSignatureMismatchError"
    );
    const t = ownerKeyTypedData({ ...deployment, owner: owner.address });
    const good = await owner.signTypedData(t.domain, t.types, t.message);
    expect(errorName(() => deriveOwnerKey(good, { ...deployment, chainId: 1n, owner: owner.address }))).toBe(
      "OwnerSignatureMismatchError"
    );
    expect(errorName(() => deriveOwnerKey("0x1234", { ...deployment, owner: owner.address }))).toBe(
      "InvalidSignatureError"
    );
  });

  it("refuses a wallet that signs non-deterministically when asked to check", async () => {
    let calls = 0;
    const flaky: TypedDataSigner = {
      getAddress: async () => owner.address,
      // A wallet with random ECDSA nonces: each call gives another valid signature of the same message.
      signTypedData: async (domain, types, value) => {
        calls++;
        const digest = TypedDataEncoder.hash(domain, types, value);
        const extra = new Uint8Array(32).fill(calls);
        const { secp256k1 } = await import("@noble/curves/secp256k1.js");
        const sig = secp256k1.sign(Buffer.from(digest.slice(2), "hex"), Buffer.from(OWNER_PK.slice(2), "hex"), {
          prehash: false,
          extraEntropy: extra,
          format: "recovered",
        });
        // noble "recovered": recovery ‖ r ‖ s → ethers r ‖ s ‖ v
        return Signature.from({
          r: "0x" + Buffer.from(sig.subarray(1, 33)).toString("hex"),
          s: "0x" + Buffer.from(sig.subarray(33, 65)).toString("hex"),
          v: 27 + sig[0]!,
        }).serialized;
      },
    };
    expect(await ownerKeyFromSigner(flaky, deployment)).toHaveLength(32);
    expect(await asyncErrorName(ownerKeyFromSigner(flaky, { ...deployment, checkDeterministic: true }))).toBe(
      "NonDeterministicSignerError"
    );
  });
});

describe("key wrap", () => {
  it("wraps under the owner key and unwraps only with it, for the same agent", async () => {
    const ownerKey = await ownerKeyFromSigner(new Wallet(OWNER_PK), { chainId: CHAIN, registry: REGISTRY });
    const agentKey = generateAgentKey();
    const wrapped = wrapAgentKey({ ...REF, agentKey, ownerKey });
    expect(contains(wrapped, agentKey)).toBe(false);
    expect(unwrapAgentKey({ ...REF, wrapped, ownerKey })).toEqual(agentKey);
    const otherOwnerKey = await ownerKeyFromSigner(new Wallet(OTHER_PK), { chainId: CHAIN, registry: REGISTRY });
    expect(errorName(() => unwrapAgentKey({ ...REF, wrapped, ownerKey: otherOwnerKey }))).toBe("VaultDecryptError");
    expect(errorName(() => unwrapAgentKey({ ...REF, agentId: 8n, wrapped, ownerKey }))).toBe("VaultDecryptError");
    // A key-wrap is not a record of another kind, and the reverse.
    expect(errorName(() => openRecord({ ...REF, key: ownerKey, kind: "profile", sealed: wrapped }))).toBe(
      "VaultDecryptError"
    );
    const profile = sealRecord({ ...REF, key: ownerKey, kind: "profile", plaintext: agentKey });
    expect(errorName(() => unwrapAgentKey({ ...REF, wrapped: profile, ownerKey }))).toBe("VaultDecryptError");
  });
});

describe("sharing", () => {
  const agentKey = generateAgentKey();

  it("shares to another wallet, which opens it with its private key; a third wallet cannot", () => {
    const recipient = Wallet.createRandom();
    const third = Wallet.createRandom();
    const shared = shareAgentKey({
      ...REF,
      agentKey,
      recipientPublicKey: recipient.signingKey.publicKey,
      recipient: recipient.address,
    });
    expect(shared).toHaveLength(SHARED_KEY_LENGTH);
    expect(contains(shared, agentKey)).toBe(false);
    expect(openSharedAgentKey({ ...REF, shared, recipientPrivateKey: recipient.privateKey })).toEqual(agentKey);
    expect(errorName(() => openSharedAgentKey({ ...REF, shared, recipientPrivateKey: third.privateKey }))).toBe(
      "SharedKeyDecryptError"
    );
    expect(
      errorName(() => openSharedAgentKey({ ...REF, agentId: 8n, shared, recipientPrivateKey: recipient.privateKey }))
    ).toBe("SharedKeyDecryptError");
    expect(
      errorName(() =>
        openSharedAgentKey({ ...REF, registry: OTHER_REGISTRY, shared, recipientPrivateKey: recipient.privateKey })
      )
    ).toBe("SharedKeyDecryptError");
    for (const at of [4, 5, 4 + 33, 4 + 33 + 24, shared.length - 1]) {
      expect(
        errorName(() =>
          openSharedAgentKey({ ...REF, shared: flip(shared, at), recipientPrivateKey: recipient.privateKey })
        )
      ).toBe("SharedKeyDecryptError");
    }
    expect(
      errorName(() =>
        openSharedAgentKey({ ...REF, shared: shared.subarray(0, -1), recipientPrivateKey: recipient.privateKey })
      )
    ).toBe("VaultEnvelopeError");
    // A share is not a record, and a record is not a share.
    expect(errorName(() => openRecord({ ...REF, key: agentKey, kind: "key-wrap", sealed: shared }))).toBe(
      "VaultEnvelopeError"
    );
  });

  it("accepts compressed, uncompressed and raw public keys, and checks the recipient address", () => {
    const recipient = Wallet.createRandom();
    const uncompressed = recipient.signingKey.publicKey; // 0x04…
    const compressed = recipient.signingKey.compressedPublicKey;
    const raw = "0x" + uncompressed.slice(4);
    for (const pub of [uncompressed, compressed, raw, Buffer.from(compressed.slice(2), "hex")]) {
      const shared = shareAgentKey({ ...REF, agentKey, recipientPublicKey: pub });
      expect(openSharedAgentKey({ ...REF, shared, recipientPrivateKey: recipient.privateKey })).toEqual(agentKey);
    }
    expect(publicKeyToAddress(compressed)).toBe(recipient.address);
    expect(
      errorName(() =>
        shareAgentKey({ ...REF, agentKey, recipientPublicKey: compressed, recipient: Wallet.createRandom().address })
      )
    ).toBe("RecipientMismatchError");
    expect(errorName(() => shareAgentKey({ ...REF, agentKey, recipientPublicKey: "0x02" + "00".repeat(32) }))).toBe(
      "InvalidPublicKeyError"
    );
    expect(errorName(() => shareAgentKey({ ...REF, agentKey, recipientPublicKey: "0x1234" }))).toBe(
      "InvalidPublicKeyError"
    );
  });

  it("recovers the recipient's public key from a signature of theirs", async () => {
    const recipient = Wallet.createRandom();
    const request = "Share a Soulmesh agent with me";
    const signature = await recipient.signMessage(request);
    const publicKey = recoverPublicKey(hashMessage(request), signature);
    expect(publicKey).toHaveLength(33);
    expect(publicKeyToAddress(publicKey)).toBe(recipient.address);
    const shared = shareAgentKey({ ...REF, agentKey, recipientPublicKey: publicKey, recipient: recipient.address });
    expect(openSharedAgentKey({ ...REF, shared, recipientPrivateKey: recipient.privateKey })).toEqual(agentKey);
    expect(errorName(() => recoverPublicKey(hashMessage(request), "0xdead"))).toBe("InvalidSignatureError");
  });

  it("shares to a browser owner through the key pair derived from their owner key", async () => {
    const browserOwner = Wallet.createRandom();
    const deployment = { chainId: CHAIN, registry: REGISTRY };
    const { publicKey } = deriveShareKeyPair(await ownerKeyFromSigner(browserOwner, deployment));
    const shared = shareAgentKey({ ...REF, agentKey, recipientPublicKey: publicKey });
    // Later, on another machine: re-derived from a fresh signature.
    const again = deriveShareKeyPair(await ownerKeyFromSigner(new Wallet(browserOwner.privateKey), deployment));
    expect(openSharedAgentKey({ ...REF, shared, recipientPrivateKey: again.privateKey })).toEqual(agentKey);
  });
});
