/**
 * Public files on IPFS: persona cards and LoRA adapters, stored in plaintext on purpose (they are what a
 * persona publishes). Unlike the vault's sealed records, a file here is a standard UnixFS file DAG, laid out
 * as Kubo's `ipfs add --cid-version 1` lays it out (256 KiB chunks, raw leaves, balanced DAG of at most 174
 * links per node): `ipfs cat CID` on a Kubo node returns the same bytes, and adding the same bytes there
 * gives the same CID. A file of one chunk or less is a single raw block; a larger one has dag-pb nodes above
 * its raw leaves.
 *
 * Integrity comes from the store: every BlockStore verifies each block against its CID on get, so a file
 * read back by its root CID is byte for byte the file that was added.
 */
import { exporter, NotFoundError as ExporterNotFoundError } from "ipfs-unixfs-exporter";
import type { ExportContentOptions, UnixFSEntry } from "ipfs-unixfs-exporter";
import { importer } from "ipfs-unixfs-importer";
import { fixedSize } from "ipfs-unixfs-importer/chunker";
import { balanced } from "ipfs-unixfs-importer/layout";
import { CID } from "multiformats/cid";
import { SoulmeshError } from "../errors.js";
import type { BlockStore } from "./types.js";

/** Kubo's default chunk size. */
export const FILE_CHUNK_BYTES = 256 * 1024;
/** Kubo's default widest node of a balanced file DAG. */
export const FILE_MAX_LINKS = 174;

/** A CID that names something other than a UnixFS file or raw block (a directory, a dag-cbor record…). */
export class NotAFileError extends SoulmeshError {
  override readonly name = "NotAFileError";
  constructor(
    readonly cid: string,
    readonly kind: string,
  ) {
    super(`${cid} is not a file on IPFS (it is ${kind}). Pass the CID of the file itself, as \`ipfs add\` printed it.`);
  }
}

/** A file larger than the caller accepts; refused from its root node, before its content is fetched. */
export class FileTooLargeError extends SoulmeshError {
  override readonly name = "FileTooLargeError";
  constructor(
    readonly cid: string,
    readonly size: number,
    readonly maxBytes: number,
  ) {
    super(
      `File ${cid} is ${size} bytes, above the limit of ${maxBytes} bytes here. ` +
        `Check that the CID is the one meant, or raise the limit if the file is trusted.`,
    );
  }
}

/** A file DAG whose nodes do not add up: a node's declared size differs from the bytes under it. */
export class FileDagError extends SoulmeshError {
  override readonly name = "FileDagError";
  constructor(
    readonly cid: string,
    readonly detail: string,
    options?: ErrorOptions,
  ) {
    super(`File ${cid} is damaged: ${detail}. Add the file again from its original bytes.`, options);
  }
}

/** Options of {@link addFile}. */
export interface AddFileOptions {
  /** Bytes read from the source so far. */
  onProgress?: (bytesDone: number) => void;
  signal?: AbortSignal;
}

/** What {@link addFile} stored. */
export interface AddedFile {
  /** The file's root: a raw CID for a file of one chunk or less, else dag-pb. */
  cid: CID;
  /** The file's length in bytes. */
  size: number;
}

/** Options of {@link catFile} and {@link fileSize}. */
export interface ReadFileOptions {
  signal?: AbortSignal;
  /** Refuse a larger file with FileTooLargeError before fetching its content. */
  maxBytes?: number;
}

// The importer and exporter speak interface-blockstore; this is the part of it they call.
interface UnixfsBlockstore {
  put(cid: CID, bytes: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>, options?: { signal?: AbortSignal }): Promise<CID>;
  get(cid: CID, options?: { signal?: AbortSignal }): AsyncGenerator<Uint8Array>;
}

function adaptStore(store: BlockStore, signal: AbortSignal | undefined): UnixfsBlockstore {
  return {
    async put(cid, bytes, options) {
      await store.put(cid, await collect(bytes), { signal: options?.signal ?? signal });
      return cid;
    },
    async *get(cid, options) {
      yield await store.get(cid, { signal: options?.signal ?? signal });
    },
  };
}

/**
 * Adds a file as a UnixFS DAG (Kubo's CIDv1 layout) and returns its root CID and size. Idempotent: the same
 * bytes give the same CID. Blocks are put as they are made; pin the root afterwards to keep them.
 *
 * @example
 * const { cid, size } = await addFile(store, createReadStream(path), { onProgress: (n) => bar.update(n) })
 * await store.pin?.(cid)
 */
export async function addFile(
  store: BlockStore,
  source: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: AddFileOptions = {},
): Promise<AddedFile> {
  const { signal, onProgress } = options;
  signal?.throwIfAborted();
  let size = 0;
  async function* counted(): AsyncGenerator<Uint8Array> {
    const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = source instanceof Uint8Array ? [source] : source;
    for await (const chunk of chunks) {
      signal?.throwIfAborted();
      size += chunk.byteLength;
      yield chunk;
      onProgress?.(size);
    }
  }
  let root: CID | undefined;
  for await (const entry of importer([{ content: counted() }], adaptStore(store, signal), {
    cidVersion: 1,
    rawLeaves: true,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: FILE_CHUNK_BYTES }),
    layout: balanced({ maxChildrenPerNode: FILE_MAX_LINKS }),
    // One block in flight at a time keeps memory at one chunk per level, whatever the file's size.
    blockWriteConcurrency: 1,
  })) {
    root = entry.cid;
  }
  signal?.throwIfAborted();
  return { cid: root!, size };
}

/**
 * Streams a file's bytes, fetching its blocks from the store (and, for a networked store, from peers) as
 * they are read.
 *
 * @example
 * const chunks = []
 * for await (const chunk of catFile(store, cid, { maxBytes: 1 << 20 })) chunks.push(chunk)
 * @throws NotAFileError (a directory, a dag-cbor record), FileTooLargeError (above maxBytes), FileDagError
 * (a damaged DAG), and the store's errors (BlockNotFoundError when no peer serves a block in time).
 */
export async function* catFile(store: BlockStore, cid: CID, options: ReadFileOptions = {}): AsyncGenerator<Uint8Array> {
  const { file, size } = await openFile(store, cid, options);
  let done = 0;
  const contentOptions: ExportContentOptions = { signal: options.signal, blockReadConcurrency: 4 };
  try {
    for await (const chunk of file.content(contentOptions)) {
      done += chunk.byteLength;
      // The root's declared size is what maxBytes was checked against: a DAG that holds more is lying.
      if (done > size) throw new FileDagError(cid.toString(), `it holds more than the ${size} bytes its root declares`);
      yield chunk;
    }
  } catch (err) {
    throw explain(cid, err, options.signal);
  }
  if (done !== size) throw new FileDagError(cid.toString(), `it holds ${done} bytes, its root declares ${size}`);
}

/**
 * A file's size in bytes, from its root block alone.
 *
 * @example
 * if ((await fileSize(store, cid)) > budget) skip()
 * @throws NotAFileError, FileTooLargeError (when maxBytes is given), the store's errors.
 */
export async function fileSize(store: BlockStore, cid: CID, options: ReadFileOptions = {}): Promise<number> {
  return (await openFile(store, cid, options)).size;
}

/**
 * The whole file in memory; for small files (cards, manifests) — pass maxBytes.
 *
 * @example
 * const card = await readFile(store, cardCid, { maxBytes: 8 << 20 })
 */
export async function readFile(store: BlockStore, cid: CID, options: ReadFileOptions = {}): Promise<Uint8Array> {
  return collect(catFile(store, cid, options));
}

type FileEntry = Extract<UnixFSEntry, { type: "file" | "raw" }>;

async function openFile(store: BlockStore, cid: CID, options: ReadFileOptions): Promise<{ file: FileEntry; size: number }> {
  options.signal?.throwIfAborted();
  let entry: UnixFSEntry;
  try {
    entry = await exporter(cid, adaptStore(store, options.signal), { signal: options.signal });
  } catch (err) {
    throw explain(cid, err, options.signal);
  }
  if (entry.type !== "file" && entry.type !== "raw") {
    throw new NotAFileError(cid.toString(), entry.type === "object" ? "a structured (dag-cbor/json) record" : `a ${entry.type}`);
  }
  const size = Number(entry.type === "file" ? entry.unixfs.fileSize() : entry.size);
  if (options.maxBytes !== undefined && size > options.maxBytes) {
    throw new FileTooLargeError(cid.toString(), size, options.maxBytes);
  }
  return { file: entry, size };
}

// The exporter's own errors name no next step; ours and the store's typed errors pass through unchanged.
function explain(cid: CID, err: unknown, signal: AbortSignal | undefined): unknown {
  if (signal?.aborted === true) return signal.reason;
  if (err instanceof SoulmeshError) return err;
  if (err instanceof Error) {
    if (err.name === "NotUnixFSError" || err.name === "NoResolverError") {
      return new NotAFileError(cid.toString(), `not UnixFS (${err.message})`);
    }
    if (err instanceof ExporterNotFoundError) return new NotAFileError(cid.toString(), "a path that does not exist");
    if (err.name === "OverReadError" || err.name === "UnderReadError" || err.name === "InvalidParametersError") {
      return new FileDagError(cid.toString(), err.message, { cause: err });
    }
  }
  return err;
}

async function collect(source: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  if (source instanceof Uint8Array) return source;
  const chunks: Uint8Array[] = [];
  let length = 0;
  for await (const chunk of source) {
    chunks.push(chunk);
    length += chunk.byteLength;
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/**
 * Parses a CID string as a file CID, or undefined when it is no CID.
 *
 * @example
 * const cid = parseFileCid(persona.manifestCid) ?? fail()
 */
export function parseFileCid(text: string): CID | undefined {
  try {
    return CID.parse(text);
  } catch {
    return undefined;
  }
}
