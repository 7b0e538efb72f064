/**
 * The provider's Prometheus metrics (its own registry, every name prefixed `soulmesh_`) and the local HTTP
 * server that exposes them (GET /metrics) with the daemon's status (GET /status, JSON).
 *
 * Counters and histograms follow the events of the parts they watch (the paid protocols, the engine, the
 * voucher book, the settlement worker); gauges of state (queue, sessions, memory, earnings) are read when
 * scraped, so that they are never stale.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { BookEntry, VoucherBook } from "../billing/voucher-book.js";
import type { SettlementWorker } from "../billing/settlement.js";
import type { InferenceEngine } from "../engine/index.js";
import type { ProviderProtocols } from "../p2p/provider-protocols.js";
import { errorToWire } from "../../sdk/protocol/index.js";
import { MetricsPortError } from "./errors.js";

export interface ProviderMetricsOptions {
  /** The window of the tokens-per-second gauges; default 60 s. */
  windowMs?: number;
  /** Node.js process metrics (CPU, memory, event loop) as soulmesh_process_…; default true. */
  processMetrics?: boolean;
  /** The clock (ms); injectable for tests. */
  now?: () => number;
}

/** Settlement counters for /status. */
export interface SettlementSummary {
  sent: number;
  confirmed: number;
  failures: number;
  dropped: number;
  /** Token units taken from lanes by confirmed settlements, as their VoucherSettled logs say (all shares). */
  paid: bigint;
  /** This provider's share of `paid`, as the logs say: what it earned. */
  earned: bigint;
  lastTxHash: string | undefined;
  lastConfirmedAt: number | undefined;
  lastError: string | undefined;
}

type Unbind = () => void;

const TURN_SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TTFT_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A failed request's error code: the wire code of a ProtocolError or a refusal, else InternalError. */
export function failureCode(error: unknown): string {
  if (typeof error === "object" && error !== null && (error as { type?: unknown }).type === "session.rejected") {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string") return code;
  }
  return errorToWire(error).code;
}

/**
 * What the chain paid this provider for a book entry's session: the provider shares of the VoucherSettled logs
 * of this node's confirmed settlements, never what the book expected them to pay.
 *
 * @example
 * const earned = (await book.entries()).reduce((sum, e) => sum + settledProviderAmount(e), 0n)
 */
export function settledProviderAmount(e: BookEntry): bigint {
  return e.earned.providerAmount;
}

/**
 * The provider's metrics. Create one, bind the parts, expose {@link registry}.
 *
 * @example
 * const metrics = new ProviderMetrics()
 * metrics.bindProtocols(protocols); metrics.bindEngine(engine); metrics.bindBook(book); metrics.bindWorker(worker)
 * const server = await serveProviderHttp({ metrics, status: () => node.status(), port: 9464 })
 */
export class ProviderMetrics {
  readonly registry = new Registry();
  readonly #now: () => number;
  readonly #windowMs: number;
  readonly #unbind: Unbind[] = [];
  readonly #window: { at: number; tokens: number; durationMs: number }[] = [];
  #earningsTimer: ReturnType<typeof setInterval> | undefined;
  #claimable: bigint | undefined;
  readonly settlement: SettlementSummary = {
    sent: 0,
    confirmed: 0,
    failures: 0,
    dropped: 0,
    paid: 0n,
    earned: 0n,
    lastTxHash: undefined,
    lastConfirmedAt: undefined,
    lastError: undefined,
  };

  readonly outputTokens: Counter;
  readonly billedInputTokens: Counter;
  readonly cachedInputTokens: Counter;
  readonly turns: Counter<"stop_reason">;
  readonly turnDuration: Histogram;
  readonly ttft: Histogram;
  readonly sessionsOpened: Counter;
  readonly sessionsClosed: Counter<"reason">;
  readonly vouchersAccepted: Counter;
  readonly settlementTransactions: Counter<"state">;
  readonly settlementFailures: Counter;
  readonly settlementPaid: Counter;
  readonly droppedVouchers: Counter<"reason" | "permanent">;
  readonly requestFailures: Counter<"protocol" | "code">;
  readonly streamsRefused: Counter<"protocol" | "reason">;

  #engine: InferenceEngine | undefined;
  #protocols: Pick<ProviderProtocols, "sessions"> | undefined;
  #book: VoucherBook | undefined;

  constructor(options: ProviderMetricsOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#windowMs = options.windowMs ?? 60_000;
    const registers = [this.registry];
    const self = this;
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: "soulmesh_" });

    this.outputTokens = new Counter({ name: "soulmesh_output_tokens_total", help: "Tokens generated (billed output).", registers });
    this.billedInputTokens = new Counter({
      name: "soulmesh_billed_input_tokens_total",
      help: "Prompt tokens evaluated and billed (prompt minus the part reused from the KV cache).",
      registers,
    });
    this.cachedInputTokens = new Counter({
      name: "soulmesh_cached_input_tokens_total",
      help: "Prompt tokens reused from the KV cache (not billed).",
      registers,
    });
    this.turns = new Counter({
      name: "soulmesh_turns_total",
      help: "Inference turns served, by stop reason (stop, length, abort).",
      labelNames: ["stop_reason"],
      registers,
    });
    this.turnDuration = new Histogram({
      name: "soulmesh_turn_duration_seconds",
      help: "Time from a turn's admission to its last token.",
      buckets: TURN_SECONDS,
      registers,
    });
    this.ttft = new Histogram({
      name: "soulmesh_time_to_first_token_seconds",
      help: "Time from a turn's request to its first streamed token.",
      buckets: TTFT_SECONDS,
      registers,
    });
    new Gauge({
      name: "soulmesh_output_tokens_per_second",
      help: "Output tokens per second over the last minute (throughput of the whole node).",
      registers,
      collect() {
        this.set(self.outputTokensPerSecond());
      },
    });
    new Gauge({
      name: "soulmesh_generation_tokens_per_second",
      help: "Output tokens per second of generation time, over the turns that ended in the last minute.",
      registers,
      collect() {
        this.set(self.generationTokensPerSecond());
      },
    });
    new Gauge({
      name: "soulmesh_engine_queue_length",
      help: "Generations running and waiting in the engine's admission queue.",
      labelNames: ["state"],
      registers,
      collect() {
        const load = self.#engine?.load;
        this.set({ state: "running" }, load?.running ?? 0);
        this.set({ state: "queued" }, load?.queued ?? 0);
      },
    });
    new Gauge({
      name: "soulmesh_engine_sessions",
      help: "Sessions open in the engine (hot or saved to disk).",
      registers,
      collect() {
        this.set(self.#engine?.load.sessions ?? 0);
      },
    });
    new Gauge({
      name: "soulmesh_engine_contexts",
      help: "llama.cpp contexts allocated.",
      registers,
      collect() {
        this.set(self.#engine?.load.contexts ?? 0);
      },
    });
    new Gauge({
      name: "soulmesh_engine_context_memory_bytes",
      help: "Memory taken by the engine's contexts.",
      registers,
      collect() {
        this.set(self.#engine?.load.memoryBytes ?? 0);
      },
    });
    new Gauge({
      name: "soulmesh_open_sessions",
      help: "Paid sessions open (accepted and not yet closed).",
      registers,
      collect() {
        this.set(self.#protocols?.sessions().length ?? 0);
      },
    });
    this.sessionsOpened = new Counter({ name: "soulmesh_sessions_opened_total", help: "Paid sessions accepted.", registers });
    this.sessionsClosed = new Counter({
      name: "soulmesh_sessions_closed_total",
      help: "Paid sessions closed, by reason (expired, idle, stopped).",
      labelNames: ["reason"],
      registers,
    });
    this.vouchersAccepted = new Counter({ name: "soulmesh_vouchers_accepted_total", help: "Vouchers accepted into the book.", registers });
    new Gauge({
      name: "soulmesh_earnings_unsettled_units",
      help: "The provider's share of vouchers held and not yet settled, in token units.",
      registers,
      async collect() {
        const book = self.#book;
        if (book === undefined) return this.set(0);
        try {
          this.set(toNumber((await book.outstanding()).reduce((sum, c) => sum + c.providerAmount, 0n)));
        } catch {
          // The book closed (the node is stopping): keep the last value.
        }
      },
    });
    new Gauge({
      name: "soulmesh_earnings_settled_units",
      help: "The provider's share of everything this node's settlements were paid, as their VoucherSettled logs say, in token units.",
      registers,
      async collect() {
        const book = self.#book;
        if (book === undefined) return this.set(0);
        try {
          this.set(toNumber((await book.entries()).reduce((sum, e) => sum + settledProviderAmount(e), 0n)));
        } catch {
          // As above.
        }
      },
    });
    new Gauge({
      name: "soulmesh_earnings_claimable_units",
      help: "The escrow's earningsOf(provider): earnings settled and not withdrawn (polled), in token units.",
      registers,
      collect() {
        if (self.#claimable !== undefined) this.set(toNumber(self.#claimable));
      },
    });
    this.settlementTransactions = new Counter({
      name: "soulmesh_settlement_transactions_total",
      help: "settleBatch transactions, by state (sent, confirmed).",
      labelNames: ["state"],
      registers,
    });
    this.settlementTransactions.inc({ state: "sent" }, 0);
    this.settlementTransactions.inc({ state: "confirmed" }, 0);
    this.settlementFailures = new Counter({
      name: "soulmesh_settlement_failures_total",
      help: "Settlement attempts that failed (each retry counts).",
      registers,
    });
    this.settlementPaid = new Counter({
      name: "soulmesh_settlement_paid_units_total",
      help: "Token units taken from lanes by confirmed settlements, as their VoucherSettled logs say (provider, royalty and fee shares).",
      registers,
    });
    this.droppedVouchers = new Counter({
      name: "soulmesh_settlement_dropped_vouchers_total",
      help: "Vouchers left out of a settlement, by reason; permanent=\"true\" ones can never settle.",
      labelNames: ["reason", "permanent"],
      registers,
    });
    this.requestFailures = new Counter({
      name: "soulmesh_request_failures_total",
      help: "Requests answered with an error or a refusal, by protocol and error code.",
      labelNames: ["protocol", "code"],
      registers,
    });
    this.streamsRefused = new Counter({
      name: "soulmesh_streams_refused_total",
      help:
        "Streams answered ProviderBusyError before their request was read, by protocol and reason (peer-limit: the " +
        "peer's own streams; reserved: the slots kept for peers with an open session; capacity: all slots taken).",
      labelNames: ["protocol", "reason"],
      registers,
    });
  }

  /** Output tokens per second over the window (tokens of turns that ended in it, over its length). */
  outputTokensPerSecond(): number {
    const recent = this.#recent();
    return recent.reduce((sum, t) => sum + t.tokens, 0) / (this.#windowMs / 1000);
  }

  /** Output tokens per second of generation, over the turns that ended in the window. */
  generationTokensPerSecond(): number {
    const recent = this.#recent();
    const ms = recent.reduce((sum, t) => sum + t.durationMs, 0);
    return ms > 0 ? recent.reduce((sum, t) => sum + t.tokens, 0) / (ms / 1000) : 0;
  }

  /** The last polled earningsOf(provider), or undefined before the first poll. */
  get claimable(): bigint | undefined {
    return this.#claimable;
  }

  /** Counts turns, tokens, latencies, sessions and failures from the paid protocols' events. */
  bindProtocols(protocols: ProviderProtocols): void {
    this.#protocols = protocols;
    this.#on(protocols, "turn:served", (e) => {
      const d = (e as CustomEvent<{ usage: { cachedInputTokens: number }; billedInputTokens: number; outputTokens: number; ttftMs: number; durationMs: number; stopReason: string }>).detail;
      this.outputTokens.inc(d.outputTokens);
      this.billedInputTokens.inc(d.billedInputTokens);
      this.cachedInputTokens.inc(d.usage.cachedInputTokens);
      this.turns.inc({ stop_reason: d.stopReason });
      this.turnDuration.observe(d.durationMs / 1000);
      if (d.outputTokens > 0) this.ttft.observe(d.ttftMs / 1000);
      this.#window.push({ at: this.#now(), tokens: d.outputTokens, durationMs: d.durationMs });
    });
    this.#on(protocols, "session:opened", () => this.sessionsOpened.inc());
    this.#on(protocols, "session:closed", (e) => {
      this.sessionsClosed.inc({ reason: (e as CustomEvent<{ reason: string }>).detail.reason });
    });
    this.#on(protocols, "request:failed", (e) => {
      const { protocol, error } = (e as CustomEvent<{ protocol: string; error: unknown }>).detail;
      this.requestFailures.inc({ protocol, code: failureCode(error) });
    });
    this.#on(protocols, "stream:refused", (e) => {
      const { protocol, reason } = (e as CustomEvent<{ protocol: string; reason: string }>).detail;
      this.streamsRefused.inc({ protocol, reason });
    });
  }

  /** Counts failures and refused streams of another protocol service (e.g. quote) under `protocol`. */
  bindService(service: EventTarget, protocol: string): void {
    this.#on(service, "request:failed", (e) => {
      this.requestFailures.inc({ protocol, code: failureCode((e as CustomEvent<{ error: unknown }>).detail.error) });
    });
    this.#on(service, "stream:refused", (e) => {
      this.streamsRefused.inc({ protocol, reason: (e as CustomEvent<{ reason: string }>).detail.reason });
    });
  }

  /** Reads the engine's queue, sessions, contexts and memory at each scrape. */
  bindEngine(engine: InferenceEngine): void {
    this.#engine = engine;
  }

  /** Counts accepted vouchers and reads the earnings from the book at each scrape. */
  bindBook(book: VoucherBook): void {
    this.#book = book;
    this.#on(book, "voucher:accepted", () => this.vouchersAccepted.inc());
  }

  /** Counts settlement transactions, failures, drops and amounts. */
  bindWorker(worker: SettlementWorker): void {
    this.#on(worker, "settlement:sent", (e) => {
      this.settlementTransactions.inc({ state: "sent" });
      this.settlement.sent++;
      this.settlement.lastTxHash = (e as CustomEvent<{ txHash: string }>).detail.txHash;
    });
    this.#on(worker, "settlement:confirmed", (e) => {
      // What the receipt's VoucherSettled logs say was paid, not what the batch was planned to pay.
      const { paid, providerAmount } = (e as CustomEvent<{ paid: bigint; providerAmount?: bigint }>).detail;
      this.settlementTransactions.inc({ state: "confirmed" });
      this.settlementPaid.inc(toNumber(paid));
      this.settlement.confirmed++;
      this.settlement.paid += paid;
      this.settlement.earned += providerAmount ?? 0n;
      this.settlement.lastConfirmedAt = this.#now();
      this.#pollNow?.();
    });
    this.#on(worker, "settlement:failed", (e) => {
      const { error } = (e as CustomEvent<{ error: unknown }>).detail;
      this.settlementFailures.inc();
      this.settlement.failures++;
      this.settlement.lastError = error instanceof Error ? error.message : String(error);
    });
    this.#on(worker, "settlement:dropped", (e) => {
      const { reason, permanent } = (e as CustomEvent<{ reason: string; permanent: boolean }>).detail;
      this.droppedVouchers.inc({ reason, permanent: String(permanent) });
      if (permanent) this.settlement.dropped++;
    });
  }

  #pollNow: (() => void) | undefined;

  /**
   * Polls the on-chain claimable earnings every `intervalMs` (and after each confirmed settlement). A
   * failed read keeps the last value.
   */
  pollEarnings(read: () => Promise<bigint>, intervalMs: number): void {
    let running = false;
    const poll = (): void => {
      if (running) return;
      running = true;
      read()
        .then((v) => (this.#claimable = v))
        .catch(() => {})
        .finally(() => (running = false));
    };
    this.#pollNow = poll;
    poll();
    clearInterval(this.#earningsTimer);
    this.#earningsTimer = setInterval(poll, intervalMs);
    this.#earningsTimer.unref?.();
  }

  /** Prometheus text exposition. */
  exposition(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stops polling and listening. The registry stays readable. */
  close(): void {
    clearInterval(this.#earningsTimer);
    this.#earningsTimer = undefined;
    this.#pollNow = undefined;
    for (const unbind of this.#unbind.splice(0)) unbind();
  }

  #recent(): { at: number; tokens: number; durationMs: number }[] {
    const since = this.#now() - this.#windowMs;
    while (this.#window.length > 0 && this.#window[0]!.at < since) this.#window.shift();
    return this.#window;
  }

  #on(target: EventTarget, type: string, listener: (e: Event) => void): void {
    target.addEventListener(type, listener);
    this.#unbind.push(() => target.removeEventListener(type, listener));
  }
}

function toNumber(units: bigint): number {
  return Number(units);
}

// -------------------------------------------------------------------------------------------- the HTTP server

export interface ProviderHttpOptions {
  metrics: ProviderMetrics;
  /** The /status document (bigints are written as decimal strings). */
  status: () => unknown;
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 picks a free port. */
  port: number;
}

export interface ProviderHttpServer {
  /** e.g. http://127.0.0.1:9464 */
  readonly url: string;
  /** `${url}/metrics` */
  readonly metricsUrl: string;
  close(): Promise<void>;
}

/**
 * JSON with bigints as decimal strings.
 *
 * @example
 * jsonWithBigints({ paid: 5n }) // '{"paid":"5"}'
 */
export function jsonWithBigints(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? v.toString() : v), space);
}

/**
 * Serves GET /metrics (Prometheus text) and GET /status (JSON) on loopback; anything else is 404.
 *
 * @example
 * const http = await serveProviderHttp({ metrics, status: () => node.status(), port: 0 })
 * console.log(http.metricsUrl)
 * @throws MetricsPortError when the port cannot be bound.
 */
export async function serveProviderHttp(options: ProviderHttpOptions): Promise<ProviderHttpServer> {
  const host = options.host ?? "127.0.0.1";
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    const known = path === "/metrics" || path === "/status";
    if (!known) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("Not found: try /metrics or /status\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" }).end("Method not allowed\n");
      return;
    }
    const answer = async (): Promise<{ type: string; body: string }> => {
      if (path === "/metrics") return { type: options.metrics.registry.contentType, body: await options.metrics.exposition() };
      return { type: "application/json; charset=utf-8", body: `${jsonWithBigints(await options.status(), 2)}\n` };
    };
    answer().then(
      ({ type, body }) => {
        res.writeHead(200, { "content-type": type, "cache-control": "no-store" });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
        res.end(`error: ${err instanceof Error ? err.message : String(err)}\n`);
      },
    );
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: unknown): void => reject(new MetricsPortError(options.port, err));
    server.once("error", onError);
    server.listen(options.port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  let closed: Promise<void> | undefined;
  return {
    url,
    metricsUrl: `${url}/metrics`,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
