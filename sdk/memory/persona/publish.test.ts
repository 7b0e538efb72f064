import { createHash } from "node:crypto";
import { readFile as readFsFile } from "node:fs/promises";
import { ZeroHash } from "ethers";
import { CID } from "multiformats/cid";
import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tinyFixtures, type TinyFixtures } from "../../../test/fixtures/gguf/llama.js";
import { createTestChain, type TestChain } from "../../../test/helpers/chain.js";
import { MemoryBlockStore } from "../../../test/helpers/memory-block-store.js";
import { deployFixture, type Fixture } from "../../../test/helpers/soulmesh.js";
import { ContractRevertError } from "../../chain/errors.js";
import { startHeliaPair, type HeliaPair } from "../../../test/helpers/helia-pair.js";
import type { HeliaBlockStore } from "../../vault/block-store.js";
import { addFile, readFile } from "../../vault/files.js";
import { exportCharacterCard, parseCharacterCard } from "./card.js";
import { NotACharacterCardError } from "./errors.js";
import { v2Card, v3Card } from "./fixtures.js";
import { encodePersonaManifest, PersonaManifestError, PersonaManifestMismatchError, type PersonaManifest } from "./manifest.js";
import {
  AdapterSizeMismatchError,
  checkLoraHeader,
  InvalidPersonaParameterError,
  listPersonas,
  NotALoraAdapterError,
  preparePersona,
  publishPersona,
  readPersona,
  storePersonaAdapter,
} from "./publish.js";
import type { CID as CidType } from "multiformats/cid";

const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));
const sha256Hex = (bytes: Uint8Array): string => `0x${createHash("sha256").update(bytes).digest("hex")}`;

describe("personas on IPFS and chain", () => {
  let chain: TestChain;
  let f: Fixture;
  let fx: TinyFixtures;
  let nodes: HeliaPair;
  let a: HeliaBlockStore;
  let b: HeliaBlockStore;
  let creator: Wallet;
  let other: Wallet;

  beforeAll(async () => {
    chain = await createTestChain();
    f = await deployFixture(chain);
    fx = await tinyFixtures();
    [, creator, other] = chain.wallets as [Wallet, Wallet, Wallet];
    // `b` stands for a provider or another user's machine: it gets everything from `a` over bitswap.
    nodes = await startHeliaPair("soulmesh-persona-");
    ({ a, b } = nodes);
  });

  afterAll(async () => {
    await nodes?.stop();
    await chain?.close();
  });

  const registryOf = (wallet: Wallet) => f.as(wallet).personaRegistry;

  it("publishes a JSON card with a LoRA; another node reads the same card and adapter", async () => {
    const cardBytes = json(v2Card());
    const stages = new Set<string>();
    const published = await publishPersona({
      store: a,
      registry: registryOf(creator),
      card: cardBytes,
      adapter: { path: fx.adapters[0]!.path },
      baseModelHash: fx.base.sha256,
      baseModelName: "tiny-llama",
      royaltyPerMillion: 150_000n,
      adoptionPrice: 2_000_000n,
      onProgress: (p) => stages.add(p.stage),
    });
    expect([...stages]).toEqual(["card", "adapter", "manifest", "transaction"]);
    expect(published.adapterSha256).toBe(fx.adapters[0]!.sha256);
    expect(published.manifest).toMatchObject({
      v: 1,
      name: parseCharacterCard(cardBytes).name,
      card: { cid: published.cardCid, format: "json", size: cardBytes.byteLength },
      adapter: { cid: published.adapterCid, sha256: fx.adapters[0]!.sha256 },
      baseModel: { hash: fx.base.sha256, name: "tiny-llama" },
    });

    const persona = await readPersona({ registry: f.contracts.personaRegistry, store: b, personaId: published.personaId });
    expect(persona).toMatchObject({
      personaId: published.personaId,
      holder: creator.address,
      manifestCid: published.manifestCid,
      royaltyPerMillion: 150_000n,
      royalty: { current: 150_000n, next: 150_000n, effectiveAt: 0n },
      adoptionPrice: 2_000_000n,
      adapterSha256: fx.adapters[0]!.sha256,
      adapterCid: published.adapterCid,
      baseModelHash: fx.base.sha256,
    });
    expect(Buffer.from(persona.cardBytes).equals(Buffer.from(cardBytes))).toBe(true);
    expect(persona.card.name).toBe(parseCharacterCard(cardBytes).name);
    // The adapter, as a provider would fetch it by CID from the second node: the registered bytes.
    const adapter = await readFile(b, CID.parse(persona.adapterCid!));
    expect(Buffer.from(adapter).equals(await readFsFile(fx.adapters[0]!.path))).toBe(true);
    expect(sha256Hex(adapter)).toBe(persona.adapterSha256);
  });

  it("publishes a PNG card with an adapter given as bytes", async () => {
    const card = parseCharacterCard(json(v3Card()));
    const png = exportCharacterCard(card, { format: "png" });
    const adapterBytes = new Uint8Array(await readFsFile(fx.adapters[1]!.path));
    const published = await publishPersona({
      store: a,
      registry: registryOf(creator),
      card: png,
      adapter: { bytes: adapterBytes },
      baseModelHash: fx.base.sha256,
      royaltyPerMillion: 0n,
      adoptionPrice: 0n,
    });
    expect(published.manifest.card.format).toBe("png");
    const persona = await readPersona({ registry: f.contracts.personaRegistry, store: b, personaId: published.personaId });
    expect(Buffer.from(persona.cardBytes).equals(Buffer.from(png))).toBe(true);
    expect(persona.card.spec).toBe("chara_card_v3");
    expect(persona.adapterSha256).toBe(sha256Hex(adapterBytes));
  });

  it("publishes a persona without an adapter: zero hash on chain, none in the manifest", async () => {
    const published = await publishPersona({
      store: a,
      registry: registryOf(other),
      card: json(v2Card()),
      baseModelHash: fx.base.sha256.toUpperCase().replace("0X", "0x"),
      royaltyPerMillion: 1n,
      adoptionPrice: 0n,
    });
    expect(published.adapterSha256).toBe(ZeroHash);
    expect(published.manifest.adapter).toBeUndefined();
    const persona = await readPersona({ registry: f.contracts.personaRegistry, store: b, personaId: published.personaId });
    expect(persona.adapterSha256).toBeUndefined();
    expect(persona.adapterCid).toBeUndefined();
    expect(persona.baseModelHash).toBe(fx.base.sha256);
  });

  it("refuses a bad card, adapter or parameter before storing or sending anything", async () => {
    const store = new MemoryBlockStore();
    const before = await f.contracts.personaRegistry.totalPersonas();
    const base = {
      store,
      registry: registryOf(creator),
      card: json(v2Card()),
      baseModelHash: fx.base.sha256,
      royaltyPerMillion: 1n,
      adoptionPrice: 0n,
    };
    await expect(publishPersona({ ...base, card: json({ hello: "world" }) })).rejects.toBeInstanceOf(NotACharacterCardError);
    // A base model is GGUF but no adapter; junk is not GGUF at all.
    await expect(publishPersona({ ...base, adapter: { path: fx.base.path } })).rejects.toThrow(/general.type is null/);
    await expect(publishPersona({ ...base, adapter: { path: fx.base.path } })).rejects.toBeInstanceOf(NotALoraAdapterError);
    await expect(publishPersona({ ...base, adapter: { bytes: json("not gguf") } })).rejects.toBeInstanceOf(NotALoraAdapterError);
    await expect(publishPersona({ ...base, baseModelHash: ZeroHash })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    await expect(publishPersona({ ...base, baseModelHash: "0x1234" })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    await expect(publishPersona({ ...base, royaltyPerMillion: 1n << 96n })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    await expect(publishPersona({ ...base, royaltyPerMillion: -1n })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    expect(store.blocks.size).toBe(0);
    expect(await f.contracts.personaRegistry.totalPersonas()).toBe(before);
  });

  it("refuses a manifest that disagrees with the chain, and one that is no manifest", async () => {
    const cardFile = await addFile(a, json(v2Card()));
    const adapterFile = await addFile(a, await readFsFile(fx.adapters[0]!.path));
    const manifest: PersonaManifest = {
      v: 1,
      name: "Mismatch",
      card: { cid: cardFile.cid.toString(), format: "json", size: cardFile.size },
      adapter: { cid: adapterFile.cid.toString(), sha256: fx.adapters[0]!.sha256, size: adapterFile.size },
      baseModel: { hash: fx.base.sha256 },
      createdAt: new Date().toISOString(),
    };
    const manifestCid = (await addFile(a, encodePersonaManifest(manifest))).cid.toString();
    const registry = f.contracts.personaRegistry;

    // The chain registers another adapter than the manifest names.
    const wrongAdapter = await f.createPersona(creator, { manifestCid, adapterSha256: fx.adapters[2]!.sha256, baseModelHash: fx.base.sha256 });
    const err = await readPersona({ registry, store: b, personaId: wrongAdapter }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PersonaManifestMismatchError);
    expect(err).toMatchObject({ field: "adapterSha256", onChain: fx.adapters[2]!.sha256, inManifest: fx.adapters[0]!.sha256 });

    // No adapter on chain, one in the manifest.
    const noAdapter = await f.createPersona(creator, { manifestCid, adapterSha256: ZeroHash, baseModelHash: fx.base.sha256 });
    await expect(readPersona({ registry, store: b, personaId: noAdapter })).rejects.toMatchObject({
      name: "PersonaManifestMismatchError",
      field: "adapterSha256",
      onChain: "none",
    });

    const wrongModel = await f.createPersona(creator, { manifestCid, adapterSha256: fx.adapters[0]!.sha256, baseModelHash: fx.otherBase.sha256 });
    await expect(readPersona({ registry, store: b, personaId: wrongModel })).rejects.toMatchObject({
      name: "PersonaManifestMismatchError",
      field: "baseModelHash",
    });

    // The manifest CID names the card itself, which is JSON but no manifest.
    const notManifest = await f.createPersona(creator, { manifestCid: cardFile.cid.toString(), baseModelHash: fx.base.sha256 });
    await expect(readPersona({ registry, store: b, personaId: notManifest })).rejects.toBeInstanceOf(PersonaManifestError);
    const notCid = await f.createPersona(creator, { manifestCid: "not-a-cid", baseModelHash: fx.base.sha256 });
    await expect(readPersona({ registry, store: b, personaId: notCid })).rejects.toBeInstanceOf(PersonaManifestError);

    const unknown = (await registry.totalPersonas()) + 100n;
    await expect(readPersona({ registry, store: b, personaId: unknown })).rejects.toBeInstanceOf(ContractRevertError);
  });

  it("lists personas from the chain, all of them or one creator's", async () => {
    const registry = f.contracts.personaRegistry;
    const all = await listPersonas({ registry });
    expect(all.map((p) => p.personaId)).toEqual(Array.from({ length: Number(await registry.totalPersonas()) }, (_, i) => BigInt(i + 1)));
    const others = await listPersonas({ registry, creator: other.address, fromBlock: f.deployment.startBlock, chunkSize: 3 });
    expect(others.length).toBeGreaterThan(0);
    for (const p of others) expect(p.holder).toBe(other.address);
    const mine = await listPersonas({ registry, creator: creator.address, fromBlock: f.deployment.startBlock });
    expect(mine.length + others.length).toBe(all.length);
    expect(mine.some((p) => others.some((o) => o.personaId === p.personaId))).toBe(false);
    const first = all[0]!;
    expect(first).toMatchObject({ holder: creator.address, adapterSha256: fx.adapters[0]!.sha256, royalty: { current: 150_000n } });
    expect(await listPersonas({ registry, creator: chain.wallets[5]!.address })).toEqual([]);
  });
});

describe("checkLoraHeader", () => {
  it("accepts a LoRA and names what is wrong with anything else", async () => {
    const fx = await tinyFixtures();
    const lora = await readFsFile(fx.adapters[0]!.path);
    expect(() => checkLoraHeader(lora, lora.length)).not.toThrow();
    const model = await readFsFile(fx.base.path);
    expect(() => checkLoraHeader(model.subarray(0, 1 << 20), model.length)).toThrow(/general.type is null, not "adapter"/);
    expect(() => checkLoraHeader(lora.subarray(0, 40), lora.length)).toThrow(NotALoraAdapterError);
    expect(() => checkLoraHeader(lora.subarray(0, 40), 40)).toThrow(/ends inside its header/);
    expect(() => checkLoraHeader(new Uint8Array(0), 0)).toThrow(NotALoraAdapterError);
    const badVersion = Uint8Array.from(lora);
    badVersion[4] = 9;
    expect(() => checkLoraHeader(badVersion, badVersion.length)).toThrow(/version 9/);
  });
});

/** A memory store that records pins, to tell "stored but unpinned" from "kept". */
class PinningStore extends MemoryBlockStore {
  readonly pins = new Set<string>();
  async pin(cid: CidType): Promise<void> {
    this.pins.add(cid.toString());
  }
}

/** Yields `bytes` in pieces of `size` bytes, and records whether the consumer closed it early. */
function chunked(bytes: Uint8Array, size: number): AsyncIterable<Uint8Array> & { closed: boolean; pulled: number } {
  const source = {
    closed: false,
    pulled: 0,
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      let at = 0;
      return {
        async next() {
          if (at >= bytes.byteLength) return { done: true, value: undefined };
          const chunk = bytes.subarray(at, at + size);
          at += chunk.byteLength;
          source.pulled += chunk.byteLength;
          return { done: false, value: chunk };
        },
        async return() {
          source.closed = true;
          return { done: true, value: undefined };
        },
      };
    },
  };
  return source;
}

describe("storePersonaAdapter and preparePersona", () => {
  let fx: TinyFixtures;
  let lora: Uint8Array;
  // A LoRA header followed by 2.5 MiB more: the header check reads only the first MiB, the rest streams.
  let big: Uint8Array;

  beforeAll(async () => {
    fx = await tinyFixtures();
    lora = new Uint8Array(await readFsFile(fx.adapters[0]!.path));
    big = new Uint8Array(lora.byteLength + 2.5 * 1024 * 1024);
    big.set(lora);
    for (let i = lora.byteLength; i < big.byteLength; i++) big[i] = i % 251;
  });

  it("stores a streamed adapter in odd-sized chunks: hash, bytes and pin as for a file", async () => {
    const store = new PinningStore();
    const progress: number[] = [];
    const stored = await storePersonaAdapter(store, { stream: chunked(big, 300_001), size: big.byteLength }, {
      onProgress: (done, total) => {
        expect(total).toBe(big.byteLength);
        progress.push(done);
      },
    });
    expect(stored).toEqual({ cid: stored.cid, sha256: sha256Hex(big), size: big.byteLength });
    expect(progress.at(-1)).toBe(big.byteLength);
    expect(store.pins).toEqual(new Set([stored.cid]));
    expect(Buffer.from(await readFile(store, CID.parse(stored.cid))).equals(Buffer.from(big))).toBe(true);
    // Same bytes, same CID and hash, whatever the source.
    expect(await storePersonaAdapter(new MemoryBlockStore(), { bytes: big })).toEqual(stored);
    expect(await storePersonaAdapter(new MemoryBlockStore(), { path: fx.adapters[0]!.path })).toMatchObject({
      sha256: fx.adapters[0]!.sha256,
      size: lora.byteLength,
    });
  });

  it("refuses a stream shorter or longer than announced, pinning nothing", async () => {
    for (const [bytes, size] of [
      [big.subarray(0, big.byteLength - 1), big.byteLength], // short after the header
      [lora.subarray(0, 1000), lora.byteLength], // short inside the header
      [big, big.byteLength - 10], // long
      [lora, lora.byteLength - 1], // long, within the first MiB
    ] as const) {
      const store = new PinningStore();
      const err = await storePersonaAdapter(store, { stream: chunked(bytes, 65_536), size }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AdapterSizeMismatchError);
      expect(err).toMatchObject({ expected: size });
      expect(store.pins.size).toBe(0);
    }
    await expect(storePersonaAdapter(new MemoryBlockStore(), { stream: chunked(lora, 10), size: -1 })).rejects.toBeInstanceOf(
      InvalidPersonaParameterError,
    );
  });

  it("refuses a stream that is no LoRA after its first MiB alone, storing nothing and closing the source", async () => {
    const model = new Uint8Array(await readFsFile(fx.base.path));
    const padded = new Uint8Array(3 * 1024 * 1024);
    padded.set(model.subarray(0, Math.min(model.byteLength, padded.byteLength)));
    for (const bytes of [padded, json("not gguf")]) {
      const store = new PinningStore();
      const source = chunked(bytes, 100_000);
      await expect(storePersonaAdapter(store, { stream: source, size: bytes.byteLength })).rejects.toBeInstanceOf(NotALoraAdapterError);
      expect(store.blocks.size).toBe(0);
      expect(source.closed).toBe(true);
      expect(source.pulled).toBeLessThanOrEqual(Math.min(bytes.byteLength, 1024 * 1024 + 100_000));
    }
  });

  it("prepares a persona around an adapter stored before, and checks that it is in the store", async () => {
    const store = new PinningStore();
    const stored = await storePersonaAdapter(store, { bytes: lora });
    const cardBytes = json(v2Card());
    const stages: string[] = [];
    const prepared = await preparePersona({
      store,
      card: cardBytes,
      adapter: { stored },
      baseModelHash: fx.base.sha256.toUpperCase().replace("0X", "0x"),
      baseModelName: "tiny",
      onProgress: (p) => stages.push(p.stage),
    });
    expect(stages).not.toContain("adapter");
    expect(prepared).toMatchObject({ adapterCid: stored.cid, adapterSha256: stored.sha256, baseModelHash: fx.base.sha256 });
    expect(prepared.manifest.adapter).toEqual(stored);
    const manifest = JSON.parse(new TextDecoder().decode(await readFile(store, CID.parse(prepared.manifestCid))));
    expect(manifest).toMatchObject({ card: { cid: prepared.cardCid }, adapter: stored, baseModel: { hash: fx.base.sha256, name: "tiny" } });
    expect(store.pins).toEqual(new Set([stored.cid, prepared.cardCid, prepared.manifestCid]));

    // Without an adapter: the zero hash.
    const bare = await preparePersona({ store, card: cardBytes, baseModelHash: fx.base.sha256 });
    expect(bare.adapterSha256).toBe(ZeroHash);
    expect(bare.manifest.adapter).toBeUndefined();

    // An adapter record whose blocks are elsewhere, a bad card or hash: refused before anything is stored.
    const empty = new PinningStore();
    const base = { store: empty, card: cardBytes, baseModelHash: fx.base.sha256 };
    await expect(preparePersona({ ...base, adapter: { stored } })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    await expect(preparePersona({ ...base, adapter: { stored: { ...stored, cid: "nope" } } })).rejects.toBeInstanceOf(
      InvalidPersonaParameterError,
    );
    await expect(preparePersona({ ...base, card: json({ hello: 1 }) })).rejects.toBeInstanceOf(NotACharacterCardError);
    await expect(preparePersona({ ...base, baseModelHash: ZeroHash })).rejects.toBeInstanceOf(InvalidPersonaParameterError);
    await expect(
      preparePersona({ ...base, adapter: { stream: chunked(json("junk"), 3), size: 6 } }),
    ).rejects.toBeInstanceOf(NotALoraAdapterError);
    expect(empty.blocks.size).toBe(0);
    expect(empty.pins.size).toBe(0);
  });
});
