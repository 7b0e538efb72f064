/**
 * A short reachability check of the host an `hf:` model is downloaded from, made before the download.
 *
 * Why: node-llama-cpp's downloader retries a failing download (no DNS, no route, refused) for minutes and does not
 * honour its signal meanwhile, so a provider started without network would hang instead of failing. One HEAD
 * request to the same URL, bounded by a few seconds, tells a host that cannot be reached (typed error at once)
 * from one that answers. `resolveModelFile` runs it before every download; `soulmesh up` runs it to decide
 * whether to fall back to the generated tiny model.
 */
import { SoulmeshError } from "../../sdk/errors.js";

/** How long the reachability check of a model's host may take. */
export const DEFAULT_PROBE_TIMEOUT_MS = 8_000;

/** The model's host could not be reached (no DNS, refused, no answer in time): nothing was downloaded. */
export class ModelHostUnreachableError extends SoulmeshError {
  override readonly name = "ModelHostUnreachableError";
  constructor(
    readonly uri: string,
    readonly host: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot reach ${host} to download ${uri}: ${reason}; pass a local GGUF path (--model PATH), or --offline if it ` +
        "is already in --models-dir. To download it, check the network or set HF_ENDPOINT to a mirror you can reach.",
      options,
    );
  }
}

/** The model's host answered, but not with the file (HTTP 404, 401…); `reason` says why in a few words. */
export class ModelDownloadError extends SoulmeshError {
  override readonly name = "ModelDownloadError";
  constructor(
    readonly uri: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `Could not download ${uri} (${reason}). Check the URI (or set HF_ENDPOINT to a mirror), or pass --model PATH ` +
        "to use a GGUF file you have.",
      options,
    );
  }
}

/** Options of a {@link ModelProbe}. */
export interface ModelProbeOptions {
  /** The most the check may take; default {@link DEFAULT_PROBE_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Where the endpoint comes from (MODEL_ENDPOINT, HF_ENDPOINT, HF_TOKEN); default `process.env`. */
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

/** Checks that an `hf:` model's host answers and has the file, throwing a typed error otherwise. */
export type ModelProbe = (uri: string, options: ModelProbeOptions) => Promise<void>;

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
 * await probeModelHost("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf", { timeoutMs: 8_000 })
 * @throws ModelHostUnreachableError when the host cannot be reached (DNS failure, refused, timeout);
 * ModelDownloadError when it answers with an HTTP error; the signal's reason when aborted.
 */
export async function probeModelHost(uri: string, options: ModelProbeOptions = {}): Promise<void> {
  const env = options.env ?? process.env;
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const url = modelProbeUrl(uri, huggingFaceEndpoint(env));
  const host = new URL(url).host;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout]);
  const headers: Record<string, string> = {};
  const token = env.HF_TOKEN;
  if (token !== undefined && token !== "") headers.authorization = `Bearer ${token}`;
  let status: number;
  try {
    // Not following the redirect to the CDN: the host's answer is enough, and the CDN's would cost a round trip.
    status = (await fetch(url, { method: "HEAD", redirect: "manual", headers, signal })).status;
  } catch (err) {
    options.signal?.throwIfAborted();
    if (timeout.aborted) throw new ModelHostUnreachableError(uri, host, `no answer from ${host} within ${timeoutMs / 1000} s`);
    throw new ModelHostUnreachableError(uri, host, describeNetworkFailure(err), { cause: err });
  }
  if (status === 401 || status === 403) {
    throw new ModelDownloadError(uri, `HTTP ${status}: the repository needs a Hugging Face token (set HF_TOKEN)`);
  }
  if (status === 404) throw new ModelDownloadError(uri, `HTTP 404: no such file at ${url}`);
  if (status >= 400) throw new ModelDownloadError(uri, `HTTP ${status} from ${host}`);
}

/**
 * A network failure in a few words: fetch hides the cause (ENOTFOUND, ECONNREFUSED…) one level down.
 *
 * @example
 * describeNetworkFailure(err) // "ENOTFOUND huggingface.co"
 */
export function describeNetworkFailure(err: unknown): string {
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
