import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Eip1193Provider } from "ethers";
import { SoulmeshError } from "../../sdk/errors.js";

/** The port is taken, most likely by another devnet. */
export class PortInUseError extends SoulmeshError {
  override readonly name = "PortInUseError";
  constructor(
    readonly host: string,
    readonly port: number,
  ) {
    super(
      `Port ${port} on ${host} is already in use (another devnet or Ethereum node?). ` +
        `Stop it, or pass another port with --port (0 picks a free one).`,
    );
  }
}

/** Largest request body accepted, in bytes: a batch of a few hundred vouchers fits easily. */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;

interface JsonRpcRequest {
  jsonrpc: "2.0";
  id?: string | number | null;
  method: string;
  params?: unknown[] | Record<string, unknown>;
}

type JsonRpcResponse =
  | { jsonrpc: "2.0"; id: string | number | null; result: unknown }
  | { jsonrpc: "2.0"; id: string | number | null; error: { code: number; message: string; data?: unknown } };

/** A running JSON-RPC endpoint. */
export interface RpcServer {
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

function isRequest(value: unknown): value is JsonRpcRequest {
  if (typeof value !== "object" || value === null) return false;
  const r = value as Record<string, unknown>;
  const idOk = r.id === undefined || r.id === null || typeof r.id === "string" || typeof r.id === "number";
  const paramsOk = r.params === undefined || (typeof r.params === "object" && r.params !== null);
  return r.jsonrpc === "2.0" && typeof r.method === "string" && idOk && paramsOk;
}

function errorResponse(id: JsonRpcRequest["id"], code: number, message: string, data?: unknown): JsonRpcResponse {
  return { jsonrpc: "2.0", id: id ?? null, error: data === undefined ? { code, message } : { code, message, data } };
}

async function handleOne(provider: Eip1193Provider, request: unknown): Promise<JsonRpcResponse> {
  if (!isRequest(request)) return errorResponse(null, -32600, "Invalid request");
  const id = request.id ?? null;
  try {
    const result = await provider.request({ method: request.method, params: request.params ?? [] });
    return { jsonrpc: "2.0", id, result: result ?? null };
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown; data?: unknown };
    const code = typeof e.code === "number" ? e.code : -32603;
    return errorResponse(id, code, typeof e.message === "string" ? e.message : "Internal error", e.data);
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new RangeError("body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/**
 * Serves an EIP-1193 provider as a JSON-RPC 2.0 endpoint over HTTP (single and batch requests), with CORS
 * open so that a page such as the creator dashboard can call it. Binds only the given host.
 *
 * @example
 * const server = await serveJsonRpc(chain.eip1193, { host: "127.0.0.1", port: 8545 })
 * // new JsonRpcProvider(server.url)
 * @throws PortInUseError when the port is taken.
 */
export async function serveJsonRpc(
  provider: Eip1193Provider,
  options: { host: string; port: number },
): Promise<RpcServer> {
  const server: Server = createServer((req, res) => {
    res.setHeader("access-control-allow-origin", "*");
    res.setHeader("access-control-allow-headers", "content-type");
    res.setHeader("access-control-allow-methods", "POST, GET, OPTIONS");
    if (req.method === "OPTIONS") return void res.writeHead(204).end();
    if (req.method === "GET") return send(res, 200, "Soulmesh devnet: POST JSON-RPC 2.0 requests here.\n");
    if (req.method !== "POST") return send(res, 405, "Method not allowed\n");
    readBody(req).then(
      async (text) => {
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          return send(res, 200, errorResponse(null, -32700, "Parse error"));
        }
        if (Array.isArray(body)) {
          if (body.length === 0) return send(res, 200, errorResponse(null, -32600, "Invalid request: empty batch"));
          return send(res, 200, await Promise.all(body.map((r) => handleOne(provider, r))));
        }
        return send(res, 200, await handleOne(provider, body));
      },
      (err: unknown) => {
        if (err instanceof RangeError) send(res, 413, errorResponse(null, -32600, "Request body too large"));
        else res.destroy();
      },
    );
  });
  // Keep-alive sockets would hold close() open until they time out.
  server.keepAliveTimeout = 1_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      reject(err.code === "EADDRINUSE" ? new PortInUseError(options.host, options.port) : err);
    });
    server.listen(options.port, options.host, () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;
  return {
    url: `http://${address}:${port}`,
    host: address,
    port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
