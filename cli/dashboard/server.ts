/**
 * The creator dashboard's HTTP server (`soulmesh dashboard`): serves the built page, proxies JSON-RPC to the
 * chain under the page's own origin, and does the IPFS side of publishing, which a browser cannot (the local
 * IPFS API refuses browser origins, and a LoRA of gigabytes is better streamed by this process).
 *
 * It signs nothing: every transaction is signed on the page's side, by the browser wallet or, on the devnet,
 * by the EDR node itself, which signs `eth_sendTransaction` for its configured dev accounts.
 *
 * Bound to loopback, it still faces every page the browser opens: requests for another Host are refused
 * (DNS rebinding), and so are POSTs from another Origin (cross-site request forgery).
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, resolve, sep } from "node:path";
import { JsonRpcProvider } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { DEVNET_CHAIN_ID, devAccounts } from "../../sdk/chain/dev-accounts.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { SoulmeshError } from "../../sdk/errors.js";
import * as cardErrors from "../../sdk/memory/persona/errors.js";
import {
  AdapterSizeMismatchError,
  InvalidPersonaParameterError,
  NotALoraAdapterError,
  preparePersona,
  readPersona,
  storePersonaAdapter,
} from "../../sdk/memory/persona/publish.js";
import type { StoredAdapter } from "../../sdk/memory/persona/publish.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { PortInUseError } from "../devnet/rpc-server.js";
import { chainBaseModels, mergeBaseModels } from "./base-models.js";
import type { BaseModelSuggestion, DashboardConfig, PersonaAnswer, PrepareAnswer } from "../../dashboard/src/api-types.js";
import {
  ChainUnreachableError,
  DashboardNotBuiltError,
  ForbiddenHostError,
  ForbiddenOriginError,
  InvalidRequestError,
  IpfsUnavailableError,
  LengthRequiredError,
  MethodNotAllowedError,
  PersonaNotFoundError,
  RequestTooLargeError,
  RouteNotFoundError,
  UnknownAdapterError,
} from "./errors.js";

/** Largest JSON-RPC request (single or batch) forwarded. */
export const MAX_RPC_BODY_BYTES = 16 * 1024 * 1024;
/** Largest prepare request: a PNG card in base64 and a few fields. */
export const MAX_PREPARE_BODY_BYTES = 16 * 1024 * 1024;
/** Largest adapter upload. */
export const MAX_ADAPTER_BYTES = 4 * 1024 * 1024 * 1024;
/** How long a read of a persona may wait for IPFS blocks before answering 502. */
const PERSONA_READ_TIMEOUT_MS = 30_000;
/** How long a proxied JSON-RPC request may take. */
const RPC_TIMEOUT_MS = 120_000;
/** How long the providers' models stay cached: registrations are rare, config requests are not. */
const BASE_MODELS_TTL_MS = 15_000;

/** Options of {@link startDashboardServer}. */
export interface DashboardServerOptions {
  /** The chain's JSON-RPC endpoint, where /rpc forwards. */
  rpcUrl: string;
  deployment: Deployment;
  /** The built page (dashboard/dist): index.html and assets/. */
  assetsDir: string;
  /** Where cards, adapters and manifests are stored and read; absent: no publishing (503). */
  store?: BlockStore;
  /** For reads (personas, providers' models); default a JsonRpcProvider on rpcUrl, destroyed on close. */
  provider?: JsonRpcProvider;
  /** The accounts the page offers; default {@link offeredDevAccounts}. */
  devAccounts?: { label: string; address: string }[];
  /** Base models to suggest besides those providers registered (e.g. the home's hashed models). */
  baseModels?: BaseModelSuggestion[];
  /** Loopback address to bind (default 127.0.0.1). */
  host?: string;
  /** Port (default 0: a free one). */
  port?: number;
  /** Closes the server when aborted. */
  signal?: AbortSignal;
}

/** A running dashboard server. */
export interface DashboardServer {
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  /** Stops serving, ends open connections and aborts uploads in progress. Idempotent. */
  close(): Promise<void>;
}

interface Context {
  options: DashboardServerOptions;
  provider: JsonRpcProvider;
  contracts: SoulmeshContracts;
  assetsDir: string;
  /** Adapters this server stored, by CID: prepare accepts only these. */
  adapters: Map<string, StoredAdapter>;
  allowedHosts: Set<string>;
  allowedOrigins: Set<string>;
  /** Aborted on close: uploads and reads in progress stop. */
  closing: AbortSignal;
  baseModels: { at: number; value: Promise<BaseModelSuggestion[]> } | undefined;
}

/**
 * Starts the dashboard's HTTP server on loopback (see dash-api: static page, /api/config, /rpc, /api/adapters,
 * /api/personas/prepare, /api/personas/:id).
 *
 * @example
 * const server = await startDashboardServer({ rpcUrl: devnet.rpc.url, deployment, assetsDir: "dashboard/dist", store, port: 5173 })
 * console.log(`open ${server.url}`)
 * await server.close()
 * @throws PortInUseError when the port is taken.
 */
export async function startDashboardServer(options: DashboardServerOptions): Promise<DashboardServer> {
  options.signal?.throwIfAborted();
  const host = options.host ?? "127.0.0.1";
  const ownProvider = options.provider === undefined;
  const provider = options.provider ?? new JsonRpcProvider(options.rpcUrl, options.deployment.chainId, { staticNetwork: true });
  const closing = new AbortController();
  const ctx: Context = {
    options,
    provider,
    contracts: connectContracts(options.deployment, provider),
    assetsDir: resolve(options.assetsDir),
    adapters: new Map(),
    allowedHosts: new Set(),
    allowedOrigins: new Set(),
    closing: closing.signal,
    baseModels: undefined,
  };
  const server: Server = createServer((req, res) => {
    handle(ctx, req, res).catch((err: unknown) => sendError(req, res, err));
  });
  // Keep-alive sockets would hold close() open until they time out.
  server.keepAliveTimeout = 1_000;
  // Uploads of gigabytes take long; the default 5-minute request timeout would cut them.
  server.requestTimeout = 0;

  try {
    await new Promise<void>((resolvePromise, reject) => {
      server.once("error", (err: NodeJS.ErrnoException) => {
        reject(err.code === "EADDRINUSE" ? new PortInUseError(host, options.port ?? 0) : err);
      });
      server.listen(options.port ?? 0, host, () => resolvePromise());
    });
  } catch (err) {
    if (ownProvider) provider.destroy();
    throw err;
  }
  const { port } = server.address() as AddressInfo;
  const urlHost = host.includes(":") ? `[${host}]` : host;
  for (const name of ["127.0.0.1", "localhost", urlHost]) {
    ctx.allowedHosts.add(`${name}:${port}`);
    ctx.allowedOrigins.add(`http://${name}:${port}`);
  }

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= new Promise<void>((resolvePromise) => {
      closing.abort(new Error("the dashboard server is closing"));
      options.signal?.removeEventListener("abort", onAbort);
      server.close(() => resolvePromise());
      server.closeAllConnections();
      if (ownProvider) provider.destroy();
    }));
  const onAbort = (): void => void close();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  return { url: `http://${urlHost}:${port}`, port, close };
}

// ------------------------------------------------------------------------------------------------- routing

async function handle(ctx: Context, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const hostHeader = req.headers.host?.toLowerCase();
  if (hostHeader === undefined || !ctx.allowedHosts.has(hostHeader)) throw new ForbiddenHostError(req.headers.host);
  const method = req.method ?? "GET";
  const origin = req.headers.origin;
  if (method !== "GET" && method !== "HEAD" && origin !== undefined && !ctx.allowedOrigins.has(origin)) {
    throw new ForbiddenOriginError(origin);
  }
  const path = new URL(req.url ?? "/", "http://127.0.0.1").pathname;

  const route = apiRoute(ctx, path, req, res);
  if (route !== undefined) {
    if (method !== route.method) throw new MethodNotAllowedError(method, path, [route.method]);
    return route.run();
  }
  if (path === "/api" || path.startsWith("/api/")) throw new RouteNotFoundError(method, path);
  if (method !== "GET" && method !== "HEAD") throw new MethodNotAllowedError(method, path, ["GET"]);
  return serveStatic(ctx, path, req, res);
}

/** The API route at `path`, if any: its method and what it does. */
function apiRoute(
  ctx: Context,
  path: string,
  req: IncomingMessage,
  res: ServerResponse,
): { method: "GET" | "POST"; run: () => Promise<void> } | undefined {
  const json = (answer: () => Promise<unknown>) => async (): Promise<void> => sendJson(res, 200, await answer());
  if (path === "/rpc") return { method: "POST", run: () => proxyRpc(ctx, req, res) };
  if (path === "/api/config") return { method: "GET", run: json(() => config(ctx)) };
  if (path === "/api/adapters") return { method: "POST", run: json(() => uploadAdapter(ctx, req)) };
  if (path === "/api/personas/prepare") return { method: "POST", run: json(() => prepare(ctx, req)) };
  const persona = /^\/api\/personas\/([^/]+)$/.exec(path);
  if (persona !== null) return { method: "GET", run: json(() => personaOf(ctx, persona[1]!)) };
  return undefined;
}

/**
 * The accounts the page offers by default: on the devnet, its dev accounts (the chain signs for them), labels and
 * addresses only; none elsewhere, where only a browser wallet signs.
 *
 * @example
 * offeredDevAccounts(devnetDeployment) // [{ label: "deployer", address: "0xf39F…2266" }, { label: "user", … }, …]
 */
export function offeredDevAccounts(deployment: Deployment): { label: string; address: string }[] {
  if (deployment.chainId !== DEVNET_CHAIN_ID) return [];
  return (deployment.devAccounts ?? devAccounts()).map(({ label, address }) => ({ label, address }));
}

// -------------------------------------------------------------------------------------------------- routes

async function config(ctx: Context): Promise<DashboardConfig> {
  const { deployment } = ctx.options;
  const { devAccounts: _keys, pid: _pid, ...publicDeployment } = deployment;
  const accounts = ctx.options.devAccounts ?? offeredDevAccounts(deployment);
  return {
    chainId: deployment.chainId,
    deployment: publicDeployment,
    devAccounts: accounts.map(({ label, address }) => ({ label, address })),
    ipfs: ctx.options.store !== undefined,
    baseModels: await baseModels(ctx),
  };
}

/** The options' models and the providers', cached a few seconds; the chain's are left out if it fails. */
function baseModels(ctx: Context): Promise<BaseModelSuggestion[]> {
  const now = Date.now();
  if (ctx.baseModels === undefined || now - ctx.baseModels.at > BASE_MODELS_TTL_MS) {
    const given = ctx.options.baseModels ?? [];
    const value = chainBaseModels(ctx.contracts.providerRegistry, ctx.closing).then(
      // Given first: their names and URIs win.
      (served) => mergeBaseModels(given, served),
      // Suggestions only: a chain that cannot say must not break the page's configuration.
      () => mergeBaseModels(given),
    );
    ctx.baseModels = { at: now, value };
  }
  return ctx.baseModels.value;
}

async function proxyRpc(ctx: Context, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readBody(req, MAX_RPC_BODY_BYTES, "/rpc");
  let answer: Response;
  let text: string;
  try {
    answer = await fetch(ctx.options.rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new Uint8Array(body),
      signal: AbortSignal.any([ctx.closing, AbortSignal.timeout(RPC_TIMEOUT_MS)]),
    });
    text = await answer.text();
  } catch (err) {
    throw new ChainUnreachableError(ctx.options.rpcUrl, { cause: err });
  }
  res.writeHead(answer.status, {
    ...SECURITY_HEADERS,
    "content-type": answer.headers.get("content-type") ?? "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  });
  res.end(text);
}

async function uploadAdapter(ctx: Context, req: IncomingMessage): Promise<StoredAdapter> {
  const store = ctx.options.store;
  if (store === undefined) throw new IpfsUnavailableError();
  const declared = req.headers["content-length"];
  if (declared === undefined || !/^\d+$/.test(declared)) throw new LengthRequiredError();
  const size = Number(declared);
  if (size > MAX_ADAPTER_BYTES) throw new RequestTooLargeError("/api/adapters", MAX_ADAPTER_BYTES);
  const stored = await storePersonaAdapter(store, { stream: requestChunks(req), size }, { signal: ctx.closing });
  ctx.adapters.set(stored.cid, stored);
  return stored;
}

async function prepare(ctx: Context, req: IncomingMessage): Promise<PrepareAnswer> {
  const store = ctx.options.store;
  if (store === undefined) throw new IpfsUnavailableError();
  const body = parseJson(await readBody(req, MAX_PREPARE_BODY_BYTES, "/api/personas/prepare"));
  const card = field(body, "card", true, 32 * 1024 * 1024)!;
  const adapterCid = field(body, "adapterCid", false, 256);
  const baseModelHash = field(body, "baseModelHash", true, 66)!;
  const baseModelName = field(body, "baseModelName", false, 256);
  const baseModelUri = field(body, "baseModelUri", false, 2048);
  const cardBytes = decodeBase64(card);
  let stored: StoredAdapter | undefined;
  if (adapterCid !== undefined) {
    stored = ctx.adapters.get(adapterCid);
    if (stored === undefined) throw new UnknownAdapterError(adapterCid);
  }
  const prepared = await preparePersona({
    store,
    card: cardBytes,
    ...(stored !== undefined && { adapter: { stored } }),
    baseModelHash,
    ...(baseModelName !== undefined && { baseModelName }),
    ...(baseModelUri !== undefined && { baseModelUri }),
    signal: ctx.closing,
  });
  return {
    manifestCid: prepared.manifestCid,
    cardCid: prepared.cardCid,
    ...(prepared.adapterCid !== undefined && { adapterCid: prepared.adapterCid }),
    adapterSha256: prepared.adapterSha256,
    baseModelHash: prepared.baseModelHash,
    manifest: prepared.manifest,
  };
}

async function personaOf(ctx: Context, idText: string): Promise<PersonaAnswer> {
  if (!/^[1-9]\d{0,77}$/.test(idText)) throw new InvalidRequestError(`${JSON.stringify(idText)} is not a persona id (a whole number from 1)`);
  const store = ctx.options.store;
  if (store === undefined) throw new IpfsUnavailableError();
  const personaId = BigInt(idText);
  try {
    const persona = await readPersona({
      registry: ctx.contracts.personaRegistry,
      store,
      personaId,
      signal: AbortSignal.any([ctx.closing, AbortSignal.timeout(PERSONA_READ_TIMEOUT_MS)]),
    });
    return {
      personaId: idText,
      name: persona.manifest.name,
      manifestCid: persona.manifestCid,
      manifest: persona.manifest,
      card: { name: persona.card.name, ...(persona.card.description !== "" && { description: persona.card.description }) },
    };
  } catch (err) {
    if (err instanceof ContractRevertError && /UnknownPersona|NonexistentToken/.test(err.reason)) throw new PersonaNotFoundError(personaId);
    // Whatever else fails here is what the chain or IPFS gave, not the request.
    throw new UpstreamError(err);
  }
}

/** Marks a failure of what the chain or IPFS gave (502), keeping the original's name and message. */
class UpstreamError extends Error {
  constructor(readonly original: unknown) {
    super(original instanceof Error ? original.message : String(original), { cause: original });
  }
}

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".webp": "image/webp",
  ".woff2": "font/woff2",
  ".txt": "text/plain; charset=utf-8",
};

async function serveStatic(ctx: Context, path: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let decoded: string;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    throw new RouteNotFoundError(req.method ?? "GET", path);
  }
  const file = resolve(ctx.assetsDir, `.${decoded === "/" ? "/index.html" : decoded}`);
  if (decoded.includes("\0") || !file.startsWith(ctx.assetsDir + sep)) throw new RouteNotFoundError(req.method ?? "GET", path);
  const info = await stat(file).catch(() => undefined);
  if (info === undefined || !info.isFile()) {
    // The page itself missing is the build's fault, not the request's: say how to build it.
    if (decoded === "/" || decoded === "/index.html") throw new DashboardNotBuiltError(ctx.assetsDir);
    throw new RouteNotFoundError(req.method ?? "GET", path);
  }
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    "content-type": CONTENT_TYPES[extname(file).toLowerCase()] ?? "application/octet-stream",
    "content-length": info.size,
    // Vite names assets by their content: they never change under a name; index.html does at each build.
    "cache-control": decoded.startsWith("/assets/") ? "public, max-age=31536000, immutable" : "no-cache",
  });
  if (req.method === "HEAD") return void res.end();
  await new Promise<void>((resolvePromise) => {
    const stream = createReadStream(file);
    stream.on("error", () => res.destroy());
    res.on("close", () => {
      stream.destroy();
      resolvePromise();
    });
    stream.pipe(res);
  });
}

// ------------------------------------------------------------------------------------------------- helpers

const SECURITY_HEADERS = {
  "x-content-type-options": "nosniff",
  // The withdraw button must not be clickable through another site's frame.
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
};

function sendJson(res: ServerResponse, status: number, value: unknown, extra: Record<string, string> = {}): void {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    ...extra,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  });
  res.end(text);
}

const BAD_INPUT: Array<abstract new (...args: never[]) => unknown> = [
  InvalidRequestError,
  UnknownAdapterError,
  NotALoraAdapterError,
  AdapterSizeMismatchError,
  InvalidPersonaParameterError,
  ...Object.values(cardErrors).filter((v) => v.prototype instanceof SoulmeshError),
];

/**
 * The HTTP status of a failure.
 *
 * @example
 * httpStatusOf(new UnknownAdapterError("bafy…")) // 400
 */
export function httpStatusOf(err: unknown): number {
  if (err instanceof UpstreamError) return 502;
  if (err instanceof ForbiddenHostError || err instanceof ForbiddenOriginError) return 403;
  if (err instanceof RouteNotFoundError || err instanceof PersonaNotFoundError) return 404;
  if (err instanceof MethodNotAllowedError) return 405;
  if (err instanceof LengthRequiredError) return 411;
  if (err instanceof RequestTooLargeError) return 413;
  if (err instanceof IpfsUnavailableError || err instanceof DashboardNotBuiltError) return 503;
  if (err instanceof ChainUnreachableError) return 502;
  if (BAD_INPUT.some((type) => err instanceof type)) return 400;
  return 500;
}

function sendError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  if (res.headersSent) return void res.destroy();
  const status = httpStatusOf(err);
  const shown = err instanceof UpstreamError ? err.original : err;
  const name = shown instanceof Error ? shown.name : "Error";
  const message = shown instanceof Error ? shown.message : String(shown);
  const extra: Record<string, string> = {};
  if (err instanceof MethodNotAllowedError) extra.allow = err.allowed.join(", ");
  if (!req.complete) {
    // The body was refused before its end: drop the rest and the connection with it.
    extra.connection = "close";
    req.resume();
  }
  sendJson(res, status, { error: { name, message } }, extra);
}

/** The whole body, refused above `limit` bytes (by its Content-Length before reading, or as it arrives). */
async function readBody(req: IncomingMessage, limit: number, path: string): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new RequestTooLargeError(path, limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of requestChunks(req)) {
    size += chunk.byteLength;
    if (size > limit) throw new RequestTooLargeError(path, limit);
    chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(chunks);
}

/**
 * The request body as chunks, pulled one at a time (the socket is paused in between, so a slow store slows the
 * upload instead of filling memory). Unlike the stream's own iterator, stopping early does not destroy the
 * request: the rest is drained, so that the error response still reaches the client.
 */
async function* requestChunks(req: IncomingMessage): AsyncGenerator<Uint8Array> {
  const queue: Buffer[] = [];
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (chunk: Buffer): void => {
    queue.push(chunk);
    req.pause();
    notify();
  };
  // A connection closed before the end is a short body: the reader's size check names it.
  const onEnd = (): void => void ((ended = true), notify());
  const onError = (err: Error): void => void ((failure ??= err), notify());
  req.on("data", onData).on("end", onEnd).on("close", onEnd).on("error", onError);
  try {
    for (;;) {
      const chunk = queue.shift();
      if (chunk !== undefined) {
        yield chunk;
        continue;
      }
      if (failure !== undefined) throw failure;
      if (ended) return;
      const woken = new Promise<void>((r) => (wake = r));
      req.resume();
      await woken;
    }
  } finally {
    req.off("data", onData).off("end", onEnd).off("close", onEnd).off("error", onError);
    if (!req.complete) req.resume();
  }
}

function parseJson(body: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch {
    throw new InvalidRequestError("the body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new InvalidRequestError("the body is not a JSON object");
  return value as Record<string, unknown>;
}

function field(body: Record<string, unknown>, name: string, required: boolean, maxLength: number): string | undefined {
  const value = body[name];
  if (value === undefined || value === null) {
    if (required) throw new InvalidRequestError(`"${name}" is missing`);
    return undefined;
  }
  if (typeof value !== "string") throw new InvalidRequestError(`"${name}" is not a string`);
  if (value.length > maxLength) throw new InvalidRequestError(`"${name}" is longer than ${maxLength} characters`);
  return value;
}

function decodeBase64(text: string): Uint8Array {
  const compact = text.replace(/\s+/g, "");
  if (compact === "" || compact.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(compact)) {
    throw new InvalidRequestError('"card" is not the card file in base64');
  }
  return new Uint8Array(Buffer.from(compact, "base64"));
}
