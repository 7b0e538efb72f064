/**
 * The provider's session, inference and voucher protocols on real parts: an in-process EDR chain with the
 * Soulmesh contracts, the engine on the tiny fixture model (one persona with a LoRA adapter fetched by CID,
 * one without), a LevelDB voucher book, and two libp2p hosts over TCP loopback.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Connection, Stream } from "@libp2p/interface";
import { hexlify, keccak256, toUtf8Bytes, Wallet } from "ethers";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { sessionCost, signVoucher, type Voucher } from "../../sdk/chain/voucher.js";
import {
  decodeFrames,
  encodeVarint,
  FRAME_LIMITS,
  hashOutput,
  hashPrompt,
  InferenceResponseSchema,
  InsufficientEscrowError,
  InvalidMessageError,
  InvalidSignatureError,
  NotSessionOpenerError,
  PaymentRequiredError,
  PROTOCOL_IDS,
  ProviderBusyError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionSupersededError,
  UnexpectedMessageError,
  verifyReceipt,
  type InferenceChunk,
  type InferenceDone,
  type InferenceRequestInput,
  type InferenceResponse,
  type Prompt,
  type SessionOpen,
  voucherToWire,
  type SessionRequest,
} from "../../sdk/protocol/index.js";
import { createTestChain, type TestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD, type Fixture as ChainFixture } from "../../test/helpers/soulmesh.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../../test/fixtures/gguf/llama.js";
import { startTinyEngine, type TinyEngine } from "../../test/helpers/tiny-engine.js";
import { sessionKeyOf, VoucherBook } from "../billing/voucher-book.js";
import {
  createEngine,
  tokenizePrompt,
  type EngineOptions,
  type InferenceEngine,
  type LoadedModel,
} from "../engine/index.js";
import { readStream, requestProtocol, streamProtocol } from "./handler.js";
import type { ProviderHost } from "./host.js";
import {
  serveProviderProtocols,
  type ProviderProtocolEvents,
  type ProviderProtocols,
} from "./provider-protocols.js";
import { chainViewOf, NO_ADAPTER, type ProviderChainView } from "./sessions.js";
import {
  buildSessionRequest,
  Fixture as NetFixture,
  prng,
  signedSessionOpen,
  type SessionRequestDefaults,
} from "./test-support.js";

const PRICES = { input: 500_000n, output: 1_500_000n };
const ADAPTER_CID = "bafyPersonaAdapter";

let chain: TestChain;
let f: ChainFixture;
let providerWallet: Wallet, payer: Wallet, poorPayer: Wallet, creator: Wallet, stranger: Wallet, deployer: Wallet;
/** Payers of the attack tests, each with its own lane; otherProvider is a second registered provider. */
let greedy: Wallet, dust: Wallet, leaving: Wallet, otherProvider: Wallet;
let agentGreedy: bigint, agentDust: bigint, agentLeaving: bigint;
let escrow: { chainId: number; address: string };
let personaAdapter: bigint, personaPlain: bigint, personaForeign: bigint, personaUnpublished: bigint;
let agentAdapter: bigint, agentPlain: bigint, agentForeign: bigint, agentUnpublished: bigint, agentPoor: bigint;

let fx: TinyFixtures;
let tiny: TinyEngine;
let base: LoadedModel;
let root: string;
let engine: InferenceEngine;
let engineParts: Pick<EngineOptions, "llama" | "models" | "adapters" | "states">;
let book: VoucherBook;
/** The book's clock follows the chain's (the last time the provider read it). */
let chainClock = 0;
let view: ProviderChainView;

const net = new NetFixture();
let server: ProviderHost;
let client: ProviderHost;
let protocols: ProviderProtocols;
const failures: ProviderProtocolEvents["request:failed"]["detail"][] = [];

beforeAll(async () => {
  chain = await createTestChain();
  [deployer, providerWallet, payer, poorPayer, creator, stranger, greedy, dust, leaving, otherProvider] = chain.wallets as [
    Wallet, Wallet, Wallet, Wallet, Wallet, Wallet, Wallet, Wallet, Wallet, Wallet,
  ];
  f = await deployFixture(chain);
  escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  fx = await tinyFixtures();

  personaAdapter = await f.createPersona(creator, { adapterSha256: fx.adapters[0]!.sha256, baseModelHash: fx.base.sha256 });
  personaPlain = await f.createPersona(creator, { adapterSha256: NO_ADAPTER, baseModelHash: fx.base.sha256 });
  personaForeign = await f.createPersona(creator, { adapterSha256: NO_ADAPTER, baseModelHash: keccak256(toUtf8Bytes("unserved")) });
  personaUnpublished = await f.createPersona(creator, { adapterSha256: fx.adapters[1]!.sha256, baseModelHash: fx.base.sha256 });
  agentAdapter = await f.mintAgent(payer, personaAdapter);
  agentPlain = await f.mintAgent(payer, personaPlain);
  agentForeign = await f.mintAgent(payer, personaForeign);
  agentUnpublished = await f.mintAgent(payer, personaUnpublished);
  agentPoor = await f.mintAgent(poorPayer, personaPlain);
  agentGreedy = await f.mintAgent(greedy, personaPlain);
  agentDust = await f.mintAgent(dust, personaPlain);
  agentLeaving = await f.mintAgent(leaving, personaPlain);
  // Payers commit their funds to this provider's lane: only that is what its vouchers draw on.
  await f.registerProvider(providerWallet);
  await f.registerProvider(otherProvider);
  await f.depositAndCommit(payer, providerWallet.address, 100n * USD);
  await f.depositAndCommit(poorPayer, providerWallet.address, 1n * USD);

  root = await mkdtemp(join(tmpdir(), "soulmesh-provider-protocols-"));
  tiny = await startTinyEngine(root, fx, { [ADAPTER_CID]: fx.adapters[0]!.path });
  engine = tiny.engine;
  base = tiny.base;
  engineParts = { llama: tiny.llama, models: [tiny.base], adapters: tiny.adapters, states: tiny.states };
  book = new VoucherBook({ dir: join(root, "vouchers"), escrow, provider: providerWallet.address, now: () => chainClock });
  await book.start();
  const contracts = chainViewOf(connectContracts(f.deployment, chain.provider));
  view = { ...contracts, now: async (o) => (chainClock = await contracts.now(o)) };

  server = await net.host();
  client = await net.host();
  protocols = await serve(server);
  protocols.addEventListener("request:failed", (e) => failures.push(e.detail));
});

afterAll(async () => {
  await protocols?.stop();
  await net.cleanup();
  await tiny?.stop();
  await book?.stop();
  await chain?.close();
  if (root) await rm(root, { recursive: true, force: true });
  await removeTinyFixtures();
});

function serve(host: ProviderHost, on: InferenceEngine = engine): Promise<ProviderProtocols> {
  return serveProviderProtocols({
    libp2p: host.libp2p,
    engine: on,
    book,
    chain: view,
    signer: providerWallet,
    escrow,
    prices: () => PRICES,
    chainTimeMaxAgeMs: 0,
  });
}

const target = (host: ProviderHost = server) => host.multiaddrs().find((m) => !m.toString().includes("/ws"))!;

/** This file's session requests: `payer`'s agent on the plain persona, capped at 10 USD, for an hour. */
const requestDefaults = (): SessionRequestDefaults => ({
  payer: payer.address,
  provider: providerWallet.address,
  agentId: agentPlain,
  personaId: personaPlain,
  prices: PRICES,
  spendingCap: 10n * USD,
  escrow,
  now: () => chain.now(),
  ttlSeconds: 3600,
});

async function openMessage(
  fields: Partial<SessionRequest> = {},
  options: { signer?: Wallet; adapterCid?: string; stateKey?: string } = {},
): Promise<SessionOpen> {
  const request = await buildSessionRequest(requestDefaults(), fields);
  const signer = options.signer ?? signerOf(request.payer);
  return signedSessionOpen(request, signer, options);
}

const open = (message: SessionOpen) => requestProtocol(client.libp2p, target(), "session", message);

/** The wallet of a payer of this file. */
const signerOf = (address: string): Wallet => [payer, poorPayer, greedy, dust, leaving].find((w) => w.address === address) ?? payer;

// Sessions stay open until they expire; each test starts with none, as the per-payer limits would otherwise
// carry one test's sessions and unpaid turns into the next.
afterEach(async () => {
  for (const s of protocols.sessions()) await protocols.close(s.sessionId);
});

/** Opens a session and returns its id and request. */
async function openSession(fields: Partial<SessionRequest> = {}, options: { adapterCid?: string } = {}) {
  const message = await openMessage(fields, options);
  const answer = await open(message);
  if (answer.type !== "session.accepted") throw new Error(`not accepted: ${JSON.stringify(answer)}`);
  return { sessionId: answer.sessionId, request: message.request };
}

/**
 * Agents of `payer` on the plain persona besides agentPlain, minted on first use. Each is a channel of its own:
 * a newer session of a channel supersedes the channel's older ones (attack 8), so sessions meant to be open
 * side by side are opened on different agents.
 */
const extraAgents: bigint[] = [];
async function plainAgent(i: number): Promise<string> {
  while (extraAgents.length <= i) extraAgents.push(await f.mintAgent(payer, personaPlain));
  return extraAgents[i]!.toString();
}

async function turn(request: InferenceRequestInput, options: { timeoutMs?: number } = {}) {
  const chunks: InferenceChunk[] = [];
  let done: InferenceDone | undefined;
  for await (const message of streamProtocol(client.libp2p, target(), "inference", request, options)) {
    if (message.type === "inference.chunk") chunks.push(message);
    else done = message;
  }
  if (done === undefined) throw new Error("no inference.done");
  return { chunks, done, text: chunks.map((c) => c.text).join("") };
}

function inference(sessionId: string, turnNumber: number, prompt: Prompt, fields: Partial<InferenceRequestInput> = {}): InferenceRequestInput {
  return { type: "inference.request", sessionId, turn: turnNumber, model: fx.base.sha256, adapters: [], prompt, maxTokens: 8, ...fields };
}

async function voucherFor(request: SessionRequest, totals: { inputTokens: bigint; outputTokens: bigint }, fields: Partial<Voucher> = {}) {
  const voucher: Voucher = {
    payer: request.payer,
    provider: request.provider,
    agentId: BigInt(request.agentId),
    session: BigInt(request.session),
    priceInputPerMillion: BigInt(request.priceInputPerMillion),
    priceOutputPerMillion: BigInt(request.priceOutputPerMillion),
    royaltyPerMillion: BigInt(request.royaltyPerMillion),
    feeBps: BigInt(request.feeBps),
    expiry: BigInt(request.expiry),
    ...totals,
    ...fields,
  };
  return { voucher, signature: await signVoucher(signerOf(voucher.payer), voucher, escrow) };
}

/** Pays a turn as a client does: a voucher for the receipt's cumulative totals. */
async function pay(request: SessionRequest, done: InferenceDone) {
  const totals = { inputTokens: BigInt(done.receipt.cumulativeInputTokens), outputTokens: BigInt(done.receipt.cumulativeOutputTokens) };
  const { voucher, signature } = await voucherFor(request, totals);
  return requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(voucher), signature });
}

/** The session's prompt of `prompt` in tokens, as the engine counts it. */
const promptTokens = (prompt: Prompt) => BigInt(tokenizePrompt(base.model, prompt.kind === "chat" ? { chat: prompt.messages } : { text: prompt.text }).tokens.length);

const wire = voucherToWire;

const info = (sessionId: string) => protocols.sessions().find((s) => s.sessionId === sessionId);

function waitFor<K extends keyof ProviderProtocolEvents>(
  type: K,
  match: (detail: ProviderProtocolEvents[K]["detail"]) => boolean,
  on: ProviderProtocols = protocols,
): Promise<ProviderProtocolEvents[K]["detail"]> {
  return new Promise((resolve) => {
    const listener = (e: Event) => {
      const detail = (e as ProviderProtocolEvents[K]).detail;
      if (!match(detail)) return;
      on.removeEventListener(type, listener);
      resolve(detail);
    };
    on.addEventListener(type, listener);
  });
}

const rejection = <T>(p: Promise<T>) => p.then(() => undefined, (e: unknown) => e as Error);

type ChatMessage = { role: "system" | "user" | "assistant"; content: string };

/**
 * Three turns on a persona with an adapter, each paid for: checks every receipt field, its signature, the
 * cumulative totals (billed input excludes cached tokens) and the session's and the book's totals.
 * `cached(t)` is the exact cached count expected, or undefined for "some".
 */
async function paidTurns(
  messages: (t: number) => ChatMessage[],
  cached: (t: number) => number | undefined,
  after: (t: number, text: string) => void = () => {},
) {
  const { sessionId, request } = await openSession({ agentId: agentAdapter.toString(), personaId: personaAdapter.toString() }, { adapterCid: ADAPTER_CID });
  const adapters = [fx.adapters[0]!.sha256];
  const served: ProviderProtocolEvents["turn:served"]["detail"][] = [];
  const listener = (e: ProviderProtocolEvents["turn:served"]) => e.detail.sessionId === sessionId && served.push(e.detail);
  protocols.addEventListener("turn:served", listener);
  let cumulative = { input: 0n, output: 0n };
  try {
    for (let t = 0; t < 3; t++) {
      const chat = messages(t);
      const prompt: Prompt = { kind: "chat", messages: chat };
      const { chunks, done, text } = await turn(inference(sessionId, t, prompt, { adapters }));
      expect(chunks.map((c) => c.index)).toEqual(chunks.map((_, i) => i));
      expect(done.usage.inputTokens).toBe(tokenizePrompt(base.model, { chat }).tokens.length);
      expect(done.usage.outputTokens).toBe(8);
      expect(done.stopReason).toBe("length");
      const expectedCached = cached(t);
      if (expectedCached === undefined) expect(done.usage.cachedInputTokens).toBeGreaterThan(0);
      else expect(done.usage.cachedInputTokens).toBe(expectedCached);
      cumulative = {
        input: cumulative.input + BigInt(done.usage.inputTokens - done.usage.cachedInputTokens),
        output: cumulative.output + 8n,
      };
      expect(done.receipt).toEqual({
        payer: payer.address,
        provider: providerWallet.address,
        agentId: agentAdapter.toString(),
        session: request.session,
        turn: t,
        modelSha256: fx.base.sha256,
        adapterSha256s: adapters,
        promptHash: hashPrompt(prompt),
        outputHash: hashOutput(text),
        usage: done.usage,
        cumulativeInputTokens: cumulative.input.toString(),
        cumulativeOutputTokens: cumulative.output.toString(),
      });
      expect(verifyReceipt(done.receipt, escrow, done.signature)).toBe(true);
      expect(info(sessionId)!.served).toEqual({ inputTokens: cumulative.input, outputTokens: cumulative.output });

      const accepted = waitFor("voucher:accepted", (d) => d.sessionId === sessionId && d.outputTokens === cumulative.output);
      expect(await pay(request, done)).toEqual({
        type: "voucher.ack",
        session: request.session,
        inputTokens: cumulative.input.toString(),
        outputTokens: cumulative.output.toString(),
      });
      expect((await accepted).inputTokens).toBe(cumulative.input);
      after(t, text);
    }
  } finally {
    protocols.removeEventListener("turn:served", listener);
  }
  expect(served.map((s) => s.turn)).toEqual([0, 1, 2]);
  expect(served.map((s) => BigInt(s.billedInputTokens)).reduce((a, b) => a + b)).toBe(cumulative.input);
  expect(served.every((s) => s.stopReason === "length" && !s.aborted && s.outputTokens === 8)).toBe(true);
  expect(info(sessionId)).toMatchObject({
    nextTurn: 3,
    served: { inputTokens: cumulative.input, outputTokens: 24n },
    vouched: { inputTokens: cumulative.input, outputTokens: 24n },
  });
  const entry = await book.get(info(sessionId)!.sessionKey);
  expect([entry!.voucher.inputTokens, entry!.voucher.outputTokens]).toEqual([cumulative.input, 24n]);
}

const sea: Prompt = { kind: "chat", messages: [{ role: "user", content: "Tell me about the sea." }] };
const longText: Prompt = { kind: "text", text: "Long ago" };

describe("session open", () => {
  it("accepts a valid request, opens the engine session, and answers a repeated open the same way", async () => {
    const message = await openMessage({ agentId: agentAdapter.toString(), personaId: personaAdapter.toString() }, { adapterCid: ADAPTER_CID, stateKey: hexlify(randomBytes(32)) });
    const opened = waitFor("session:opened", (d) => d.agentId === agentAdapter);
    const first = await open(message);
    const again = await open(message);
    expect(first).toEqual({ type: "session.accepted", sessionId: expect.stringMatching(/^0x[0-9a-f]{64}$/), expiry: message.request.expiry });
    expect(again).toEqual(first);
    const id = (first as { sessionId: string }).sessionId;
    expect(await opened).toEqual({ sessionId: id, payer: payer.address, agentId: agentAdapter, personaId: personaAdapter });
    expect(engine.session(id)).toMatchObject({ sessionId: id, modelSha256: fx.base.sha256, adapters: [{ sha256: fx.adapters[0]!.sha256, scale: 1 }] });
    expect(info(id)).toMatchObject({
      sessionKey: sessionKeyOf({ payer: payer.address, provider: providerWallet.address, agentId: agentAdapter, session: BigInt(message.request.session) }),
      payer: payer.address,
      agentId: agentAdapter,
      personaId: personaAdapter,
      session: BigInt(message.request.session),
      modelSha256: fx.base.sha256,
      adapterSha256s: [fx.adapters[0]!.sha256],
      prices: PRICES,
      spendingCap: 10n * USD,
      expiry: BigInt(message.request.expiry),
      nextTurn: 0,
      served: { inputTokens: 0n, outputTokens: 0n },
      vouched: { inputTokens: 0n, outputTokens: 0n },
      busy: false,
    });
    expect(protocols.sessions().filter((s) => s.sessionId === id)).toHaveLength(1);
  });

  it("refuses requests it could never accept with typed errors, changing nothing", async () => {
    const now = await chain.now();
    const lifetime = BigInt(f.deployment.parameters.maxVoucherLifetime);
    const before = { sessions: protocols.sessions().length, engine: engine.load.sessions, failures: failures.length };
    const cases: [string, Promise<SessionOpen>, new (message: string) => Error][] = [
      ["another provider", openMessage({ provider: stranger.address }), InvalidMessageError],
      ["another chain", openMessage({ chainId: "1" }), InvalidMessageError],
      ["another escrow", openMessage({ escrow: f.deployment.contracts.agentRegistry }), InvalidMessageError],
      ["a forged signature", openMessage({}, { signer: stranger }), InvalidSignatureError],
      ["an expired request", openMessage({ expiry: String(now + 60) }), SessionExpiredError],
      ["an expiry too far", openMessage({ expiry: String(BigInt(now) + lifetime + 600n) }), InvalidMessageError],
      ["an input price too low", openMessage({ priceInputPerMillion: String(PRICES.input - 1n) }), InvalidMessageError],
      ["an output price too low", openMessage({ priceOutputPerMillion: String(PRICES.output - 1n) }), InvalidMessageError],
      ["a royalty below the persona's", openMessage({ royaltyPerMillion: "199999" }), InvalidMessageError],
    ];
    for (const [what, message, type] of cases) {
      const err = await rejection(open(await message));
      expect(err, what).toBeInstanceOf(type);
    }
    expect(protocols.sessions().length).toBe(before.sessions);
    expect(engine.load.sessions).toBe(before.engine);
    expect(failures.slice(before.failures).map((e) => [e.protocol, (e.error as Error).name])).toEqual(
      cases.map(([, , type]) => ["session", type.name]),
    );
  });

  it("rejects what the payer can act on (agent, persona, model, adapter, escrow) as session.rejected", async () => {
    const before = { sessions: protocols.sessions().length, engine: engine.load.sessions, failures: failures.length };
    const cases: [string, Promise<SessionOpen>, string][] = [
      ["an unknown agent", openMessage({ agentId: "999" }), "PersonaUnavailableError"],
      ["an agent of another persona", openMessage({ agentId: agentPlain.toString(), personaId: personaAdapter.toString() }, { adapterCid: ADAPTER_CID }), "PersonaUnavailableError"],
      ["a model not served", openMessage({ agentId: agentForeign.toString(), personaId: personaForeign.toString() }), "PersonaUnavailableError"],
      ["no adapter CID", openMessage({ agentId: agentAdapter.toString(), personaId: personaAdapter.toString() }), "PersonaUnavailableError"],
      ["an adapter nobody publishes", openMessage({ agentId: agentUnpublished.toString(), personaId: personaUnpublished.toString() }, { adapterCid: "bafyNowhere" }), "PersonaUnavailableError"],
      ["a deposit below the cap", openMessage({ payer: poorPayer.address, agentId: agentPoor.toString(), spendingCap: String(USD + 1n) }), "InsufficientEscrowError"],
    ];
    for (const [what, message, code] of cases) {
      const answer = await open(await message);
      expect(answer, what).toMatchObject({ type: "session.rejected", code, retryable: false });
    }
    expect(protocols.sessions().length).toBe(before.sessions);
    expect(engine.load.sessions).toBe(before.engine);
    expect(failures.slice(before.failures).map((e) => [e.protocol, (e.error as Error).name])).toEqual(
      cases.map(([, , code]) => ["session", code]),
    );
  });

  it("counts what the payer already owes this provider unsettled, at its full cost, against its lane", async () => {
    // A voucher of an earlier session of the poor payer: 1M input tokens at 0.5 USD per million, and the
    // persona's royalty of 0.2 USD per million on top: the lane loses 0.7 USD when it settles (this test
    // counted the provider's 0.5 USD only before the escrow charged royalty and fee from the same lane).
    const earlier: Voucher = {
      payer: poorPayer.address, provider: providerWallet.address, agentId: agentPoor, session: 1n,
      inputTokens: 1_000_000n, outputTokens: 0n, priceInputPerMillion: PRICES.input, priceOutputPerMillion: PRICES.output,
      royaltyPerMillion: 200_000n, feeBps: 0n, expiry: BigInt((await chain.now()) + 3600),
    };
    chainClock = await chain.now();
    await book.accept(earlier, await signVoucher(poorPayer, earlier, escrow));
    const poor = { payer: poorPayer.address, agentId: agentPoor.toString() };
    // 1 USD committed − 0.7 USD owed leaves 0.3 USD: a cap one unit above is refused, the exact amount is not.
    const left = USD - (7n * USD) / 10n;
    expect(await open(await openMessage({ ...poor, spendingCap: String(left + 1n) }))).toMatchObject({ type: "session.rejected", code: "InsufficientEscrowError" });
    expect(await open(await openMessage({ ...poor, spendingCap: String(left) }))).toMatchObject({ type: "session.accepted" });
  });
});

describe("inference and vouchers", () => {
  it("serves three paid turns: signed receipts, exact cumulative totals, cached input not billed", async () => {
    // The shape of an assembled prompt: the persona first (cached from turn to turn), then what changes.
    const persona = { role: "system" as const, content: "You are Mira, a sailor who knows every sea and every port." };
    const prompts = ["Tell me about the sea.", "What of the harbours?", "And the storms?"].map(
      (content): ChatMessage[] => [persona, { role: "user", content }],
    );
    await paidTurns((t) => prompts[t]!, (t) => {
      if (t === 0) return 0;
      // Reused: the tokens this prompt shares with the last one (the persona), which the session's KV holds.
      const [now, before] = [t, t - 1].map((i) => tokenizePrompt(base.model, { chat: prompts[i]! }).tokens);
      let shared = 0;
      while (shared < now!.length && now![shared] === before![shared]) shared++;
      expect(shared).toBeGreaterThan(10);
      return shared;
    });
  });

  it("serves a conversation that sends its history back, billing only the new tokens", async () => {
    const history: ChatMessage[] = [{ role: "user", content: "Tell me about the sea." }];
    await paidTurns(
      () => [...history],
      (t) => (t === 0 ? 0 : undefined),
      (t, text) => history.push({ role: "assistant", content: text }, { role: "user", content: `And turn ${t + 1}?` }),
    );
  });

  it("serves the next turn only once the last one is paid for", async () => {
    const { sessionId, request } = await openSession();
    const first = await turn(inference(sessionId, 0, sea));
    expect(await rejection(turn(inference(sessionId, 1, sea)))).toBeInstanceOf(PaymentRequiredError);
    // A voucher for part of the turn is not enough either.
    const partial = { inputTokens: BigInt(first.done.receipt.cumulativeInputTokens), outputTokens: 7n };
    const { voucher, signature } = await voucherFor(request, partial);
    await requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(voucher), signature });
    expect(await rejection(turn(inference(sessionId, 1, sea)))).toBeInstanceOf(PaymentRequiredError);
    const ack = await pay(request, first.done);
    // The same voucher again (a lost ack) is acknowledged again with the same totals; a lower one is refused.
    expect(await pay(request, first.done)).toEqual(ack);
    expect(await rejection(requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(voucher), signature }))).toBeInstanceOf(
      InvalidMessageError,
    );
    const second = await turn(inference(sessionId, 1, sea));
    expect(second.done.receipt.turn).toBe(1);
    expect(info(sessionId)!.nextTurn).toBe(2);
  });

  it("refuses wrong turns, unknown sessions, other models or adapters, and turns past the cap", async () => {
    // The cap is what a turn of 20 output tokens on this prompt costs in full (provider, royalty and fee).
    const rates = { priceInputPerMillion: PRICES.input, priceOutputPerMillion: PRICES.output, royaltyPerMillion: 200_000n, feeBps: 0n };
    const cap = sessionCost({ inputTokens: promptTokens(sea), outputTokens: 20n }, rates);
    expect(sessionCost({ inputTokens: promptTokens(sea), outputTokens: 21n }, rates)).toBeGreaterThan(cap);
    const { sessionId } = await openSession({ spendingCap: cap.toString() });
    const cases: [string, InferenceRequestInput, new (message: string) => Error][] = [
      ["a turn ahead", inference(sessionId, 1, sea), UnexpectedMessageError],
      ["an unknown session", inference(hexlify(randomBytes(32)), 0, sea), SessionNotFoundError],
      ["another model", inference(sessionId, 0, sea, { model: fx.adapters[2]!.sha256 }), InvalidMessageError],
      ["an adapter the session lacks", inference(sessionId, 0, sea, { adapters: [fx.adapters[0]!.sha256] }), InvalidMessageError],
      // 21 output tokens would cost more than the cap.
      ["a turn past the cap", inference(sessionId, 0, sea, { maxTokens: 21 }), InsufficientEscrowError],
    ];
    for (const [what, request, type] of cases) expect(await rejection(turn(request)), what).toBeInstanceOf(type);
    expect(info(sessionId)).toMatchObject({ nextTurn: 0, served: { inputTokens: 0n, outputTokens: 0n } });
    // Exactly at the cap is served: 20 tokens cost the cap.
    expect((await turn(inference(sessionId, 0, sea, { maxTokens: 20 }))).done.usage.outputTokens).toBe(20);
    expect(info(sessionId)).toMatchObject({ nextTurn: 1, served: { outputTokens: 20n } });
  });

  it("refuses a prompt above the context after taking its turn number, and counts nothing for it", async () => {
    const { sessionId } = await openSession();
    const tooLong = inference(sessionId, 0, { kind: "text", text: "word ".repeat(600) });
    expect(await rejection(turn(tooLong))).toBeInstanceOf(InvalidMessageError);
    expect(info(sessionId)).toMatchObject({ nextTurn: 1, busy: false, served: { inputTokens: 0n, outputTokens: 0n } });
    expect(await rejection(turn(inference(sessionId, 0, sea)))).toBeInstanceOf(UnexpectedMessageError);
    expect((await turn(inference(sessionId, 1, sea))).done.receipt.turn).toBe(1);
  });

  it("refuses vouchers for unknown sessions, above the served totals, at other prices, or forged", async () => {
    const { sessionId, request } = await openSession();
    const { done } = await turn(inference(sessionId, 0, sea));
    const totals = { inputTokens: BigInt(done.receipt.cumulativeInputTokens), outputTokens: BigInt(done.receipt.cumulativeOutputTokens) };
    const send = async (v: { voucher: Voucher; signature: string }) =>
      rejection(requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(v.voucher), signature: v.signature }));
    expect(await send(await voucherFor(request, totals, { session: BigInt(request.session) + 1n }))).toBeInstanceOf(SessionNotFoundError);
    expect(await send(await voucherFor(request, { ...totals, outputTokens: totals.outputTokens + 1n }))).toBeInstanceOf(InvalidMessageError);
    expect(await send(await voucherFor(request, totals, { priceOutputPerMillion: PRICES.output + 1n }))).toBeInstanceOf(InvalidMessageError);
    const good = await voucherFor(request, totals);
    const forged = { voucher: good.voucher, signature: await signVoucher(stranger, { ...good.voucher, payer: stranger.address }, escrow) };
    expect(await send(forged)).toBeInstanceOf(InvalidSignatureError);
    expect(info(sessionId)!.vouched).toEqual({ inputTokens: 0n, outputTokens: 0n });
    expect(await send(good)).toBeUndefined();
    expect(info(sessionId)!.vouched).toEqual(totals);
  });

  it("counts the tokens generated for a client that went away mid-stream", async () => {
    const { sessionId } = await openSession();
    const servedEvent = waitFor("turn:served", (d) => d.sessionId === sessionId);
    let received = 0;
    for await (const message of streamProtocol(client.libp2p, target(), "inference", inference(sessionId, 0, longText, { maxTokens: 450 }))) {
      if (message.type === "inference.chunk" && ++received === 2) break;
    }
    const served = await servedEvent;
    expect(served.aborted).toBe(true);
    expect(served.stopReason).toBe("abort");
    expect(served.outputTokens).toBeGreaterThanOrEqual(2);
    expect(served.outputTokens).toBeLessThan(450);
    expect(info(sessionId)).toMatchObject({
      busy: false,
      nextTurn: 1,
      served: { inputTokens: BigInt(served.billedInputTokens), outputTokens: BigInt(served.outputTokens) },
    });
    // It was not paid for: the session serves no more until it is.
    expect(await rejection(turn(inference(sessionId, 1, sea)))).toBeInstanceOf(PaymentRequiredError);
  });

  it("answers ProviderBusyError to a turn sent while the session serves another", async () => {
    const { sessionId } = await openSession();
    const stream = streamProtocol(client.libp2p, target(), "inference", inference(sessionId, 0, longText, { maxTokens: 300 }));
    const first = await stream.next();
    expect(first.value).toMatchObject({ type: "inference.chunk", index: 0 });
    expect(info(sessionId)!.busy).toBe(true);
    expect(await rejection(turn(inference(sessionId, 1, sea)))).toBeInstanceOf(ProviderBusyError);
    let last: InferenceResponse | undefined;
    for await (const message of stream) last = message as InferenceResponse;
    expect(last).toMatchObject({ type: "inference.done", receipt: { turn: 0 } });
    expect(info(sessionId)).toMatchObject({ busy: false, nextTurn: 1 });
  });

  it("passes the engine's admission refusal on as ProviderBusyError, giving the turn number back", async () => {
    const single = createEngine({ ...engineParts, threads: 1, contextSize: 512, memoryBudgetBytes: 2 ** 28, maxConcurrent: 1, maxQueued: 0 });
    await single.start();
    const host = await net.host();
    const busyNode = await serve(host, single);
    try {
      // Two payers: one payer's second session would wait for its first turn's voucher (PaymentRequiredError).
      const opened = [];
      for (const fields of [{}, { payer: poorPayer.address, agentId: agentPoor.toString(), spendingCap: String(USD / 10n) }]) {
        const answer = await requestProtocol(client.libp2p, target(host), "session", await openMessage(fields));
        opened.push((answer as { sessionId: string }).sessionId);
      }
      const [a, b] = opened as [string, string];
      const stream = streamProtocol(client.libp2p, target(host), "inference", inference(a, 0, longText, { maxTokens: 300 }));
      expect((await stream.next()).value).toMatchObject({ type: "inference.chunk" });
      const refused = await rejection(requestProtocol(client.libp2p, target(host), "inference", inference(b, 0, sea)));
      expect(refused).toBeInstanceOf(ProviderBusyError);
      expect(busyNode.sessions().find((s) => s.sessionId === b)).toMatchObject({ nextTurn: 0, busy: false, served: { outputTokens: 0n } });
      for await (const _ of stream);
      // The same turn again, on the same session, once the engine has room.
      const next = await requestProtocol(client.libp2p, target(host), "inference", inference(b, 0, sea));
      expect(next).toMatchObject({ type: "inference.chunk", index: 0 });
    } finally {
      await busyNode.stop();
      await single.stop();
    }
  });

  it("keeps serving a session while another is fuzzed with garbage inference frames", async () => {
    const victim = await openSession();
    // On another agent: a second session of the victim's channel would supersede it.
    const healthy = await openSession({ agentId: await plainAgent(0) });
    const rand = prng(0x5e55_1011);
    const utf8 = new TextEncoder();
    const frame = (body: Uint8Array) => Uint8Array.from([...encodeVarint(body.length), ...body]);
    const valid = inference(victim.sessionId, 0, sea);
    const garbage = (i: number): Uint8Array => {
      const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
      switch (i % 8) {
        case 0: return bytes(1 + Math.floor(rand() * 200));
        case 1: return frame(bytes(1 + Math.floor(rand() * 200)));
        case 2: return Uint8Array.from([...encodeVarint(FRAME_LIMITS.inference.request + 1), ...bytes(32)]);
        case 3: return frame(utf8.encode(JSON.stringify({ ...valid, turn: -1 })));
        case 4: return frame(utf8.encode(JSON.stringify({ ...valid, model: "0x12" })));
        case 5: return frame(utf8.encode(JSON.stringify({ ...valid, turn: 1 + Math.floor(rand() * 100) })));
        case 6: return frame(utf8.encode(JSON.stringify({ ...valid, model: fx.adapters[2]!.sha256 })));
        default: return frame(utf8.encode(`{"type":"inference.request","sessionId":"${victim.sessionId}",${"x".repeat(Math.floor(rand() * 40))}`));
      }
    };
    const codes = new Map<string, number>();
    // From two peers of their own, 4 streams each at a time: the node serves one peer at most 4 streams of a
    // protocol at once (attack 5), so 8 garbage streams from the healthy session's own peer would take its slots.
    const fuzzers = [await net.host(), await net.host()];
    const fuzz = async (i: number) => {
      const stream: Stream = await fuzzers[i % 2]!.libp2p.dialProtocol(target(), PROTOCOL_IDS.inference);
      const bytes = garbage(i);
      if (!stream.send(bytes)) await stream.onDrain();
      await stream.close();
      const answers: InferenceResponse[] = [];
      for await (const m of decodeFrames(readStream(stream), { maxFrameBytes: FRAME_LIMITS.inference.response, schema: InferenceResponseSchema })) {
        answers.push(m as InferenceResponse);
      }
      expect(answers, `case ${i}`).toHaveLength(1);
      expect(answers[0]!.type, `case ${i}`).toBe("error");
      const code = (answers[0] as { code: string }).code;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    };
    const fuzzing = (async () => {
      for (let i = 0; i < 240; i += 8) await Promise.all(Array.from({ length: 8 }, (_, j) => fuzz(i + j)));
    })();
    let turns = 0;
    for (let t = 0; t < 3; t++) {
      const { done } = await turn(inference(healthy.sessionId, t, sea));
      await pay(healthy.request, done);
      turns++;
    }
    await fuzzing;
    expect(turns).toBe(3);
    expect([...codes.keys()].sort()).toEqual(["FrameTooLargeError", "InvalidMessageError", "MalformedFrameError", "UnexpectedMessageError"]);
    expect([...codes.values()].reduce((a, b) => a + b, 0)).toBe(240);
    // The fuzzed session changed in nothing and serves its turn 0.
    expect(info(victim.sessionId)).toMatchObject({ nextTurn: 0, served: { inputTokens: 0n, outputTokens: 0n } });
    expect((await turn(valid)).done.receipt.turn).toBe(0);
  });
});

describe("session lifetime", () => {
  it("stop() aborts running turns, counts their tokens, and reports the sessions closed", async () => {
    const host = await net.host();
    const second = await serve(host);
    const message = await openMessage();
    const accepted = await requestProtocol(client.libp2p, target(host), "session", message);
    const sessionId = (accepted as { sessionId: string }).sessionId;
    const served = waitFor("turn:served", (d) => d.sessionId === sessionId, second);
    const closed = waitFor("session:closed", (d) => d.sessionId === sessionId, second);
    const stream = streamProtocol(client.libp2p, target(host), "inference", inference(sessionId, 0, longText, { maxTokens: 450 }));
    expect((await stream.next()).value).toMatchObject({ type: "inference.chunk" });
    const stopping = second.stop();
    const rest = rejection((async () => { for await (const _ of stream); })());
    await stopping;
    expect(await rest).toBeInstanceOf(Error);
    const turnServed = await served;
    expect(turnServed).toMatchObject({ aborted: true, stopReason: "abort" });
    expect(turnServed.outputTokens).toBeLessThan(450);
    expect(await closed).toMatchObject({ reason: "stopped", sessionKey: sessionKeyOf({ payer: payer.address, provider: providerWallet.address, agentId: agentPlain, session: BigInt(message.request.session) }) });
    expect(second.sessions()).toEqual([]);
    // The engine keeps the session (its state is saved by the engine's own stop); the test closes it.
    await engine.closeSession(sessionId);
  });

  it("refuses turns near expiry, closes expired sessions on chain time, and drops engine-idle ones", async () => {
    const now = await chain.now();
    const short = await openSession({ expiry: String(now + 200) });
    // On another agent: a second session of short's channel would supersede it.
    const long = await openSession({ agentId: await plainAgent(0), expiry: String(now + 3000) });
    expect(await protocols.closeExpired()).toBe(0);
    await chain.increaseTime(175); // 25 s before expiry: within the 30 s margin
    expect(await rejection(turn(inference(short.sessionId, 0, sea)))).toBeInstanceOf(SessionExpiredError);
    const closed = waitFor("session:closed", (d) => d.sessionId === short.sessionId);
    const before = protocols.sessions().length;
    expect(await protocols.closeExpired()).toBe(1);
    expect(await closed).toEqual({
      sessionId: short.sessionId,
      sessionKey: sessionKeyOf({ payer: payer.address, provider: providerWallet.address, agentId: agentPlain, session: BigInt(short.request.session) }),
      reason: "expired",
    });
    expect(protocols.sessions().length).toBe(before - 1);
    expect(() => engine.session(short.sessionId)).toThrow();
    expect(await rejection(turn(inference(short.sessionId, 0, sea)))).toBeInstanceOf(SessionNotFoundError);
    expect(info(long.sessionId)).toBeDefined();

    // The engine closes sessions idle for an hour by itself: the table follows.
    const idle = new Set<string>();
    const onClosed = (e: ProviderProtocolEvents["session:closed"]) => e.detail.reason === "idle" && idle.add(e.detail.sessionId);
    protocols.addEventListener("session:closed", onClosed);
    const open = protocols.sessions().length;
    await engine.closeIdleSessions(Date.now() + 2 * 3600_000);
    protocols.removeEventListener("session:closed", onClosed);
    expect(idle.has(long.sessionId)).toBe(true);
    expect(idle.size).toBe(open);
    expect(protocols.sessions()).toEqual([]);
  });
});

describe("attacks on the provider's money", () => {
  /** A session request of `who` on the plain persona, its own agent. */
  const asPayer = (who: Wallet, agentId: bigint, fields: Partial<SessionRequest> = {}) =>
    openMessage({ payer: who.address, agentId: agentId.toString(), ...fields });

  it("attack 3: sessions of one payer cannot each reserve the whole lane; free deposits and other providers' lanes do not count", async () => {
    const lane = 2n * USD;
    await f.depositAndCommit(greedy, providerWallet.address, lane);
    // Money the payer holds elsewhere: its free deposit, and a lane with another provider.
    await f.deposit(greedy, 50n * USD);
    await f.depositAndCommit(greedy, otherProvider.address, 50n * USD);
    const first = await open(await asPayer(greedy, agentGreedy, { spendingCap: lane.toString() }));
    expect(first).toMatchObject({ type: "session.accepted" });
    // A second session, capped at the whole lane again, would let the two spend it twice.
    const second = await open(await asPayer(greedy, agentGreedy, { spendingCap: lane.toString() }));
    expect(second).toMatchObject({ type: "session.rejected", code: "InsufficientEscrowError" });
    expect((second as { message: string }).message).toMatch(/commit/i);
    expect(await open(await asPayer(greedy, agentGreedy, { spendingCap: "1" }))).toMatchObject({ type: "session.rejected", code: "InsufficientEscrowError" });
    // Closed, the first session's cap is free again.
    await protocols.close((first as { sessionId: string }).sessionId);
    expect(await open(await asPayer(greedy, agentGreedy, { spendingCap: lane.toString() }))).toMatchObject({ type: "session.accepted" });
  });

  it("attack 3: a payer keeps at most 4 sessions open here", async () => {
    // Each on a channel of its own (agent): a newer session of one channel ends the channel's older ones.
    for (let i = 0; i < 4; i++) {
      expect(await open(await openMessage({ agentId: await plainAgent(i), spendingCap: String(USD) }))).toMatchObject({ type: "session.accepted" });
    }
    expect(await open(await openMessage({ agentId: await plainAgent(4), spendingCap: String(USD) }))).toMatchObject({ type: "session.rejected", code: "ProviderBusyError", retryable: true });
  });

  it("attack 3: one unpaid turn per payer, across all its sessions", async () => {
    const a = await openSession();
    // Another channel (agent) of the payer: a second session of a's channel would supersede a.
    const b = await openSession({ agentId: await plainAgent(0) });
    // A turn still running on a counts already: it will be unpaid when it ends.
    const running = streamProtocol(client.libp2p, target(), "inference", inference(a.sessionId, 0, longText, { maxTokens: 200 }));
    expect((await running.next()).value).toMatchObject({ type: "inference.chunk" });
    expect(await rejection(turn(inference(b.sessionId, 0, sea)))).toBeInstanceOf(PaymentRequiredError);
    let first: { done: InferenceDone } | undefined;
    for await (const m of running) if (m.type === "inference.done") first = { done: m };
    // a's turn is served and not paid: b gets no free turn meanwhile.
    expect(await rejection(turn(inference(b.sessionId, 0, sea)))).toBeInstanceOf(PaymentRequiredError);
    expect(info(b.sessionId)).toMatchObject({ nextTurn: 0, busy: false, served: { inputTokens: 0n, outputTokens: 0n } });
    await pay(a.request, first!.done);
    expect((await turn(inference(b.sessionId, 0, sea))).done.receipt.turn).toBe(0);
  });

  it("attack 3: a dust lane gets no free turn: a turn's worst case at the full price must fit the cap", async () => {
    const rates = { priceInputPerMillion: PRICES.input, priceOutputPerMillion: PRICES.output, royaltyPerMillion: 200_000n, feeBps: 0n };
    // The provider's price of 8 output tokens alone fits; with the prompt's input and the royalty it does not.
    const providerOnly = (8n * PRICES.output) / 1_000_000n;
    const full = sessionCost({ inputTokens: promptTokens(sea), outputTokens: 8n }, rates);
    expect(full).toBeGreaterThan(providerOnly);
    await f.depositAndCommit(dust, providerWallet.address, full - 1n);
    const { sessionId } = await openSession({ payer: dust.address, agentId: agentDust.toString(), spendingCap: String(full - 1n) });
    expect(await rejection(turn(inference(sessionId, 0, sea)))).toBeInstanceOf(InsufficientEscrowError);
    expect(info(sessionId)).toMatchObject({ nextTurn: 0, busy: false, served: { inputTokens: 0n, outputTokens: 0n } });
    // An empty lane opens nothing at all.
    expect(await open(await openMessage({ payer: stranger.address, agentId: agentDust.toString(), spendingCap: "0" }, { signer: stranger }))).toMatchObject({
      type: "session.rejected",
      code: "InsufficientEscrowError",
    });
  });

  it("attack 6: an open from an unfunded key costs one chain read and no scan of the book, before anything else", async () => {
    const reads: string[] = [];
    const counted = Object.fromEntries(
      Object.entries(view).map(([name, fn]) => [name, (...args: unknown[]) => (reads.push(name), (fn as (...a: unknown[]) => unknown)(...args))]),
    ) as unknown as ProviderChainView;
    const host = await net.host();
    const node = await serveProviderProtocols({ libp2p: host.libp2p, engine, book, chain: counted, signer: providerWallet, escrow, prices: () => PRICES });
    const scans: string[] = [];
    const outstanding = book.outstanding.bind(book);
    const entries = book.entries.bind(book);
    book.outstanding = (o) => (scans.push("outstanding"), outstanding(o));
    book.entries = (o) => (scans.push("entries"), entries(o));
    try {
      const nobody = Wallet.createRandom();
      const message = await signedSessionOpen(await buildSessionRequest({ ...requestDefaults(), payer: nobody.address }), nobody);
      reads.length = 0;
      const answer = await requestProtocol(client.libp2p, target(host), "session", message);
      expect(answer).toMatchObject({ type: "session.rejected", code: "InsufficientEscrowError" });
      // The chain clock and the escrow's immutable lifetime are cached; the lane is the one read.
      expect(reads.filter((r) => r !== "now" && r !== "maxVoucherLifetime")).toEqual(["laneOf"]);
      expect(scans).toEqual([]);
      // The same key again within a second: answered from the cached read.
      reads.length = 0;
      await requestProtocol(client.libp2p, target(host), "session", await signedSessionOpen(await buildSessionRequest({ ...requestDefaults(), payer: nobody.address }), nobody));
      expect(reads.filter((r) => r === "laneOf")).toEqual([]);
    } finally {
      book.outstanding = outstanding;
      book.entries = entries;
      await node.stop();
    }
  });

  it("refuses vouchers at another royalty or fee than the session's, and vouchers above the cap", async () => {
    const { sessionId, request } = await openSession();
    const { done } = await turn(inference(sessionId, 0, sea));
    const totals = { inputTokens: BigInt(done.receipt.cumulativeInputTokens), outputTokens: BigInt(done.receipt.cumulativeOutputTokens) };
    const send = async (v: { voucher: Voucher; signature: string }) =>
      rejection(requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(v.voucher), signature: v.signature }));
    expect(await send(await voucherFor(request, totals, { royaltyPerMillion: 199_999n }))).toBeInstanceOf(InvalidMessageError);
    expect(await send(await voucherFor(request, totals, { royaltyPerMillion: 200_001n }))).toBeInstanceOf(InvalidMessageError);
    expect(await send(await voucherFor(request, totals, { feeBps: 1n }))).toBeInstanceOf(InvalidMessageError);
    expect(info(sessionId)!.vouched).toEqual({ inputTokens: 0n, outputTokens: 0n });
    expect(await send(await voucherFor(request, totals))).toBeUndefined();
  });
});

/**
 * Closing sessions, and session numbers (attack 8 of issue 14). Sessions of the channel of `payer`'s own agent
 * here, numbered explicitly (above every number the rest of this file uses), so that no other test's channel moves.
 */
describe("closing sessions and session numbers", () => {
  let agentClose: bigint;
  let other: ProviderHost;
  let number = BigInt(Date.now()) * 1000n + 10_000_000_000n;
  const channelOpen = async (fields: Partial<SessionRequest> = {}) =>
    openMessage({ agentId: agentClose.toString(), session: (++number).toString(), ...fields });
  const accepted = async (message: SessionOpen) => {
    const answer = await open(message);
    if (answer.type !== "session.accepted") throw new Error(`not accepted: ${JSON.stringify(answer)}`);
    return { sessionId: answer.sessionId, request: message.request };
  };
  const close = (sessionId: string, from: ProviderHost = client) =>
    requestProtocol(from.libp2p, target(), "session", { type: "session.close", sessionId });

  beforeAll(async () => {
    agentClose = await f.mintAgent(payer, personaPlain);
    other = await net.host();
  });

  it("attack 8: a session numbered at or below one the provider has seen on the channel is refused with the latest number, so no turn is served that the book would refuse to be paid for", async () => {
    // A chat numbers its session by its clock; a second device (or the maintenance chat) whose clock is behind
    // numbers its own lower.
    const ahead = await accepted(await channelOpen({ session: (number + 10n).toString() }));
    const { done } = await turn(inference(ahead.sessionId, 0, sea));
    expect(await pay(ahead.request, done)).toMatchObject({ type: "voucher.ack" });
    const behind = await channelOpen();
    const answer = await open(behind);
    expect(answer).toMatchObject({ type: "session.rejected", code: "SessionNumberTooLowError", latestSession: ahead.request.session });
    // Numbered above the latest, it opens.
    number = BigInt(ahead.request.session);
    expect(await open(await channelOpen())).toMatchObject({ type: "session.accepted" });
  });

  it("attack 8: once a newer session of the channel opens, the older one serves no turn (SessionSupersededError), and leaves once what it served is paid", async () => {
    const a = await accepted(await channelOpen());
    const first = await turn(inference(a.sessionId, 0, sea));
    // The other chat opens its session while a's turn is not paid yet.
    const b = await accepted(await channelOpen());
    expect(info(a.sessionId)).toMatchObject({ ending: "superseded" });
    // b is the channel's latest: once its voucher is in the book, a's vouchers are refused. So a serves no more.
    expect(await rejection(turn(inference(b.sessionId, 0, sea)))).toBeInstanceOf(PaymentRequiredError);
    const closed = waitFor("session:closed", (d) => d.sessionId === a.sessionId);
    expect(await pay(a.request, first.done)).toMatchObject({ type: "voucher.ack" });
    expect(await closed).toMatchObject({ reason: "closed" });
    expect(info(a.sessionId)).toBeUndefined();
    const paid = await turn(inference(b.sessionId, 0, sea));
    expect(await pay(b.request, paid.done)).toMatchObject({ type: "voucher.ack" });
    const c = await accepted(await channelOpen());
    // b owed nothing: it left as c opened, and a turn on it is refused for a new session.
    expect(info(b.sessionId)).toBeUndefined();
    expect(await rejection(turn(inference(b.sessionId, 1, sea)))).toBeInstanceOf(SessionNotFoundError);
    // A superseded session still open (here: one with a turn running as the newer opens) refuses turns typed.
    const d = await accepted(await channelOpen());
    expect(info(c.sessionId)).toBeUndefined();
    const running = streamProtocol(client.libp2p, target(), "inference", inference(d.sessionId, 0, longText, { maxTokens: 120 }));
    expect((await running.next()).value).toMatchObject({ type: "inference.chunk" });
    const e = await accepted(await channelOpen());
    let last: InferenceDone | undefined;
    for await (const m of running) if (m.type === "inference.done") last = m;
    expect(info(d.sessionId)).toMatchObject({ ending: "superseded", busy: false });
    expect(await rejection(turn(inference(d.sessionId, 1, sea)))).toBeInstanceOf(SessionSupersededError);
    await pay(d.request, last!);
    expect(info(d.sessionId)).toBeUndefined();
    expect((await turn(inference(e.sessionId, 0, sea))).done.receipt.turn).toBe(0);
  });

  it("session.close: only the peer that opened a session may close it; a session that owes nothing leaves at once, to be settled", async () => {
    const s = await accepted(await channelOpen());
    const { done } = await turn(inference(s.sessionId, 0, sea));
    await pay(s.request, done);
    const foreign = await rejection(close(s.sessionId, other));
    expect(foreign).toBeInstanceOf(NotSessionOpenerError);
    expect(info(s.sessionId)).toMatchObject({ ending: undefined, nextTurn: 1 });
    const closedEvent = waitFor("session:closed", (d) => d.sessionId === s.sessionId);
    const totals = { inputTokens: done.receipt.cumulativeInputTokens, outputTokens: done.receipt.cumulativeOutputTokens };
    expect(await close(s.sessionId)).toEqual({ type: "session.closed", sessionId: s.sessionId, served: totals, vouched: totals });
    expect(await closedEvent).toMatchObject({ reason: "closed", sessionKey: sessionKeyOf({ ...s.request, agentId: BigInt(s.request.agentId), session: BigInt(s.request.session) }) });
    expect(info(s.sessionId)).toBeUndefined();
    expect(await rejection(close(s.sessionId))).toBeInstanceOf(SessionNotFoundError);
  });

  it("a reply cancelled mid-stream is paid for what was served: close waits for its count, takes only the voucher for exactly the served totals, and the payer's other sessions are served again", async () => {
    const a = await accepted(await channelOpen());
    // Another agent's session of the same payer: the one-unpaid-turn rule spans them.
    const b = await openSession();
    const stop = new AbortController();
    let received = "";
    try {
      for await (const m of streamProtocol(client.libp2p, target(), "inference", inference(a.sessionId, 0, longText, { maxTokens: 400 }), { signal: stop.signal })) {
        if (m.type === "inference.chunk") received += m.text;
        if (received.length >= 3) stop.abort(new Error("the user pressed Ctrl-C"));
      }
    } catch {
      // aborted
    }
    const closed = await close(a.sessionId);
    if (closed.type !== "session.closed") throw new Error("not closed");
    const served = { inputTokens: BigInt(closed.served.inputTokens), outputTokens: BigInt(closed.served.outputTokens) };
    expect(closed.vouched).toEqual({ inputTokens: "0", outputTokens: "0" });
    expect(served.outputTokens).toBeGreaterThanOrEqual(1n);
    expect(served.outputTokens).toBeLessThan(400n);
    expect(info(a.sessionId)).toMatchObject({ ending: "closed", busy: false, served });
    // No more turns on it, and the payer's other sessions wait for its voucher.
    expect(await rejection(turn(inference(a.sessionId, 1, sea)))).toBeInstanceOf(SessionNotFoundError);
    expect(await rejection(turn(inference(b.sessionId, 0, sea)))).toBeInstanceOf(PaymentRequiredError);
    const send = async (totals: { inputTokens: bigint; outputTokens: bigint }) => {
      const { voucher, signature } = await voucherFor(a.request, totals);
      return requestProtocol(client.libp2p, target(), "voucher", { type: "voucher", voucher: wire(voucher), signature });
    };
    expect(await rejection(send({ ...served, outputTokens: served.outputTokens - 1n }))).toBeInstanceOf(InvalidMessageError);
    const left = waitFor("session:closed", (d) => d.sessionId === a.sessionId);
    expect(await send(served)).toMatchObject({ type: "voucher.ack", outputTokens: served.outputTokens.toString() });
    expect(await left).toMatchObject({ reason: "closed" });
    expect(info(a.sessionId)).toBeUndefined();
    expect((await book.get(sessionKeyOf({ payer: payer.address, provider: providerWallet.address, agentId: agentClose, session: BigInt(a.request.session) })))!.voucher).toMatchObject(served);
    expect((await turn(inference(b.sessionId, 0, sea))).done.receipt.turn).toBe(0);
  });
});

/**
 * Attack 5: two peers open every stream libp2p lets them (32 per protocol and connection) on /voucher (and
 * /inference and /session), and hold them: half send nothing, half send half a frame. A node that counts
 * streams over all peers alone refuses the paying clients' turns and vouchers (ProviderBusyError) for as long
 * as the attackers keep reopening what it drops; the provider loses those turns. The per-peer limit stops two
 * peers; against many peers (free to make), the slots kept for peers with an open session do.
 */
describe("attack 5: stalled streams do not keep paying clients' turns and vouchers out", () => {
  const HONEST = 3;
  const TURNS = 3;
  type Stalled = "voucher" | "inference" | "session";

  /** A payer of its own (one unpaid turn per payer), with a lane, an agent and a client host. */
  async function paying() {
    const wallet = new Wallet(Wallet.createRandom().privateKey, chain.provider);
    await chain.provider.send("hardhat_setBalance", [wallet.address, "0x8AC7230489E80000"]);
    await f.depositAndCommit(wallet, providerWallet.address, 10n * USD);
    const agentId = await f.mintAgent(wallet, personaPlain);
    return { wallet, agentId, host: await net.host() };
  }

  async function openAs(who: Awaited<ReturnType<typeof paying>>) {
    const request = await buildSessionRequest({ ...requestDefaults(), payer: who.wallet.address, agentId: who.agentId });
    const answer = await requestProtocol(who.host.libp2p, target(), "session", await signedSessionOpen(request, who.wallet));
    return { answer, request };
  }

  /**
   * Keeps `perProtocol` streams of each stalled protocol open from `host`, over one connection: each is
   * reopened 300 ms after the node drops it (answered or timed out), as long as the attack runs.
   */
  async function stall(host: ProviderHost, stalled: readonly Stalled[], perProtocol: number, signal: AbortSignal) {
    const established = new Set<string>();
    let connection: Connection | undefined;
    const connect = async () => {
      if (connection === undefined || connection.status !== "open") connection = await host.libp2p.dial(target(), { signal });
      return connection;
    };
    const once = async (protocol: Stalled, slot: number) => {
      const stream = await (await connect()).newStream(PROTOCOL_IDS[protocol], { signal });
      established.add(`${protocol} ${slot}`);
      // Half of them send nothing at all, half a frame: a length prefix of 300 bytes and 10 of them.
      if (slot % 2 === 1) stream.send(Uint8Array.from([...encodeVarint(300), ...new Uint8Array(10)]));
      return stream;
    };
    const hold = async (protocol: Stalled, slot: number, first: Stream | undefined) => {
      let stream = first;
      while (!signal.aborted) {
        try {
          stream ??= await once(protocol, slot);
          const ended = (async () => {
            for await (const _ of readStream(stream)); // whatever the node answers, until it closes its side
          })().catch(() => {});
          const stop = new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
          await Promise.race([ended, stop]);
          stream.abort(new Error("next"));
        } catch {
          // refused by libp2p (its per-connection cap) or the attack is over: try again
        }
        stream = undefined;
        await new Promise((r) => setTimeout(r, 300));
      }
    };
    // Opened 8 at a time: yamux drops a connection whose peer opens more than 10 streams not yet acknowledged.
    const loops: Promise<void>[] = [];
    const slots = stalled.flatMap((p) => Array.from({ length: perProtocol }, (_, i) => [p, i] as const));
    for (let i = 0; i < slots.length; i += 8) {
      const batch = await Promise.all(slots.slice(i, i + 8).map(([p, n]) => once(p, n).catch(() => undefined)));
      batch.forEach((stream, j) => loops.push(hold(slots[i + j]![0], slots[i + j]![1], stream)));
    }
    return { done: Promise.all(loops), established: () => established.size };
  }

  // 32 streams per protocol and peer is libp2p's own cap per connection (maxInboundStreams).
  it.each<{ who: string; peers: number; streams: number; stalled: Stalled[] }>([
    { who: "two peers", peers: 2, streams: 32, stalled: ["voucher"] },
    { who: "two peers", peers: 2, streams: 32, stalled: ["voucher", "inference", "session"] },
    { who: "16 peers", peers: 16, streams: 4, stalled: ["voucher", "inference"] },
  ])("attack 5: 64 stalled streams from $who on $stalled: every turn of a paying client is served and every voucher acknowledged", async ({ peers: ATTACKERS, streams: STREAMS_PER_PROTOCOL, stalled: STALLED }) => {
    const honest = [];
    for (let i = 0; i <= HONEST; i++) honest.push(await paying()); // one at a time: the deployer mints for each
    const latecomer = honest.pop()!;
    // The paying clients open their sessions before the attack starts.
    const sessions = [];
    for (const who of honest) {
      const { answer, request } = await openAs(who);
      expect(answer.type).toBe("session.accepted");
      sessions.push({ who, request, sessionId: (answer as { sessionId: string }).sessionId });
    }
    const refused: string[] = [];
    const onRefused = (e: ProviderProtocolEvents["stream:refused"]) => refused.push(e.detail.protocol);
    protocols.addEventListener("stream:refused", onRefused);

    const attack = new AbortController();
    const attackers = await Promise.all(Array.from({ length: ATTACKERS }, () => net.host()));
    const stalls = await Promise.all(attackers.map((host) => stall(host, STALLED, STREAMS_PER_PROTOCOL, attack.signal)));
    try {
      // Every stream libp2p lets the attackers open has been open (held, or answered by the node) before the
      // honest clients start; on a loaded machine some first opens fail and are retried.
      const wanted = ATTACKERS * STALLED.length * STREAMS_PER_PROTOCOL;
      for (let t = 0; stalls.reduce((n, s) => n + s.established(), 0) < wanted && t < 150; t++) await new Promise((r) => setTimeout(r, 100));
      expect(stalls.reduce((n, s) => n + s.established(), 0)).toBe(wanted);
      await new Promise((r) => setTimeout(r, 300));

      const lost: string[] = [];
      const voucherMs: number[] = [];
      await Promise.all(
        sessions.map(async ({ who, request, sessionId }, c) => {
          for (let t = 0; t < TURNS; t++) {
            let done: InferenceDone | undefined;
            try {
              const prompt: Prompt = { kind: "chat", messages: [{ role: "user", content: `Tell me about the sea, ${c} ${t}.` }] };
              for await (const m of streamProtocol(who.host.libp2p, target(), "inference", inference(sessionId, t, prompt), { timeoutMs: 30_000 })) {
                if (m.type === "inference.done") done = m;
              }
            } catch (err) {
              lost.push(`client ${c} turn ${t}: ${(err as Error).name}`);
              return;
            }
            const totals = { inputTokens: BigInt(done!.receipt.cumulativeInputTokens), outputTokens: BigInt(done!.receipt.cumulativeOutputTokens) };
            const voucher: Voucher = {
              payer: request.payer,
              provider: request.provider,
              agentId: BigInt(request.agentId),
              session: BigInt(request.session),
              priceInputPerMillion: PRICES.input,
              priceOutputPerMillion: PRICES.output,
              royaltyPerMillion: BigInt(request.royaltyPerMillion),
              feeBps: BigInt(request.feeBps),
              expiry: BigInt(request.expiry),
              ...totals,
            };
            const signature = await signVoucher(who.wallet, voucher, escrow);
            const begin = performance.now();
            try {
              // The client's own timeout for a voucher (sdk/client: requestTimeoutMs, 10 s).
              const ack = await requestProtocol(who.host.libp2p, target(), "voucher", { type: "voucher", voucher: wire(voucher), signature }, { timeoutMs: 10_000 });
              expect(ack).toMatchObject({ type: "voucher.ack", outputTokens: totals.outputTokens.toString() });
              voucherMs.push(performance.now() - begin);
            } catch (err) {
              lost.push(`client ${c} voucher ${t}: ${(err as Error).name}`);
              return;
            }
          }
        }),
      );
      // A client without a session yet still gets one: the attackers hold only their own share of the slots.
      const late = await rejection(openAs(latecomer).then(({ answer }) => expect(answer.type).toBe("session.accepted")));

      expect(lost).toEqual([]);
      expect(late).toBeUndefined();
      // Answered, not left waiting for a slot (generous: the attackers share this machine's CPU).
      expect(Math.max(...voucherMs)).toBeLessThan(5_000);
      for (const { sessionId } of sessions) {
        expect(info(sessionId)).toMatchObject({ nextTurn: TURNS, busy: false });
        expect(info(sessionId)!.vouched).toEqual(info(sessionId)!.served);
      }
      // The attackers were turned away at the door, on every protocol they stalled (over their own limit, after
      // waiting up to 2 s for a slot of theirs).
      for (let t = 0; new Set(refused).size < STALLED.length && t < 50; t++) await new Promise((r) => setTimeout(r, 100));
      expect(new Set(refused)).toEqual(new Set(STALLED));
      // A peer's standing lasts as long as its session: closed, the peer has none.
      for (const { who, sessionId } of sessions) {
        expect(protocols.peers.has(who.host.peerId)).toBe(true);
        await protocols.close(sessionId);
        expect(protocols.peers.has(who.host.peerId)).toBe(false);
      }
      expect(attackers.some((a) => protocols.peers.has(a.peerId))).toBe(false);
    } finally {
      attack.abort();
      protocols.removeEventListener("stream:refused", onRefused);
      await Promise.all(stalls.map((s) => s.done));
      await Promise.all(attackers.map((a) => a.stop()));
    }
  }, 120_000);
});

describe("rates and lane releases that would leave before a session's vouchers settle", () => {
  it("refuses a pending royalty or fee rise, or a lane release, that takes effect before the session expires", async () => {
    const delay = BigInt(f.deployment.parameters.withdrawalDelay);
    await f.depositAndCommit(leaving, providerWallet.address, 5n * USD);
    await (await f.as(leaving).inferenceEscrow.requestRelease(providerWallet.address)).wait();
    await (await f.as(creator).personaRegistry.scheduleRoyalty(personaPlain, 300_000n)).wait();
    await (await f.as(deployer).inferenceEscrow.scheduleProtocolFee(100n)).wait();
    const mine = (fields: Partial<SessionRequest> = {}) => asLeaving(fields);
    const asLeaving = (fields: Partial<SessionRequest>) => openMessage({ payer: leaving.address, agentId: agentLeaving.toString(), spendingCap: String(USD), ...fields });
    // Every change is two days away, a session one hour: accepted at today's rates.
    expect(await open(await mine())).toMatchObject({ type: "session.accepted" });
    for (const s of protocols.sessions()) await protocols.close(s.sessionId);

    // Half an hour before the changes: a session of an hour would outlive them.
    await chain.increaseTime(Number(delay) - 1800);
    chainClock = await chain.now();
    const release = await open(await mine({ royaltyPerMillion: "300000", feeBps: "100" }));
    expect(release).toMatchObject({ type: "session.rejected", code: "InsufficientEscrowError" });
    expect((release as { message: string }).message).toMatch(/release/i);
    await (await f.as(leaving).inferenceEscrow.cancelRelease(providerWallet.address)).wait();
    await new Promise((r) => setTimeout(r, 1_100)); // the node reuses a payer's lane reading for a second
    const rejected = async (fields: Partial<SessionRequest>) => rejection(open(await mine(fields)));
    expect(await rejected({ feeBps: "100" })).toBeInstanceOf(InvalidMessageError); // royalty 0.2 < 0.3 to come
    expect(await rejected({ royaltyPerMillion: "300000" })).toBeInstanceOf(InvalidMessageError); // fee 0 < 1% to come
    expect(await open(await mine({ royaltyPerMillion: "300000", feeBps: "100" }))).toMatchObject({ type: "session.accepted" });
    // A session that ends before the changes keeps today's rates.
    const now = await chain.now();
    expect(await open(await mine({ expiry: String(now + 1000) }))).toMatchObject({ type: "session.accepted" });
  });
});
