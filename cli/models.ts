/**
 * A base model named on the command line (a GGUF path, an `hf:` URI or a SHA-256), resolved to the SHA-256
 * that providers register and personas record: the hash is the model's identity on the network.
 *
 * Only the light hashing module is imported up front: node-llama-cpp (needed to find an `hf:` file in the
 * models folder, or to load a tokenizer) loads only when used, so `soulmesh persona list` does not pay its
 * start-up.
 */
import { readdir } from "node:fs/promises";
import { basename, join } from "node:path";
import type { LocalTokenizer } from "../sdk/client/tokenizer.js";
import { FileHashCache } from "../node/engine/file-hash.js";
import { SoulmeshError } from "../sdk/errors.js";

/** The hash cache every CLI command shares (`soulmesh model` uses the same file). */
export const MODEL_HASHES_FILE = "hashes.json";

const HF_PREFIX = /^(hf|huggingface):(\/\/)?/i;
const SHA256 = /^0x[0-9a-fA-F]{64}$/;

/** An `hf:` base model that is not in the models folder: the CLI never downloads gigabytes to hash them. */
export class BaseModelNotDownloadedError extends SoulmeshError {
  override readonly name = "BaseModelNotDownloadedError";
  constructor(
    readonly uri: string,
    readonly modelsDir: string,
    options?: ErrorOptions,
  ) {
    super(
      `${uri} is not downloaded in ${modelsDir}, so its SHA-256 is unknown. Download and hash it with ` +
        `\`soulmesh model inspect ${uri}\` (then run this again), or pass the model's hash as --base-model 0x<64 hex digits>.`,
      options,
    );
  }
}

/** A --base-model value that is neither a file, an `hf:` URI nor a SHA-256. */
export class InvalidBaseModelError extends SoulmeshError {
  override readonly name = "InvalidBaseModelError";
  constructor(
    readonly source: string,
    readonly reason: string,
  ) {
    super(
      `--base-model ${JSON.stringify(source)} is not usable: ${reason}. Give a GGUF file path, an ` +
        "hf:<user>/<repo>/<file>.gguf URI already downloaded, or the model's SHA-256 as 0x followed by 64 hex digits.",
    );
  }
}

/** Options of {@link resolveBaseModel}. */
export interface ResolveBaseModelOptions {
  /** The soulmesh home: `hf:` models live in `<home>/models`, and hashes are cached there. */
  home: string;
  /** Instead of `<home>/models`. */
  modelsDir?: string;
  /** Hashing progress, in bytes (not called for a hash given as is, nor for a cached hash). */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/** A base model as a persona records it. */
export interface BaseModel {
  /** "0x" + 64 lowercase hex digits. */
  sha256: string;
  /** The local file hashed; undefined for a hash given as is. */
  path: string | undefined;
  /** A short name for the manifest: the file's name, or the URI. */
  name: string | undefined;
  /** Where providers can download it: the `hf:` URI, when that is how it was named. */
  uri: string | undefined;
}

/**
 * Resolves a base model to its SHA-256: `0x…` is taken as is, a GGUF path is hashed (cached in
 * `<models>/hashes.json` by size, mtime and inode), an `hf:` URI is hashed only when already downloaded.
 *
 * @example
 * const model = await resolveBaseModel("./models/tiny.gguf", { home, onProgress: (d, t) => bar(d / t) })
 * model.sha256 // "0x3b0c…"
 * @throws BaseModelNotDownloadedError, InvalidBaseModelError, ModelNotFoundError (no file at the path),
 * InvalidModelUriError (a malformed `hf:` URI); the signal's reason when aborted.
 */
export async function resolveBaseModel(source: string, options: ResolveBaseModelOptions): Promise<BaseModel> {
  const { signal } = options;
  signal?.throwIfAborted();
  const text = source.trim();
  if (text === "") throw new InvalidBaseModelError(source, "it is empty");
  if (/^0x/i.test(text)) {
    if (!SHA256.test(text)) throw new InvalidBaseModelError(source, "a hash must be 0x followed by exactly 64 hex digits");
    if (/^0x0{64}$/.test(text)) throw new InvalidBaseModelError(source, "the zero hash names no model");
    return { sha256: text.toLowerCase(), path: undefined, name: undefined, uri: undefined };
  }
  const modelsDir = options.modelsDir ?? join(options.home, "models");
  const { resolveModelFile } = await import("../node/engine/models.js");
  const { ModelNotFoundError } = await import("../node/engine/errors.js");
  const hf = HF_PREFIX.test(text);
  let path: string;
  try {
    path = await resolveModelFile(text, { modelsDir, download: false, ...(signal !== undefined && { signal }) });
  } catch (err) {
    if (hf && err instanceof ModelNotFoundError) throw new BaseModelNotDownloadedError(text, modelsDir, { cause: err });
    throw err;
  }
  const hashes = new FileHashCache({ path: join(modelsDir, MODEL_HASHES_FILE) });
  const sha256 = await hashes.sha256(path, {
    ...(signal !== undefined && { signal }),
    ...(options.onProgress !== undefined && { onProgress: options.onProgress }),
  });
  await hashes.flush();
  return { sha256, path, name: hf ? text : basename(path), uri: hf ? text : undefined };
}

/** Options of {@link findLocalModelFile} and {@link loadModelTokenizer}. */
export interface LocalModelOptions {
  /** The soulmesh home: models live in `<home>/models`, with their hashes in `<home>/models/hashes.json`. */
  home: string;
  /** Instead of `<home>/models`. */
  modelsDir?: string;
  signal?: AbortSignal;
}

/** Folders below the models folder searched for GGUF files (node-llama-cpp keeps `hf:` files one or two down). */
const MODEL_SEARCH_DEPTH = 3;

/**
 * The local GGUF file whose SHA-256 is `sha256`, among those in the models folder already hashed (by `up`,
 * `provider start` or `model inspect`); undefined when there is none. Files never hashed are not hashed here:
 * that would read gigabytes before a chat could start.
 *
 * @example
 * const path = await findLocalModelFile(persona.baseModelHash, { home })
 */
export async function findLocalModelFile(sha256: string, options: LocalModelOptions): Promise<string | undefined> {
  const wanted = sha256.toLowerCase();
  if (!SHA256.test(wanted)) return undefined;
  const modelsDir = options.modelsDir ?? join(options.home, "models");
  const hashes = new FileHashCache({ path: join(modelsDir, MODEL_HASHES_FILE) });
  const search = async (dir: string, depth: number): Promise<string | undefined> => {
    options.signal?.throwIfAborted();
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return undefined;
    }
    for (const e of entries) {
      if (!e.isFile() || !e.name.toLowerCase().endsWith(".gguf")) continue;
      const path = join(dir, e.name);
      if ((await hashes.peek(path)) === wanted) return path;
    }
    if (depth === 0) return undefined;
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const found = await search(join(dir, e.name), depth - 1);
      if (found !== undefined) return found;
    }
    return undefined;
  };
  return await search(modelsDir, MODEL_SEARCH_DEPTH);
}

/**
 * A vocabulary-only tokenizer of the model `sha256` when its file is in the models folder (as with
 * `soulmesh up`, which serves a local GGUF): the client then checks a provider's input tokens exactly and
 * bounds its output tokens by its own count of the streamed text. Undefined when the file is not here (the
 * client then falls back to byte bounds). Loaded with one thread; the caller disposes it.
 *
 * @example
 * const tokenizer = await loadModelTokenizer(persona.baseModelHash, { home, signal })
 * try { await openChat({ ...options, ...(tokenizer && { tokenizer }) }) } finally { await tokenizer?.dispose() }
 */
export async function loadModelTokenizer(sha256: string, options: LocalModelOptions & { threads?: number }): Promise<LocalTokenizer | undefined> {
  const path = await findLocalModelFile(sha256, options);
  if (path === undefined) return undefined;
  const { loadLocalTokenizer } = await import("../sdk/client/tokenizer.js");
  return await loadLocalTokenizer(path, {
    modelSha256: sha256,
    threads: options.threads ?? 1,
    ...(options.signal !== undefined && { signal: options.signal }),
  });
}
