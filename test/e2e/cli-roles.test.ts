/**
 * Issue 7's end-to-end test, every soulmesh step a child process on a devnet, each role with its own account:
 *
 * - `soulmesh devnet` (chain and the home's IPFS service); the test, as the escrow's owner, schedules a 2.5 %
 *   protocol fee to a treasury of its own and moves the chain past the fee delay, so that every part of the
 *   split is non-zero.
 * - `soulmesh provider start` on the tiny fixture model, without an adapters folder: the persona's LoRA comes
 *   from IPFS.
 * - the creator publishes a persona with a LoRA (`persona create`); the user mints an agent (`agent mint`, paying
 *   the adoption price to the creator), deposits and chats three single turns (`chat --message --json`).
 * - The provider settles on SIGTERM; every VoucherSettled is recomputed here from the contract's formula and
 *   the quoted prices, the billed tokens of the three turns equal the settled ones, and the deposit, the
 *   provider's, creator's and treasury's earnings moved by exactly those amounts; `earnings` reports the same
 *   and `earnings --withdraw` moves exactly the pending amount.
 * - A new home (another machine: no agents/ folder) loads the memory from IPFS by the head on chain, and chats
 *   one more turn once the provider is restarted on its data folder; a new head is published.
 * - `soulmesh serve` answers the official `openai` client, streamed and not, and the turns land in memory.
 */
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getAddress, JsonRpcProvider, Wallet } from "ethers";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { readPublishedHead } from "../../sdk/vault/head.js";
import { removeTinyFixtures, tinyFixtures } from "../fixtures/gguf/llama.js";
import type { TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli } from "../helpers/cli.js";
import type { CliProcess } from "../helpers/cli.js";

const USD = 1_000_000n;
/** `--price-in 0.5 --price-out 1.5`: tUSD per million tokens. */
const PRICE_IN = 500_000n;
const PRICE_OUT = 1_500_000n;
/** `--royalty 0.2`: 0.2 tUSD per million tokens. */
const ROYALTY_PER_MILLION = 200_000n;
const ADOPTION_PRICE = 1n * USD;
const DEPOSIT = 20n * USD;
const FEE_BPS = 250n;
const TREASURY = getAddress("0x7ea5000000000000000000000000000000000e2e");
const DEMO_CARD = new URL("../../cli/up/demo-persona.json", import.meta.url).pathname;
const MESSAGES = ["Hello Wren, how is the lamp tonight?", "Remember that my sister is called Ines", "What birds did you see today?"];

interface Run {
  code: number | null;
  json: Record<string, any>;
  stdout: string;
  stderr: string;
}

interface DevnetJson extends Deployment {
  ipfs: { api: string; peerId: string; apiFile: string };
}

let root: string;
let home: string;
let fresh: string;
let fx: TinyFixtures;
let devnet: CliProcess;
let deployment: DevnetJson;
let ipfsApi: string;
let rpc: JsonRpcProvider;
let contracts: SoulmeshContracts;
let provider: CliProcess | undefined;
let providerAddress: string;
let user: string;
let creator: string;
let personaId: bigint;
let agentId: bigint;
const replies: string[] = [];
const children: CliProcess[] = [];

/** Environment of every child: the home, and nothing of this machine's soulmesh settings. */
function env(forHome: string): Record<string, string> {
  return { SOULMESH_HOME: forHome, SOULMESH_PASSWORD: "", SOULMESH_RPC_URL: "", SOULMESH_IPFS_API: "", NO_COLOR: "1" };
}

/** `soulmesh ARGS --json` to its end; its last stdout line parsed. */
async function cli(args: string[], forHome = home): Promise<Run> {
  const p = runCli([...args, "--json"], env(forHome));
  p.child.stdin.end();
  const code = await p.exited();
  const line = p.stdout().trim().split("\n").at(-1) ?? "";
  let json: Record<string, any>;
  try {
    json = JSON.parse(line) as Record<string, any>;
  } catch {
    throw new Error(`soulmesh ${args.join(" ")}: no JSON (exit ${code}); stdout: ${p.stdout()} stderr: ${p.stderr()}`);
  }
  return { code, json, stdout: p.stdout(), stderr: p.stderr() };
}

/** `soulmesh ARGS --json` that must succeed; its JSON. */
async function ok(args: string[], forHome = home): Promise<Record<string, any>> {
  const r = await cli(args, forHome);
  expect(r.code, `soulmesh ${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.json;
}

/** A long-running `soulmesh` child; resolves with it and its first JSON line once it serves. */
async function daemon<T>(args: string[], forHome = home): Promise<{ cli: CliProcess; json: T }> {
  const p = runCli([...args, "--json"], env(forHome));
  children.push(p);
  return { cli: p, json: await p.firstJson<T>(90_000) };
}

/** `soulmesh provider start` on the devnet's home (its data folder `<home>/provider`), fetching adapters from IPFS. */
async function startProvider(): Promise<{ cli: CliProcess; json: { address: string; prices: unknown; dataDir: string } }> {
  return daemon([
    "provider", "start",
    "--model", fx.base.path,
    "--dev-account", "3",
    "--price-in", "0.5",
    "--price-out", "1.5",
    "--metrics-port", "0",
    "--threads", "1",
    "--context-size", "2048",
    "--settle-interval", "0",
    "--settle-threshold", "0",
  ]);
}

/** SIGTERM: the provider settles what it holds and exits 0. */
async function stopProvider(): Promise<void> {
  const p = provider!;
  provider = undefined;
  p.child.kill("SIGTERM");
  expect(await p.exited(), p.stderr()).toBe(0);
}

/** What a session's cumulative totals pay, by the escrow's formula (rounded down at each step). */
function cost(inputTokens: bigint, outputTokens: bigint): { provider: bigint; royalty: bigint; fee: bigint } {
  const providerAmount = (inputTokens * PRICE_IN + outputTokens * PRICE_OUT) / 1_000_000n;
  const royalty = ((inputTokens + outputTokens) * ROYALTY_PER_MILLION) / 1_000_000n;
  const fee = ((providerAmount + royalty) * FEE_BPS) / 10_000n;
  return { provider: providerAmount, royalty, fee };
}

async function money(): Promise<{ deposit: bigint; lane: bigint; provider: bigint; creator: bigint; treasury: bigint; escrow: bigint }> {
  const e = contracts.inferenceEscrow;
  return {
    deposit: await e.depositOf(user),
    lane: (await e.laneOf(user, providerAddress))[0],
    provider: await e.earningsOf(providerAddress),
    creator: await e.earningsOf(creator),
    treasury: await e.earningsOf(TREASURY),
    escrow: await contracts.token.balanceOf(await e.getAddress()),
  };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-e2e-"));
  home = join(root, "home");
  fresh = join(root, "elsewhere");
  await mkdir(home, { recursive: true });
  await mkdir(fresh, { recursive: true });
  [fx, { cli: devnet, json: deployment }] = await Promise.all([tinyFixtures(), daemon<DevnetJson>(["devnet", "--port", "0"])]);
  const apiFile = JSON.parse(await readFile(join(home, "ipfs", "api.json"), "utf8")) as { url: string };
  expect(apiFile.url).toBe(deployment.ipfs.api);
  ipfsApi = apiFile.url;

  rpc = new JsonRpcProvider(deployment.rpcUrl, deployment.chainId, { staticNetwork: true, polling: true, pollingInterval: 100, cacheTimeout: -1 });
  contracts = connectContracts(deployment, rpc);
  const accounts = deployment.devAccounts!;
  user = accounts[1]!.address;
  creator = accounts[2]!.address;
  providerAddress = accounts[3]!.address;

  // The devnet deploys without a fee; its owner (the deployer) schedules one to a treasury of this test, and the
  // chain moves past the fee delay (sessions reckon expiries from chain time).
  const owner = connectContracts(deployment, new Wallet(accounts[0]!.privateKey, rpc));
  await (await owner.inferenceEscrow.setTreasury(TREASURY)).wait();
  await (await owner.inferenceEscrow.scheduleProtocolFee(FEE_BPS)).wait();
  const [, , effectiveAt] = await contracts.inferenceEscrow.protocolFee();
  const now = BigInt((await rpc.getBlock("latest"))!.timestamp);
  await rpc.send("evm_increaseTime", [Number(effectiveAt - now) + 1]);
  await rpc.send("evm_mine", []);
  expect((await contracts.inferenceEscrow.protocolFee())[0]).toBe(FEE_BPS);
}, 120_000);

afterAll(async () => {
  // Providers and serve first, the devnet (chain and IPFS) last; whatever hangs is killed.
  for (const c of [...children].reverse()) {
    if (c.child.exitCode !== null || c.child.signalCode !== null) continue;
    c.child.kill("SIGTERM");
    const timer = setTimeout(() => c.child.kill("SIGKILL"), 10_000);
    await c.exited();
    clearTimeout(timer);
  }
  rpc?.destroy();
  await removeTinyFixtures();
  if (root) await rm(root, { recursive: true, force: true });
}, 60_000);

describe("soulmesh end to end, one role per account", () => {
  it("a creator publishes a persona with a LoRA, a user mints, deposits and chats three turns, and every balance splits exactly", async () => {
    // The provider loads its model while the creator and the user do their part.
    const starting = startProvider();
    starting.catch(() => {}); // awaited below; a failure before that must not go unhandled
    const creatorTokens = await contracts.token.balanceOf(creator);
    const persona = await ok([
      "persona", "create",
      "--card", DEMO_CARD,
      "--base-model", fx.base.path,
      "--lora", fx.adapters[0]!.path,
      "--royalty", "0.2",
      "--adoption-price", "1",
      "--account", "creator",
    ]);
    expect(persona).toMatchObject({
      name: "Wren",
      creator,
      adapterCid: expect.any(String),
      adapterSha256: fx.adapters[0]!.sha256,
      baseModelHash: fx.base.sha256,
      royaltyPerMillion: { units: ROYALTY_PER_MILLION.toString() },
      adoptionPrice: { units: ADOPTION_PRICE.toString() },
    });
    personaId = BigInt(persona.personaId);

    const userTokens = await contracts.token.balanceOf(user);
    const minted = await ok(["agent", "mint", "--persona", personaId.toString(), "--account", "user"]);
    expect(minted).toMatchObject({ personaId: personaId.toString(), owner: user, holder: creator, adoptionPrice: { units: ADOPTION_PRICE.toString() } });
    agentId = BigInt(minted.agentId);
    expect(await contracts.agentRegistry.ownerOf(agentId)).toBe(user);
    // The adoption price went to the creator's wallet, in tokens.
    expect((await contracts.token.balanceOf(creator)) - creatorTokens).toBe(ADOPTION_PRICE);

    const deposited = await ok(["deposit", "20", "--account", "user"]);
    expect(deposited).toMatchObject({ account: user, amount: { units: DEPOSIT.toString() }, deposit: { units: DEPOSIT.toString() } });
    expect(userTokens - (await contracts.token.balanceOf(user))).toBe(ADOPTION_PRICE + DEPOSIT);

    const started = await starting;
    provider = started.cli;
    expect(started.json.address).toBe(providerAddress);

    const before = await money();
    expect(before.deposit).toBe(DEPOSIT);
    const fromBlock = await rpc.getBlockNumber();
    const turns: Record<string, any>[] = [];
    for (const message of MESSAGES) {
      const turn = await ok(["chat", agentId.toString(), "--message", message, "--max-tokens", "16", "--account", "user"]);
      expect(turn.provider).toBe(providerAddress);
      expect(turn.reply).toEqual(expect.any(String));
      expect(turn.turns).toBe(2 * (turns.length + 1));
      expect(turn.head).toMatchObject({ published: true });
      // Each process is its own session: a turn's cost is the full price of its billed tokens, provider,
      // royalty and fee, and the chat's total (one turn) the same.
      const full = cost(BigInt(turn.billed.inputTokens), BigInt(turn.billed.outputTokens));
      expect(BigInt(turn.cost.units)).toBe(full.provider + full.royalty + full.fee);
      expect(turn.totalSpent).toEqual(turn.cost);
      expect(BigInt(turn.billed.outputTokens)).toBeGreaterThan(0n);
      turns.push(turn);
      replies.push(turn.reply as string);
    }
    const onChainHead = await readPublishedHead(contracts.agentRegistry, agentId);
    expect(onChainHead?.cid.toString()).toBe(turns.at(-1)!.head.cid);

    // The first chat committed funds to the lane with the provider, the one transaction a client sends.
    // Each `chat --message` closed its session as it exited, so the provider settles it at once rather than at
    // its expiry (issue 14): all three sessions are settled before the provider stops.
    const settledEvents = async () => contracts.inferenceEscrow.queryFilter(contracts.inferenceEscrow.filters.VoucherSettled(), fromBlock);
    for (let waited = 0; (await settledEvents()).length < MESSAGES.length && waited < 30_000; waited += 250) await new Promise((r) => setTimeout(r, 250));
    const settledSoFar = (await settledEvents()).reduce((sum, e) => sum + e.args.providerAmount + e.args.royaltyAmount + e.args.feeAmount, 0n);
    expect((await settledEvents()).length).toBe(MESSAGES.length);
    const beforeSettlement = await money();
    expect(beforeSettlement.lane).toBeGreaterThan(0n);
    expect(beforeSettlement.deposit + beforeSettlement.lane + settledSoFar).toBe(DEPOSIT);
    await stopProvider();

    // Every settlement, recomputed from its session's cumulative totals and the quoted prices.
    const events = await contracts.inferenceEscrow.queryFilter(contracts.inferenceEscrow.filters.VoucherSettled(), fromBlock);
    expect(events.length).toBeGreaterThan(0);
    const sessions = new Map<string, { input: bigint; output: bigint }>();
    const total = { input: 0n, output: 0n, provider: 0n, royalty: 0n, fee: 0n };
    for (const e of events) {
      const a = e.args;
      expect([a.provider, a.agentId, a.payer, a.personaId]).toEqual([providerAddress, agentId, user, personaId]);
      const key = a.session.toString();
      const was = sessions.get(key) ?? { input: 0n, output: 0n };
      const now = { input: was.input + a.inputTokens, output: was.output + a.outputTokens };
      sessions.set(key, now);
      const [after, prior] = [cost(now.input, now.output), cost(was.input, was.output)];
      expect([a.providerAmount, a.royaltyAmount, a.feeAmount]).toEqual([
        after.provider - prior.provider,
        after.royalty - prior.royalty,
        after.fee - prior.fee,
      ]);
      total.input += a.inputTokens;
      total.output += a.outputTokens;
      total.provider += a.providerAmount;
      total.royalty += a.royaltyAmount;
      total.fee += a.feeAmount;
    }
    // Single turns never run the agent's maintenance, so the three turns are all that was paid for.
    expect(sessions.size).toBe(3);
    expect(total.input).toBe(turns.reduce((s, t) => s + BigInt(t.billed.inputTokens), 0n));
    expect(total.output).toBe(turns.reduce((s, t) => s + BigInt(t.billed.outputTokens), 0n));
    expect(total.royalty).toBeGreaterThan(0n);
    expect(total.fee).toBeGreaterThan(0n);
    // What the CLI showed, per turn (each its own session) and per chat, is what each session took, to the unit.
    const perSession = new Map<string, bigint>();
    for (const e of events) {
      const key = e.args.session.toString();
      perSession.set(key, (perSession.get(key) ?? 0n) + e.args.providerAmount + e.args.royaltyAmount + e.args.feeAmount);
    }
    const byValue = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);
    expect([...perSession.values()].sort(byValue)).toEqual(turns.map((t) => BigInt(t.cost.units)).sort(byValue));
    const shown = turns.reduce((s, t) => s + BigInt(t.cost.units), 0n);
    expect(shown).toBe(total.provider + total.royalty + total.fee);

    const after = await money();
    // The payer's lane lost exactly what was shown (settled as each chat closed its session, and at the provider's
    // stop); the free deposit did not move at settlement.
    expect(beforeSettlement.lane + settledSoFar - after.lane).toBe(shown);
    expect(after.deposit).toBe(beforeSettlement.deposit);
    expect(before.deposit + before.lane - after.deposit - after.lane).toBe(shown);
    expect(after.provider - before.provider).toBe(total.provider);
    expect(after.creator - before.creator).toBe(total.royalty);
    expect(after.treasury - before.treasury).toBe(total.fee);
    // Nothing left the escrow: what the deposit lost, the earnings gained.
    expect(after.escrow).toBe(before.escrow);

    const [asCreator, asProvider] = await Promise.all([
      ok(["earnings", "--account", "creator"]),
      ok(["earnings", "--account", "provider"]),
    ]);
    expect(asCreator).toMatchObject({
      address: creator,
      pending: { units: after.creator.toString() },
      asCreator: {
        settlements: events.length,
        inputTokens: total.input.toString(),
        outputTokens: total.output.toString(),
        amount: { units: total.royalty.toString() },
        personas: [{ personaId: personaId.toString(), amount: { units: total.royalty.toString() } }],
      },
    });
    expect(asProvider).toMatchObject({
      address: providerAddress,
      pending: { units: after.provider.toString() },
      asProvider: {
        settlements: events.length,
        inputTokens: total.input.toString(),
        outputTokens: total.output.toString(),
        amount: { units: total.provider.toString() },
        payers: [{ payer: user, amount: { units: total.provider.toString() } }],
      },
    });

    const wallet = await contracts.token.balanceOf(providerAddress);
    const withdrawn = await ok(["earnings", "--withdraw", "--account", "provider"]);
    expect(withdrawn).toMatchObject({ withdrawn: { units: after.provider.toString() }, to: providerAddress });
    expect((await contracts.token.balanceOf(providerAddress)) - wallet).toBe(after.provider);
    expect(await contracts.inferenceEscrow.earningsOf(providerAddress)).toBe(0n);
  }, 150_000);

  it("the memory loads from IPFS by its head on a machine with no local state, and chats on there", async () => {
    const head = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    const elsewhere = ["--home", fresh, "--deployment", join(home, "devnet.json"), "--ipfs-api", ipfsApi, "--account", "dev:1"];
    const shown = await ok(["memory", "show", agentId.toString(), "--turns", "6", ...elsewhere], fresh);
    expect(shown.loaded).toMatchObject({ from: "chain", cid: head.cid.toString(), turns: 6 });
    expect(shown).toMatchObject({ turnCount: 6, head: { cid: head.cid.toString(), published: true } });
    expect(shown.dataDir).toBe(join(fresh, "agents", `${deployment.chainId}-${agentId}`));
    const texts = (shown.turns as { role: string; text: string }[]).map((t) => [t.role, t.text]);
    expect(texts).toEqual(MESSAGES.flatMap((m, i) => [["user", m], ["assistant", replies[i]]]));

    provider = (await startProvider()).cli;
    const turn = await ok(["chat", agentId.toString(), "--message", "Who is Ines?", "--max-tokens", "16", ...elsewhere], fresh);
    expect(turn.turns).toBe(8);
    expect(turn.head).toMatchObject({ published: true, transactionHash: expect.any(String) });
    expect(BigInt(turn.head.seq)).toBeGreaterThan(head.seq);
    const next = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    expect(next.cid.toString()).toBe(turn.head.cid);
    expect(next.cid.toString()).not.toBe(head.cid.toString());
  }, 90_000);

  it("serve answers the official openai client, streamed and not, and the turns land in the agent's memory", async () => {
    const bodies: Promise<string>[] = [];
    const { cli: serve, json } = await daemon<{ baseUrl: string; model: string }>(["serve", "--agent", agentId.toString(), "--port", "0", "--account", "user"]);
    expect(json.model).toBe(`soulmesh-agent-${agentId}`);
    const client = new OpenAI({
      baseURL: json.baseUrl,
      apiKey: "unused",
      maxRetries: 0,
      timeout: 60_000,
      // The raw body too, to see the stream's end marker that the client consumes.
      fetch: async (url, init) => {
        const res = await fetch(url, init);
        bodies.push(res.clone().text());
        return res;
      },
    });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([json.model]);

    const plain = await client.chat.completions.create({
      model: json.model,
      messages: [{ role: "user", content: "Tell me about the puffin." }],
      max_tokens: 12,
    });
    const content = plain.choices[0]!.message.content ?? "";
    expect(content.length).toBeGreaterThan(0);
    expect(plain.usage?.prompt_tokens).toBeGreaterThan(0);
    expect(plain.usage?.completion_tokens).toBeGreaterThan(0);

    const stream = await client.chat.completions.create({
      model: json.model,
      messages: [{ role: "user", content: "And the weather?" }],
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(streamed.length).toBeGreaterThan(0);
    expect(usage?.completion_tokens).toBeGreaterThan(0);
    expect((await bodies.at(-1)!).trimEnd().endsWith("data: [DONE]")).toBe(true);

    serve.child.kill("SIGINT");
    expect(await serve.exited(), serve.stderr()).toBe(0);
    await stopProvider();

    const shown = await ok(["memory", "show", agentId.toString(), "--turns", "4", "--account", "user"]);
    expect(shown.turnCount).toBe(12);
    expect((shown.turns as { role: string; text: string }[]).map((t) => [t.role, t.text])).toEqual([
      ["user", "Tell me about the puffin."],
      ["assistant", content],
      ["user", "And the weather?"],
      ["assistant", streamed],
    ]);
    const head = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    expect(shown.head).toMatchObject({ cid: head.cid.toString(), published: true });
  }, 120_000);
});
