/**
 * The model `soulmesh up` serves: a real small chat model by `hf:` URI (downloaded once into `<home>/models`),
 * a GGUF path, or, when the model cannot be downloaded, a generated tiny model whose replies are noise, so that
 * a machine without network still gets a working local network.
 *
 * node-llama-cpp's downloader retries a failing download (no DNS, no route) for minutes and does not honour its
 * signal meanwhile, so reachability is checked first with one short HTTP request to the same endpoint.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { InvalidModelUriError, ModelNotFoundError } from "../../node/engine/errors.js";
import { hfUriProblem, isHuggingFaceUri, resolveModelFile } from "../../node/engine/models.js";
import type { ResolveModelOptions } from "../../node/engine/models.js";
import { SoulmeshError } from "../../sdk/errors.js";
// The tiny model writer lives with the test fixtures (~500 lines of GGUF writing); `up` needs it only as the
// offline fallback. Importing a test fixture from the CLI is a stopgap until it moves into node/engine.
import { TINY, writeTinyLlama } from "../../test/fixtures/gguf/llama.js";

/** The default model: Qwen2.5 0.5B Instruct, Q4_K_M (about 400 MB), a small real chat model. */
export const DEFAULT_MODEL_URI = "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf";

/** The generated fallback model's file name in the models folder. */
export const TINY_MODEL_FILE = "tiny-llama.gguf";

/** How long the reachability check of the model's host may take. */
export const DEFAULT_PROBE_TIMEOUT_MS = 8_000;

/** The model could not be downloaded; `reason` says why in a few words. */
export class ModelDownloadError extends SoulmeshError {
  override readonly name = "ModelDownloadError";
  constructor(
    readonly uri: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `Could not download ${uri} (${reason}). Check the network (or set HF_ENDPOINT to a mirror), or pass --model PATH ` +
        "to use a GGUF file you have.",
      options,
    );
  }
}

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

/** Checks that the model's host answers, throwing ModelDownloadError otherwise. */
export type ModelProbe = (uri: string, options: { timeoutMs: number; signal?: AbortSignal }) => Promise<void>;
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
      const path = await untilAborted(
        download(source, {
          modelsDir,
          download: true,
          showProgressBar: options.showProgressBar ?? false,
          ...(options.onProgress && { onProgress: options.onProgress }),
          ...(signal && { signal }),
        }),
        signal,
      );
      return { path, source, uri: source, tiny: false, fallback: undefined };
    } catch (err) {
      signal?.throwIfAborted();
      reason = err instanceof ModelDownloadError ? err.reason : describeFailure(err);
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

/**
 * The Hugging Face endpoint node-llama-cpp downloads from: MODEL_ENDPOINT, else HF_ENDPOINT, else huggingface.co
 * (the order of its resolveHuggingFaceEndpoint, which the package does not export).
 *
 * @example
 * huggingFaceEndpoint({ HF_ENDPOINT: "https://hf-mirror.com" }) // "https://hf-mirror.com/"
 */
export function huggingFaceEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  for (const value of [env.MODEL_ENDPOINT, env.HF_ENDPOINT]) {
    if (value === undefined || value === "") continue;
    try {
      const url = new URL(value);
      if (url.protocol === "http:" || url.protocol === "https:") return value.endsWith("/") ? value : `${value}/`;
    } catch {
      // Not a URL: node-llama-cpp skips it too.
    }
  }
  return "https://huggingface.co/";
}

/**
 * The URL whose answer tells whether an `hf:` model can be downloaded: the file itself for
 * `hf:<user>/<repo>/<file>.gguf[#branch]`, else the repository's API page.
 *
 * @example
 * modelProbeUrl("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf")
 * // "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf"
 */
export function modelProbeUrl(uri: string, endpoint: string = huggingFaceEndpoint()): string {
  const rest = uri.replace(/^(hf|huggingface):(\/\/)?/i, "");
  const [path = "", branch = "main"] = rest.split("#");
  const [user = "", repoAndTag = "", ...file] = path.split("/");
  const repo = repoAndTag.split(":")[0]!;
  const enc = (s: string): string => encodeURIComponent(s);
  if (file.length === 0) return `${endpoint}api/models/${enc(user)}/${enc(repo)}`;
  return `${endpoint}${enc(user)}/${enc(repo)}/resolve/${enc(branch)}/${file.map(enc).join("/")}`;
}

/**
 * Checks, with one HEAD request bounded by `timeoutMs`, that the model's host answers and has the file.
 *
 * @example
 * await probeModelHost(DEFAULT_MODEL_URI, { timeoutMs: 8_000 })
 * @throws ModelDownloadError saying why (DNS failure, refused, timeout, HTTP status).
 */
export async function probeModelHost(uri: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<void> {
  const url = modelProbeUrl(uri);
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout]);
  const headers: Record<string, string> = {};
  const token = process.env.HF_TOKEN;
  if (token !== undefined && token !== "") headers.authorization = `Bearer ${token}`;
  let status: number;
  try {
    // Not following the redirect to the CDN: the host's answer is enough, and the CDN's would cost a round trip.
    status = (await fetch(url, { method: "HEAD", redirect: "manual", headers, signal })).status;
  } catch (err) {
    options.signal?.throwIfAborted();
    if (timeout.aborted) throw new ModelDownloadError(uri, `no answer from ${new URL(url).host} within ${options.timeoutMs / 1000} s`);
    throw new ModelDownloadError(uri, describeFailure(err), { cause: err });
  }
  if (status === 401 || status === 403) {
    throw new ModelDownloadError(uri, `HTTP ${status}: the repository needs a Hugging Face token (set HF_TOKEN)`);
  }
  if (status === 404) throw new ModelDownloadError(uri, `HTTP 404: no such file at ${url}`);
  if (status >= 400) throw new ModelDownloadError(uri, `HTTP ${status} from ${new URL(url).host}`);
}

/** A network failure in a few words: fetch hides the cause (ENOTFOUND, ECONNREFUSED…) one level down. */
function describeFailure(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e instanceof Error; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string") {
      const host = (e as { hostname?: string }).hostname;
      return host !== undefined ? `${code} ${host}` : e.message.includes(code) ? e.message : `${code}: ${e.message}`;
    }
    if (e.cause === undefined) break;
    e = e.cause;
  }
  return e instanceof Error ? e.message : String(e);
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  // The download may go on after an abort (node-llama-cpp does not stop its retries): its outcome is dropped.
  promise.catch(() => {});
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => (signal.removeEventListener("abort", onAbort), resolve(v)),
      (err: unknown) => (signal.removeEventListener("abort", onAbort), reject(err as Error)),
    );
  });
}
