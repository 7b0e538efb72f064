// The client SDK against the real provider protocols (node/p2p/provider-protocols.ts) on the tiny fixture
// model: engine, voucher book, EDR chain, libp2p over TCP loopback. One chat of two turns, input tokens
// checked exactly with a local vocabulary-only tokenizer of the same model file.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { verifyVoucher } from "../../sdk/chain/voucher.js";
import { createClientHost, loadLocalTokenizer, openChat, type ClientHost, type LocalTokenizer } from "../../sdk/client/index.js";
import { VoucherBook } from "../../node/billing/voucher-book.js";
import type { InferenceEngine } from "../../node/engine/index.js";
import type { ProviderHost } from "../../node/p2p/host.js";
import { serveProviderProtocols, type ProviderProtocols } from "../../node/p2p/provider-protocols.js";
import { serveQuotes } from "../../node/p2p/quote.js";
import { chainViewOf } from "../../node/p2p/sessions.js";
import { Fixture as NetFixture } from "../../node/p2p/test-support.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { startTinyEngine, type TinyEngine } from "../helpers/tiny-engine.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, USD, type Fixture } from "../helpers/soulmesh.js";

const PRICES = { input: 500_000n, output: 1_500_000n };
const ADAPTER_CID = "bafyPersonaAdapter";

let chain: TestChain;
let f: Fixture;
let providerWallet: Wallet, payer: Wallet, creator: Wallet;
let escrow: { chainId: number; address: string };
let fx: TinyFixtures;
let tiny: TinyEngine;
let root: string;
let engine: InferenceEngine;
let book: VoucherBook;
let protocols: ProviderProtocols;
let tokenizer: LocalTokenizer;
let server: ProviderHost;
let client: ClientHost;
const net = new NetFixture();

beforeAll(async () => {
  chain = await createTestChain();
  [, providerWallet, payer, creator] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  f = await deployFixture(chain);
  escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  fx = await tinyFixtures();
  root = await mkdtemp(join(tmpdir(), "soulmesh-client-real-"));
  tiny = await startTinyEngine(root, fx, { [ADAPTER_CID]: fx.adapters[0]!.path });
  engine = tiny.engine;
  book = new VoucherBook({ dir: join(root, "vouchers"), escrow, provider: providerWallet.address });
  await book.start();

  server = await net.host();
  protocols = await serveProviderProtocols({
    libp2p: server.libp2p,
    engine,
    book,
    chain: chainViewOf(connectContracts(f.deployment, chain.provider)),
    signer: providerWallet,
    escrow,
    prices: () => PRICES,
  });
  await serveQuotes(server.libp2p, {
    quoteSource: () => ({
      provider: providerWallet.address,
      models: [fx.base.sha256],
      cachedAdapters: [],
      priceInputPerMillion: PRICES.input.toString(),
      priceOutputPerMillion: PRICES.output.toString(),
      queueLength: engine.load.queued + engine.load.running,
      maxTokens: 256,
    }),
  });
  const stake = BigInt(f.deployment.parameters.minStake);
  await f.fund(providerWallet.address, stake);
  const asProvider = f.as(providerWallet);
  await (await asProvider.token.approve(f.deployment.contracts.providerRegistry, stake)).wait();
  await (
    await asProvider.providerRegistry.register(server.peerId.toString(), server.multiaddrs().map(String), [fx.base.sha256], PRICES.input, PRICES.output, stake)
  ).wait();
  await f.deposit(payer, 100n * USD);
  tokenizer = await loadLocalTokenizer(fx.base.path, { modelSha256: fx.base.sha256, llama: tiny.llama });
  client = await createClientHost();
}, 120_000);

afterAll(async () => {
  await client?.stop();
  await protocols?.stop();
  await net.cleanup();
  await tokenizer?.dispose();
  await book?.stop();
  await tiny?.stop();
  await chain?.close();
  if (root) await rm(root, { recursive: true, force: true });
  await removeTinyFixtures();
});

describe("client against the real provider", () => {
  it("chats two turns with a persona's adapter, every usage exact and every voucher accepted", async () => {
    const personaId = await f.createPersona(creator, { adapterSha256: fx.adapters[0]!.sha256, baseModelHash: fx.base.sha256 });
    const agentId = await f.mintAgent(payer, personaId);
    const accepted: { inputTokens: bigint; outputTokens: bigint }[] = [];
    protocols.addEventListener("voucher:accepted", (e) => accepted.push({ inputTokens: e.detail.inputTokens, outputTokens: e.detail.outputTokens }));
    const chat = await openChat({
      libp2p: await client.start(),
      contracts: connectContracts(f.deployment, chain.provider),
      signer: payer,
      escrow,
      agentId,
      personaId,
      modelSha256: fx.base.sha256,
      adapter: { cid: ADAPTER_CID, sha256: fx.adapters[0]!.sha256 },
      spendingCap: 5n * USD,
      tokenizer,
      stallTimeoutMs: 20_000,
    });
    const history: { role: "user" | "assistant"; content: string }[] = [{ role: "user", content: "Hello there" }];
    const first = await chat.turn({ prompt: [...history], maxTokens: 12, sampling: { temperature: 0, seed: 1 } });
    history.push({ role: "assistant", content: first.text }, { role: "user", content: "And then?" });
    const second = await chat.turn({ prompt: [...history], maxTokens: 12, sampling: { temperature: 0, seed: 1 } });
    for (const turn of [first, second]) {
      expect(turn.violations).toEqual([]);
      expect(turn.failovers).toEqual([]);
      expect(turn.provider).toBe(providerWallet.address);
      expect(turn.usage.outputTokens).toBeLessThanOrEqual(12);
      expect(turn.payment?.ack).toBeDefined();
    }
    expect(first.usage.inputTokens).toBe(tokenizer.count({ kind: "chat", messages: history.slice(0, 1) }));
    expect(second.usage.inputTokens).toBe(tokenizer.count({ kind: "chat", messages: history }));
    const v = second.payment!.voucher;
    expect(accepted.at(-1)).toEqual({ inputTokens: v.inputTokens, outputTokens: v.outputTokens });
    expect(verifyVoucher(v, escrow, second.payment!.signature)).toBe(true);
    expect(v.inputTokens).toBe(
      BigInt(first.usage.inputTokens - first.usage.cachedInputTokens + second.usage.inputTokens - second.usage.cachedInputTokens),
    );
    expect(v.outputTokens).toBe(BigInt(first.usage.outputTokens + second.usage.outputTokens));
    chat.close();
  }, 60_000);
});
