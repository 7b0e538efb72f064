import { mkdir, stat } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import { readGgufFileInfo, resolveModelFile as resolveWithNodeLlamaCpp } from "node-llama-cpp";
import type { GgufFileInfo, Llama, LlamaModel, LlamaModelOptions } from "node-llama-cpp";
import { HashMismatchError, InvalidGgufError, InvalidModelUriError, ModelNotFoundError } from "./errors.js";
import { normalizeSha256 } from "./file-hash.js";
import { DEFAULT_PROBE_TIMEOUT_MS, probeModelHost } from "./model-probe.js";
import type { ModelProbe } from "./model-probe.js";
import type { FileHashCache } from "./file-hash.js";

/** Options of {@link resolveModelFile}. */
export interface ResolveModelOptions {
  /** Where `hf:` models are downloaded to, and found again on the next start. */
  modelsDir: string;
  signal?: AbortSignal;
  /** Download progress in bytes (only called for an `hf:` model that is not in `modelsDir` yet). */
  onProgress?: (done: number, total: number) => void;
  /** Draw node-llama-cpp's progress bar on the terminal while downloading (for the CLI). Default false. */
  showProgressBar?: boolean;
  /** False: never touch the network; an `hf:` model must already be in `modelsDir`. Default true. */
  download?: boolean;
  /**
   * Before a download, check with one short request that the host answers, so that a machine without network
   * fails in seconds instead of after node-llama-cpp's minutes of retries. False skips it (the caller probed
   * already); a function replaces it. Default {@link probeModelHost}.
   */
  probe?: boolean | ModelProbe;
  /** The most the check may take; default {@link DEFAULT_PROBE_TIMEOUT_MS}. */
  probeTimeoutMs?: number;
}

const HF_PREFIXES = ["hf://", "huggingface://", "hf:", "huggingface:"] as const;

/**
 * Whether a model source is a Hugging Face URI (as opposed to a file path).
 *
 * @example
 * isHuggingFaceUri("hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M") // true
 * isHuggingFaceUri("./models/tiny.gguf") // false
 */
export function isHuggingFaceUri(source: string): boolean {
  const lower = source.toLowerCase();
  return HF_PREFIXES.some((prefix) => lower.startsWith(prefix));
}

/**
 * Why a Hugging Face URI is malformed, or undefined when it is well formed. Checked here, without network,
 * so that a typo fails at once with a reason instead of as a failed download.
 *
 * @example
 * hfUriProblem("hf:alice") // "it names no repository: expected hf:<user>/<repo>..."
 */
export function hfUriProblem(uri: string): string | undefined {
  const prefix = HF_PREFIXES.find((p) => uri.toLowerCase().startsWith(p));
  if (prefix === undefined) return "it does not start with hf:";
  const rest = uri.slice(prefix.length);
  const [path = "", ...branch] = rest.split("#");
  if (branch.length > 1 || (branch.length === 1 && branch[0] === "")) return "it has an empty or repeated #branch";
  const parts = path.split("/");
  const [user = "", repoAndTag = ""] = parts;
  const [repo = "", ...tag] = repoAndTag.split(":");
  if (user === "" || repo === "") return "it names no repository: expected hf:<user>/<repo>";
  if (parts.some((p) => p === "" || p === "." || p === "..")) return "it has an empty, '.' or '..' path segment";
  if (!/^[\w.-]+$/.test(user) || !/^[\w.-]+$/.test(repo))
    return "the user or repository name has characters Hugging Face does not allow";
  if (parts.length === 2) {
    if (tag.length > 1 || (tag.length === 1 && tag[0] === "")) return "its :<quant> tag is empty or repeated";
    if (branch.length > 0) return "a #branch is only allowed after a file path";
    return undefined;
  }
  if (tag.length > 0) return "a :<quant> tag and a file path cannot be combined";
  if (!parts.at(-1)!.toLowerCase().includes(".gguf")) return "the file path does not name a .gguf file";
  return undefined;
}

/**
 * The local path of a model: a GGUF file path as is, or an `hf:` URI downloaded into `modelsDir` (through
 * node-llama-cpp, which resumes an interrupted download and finds a finished one again without network). A model
 * already in `modelsDir` is found without network; otherwise the host is probed before the download starts.
 *
 * @example
 * const path = await resolveModelFile("hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", {
 *   modelsDir: join(home, "models"),
 *   onProgress: (done, total) => bar.update(done / total),
 * })
 * @throws ModelNotFoundError when the path is not a file or the download fails; InvalidModelUriError for a
 * malformed `hf:` URI; ModelHostUnreachableError when the host cannot be reached, ModelDownloadError when it
 * answers with an HTTP error (both before anything is downloaded); the signal's reason when aborted.
 */
export async function resolveModelFile(source: string, options: ResolveModelOptions): Promise<string> {
  const { signal } = options;
  signal?.throwIfAborted();
  if (!isHuggingFaceUri(source)) return await resolveLocalModel(source);

  const problem = hfUriProblem(source);
  if (problem !== undefined) throw new InvalidModelUriError(source, problem);
  await mkdir(options.modelsDir, { recursive: true });
  if (options.download !== false) {
    const present = await findDownloadedModel(source, options.modelsDir, signal);
    if (present !== undefined) return present;
    if (options.probe !== false) {
      const probe = typeof options.probe === "function" ? options.probe : probeModelHost;
      await probe(source, { timeoutMs: options.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS, ...(signal && { signal }) });
    }
  }
  const onProgress = options.onProgress;
  try {
    return await resolveWithNodeLlamaCpp(source, {
      directory: options.modelsDir,
      download: options.download === false ? false : "auto",
      cli: options.showProgressBar ?? false,
      // Kept so that the next attempt resumes where this one stopped.
      deleteTempFileOnCancel: false,
      signal,
      onProgress:
        onProgress === undefined ? undefined : ({ downloadedSize, totalSize }) => onProgress(downloadedSize, totalSize),
    });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (err instanceof Error && err.message.startsWith("Invalid Hugging Face URI")) {
      throw new InvalidModelUriError(source, "node-llama-cpp cannot parse it", { cause: err });
    }
    throw new ModelNotFoundError(source, { cause: err });
  }
}

/**
 * The file of an `hf:` model already downloaded into `modelsDir`, or undefined (without network: node-llama-cpp
 * only matches the file names it would download to).
 *
 * @example
 * await findDownloadedModel("hf:alice/tiny-GGUF:Q8_0", modelsDir) // ".../hf_alice_tiny.Q8_0.gguf"
 * @throws InvalidModelUriError when node-llama-cpp cannot parse the URI; the signal's reason when aborted.
 */
async function findDownloadedModel(source: string, modelsDir: string, signal: AbortSignal | undefined): Promise<string | undefined> {
  try {
    return await resolveWithNodeLlamaCpp(source, { directory: modelsDir, download: false, cli: false, signal });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (err instanceof Error && err.message.startsWith("Invalid Hugging Face URI")) {
      throw new InvalidModelUriError(source, "node-llama-cpp cannot parse it", { cause: err });
    }
    return undefined;
  }
}

async function resolveLocalModel(source: string): Promise<string> {
  const path = resolvePath(source);
  let isFile: boolean;
  try {
    isFile = (await stat(path)).isFile();
  } catch (err) {
    throw new ModelNotFoundError(source, { cause: err });
  }
  if (!isFile) throw new ModelNotFoundError(source, { cause: new Error(`${path} is not a regular file`) });
  return path;
}

/** What the adapter check needs to know of a base model, read from its GGUF header. */
export interface BaseModelInfo {
  /** `general.architecture`, e.g. "llama". */
  readonly architecture: string;
  /** Every tensor's dimensions in ggml `ne` order (a weight of a linear layer is [n_in, n_out]). */
  readonly tensorShapes: ReadonlyMap<string, readonly number[]>;
}

/** A base model loaded for inference, known by the SHA-256 of its file. */
export interface LoadedModel extends BaseModelInfo {
  readonly model: LlamaModel;
  readonly path: string;
  /** "0x" + 64 lowercase hex digits, as registered on chain. */
  readonly sha256: string;
  dispose(): Promise<void>;
}

// Large arrays the checks never read: skipping them keeps a 150k-token vocabulary out of memory.
const IGNORED_KEYS = [
  "tokenizer.ggml.tokens",
  "tokenizer.ggml.scores",
  "tokenizer.ggml.token_type",
  "tokenizer.ggml.merges",
];

/**
 * Reads a GGUF file's header (metadata and tensor table, not the weights).
 *
 * @example
 * const info = await readGgufHeader("adapter.gguf")
 * @throws InvalidGgufError when the file is not a GGUF file node-llama-cpp can parse.
 */
export async function readGgufHeader(
  path: string,
  options: { signal?: AbortSignal; spliceSplitFiles?: boolean } = {},
): Promise<GgufFileInfo> {
  try {
    return await readGgufFileInfo(path, {
      sourceType: "filesystem",
      logWarnings: false,
      ignoreKeys: IGNORED_KEYS,
      spliceSplitFiles: options.spliceSplitFiles ?? true,
      signal: options.signal,
    });
  } catch (err) {
    if (options.signal?.aborted) throw options.signal.reason;
    throw new InvalidGgufError(path, err instanceof Error ? err.message : String(err), { cause: err });
  }
}

/**
 * A metadata value by its dotted GGUF key (node-llama-cpp nests "general.type" as `metadata.general.type`).
 *
 * @example
 * ggufMetadataValue(info, "adapter.type") // "lora"
 */
export function ggufMetadataValue(info: GgufFileInfo, key: string): unknown {
  let value: unknown = info.metadata;
  for (const part of key.split(".")) {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

/**
 * Every tensor's dimensions, by name, in ggml `ne` order (as stored in the file).
 *
 * @example
 * tensorShapes(info).get("blk.0.attn_q.weight") // [64, 64]
 */
export function tensorShapes(info: GgufFileInfo): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  for (const tensor of info.fullTensorInfo ?? info.tensorInfo ?? []) {
    shapes.set(
      tensor.name,
      tensor.dimensions.map((d) => Number(d)),
    );
  }
  return shapes;
}

/**
 * The architecture and tensor shapes of a base model file, for checking adapters against it.
 *
 * @example
 * const base = await readBaseModelInfo("models/tiny.gguf")
 * base.architecture // "llama"
 * @throws InvalidGgufError when it is not a GGUF model (an adapter included).
 */
export async function readBaseModelInfo(path: string, options: { signal?: AbortSignal } = {}): Promise<BaseModelInfo> {
  const info = await readGgufHeader(path, options);
  const architecture = ggufMetadataValue(info, "general.architecture");
  if (typeof architecture !== "string" || architecture === "") {
    throw new InvalidGgufError(path, "it has no general.architecture");
  }
  if (ggufMetadataValue(info, "general.type") === "adapter") {
    throw new InvalidGgufError(path, "it is an adapter, not a model; give the base model it was made for");
  }
  return { architecture, tensorShapes: tensorShapes(info) };
}

/** Progress of {@link loadBaseModel}: bytes for "download" and "hash", a fraction of 1 for "load". */
export interface ModelLoadProgress {
  phase: "download" | "hash" | "load";
  done: number;
  total: number;
}

/** Options of {@link loadBaseModel}. */
export interface LoadBaseModelOptions {
  /** A GGUF file path or an `hf:` URI. */
  source: string;
  modelsDir: string;
  hashCache: FileHashCache;
  /** The hash registered for the model: a file with another is refused before it is loaded. */
  expectedSha256?: string;
  gpuLayers?: LlamaModelOptions["gpuLayers"];
  signal?: AbortSignal;
  onProgress?: (progress: ModelLoadProgress) => void;
  showProgressBar?: boolean;
  download?: boolean;
}

/**
 * Finds (or downloads), hashes, checks and loads a base model. The file is hashed before llama.cpp sees a byte
 * of it, once per file version (the hash is cached).
 *
 * @example
 * const base = await loadBaseModel(llama, { source: "models/tiny.gguf", modelsDir, hashCache, gpuLayers: 0 })
 * base.sha256 // "0x…", what the provider registers on chain
 * await base.dispose()
 * @throws ModelNotFoundError, InvalidModelUriError, ModelHostUnreachableError, ModelDownloadError, HashMismatchError,
 * InvalidGgufError (see each), InvalidHashError for a malformed `expectedSha256`; the signal's reason when aborted.
 */
export async function loadBaseModel(llama: Llama, options: LoadBaseModelOptions): Promise<LoadedModel> {
  const { source, signal, onProgress } = options;
  const expected = options.expectedSha256 === undefined ? undefined : normalizeSha256(options.expectedSha256, "model");
  const path = await resolveModelFile(source, {
    modelsDir: options.modelsDir,
    signal,
    showProgressBar: options.showProgressBar,
    download: options.download,
    onProgress: onProgress === undefined ? undefined : (done, total) => onProgress({ phase: "download", done, total }),
  });

  const hashedVersion = await stat(path);
  const sha256 = await options.hashCache.sha256(path, {
    signal,
    onProgress: onProgress === undefined ? undefined : (done, total) => onProgress({ phase: "hash", done, total }),
  });
  if (expected !== undefined && sha256 !== expected) throw new HashMismatchError("model", source, expected, sha256);

  const info = await readBaseModelInfo(path, { signal });
  let model: LlamaModel;
  try {
    model = await llama.loadModel({
      modelPath: path,
      gpuLayers: options.gpuLayers,
      loadSignal: signal,
      onLoadProgress:
        onProgress === undefined ? undefined : (fraction) => onProgress({ phase: "load", done: fraction, total: 1 }),
    });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw new InvalidGgufError(path, `llama.cpp cannot load it (${err instanceof Error ? err.message : String(err)})`, {
      cause: err,
    });
  }

  // The hash stands for the bytes llama.cpp read only if the file did not change between hashing and loading.
  const loadedVersion = await stat(path);
  if (
    loadedVersion.size !== hashedVersion.size ||
    loadedVersion.mtimeMs !== hashedVersion.mtimeMs ||
    loadedVersion.ino !== hashedVersion.ino
  ) {
    await model.dispose();
    throw new InvalidGgufError(path, "the file changed while it was being hashed and loaded; load it again");
  }

  return {
    model,
    path,
    sha256,
    architecture: info.architecture,
    tensorShapes: info.tensorShapes,
    dispose: () => model.dispose(),
  };
}
