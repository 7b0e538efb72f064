/**
 * A real provider daemon (startProvider) on the tiny fixture model against an in-process EDR chain: it
 * registers, answers /status, /metrics and the quote protocol, serves a paid turn whose tokens, voucher and
 * earnings show in the metrics, settles that voucher on stop, and cleans up its state file. A restart on the
 * same data folder keeps its peer id and sends no registration transaction unless something changed; a
 * session near its expiry is closed and its voucher settled at once.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { multiaddr } from "@multiformats/multiaddr";
import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signVoucher, type Voucher } from "../../sdk/chain/voucher.js";
import { InvalidSignatureError, requestProtocol, sessionRequestTypedData, streamProtocol, type InferenceDone, type SessionRequest } from "../../sdk/protocol/index.js";
import { createProviderHost, type ProviderHost } from "../../node/p2p/host.js";
import { NO_ADAPTER } from "../../node/p2p/sessions.js";
import { ProviderAlreadyRunningError } from "../../node/provider/errors.js";
import {
  readProviderState,
  startProvider,
  STATE_FILE,
  type ProviderConfig,
  type ProviderNode,
  type ProviderProgress,
  type ProviderStatus,
} from "../../node/provider/provider.js";
import { readProviderRecord } from "../../node/provider/registration.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, USD, type Fixture } from "../helpers/soulmesh.js";
import { parseExposition, sample } from "./prom.js";

const PRICES = { input: 500_000n, output: 1_500_000n };

let chain: TestChain;
let f: Fixture;
let fx: TinyFixtures;
let root: string;
let providerWallet: Wallet, payer: Wallet, creator: Wallet;
/** createPersona's default royalty per million tokens; the deployment's fee is 0. */
const ROYALTY = 200_000n;
let agentId: bigint, personaId: bigint;
let client: ProviderHost;
const nodes: ProviderNode[] = [];

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  [, payer, creator, providerWallet] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  fx = await tinyFixtures();
  await f.fund(providerWallet.address, BigInt(f.deployment.parameters.minStake));
  personaId = await f.createPersona(creator, { adapterSha256: NO_ADAPTER, baseModelHash: fx.base.sha256 });
  agentId = await f.mintAgent(payer, personaId);
  await f.deposit(payer, 50n * USD);
  root = await mkdtemp(join(tmpdir(), "soulmesh-provider-"));
  client = await createProviderHost({ dataDir: join(root, "client") });
  await client.start();
});

afterAll(async () => {
  for (const node of nodes) await node.stop().catch(() => {});
  await client?.stop();
  await chain?.close();
  if (root) await rm(root, { recursive: true, force: true });
  await removeTinyFixtures();
});

function config(dataDir: string): ProviderConfig {
  return {
    dataDir,
    models: [fx.base.path],
    modelsDir: join(root, "models"),
    prices: PRICES,
    metricsPort: 0,
    deployment: f.deployment,
    rpc: chain.provider,
    privateKey: chain.accounts[3]!.privateKey,
    settlement: { intervalMs: 0, amountThreshold: 0n },
    engine: { threads: 1, contextSize: 512, memoryBudgetBytes: 2 ** 30 },
    earningsPollMs: 200,
  };
}

async function scrape(node: ProviderNode) {
  const res = await fetch(node.metricsUrl);
  expect(res.status).toBe(200);
  return parseExposition(await res.text());
}

async function status(node: ProviderNode): Promise<ProviderStatus> {
  const res = await fetch(node.statusUrl);
  expect(res.status).toBe(200);
  return (await res.json()) as ProviderStatus;
}

const tcp = (node: ProviderNode) => multiaddr(node.multiaddrs.find((m) => !m.includes("/ws"))!);

/** Opens session `session` on `node`, runs one 8-token turn and pays it with a voucher, as a client does. */
async function paidTurn(node: ProviderNode, session: bigint, expiry: number) {
  // Only the payer's lane with this provider backs a session: commit part of the deposit to it once.
  const asPayer = f.as(payer).inferenceEscrow;
  if ((await asPayer.laneOf(payer.address, node.address))[0] === 0n) await (await asPayer.commit(node.address, 20n * USD)).wait();
  const request: SessionRequest = {
    payer: payer.address,
    provider: node.address,
    agentId: agentId.toString(),
    personaId: personaId.toString(),
    session: session.toString(),
    priceInputPerMillion: PRICES.input.toString(),
    priceOutputPerMillion: PRICES.output.toString(),
    royaltyPerMillion: ROYALTY.toString(),
    feeBps: "0",
    spendingCap: (5n * USD).toString(),
    expiry: expiry.toString(),
    chainId: f.deployment.chainId.toString(),
    escrow: f.deployment.contracts.inferenceEscrow,
  };
  const { domain, types, value } = sessionRequestTypedData(request);
  const accepted = await requestProtocol(client.libp2p, tcp(node), "session", {
    type: "session.open",
    request,
    signature: await payer.signTypedData(domain, types, value),
  });
  if (accepted.type !== "session.accepted") throw new Error(`refused: ${JSON.stringify(accepted)}`);

  let done: InferenceDone | undefined;
  let text = "";
  for await (const msg of streamProtocol(client.libp2p, tcp(node), "inference", {
    type: "inference.request",
    sessionId: accepted.sessionId,
    turn: 0,
    model: fx.base.sha256,
    prompt: { kind: "chat", messages: [{ role: "user", content: "Hello there" }] },
    maxTokens: 8,
  })) {
    if (msg.type === "inference.chunk") text += msg.text;
    else done = msg;
  }
  expect(done?.usage.outputTokens).toBe(8);
  expect(text.length).toBeGreaterThan(0);

  const voucher: Voucher = {
    payer: payer.address,
    provider: node.address,
    agentId,
    session,
    inputTokens: BigInt(done!.receipt.cumulativeInputTokens),
    outputTokens: BigInt(done!.receipt.cumulativeOutputTokens),
    priceInputPerMillion: PRICES.input,
    priceOutputPerMillion: PRICES.output,
    royaltyPerMillion: ROYALTY,
    feeBps: 0n,
    expiry: BigInt(expiry),
  };
  const escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  const ack = await requestProtocol(client.libp2p, tcp(node), "voucher", {
    type: "voucher",
    voucher: {
      payer: voucher.payer,
      provider: voucher.provider,
      agentId: voucher.agentId.toString(),
      session: voucher.session.toString(),
      inputTokens: voucher.inputTokens.toString(),
      outputTokens: voucher.outputTokens.toString(),
      priceInputPerMillion: voucher.priceInputPerMillion.toString(),
      priceOutputPerMillion: voucher.priceOutputPerMillion.toString(),
      royaltyPerMillion: voucher.royaltyPerMillion.toString(),
      feeBps: voucher.feeBps.toString(),
      expiry: voucher.expiry.toString(),
    },
    signature: await signVoucher(payer, voucher, escrow),
  });
  expect(ack.type).toBe("voucher.ack");
  return { request, voucher, sessionId: accepted.sessionId };
}

describe("startProvider", () => {
  let node: ProviderNode;
  let dataDir: string;

  it("starts, registers on chain and writes its state file", async () => {
    dataDir = join(root, "node");
    const progress: ProviderProgress[] = [];
    node = await startProvider(config(dataDir), { onProgress: (p) => progress.push(p) });
    nodes.push(node);

    expect(node.address).toBe(providerWallet.address);
    expect(node.registration?.action).toBe("registered");
    expect(node.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const record = await readProviderRecord(f.contracts, providerWallet.address);
    expect(record).toMatchObject({
      peerId: node.peerId,
      modelHashes: [fx.base.sha256],
      prices: PRICES,
      stake: BigInt(f.deployment.parameters.minStake),
      active: true,
    });
    expect(new Set(record!.multiaddrs)).toEqual(new Set(node.multiaddrs));
    expect(node.multiaddrs.every((m) => m.endsWith(`/p2p/${node.peerId}`))).toBe(true);

    const state = JSON.parse(await readFile(join(dataDir, STATE_FILE), "utf8"));
    expect(state).toMatchObject({ pid: process.pid, peerId: node.peerId, address: node.address, metricsUrl: node.metricsUrl });
    expect(await readProviderState(dataDir)).toEqual(state);
    expect(progress.some((p) => p.type === "step" && p.message.includes("on-chain record registered"))).toBe(true);
    expect(progress.some((p) => p.type === "model" && p.progress.phase === "load")).toBe(true);
  });

  it("refuses a second provider on the same data folder while one runs there", async () => {
    // A live pid other than ours holds the folder: the parent process stands in for another provider.
    const { writeFile } = await import("node:fs/promises");
    const path = join(dataDir, STATE_FILE);
    const mine = await readFile(path, "utf8");
    await writeFile(path, JSON.stringify({ ...JSON.parse(mine), pid: process.ppid }));
    try {
      await expect(startProvider(config(dataDir))).rejects.toBeInstanceOf(ProviderAlreadyRunningError);
    } finally {
      await writeFile(path, mine);
    }
  });

  it("answers /status and /metrics, and quotes over libp2p", async () => {
    const st = await status(node);
    expect(st).toMatchObject({
      state: "running",
      pid: process.pid,
      peerId: node.peerId,
      address: node.address,
      chainId: f.deployment.chainId,
      registration: { action: "registered" },
      models: [{ sha256: fx.base.sha256, source: fx.base.path }],
      prices: { input: "500000", output: "1500000" },
      sessions: { open: 0, busy: 0 },
      queue: { running: 0, queued: 0 },
      earnings: { unsettled: "0", settled: "0", claimable: "0" },
      settlement: { sent: 0, confirmed: 0, policy: { intervalMs: 0 } },
    });
    expect(st.multiaddrs).toEqual(node.multiaddrs);

    const m = await scrape(node);
    expect(sample(m, "soulmesh_output_tokens_total")).toBe(0);
    expect(sample(m, "soulmesh_open_sessions")).toBe(0);
    expect(sample(m, 'soulmesh_engine_queue_length{state="running"}')).toBe(0);

    const quote = await requestProtocol(client.libp2p, tcp(node), "quote", { type: "quote.request" });
    expect(quote).toMatchObject({
      type: "quote",
      provider: node.address,
      models: [fx.base.sha256],
      cachedAdapters: [],
      priceInputPerMillion: "500000",
      priceOutputPerMillion: "1500000",
      queueLength: 0,
      maxTokens: 512,
    });
  });

  it("serves a paid turn that shows in the metrics and the status", async () => {
    const { request, voucher } = await paidTurn(node, 1n, (await chain.now()) + 3600);
    const { domain, types, value } = sessionRequestTypedData(request);
    const owed = (voucher.inputTokens * PRICES.input + voucher.outputTokens * PRICES.output) / 1_000_000n;
    const m = await scrape(node);
    expect(sample(m, "soulmesh_output_tokens_total")).toBe(8);
    expect(sample(m, "soulmesh_billed_input_tokens_total")).toBe(Number(voucher.inputTokens));
    expect(sample(m, 'soulmesh_turns_total{stop_reason="length"}')).toBe(1);
    expect(sample(m, "soulmesh_turn_duration_seconds_count")).toBe(1);
    expect(sample(m, "soulmesh_time_to_first_token_seconds_count")).toBe(1);
    expect(sample(m, "soulmesh_output_tokens_per_second")).toBeGreaterThan(0);
    expect(sample(m, "soulmesh_open_sessions")).toBe(1);
    expect(sample(m, "soulmesh_engine_sessions")).toBe(1);
    expect(sample(m, "soulmesh_engine_context_memory_bytes")).toBeGreaterThan(0);
    expect(sample(m, "soulmesh_vouchers_accepted_total")).toBe(1);
    expect(sample(m, "soulmesh_earnings_unsettled_units")).toBe(Number(owed));

    // A refused open counts as a failed session request with its code.
    const refused = requestProtocol(client.libp2p, tcp(node), "session", {
      type: "session.open",
      request: { ...request, session: "2" },
      signature: await payer.signTypedData(domain, types, value), // signed over session 1
    });
    await expect(refused).rejects.toBeInstanceOf(InvalidSignatureError);
    expect(sample(await scrape(node), 'soulmesh_request_failures_total{code="InvalidSignatureError",protocol="session"}')).toBe(1);

    const st = await status(node);
    expect(st.sessions).toMatchObject({
      open: 1,
      served: { inputTokens: voucher.inputTokens.toString(), outputTokens: "8" },
      vouched: { inputTokens: voucher.inputTokens.toString(), outputTokens: "8" },
    });
    expect(st.earnings.unsettled).toBe(owed.toString());
    expect(st.settlement.outstandingSessions).toBe(1);
  });

  it("stops cleanly: settles the outstanding voucher once, removes provider.json, and is safe to call twice", async () => {
    const escrowContract = f.contracts.inferenceEscrow;
    expect(await escrowContract.earningsOf(node.address)).toBe(0n);
    await Promise.all([node.stop(), node.stop()]);
    await node.stop();
    expect(existsSync(join(dataDir, STATE_FILE))).toBe(false);
    expect(await readProviderState(dataDir)).toBeUndefined();
    expect(await escrowContract.earningsOf(node.address)).toBeGreaterThan(0n);
    await expect(fetch(node.statusUrl)).rejects.toThrow();
    const [session] = await escrowContract.settledOf(payer.address, node.address, agentId);
    expect(session).toBe(1n);
  });

  it("restarts on the same data folder with the same peer id and no registration transaction, unless the price changed", async () => {
    const again = await startProvider(config(dataDir));
    nodes.push(again);
    expect(again.peerId).toBe(node.peerId);
    // Ports are picked anew on loopback (tcp/0): the addresses change, so the record is updated.
    expect(again.registration?.action).toBe("updated");
    const st = await status(again);
    // The book survived the restart: what was settled is still counted.
    expect(BigInt(st.earnings.settled as unknown as string)).toBeGreaterThan(0n);
    await again.stop();

    const listen = again.multiaddrs.map((m) => m.replace(`/p2p/${again.peerId}`, ""));
    const third = await startProvider({ ...config(dataDir), listen });
    nodes.push(third);
    expect(third.registration).toMatchObject({ action: "unchanged", txHashes: [] });
    await third.stop();
    const fourth = await startProvider({ ...config(dataDir), listen, prices: { input: 1n, output: 2n } });
    nodes.push(fourth);
    expect(fourth.registration?.action).toBe("updated");
    expect((await readProviderRecord(f.contracts, providerWallet.address))?.prices).toEqual({ input: 1n, output: 2n });
    await fourth.stop();
  });

  it("closes a session near its expiry and settles its voucher at once", async () => {
    const listen = nodes.at(-1)!.multiaddrs.map((m) => m.replace(/\/p2p\/.*$/, ""));
    const live = await startProvider({ ...config(dataDir), listen, prices: { input: 1n, output: 2n }, sessionSweepMs: 100 });
    nodes.push(live);
    const { worker, protocols } = live.parts;
    const confirmed = new Promise<{ keys: string[] }>((resolve) =>
      worker.addEventListener("settlement:confirmed", (e) => resolve(e.detail), { once: true }),
    );
    const closed = new Promise<string>((resolve) =>
      protocols.addEventListener("session:closed", (e) => resolve(e.detail.reason), { once: true }),
    );
    // Prices: the session may pay more than the provider asks (it asks 1 and 2 now).
    const { voucher } = await paidTurn(live, 2n, (await chain.now()) + 130);
    expect(protocols.sessions()).toHaveLength(1);
    await chain.increaseTime(75); // 55 s left: inside the 60 s close margin, outside the worker's 20 s
    expect(await closed).toBe("expired");
    expect((await confirmed).keys).toHaveLength(1);
    const [session, input, output] = await f.contracts.inferenceEscrow.settledOf(payer.address, live.address, agentId);
    expect([session, input, output]).toEqual([2n, voucher.inputTokens, voucher.outputTokens]);
    const m = await scrape(live);
    expect(sample(m, 'soulmesh_sessions_closed_total{reason="expired"}')).toBe(1);
    expect(sample(m, 'soulmesh_settlement_transactions_total{state="confirmed"}')).toBe(1);
    expect(sample(m, "soulmesh_earnings_unsettled_units")).toBe(0);
    expect(sample(m, "soulmesh_open_sessions")).toBe(0);
    await live.stop();
  }, 20_000);
});
