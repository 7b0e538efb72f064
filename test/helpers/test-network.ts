import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Wallet } from "ethers";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { createClientHost, openChat, type ChatSession, type ClientHost, type OpenChatOptions } from "../../sdk/client/index.js";
import { VoucherBook } from "../../node/billing/voucher-book.js";
import type { ProviderHost } from "../../node/p2p/host.js";
import { serveProviderProtocols, type ProviderProtocols } from "../../node/p2p/provider-protocols.js";
import { serveQuotes } from "../../node/p2p/quote.js";
import { chainViewOf } from "../../node/p2p/sessions.js";
import { Fixture as NetFixture } from "../../node/p2p/test-support.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { createTestChain, type TestChain } from "./chain.js";
import { deployFixture, USD, type Fixture } from "./soulmesh.js";
import { startTinyEngine, type TinyEngine } from "./tiny-engine.js";

export const TEST_PRICES = { input: 500_000n, output: 1_500_000n };
export const TEST_ADAPTER_CID = "bafyPersonaAdapter";

/** One registered provider (real protocols on the tiny model) and a payer with a deposit, on an in-process chain. */
export interface TestNetwork {
  chain: TestChain;
  f: Fixture;
  fx: TinyFixtures;
  tiny: TinyEngine;
  providerWallet: Wallet;
  payer: Wallet;
  creator: Wallet;
  escrow: { chainId: number; address: string };
  book: VoucherBook;
  protocols: ProviderProtocols;
  server: ProviderHost;
  client: ClientHost;
  /** A chat of `payer` on a new agent of a new persona of the tiny model (with adapter 0 when `withAdapter`). */
  openTestChat(options?: { withAdapter?: boolean } & Partial<Omit<OpenChatOptions, "adapter">>): Promise<ChatSession>;
  stop(): Promise<void>;
}

/**
 * Starts the network the SDK's integration tests chat on: EDR chain and contracts, the provider protocols and
 * quotes on a real engine over libp2p (TCP loopback), the provider registered, the payer funded.
 *
 * @example
 * const net = await startTestNetwork()
 * const chat = await net.openTestChat()
 * await net.stop()
 */
export async function startTestNetwork(): Promise<TestNetwork> {
  const chain = await createTestChain();
  const [, providerWallet, payer, creator] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  const f = await deployFixture(chain);
  const escrow = { chainId: f.deployment.chainId, address: f.deployment.contracts.inferenceEscrow };
  const fx = await tinyFixtures();
  const root = await mkdtemp(join(tmpdir(), "soulmesh-test-network-"));
  const tiny = await startTinyEngine(root, fx, { [TEST_ADAPTER_CID]: fx.adapters[0]!.path }, { contextSize: 2048 });
  const book = new VoucherBook({ dir: join(root, "vouchers"), escrow, provider: providerWallet.address });
  await book.start();
  const hosts = new NetFixture();
  const server = await hosts.host();
  const protocols = await serveProviderProtocols({
    libp2p: server.libp2p,
    engine: tiny.engine,
    book,
    chain: chainViewOf(connectContracts(f.deployment, chain.provider)),
    signer: providerWallet,
    escrow,
    prices: () => TEST_PRICES,
  });
  const quotes = await serveQuotes(server.libp2p, {
    quoteSource: () => ({
      provider: providerWallet.address,
      models: [fx.base.sha256],
      cachedAdapters: [],
      priceInputPerMillion: TEST_PRICES.input.toString(),
      priceOutputPerMillion: TEST_PRICES.output.toString(),
      queueLength: tiny.engine.load.queued + tiny.engine.load.running,
      maxTokens: 256,
    }),
  });
  const stake = BigInt(f.deployment.parameters.minStake);
  await f.fund(providerWallet.address, stake);
  const asProvider = f.as(providerWallet);
  await (await asProvider.token.approve(f.deployment.contracts.providerRegistry, stake)).wait();
  await (
    await asProvider.providerRegistry.register(
      server.peerId.toString(),
      server.multiaddrs().map(String),
      [fx.base.sha256],
      TEST_PRICES.input,
      TEST_PRICES.output,
      stake,
    )
  ).wait();
  await f.deposit(payer, 100n * USD);
  const client = await createClientHost();

  return {
    chain,
    f,
    fx,
    tiny,
    providerWallet,
    payer,
    creator,
    escrow,
    book,
    protocols,
    server,
    client,
    async openTestChat(options = {}) {
      const { withAdapter = false, ...rest } = options;
      const personaId = await f.createPersona(creator, {
        adapterSha256: withAdapter ? fx.adapters[0]!.sha256 : `0x${"00".repeat(32)}`,
        baseModelHash: fx.base.sha256,
      });
      const agentId = await f.mintAgent(payer, personaId);
      return openChat({
        libp2p: await client.start(),
        contracts: connectContracts(f.deployment, chain.provider),
        signer: payer,
        escrow,
        agentId,
        personaId,
        modelSha256: fx.base.sha256,
        ...(withAdapter && { adapter: { cid: TEST_ADAPTER_CID, sha256: fx.adapters[0]!.sha256 } }),
        spendingCap: 5n * USD,
        stallTimeoutMs: 20_000,
        ...rest,
      });
    },
    async stop() {
      await client.stop();
      await quotes.stop();
      await protocols.stop();
      await hosts.cleanup();
      await book.stop();
      await tiny.stop();
      await chain.close();
      await rm(root, { recursive: true, force: true });
      await removeTinyFixtures();
    },
  };
}
