/**
 * Publishing and reading personas: the character card and optional LoRA adapter go to IPFS as UnixFS files,
 * a manifest names both, and PersonaRegistry mints the persona NFT recording the manifest's CID, the
 * adapter's SHA-256, the base model's hash, the royalty and the adoption price.
 *
 * The chain is the authority. A reader follows chain → manifest CID → card and adapter CIDs; content
 * addressing makes each step tamper-evident, and the manifest's copies of the adapter and base model hashes
 * must equal the chain's or the persona is refused (PersonaManifestMismatchError). Providers verify the
 * adapter bytes against the chain's SHA-256 again before loading them.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { ZeroHash } from "ethers";
import type { Log } from "ethers";
import type { PersonaRegistry } from "../../chain/contracts.js";
import { findEvent } from "../../chain/receipt.js";
import { withRevertDecoding } from "../../chain/revert.js";
import { SoulmeshError } from "../../errors.js";
import { addFile, parseFileCid, readFile } from "../../vault/files.js";
import type { BlockStore } from "../../vault/types.js";
import { DEFAULT_MAX_CARD_JSON_BYTES, parseCharacterCard, type CharacterCard } from "./card.js";
import {
  decodePersonaManifest,
  encodePersonaManifest,
  MAX_MANIFEST_BYTES,
  PersonaManifestError,
  PersonaManifestMismatchError,
  type PersonaManifest,
} from "./manifest.js";
import { DEFAULT_MAX_PNG_BYTES, isPng } from "./png.js";

/** How much of an adapter's start is read to check its GGUF header. */
export const ADAPTER_HEADER_BYTES = 1024 * 1024;

const UINT96_MAX = (1n << 96n) - 1n;
const BYTES32 = /^0x[0-9a-fA-F]{64}$/;

/** A publish argument out of range, refused before anything is stored or sent. */
export class InvalidPersonaParameterError extends SoulmeshError {
  override readonly name = "InvalidPersonaParameterError";
  constructor(
    readonly parameter: string,
    readonly detail: string,
  ) {
    super(`Invalid ${parameter}: ${detail}. Fix it and publish again; nothing was stored or sent.`);
  }
}

/** The adapter file is not a GGUF LoRA adapter (llama.cpp would refuse it). Nothing was stored. */
export class NotALoraAdapterError extends SoulmeshError {
  override readonly name = "NotALoraAdapterError";
  constructor(readonly reason: string) {
    super(
      `The adapter is not a GGUF LoRA adapter: ${reason}. Convert it with llama.cpp's convert_lora_to_gguf.py ` +
        `and pass the resulting .gguf file.`,
    );
  }
}

/**
 * An adapter's bytes as {@link storePersonaAdapter} takes them: in memory, a file (streamed, never read whole),
 * or a stream of announced size (an HTTP upload).
 */
export type AdapterSource = { bytes: Uint8Array } | { path: string } | { stream: AsyncIterable<Uint8Array>; size: number };

/** An adapter stored and pinned by {@link storePersonaAdapter}: what a manifest and the chain record of it. */
export interface StoredAdapter {
  /** The UnixFS file's root CID. */
  cid: string;
  /** "0x" + 64 lowercase hex digits: what PersonaRegistry records and providers check before loading. */
  sha256: string;
  size: number;
}

/** An adapter stream that ended before, or ran past, the size it announced. Nothing was pinned. */
export class AdapterSizeMismatchError extends SoulmeshError {
  override readonly name = "AdapterSizeMismatchError";
  constructor(
    readonly expected: number,
    /** Bytes received: all of them when short, those seen up to the overrun when long. */
    readonly received: number,
  ) {
    super(
      `${received < expected ? `The adapter ended after ${received} bytes` : `The adapter ran past its size (${received} bytes seen)`}, ` +
        `${expected} were announced: the upload was cut off or the file changed while it was read. Nothing was pinned; ` +
        `send the adapter again.`,
    );
  }
}

/** Options of {@link storePersonaAdapter}. */
export interface StorePersonaAdapterOptions {
  /** Bytes stored so far, out of the adapter's size. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  signal?: AbortSignal;
}

/** An adapter whose header was checked, ready to be stored; close() releases its source if it is not stored. */
interface OpenedAdapter {
  size: number;
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
  close(): Promise<void>;
}

/**
 * Stores a LoRA adapter on IPFS as a UnixFS file, hashing it as it goes, and pins it. Its GGUF header is
 * checked on the first {@link ADAPTER_HEADER_BYTES} (buffered first, for a stream) before anything is stored;
 * a stream must deliver exactly `size` bytes.
 *
 * @example
 * const stored = await storePersonaAdapter(store, { stream: request, size: contentLength })
 * await preparePersona({ store, card, adapter: { stored }, baseModelHash })
 * @throws NotALoraAdapterError (nothing stored), AdapterSizeMismatchError (nothing pinned),
 * InvalidPersonaParameterError (a size that is no byte count), the store's and the source's errors; the
 * signal's reason when aborted.
 */
export async function storePersonaAdapter(
  store: BlockStore,
  source: AdapterSource,
  options: StorePersonaAdapterOptions = {},
): Promise<StoredAdapter> {
  options.signal?.throwIfAborted();
  return storeOpenedAdapter(store, await openAdapter(source, options.signal), options);
}

async function storeOpenedAdapter(store: BlockStore, adapter: OpenedAdapter, options: StorePersonaAdapterOptions): Promise<StoredAdapter> {
  const { signal, onProgress } = options;
  const hash = createHash("sha256");
  let seen = 0;
  async function* checked(): AsyncGenerator<Uint8Array> {
    for await (const chunk of adapter.chunks) {
      seen += chunk.byteLength;
      // Refused as it happens: a source that never ends must not fill the store.
      if (seen > adapter.size) throw new AdapterSizeMismatchError(adapter.size, seen);
      hash.update(chunk);
      yield chunk;
    }
    if (seen < adapter.size) throw new AdapterSizeMismatchError(adapter.size, seen);
  }
  try {
    const file = await addFile(store, checked(), { signal, onProgress: (done) => onProgress?.(done, adapter.size) });
    await store.pin?.(file.cid, { signal });
    return { cid: file.cid.toString(), sha256: `0x${hash.digest("hex")}`, size: file.size };
  } finally {
    await adapter.close();
  }
}

/** Checks the adapter's GGUF header, before anything is stored. */
async function openAdapter(source: AdapterSource, signal: AbortSignal | undefined): Promise<OpenedAdapter> {
  if ("bytes" in source) {
    checkLoraHeader(source.bytes.subarray(0, ADAPTER_HEADER_BYTES), source.bytes.byteLength);
    return { size: source.bytes.byteLength, chunks: [source.bytes], close: async () => {} };
  }
  if ("path" in source) return openAdapterFile(source.path, signal);
  return openAdapterStream(source.stream, source.size, signal);
}

async function openAdapterFile(path: string, signal: AbortSignal | undefined): Promise<OpenedAdapter> {
  const handle = await open(path, "r");
  let size: number;
  try {
    signal?.throwIfAborted();
    size = (await handle.stat()).size;
    const head = new Uint8Array(Math.min(size, ADAPTER_HEADER_BYTES));
    const { bytesRead } = await handle.read(head, 0, head.byteLength, 0);
    checkLoraHeader(head.subarray(0, bytesRead), size);
  } finally {
    await handle.close();
  }
  // Opened only when stored: nothing to release before.
  async function* chunks(): AsyncGenerator<Uint8Array> {
    yield* createReadStream(path, { signal, highWaterMark: 1 << 20 }) as AsyncIterable<Uint8Array>;
  }
  const generator = chunks();
  return { size, chunks: generator, close: async () => void (await generator.return(undefined)) };
}

async function openAdapterStream(stream: AsyncIterable<Uint8Array>, size: number, signal: AbortSignal | undefined): Promise<OpenedAdapter> {
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidPersonaParameterError("adapter size", `${size} is not a byte count`);
  const iterator = stream[Symbol.asyncIterator]();
  const want = Math.min(size, ADAPTER_HEADER_BYTES);
  const buffered: Uint8Array[] = [];
  let length = 0;
  let ended = false;
  let first: Uint8Array;
  try {
    while (length < want) {
      signal?.throwIfAborted();
      const next = await iterator.next();
      if (next.done === true) {
        ended = true;
        break;
      }
      buffered.push(next.value);
      length += next.value.byteLength;
    }
    if (length > size || (ended && length < size)) throw new AdapterSizeMismatchError(size, length);
    first = Buffer.concat(buffered);
    checkLoraHeader(first.subarray(0, want), size);
  } catch (err) {
    await iterator.return?.();
    throw err;
  }
  async function* chunks(): AsyncGenerator<Uint8Array> {
    yield first;
    while (!ended) {
      const next = await iterator.next();
      if (next.done === true) return;
      yield next.value;
    }
  }
  const generator = chunks();
  return {
    size,
    chunks: generator,
    async close() {
      await generator.return(undefined);
      await iterator.return?.();
    },
  };
}

/** Where {@link publishPersona} or {@link preparePersona} is. */
export type PublishProgress =
  | { stage: "card" | "manifest"; bytesDone: number; bytesTotal: number }
  | { stage: "adapter"; bytesDone: number; bytesTotal: number | undefined }
  | { stage: "transaction"; transactionHash?: string };

/** Options of {@link preparePersona}. */
export interface PreparePersonaOptions {
  store: BlockStore;
  /** The character card file as is: JSON, or a PNG with a card chunk. */
  card: Uint8Array;
  /** A GGUF LoRA adapter to store, or one {@link storePersonaAdapter} stored already in this store. */
  adapter?: AdapterSource | { stored: StoredAdapter };
  /** SHA-256 of the base model file ("0x" + 64 hex digits), as providers register it. */
  baseModelHash: string;
  baseModelName?: string;
  /** Where the base model can be downloaded, for providers who do not serve it yet. */
  baseModelUri?: string;
  onProgress?: (progress: PublishProgress) => void;
  signal?: AbortSignal;
}

/** What {@link preparePersona} stored: what `createPersona` then records. */
export interface PreparedPersona {
  manifestCid: string;
  manifest: PersonaManifest;
  cardCid: string;
  adapterCid: string | undefined;
  /** The adapter's SHA-256 to record on chain; ZeroHash without an adapter. */
  adapterSha256: string;
  /** Lowercase, as the manifest gives it. */
  baseModelHash: string;
}

/** Options of {@link publishPersona}. */
export interface PublishPersonaOptions extends PreparePersonaOptions {
  /** Connected to the creator's signer: the creator becomes the persona's first holder. */
  registry: PersonaRegistry;
  royaltyPerMillion: bigint;
  adoptionPrice: bigint;
}

/** What {@link publishPersona} published. */
export interface PublishedPersona {
  personaId: bigint;
  manifestCid: string;
  manifest: PersonaManifest;
  cardCid: string;
  adapterCid: string | undefined;
  /** The adapter's SHA-256 as recorded on chain; ZeroHash without an adapter. */
  adapterSha256: string;
  transactionHash: string;
}

/**
 * Everything of publishing but the transaction: validates the card (and adapter), stores card, adapter and
 * manifest on IPFS, pins them and flushes the store. Whoever signs then sends
 * `createPersona(manifestCid, adapterSha256, baseModelHash, royaltyPerMillion, adoptionPrice)` (a browser
 * wallet, for the dashboard). An invalid card, adapter or base model hash is refused before anything is stored.
 *
 * @example
 * const prepared = await preparePersona({ store, card: await readFile("aria.png"), baseModelHash: model.sha256 })
 * await registry.createPersona(prepared.manifestCid, prepared.adapterSha256, prepared.baseModelHash, 200_000n, 0n)
 * @throws the card parser's errors (NotACharacterCardError, NotPngError, …), NotALoraAdapterError,
 * AdapterSizeMismatchError, InvalidPersonaParameterError, the store's errors; the signal's reason when aborted.
 */
export async function preparePersona(options: PreparePersonaOptions): Promise<PreparedPersona> {
  const { store, signal, onProgress } = options;
  signal?.throwIfAborted();
  const baseModelHash = checkBaseModelHash(options.baseModelHash);
  // Refused before anything is stored: a bad card or adapter must leave no trace.
  const card = parseCharacterCard(options.card);
  const given = options.adapter;
  const reused = given !== undefined && "stored" in given ? await checkStoredAdapter(store, given.stored, signal) : undefined;
  const opened = given !== undefined && !("stored" in given) ? await openAdapter(given, signal) : undefined;

  let cardFile: Awaited<ReturnType<typeof addFile>>;
  let adapter: StoredAdapter | undefined = reused;
  try {
    cardFile = await addFile(store, options.card, {
      signal,
      onProgress: (bytesDone) => onProgress?.({ stage: "card", bytesDone, bytesTotal: options.card.byteLength }),
    });
    await store.pin?.(cardFile.cid, { signal });
    if (opened !== undefined) {
      adapter = await storeOpenedAdapter(store, opened, {
        signal,
        onProgress: (bytesDone, bytesTotal) => onProgress?.({ stage: "adapter", bytesDone, bytesTotal }),
      });
    } else if (reused !== undefined) {
      await store.pin?.(parseFileCid(reused.cid)!, { signal });
    }
  } finally {
    await opened?.close();
  }

  const manifest: PersonaManifest = {
    v: 1,
    name: card.name.trim() === "" ? "Unnamed persona" : card.name.slice(0, 256),
    card: { cid: cardFile.cid.toString(), format: isPng(options.card) ? "png" : "json", size: cardFile.size },
    ...(adapter === undefined ? {} : { adapter }),
    baseModel: {
      hash: baseModelHash,
      ...(options.baseModelName === undefined ? {} : { name: options.baseModelName }),
      ...(options.baseModelUri === undefined ? {} : { uri: options.baseModelUri }),
    },
    createdAt: new Date().toISOString(),
  };
  const manifestBytes = encodePersonaManifest(manifest);
  const manifestFile = await addFile(store, manifestBytes, {
    signal,
    onProgress: (bytesDone) => onProgress?.({ stage: "manifest", bytesDone, bytesTotal: manifestBytes.byteLength }),
  });
  await store.pin?.(manifestFile.cid, { signal });
  // The chain will name these blocks: they must outlive a crash of this machine right after the transaction.
  await store.flush?.({ signal });
  return {
    manifestCid: manifestFile.cid.toString(),
    manifest,
    cardCid: manifest.card.cid,
    adapterCid: adapter?.cid,
    adapterSha256: adapter?.sha256 ?? ZeroHash,
    baseModelHash,
  };
}

/**
 * Publishes a persona: validates the card (and adapter), stores card, adapter and manifest on IPFS, pins
 * them ({@link preparePersona}), and mints the persona NFT to the registry's signer. An invalid card, adapter
 * or parameter is refused before anything is stored; a reverted transaction leaves only unreferenced blocks
 * behind.
 *
 * @example
 * const persona = await publishPersona({
 *   store, registry: connectContracts(deployment, creator).personaRegistry,
 *   card: await readFile("aria.png"), adapter: { path: "aria-lora.gguf" },
 *   baseModelHash: model.sha256, royaltyPerMillion: 200_000n, adoptionPrice: 5_000_000n,
 * })
 * console.log(persona.personaId, persona.manifestCid)
 * @throws the card parser's errors (NotACharacterCardError, NotPngError, …), NotALoraAdapterError,
 * InvalidPersonaParameterError, the store's errors, ContractRevertError; the signal's reason when aborted.
 */
export async function publishPersona(options: PublishPersonaOptions): Promise<PublishedPersona> {
  const { registry, signal, onProgress } = options;
  signal?.throwIfAborted();
  checkParameters(options);
  const prepared = await preparePersona(options);

  signal?.throwIfAborted();
  onProgress?.({ stage: "transaction" });
  const receipt = await withRevertDecoding(
    registry
      .createPersona(prepared.manifestCid, prepared.adapterSha256, prepared.baseModelHash, options.royaltyPerMillion, options.adoptionPrice)
      .then((tx) => {
        onProgress?.({ stage: "transaction", transactionHash: tx.hash });
        return tx.wait();
      }),
  );
  const personaId = createdPersonaId(registry, receipt?.logs ?? []);
  return {
    personaId,
    manifestCid: prepared.manifestCid,
    manifest: prepared.manifest,
    cardCid: prepared.cardCid,
    adapterCid: prepared.adapterCid,
    adapterSha256: prepared.adapterSha256,
    transactionHash: receipt!.hash,
  };
}

function checkBaseModelHash(baseModelHash: string): string {
  if (!BYTES32.test(baseModelHash) || /^0x0{64}$/.test(baseModelHash)) {
    throw new InvalidPersonaParameterError(
      "base model hash",
      `${JSON.stringify(baseModelHash)} is not a non-zero "0x" + 64 hex digits SHA-256`,
    );
  }
  return baseModelHash.toLowerCase();
}

function checkParameters(options: PublishPersonaOptions): void {
  checkBaseModelHash(options.baseModelHash);
  for (const [name, value, max] of [
    ["royalty per million", options.royaltyPerMillion, UINT96_MAX],
    ["adoption price", options.adoptionPrice, (1n << 256n) - 1n],
  ] as const) {
    if (value < 0n || value > max) throw new InvalidPersonaParameterError(name, `${value} is outside 0..${max}`);
  }
}

/** A stored adapter named again: its record must be well-formed and its root in this store. */
async function checkStoredAdapter(store: BlockStore, stored: StoredAdapter, signal: AbortSignal | undefined): Promise<StoredAdapter> {
  const cid = parseFileCid(stored.cid);
  if (cid === undefined) throw new InvalidPersonaParameterError("adapter CID", `${JSON.stringify(stored.cid)} is no CID`);
  if (!BYTES32.test(stored.sha256)) {
    throw new InvalidPersonaParameterError("adapter SHA-256", `${JSON.stringify(stored.sha256)} is not "0x" + 64 hex digits`);
  }
  if (!Number.isSafeInteger(stored.size) || stored.size < 0) throw new InvalidPersonaParameterError("adapter size", `${stored.size} is not a byte count`);
  if (!(await store.has(cid, { signal }))) {
    throw new InvalidPersonaParameterError("adapter", `${stored.cid} is not in this block store; store it with storePersonaAdapter first`);
  }
  return { cid: cid.toString(), sha256: stored.sha256.toLowerCase(), size: stored.size };
}

/**
 * Checks that bytes start like a GGUF LoRA adapter: the GGUF magic, version 2 or 3, and metadata with
 * general.type "adapter" and adapter.type "lora" (what llama.cpp requires). The tensors' fit to a base model
 * is the provider's check (it knows the model).
 *
 * @example
 * checkLoraHeader(firstMegabyte, fileSize)
 * @throws NotALoraAdapterError naming what is wrong.
 */
export function checkLoraHeader(head: Uint8Array, fileSize: number): void {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  let at = 0;
  const need = (n: number): void => {
    if (at + n > head.byteLength) {
      throw new NotALoraAdapterError(
        head.byteLength < fileSize ? `its metadata runs past the first ${head.byteLength} bytes` : "the file ends inside its header",
      );
    }
  };
  const u32 = (): number => (need(4), (at += 4), view.getUint32(at - 4, true));
  const u64 = (): number => {
    need(8);
    at += 8;
    const value = view.getBigUint64(at - 8, true);
    if (value > BigInt(head.byteLength)) throw new NotALoraAdapterError(`a length of ${value} in its header is impossible`);
    return Number(value);
  };
  const text = (): string => {
    const length = u64();
    need(length);
    at += length;
    return new TextDecoder().decode(head.subarray(at - length, at));
  };
  const FIXED: Record<number, number> = { 0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8 };
  const skip = (type: number, depth: number): void => {
    if (type === 8) return void text();
    if (type === 9) {
      if (depth > 2) throw new NotALoraAdapterError("its metadata nests arrays too deep");
      const element = u32();
      const count = u64();
      for (let i = 0; i < count; i++) skip(element, depth + 1);
      return;
    }
    const size = FIXED[type];
    if (size === undefined) throw new NotALoraAdapterError(`its metadata has a value of unknown type ${type}`);
    need(size);
    at += size;
  };

  need(4);
  if (head[0] !== 0x47 || head[1] !== 0x47 || head[2] !== 0x55 || head[3] !== 0x46) {
    throw new NotALoraAdapterError("it does not start with the GGUF magic");
  }
  at = 4;
  const version = u32();
  if (version !== 2 && version !== 3) throw new NotALoraAdapterError(`its GGUF version ${version} is not 2 or 3`);
  need(8);
  at += 8; // tensor count
  const kvCount = u64();
  const found = new Map<string, string>();
  for (let i = 0; i < kvCount && found.size < 2; i++) {
    const key = text();
    const type = u32();
    if ((key === "general.type" || key === "adapter.type") && type === 8) found.set(key, text());
    else skip(type, 0);
  }
  if (found.get("general.type") !== "adapter") {
    throw new NotALoraAdapterError(`its general.type is ${JSON.stringify(found.get("general.type") ?? null)}, not "adapter"`);
  }
  if (found.get("adapter.type") !== "lora") {
    throw new NotALoraAdapterError(`its adapter.type is ${JSON.stringify(found.get("adapter.type") ?? null)}, not "lora"`);
  }
}

function createdPersonaId(registry: PersonaRegistry, logs: readonly Log[]): bigint {
  const created = findEvent(registry, logs, "PersonaCreated");
  // Unreachable with a PersonaRegistry: createPersona always emits PersonaCreated.
  if (created === undefined) throw new Error("createPersona's receipt has no PersonaCreated event");
  return created.args.personaId as bigint;
}

// -------------------------------------------------------------------------------------------------- reading

/** Options of {@link readPersona}. */
export interface ReadPersonaOptions {
  registry: PersonaRegistry;
  store: BlockStore;
  personaId: bigint;
  /** Largest card accepted (default: the card parser's PNG limit). */
  maxCardBytes?: number;
  signal?: AbortSignal;
}

/** The royalty in force and the change scheduled, if any. */
export interface RoyaltySchedule {
  current: bigint;
  /** Equal to `current` when nothing is pending. */
  next: bigint;
  /** Unix seconds when `next` takes effect; 0n when nothing is pending. */
  effectiveAt: bigint;
}

/** A persona as published: the chain's record, its manifest and its card. */
export interface PersonaInfo {
  personaId: bigint;
  holder: string;
  manifestCid: string;
  manifest: PersonaManifest;
  card: CharacterCard;
  cardBytes: Uint8Array;
  /** The royalty in force now (royalty.current). */
  royaltyPerMillion: bigint;
  royalty: RoyaltySchedule;
  adoptionPrice: bigint;
  /** The chain's adapter SHA-256, undefined for a persona without an adapter. */
  adapterSha256: string | undefined;
  /** From the manifest, checked against the chain's hash. */
  adapterCid: string | undefined;
  baseModelHash: string;
}

/**
 * Reads a persona: the chain's record, then its manifest and card from IPFS. The manifest's adapter and base
 * model hashes must be the chain's.
 *
 * @example
 * const persona = await readPersona({ registry: contracts.personaRegistry, store, personaId: 1n })
 * console.log(persona.card.name, persona.royaltyPerMillion)
 * @throws ContractRevertError (Persona__UnknownPersona), PersonaManifestError, PersonaManifestMismatchError,
 * the card parser's errors, the file errors (NotAFileError, FileTooLargeError), the store's errors
 * (BlockNotFoundError when no peer serves a block in time).
 */
export async function readPersona(options: ReadPersonaOptions): Promise<PersonaInfo> {
  const { registry, store, personaId, signal } = options;
  signal?.throwIfAborted();
  const [record, holder, schedule] = await withRevertDecoding(
    Promise.all([registry.personaOf(personaId), registry.ownerOf(personaId), registry.royaltyScheduleOf(personaId)]),
  );
  const manifestCid = record.manifestCid;
  const cid = parseFileCid(manifestCid);
  if (cid === undefined) throw new PersonaManifestError(`the chain's manifest CID ${JSON.stringify(manifestCid)} is no CID`);
  const manifest = decodePersonaManifest(await readFile(store, cid, { maxBytes: MAX_MANIFEST_BYTES, signal }));

  const adapterSha256 = record.adapterSha256 === ZeroHash ? undefined : record.adapterSha256.toLowerCase();
  if ((manifest.adapter?.sha256 ?? undefined) !== adapterSha256) {
    throw new PersonaManifestMismatchError(personaId, "adapterSha256", adapterSha256 ?? "none", manifest.adapter?.sha256 ?? "none");
  }
  const baseModelHash = record.baseModelHash.toLowerCase();
  if (manifest.baseModel.hash !== baseModelHash) {
    throw new PersonaManifestMismatchError(personaId, "baseModelHash", baseModelHash, manifest.baseModel.hash);
  }

  const maxCardBytes = options.maxCardBytes ?? Math.max(DEFAULT_MAX_PNG_BYTES, DEFAULT_MAX_CARD_JSON_BYTES);
  const cardBytes = await readFile(store, parseFileCid(manifest.card.cid)!, { maxBytes: maxCardBytes, signal });
  if (cardBytes.byteLength !== manifest.card.size) {
    throw new PersonaManifestError(`its card is ${cardBytes.byteLength} bytes, the manifest says ${manifest.card.size}`);
  }
  const card = parseCharacterCard(cardBytes);
  const royalty: RoyaltySchedule = { current: schedule.current, next: schedule.next, effectiveAt: schedule.effectiveAt };
  return {
    personaId,
    holder,
    manifestCid,
    manifest,
    card,
    cardBytes,
    royaltyPerMillion: royalty.current,
    royalty,
    adoptionPrice: record.adoptionPrice,
    adapterSha256,
    adapterCid: manifest.adapter?.cid,
    baseModelHash,
  };
}

/** Options of {@link listPersonas}. */
export interface ListPersonasOptions {
  registry: PersonaRegistry;
  /** Only personas this address created (found by their PersonaCreated logs). */
  creator?: string;
  /** Where the log search starts (the deployment's startBlock); only with `creator`. Default 0. */
  fromBlock?: number;
  /** Blocks per log query, for nodes that cap ranges (default 10,000). */
  chunkSize?: number;
  signal?: AbortSignal;
}

/** A persona's on-chain record, as it is now. */
export interface PersonaRecord {
  personaId: bigint;
  holder: string;
  manifestCid: string;
  /** Undefined for a persona without an adapter. */
  adapterSha256: string | undefined;
  baseModelHash: string;
  royalty: RoyaltySchedule;
  adoptionPrice: bigint;
}

/**
 * Lists personas from the chain alone (nothing is fetched from IPFS): all of them (ids 1..totalPersonas), or
 * those a creator minted. Each record is the persona's current state, oldest persona first.
 *
 * @example
 * const mine = await listPersonas({ registry, creator: wallet.address, fromBlock: deployment.startBlock })
 * @throws the provider's errors; the signal's reason when aborted.
 */
export async function listPersonas(options: ListPersonasOptions): Promise<PersonaRecord[]> {
  const { registry, signal } = options;
  signal?.throwIfAborted();
  let ids: bigint[];
  if (options.creator === undefined) {
    const total = await registry.totalPersonas();
    ids = Array.from({ length: Number(total) }, (_, i) => BigInt(i + 1));
  } else {
    ids = await createdBy(registry, options.creator, options.fromBlock ?? 0, options.chunkSize ?? 10_000, signal);
  }
  const records: PersonaRecord[] = [];
  // A few reads at a time: enough to hide latency, few enough not to trip a public RPC's rate limit.
  for (let i = 0; i < ids.length; i += 8) {
    signal?.throwIfAborted();
    records.push(...(await Promise.all(ids.slice(i, i + 8).map((id) => personaRecord(registry, id)))));
  }
  return records;
}

async function createdBy(
  registry: PersonaRegistry,
  creator: string,
  fromBlock: number,
  chunkSize: number,
  signal: AbortSignal | undefined,
): Promise<bigint[]> {
  const filter = registry.filters.PersonaCreated(undefined, creator);
  const toBlock = await registry.runner!.provider!.getBlockNumber();
  const ids: bigint[] = [];
  for (let from = fromBlock; from <= toBlock; from += chunkSize) {
    signal?.throwIfAborted();
    const logs = await registry.queryFilter(filter, from, Math.min(toBlock, from + chunkSize - 1));
    for (const log of logs) ids.push(log.args.personaId);
  }
  return ids;
}

async function personaRecord(registry: PersonaRegistry, personaId: bigint): Promise<PersonaRecord> {
  const [record, holder, schedule] = await withRevertDecoding(
    Promise.all([registry.personaOf(personaId), registry.ownerOf(personaId), registry.royaltyScheduleOf(personaId)]),
  );
  return {
    personaId,
    holder,
    manifestCid: record.manifestCid,
    adapterSha256: record.adapterSha256 === ZeroHash ? undefined : record.adapterSha256.toLowerCase(),
    baseModelHash: record.baseModelHash.toLowerCase(),
    royalty: { current: schedule.current, next: schedule.next, effectiveAt: schedule.effectiveAt },
    adoptionPrice: record.adoptionPrice,
  };
}
