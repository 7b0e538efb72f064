// The client SDK against fake providers (node/p2p handleProtocol) over TCP loopback, on a real EDR chain.
import { hexlify, randomBytes, ZeroHash, type Wallet } from "ethers";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { connectContracts, type SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { sessionCost, verifyVoucher, voucherCost } from "../../sdk/chain/voucher.js";
import {
  AllProvidersFailedError,
  createClientHost,
  EscrowTooLowError,
  NoProviderError,
  openChat,
  PersonaMismatchError,
  promptTokenUpperBound,
  ProviderBlocklist,
  QuoteRaisedError,
  readProviders,
  readReputation,
  requestQuote,
  resolveProvider,
  SpendingCapReachedError,
  type ChatEvents,
  type ChatSession,
  type ClientHost,
  type LocalTokenizer,
  type OpenChatOptions,
} from "../../sdk/client/index.js";
import { LaneLedger } from "../../sdk/client/lanes.js";
import { hashSessionRequest, verifySessionRequest } from "../../sdk/protocol/signing.js";
import { Fixture as P2pFixture } from "../../node/p2p/test-support.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, USD, type Fixture } from "../helpers/soulmesh.js";
import { FakeProvider, fakeTokenCount, fundedWallet, ratesOf, type FakeProviderOptions } from "./fake-provider.js";

let chain: TestChain;
let f: Fixture;
let payer: Wallet;
let creator: Wallet;
let reader: SoulmeshContracts;
let escrow: { chainId: bigint; address: string };
const p2p = new P2pFixture();
const clients: ClientHost[] = [];

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  creator = chain.wallets[2]!;
  payer = await fundedWallet(f);
  await f.deposit(payer, 1_000n * USD);
  reader = connectContracts(f.deployment, chain.provider);
  escrow = { chainId: BigInt(f.deployment.chainId), address: f.deployment.contracts.inferenceEscrow };
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.stop()));
  await p2p.cleanup();
});

afterAll(async () => {
  await chain?.close();
});

/** A persona on a model of its own (so each test sees only its own providers), an agent, and providers. */
async function world(
  providers: Omit<FakeProviderOptions, "p2p" | "chain" | "models">[],
  options: { adapter?: boolean; royaltyPerMillion?: bigint } = {},
): Promise<{ model: string; agentId: bigint; personaId: bigint; adapter?: { cid: string; sha256: string }; fakes: FakeProvider[] }> {
  const model = hexlify(randomBytes(32));
  const adapterSha = options.adapter === true ? hexlify(randomBytes(32)) : ZeroHash;
  const personaId = await f.createPersona(creator, { baseModelHash: model, adapterSha256: adapterSha, royaltyPerMillion: options.royaltyPerMillion ?? 100_000n });
  const agentId = await f.mintAgent(payer, personaId);
  const fakes: FakeProvider[] = [];
  // One at a time: they are funded from the same deployer account.
  for (const p of providers) fakes.push(await FakeProvider.start({ ...p, p2p, chain: f, models: [model] }));
  return { model, agentId, personaId, ...(options.adapter === true && { adapter: { cid: "bafyadapter", sha256: adapterSha } }), fakes };
}

async function clientLibp2p() {
  const host = await createClientHost();
  clients.push(host);
  return host.start();
}

async function chatFor(w: Awaited<ReturnType<typeof world>>, extra: Partial<OpenChatOptions> = {}): Promise<ChatSession> {
  return openChat({
    libp2p: await clientLibp2p(),
    contracts: reader,
    signer: payer,
    escrow,
    agentId: w.agentId,
    personaId: w.personaId,
    modelSha256: w.model,
    ...(w.adapter !== undefined && { adapter: w.adapter }),
    spendingCap: 10n * USD,
    stallTimeoutMs: 400,
    ...extra,
  });
}

function record(chat: ChatSession) {
  const events: { type: keyof ChatEvents; detail: Record<string, unknown> }[] = [];
  for (const type of ["session:opened", "provider:failed", "turn:retry", "provider:dropped", "voucher:sent", "voucher:failed", "lane:committed"] as const) {
    chat.addEventListener(type, (e: CustomEvent) => events.push({ type, detail: e.detail as Record<string, unknown> }));
  }
  return events;
}

const PRICE = { input: 1_000_000n, output: 2_000_000n };

describe("discovery", () => {
  it("reads active providers of a model from the registry, with their records", async () => {
    const w = await world([{ label: "A", prices: PRICE }, { label: "B", prices: { input: 3n, output: 4n } }]);
    const records = await readProviders(reader.providerRegistry, { modelSha256: w.model });
    expect(records.map((r) => r.address).sort()).toEqual(w.fakes.map((p) => p.address).sort());
    const b = records.find((r) => r.address === w.fakes[1]!.address)!;
    expect(b).toMatchObject({
      peerId: w.fakes[1]!.host.peerId.toString(),
      multiaddrs: w.fakes[1]!.host.multiaddrs().map(String),
      modelHashes: [w.model],
      prices: { input: 3n, output: 4n },
      stake: BigInt(f.deployment.parameters.minStake),
      active: true,
    });
    expect(await readProviders(reader.providerRegistry, { modelSha256: hexlify(randomBytes(32)) })).toEqual([]);
  });

  it("falls back to the DHT when the registered addresses are dead", async () => {
    const seed = await p2p.host();
    const bootstrap = [seed.multiaddrs()[0]!.toString()];
    const w = await world([{ label: "A", registeredMultiaddrs: () => ["/ip4/127.0.0.1/tcp/1"] }]);
    const peerId = w.fakes[0]!.host.peerId;
    // The provider joins the DHT through the seed, as `soulmesh provider start` would with a bootstrap list.
    await w.fakes[0]!.host.libp2p.dial(seed.multiaddrs()[0]!);
    const [rec] = await readProviders(reader.providerRegistry, { modelSha256: w.model });
    // The seed adds the provider to its routing table once identify shows it speaks the DHT: until then a
    // lookup finds nothing. Each try uses a fresh client, which knows nothing of the provider beforehand.
    const until = Date.now() + 15_000;
    let resolved: Awaited<ReturnType<typeof resolveProvider>> | undefined;
    while (resolved === undefined) {
      const host = await createClientHost({ bootstrap });
      clients.push(host);
      const libp2p = await host.start();
      expect(await libp2p.peerStore.has(peerId)).toBe(false);
      try {
        resolved = await resolveProvider(libp2p, rec!, { timeoutMs: 2_000 });
      } catch (err) {
        if (Date.now() > until) throw err;
        await host.stop();
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      expect(resolved.source).toBe("dht");
      expect(resolved.peerId.toString()).toBe(peerId.toString());
      // And the protocols work on what the DHT found.
      const quote = await requestQuote(libp2p, resolved.peerId, { modelSha256: w.model });
      expect(quote.quote.provider).toBe(w.fakes[0]!.address);
    }
  }, 30_000);
});

describe("chat", () => {
  it("runs turns on the cheapest provider, paying each with a voucher of the exact cumulative totals", async () => {
    const w = await world([
      { label: "A", prices: { input: 3_000_000n, output: 9_000_000n } },
      { label: "B", prices: PRICE },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const chat = await chatFor(w);
    expect(chat.providers).toEqual([b.address, a.address]);
    const events = record(chat);
    const chunks: string[] = [];
    const prompts = ["Hello there, how are you?", "Tell me a story about a dragon.", "And then?"];
    const history: { role: "user" | "assistant"; content: string }[] = [];
    for (const [i, content] of prompts.entries()) {
      history.push({ role: "user", content });
      const result = await chat.turn({ prompt: [...history], maxTokens: 16, onChunk: (t) => chunks.push(t) });
      history.push({ role: "assistant", content: result.text });
      expect(result.text).toBe("B0 B1 B2 B3 B4 ");
      expect(result.provider).toBe(b.address);
      expect(result.failovers).toEqual([]);
      expect(result.violations).toEqual([]);
      expect(result.receipt.turn).toBe(i);
      // The voucher carries the provider's served totals to the token, and is the payer's signature.
      const served = b.served();
      const v = b.vouchers.at(-1)!;
      expect(b.vouchers).toHaveLength(i + 1);
      expect([v.voucher.inputTokens, v.voucher.outputTokens]).toEqual([served.input, served.output]);
      expect(result.payment!.voucher).toEqual(v.voucher);
      expect(verifyVoucher(v.voucher, escrow, v.signature)).toBe(true);
      // The turn's cost is what its voucher adds to what leaves the lane: provider, royalty and fee.
      const previous = i === 0 ? { inputTokens: 0n, outputTokens: 0n } : b.vouchers.at(-2)!.voucher;
      expect(result.cost).toEqual(voucherCost(v.voucher, { inputTokens: previous.inputTokens, outputTokens: previous.outputTokens }));
      expect(result.cost.royaltyAmount).toBeGreaterThan(0n);
    }
    expect(chunks.join("")).toBe("B0 B1 B2 B3 B4 ".repeat(3));
    expect(chat.turns).toBe(3);
    expect(a.inferences).toEqual([]);

    // One session: signed by the payer, at the quoted prices, within the escrow's voucher lifetime.
    expect(b.opens).toHaveLength(1);
    const open = b.opens[0]!;
    expect(verifySessionRequest(open.request, open.signature)).toBe(true);
    expect(open.request).toMatchObject({
      payer: payer.address,
      provider: b.address,
      agentId: w.agentId.toString(),
      personaId: w.personaId.toString(),
      priceInputPerMillion: "1000000",
      priceOutputPerMillion: "2000000",
      royaltyPerMillion: "100000",
      feeBps: "0",
    });
    // The session's cap is what the provider holds against the lane while it is open: the chat's cap, but no
    // more than 32 worst-case turns (full price: every input token the prompt's size allows and maxTokens).
    const worstTurn = sessionCost({ inputTokens: BigInt(promptTokenUpperBound({ kind: "chat", messages: history.slice(0, 1) })), outputTokens: 16n }, ratesOf(open.request));
    expect(BigInt(open.request.spendingCap)).toBe(32n * worstTurn);
    // The lane with B was funded once, from the free deposit, before the session: the chat's cap.
    const commits = events.filter((e) => e.type === "lane:committed");
    expect(commits.map((e) => e.detail)).toEqual([{ provider: b.address, amount: 10n * USD, txHash: expect.stringMatching(/^0x/), method: "commit" }]);
    expect(open.stateKey).toMatch(/^0x[0-9a-f]{64}$/);
    const now = await chain.now();
    expect(Number(open.request.expiry)).toBeLessThanOrEqual(now + f.deployment.parameters.maxVoucherLifetime);
    expect(Number(open.request.expiry)).toBeGreaterThan(now + 3000);
    expect(events.filter((e) => e.type === "session:opened")[0]!.detail).toMatchObject({ sessionId: hashSessionRequest(open.request) });

    // Later turns reuse the KV cache: billed input counts only the new part of the prompt.
    const v = b.vouchers.map((x) => x.voucher);
    const firstPrompt = fakeTokenCount({ kind: "chat", messages: history.slice(0, 1) });
    expect(v[0]!.inputTokens).toBe(BigInt(firstPrompt));
    expect(v[2]!.inputTokens).toBe(BigInt(fakeTokenCount({ kind: "chat", messages: history.slice(0, 5) })));
    expect(events.filter((e) => e.type === "voucher:sent")).toHaveLength(3);
    // Spent is the full price of the session's totals: what its last voucher takes from the lane.
    expect(chat.spent).toBe(sessionCost(v[2]!, ratesOf(open.request)));

    // The provider settles the last voucher on chain: it now has a reputation, and the lane lost what was spent.
    const last = b.vouchers.at(-1)!;
    const [laneBefore] = await reader.inferenceEscrow.laneOf(payer.address, b.address);
    await (await b.contracts.inferenceEscrow.settle(last.voucher, last.signature)).wait();
    const [laneAfter] = await reader.inferenceEscrow.laneOf(payer.address, b.address);
    expect(laneBefore - laneAfter).toBe(chat.spent);
    const reputation = await readReputation(reader.inferenceEscrow, { fromBlock: f.deployment.startBlock });
    expect(reputation.get(b.address)).toMatchObject({ settledVouchers: 1, payers: 1, inputTokens: last.voucher.inputTokens, outputTokens: last.voucher.outputTokens });
    expect(reputation.get(b.address)!.paidToProvider).toBe((v[2]!.inputTokens * PRICE.input + v[2]!.outputTokens * PRICE.output) / 1_000_000n);
    chat.close();
  });

  it("sends the persona's adapter and checks the agent, persona and model against the chain", async () => {
    const w = await world([{ label: "A", cachedAdapters: [] }], { adapter: true });
    const chat = await chatFor(w);
    const result = await chat.turn({ prompt: "hi", maxTokens: 3 });
    expect(result.text).toBe("A0 A1 A2 ");
    expect(result.stopReason).toBe("length");
    expect(w.fakes[0]!.opens[0]!.adapterCid).toBe("bafyadapter");
    expect(w.fakes[0]!.inferences[0]!.adapters).toEqual([w.adapter!.sha256]);
    const { adapter: _adapter, ...noAdapter } = w;
    await expect(chatFor(noAdapter)).rejects.toBeInstanceOf(PersonaMismatchError);
    await expect(chatFor({ ...w, model: hexlify(randomBytes(32)) })).rejects.toThrow(/runs on model/);
    await expect(chatFor({ ...w, personaId: w.personaId + 1000n })).rejects.toThrow();
  });

  it("says how to get a provider when none serves the model", async () => {
    const w = await world([]);
    const err = await chatFor(w).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoProviderError);
    expect((err as Error).message).toMatch(/No active provider serves model .*soulmesh provider start/);
  });

  it("fails over when the provider stalls: the turn completes elsewhere, the stalled one is not paid", async () => {
    const w = await world([
      { label: "A", prices: PRICE, behavior: { kind: "stall", afterChunks: 2 } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const chat = await chatFor(w);
    const events = record(chat);
    const chunks: string[] = [];
    const started = Date.now();
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8, onChunk: (t) => chunks.push(t) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(result.text).toBe("B0 B1 B2 B3 B4 ");
    expect(result.provider).toBe(b.address);
    expect(result.failovers).toEqual([expect.objectContaining({ provider: a.address, kind: "stall" })]);
    expect((result.failovers[0]!.error as Error).name).toBe("ProviderStalledError");
    // The UI saw A's two chunks, then was told to clear them, then got B's.
    expect(chunks.join("")).toBe("A0 A1 B0 B1 B2 B3 B4 ");
    const retry = events.find((e) => e.type === "turn:retry")!;
    expect(retry.detail).toMatchObject({ turn: 0, attempt: 1, failed: a.address, discardedText: "A0 A1 " });
    // Each provider's lane was funded once, before its first session.
    expect(events.map((e) => e.type)).toEqual([
      "lane:committed",
      "session:opened",
      "provider:failed",
      "turn:retry",
      "lane:committed",
      "session:opened",
      "voucher:sent",
    ]);
    // A served two tokens but never gets a voucher: its loss is bounded by the one turn.
    expect(a.served().output).toBe(2n);
    expect(a.vouchers).toEqual([]);
    expect(b.vouchers).toHaveLength(1);
    expect(b.vouchers[0]!.voucher.outputTokens).toBe(5n);
    // The next turn stays on B.
    expect((await chat.turn({ prompt: "Again", maxTokens: 8 })).provider).toBe(b.address);
    expect(a.inferences).toHaveLength(1);
  });

  it("fails over when the provider dies mid-stream", async () => {
    const w = await world([
      { label: "A", prices: PRICE, behavior: { kind: "die", afterChunks: 3 } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const chat = await chatFor(w, { stallTimeoutMs: 10_000 });
    const events = record(chat);
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(result.provider).toBe(b.address);
    expect(result.failovers.map((x) => x.kind)).toEqual(["died"]);
    expect(events.find((e) => e.type === "turn:retry")!.detail["discardedText"]).toBe("A0 A1 A2 ");
    expect(a.vouchers).toEqual([]);
    expect(b.vouchers.map((v) => v.voucher.outputTokens)).toEqual([5n]);
  });

  it("fails over when the provider is busy, and pays only the one that served", async () => {
    const w = await world([
      { label: "A", prices: PRICE, behavior: { kind: "busy" } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const chat = await chatFor(w);
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(result.provider).toBe(b.address);
    expect(result.failovers.map((x) => x.kind)).toEqual(["busy"]);
    expect(a.vouchers).toEqual([]);
    // A busy provider is not held against it: once free, it serves the next turns again (it is cheaper).
    a.behavior = { kind: "honest" };
    const second = await chat.turn({ prompt: "Hello again", maxTokens: 8 });
    expect(second.provider).toBe(b.address); // the provider that served last is kept while it works
    expect(chat.providers).toEqual([a.address, b.address]);
  });

  it("waits for the only provider while it is busy, then serves the same turn on the same session", async () => {
    const w = await world([{ label: "A", prices: PRICE }]);
    const [a] = w.fakes as [FakeProvider];
    const chat = await chatFor(w);
    await chat.turn({ prompt: "Hello", maxTokens: 8 });
    a.behavior = { kind: "busy" };
    // Free again during the client's first wait (150–300 ms): no new session, no failed turn.
    setTimeout(() => (a.behavior = { kind: "honest" }), 50);
    const second = await chat.turn({ prompt: "Hello again", maxTokens: 8 });
    expect(second.provider).toBe(a.address);
    expect(second.failovers.map((x) => x.kind)).toEqual(["busy"]);
    expect(second.receipt.turn).toBe(1);
    expect(a.opens).toHaveLength(1);
    expect(a.vouchers.map((v) => v.voucher.outputTokens)).toEqual([5n, 10n]);
  });

  it("fails a turn typed once the only provider stays busy through every wait, paying nothing for it", async () => {
    const w = await world([{ label: "A", prices: PRICE, behavior: { kind: "busy" } }]);
    const chat = await chatFor(w);
    const err = await chat.turn({ prompt: "Hello", maxTokens: 8 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AllProvidersFailedError);
    // The first refusal and one per wait.
    expect((err as AllProvidersFailedError).failures.map((x) => x.kind)).toEqual(["busy", "busy", "busy", "busy"]);
    expect(w.fakes[0]!.vouchers).toEqual([]);
  });

  it("pays an overcharging provider only the capped amount, drops it, and moves on", async () => {
    const w = await world([
      { label: "A", prices: PRICE, behavior: { kind: "overcharge", extraOutput: 50, extraInput: 7 } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const blocklist = new ProviderBlocklist();
    const tokenizer: LocalTokenizer = { modelSha256: w.model, count: fakeTokenCount, dispose: async () => {} };
    const chat = await chatFor(w, { blocklist, tokenizer });
    const events = record(chat);
    const prompt = "Overcharge me if you can";
    const result = await chat.turn({ prompt, maxTokens: 8, onChunk: () => {} });
    // The text was delivered and is kept; the payment is capped: output at maxTokens, input at the local count.
    expect(result.provider).toBe(a.address);
    expect(result.text).toBe("A0 A1 A2 A3 A4 ");
    // (55 output tokens are above maxTokens and above what the 15 bytes streamed can hold.)
    expect(result.violations.map((v) => v.kind)).toEqual(["output-over-max", "output-over-text", "input-mismatch"]);
    const local = BigInt(fakeTokenCount({ kind: "chat", messages: [{ role: "user", content: prompt }] }));
    expect(result.billed).toEqual({ inputTokens: local, outputTokens: 8n });
    expect(a.vouchers).toHaveLength(1);
    const paid = a.vouchers[0]!.voucher;
    expect([paid.inputTokens, paid.outputTokens]).toEqual([local, 8n]);
    // The excess was never signed: the provider claims far more than any voucher it holds.
    expect(a.served()).toEqual({ input: local + 7n, output: 55n });
    expect(blocklist.has(a.address)).toBe(true);
    expect(events.find((e) => e.type === "provider:dropped")!.detail["provider"]).toBe(a.address);
    // Never used again, by this chat or another sharing the blocklist.
    const next = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(next.provider).toBe(b.address);
    expect(a.inferences).toHaveLength(1);
    const other = await chatFor(w, { blocklist });
    expect(other.providers).toEqual([b.address]);
  });

  it("pays nothing for a turn whose receipt is not the provider's, and runs it elsewhere", async () => {
    const w = await world([
      { label: "A", prices: PRICE, behavior: { kind: "bad-receipt" } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    const chat = await chatFor(w);
    const events = record(chat);
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(result.provider).toBe(b.address);
    expect(result.failovers.map((x) => x.kind)).toEqual(["receipt"]);
    expect(a.vouchers).toEqual([]);
    expect(chat.blocklist.has(a.address)).toBe(true);
    expect(events.find((e) => e.type === "turn:retry")!.detail["discardedText"]).toBe("A0 A1 A2 A3 A4 ");
  });

  it("when every provider fails, the turn fails typed and nothing is paid", async () => {
    const w = await world([
      { label: "A", behavior: { kind: "stall", afterChunks: 0 } },
      { label: "B", behavior: { kind: "busy" } },
    ]);
    const chat = await chatFor(w, { stallTimeoutMs: 300 });
    const err = await chat.turn({ prompt: "Hello", maxTokens: 8 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AllProvidersFailedError);
    // The stalled one is not asked again; the busy one is, after each wait.
    expect((err as AllProvidersFailedError).failures.map((x) => x.kind).sort()).toEqual(["busy", "busy", "busy", "busy", "stall"]);
    expect((err as Error).message).toMatch(/not charged/);
    expect(w.fakes.flatMap((p) => p.vouchers)).toEqual([]);
    expect(chat.spent).toBe(0n);
  });

  it("reports funds too low for a turn as such, saying what to do", async () => {
    // A payer whose deposit and wallet together cannot pay one turn's worst case.
    const poor = await fundedWallet(f);
    await f.deposit(poor, 5n);
    const w = await world([{ label: "A", prices: PRICE }]);
    const agentId = await f.mintAgent(poor, w.personaId);
    const chat = await chatFor({ ...w, agentId }, { signer: poor, spendingCap: 100_000n * USD });
    const err = await chat.turn({ prompt: "Hello", maxTokens: 8 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EscrowTooLowError);
    expect((err as Error).message).toMatch(/Deposit more .*fewer maxTokens/);
    expect((err as EscrowTooLowError).shortfall).toMatchObject({ provider: w.fakes[0]!.address, deposit: 5n, wallet: 0n });
    // Nothing was committed, opened or paid.
    expect(await reader.inferenceEscrow.laneOf(poor.address, w.fakes[0]!.address)).toEqual([0n, 0n]);
    expect(w.fakes[0]!.opens).toEqual([]);
  });

  it("a cap above the funds is bounded by the live lane: the session asks for what the lane holds", async () => {
    const modest = await fundedWallet(f);
    await f.deposit(modest, 2n * USD);
    const w = await world([{ label: "A", prices: PRICE }]);
    const agentId = await f.mintAgent(modest, w.personaId);
    const chat = await chatFor({ ...w, agentId }, { signer: modest, spendingCap: 100_000n * USD });
    const first = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(first.payment!.ack).toBeDefined();
    // The whole free deposit went to the lane, and the session's cap is what the lane holds, not the chat's cap.
    expect(await reader.inferenceEscrow.depositOf(modest.address)).toBe(0n);
    expect(await reader.inferenceEscrow.laneOf(modest.address, w.fakes[0]!.address)).toEqual([2n * USD, 0n]);
    expect(BigInt(w.fakes[0]!.opens[0]!.request.spendingCap)).toBeLessThanOrEqual(2n * USD);
  });

  it("commits from the wallet with a permit, in one transaction, when the free deposit is short", async () => {
    const holder = await fundedWallet(f);
    await f.fund(holder.address, 3n * USD);
    const w = await world([{ label: "A", prices: PRICE }]);
    const agentId = await f.mintAgent(holder, w.personaId);
    const chat = await chatFor({ ...w, agentId }, { signer: holder, spendingCap: 1n * USD });
    const events = record(chat);
    const nonce = await holder.getNonce();
    await chat.turn({ prompt: "Hello", maxTokens: 8 });
    await chat.turn({ prompt: "Hello again", maxTokens: 8 });
    const commits = events.filter((e) => e.type === "lane:committed").map((e) => e.detail);
    expect(commits).toEqual([{ provider: w.fakes[0]!.address, amount: 1n * USD, txHash: expect.stringMatching(/^0x/), method: "permit" }]);
    // One transaction in all (no approval, none per message).
    expect(await holder.getNonce()).toBe(nonce + 1);
    expect(await reader.inferenceEscrow.laneOf(holder.address, w.fakes[0]!.address)).toEqual([1n * USD, 0n]);
    expect(await reader.token.balanceOf(holder.address)).toBe(2n * USD);
  });

  it("stops at the spending cap before asking for a turn that could exceed it", async () => {
    const w = await world([{ label: "A", prices: { input: 1_000_000n, output: 1_000_000n } }]);
    // With the model's token counts, the turn's input bound is exact (else it is the prompt's byte count).
    const tokenizer: LocalTokenizer = { modelSha256: w.model, count: fakeTokenCount, dispose: async () => {} };
    const chat = await chatFor(w, { spendingCap: 40n, tokenizer });
    const first = await chat.turn({ prompt: "Hi", maxTokens: 5 });
    expect(first.payment!.ack).toBeDefined();
    const err = await chat.turn({ prompt: "Hi", maxTokens: 40 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpendingCapReachedError);
    expect(w.fakes[0]!.inferences).toHaveLength(1);
  });

  // A cancelled turn is paid for what the provider delivered: unpaid, it would lock the payer out of every
  // session with that provider (one unpaid turn per payer) until expiry. (It was "not paid" before issue 14.)
  it("aborts a turn on its signal, closes its session and pays what was delivered, counted in spent; the next turn opens a fresh session", async () => {
    const w = await world([{ label: "A", prices: PRICE, chunkDelayMs: 100, outputLength: 20 }]);
    const [a] = w.fakes as [FakeProvider];
    const chat = await chatFor(w, { stallTimeoutMs: 5_000 });
    const cancelled: ChatEvents["turn:cancelled"]["detail"][] = [];
    chat.addEventListener("turn:cancelled", (e) => cancelled.push(e.detail));
    const controller = new AbortController();
    const reason = new Error("user pressed stop");
    const pending = chat.turn({
      prompt: "Long answer please",
      maxTokens: 20,
      signal: controller.signal,
      onChunk: (_t, { index }) => index === 1 && controller.abort(reason),
    });
    await expect(pending).rejects.toBe(reason);
    // The session was closed, and the voucher for exactly what it served was sent and accepted.
    expect(a.closes).toHaveLength(1);
    expect(a.vouchers).toHaveLength(1);
    const paid = a.vouchers[0]!.voucher;
    expect({ input: paid.inputTokens, output: paid.outputTokens }).toEqual(a.closes[0]!.served);
    // Two words received; a third may have been generated (and counted) while the abort travelled.
    expect(paid.outputTokens >= 2n && paid.outputTokens <= 3n).toBe(true);
    expect(cancelled).toHaveLength(1);
    expect(cancelled[0]).toMatchObject({ provider: a.address, text: "A0 A1 ", paid: true, billed: { inputTokens: paid.inputTokens, outputTokens: paid.outputTokens } });
    expect(cancelled[0]!.cost.total).toBe(sessionCost(paid, ratesOf(a.opens[0]!.request)));
    expect(chat.spent).toBe(cancelled[0]!.cost.total);

    const next = await chat.turn({ prompt: "Short then", maxTokens: 2 });
    expect(next.text).toBe("A0 A1 ");
    expect(a.opens).toHaveLength(2);
    expect(next.receipt.turn).toBe(0);
    expect(a.vouchers).toHaveLength(2);
    expect(chat.spent).toBe(cancelled[0]!.cost.total + next.cost.total);
    // Closing the chat closes its open session with the provider (so that it settles it now).
    await chat.close();
    expect(a.closes.map((c) => c.sessionId)).toEqual([a.vouchers[0]!.sessionId, a.vouchers[1]!.sessionId]);
    await expect(chat.turn({ prompt: "x", maxTokens: 1 })).rejects.toMatchObject({ name: "ChatClosedError" });
  });

  it("pays nothing for a cancelled turn whose provider claims more than the text received could hold, and drops it", async () => {
    const w = await world([{ label: "A", prices: PRICE, chunkDelayMs: 100, outputLength: 20, behavior: { kind: "inflate-close", extraOutput: 500 } }]);
    const [a] = w.fakes as [FakeProvider];
    const blocklist = new ProviderBlocklist();
    const chat = await chatFor(w, { stallTimeoutMs: 5_000, blocklist });
    const events = record(chat);
    const controller = new AbortController();
    const pending = chat.turn({ prompt: "Long answer please", maxTokens: 600, signal: controller.signal, onChunk: () => controller.abort() });
    await expect(pending).rejects.toBeDefined();
    expect(a.closes).toHaveLength(1);
    expect(a.vouchers).toEqual([]);
    expect(chat.spent).toBe(0n);
    expect(blocklist.has(a.address)).toBe(true);
    expect(events.find((e) => e.type === "provider:dropped")!.detail["violations"]).toMatchObject([{ kind: "output-over-max" }]);
    await chat.close();
  });

  it("closing a chat whose provider is gone does not fail, and reports it", async () => {
    const w = await world([{ label: "A", prices: PRICE }]);
    const [a] = w.fakes as [FakeProvider];
    const chat = await chatFor(w);
    await chat.turn({ prompt: "Hi", maxTokens: 2 });
    const failed: ChatEvents["session:close-failed"]["detail"][] = [];
    chat.addEventListener("session:close-failed", (e) => failed.push(e.detail));
    await a.host.stop();
    const started = Date.now();
    await chat.close();
    expect(Date.now() - started).toBeLessThan(6_000);
    expect(failed.map((f) => f.provider)).toEqual([a.address]);
  });

  it("attack 8: two chats of one agent sharing a ledger draw their session numbers from one source, above the provider's latest, and each turn is paid", async () => {
    const w = await world([{ label: "A", prices: PRICE }]);
    const [a] = w.fakes as [FakeProvider];
    const lanes = new LaneLedger();
    const user = await chatFor(w, { lanes });
    const maintenance = await chatFor(w, { lanes });
    for (let i = 0; i < 2; i++) {
      await user.turn({ prompt: `user ${i}`, maxTokens: 2 });
      await maintenance.turn({ prompt: `maintenance ${i}`, maxTokens: 2 });
    }
    const numbers = a.opens.map((o) => BigInt(o.request.session));
    expect(numbers).toEqual([...numbers].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));
    expect(new Set(numbers).size).toBe(numbers.length);
    expect(a.vouchers).toHaveLength(4);
    await Promise.all([user.close(), maintenance.close()]);
  });
});

// Issue 14, the attacks against users: each was seen to succeed against the client as it was (ported to the
// new voucher fields only), and fails now.
describe("attacks on the payer", () => {
  it("attack 9: a provider that quotes cheaply to be ranked first and asks more at session open gets nothing signed; the turn moves on", async () => {
    const w = await world([
      // 1 tUSD per input token once ranked: an 8-token turn would cost the payer several tUSD.
      { label: "A", prices: PRICE, behavior: { kind: "bait", raised: { input: 1_000_000_000_000n, output: PRICE.output } } },
      { label: "B", prices: { input: 2_000_000n, output: 4_000_000n } },
    ]);
    const [a, b] = w.fakes as [FakeProvider, FakeProvider];
    for (const p of w.fakes) await f.depositAndCommit(payer, p.address, 20n * USD);
    const chat = await chatFor(w);
    expect(chat.providers).toEqual([a.address, b.address]);
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    // Nothing was signed at the raised price: no session request, no voucher.
    expect(a.opens).toEqual([]);
    expect(a.vouchers).toEqual([]);
    expect(result.provider).toBe(b.address);
    expect(result.failovers).toEqual([expect.objectContaining({ provider: a.address, kind: "price" })]);
    expect(result.failovers[0]!.error).toBeInstanceOf(QuoteRaisedError);
    // Skipped for the rest of the chat, even though it is the cheapest on paper.
    await chat.turn({ prompt: "Hello again", maxTokens: 8 });
    expect(a.quotesServed).toBe(2);
    expect(chat.providers).toEqual([b.address]);
    expect(chat.spent).toBeLessThan(1n * USD);
  });

  it("attack 9: a re-quote above the ranking's maxPrices is refused too", async () => {
    const w = await world([{ label: "A", prices: PRICE, behavior: { kind: "bait", raised: { input: 3_000_000n, output: PRICE.output } } }]);
    await f.depositAndCommit(payer, w.fakes[0]!.address, 20n * USD);
    const chat = await chatFor(w, { ranking: { maxPrices: { input: 4_000_000n, output: 4_000_000n } } });
    const err = await chat.turn({ prompt: "Hello", maxTokens: 8 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AllProvidersFailedError);
    expect((err as AllProvidersFailedError).failures.map((x) => x.kind)).toEqual(["price"]);
    expect(w.fakes[0]!.vouchers).toEqual([]);
  });

  it("attack 13: the cost shown is the cost paid: with a royalty of 50 tUSD/M and a 2.5% fee, each turn's cost and the chat's total equal what the lane loses", async () => {
    await (await f.contracts.inferenceEscrow.scheduleProtocolFee(250)).wait();
    await chain.increaseTime(Number(await reader.inferenceEscrow.feeDelay()) + 1);
    expect((await reader.inferenceEscrow.protocolFee())[0]).toBe(250n);
    const w = await world([{ label: "A", prices: { input: 500_000n, output: 1_500_000n } }], { royaltyPerMillion: 50_000_000n });
    const [a] = w.fakes as [FakeProvider];
    await f.depositAndCommit(payer, a.address, 20n * USD);
    const chat = await chatFor(w, { spendingCap: 5n * USD });
    let shown = 0n;
    const history: { role: "user" | "assistant"; content: string }[] = [];
    for (const content of ["Hi", "Tell me more", "And then?", "Thanks"]) {
      history.push({ role: "user", content });
      const r = await chat.turn({ prompt: [...history], maxTokens: 16 });
      history.push({ role: "assistant", content: r.text });
      expect(r.cost.royaltyAmount).toBeGreaterThan(r.cost.providerAmount);
      expect(r.cost.feeAmount).toBeGreaterThan(0n);
      expect(r.cost.total).toBe(r.cost.providerAmount + r.cost.royaltyAmount + r.cost.feeAmount);
      shown += r.cost.total;
    }
    expect(chat.spent).toBe(shown);
    const open = a.opens[0]!.request;
    expect([open.royaltyPerMillion, open.feeBps]).toEqual(["50000000", "250"]);
    expect(a.vouchers.every((v) => v.voucher.royaltyPerMillion === 50_000_000n && v.voucher.feeBps === 250n)).toBe(true);
    // The provider settles the session's last voucher: the lane loses exactly what the chat showed.
    const last = a.vouchers.at(-1)!;
    const [before] = await reader.inferenceEscrow.laneOf(payer.address, a.address);
    await (await a.contracts.inferenceEscrow.settle(last.voucher, last.signature)).wait();
    const [after] = await reader.inferenceEscrow.laneOf(payer.address, a.address);
    expect(before - after).toBe(shown);
  });

  it("attack 14: the cap is read against the live funds: after part of the deposit is withdrawn, the chat goes on with the rest", async () => {
    const saver = await fundedWallet(f);
    await f.deposit(saver, 3n * USD);
    const w = await world([{ label: "A", prices: PRICE }]);
    const agentId = await f.mintAgent(saver, w.personaId);
    // A cap fixed at start at 90% of the deposit, as `serve` did.
    const chat = await chatFor({ ...w, agentId }, { signer: saver, spendingCap: 2_700_000n });
    const escrowAsSaver = f.as(saver).inferenceEscrow;
    await (await escrowAsSaver.requestWithdrawal(2n * USD)).wait();
    await chain.increaseTime(f.deployment.parameters.withdrawalDelay + 1);
    await (await escrowAsSaver.completeWithdrawal()).wait();
    const result = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(result.payment!.ack).toBeDefined();
    // What was left of the free deposit went to the lane, and the session fits in it.
    expect(await reader.inferenceEscrow.laneOf(saver.address, w.fakes[0]!.address)).toEqual([1n * USD, 0n]);
    expect(BigInt(w.fakes[0]!.opens[0]!.request.spendingCap)).toBeLessThanOrEqual(1n * USD);
  });

  it("attack 14: after chain time moves past the session's expiry (a devnet's time travel), the next turn opens a fresh session with the same provider instead of blaming it", async () => {
    const traveller = await fundedWallet(f);
    await f.deposit(traveller, 3n * USD);
    const w = await world([{ label: "A", prices: PRICE }]);
    const agentId = await f.mintAgent(traveller, w.personaId);
    const chat = await chatFor({ ...w, agentId }, { signer: traveller, spendingCap: 2n * USD });
    const first = await chat.turn({ prompt: "Hello", maxTokens: 8 });
    expect(first.payment!.ack).toBeDefined();
    // Past the session's expiry on the chain, while this client's clock has not moved.
    await chain.increaseTime(2 * 3600);
    const second = await chat.turn({ prompt: "Still there?", maxTokens: 8 });
    expect(second.provider).toBe(w.fakes[0]!.address);
    expect(second.failovers).toEqual([]);
    expect(second.payment!.ack).toBeDefined();
    expect(w.fakes[0]!.opens).toHaveLength(2);
  });

  it("rates: signs the royalty in force and ends the session before a pending rise; signs the higher rate once the rise is too near", async () => {
    const w = await world([{ label: "A", prices: PRICE }]);
    const [a] = w.fakes as [FakeProvider];
    await f.depositAndCommit(payer, a.address, 20n * USD);
    await (await f.as(creator).personaRegistry.scheduleRoyalty(w.personaId, 300_000n)).wait();
    const [, next, effectiveAt] = await reader.personaRegistry.royaltyScheduleOf(w.personaId);
    expect(next).toBe(300_000n);
    await chain.increaseTime(Number(effectiveAt) - (await chain.now()) - 1800);
    const early = await chatFor(w);
    await early.turn({ prompt: "Hello", maxTokens: 4 });
    const first = a.opens[0]!.request;
    expect(first.royaltyPerMillion).toBe("100000");
    expect(BigInt(first.expiry)).toBe(effectiveAt - 60n);
    expect(a.vouchers[0]!.voucher.royaltyPerMillion).toBe(100_000n);
    early.close();

    await chain.increaseTime(Number(effectiveAt) - (await chain.now()) - 150);
    const late = await chatFor(w);
    const r = await late.turn({ prompt: "Hello", maxTokens: 4 });
    const second = a.opens[1]!.request;
    expect(second.royaltyPerMillion).toBe("300000");
    expect(BigInt(second.expiry)).toBeGreaterThan(effectiveAt);
    expect(r.payment!.voucher.royaltyPerMillion).toBe(300_000n);
    // Settled after the rise took effect, the voucher is still good (it carries the new rate).
    await chain.increaseTime(300);
    await (await a.contracts.inferenceEscrow.settle(r.payment!.voucher, r.payment!.signature)).wait();
  });
});
