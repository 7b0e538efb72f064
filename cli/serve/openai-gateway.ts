/**
 * An OpenAI-compatible HTTP endpoint in front of one owned agent, so that any OpenAI client (SDKs, chat
 * apps, editors) talks to it: `GET /v1/models`, `GET /v1/models/{id}` and `POST /v1/chat/completions`,
 * streamed (server-sent events) or not.
 *
 * Each completion is one turn of the agent, with its memory: only the last message (the user's) is sent,
 * since the agent's own history is the source of truth (see chat-request.ts). Turns run one at a time; the
 * others wait in line, up to a limit, then get 429. A client that disconnects mid-reply cancels its turn:
 * nothing is recorded, and only the part already delivered is paid. Errors come in OpenAI's shape with the usual statuses, so clients raise
 * their typed errors: 400 bad request, 401 API key, 402 escrow or spending cap, 403 web page of an origin not
 * allowed (see cors.ts), 404 model or path, 405, 413 body too large, 429 line full, 503 no provider.
 *
 * A streamed response starts with the first token, so a turn that fails before any (no provider, no
 * deposit) still gets its proper status; one that fails after ends with an `error` event, which OpenAI's
 * clients raise as an APIError. When a provider fails mid-reply after tokens were streamed, the turn is
 * cancelled rather than restarted on another provider: the client could not unsee the first reply's start.
 */
import { randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Agent, AgentEvents, AgentReply, SendOptions } from "../../sdk/client/agent/index.js";
import { AgentClosedError, InvalidAgentOptionsError, TurnCancelledError } from "../../sdk/client/agent/index.js";
import {
  AllProvidersFailedError,
  EscrowTooLowError,
  LaneReleasingError,
  NoProviderError,
  SpendingCapReachedError,
  TurnInProgressError,
} from "../../sdk/client/errors.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { TypedEventTarget } from "../../sdk/events.js";
import { parseChatRequest, type ChatRequest } from "./chat-request.js";
import { CorsPolicy, normalizeOrigin } from "./cors.js";
import {
  ClientDisconnectedError,
  GatewayClosedError,
  GatewayListenError,
  InvalidGatewayOptionsError,
  OpenAiRequestError,
  ReplyRestartedError,
} from "./errors.js";
import { TurnQueue } from "./turn-queue.js";

/** Largest request body by default: a chat message, not a file upload. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
/** Requests that may wait for the running turn by default. */
export const DEFAULT_MAX_WAITING = 8;

/** What the gateway uses of an agent. */
export type GatewayAgent = Pick<Agent, "send" | "addEventListener" | "removeEventListener">;

/** What {@link createOpenAiGateway} takes. */
export interface OpenAiGatewayOptions {
  /** An opened agent; the gateway neither opens nor closes it. */
  agent: GatewayAgent;
  /** The model id clients name, e.g. `soulmesh-agent-7`. */
  model: string;
  /** TCP port (default 0: a free one, see `url`). */
  port?: number;
  /** Interface to listen on (default 127.0.0.1: this machine only). */
  host?: string;
  /** When set, every request must carry `Authorization: Bearer <apiKey>`, else 401. */
  apiKey?: string;
  /** Largest request body, in bytes (default 1 MiB); larger gets 413. */
  maxBodyBytes?: number;
  /** Requests that may wait behind the running turn (default 8); more get 429. */
  maxWaiting?: number;
  /**
   * Web origins (`scheme://host[:port]`, `*` for any) whose pages may call the gateway from a browser: their
   * requests get CORS headers and preflights are answered. Default none: no CORS headers, and requests from
   * any web page (those with an `Origin` header) are refused with 403. The API key is required all the same.
   */
  corsOrigins?: readonly string[];
  /** Closes the gateway when aborted. */
  signal?: AbortSignal;
}

/** A request the gateway answered with a server-side error (5xx), for the operator's log. */
export interface GatewayRequestFailed {
  method: string;
  path: string;
  status: number;
  error: unknown;
}

export interface OpenAiGatewayEvents {
  "request:failed": CustomEvent<GatewayRequestFailed>;
}

/** OpenAI's usage object. */
interface OpenAiUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/**
 * Starts the gateway on `host:port` in front of `agent`.
 *
 * @example
 * const gateway = await createOpenAiGateway({ agent, model: "soulmesh-agent-7", port: 8080, signal })
 * const openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused" })
 * const r = await openai.chat.completions.create({ model: "soulmesh-agent-7", messages: [{ role: "user", content: "Hi" }] })
 * await gateway.close()
 * @throws InvalidGatewayOptionsError; GatewayListenError when the port cannot be listened on.
 */
export async function createOpenAiGateway(options: OpenAiGatewayOptions): Promise<OpenAiGateway> {
  checkOptions(options);
  options.signal?.throwIfAborted();
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 0;
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) => reject(new GatewayListenError(host, port, err)));
    server.listen(port, host, () => resolve());
  });
  const gateway = new OpenAiGateway(server, options, host);
  if (options.signal !== undefined) {
    const signal = options.signal;
    if (signal.aborted) await gateway.close();
    else signal.addEventListener("abort", () => void gateway.close(), { once: true });
  }
  return gateway;
}

function checkOptions(o: OpenAiGatewayOptions): void {
  const problems: string[] = [];
  if (typeof o.model !== "string" || !/^[\w.:-]{1,128}$/.test(o.model)) problems.push("model is 1 to 128 letters, digits, '.', ':', '_' or '-'");
  if (o.port !== undefined && (!Number.isInteger(o.port) || o.port < 0 || o.port > 65_535)) problems.push("port is an integer from 0 to 65535");
  if (o.apiKey !== undefined && o.apiKey.length === 0) problems.push("apiKey, when given, is not empty");
  if (o.maxBodyBytes !== undefined && (!Number.isSafeInteger(o.maxBodyBytes) || o.maxBodyBytes < 1024)) problems.push("maxBodyBytes is an integer of at least 1024");
  if (o.maxWaiting !== undefined && (!Number.isSafeInteger(o.maxWaiting) || o.maxWaiting < 0)) problems.push("maxWaiting is a non-negative integer");
  for (const origin of o.corsOrigins ?? []) {
    if (normalizeOrigin(origin) === undefined) problems.push(`corsOrigins has ${JSON.stringify(origin)}, which is not an origin: scheme://host[:port] without a path, or *`);
  }
  if (problems.length > 0) throw new InvalidGatewayOptionsError(problems);
}

/** A running gateway: its base URL (add `/v1` for OpenAI clients) and `close()`. Create it with {@link createOpenAiGateway}. */
export class OpenAiGateway extends TypedEventTarget<OpenAiGatewayEvents> {
  /** `http://host:port`, with the port actually listened on. */
  readonly url: string;
  readonly model: string;
  readonly #server: Server;
  readonly #agent: GatewayAgent;
  readonly #apiKey: Buffer | undefined;
  readonly #maxBodyBytes: number;
  readonly #queue: TurnQueue;
  readonly #cors: CorsPolicy;
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #closing = new AbortController();
  readonly #inFlight = new Set<Promise<void>>();
  #closed: Promise<void> | undefined;

  /** @internal Use {@link createOpenAiGateway}. */
  constructor(server: Server, options: OpenAiGatewayOptions, host: string) {
    super();
    this.#server = server;
    this.#agent = options.agent;
    this.model = options.model;
    this.#apiKey = options.apiKey !== undefined ? Buffer.from(options.apiKey) : undefined;
    this.#maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.#queue = new TurnQueue(options.maxWaiting ?? DEFAULT_MAX_WAITING);
    this.#cors = new CorsPolicy((options.corsOrigins ?? []).map((o) => normalizeOrigin(o)!));
    const { port } = server.address() as AddressInfo;
    this.url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      const handled = this.#handle(req, res).catch(() => {
        res.destroy();
      });
      this.#inFlight.add(handled);
      void handled.finally(() => this.#inFlight.delete(handled));
    });
  }

  /**
   * Stops taking requests, cancels the turns in progress or waiting (nothing recorded, the part delivered paid; their
   * clients get 503 or an error event) and closes the connections. The agent stays open. Closing twice is harmless.
   *
   * @example
   * process.once("SIGINT", () => void gateway.close())
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing.abort(new GatewayClosedError());
      const stopped = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#server.closeIdleConnections();
      await Promise.allSettled([...this.#inFlight]);
      this.#server.closeAllConnections();
      await stopped;
    })();
    return this.#closed;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? "GET";
    const path = new URL(req.url ?? "/", "http://gateway").pathname.replace(/\/+$/, "") || "/";
    const gone = new AbortController();
    res.on("close", () => {
      if (!res.writableEnded) gone.abort(new ClientDisconnectedError());
    });
    const signal = AbortSignal.any([gone.signal, this.#closing.signal]);
    try {
      signal.throwIfAborted();
      // Before the API key: an allowed page must be able to read a 401, and a preflight carries no key.
      this.#cors.apply(req, res);
      if (this.#cors.isPreflight(req) && isRoute(path)) {
        this.#cors.answerPreflight(req, res);
        return;
      }
      this.#authorize(req);
      if (path === "/v1/models") {
        allow(method, "GET");
        sendJson(res, 200, { object: "list", data: [this.#modelObject()] });
      } else if (path.startsWith("/v1/models/")) {
        allow(method, "GET");
        const id = decodeURIComponent(path.slice("/v1/models/".length));
        if (id !== this.model) throw modelNotFound(id, this.model);
        sendJson(res, 200, this.#modelObject());
      } else if (path === "/v1/chat/completions") {
        allow(method, "POST");
        await this.#chat(req, res, signal);
      } else {
        throw new OpenAiRequestError(404, "invalid_request_error", "unknown_url", `Unknown path ${method} ${path}: this gateway serves /v1/models and /v1/chat/completions.`);
      }
    } catch (err) {
      this.#fail(req, res, method, path, signal.aborted ? cancelReason(signal, err) : err);
    }
  }

  #authorize(req: IncomingMessage): void {
    if (this.#apiKey === undefined) return;
    const header = req.headers.authorization ?? "";
    const given = Buffer.from(/^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim() ?? "");
    if (given.length !== this.#apiKey.length || !timingSafeEqual(given, this.#apiKey)) {
      throw new OpenAiRequestError(
        401,
        "invalid_request_error",
        "invalid_api_key",
        header === "" ? "No API key: send `Authorization: Bearer <key>`, the key `soulmesh serve` was started with." : "Incorrect API key: use the key `soulmesh serve` was started with.",
      );
    }
  }

  #modelObject(): { id: string; object: "model"; created: number; owned_by: string } {
    return { id: this.model, object: "model", created: this.#created, owned_by: "soulmesh" };
  }

  async #chat(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const body = await readJsonBody(req, this.#maxBodyBytes);
    const request = parseChatRequest(body, this.model);
    const release = await this.#queue.acquire(signal);
    try {
      if (request.stream) await this.#stream(request, res, signal);
      else await this.#complete(request, res, signal);
    } finally {
      release();
    }
  }

  async #complete(request: ChatRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const reply = await this.#agent.send(request.message, sendOptions(request, signal));
    sendJson(
      res,
      200,
      {
        id: completionId(),
        object: "chat.completion",
        created: Math.floor(Date.now() / 1000),
        model: this.model,
        choices: [{ index: 0, message: { role: "assistant", content: reply.reply, refusal: null }, logprobs: null, finish_reason: finishReason(reply) }],
        usage: usageOf(reply),
      },
      { ...ignoredHeader(request), "x-soulmesh-provider": reply.provider, "x-soulmesh-cost": reply.cost.toString() },
    );
  }

  async #stream(request: ChatRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const restarted = new AbortController();
    const turnSignal = AbortSignal.any([signal, restarted.signal]);
    const id = completionId();
    const created = Math.floor(Date.now() / 1000);
    const usageField = request.includeUsage ? { usage: null } : {};
    const chunk = (delta: Record<string, unknown>, finish: string | null = null): Record<string, unknown> => ({
      id,
      object: "chat.completion.chunk",
      created,
      model: this.model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...usageField,
    });
    let started = false;
    const begin = (): void => {
      if (started) return;
      started = true;
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive", ...ignoredHeader(request) });
      writeEvent(res, chunk({ role: "assistant", content: "" }));
    };
    let streamed = false;
    const onRetry = (e: AgentEvents["turn:retry"]): void => {
      if (streamed) restarted.abort(new ReplyRestartedError(e.detail.failed));
    };
    this.#agent.addEventListener("turn:retry", onRetry);
    let reply: AgentReply;
    try {
      reply = await this.#agent.send(request.message, {
        ...sendOptions(request, turnSignal),
        onToken: (text) => {
          begin();
          streamed = true;
          writeEvent(res, chunk({ content: text }));
        },
      });
    } catch (err) {
      const reason = signal.aborted ? cancelReason(signal, err) : restarted.signal.aborted ? (restarted.signal.reason as Error) : err;
      if (!started) throw reason;
      if (!res.writableEnded && !res.destroyed) {
        writeEvent(res, { error: toOpenAiError(reason).body.error });
        res.end();
      }
      if (!(reason instanceof ClientDisconnectedError || reason instanceof TurnCancelledError)) this.#report("POST", "/v1/chat/completions", toOpenAiError(reason).status, reason);
      return;
    } finally {
      this.#agent.removeEventListener("turn:retry", onRetry);
    }
    begin();
    writeEvent(res, chunk({}, finishReason(reply)));
    if (request.includeUsage) writeEvent(res, { id, object: "chat.completion.chunk", created, model: this.model, choices: [], usage: usageOf(reply) });
    res.end("data: [DONE]\n\n");
  }

  #fail(req: IncomingMessage, res: ServerResponse, method: string, path: string, err: unknown): void {
    const { status, body, headers } = toOpenAiError(err);
    if (status >= 500 && !(err instanceof ClientDisconnectedError)) this.#report(method, path, status, err);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    // A body left unread (413, or an early error) would otherwise stall the connection: close it after the answer.
    if (!req.complete) headers.connection = "close";
    sendJson(res, status, body, headers);
  }

  #report(method: string, path: string, status: number, error: unknown): void {
    this.dispatchEvent(new CustomEvent("request:failed", { detail: { method, path, status, error } }));
  }
}

/** Whether `path` is one the gateway serves. */
function isRoute(path: string): boolean {
  return path === "/v1/models" || path.startsWith("/v1/models/") || path === "/v1/chat/completions";
}

function allow(method: string, allowed: string): void {
  if (method !== allowed) {
    throw Object.assign(
      new OpenAiRequestError(405, "invalid_request_error", "method_not_allowed", `Method ${method} is not allowed here: use ${allowed}.`),
      { allow: allowed },
    );
  }
}

function modelNotFound(id: string, model: string): OpenAiRequestError {
  return new OpenAiRequestError(404, "invalid_request_error", "model_not_found", `The model \`${id}\` does not exist here: this gateway serves \`${model}\`.`, "model");
}

/** Why a request's signal aborted (client gone, gateway closing), when that is what ended it. */
function cancelReason(signal: AbortSignal, err: unknown): unknown {
  return err instanceof TurnCancelledError || err === signal.reason ? signal.reason : err;
}

function sendOptions(request: ChatRequest, signal: AbortSignal): SendOptions {
  return {
    signal,
    ...(request.maxTokens !== undefined && { maxTokens: request.maxTokens }),
    ...(request.speaker !== undefined && { speaker: request.speaker }),
  };
}

function ignoredHeader(request: ChatRequest): Record<string, string> {
  return { "x-soulmesh-ignored-messages": String(request.ignoredMessages) };
}

function completionId(): string {
  return `chatcmpl-${randomUUID().replaceAll("-", "")}`;
}

function finishReason(reply: Pick<AgentReply, "stopReason">): "stop" | "length" {
  return reply.stopReason === "length" ? "length" : "stop";
}

function usageOf(reply: Pick<AgentReply, "usage">): OpenAiUsage {
  const { inputTokens, outputTokens, cachedInputTokens } = reply.usage;
  return {
    prompt_tokens: inputTokens,
    completion_tokens: outputTokens,
    total_tokens: inputTokens + outputTokens,
    prompt_tokens_details: { cached_tokens: cachedInputTokens },
  };
}

function writeEvent(res: ServerResponse, data: unknown): void {
  if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Beyond this many times the limit, an oversized body is cut off rather than read to the end to answer 413. */
const DRAIN_FACTOR = 16;

/**
 * Reads and parses a JSON body of at most `limit` bytes. An oversized one is still read (up to a point) so
 * the client, which sends it whole before reading, gets the 413 rather than a broken connection.
 *
 * @throws OpenAiRequestError 413 for a body over `limit`, 400 for one that is not JSON.
 */
async function readJsonBody(req: IncomingMessage, limit: number): Promise<unknown> {
  const declared = Number(req.headers["content-length"]);
  const chunks: Buffer[] = [];
  let size = 0;
  if (!(Number.isFinite(declared) && declared > limit * DRAIN_FACTOR)) {
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limit * DRAIN_FACTOR) break;
      if (size <= limit) chunks.push(chunk);
    }
  } else {
    size = declared;
  }
  if (size > limit) {
    throw new OpenAiRequestError(413, "invalid_request_error", "request_too_large", `The request body is over ${limit} bytes: send a shorter message.`);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new OpenAiRequestError(
      400,
      "invalid_request_error",
      "invalid_json",
      `The request body is not valid JSON (${err instanceof Error ? err.message : String(err)}): send a JSON object with \`model\` and \`messages\`.`,
      null,
      { cause: err },
    );
  }
}

/** An error as OpenAI's clients expect it: status, `{ error }` body, and headers (retry hints, Allow). */
interface OpenAiErrorResponse {
  status: number;
  body: { error: { message: string; type: string; code: string; param: string | null } };
  headers: Record<string, string>;
}

/**
 * Maps what a request failed with to OpenAI's error shape: the gateway's own request errors as they are,
 * the agent's and the chat's errors to the statuses clients handle (402 funds, 503 providers…), anything
 * else to 500.
 *
 * @example
 * toOpenAiError(new NoProviderError(sha)).status // 503
 */
export function toOpenAiError(err: unknown): OpenAiErrorResponse {
  const e = openAiRequestErrorOf(err);
  const headers: Record<string, string> = {};
  const allowHeader = (err as { allow?: unknown }).allow;
  if (typeof allowHeader === "string") headers.allow = allowHeader;
  // OpenAI's clients retry 429 and 5xx by themselves; tell them when waiting will not help.
  if (e.status === 429) headers["retry-after"] = "1";
  if (e.code === "no_provider" || e.code === "agent_closed" || e.code === "gateway_closing") headers["x-should-retry"] = "false";
  return { status: e.status, body: { error: { message: e.message, type: e.type, code: e.code, param: e.param } }, headers };
}

function openAiRequestErrorOf(err: unknown): OpenAiRequestError {
  if (err instanceof OpenAiRequestError) return err;
  const server = (status: number, code: string, message: string): OpenAiRequestError =>
    new OpenAiRequestError(status, status === 402 ? "insufficient_quota" : status === 429 ? "rate_limit_error" : status < 500 ? "invalid_request_error" : "server_error", code, message, null, { cause: err });
  // Funds are read live at each session: a deposit made while serving is used by the next request.
  if (err instanceof EscrowTooLowError) {
    const s = err.shortfall;
    return server(
      402,
      "escrow_too_low",
      s === undefined
        ? `The escrow funds of ${err.payer} do not cover this agent's spending cap at any provider: deposit more with \`soulmesh deposit AMOUNT\` (the next request uses it), or start \`soulmesh serve\` with a lower --max-spend.`
        : `The funds of ${err.payer} cannot pay a reply of this length at provider ${s.provider} (up to ${s.needed} token units with royalty and fee; lane ${s.lane}, free deposit ${s.deposit}, wallet ${s.wallet}): deposit more with \`soulmesh deposit AMOUNT\` (the next request uses it), or ask for fewer max_tokens.`,
    );
  }
  if (err instanceof LaneReleasingError) return server(402, "lane_released", err.message);
  if (err instanceof SpendingCapReachedError) {
    return server(402, "spending_cap_reached", `This gateway's chat has reached its spending cap (${err.spent} of ${err.cap} token units spent, provider, royalty and fee): restart \`soulmesh serve\` with a higher --max-spend, or ask for fewer max_tokens.`);
  }
  if (err instanceof NoProviderError) return server(503, "no_provider", err.message);
  if (err instanceof AllProvidersFailedError) return server(503, "providers_failed", err.message);
  if (err instanceof ReplyRestartedError) return server(502, "provider_failed", err.message);
  if (err instanceof TurnInProgressError) return server(429, "turn_in_progress", "The agent is answering another message (from another program using it): send this one again in a moment.");
  if (err instanceof AgentClosedError) return server(503, "agent_closed", "The agent is closed: restart `soulmesh serve`.");
  if (err instanceof GatewayClosedError) return server(503, "gateway_closing", err.message);
  if (err instanceof ClientDisconnectedError || err instanceof TurnCancelledError) return server(499, "cancelled", err.message);
  if (err instanceof InvalidAgentOptionsError) return server(400, "invalid_value", err.message);
  if (err instanceof SoulmeshError) return server(500, err.name, err.message);
  return server(500, "internal_error", `The gateway failed: ${err instanceof Error ? err.message : String(err)}. See the gateway's log.`);
}
