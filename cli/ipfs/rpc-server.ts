/**
 * The subset of Kubo's RPC API (`/api/v0/…`) that `createKuboBlockStore` and kubo-rpc-client use, served
 * over an embedded Helia node. The process that owns the Helia repository (`soulmesh up`, `devnet`) serves
 * it on loopback, so that every other soulmesh process reaches the same blocks through the Kubo client
 * path, which works unchanged against a real `ipfs daemon`.
 *
 * Like Kubo: POST only (405 otherwise), requests from browsers (an `Origin` header) refused with 403,
 * errors as JSON `{Message, Code, Type: "error"}` (HTTP 500 for a failed command, as Kubo answers, so that
 * the client's messages such as "could not find" and "context deadline exceeded" mean what they mean there).
 */
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import * as dagCbor from "@ipld/dag-cbor";
import { publicKeyToProtobuf } from "@libp2p/crypto/keys";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";
import { SoulmeshError } from "../../sdk/errors.js";
import type { HeliaBlockStore } from "../../sdk/vault/block-store.js";
import {
  BlockIntegrityError,
  BlockNotFoundError,
  UnsupportedCidError,
} from "../../sdk/vault/block-store-errors.js";

/**
 * Largest block accepted by block/put: 2 MiB, what Kubo and bitswap accept by default (and more than any
 * vault record, which the vault splits long before that).
 */
export const MAX_BLOCK_BYTES = 2 * 1024 * 1024;

/** Room for the multipart framing around the block (boundaries, part headers, file name). */
const MULTIPART_OVERHEAD_BYTES = 64 * 1024;

/** Past this much of an oversized body we stop reading it and drop the connection. */
const MAX_DRAIN_BYTES = 16 * 1024 * 1024;

/** What `version` reports: not a Kubo version, so that nobody mistakes this for one. */
export const IPFS_RPC_VERSION = "0.1.0-soulmesh-helia";

/** The RPC port is taken (another `soulmesh up` or an `ipfs daemon`?). */
export class IpfsApiPortInUseError extends SoulmeshError {
  override readonly name = "IpfsApiPortInUseError";
  constructor(readonly port: number) {
    super(
      `Port ${port} on 127.0.0.1 is already in use, so the IPFS RPC API cannot listen there (another ` +
        `soulmesh up, or an ipfs daemon?). Stop it, use its API with --ipfs-api, or pick another port ` +
        `(0 picks a free one).`,
    );
  }
}

/** Options of {@link serveIpfsRpc}. */
export interface ServeIpfsRpcOptions {
  /** The started Helia node whose blocks are served; the server never stops it. */
  store: HeliaBlockStore;
  /** TCP port on 127.0.0.1 (default 0: any free port). */
  port?: number;
  /** Aborts the listen in progress (once listening, close() is what stops the server). */
  signal?: AbortSignal;
}

/** A running IPFS RPC API. */
export interface IpfsRpcServer {
  /** Base URL to give kubo-rpc-client or `--ipfs-api`, e.g. `http://127.0.0.1:5001`. */
  url: string;
  port: number;
  /** Stops listening, aborts requests in flight and drops their connections. Idempotent. */
  close(): Promise<void>;
}

// go-ipfs-cmds' error types, sent as `Code`.
const ERR_NORMAL = 0;
const ERR_CLIENT = 1;
const ERR_NOT_FOUND = 3;
const ERR_FORBIDDEN = 5;

/** A failed command, answered as Kubo answers it. */
class RpcFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: number = status === 500 ? ERR_NORMAL : ERR_CLIENT,
  ) {
    super(message);
  }
}

interface RpcRequest {
  req: IncomingMessage;
  params: URLSearchParams;
  /** Aborted when the client goes away or the server closes. */
  signal: AbortSignal;
}

type Command = (store: HeliaBlockStore, request: RpcRequest) => Promise<RpcReply>;

type RpcReply = { json: unknown; ndjson?: boolean } | { bytes: Uint8Array };

const COMMANDS: ReadonlyMap<string, Command> = new Map<string, Command>([
  ["version", versionCommand],
  ["id", idCommand],
  ["block/put", blockPut],
  ["block/get", blockGet],
  ["block/stat", blockStat],
  ["pin/add", pinAdd],
]);

/**
 * Serves `store` as a Kubo-compatible RPC API on 127.0.0.1 (`version`, `id`, `block/put`, `block/get`,
 * `block/stat`, `pin/add`). Each request gets an AbortSignal that fires when its client disconnects, so a
 * block fetch nobody waits for any more stops.
 *
 * @example
 * const api = await serveIpfsRpc({ store: helia, port: 0 })
 * const kubo = createKuboBlockStore({ url: api.url }) // in another process
 * await api.close()
 * @throws IpfsApiPortInUseError when the port is taken.
 */
export async function serveIpfsRpc(options: ServeIpfsRpcOptions): Promise<IpfsRpcServer> {
  const { store, signal } = options;
  signal?.throwIfAborted();
  const lifetime = new AbortController();
  const server: Server = createServer((req, res) => {
    void handle(store, req, res, lifetime.signal);
  });
  // Keep-alive sockets would hold close() open until they time out.
  server.keepAliveTimeout = 1_000;

  const port = options.port ?? 0;
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      server.close();
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    server.once("error", (err: NodeJS.ErrnoException) => {
      signal?.removeEventListener("abort", onAbort);
      reject(err.code === "EADDRINUSE" ? new IpfsApiPortInUseError(port) : err);
    });
    server.listen(port, "127.0.0.1", () => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    });
  });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve, reject) => {
      lifetime.abort(new Error("The IPFS RPC API is shutting down."));
      server.close((err) => (err ? reject(err) : resolve()));
      server.closeAllConnections();
    });
    return closing;
  };

  const bound = (server.address() as AddressInfo).port;
  return { url: `http://127.0.0.1:${bound}`, port: bound, close };
}

async function handle(
  store: HeliaBlockStore,
  req: IncomingMessage,
  res: ServerResponse,
  lifetime: AbortSignal,
): Promise<void> {
  const connection = new AbortController();
  // 'close' on the response: the request's own 'close' fires as soon as its body is read.
  res.once("close", () => {
    if (!res.writableFinished) connection.abort(new Error("The client closed the connection."));
  });
  const signal = AbortSignal.any([connection.signal, lifetime]);
  try {
    const reply = await route(store, req, signal);
    if ("bytes" in reply) {
      sendBytes(res, reply.bytes);
    } else {
      sendJson(res, 200, reply.json, reply.ndjson === true);
    }
  } catch (err) {
    if (signal.aborted) {
      res.destroy();
      return;
    }
    const failure = toFailure(err);
    if (failure.status === 413) res.setHeader("connection", "close");
    sendJson(res, failure.status, { Message: failure.message, Code: failure.code, Type: "error" });
  } finally {
    // Commands that take no body still get one from some clients; read it off so the socket can be reused.
    if (!req.readableEnded && !req.destroyed) req.resume();
  }
}

async function route(store: HeliaBlockStore, req: IncomingMessage, signal: AbortSignal): Promise<RpcReply> {
  // Kubo's default: browsers may not call the API (CSRF from any web page the user visits).
  if (req.headers.origin !== undefined) {
    throw new RpcFailure(403, "403 - Forbidden: requests with an Origin header are refused", ERR_FORBIDDEN);
  }
  if (req.method !== "POST") {
    throw new RpcFailure(405, `405 - Method Not Allowed: ${req.method ?? "?"}; the RPC API takes POST only`);
  }
  const url = new URL(req.url ?? "/", "http://127.0.0.1");
  const name = url.pathname.startsWith("/api/v0/") ? url.pathname.slice("/api/v0/".length).replace(/\/$/, "") : "";
  const command = COMMANDS.get(name);
  if (command === undefined) {
    throw new RpcFailure(404, `unknown command ${JSON.stringify(url.pathname)}`, ERR_NOT_FOUND);
  }
  return command(store, { req, params: url.searchParams, signal });
}

function toFailure(err: unknown): RpcFailure {
  if (err instanceof RpcFailure) return err;
  if (err instanceof UnsupportedCidError) return new RpcFailure(400, err.message);
  if (err instanceof BlockNotFoundError) {
    // The client turns "context deadline exceeded" into a TimeoutError, as it does for Kubo's own.
    return new RpcFailure(500, `block ${err.cid} was not found in time: context deadline exceeded`);
  }
  if (err instanceof BlockIntegrityError) return new RpcFailure(500, err.message);
  return new RpcFailure(500, err instanceof Error ? err.message : String(err));
}

function sendJson(res: ServerResponse, status: number, value: unknown, ndjson = false): void {
  if (res.headersSent || res.destroyed) return;
  const text = `${JSON.stringify(value)}${ndjson ? "\n" : ""}`;
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function sendBytes(res: ServerResponse, bytes: Uint8Array): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(200, { "content-type": "text/plain", "content-length": bytes.byteLength });
  res.end(bytes);
}

// ---------------------------------------------------------------------------------------------------------
// Commands

async function versionCommand(): Promise<RpcReply> {
  return {
    json: {
      Version: IPFS_RPC_VERSION,
      Commit: "",
      Repo: "helia",
      System: `${process.arch}/${process.platform}`,
      Golang: "",
    },
  };
}

async function idCommand(store: HeliaBlockStore, { params }: RpcRequest): Promise<RpcReply> {
  const peerId = store.peerId;
  const asked = params.get("arg");
  if (asked !== null && asked !== peerId.toString()) {
    throw new RpcFailure(500, `this node answers only for itself (${peerId.toString()}), not for ${asked}`);
  }
  const publicKey =
    peerId.publicKey === undefined ? "" : Buffer.from(publicKeyToProtobuf(peerId.publicKey)).toString("base64");
  return {
    json: {
      ID: peerId.toString(),
      PublicKey: publicKey,
      Addresses: store.multiaddrs(),
      AgentVersion: `soulmesh/${IPFS_RPC_VERSION}`,
      Protocols: [],
    },
  };
}

async function blockPut(store: HeliaBlockStore, { req, params, signal }: RpcRequest): Promise<RpcReply> {
  const codec = putCodec(params);
  const mhtype = params.get("mhtype") ?? "sha2-256";
  if (mhtype !== "sha2-256") {
    throw new RpcFailure(400, `mhtype ${mhtype} is not supported: this node stores sha2-256 blocks only`);
  }
  const mhlen = params.get("mhlen");
  if (mhlen !== null && mhlen !== "-1" && mhlen !== "32") {
    throw new RpcFailure(400, `mhlen ${mhlen} is not supported for sha2-256`);
  }
  const body = await readBody(req, MAX_BLOCK_BYTES + MULTIPART_OVERHEAD_BYTES, signal);
  const bytes = firstFilePart(req.headers["content-type"] ?? "", body);
  if (bytes.byteLength > MAX_BLOCK_BYTES) throw tooLarge();
  // The CID is computed here from the bytes received, so it cannot name other bytes.
  const cid = CID.createV1(codec, await sha256.digest(bytes));
  await store.put(cid, bytes, { signal });
  if (flag(params, "pin", false)) await store.pin(cid, { signal });
  return { json: { Key: cid.toString(), Size: bytes.byteLength } };
}

async function blockGet(store: HeliaBlockStore, { params, signal }: RpcRequest): Promise<RpcReply> {
  const cid = argCid(params);
  if (flag(params, "offline", false)) await requireLocal(store, cid, signal);
  return { bytes: await store.get(cid, { signal, timeoutMs: timeoutParam(params) }) };
}

async function blockStat(store: HeliaBlockStore, { params, signal }: RpcRequest): Promise<RpcReply> {
  const cid = argCid(params);
  if (flag(params, "offline", false)) await requireLocal(store, cid, signal);
  const bytes = await store.get(cid, { signal, timeoutMs: timeoutParam(params) });
  return { json: { Key: cid.toString(), Size: bytes.byteLength } };
}

async function pinAdd(store: HeliaBlockStore, { params, signal }: RpcRequest): Promise<RpcReply> {
  const args = params.getAll("arg");
  if (args.length === 0) throw new RpcFailure(400, "argument \"ipfs-path\" is required");
  if (!flag(params, "recursive", true)) {
    throw new RpcFailure(400, "direct pins (recursive=false) are not supported by this node: pin recursively");
  }
  const cids = args.map(parseCidArg);
  const timeoutMs = timeoutParam(params);
  for (const cid of cids) await store.pin(cid, { signal, timeoutMs });
  return { json: { Pins: cids.map((cid) => cid.toString()) }, ndjson: true };
}

// ---------------------------------------------------------------------------------------------------------
// Parameters and bodies

const CODECS: ReadonlyMap<string, number> = new Map([
  ["raw", raw.code],
  ["dag-cbor", dagCbor.code],
  ["cbor", dagCbor.code],
  // UnixFS nodes of multi-chunk public files (persona cards, adapters).
  ["dag-pb", 0x70],
  ["protobuf", 0x70],
]);

// `cid-codec` (Kubo ≥ 0.13) wins over the deprecated `format`; Kubo's default is raw.
function putCodec(params: URLSearchParams): number {
  const name = params.get("cid-codec") ?? params.get("format") ?? "raw";
  const code = CODECS.get(name);
  if (code === undefined) {
    throw new RpcFailure(400, `codec ${name} is not supported: this node stores raw, dag-cbor and dag-pb blocks only`);
  }
  return code;
}

function argCid(params: URLSearchParams): CID {
  const arg = params.get("arg");
  if (arg === null) throw new RpcFailure(400, "argument \"cid\" is required");
  return parseCidArg(arg);
}

// Kubo takes a CID or an /ipfs/ path; paths into a DAG are beyond what this node resolves.
function parseCidArg(arg: string): CID {
  const text = arg.startsWith("/ipfs/") ? arg.slice("/ipfs/".length) : arg;
  try {
    return CID.parse(text);
  } catch {
    throw new RpcFailure(400, `invalid CID ${JSON.stringify(arg)}: give a CID or /ipfs/<cid>`);
  }
}

async function requireLocal(store: HeliaBlockStore, cid: CID, signal: AbortSignal): Promise<void> {
  if (!(await store.has(cid, { signal }))) {
    throw new RpcFailure(500, `block was not found locally (offline): ipld: could not find ${cid.toString()}`);
  }
}

function flag(params: URLSearchParams, name: string, fallback: boolean): boolean {
  const value = params.get(name);
  if (value === null) return fallback;
  if (value === "" || value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new RpcFailure(400, `option ${name} must be true or false, not ${JSON.stringify(value)}`);
}

const GO_DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};

/** Kubo's global `timeout` option, a Go duration such as "300ms" or "1m30s"; undefined when absent. */
function timeoutParam(params: URLSearchParams): number | undefined {
  const value = params.get("timeout");
  if (value === null) return undefined;
  const ms = parseGoDuration(value);
  if (ms === undefined || ms <= 0) {
    throw new RpcFailure(400, `timeout must be a positive duration such as 300ms or 30s, not ${JSON.stringify(value)}`);
  }
  return Math.max(1, Math.round(ms));
}

function parseGoDuration(text: string): number | undefined {
  if (!/^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$/.test(text)) return undefined;
  let ms = 0;
  for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g)) {
    ms += Number(amount) * GO_DURATION_UNITS_MS[unit!]!;
  }
  return ms;
}

function tooLarge(): RpcFailure {
  return new RpcFailure(
    413,
    `block too large: this node accepts blocks of at most ${MAX_BLOCK_BYTES} bytes (2 MiB); ` +
      `split the data into smaller blocks`,
  );
}

/**
 * The request body, refused past `limit` bytes. An oversized body is still read off (up to a bound) after
 * the refusal, so that a client still sending it gets the 413 rather than a reset connection.
 */
function readBody(req: IncomingMessage, limit: number, signal: AbortSignal): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? NaN);
  if (declared > limit) {
    drainOrDrop(req, 0);
    return Promise.reject(tooLarge());
  }
  // Listeners rather than `for await`: leaving that loop early would destroy the socket before the 413.
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      signal.removeEventListener("abort", onAbort);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.byteLength;
      if (size <= limit) {
        chunks.push(chunk);
        return;
      }
      cleanup();
      drainOrDrop(req, size);
      reject(tooLarge());
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onAbort = (): void => {
      cleanup();
      reject(signal.reason);
    };
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onError);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function drainOrDrop(req: IncomingMessage, alreadyRead: number): void {
  let read = alreadyRead;
  req.on("data", (chunk: Buffer) => {
    read += chunk.byteLength;
    if (read > MAX_DRAIN_BYTES) req.socket.destroy();
  });
  req.resume();
}

/**
 * The content of the first file part of a multipart/form-data body, as Kubo reads block/put's data.
 * The content ends right before the CRLF that precedes the next boundary.
 */
function firstFilePart(contentType: string, body: Buffer): Uint8Array {
  const boundary = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  if (!/^multipart\/form-data/i.test(contentType) || boundary === null) {
    throw new RpcFailure(400, "block/put takes the block as a multipart/form-data file part");
  }
  const delimiter = Buffer.from(`--${boundary[1] ?? boundary[2]}`);
  let at = body.indexOf(delimiter);
  while (at !== -1) {
    const afterDelimiter = at + delimiter.byteLength;
    if (body.subarray(afterDelimiter, afterDelimiter + 2).toString() === "--") break; // closing delimiter
    const headersEnd = body.indexOf("\r\n\r\n", afterDelimiter);
    if (headersEnd === -1) break;
    const headers = body.subarray(afterDelimiter, headersEnd).toString("latin1");
    const contentStart = headersEnd + 4;
    const next = body.indexOf(Buffer.concat([Buffer.from("\r\n"), delimiter]), contentStart);
    if (next === -1) break;
    if (/content-disposition:[^\r\n]*name="file/i.test(headers)) {
      return new Uint8Array(body.buffer, body.byteOffset + contentStart, next - contentStart);
    }
    at = next + 2;
  }
  throw new RpcFailure(400, "file argument 'data' is required: send the block as a multipart file part");
}
