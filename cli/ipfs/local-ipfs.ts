/**
 * One IPFS repository per soulmesh home, shared by every soulmesh process. A Helia repository (LevelDB) can
 * be opened by one process only, so the process that runs the node (`soulmesh up`, `devnet`) serves it as a
 * Kubo-compatible RPC API on loopback and records where in `<home>/ipfs/api.json`; every other command
 * (persona create, chat, memory, provider start) reaches the same blocks through that API, or opens the
 * repository itself when no service runs.
 */
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { isProcessAlive } from "../../node/process.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { createHeliaBlockStore, createKuboBlockStore } from "../../sdk/vault/block-store.js";
import type { HeliaBlockStore, KuboBlockStore } from "../../sdk/vault/block-store.js";
import { BlockStoreLockedError, KuboUnreachableError } from "../../sdk/vault/block-store-errors.js";
import { serveIpfsRpc } from "./rpc-server.js";

/** The repository folder under a soulmesh home. */
export const IPFS_DIR = "ipfs";
/** The service record in the repository folder. */
export const API_FILE = "api.json";

/** How long a recorded service gets to answer `version` before it is taken for gone. */
const PROBE_TIMEOUT_MS = 5_000;

/** What `<home>/ipfs/api.json` holds while a service runs. */
export interface IpfsApiFile {
  /** The RPC API's base URL, e.g. `http://127.0.0.1:45123`. */
  url: string;
  /** The process that serves it. */
  pid: number;
  /** The Helia node's peer id and addresses, for peers to dial. */
  peerId: string;
  multiaddrs: string[];
}

/** Another live process already runs the IPFS service of this home. */
export class IpfsServiceRunningError extends SoulmeshError {
  override readonly name = "IpfsServiceRunningError";
  constructor(
    readonly home: string,
    readonly pid: number,
    readonly url: string,
  ) {
    super(
      `The IPFS node of ${home} is already run by process ${pid}, serving its API at ${url}. Use that ` +
        `(other soulmesh commands find it on their own, or pass --ipfs-api ${url}), stop that process, ` +
        `or pass another --home.`,
    );
  }
}

/**
 * `<home>/ipfs/api.json` when it names a live process, else undefined (absent, unreadable, or left by a
 * process that died).
 *
 * @example
 * const service = await readIpfsApiFile(home)
 * if (service) console.log(`IPFS API at ${service.url} (pid ${service.pid})`)
 */
export async function readIpfsApiFile(home: string): Promise<IpfsApiFile | undefined> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(apiFilePath(home), "utf8"));
  } catch {
    return undefined;
  }
  if (!isApiFile(value) || !isProcessAlive(value.pid)) return undefined;
  return value;
}

/** The path of the service record of `home`. */
export function apiFilePath(home: string): string {
  return join(home, IPFS_DIR, API_FILE);
}

function isApiFile(value: unknown): value is IpfsApiFile {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.url === "string" &&
    Number.isSafeInteger(v.pid) &&
    (v.pid as number) > 0 &&
    typeof v.peerId === "string" &&
    Array.isArray(v.multiaddrs) &&
    v.multiaddrs.every((m) => typeof m === "string")
  );
}

// ---------------------------------------------------------------------------------------------------------
// For commands

/** Options of {@link openLocalIpfs}. */
export interface OpenLocalIpfsOptions {
  /** The soulmesh home (`--home` / SOULMESH_HOME). */
  home: string;
  /** A Kubo RPC API to use instead (`--ipfs-api` / SOULMESH_IPFS_API). */
  api?: string;
  signal?: AbortSignal;
}

/** The started block store a command uses; close() when done. */
export type LocalIpfs =
  | { kind: "kubo"; store: KuboBlockStore; description: string; close(): Promise<void> }
  | { kind: "helia"; store: HeliaBlockStore; description: string; close(): Promise<void> };

/**
 * The block store of `home` for a command, started: the Kubo API named by `api`; else the service that
 * `soulmesh up` runs for this home (found through `<home>/ipfs/api.json`); else the home's embedded Helia
 * node opened in this process (and not served: it is this command's alone until it closes).
 *
 * @example
 * const ipfs = await openLocalIpfs({ home, api: opts.ipfsApi ?? process.env.SOULMESH_IPFS_API })
 * try { await vault.commit(ipfs.store) } finally { await ipfs.close() }
 * @throws KuboUnreachableError when `api` does not answer; BlockStoreLockedError when another process
 * holds the repository without serving it.
 */
export async function openLocalIpfs(options: OpenLocalIpfsOptions): Promise<LocalIpfs> {
  const { home, api, signal } = options;
  if (api !== undefined) {
    const store = createKuboBlockStore({ url: api });
    await store.start({ signal });
    return { kind: "kubo", store, description: `the IPFS RPC API at ${api}`, close: () => store.stop() };
  }
  const served = await connectToService(home, signal);
  if (served !== undefined) return served;
  const dir = join(home, IPFS_DIR);
  const store = createHeliaBlockStore({ dir });
  try {
    await store.start({ signal });
  } catch (err) {
    // A service may have started between our look at api.json and the open: use it after all.
    if (!(err instanceof BlockStoreLockedError)) throw err;
    const late = await connectToService(home, signal);
    if (late === undefined) throw err;
    return late;
  }
  return { kind: "helia", store, description: `the embedded IPFS node in ${dir}`, close: () => store.stop() };
}

async function connectToService(home: string, signal: AbortSignal | undefined): Promise<LocalIpfs | undefined> {
  const service = await readIpfsApiFile(home);
  if (service === undefined) return undefined;
  const store = createKuboBlockStore({ url: service.url });
  const probe = AbortSignal.timeout(PROBE_TIMEOUT_MS);
  try {
    await store.start({ signal: signal === undefined ? probe : AbortSignal.any([signal, probe]) });
  } catch (err) {
    signal?.throwIfAborted();
    // The pid lives but nothing answers there: a reused pid, or a service that hangs. Opening the
    // repository settles which (its lock is held only by a live service).
    if (err instanceof KuboUnreachableError || probe.aborted) return undefined;
    throw err;
  }
  return {
    kind: "kubo",
    store,
    description: `the IPFS node served by process ${service.pid} at ${service.url}`,
    close: () => store.stop(),
  };
}

// ---------------------------------------------------------------------------------------------------------
// For `soulmesh up` / `devnet`

/** Options of {@link startLocalIpfsService}. */
export interface LocalIpfsServiceOptions {
  /** The soulmesh home; the repository is `<home>/ipfs`. */
  home: string;
  /** RPC API port on 127.0.0.1 (default 0: any free port; the URL is in api.json). */
  port?: number;
  /** libp2p listen addresses of the Helia node (default one loopback TCP port). */
  listen?: string[];
  /** Peers to dial at start (multiaddrs with /p2p/<peer id>). */
  peers?: string[];
  signal?: AbortSignal;
  onProgress?: (message: string) => void;
}

/** A running IPFS service: the Helia node, its RPC API, and api.json. */
export interface LocalIpfsService {
  store: HeliaBlockStore;
  api: { url: string; port: number };
  /** Stops serving, removes api.json (if still ours) and stops the node. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Runs the IPFS node of `home` for every soulmesh process: starts Helia on `<home>/ipfs`, serves its RPC API
 * on loopback and writes `<home>/ipfs/api.json` (replacing one a dead process left).
 *
 * @example
 * const ipfs = await startLocalIpfsService({ home, onProgress: (m) => console.error(m) })
 * // other processes: await openLocalIpfs({ home }) → kind "kubo"
 * await ipfs.stop()
 * @throws IpfsServiceRunningError when a live process already runs it; IpfsApiPortInUseError when `port`
 * is taken.
 */
export async function startLocalIpfsService(options: LocalIpfsServiceOptions): Promise<LocalIpfsService> {
  const { home, signal, onProgress } = options;
  await refuseIfServed(home, signal);
  const dir = join(home, IPFS_DIR);
  onProgress?.(`Starting the IPFS node in ${dir}`);
  const store = createHeliaBlockStore({ dir, listen: options.listen, peers: options.peers });
  store.addEventListener("peer:unreachable", (event) => onProgress?.(event.detail.error.message));
  try {
    await store.start({ signal });
  } catch (err) {
    if (err instanceof BlockStoreLockedError) await refuseIfServed(home, signal);
    throw err;
  }
  let api: Awaited<ReturnType<typeof serveIpfsRpc>> | undefined;
  const record: IpfsApiFile = {
    url: "",
    pid: process.pid,
    peerId: store.peerId.toString(),
    multiaddrs: store.multiaddrs(),
  };
  try {
    api = await serveIpfsRpc({ store, port: options.port, signal });
    record.url = api.url;
    await writeJsonAtomic(apiFilePath(home), record);
  } catch (err) {
    await api?.close().catch(() => {});
    await store.stop().catch(() => {});
    throw err;
  }
  onProgress?.(`IPFS RPC API at ${api.url} (peer ${record.peerId})`);

  const server = api;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await removeIfOurs(home, record);
      await server.close().catch(() => {});
      await store.stop();
    })();
    return stopping;
  };
  return { store, api: { url: server.url, port: server.port }, stop };
}

async function refuseIfServed(home: string, signal: AbortSignal | undefined): Promise<void> {
  const service = await readIpfsApiFile(home);
  if (service === undefined) return;
  const probe = createKuboBlockStore({ url: service.url });
  const timeout = AbortSignal.timeout(PROBE_TIMEOUT_MS);
  try {
    await probe.start({ signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]) });
  } catch {
    signal?.throwIfAborted();
    // Recorded but not answering: a reused pid. The repository lock stops us if it is really in use.
    return;
  }
  await probe.stop();
  throw new IpfsServiceRunningError(home, service.pid, service.url);
}

// Only the record this service wrote: a later service of the same home may have replaced a stale one.
async function removeIfOurs(home: string, record: IpfsApiFile): Promise<void> {
  const path = apiFilePath(home);
  let current: unknown;
  try {
    current = JSON.parse(await readFile(path, "utf8"));
  } catch {
    return;
  }
  if (isApiFile(current) && current.pid === record.pid && current.url === record.url) await rm(path, { force: true });
}

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}
