/**
 * A base model named on the command line (a GGUF path, an `hf:` URI or a SHA-256), resolved to the SHA-256
 * that providers register and personas record: the hash is the model's identity on the network.
 *
 * Only the light hashing module is imported up front: node-llama-cpp (needed to find an `hf:` file in the
 * models folder) loads only for an `hf:` source, so `soulmesh persona list` does not pay its start-up.
 */
import { basename, join } from "node:path";
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
