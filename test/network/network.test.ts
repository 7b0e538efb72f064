/**
 * The provider network end to end, every part real and each provider its own process: a devnet chain served
 * over JSON-RPC, `soulmesh provider start` child processes on the tiny fixture model (engine, libp2p over TCP
 * loopback, voucher book, settlement worker), and the client SDK in this process choosing among them.
 *
 * - A multi-turn chat is paid by vouchers and settled; the provider's, creator's and treasury's earnings and
 *   the payer's deposit are then exact to the unit, computed here from the vouchers with the contract's
 *   formula (not the SDK's), and each voucher equals the sum of the billed usage of its session's turns.
 * - A provider is SIGKILLed mid-stream: the turn completes on another provider, the dead one is never paid
 *   for the partial turn, and after a restart it settles only what it was vouched before dying: nothing is
 *   charged twice.
 */
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getAddress, Wallet, type BrowserProvider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevnet, type Devnet } from "../../cli/devnet/devnet.js";
import { connectContracts, type SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import type { Voucher } from "../../sdk/chain/voucher.js";
import {
  createClientHost,
  loadLocalTokenizer,
  openChat,
  type ChatSession,
  type ClientHost,
  type LocalTokenizer,
  type TurnResult,
} from "../../sdk/client/index.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli, type CliProcess } from "../helpers/cli.js";

const USD = 1_000_000n;
const ROYALTY_PER_MILLION = 200_000n;
const FEE_BPS = 250n;
const TREASURY = getAddress("0x7ea5000000000000000000000000000000000001");
const ADAPTER_CID = "bafyNetworkPersonaAdapter";
/** Dev accounts: 0 deploys, 1 pays, 2 creates the persona, 3 and 4 provide. */
const PAYER = 1;
const CREATOR = 2;
const PROVIDER_A = 3;
const PROVIDER_B = 4;

let home: string;
let devnet: Devnet;
let rpc: BrowserProvider;
let contracts: SoulmeshContracts;
let fx: TinyFixtures;
let adaptersDir: string;
let payer: Wallet;
let creator: Wallet;
let personaId: bigint;
let agentId: bigint;
let client: ClientHost;
let tokenizer: LocalTokenizer;
const children: CliProcess[] = [];

interface Started {
  pid: number;
  peerId: string;
  address: string;
}

interface RunningProvider {
  cli: CliProcess;
  started: Started;
  dataDir: string;
}

/** `soulmesh provider start` as a child process; resolves once it has registered and serves. */
async function startProvider(account: number, prices: { input: bigint; output: bigint }, dataDir: string): Promise<RunningProvider> {
  const cli = runCli(
    [
      "provider", "start",
      "--model", fx.base.path,
      "--adapters-dir", adaptersDir,
      "--dev-account", String(account),
      "--data-dir", dataDir,
      "--deployment", devnet.deploymentPath,
      // Decimal tUSD like every amount option; the devnet token has 6 decimals.
      "--price-in", formatUnitsFixed(prices.input, 6),
      "--price-out", formatUnitsFixed(prices.output, 6),
      "--metrics-port", "0",
      "--threads", "1",
      "--context-size", "2048",
      // Settlement only at session close and on stop, so the test decides when it happens.
      "--settle-interval", "0",
      "--settle-threshold", "0",
      "--json",
    ],
    { SOULMESH_HOME: home },
  );
  children.push(cli);
  const started = await cli.firstJson<Started>(60_000);
  return { cli, started, dataDir };
}

/** SIGTERM: the daemon settles what it holds, stops, and exits 0. */
async function stopProvider(p: RunningProvider): Promise<void> {
  p.cli.child.kill("SIGTERM");
  const code = await p.cli.exited();
  expect(code, p.cli.stderr()).toBe(0);
}

/** What settling a voucher's totals pays each party, by the escrow's formula (cumulative, rounded down). */
function split(v: Voucher): { provider: bigint; royalty: bigint; fee: bigint } {
  const provider = (v.inputTokens * v.priceInputPerMillion + v.outputTokens * v.priceOutputPerMillion) / 1_000_000n;
  const royalty = ((v.inputTokens + v.outputTokens) * ROYALTY_PER_MILLION) / 1_000_000n;
  const fee = ((provider + royalty) * FEE_BPS) / 10_000n;
  return { provider, royalty, fee };
}

/** The last voucher of each session the chat paid, keyed by provider and session number. */
function lastVouchers(vouchers: Voucher[]): Voucher[] {
  const last = new Map<string, Voucher>();
  for (const v of vouchers) last.set(`${v.provider}:${v.session}`, v);
  return [...last.values()];
}

async function balances(providers: string[]) {
  const e = contracts.inferenceEscrow;
  // The payer's funds: its free deposit and its lanes with these providers (the client commits to a lane at
  // a provider's first use; settlements draw on the lanes).
  const lanes = await Promise.all(providers.map(async (p) => (await e.laneOf(payer.address, p))[0]));
  return {
    deposit: (await e.depositOf(payer.address)) + lanes.reduce((sum, l) => sum + l, 0n),
    creator: await e.earningsOf(creator.address),
    treasury: await e.earningsOf(TREASURY),
    providers: await Promise.all(providers.map((p) => e.earningsOf(p))),
    escrowTokens: await contracts.token.balanceOf(await e.getAddress()),
  };
}

async function newChat(): Promise<{ chat: ChatSession; vouchers: Voucher[] }> {
  const chat = await openChat({
    libp2p: client.libp2p,
    contracts,
    signer: payer,
    escrow: { chainId: devnet.deployment.chainId, address: devnet.deployment.contracts.inferenceEscrow },
    agentId,
    personaId,
    modelSha256: fx.base.sha256,
    adapter: { cid: ADAPTER_CID, sha256: fx.adapters[0]!.sha256 },
    spendingCap: 5n * USD,
    tokenizer,
    stallTimeoutMs: 10_000,
  });
  const vouchers: Voucher[] = [];
  chat.addEventListener("voucher:sent", (e) => vouchers.push(e.detail.voucher));
  return { chat, vouchers };
}

const history = (turns: TurnResult[], next: string) => [
  { role: "system" as const, content: "You are Mara, a lighthouse keeper who loves the sea." },
  ...turns.flatMap((t, i) => [
    { role: "user" as const, content: `message ${i}` },
    { role: "assistant" as const, content: t.text },
  ]),
  { role: "user" as const, content: next },
];

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), "soulmesh-network-"));
  devnet = await startDevnet({ port: 0, home, parameters: { protocolFeeBps: Number(FEE_BPS), treasury: TREASURY } });
  rpc = devnet.chain.provider;
  const accounts = devnet.deployment.devAccounts!;
  payer = new Wallet(accounts[PAYER]!.privateKey, rpc);
  creator = new Wallet(accounts[CREATOR]!.privateKey, rpc);
  contracts = connectContracts(devnet.deployment, rpc);

  // The fee is scheduled at deployment and takes effect after the fee delay.
  const [, , effectiveAt] = await contracts.inferenceEscrow.protocolFee();
  const now = BigInt((await rpc.getBlock("latest"))!.timestamp);
  if (effectiveAt > now) await rpc.send("evm_increaseTime", [Number(effectiveAt - now) + 1]);
  await rpc.send("evm_mine", []);
  expect((await contracts.inferenceEscrow.protocolFee())[0]).toBe(FEE_BPS);

  fx = await tinyFixtures();
  adaptersDir = join(home, "adapters");
  await mkdir(adaptersDir, { recursive: true });
  await copyFile(fx.adapters[0]!.path, join(adaptersDir, ADAPTER_CID));

  const asCreator = connectContracts(devnet.deployment, creator);
  personaId = (await asCreator.personaRegistry.totalPersonas()) + 1n;
  await (await asCreator.personaRegistry.createPersona("bafyNetworkPersona", fx.adapters[0]!.sha256, fx.base.sha256, ROYALTY_PER_MILLION, 0n)).wait();
  const asPayer = connectContracts(devnet.deployment, payer);
  agentId = (await asPayer.agentRegistry.totalAgents()) + 1n;
  await (await asPayer.agentRegistry.mint(personaId, 0n)).wait();
  await (await asPayer.token.approve(devnet.deployment.contracts.inferenceEscrow, 50n * USD)).wait();
  await (await asPayer.inferenceEscrow.deposit(50n * USD)).wait();

  client = await createClientHost();
  await client.start();
  tokenizer = await loadLocalTokenizer(fx.base.path, { modelSha256: fx.base.sha256 });
}, 120_000);

afterAll(async () => {
  for (const c of children) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL");
  await client?.stop();
  await tokenizer?.dispose();
  await devnet?.stop();
  await rm(home, { recursive: true, force: true });
  await removeTinyFixtures();
});

describe("the provider network", () => {
  it("serves a multi-turn chat paid by vouchers, settled to the unit for provider, creator, treasury and payer", async () => {
    const provider = await startProvider(PROVIDER_B, { input: 700_000n, output: 2_100_000n }, join(home, "b"));
    const before = await balances([provider.started.address]);
    const { chat, vouchers } = await newChat();
    const turns: TurnResult[] = [];
    for (const message of ["Hello there.", "Tell me about the sea.", "And the lighthouse?"]) {
      const result = await chat.turn({ prompt: history(turns, message), maxTokens: 24 });
      expect(result.provider).toBe(provider.started.address);
      expect(result.violations).toEqual([]);
      expect(result.failovers).toEqual([]);
      // Exact input count: the local tokenizer agrees with what the provider billed.
      expect(result.usage.inputTokens).toBe(tokenizer.count({ kind: "chat", messages: history(turns, message) }));
      turns.push(result);
    }
    chat.close();

    // One session; its last voucher carries the sum of the turns' billed usage, as the receipts said.
    const last = lastVouchers(vouchers);
    expect(last).toHaveLength(1);
    const voucher = last[0]!;
    expect(voucher.inputTokens).toBe(turns.reduce((s, t) => s + BigInt(t.usage.inputTokens - t.usage.cachedInputTokens), 0n));
    expect(voucher.outputTokens).toBe(turns.reduce((s, t) => s + BigInt(t.usage.outputTokens), 0n));
    expect(turns.slice(1).some((t) => t.usage.cachedInputTokens > 0)).toBe(true);
    expect(voucher.inputTokens).toBe(BigInt(turns.at(-1)!.receipt.cumulativeInputTokens));

    await stopProvider(provider);
    const after = await balances([provider.started.address]);
    const { provider: providerShare, royalty, fee } = split(voucher);
    expect(providerShare).toBeGreaterThan(0n);
    expect(after.providers[0]! - before.providers[0]!).toBe(providerShare);
    expect(after.creator - before.creator).toBe(royalty);
    expect(after.treasury - before.treasury).toBe(fee);
    expect(before.deposit - after.deposit).toBe(providerShare + royalty + fee);
    // What the chat showed as spent is what left the payer's funds, to the unit.
    expect(chat.spent).toBe(providerShare + royalty + fee);
    expect(turns.reduce((sum, t) => sum + t.cost.total, 0n)).toBe(chat.spent);
    // Nothing left the escrow: what the deposit lost, the earnings gained.
    expect(after.escrowTokens).toBe(before.escrowTokens);
  }, 120_000);

  it("completes a turn on another provider when one is killed mid-stream, charging nothing twice", async () => {
    // A is cheaper, so the chat starts there; B is the fallback.
    const pricesA = { input: 400_000n, output: 1_200_000n };
    const pricesB = { input: 800_000n, output: 2_400_000n };
    let a = await startProvider(PROVIDER_A, pricesA, join(home, "a"));
    let b = await startProvider(PROVIDER_B, pricesB, join(home, "b"));
    const addresses = [a.started.address, b.started.address];
    const before = await balances(addresses);
    const { chat, vouchers } = await newChat();

    const first = await chat.turn({ prompt: history([], "Hello there."), maxTokens: 16 });
    expect(first.provider).toBe(a.started.address);

    // The second turn: A is killed at its first chunk, long before its 1,500 tokens are out.
    const streamed: { provider: string; text: string }[] = [];
    let killed = false;
    const second = await chat.turn({
      prompt: history([first], "Tell me a very long story."),
      maxTokens: 1_500,
      onChunk: (text, { provider }) => {
        streamed.push({ provider, text });
        if (!killed && provider === a.started.address) {
          killed = true;
          a.cli.child.kill("SIGKILL");
        }
      },
    });
    expect(killed).toBe(true);
    expect(await a.cli.exited()).toBe(null);
    expect(second.provider).toBe(b.started.address);
    expect(second.failovers.map((f) => f.provider)).toEqual([a.started.address]);
    expect(second.usage.outputTokens).toBe(1_500);
    expect(second.text).toBe(streamed.filter((s) => s.provider === b.started.address).map((s) => s.text).join(""));
    chat.close();

    // A was vouched for the first turn only; B for the second turn only.
    const last = lastVouchers(vouchers);
    const ofA = last.filter((v) => v.provider === a.started.address);
    const ofB = last.filter((v) => v.provider === b.started.address);
    expect(ofA).toHaveLength(1);
    expect(ofB).toHaveLength(1);
    expect(ofA[0]!.outputTokens).toBe(BigInt(first.usage.outputTokens));
    expect(ofB[0]!.outputTokens).toBe(1_500n);
    expect(ofB[0]!.inputTokens).toBe(BigInt(second.usage.inputTokens - second.usage.cachedInputTokens));

    // A restarts on its data folder (its voucher book survived the kill) and settles on stop; so does B.
    a = await startProvider(PROVIDER_A, pricesA, a.dataDir);
    await stopProvider(a);
    await stopProvider(b);
    const after = await balances(addresses);
    const shareA = split(ofA[0]!);
    const shareB = split(ofB[0]!);
    expect(after.providers[0]! - before.providers[0]!).toBe(shareA.provider);
    expect(after.providers[1]! - before.providers[1]!).toBe(shareB.provider);
    expect(after.creator - before.creator).toBe(shareA.royalty + shareB.royalty);
    expect(after.treasury - before.treasury).toBe(shareA.fee + shareB.fee);
    const charged = shareA.provider + shareA.royalty + shareA.fee + shareB.provider + shareB.royalty + shareB.fee;
    expect(before.deposit - after.deposit).toBe(charged);
    expect(after.escrowTokens).toBe(before.escrowTokens);
    // Full price: what the chat showed is what left the payer's lanes.
    expect(chat.spent).toBe(charged);
  }, 180_000);
});
