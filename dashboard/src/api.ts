import type { DashboardConfig, PersonaAnswer, PrepareAnswer, PrepareRequest, UploadedAdapter } from "./api-types.js";
import { DashboardApiError, DashboardUnreachableError } from "./errors.js";

async function errorOf(res: Response, path: string): Promise<DashboardApiError> {
  try {
    const body = (await res.json()) as { error?: { name?: unknown; message?: unknown } };
    const { name, message } = body.error ?? {};
    if (typeof name === "string" && typeof message === "string") return new DashboardApiError(name, message, res.status);
  } catch {
    // Not JSON: describe it by the status below.
  }
  return new DashboardApiError("HttpError", `The dashboard server answered ${res.status} ${res.statusText} to ${path}.`, res.status);
}

/**
 * A JSON request to the dashboard server, its error bodies thrown as {@link DashboardApiError}.
 *
 * @example
 * const config = await requestJson<DashboardConfig>("api/config", { signal })
 */
export async function requestJson<T>(path: string, init: RequestInit & { signal?: AbortSignal } = {}): Promise<T> {
  let res: Response;
  try {
    res = await fetch(new URL(path, location.origin), init);
  } catch (err) {
    init.signal?.throwIfAborted();
    throw new DashboardUnreachableError(path, err);
  }
  if (!res.ok) throw await errorOf(res, path);
  return (await res.json()) as T;
}

/**
 * The server's configuration: chain, deployment, dev accounts, whether publishing works.
 *
 * @example
 * const { deployment, devAccounts } = await loadConfig(AbortSignal.timeout(10_000))
 */
export function loadConfig(signal?: AbortSignal): Promise<DashboardConfig> {
  return requestJson<DashboardConfig>("/api/config", { signal });
}

/**
 * A persona's card name and manifest, read by the server from IPFS.
 *
 * @example
 * const { name } = await loadPersonaInfo(3n)
 */
export function loadPersonaInfo(personaId: bigint, signal?: AbortSignal): Promise<PersonaAnswer> {
  return requestJson<PersonaAnswer>(`/api/personas/${personaId}`, { signal });
}

/**
 * Stores the card and adapter reference on the server's IPFS and returns what `createPersona` needs.
 *
 * @example
 * const prepared = await preparePersona({ card: base64, baseModelHash: "0x…" }, signal)
 */
export function preparePersona(body: PrepareRequest, signal?: AbortSignal): Promise<PrepareAnswer> {
  return requestJson<PrepareAnswer>("/api/personas/prepare", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

/**
 * Uploads a LoRA adapter file, reporting progress (XMLHttpRequest: fetch has no upload progress).
 *
 * @example
 * const { cid, sha256 } = await uploadAdapter(file, (sent, total) => show(sent / total), signal)
 */
export function uploadAdapter(
  file: Blob,
  onProgress: (sent: number, total: number) => void,
  signal?: AbortSignal,
): Promise<UploadedAdapter> {
  const path = "/api/adapters";
  return new Promise<UploadedAdapter>((resolve, reject) => {
    signal?.throwIfAborted();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", new URL(path, location.origin));
    xhr.setRequestHeader("content-type", "application/octet-stream");
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new DashboardUnreachableError(path));
    xhr.onabort = () => reject(signal?.reason ?? new DashboardUnreachableError(path));
    xhr.onload = () => {
      const res = new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText });
      if (xhr.status >= 200 && xhr.status < 300) {
        res.json().then((v) => resolve(v as UploadedAdapter), reject);
      } else {
        errorOf(res, path).then(reject, reject);
      }
    };
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(file);
  });
}

/**
 * Bytes as base64, in chunks so that large PNG cards do not overflow the call stack.
 *
 * @example
 * toBase64(new Uint8Array([104, 105])) // "aGk="
 */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
