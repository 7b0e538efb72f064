/**
 * The agent runtime on the real test network (EDR chain, provider protocols over libp2p on the tiny model):
 * turns are journaled, committed and paid, the head is published on its schedule and on close, a fresh
 * machine recovers the agent from the published head alone, a cancelled turn leaves nothing recorded and pays
 * only what was delivered, the agent's two chats share one provider without refusing each other's turns, and the
 * prompt stays within its budget however long the history.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet, type TransactionRequest, type TransactionResponse } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { sessionKeyOf } from "../../node/billing/voucher-book.js";
import { LaneLedger } from "../../sdk/client/lanes.js";
import {
  InvalidAgentOptionsError,
  loadLocalTokenizer,
  MemoryHeadUnreadableError,
  NotAgentOwnerError,
  openAgent,
  openChat,
  TurnCancelledError,
  type Agent,
  type HeadPublished,
  type LocalTokenizer,
  type MemoryLoaded,
  type OpenAgentOptions,
} from "../../sdk/client/index.js";
import { parseCharacterCard } from "../../sdk/memory/persona/card.js";
import type { Embedder } from "../../sdk/memory/retrieval/embedder.js";
import { readPublishedHead } from "../../sdk/vault/head.js";
import { hashEmbedder } from "../helpers/hash-embedder.js";
import { MemoryBlockStore } from "../helpers/memory-block-store.js";
import { USD } from "../helpers/soulmesh.js";
import { startTestNetwork, TEST_PRICES, type TestNetwork } from "../helpers/test-network.js";

let net: TestNetwork;
let root: string;
let tokenizer: LocalTokenizer;


const card = parseCharacterCard({
  spec: "chara_card_v2",
  spec_version: "2.0",
  data: { name: "Mira", description: "A curious fox who remembers everything.", personality: "warm", scenario: "", first_mes: "", mes_example: "" },
});

beforeAll(async () => {
  net = await startTestNetwork();
  root = await mkdtemp(join(tmpdir(), "soulmesh-agent-"));
  tokenizer = await loadLocalTokenizer(net.fx.base.path, { modelSha256: net.fx.base.sha256, llama: net.tiny.llama });
}, 120_000);

afterAll(async () => {
  await tokenizer?.dispose();
  await net?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

let dirs = 0;
const freshDir = () => join(root, `agent-${++dirs}`);

/** A new persona of the tiny model and an agent of it owned by the payer. */
async function adopt(): Promise<{ agentId: bigint; personaId: bigint }> {
  const personaId = await net.f.createPersona(net.creator, { adapterSha256: `0x${"00".repeat(32)}`, baseModelHash: net.fx.base.sha256 });
  const agentId = await net.f.mintAgent(net.payer, personaId);
  return { agentId, personaId };
}

async function options(
  ids: { agentId: bigint; personaId: bigint },
  rest: Partial<OpenAgentOptions> & { store: OpenAgentOptions["store"]; dataDir: string },
): Promise<OpenAgentOptions> {
  return {
    libp2p: await net.client.start(),
    contracts: connectContracts(net.f.deployment, net.chain.provider),
    signer: net.payer,
    escrow: net.escrow,
    agentId: ids.agentId,
    persona: { personaId: ids.personaId, card, modelSha256: net.fx.base.sha256 },
    embedder: hashEmbedder,
    spendingCap: 5n * USD,
    maxTokens: 12,
    memoryBudget: 300,
    personaBudget: 100,
    maintenance: false,
    chat: { stallTimeoutMs: 20_000 },
    ...rest,
  };
}

function collect<T>(agent: Agent, type: "head:published" | "memory:loaded"): T[] {
  const seen: T[] = [];
  agent.addEventListener(type, (e) => seen.push((e as CustomEvent<T>).detail));
  return seen;
}

describe("agent runtime", () => {
  const store = new MemoryBlockStore();
  let ids: { agentId: bigint; personaId: bigint };
  let firstTexts: string[];
  let firstSeq: number;

  it("journals, commits and pays each turn, and publishes the head on schedule and on close", async () => {
    ids = await adopt();
    const dataDir = freshDir();
    const agent = await openAgent(await options(ids, { store, dataDir, headEveryTurns: 2 }));
    const loaded = collect<MemoryLoaded>(agent, "memory:loaded");
    const published = collect<HeadPublished>(agent, "head:published");
    expect(agent.loaded.from).toBe("new");

    let paid = 0n;
    for (const [n, text] of ["My cat is called Miso.", "I live in Lisbon.", "What is my cat called?"].entries()) {
      const streamed: string[] = [];
      const r = await agent.send(text, { onToken: (t) => streamed.push(t) });
      expect(r.reply).toBe(streamed.join(""));
      expect(r.turns).toEqual([2 * n, 2 * n + 1]);
      // Journaled and committed: the vault's head holds both turns of it.
      expect(agent.vault.head!.turnCount).toBe(2 * n + 2);
      const turns = await agent.vault.turns();
      expect(turns.slice(-2).map((t) => [t.role, t.text])).toEqual([["user", text], ["assistant", r.reply]]);
      expect(agent.memory.turns).toHaveLength(2 * n + 2);
      // The cost is the full price of the billed tokens: the quoted prices plus the persona's royalty (200,000
      // per million by default; no fee on this deployment), each share rounded down on the cumulative totals
      // as the escrow does, so within a unit of the exact figure per share.
      const exact =
        r.billed.inputTokens * TEST_PRICES.input + r.billed.outputTokens * TEST_PRICES.output + (r.billed.inputTokens + r.billed.outputTokens) * 200_000n;
      expect(r.cost * 1_000_000n).toBeGreaterThan(exact - 2_000_000n);
      expect(r.cost * 1_000_000n).toBeLessThan(exact + 2_000_000n);
      expect(r.billed.outputTokens).toBeGreaterThan(0n);
      paid += r.cost;
      expect(r.totalSpent).toBe(paid);
      expect(r.provider).toBe(net.providerWallet.address);
      if (n === 1) {
        // Published in the background after the second turn; publish() waits for it and then has nothing to do.
        expect(await agent.publish()).toBeUndefined();
        expect(published.map((p) => p.seq)).toEqual([agent.vault.head!.seq]);
        const onChain = await readPublishedHead(net.f.contracts.agentRegistry, ids.agentId);
        expect(onChain?.cid.toString()).toBe(published[0]!.cid);
      }
    }
    expect(published).toHaveLength(1);
    expect(loaded).toEqual([agent.loaded]);

    const { published: last } = await agent.close();
    expect(last).toBeDefined();
    expect(published).toHaveLength(2);
    const onChain = await readPublishedHead(net.f.contracts.agentRegistry, ids.agentId);
    expect(onChain?.cid.toString()).toBe(agent.vault.head!.cid.toString());
    expect(onChain?.seq).toBe(BigInt(agent.vault.head!.seq));
    firstTexts = agent.history().map((t) => t.text);
    firstSeq = agent.vault.head!.seq;
    expect(firstTexts).toHaveLength(6);
    await expect(agent.send("hello?")).rejects.toMatchObject({ name: "AgentClosedError" });
  }, 60_000);

  it("recovers on a fresh machine from the published head, and chats on from it", async () => {
    const dataDir = freshDir();
    const agent = await openAgent(await options(ids, { store, dataDir }));
    expect(agent.loaded).toMatchObject({ from: "chain", seq: firstSeq, turns: 6, carried: 0 });
    expect(agent.history().map((t) => t.text)).toEqual(firstTexts);
    const r = await agent.send("Do you remember me?");
    expect(r.turns).toEqual([6, 7]);
    const { published } = await agent.close();
    expect(published!.seq).toBeGreaterThan(firstSeq);

    // The first machine's folder is now behind the chain: it opens at the chain's head, not its own.
    const back = await openAgent(await options(ids, { store, dataDir: join(root, "agent-1"), connect: false }));
    expect(back.loaded).toMatchObject({ from: "chain", seq: published!.seq, carried: 0, replacedLocal: { seq: firstSeq } });
    expect(back.history()).toHaveLength(8);
    await back.close();
    // And now it is in step: the same folder opens from itself.
    const again = await openAgent(await options(ids, { store, dataDir: join(root, "agent-1"), connect: false }));
    expect(again.loaded).toMatchObject({ from: "local", seq: published!.seq });
    await again.close();
  }, 60_000);

  it("carries a machine's unpublished turns over onto a newer head from another machine", async () => {
    const ids3 = await adopt();
    const shared = new MemoryBlockStore();
    const dirA = freshDir();
    const a = await openAgent(await options(ids3, { store: shared, dataDir: dirA }));
    await a.send("First, from machine A.");
    await a.close();
    // Machine A chats on without publishing (offline from the chain, say)…
    const a2 = await openAgent(await options(ids3, { store: shared, dataDir: dirA, publishHead: false }));
    await a2.send("Unpublished, from machine A.");
    await a2.close();
    // …while machine B, from the published head, chats and publishes.
    const b = await openAgent(await options(ids3, { store: shared, dataDir: freshDir() }));
    await b.send("From machine B.");
    const { published } = await b.close();

    const a3 = await openAgent(await options(ids3, { store: shared, dataDir: dirA, connect: false }));
    expect(a3.loaded).toMatchObject({ from: "chain", seq: published!.seq, carried: 2 });
    expect(a3.history().filter((t) => t.role === "user").map((t) => t.text)).toEqual([
      "First, from machine A.",
      "From machine B.",
      "Unpublished, from machine A.",
    ]);
    const { published: merged } = await a3.close();
    expect(merged!.seq).toBeGreaterThan(published!.seq);
  }, 60_000);

  it("goes on chatting when a publish fails, and publishes the head at the next chance", async () => {
    /** The owner's wallet, whose transactions fail until told otherwise (no gas, an RPC down). */
    class FlakyWallet extends Wallet {
      failing = true;
      override async sendTransaction(tx: TransactionRequest): Promise<TransactionResponse> {
        if (this.failing) throw new Error("insufficient funds for gas * price + value");
        return super.sendTransaction(tx);
      }
    }
    const signer = new FlakyWallet(net.payer.privateKey, net.chain.provider);
    const ids4 = await adopt();
    const agent = await openAgent(await options(ids4, { store: new MemoryBlockStore(), dataDir: freshDir(), signer, headEveryTurns: 1 }));
    const failed: { stage: string; seq?: number }[] = [];
    agent.addEventListener("head:failed", (e) => failed.push(e.detail));
    await agent.send("One.");
    await expect(agent.publish()).rejects.toThrow(/insufficient funds/);
    expect(failed.map((f) => f.stage)).toEqual(["publish", "publish"]);
    expect(await readPublishedHead(net.f.contracts.agentRegistry, ids4.agentId)).toBeUndefined();
    const r = await agent.send("Two.");
    expect(r.turns).toEqual([2, 3]);
    const published = collect<HeadPublished>(agent, "head:published");
    signer.failing = false;
    // The publish scheduled after "Two." may already have gone through; either way the head is on chain now.
    await agent.publish();
    expect(published.map((p) => p.seq)).toEqual([agent.vault.head!.seq]);
    expect((await readPublishedHead(net.f.contracts.agentRegistry, ids4.agentId))?.seq).toBe(BigInt(agent.vault.head!.seq));
    await agent.close();
  }, 60_000);

  it("runs memory maintenance through its own metered chat, and close waits for it", async () => {
    const agent = await openAgent(
      await options(await adopt(), { store: new MemoryBlockStore(), dataDir: freshDir(), maintenance: { segmentTurns: 2, spendingCap: USD } }),
    );
    const failed: unknown[] = [];
    agent.addEventListener("maintenance:failed", (e) => failed.push(e.detail));
    const r = await agent.send("I adopted a cat named Miso last week.");
    await agent.close();
    // The segment's summary was asked for in a paid turn of the background chat; the tiny model writes no
    // JSON, so the answer was refused and changed nothing.
    expect(agent.spent).toBeGreaterThan(r.cost);
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(agent.memory.segmentSummaries).toEqual([]);
  }, 60_000);

  it("refuses a head whose blocks no node serves, naming the CID, and writes nothing", async () => {
    const dataDir = freshDir();
    const head = await readPublishedHead(net.f.contracts.agentRegistry, ids.agentId);
    const err = await openAgent(await options(ids, { store: new MemoryBlockStore(), dataDir, connect: false })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MemoryHeadUnreadableError);
    expect((err as MemoryHeadUnreadableError).cid).toBe(head!.cid.toString());
    expect((err as Error).message).toContain(head!.cid.toString());
    expect(existsSync(dataDir)).toBe(false);
  }, 30_000);

  // Paid for what was delivered (issue 14): unpaid, the provider would refuse the payer's next turns until the
  // session expired (it was "nothing paid" before).
  it("cancels a turn mid-stream with nothing recorded, pays what was delivered (counted in spent), and the next turn works", async () => {
    const agent = await openAgent(await options(await adopt(), { store: new MemoryBlockStore(), dataDir: freshDir(), maxTokens: 48 }));
    await agent.send("Hello there.");
    const spent = agent.spent;
    const head = agent.vault.head!;
    const ctl = new AbortController();
    let chunks = 0;
    const err = await agent
      .send("Tell me a long story about the sea.", {
        signal: ctl.signal,
        onToken: () => {
          chunks++;
          ctl.abort();
        },
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TurnCancelledError);
    expect(chunks).toBe(1);
    expect(agent.memory.turns).toHaveLength(2);
    expect(agent.vault.head!.cid.equals(head.cid)).toBe(true);
    const { cost, billed } = err as TurnCancelledError;
    expect(cost).toBeGreaterThan(0n);
    expect(billed.outputTokens).toBeGreaterThanOrEqual(1n);
    expect(agent.spent).toBe(spent + cost);

    const r = await agent.send("Are you still there?");
    expect(r.turns).toEqual([2, 3]);
    expect(r.cost).toBeGreaterThan(0n);
    expect(agent.history().map((t) => t.text).filter((t) => t.includes("sea"))).toEqual([]);
    await agent.close();
  }, 60_000);

  it("the user's turns are not refused while the maintenance chat runs a turn with the same provider, and every turn of both is paid", async () => {
    const agent = await openAgent(
      await options(await adopt(), { store: new MemoryBlockStore(), dataDir: freshDir(), maintenance: { segmentTurns: 2, spendingCap: USD } }),
    );
    const failures: unknown[] = [];
    net.protocols.addEventListener("request:failed", (e) => failures.push(e.detail.error));
    const accepted: bigint[] = [];
    const onVoucher = (e: CustomEvent<{ outputTokens: bigint }>) => accepted.push(e.detail.outputTokens);
    net.protocols.addEventListener("voucher:accepted", onVoucher);
    try {
      // Each send closes a segment: the maintenance chat asks for its summary while the next send starts.
      let user = 0n;
      for (const message of ["I adopted a cat named Miso.", "She likes tuna.", "And she sleeps all day."]) user += (await agent.send(message)).cost;
      await agent.close();
      expect(agent.spent).toBeGreaterThan(user);
      expect(failures.filter((e) => (e as Error).name === "PaymentRequiredError")).toEqual([]);
    } finally {
      net.protocols.removeEventListener("voucher:accepted", onVoucher);
    }
  }, 90_000);

  it("attack 8: a second device whose clock is an hour behind chats with the same agent and provider: its numbers are refused below the latest and renumbered, superseded sessions are renewed, and every turn is paid", async () => {
    const ids = await adopt();
    const contracts = connectContracts(net.f.deployment, net.chain.provider);
    const chatOptions = { libp2p: await net.client.start(), contracts, signer: net.payer, escrow: net.escrow, ...ids, modelSha256: net.fx.base.sha256, spendingCap: USD };
    // The other device's numbers come from a clock an hour behind (its first number only: after a refusal it
    // numbers above the provider's latest).
    class BehindLedger extends LaneLedger {
      #first = true;
      override nextSession(provider: string, agentId: bigint, floor?: bigint): bigint {
        const n = super.nextSession(provider, agentId, floor);
        if (!this.#first) return n;
        this.#first = false;
        return n - 3_600_000n;
      }
    }
    const here = await openChat(chatOptions);
    const there = await openChat({ ...chatOptions, lanes: new BehindLedger() });
    const failed: unknown[] = [];
    for (const chat of [here, there]) chat.addEventListener("voucher:failed", (e) => failed.push(e.detail.error));
    const rejected: string[] = [];
    // A refused open is reported as the error its SessionRejected stands for: by code.
    const onFailed = (e: CustomEvent<{ error: unknown }>) => rejected.push((e.detail.error as { code?: string }).code ?? (e.detail.error as Error).name);
    net.protocols.addEventListener("request:failed", onFailed);
    try {
      const turns = [];
      turns.push(await here.turn({ prompt: "Hello from here", maxTokens: 4 }));
      turns.push(await there.turn({ prompt: "Hello from there", maxTokens: 4 }));
      turns.push(await here.turn({ prompt: "Here again", maxTokens: 4 }));
      turns.push(await there.turn({ prompt: "There again", maxTokens: 4 }));
      expect(failed).toEqual([]);
      expect(turns.every((t) => t.payment?.ack !== undefined)).toBe(true);
      expect(rejected).toContain("SessionNumberTooLowError");
      // Each chat's latest voucher is held by the provider's book (none was refused as superseded).
      for (const t of turns.slice(-2)) {
        const entry = await net.book.get(sessionKeyOf(t.payment!.voucher));
        expect(entry?.voucher.outputTokens).toBe(t.payment!.voucher.outputTokens);
      }
    } finally {
      net.protocols.removeEventListener("request:failed", onFailed);
      await Promise.all([here.close(), there.close()]);
    }
  }, 60_000);

  it("refuses a wallet that does not own the agent, opening nothing", async () => {
    const ids2 = await adopt();
    const dataDir = freshDir();
    const opts = await options(ids2, { store: new MemoryBlockStore(), dataDir, signer: net.creator });
    const err = await openAgent(opts).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotAgentOwnerError);
    expect((err as NotAgentOwnerError).owner).toBe(net.payer.address);
    expect((err as NotAgentOwnerError).account).toBe(net.creator.address);
    expect(existsSync(dataDir)).toBe(false);

    await expect(openAgent({ ...opts, signer: net.payer, headEveryTurns: 0 })).rejects.toBeInstanceOf(InvalidAgentOptionsError);
    await expect(openAgent({ ...opts, signer: net.payer, memoryBudget: -1 })).rejects.toBeInstanceOf(InvalidAgentOptionsError);
    expect(existsSync(dataDir)).toBe(false);
  }, 30_000);

  it("keeps the prompt within its budget however long the history", async () => {
    const memoryBudget = 120;
    const personaBudget = 60;
    const dataDir = freshDir();
    const agent = await openAgent(
      await options(await adopt(), { store: new MemoryBlockStore(), dataDir, tokenizer, memoryBudget, personaBudget, maxTokens: 8, publishHead: false }),
    );
    const inputs: bigint[] = [];
    let dropped = 0;
    for (let i = 0; i < 14; i++) {
      const message = `Note number ${i}: the weather in town ${i} was mild and the market sold ${i * 3} apples.`;
      const r = await agent.send(message);
      // The agent's counter is the model's tokenizer, the one the budget is held to.
      expect(r.promptTokens).toBeLessThanOrEqual(memoryBudget);
      if (i > 0) expect(r.promptTokens).toBeGreaterThan(0);
      // The whole prompt the provider counted: budget, persona and message, plus the chat template's own tokens.
      expect(r.usage.inputTokens).toBeLessThanOrEqual(memoryBudget + personaBudget + agent.countTokens(message) + 64);
      inputs.push(BigInt(r.usage.inputTokens));
      dropped = r.dropped.length;
    }
    expect(agent.memory.turns).toHaveLength(28);
    // The history outgrew the budget long ago: the latest prompt left most of it out.
    expect(dropped).toBeGreaterThan(10);
    await agent.close();
    // publishHead off: nothing went on chain, yet every turn is in the vault.
    expect(agent.vault.head!.turnCount).toBe(28);
    expect(await readdir(dataDir)).toContain("agent.json");
  }, 90_000);
});
