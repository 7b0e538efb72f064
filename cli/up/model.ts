/**
 * The model `soulmesh up` serves: a real small chat model by `hf:` URI (downloaded once into `<home>/models`),
 * a GGUF path, or, when the model cannot be downloaded, a generated tiny model whose replies are noise, so that
 * a machine without network still gets a working local network.
 *
 * node-llama-cpp's downloader retries a failing download (no DNS, no route) for minutes and does not honour its
 * signal meanwhile, so reachability is checked first with one short HTTP request to the same endpoint (the probe
 * in node/engine/model-probe.ts, which `provider start` runs too).
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { InvalidModelUriError, ModelNotFoundError } from "../../node/engine/errors.js";
import {
  DEFAULT_PROBE_TIMEOUT_MS,
  describeNetworkFailure,
  ModelDownloadError,
  ModelHostUnreachableError,
  probeModelHost,
} from "../../node/engine/model-probe.js";
import type { ModelProbe } from "../../node/engine/model-probe.js";
import { hfUriProblem, isHuggingFaceUri, resolveModelFile } from "../../node/engine/models.js";
import type { ResolveModelOptions } from "../../node/engine/models.js";
import { TINY, writeTinyLlama } from "../../node/engine/tiny-llama.js";
import { abortable } from "../../sdk/time.js";

/** The default model: Qwen2.5 0.5B Instruct, Q4_K_M (about 400 MB), a small real chat model. */
export const DEFAULT_MODEL_URI = "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf";

/** The generated fallback model's file name in the models folder. */
export const TINY_MODEL_FILE = "tiny-llama.gguf";

/** The model `up` serves. */
export interface UpModel {
  /** The local GGUF file. */
  path: string;
  /** What was asked for (the default URI, a path or an `hf:` URI). */
  source: string;
  /** The `hf:` URI the file came from, for the persona's manifest (providers download it from there). */
  uri: string | undefined;
  /** True for the generated tiny model. */
  tiny: boolean;
  /** Why the asked model was replaced by the tiny one, and the line saying so. */
  fallback: { reason: string; message: string } | undefined;
}

/** Downloads an `hf:` model, resolving with its local path. */
export type ModelDownloader = (uri: string, options: ResolveModelOptions) => Promise<string>;

/** Options of {@link resolveUpModel}. */
export interface ResolveUpModelOptions {
  /** A GGUF path or an `hf:` URI; default {@link DEFAULT_MODEL_URI}. */
  source?: string;
  modelsDir: string;
  /** Never touch the network: an `hf:` model already downloaded is used, otherwise the tiny one. */
  offline?: boolean;
  /** Draw node-llama-cpp's progress bar (a TTY); otherwise only `onProgress` is called. */
  showProgressBar?: boolean;
  /** Download progress in bytes. */
  onProgress?: (done: number, total: number) => void;
  /** Told when the model is replaced by the tiny one (before it is written). */
  onFallback?: (fallback: { reason: string; message: string }) => void;
  probeTimeoutMs?: number;
  /** Replace the reachability check (tests). */
  probe?: ModelProbe;
  /** Replace the download (tests). */
  download?: ModelDownloader;
  signal?: AbortSignal;
}

/**
 * The model `up` serves, downloaded if needed: a path is used as is (and must exist); an `hf:` URI is taken from
 * the models folder, else downloaded after a short reachability check; when that check or the download fails (or
 * `offline` is set and the file is not there), a generated tiny model is written to `<modelsDir>/tiny-llama.gguf`
 * and `onFallback` says so.
 *
 * @example
 * const model = await resolveUpModel({ modelsDir: join(home, "models"), onFallback: (f) => console.error(f.message) })
 * model.tiny // true when nothing could be downloaded
 * @throws ModelNotFoundError for a path that is not a file; InvalidModelUriError for a malformed `hf:` URI (a
 * typo is not a network failure); the signal's reason when aborted.
 */
export async function resolveUpModel(options: ResolveUpModelOptions): Promise<UpModel> {
  const { modelsDir, signal } = options;
  const source = options.source ?? DEFAULT_MODEL_URI;
  signal?.throwIfAborted();
  if (!isHuggingFaceUri(source)) {
    return { path: await resolveModelFile(source, { modelsDir }), source, uri: undefined, tiny: false, fallback: undefined };
  }
  const problem = hfUriProblem(source);
  if (problem !== undefined) throw new InvalidModelUriError(source, problem);

  const present = await resolveModelFile(source, { modelsDir, download: false, ...(signal && { signal }) }).catch((err: unknown) => {
    if (err instanceof ModelNotFoundError) return undefined;
    throw err;
  });
  if (present !== undefined) return { path: present, source, uri: source, tiny: false, fallback: undefined };

  let reason: string;
  if (options.offline === true) {
    reason = "--offline";
  } else {
    try {
      const probe = options.probe ?? probeModelHost;
      await probe(source, { timeoutMs: options.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS, ...(signal && { signal }) });
      const download = options.download ?? resolveModelFile;
      // The download may go on after an abort (node-llama-cpp does not stop its retries): its outcome is dropped.
      const path = await abortable(
        download(source, {
          modelsDir,
          download: true,
          // Probed just above.
          probe: false,
          showProgressBar: options.showProgressBar ?? false,
          ...(options.onProgress && { onProgress: options.onProgress }),
          ...(signal && { signal }),
        }),
        signal,
      );
      return { path, source, uri: source, tiny: false, fallback: undefined };
    } catch (err) {
      signal?.throwIfAborted();
      reason =
        err instanceof ModelDownloadError || err instanceof ModelHostUnreachableError ? err.reason : describeNetworkFailure(err);
    }
  }
  const fallback = { reason, message: fallbackMessage(source, reason) };
  options.onFallback?.(fallback);
  const path = await writeTinyModel(modelsDir);
  return { path, source, uri: undefined, tiny: true, fallback };
}

/**
 * The line `up` prints when it falls back to the tiny model.
 *
 * @example
 * fallbackMessage("hf:a/b/c.gguf", "getaddrinfo ENOTFOUND huggingface.co")
 */
export function fallbackMessage(uri: string, reason: string): string {
  return (
    `Could not download ${uri} (${reason}): using a generated tiny model instead; its replies are noise. ` +
    "Pass --model PATH to use a real GGUF."
  );
}

/**
 * Writes the generated tiny model (deterministic: the same bytes, so the same SHA-256, every time) into
 * `modelsDir`, returning its path.
 *
 * @example
 * const path = await writeTinyModel(join(home, "models")) // …/models/tiny-llama.gguf
 */
export async function writeTinyModel(modelsDir: string): Promise<string> {
  await mkdir(modelsDir, { recursive: true });
  const path = join(modelsDir, TINY_MODEL_FILE);
  await writeTinyLlama(path, TINY);
  return path;
}

