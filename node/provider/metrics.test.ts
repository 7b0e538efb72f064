/**
 * The provider's metrics: the exposition parses and its values follow the events of a real voucher book (real
 * signed vouchers accepted and settled in LevelDB), a real settlement worker and the paid protocols' events;
 * the tokens-per-second gauges forget turns older than their window; the HTTP server answers /metrics,
 * /status, 404 and 405, and refuses a taken port with a typed error.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { voucherCost } from "../../sdk/chain/voucher.js";
import { createTestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD } from "../../test/helpers/soulmesh.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { InferenceEscrow } from "../../sdk/chain/contracts.js";
import { signVoucher, type Voucher } from "../../sdk/chain/voucher.js";
import { InsufficientEscrowError } from "../../sdk/protocol/index.js";
import { parseExposition, sample } from "../../test/provider/prom.js";
import { SettlementWorker } from "../billing/settlement.js";
import { sessionKeyOf as sessionKey, VoucherBook } from "../billing/voucher-book.js";
import { decodeRevert } from "../../sdk/chain/revert.js";

const decodeRevertName = (e: unknown) => decodeRevert(e)?.reason;
import type { ProviderProtocols } from "../p2p/provider-protocols.js";
import { MetricsPortError } from "./errors.js";
import { failureCode, ProviderMetrics, serveProviderHttp } from "./metrics.js";

const escrow = { chainId: 31337, address: Wallet.createRandom().address };
const provider = Wallet.createRandom();
const payer = Wallet.createRandom();
let dir: string;
let book: VoucherBook;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-metrics-"));
  book = new VoucherBook({ dir, escrow, provider: provider.address });
  await book.start();
});

afterAll(async () => {
  await book?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** The paid protocols' events, dispatched as ProviderProtocols dispatches them. */
class FakeProtocols extends EventTarget {
  open: unknown[] = [];
  sessions() {
    return this.open;
  }
  emit(type: string, detail: unknown) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

async function voucher(session: bigint, inputTokens: bigint, outputTokens: bigint) {
  const v: Voucher = {
    payer: payer.address,
    provider: provider.address,
    agentId: 7n,
    session,
    inputTokens,
    outputTokens,
    priceInputPerMillion: 500_000n,
    priceOutputPerMillion: 1_500_000n,
    royaltyPerMillion: 0n,
    feeBps: 0n,
    expiry: BigInt(Math.floor(Date.now() / 1000) + 3600),
  };
  return { v, sig: await signVoucher(payer, v, escrow) };
}

describe("ProviderMetrics", () => {
  it("follows turns, sessions, failures, vouchers, earnings and settlements", async () => {
    let now = 1_000_000;
    const metrics = new ProviderMetrics({ now: () => now, processMetrics: false });
    const protocols = new FakeProtocols();
    const worker = new SettlementWorker({ book, escrow: {} as InferenceEscrow, policy: { intervalMs: 0, amountThreshold: 0n, maxBatch: 10 } });
    metrics.bindProtocols(protocols as unknown as ProviderProtocols);
    metrics.bindBook(book);
    metrics.bindWorker(worker);
    const scrape = async () => parseExposition(await metrics.exposition());

    let s = await scrape();
    expect(sample(s, "soulmesh_output_tokens_total")).toBe(0);
    expect(sample(s, "soulmesh_earnings_unsettled_units")).toBe(0);
    expect(sample(s, 'soulmesh_settlement_transactions_total{state="sent"}')).toBe(0);
    expect(sample(s, "soulmesh_open_sessions")).toBe(0);

    protocols.emit("session:opened", { sessionId: "0x01", payer: payer.address, agentId: 7n, personaId: 1n });
    protocols.open = [{}];
    const turn = (outputTokens: number, stopReason: string, durationMs: number) =>
      protocols.emit("turn:served", {
        sessionId: "0x01",
        turn: 0,
        usage: { inputTokens: 100, cachedInputTokens: 40, outputTokens },
        billedInputTokens: 60,
        outputTokens,
        ttftMs: 20,
        durationMs,
        stopReason,
        aborted: stopReason === "abort",
      });
    turn(30, "length", 1_000);
    turn(30, "stop", 2_000);
    protocols.emit("request:failed", { protocol: "inference", error: new InsufficientEscrowError("cap") });
    protocols.emit("request:failed", {
      protocol: "session",
      error: { type: "session.rejected", code: "PersonaUnavailableError", message: "x", retryable: false },
    });
    protocols.emit("request:failed", { protocol: "voucher", error: new Error("boom") });
    // Streams turned away unread (attack 5): counted apart from the requests that failed.
    protocols.emit("stream:refused", { protocol: "voucher", reason: "peer-limit" });
    protocols.emit("stream:refused", { protocol: "voucher", reason: "peer-limit" });
    protocols.emit("stream:refused", { protocol: "inference", reason: "reserved" });

    // A real voucher accepted by the book: 60 input and 60 output tokens at 0.5 and 1.5 per million.
    const first = await voucher(1n, 1_000_000n, 2_000_000n);
    const entry = await book.accept(first.v, first.sig, { prices: { input: 500_000n, output: 1_500_000n } });

    s = await scrape();
    expect(sample(s, "soulmesh_output_tokens_total")).toBe(60);
    expect(sample(s, "soulmesh_billed_input_tokens_total")).toBe(120);
    expect(sample(s, "soulmesh_cached_input_tokens_total")).toBe(80);
    expect(sample(s, 'soulmesh_turns_total{stop_reason="length"}')).toBe(1);
    expect(sample(s, 'soulmesh_turns_total{stop_reason="stop"}')).toBe(1);
    expect(sample(s, "soulmesh_turn_duration_seconds_count")).toBe(2);
    expect(sample(s, "soulmesh_turn_duration_seconds_sum")).toBe(3);
    expect(sample(s, 'soulmesh_turn_duration_seconds_bucket{le="1"}')).toBe(1);
    expect(sample(s, "soulmesh_time_to_first_token_seconds_count")).toBe(2);
    expect(sample(s, "soulmesh_output_tokens_per_second")).toBe(1); // 60 tokens in the last 60 s
    expect(sample(s, "soulmesh_generation_tokens_per_second")).toBe(20); // 60 tokens in 3 s of generation
    expect(sample(s, "soulmesh_sessions_opened_total")).toBe(1);
    expect(sample(s, "soulmesh_open_sessions")).toBe(1);
    expect(sample(s, 'soulmesh_request_failures_total{code="InsufficientEscrowError",protocol="inference"}')).toBe(1);
    expect(sample(s, 'soulmesh_request_failures_total{code="PersonaUnavailableError",protocol="session"}')).toBe(1);
    expect(sample(s, 'soulmesh_request_failures_total{code="InternalError",protocol="voucher"}')).toBe(1);
    expect(sample(s, 'soulmesh_streams_refused_total{protocol="voucher",reason="peer-limit"}')).toBe(2);
    expect(sample(s, 'soulmesh_streams_refused_total{protocol="inference",reason="reserved"}')).toBe(1);
    expect(sample(s, "soulmesh_vouchers_accepted_total")).toBe(1);
    // 1M input at 0.5 + 2M output at 1.5 per million.
    expect(sample(s, "soulmesh_earnings_unsettled_units")).toBe(500_000 + 3_000_000);
    expect(sample(s, "soulmesh_earnings_settled_units")).toBe(0);

    // Half of it settles on chain: the book records it with what the receipt's log says was paid (the worker
    // does this), and the worker reports the transaction.
    await book.markSettled(entry.key, { inputTokens: 1_000_000n, outputTokens: 0n }, { earned: { providerAmount: 500_000n, total: 625_000n } });
    worker.dispatchEvent(new CustomEvent("settlement:sent", { detail: { txHash: "0xaa", keys: [entry.key], trigger: "close" } }));
    worker.dispatchEvent(
      new CustomEvent("settlement:confirmed", {
        detail: { txHash: "0xaa", keys: [entry.key], skipped: [], blockNumber: 9, paid: 625_000n, providerAmount: 500_000n },
      }),
    );
    worker.dispatchEvent(new CustomEvent("settlement:failed", { detail: { keys: [], error: new Error("rpc down"), attempt: 1, willRetry: true } }));
    worker.dispatchEvent(new CustomEvent("settlement:dropped", { detail: { key: entry.key, reason: "Escrow__VoucherExpired", permanent: true } }));
    protocols.emit("session:closed", { sessionId: "0x01", sessionKey: entry.key, reason: "expired" });
    protocols.open = [];
    now += 61_000;

    s = await scrape();
    expect(sample(s, "soulmesh_earnings_unsettled_units")).toBe(3_000_000);
    expect(sample(s, "soulmesh_earnings_settled_units")).toBe(500_000);
    expect(sample(s, 'soulmesh_settlement_transactions_total{state="sent"}')).toBe(1);
    expect(sample(s, 'soulmesh_settlement_transactions_total{state="confirmed"}')).toBe(1);
    expect(sample(s, "soulmesh_settlement_paid_units_total")).toBe(625_000);
    expect(sample(s, "soulmesh_settlement_failures_total")).toBe(1);
    expect(sample(s, 'soulmesh_settlement_dropped_vouchers_total{permanent="true",reason="Escrow__VoucherExpired"}')).toBe(1);
    expect(sample(s, 'soulmesh_sessions_closed_total{reason="expired"}')).toBe(1);
    expect(sample(s, "soulmesh_open_sessions")).toBe(0);
    expect(sample(s, "soulmesh_output_tokens_per_second")).toBe(0); // the turns left the window
    expect(sample(s, "soulmesh_output_tokens_total")).toBe(60);
    expect(metrics.settlement).toMatchObject({ sent: 1, confirmed: 1, failures: 1, dropped: 1, paid: 625_000n, earned: 500_000n, lastTxHash: "0xaa", lastError: "rpc down" });

    // Unbound: events no longer count.
    metrics.close();
    turn(5, "stop", 100);
    expect(sample(await scrape(), "soulmesh_output_tokens_total")).toBe(60);
  });

  it("polls the on-chain earnings and keeps the last value when a read fails", async () => {
    const metrics = new ProviderMetrics({ processMetrics: false });
    let value = 42n;
    let fail = false;
    metrics.pollEarnings(async () => {
      if (fail) throw new Error("rpc down");
      return value;
    }, 20);
    await new Promise((r) => setTimeout(r, 60));
    expect(sample(parseExposition(await metrics.exposition()), "soulmesh_earnings_claimable_units")).toBe(42);
    fail = true;
    value = 7n;
    await new Promise((r) => setTimeout(r, 60));
    expect(metrics.claimable).toBe(42n);
    fail = false;
    await new Promise((r) => setTimeout(r, 60));
    expect(metrics.claimable).toBe(7n);
    metrics.close();
  });

  it("maps failures to wire codes", () => {
    expect(failureCode(new InsufficientEscrowError("x"))).toBe("InsufficientEscrowError");
    expect(failureCode({ type: "session.rejected", code: "SessionExpiredError" })).toBe("SessionExpiredError");
    expect(failureCode(new TypeError("bug"))).toBe("InternalError");
  });
});

describe("serveProviderHttp", () => {
  it("serves /metrics and /status on loopback, 404 elsewhere, and refuses a taken port", async () => {
    const metrics = new ProviderMetrics();
    metrics.outputTokens.inc(3);
    const http = await serveProviderHttp({ metrics, status: () => ({ peerId: "12D3", earnings: { unsettled: 5n } }), port: 0 });
    try {
      expect(http.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const m = await fetch(http.metricsUrl);
      expect(m.status).toBe(200);
      expect(m.headers.get("content-type")).toContain("text/plain");
      const samples = parseExposition(await m.text());
      expect(sample(samples, "soulmesh_output_tokens_total")).toBe(3);
      expect(samples.has("soulmesh_process_resident_memory_bytes") || samples.has("soulmesh_process_cpu_seconds_total")).toBe(true);
      for (const name of samples.keys()) expect(name.startsWith("soulmesh_")).toBe(true);

      const st = await fetch(`${http.url}/status`);
      expect(st.status).toBe(200);
      expect(await st.json()).toEqual({ peerId: "12D3", earnings: { unsettled: "5" } });
      expect((await fetch(`${http.url}/`)).status).toBe(404);
      expect((await fetch(`${http.url}/metrics/x`)).status).toBe(404);
      expect((await fetch(http.metricsUrl, { method: "POST" })).status).toBe(405);

      const port = Number(new URL(http.url).port);
      const err = await serveProviderHttp({ metrics, status: () => ({}), port }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MetricsPortError);
      expect((err as Error).message).toContain("--metrics-port");
    } finally {
      await http.close();
      await http.close();
      metrics.close();
    }
  });

  it("answers 500 with the reason when the status cannot be built", async () => {
    const metrics = new ProviderMetrics({ processMetrics: false });
    const http = await serveProviderHttp({
      metrics,
      status: () => {
        throw new Error("book closed");
      },
      port: 0,
    });
    const res = await fetch(`${http.url}/status`);
    expect(res.status).toBe(500);
    expect(await res.text()).toContain("book closed");
    await http.close();
  });
});

describe("earnings on the escrow", () => {
  it("attack 1: a payer's own settle() of a later session reverts; the provider's voucher is paid in full and the metric is what the chain paid", async () => {
    const chain = await createTestChain();
    const folder = await mkdtemp(join(tmpdir(), "soulmesh-metrics-chain-"));
    try {
      const [, prov, user, creator] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
      const f = await deployFixture(chain, { protocolFeeBps: 250 });
      await chain.increaseTime(2 * 24 * 3600 + 1); // the fee takes effect after its delay
      const persona = await f.createPersona(creator, { royaltyPerMillion: 200_000n });
      const agent = await f.mintAgent(user, persona);
      await f.registerProvider(prov);
      await f.depositAndCommit(user, prov.address, 10n * USD);
      const escrowRef = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
      const now = await chain.now();
      const realBook = new VoucherBook({ dir: join(folder, "real"), escrow: escrowRef, provider: prov.address, now: () => now });
      await realBook.start();
      const escrow = f.as(prov).inferenceEscrow;
      const metrics = new ProviderMetrics({ processMetrics: false });
      const worker = new SettlementWorker({
        book: realBook,
        escrow,
        policy: { intervalMs: 0, amountThreshold: 0n, maxBatch: 10 },
        now: () => chain.now(),
      });
      metrics.bindBook(realBook);
      metrics.bindWorker(worker);
      try {
        // The provider served and accepted session 5's voucher.
        const served = await f.voucher(user, { provider: prov.address, agentId: agent, session: 5n, inputTokens: 40_000n, outputTokens: 9_000n, feeBps: 250n });
        await realBook.accept(served.voucher, served.signature, { rates: served.voucher });
        // The payer signs a later session at price zero and tries to settle it itself, to void session 5.
        const voiding = await f.voucher(user, {
          provider: prov.address, agentId: agent, session: (1n << 64n) - 1n, inputTokens: 1n, outputTokens: 0n,
          priceInputPerMillion: 0n, priceOutputPerMillion: 0n, feeBps: 250n,
        });
        const attempt = await f.as(user).inferenceEscrow.settle(voiding.voucher, voiding.signature).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(decodeRevertName(attempt)).toBe("Escrow__NotProviderOrSettler");
        const before = await escrow.earningsOf(prov.address);
        const report = await worker.settleNow();
        expect(report.settled).toEqual([sessionKey(served.voucher)]);
        const paidToProvider = (await escrow.earningsOf(prov.address)) - before;
        expect(paidToProvider).toBe(voucherCost(served.voucher, { inputTokens: 0n, outputTokens: 0n }).providerAmount);
        expect(paidToProvider).toBeGreaterThan(0n);
        const s = parseExposition(await metrics.exposition());
        expect(sample(s, "soulmesh_earnings_settled_units")).toBe(Number(paidToProvider));
        expect(sample(s, "soulmesh_settlement_paid_units_total")).toBe(Number(voucherCost(served.voucher, { inputTokens: 0n, outputTokens: 0n }).total));
        expect(metrics.settlement.earned).toBe(paidToProvider);
      } finally {
        metrics.close();
        await realBook.stop();
      }
    } finally {
      await chain.close();
      await rm(folder, { recursive: true, force: true });
    }
  }, 60_000);
});
