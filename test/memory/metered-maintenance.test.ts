/**
 * Memory maintenance runs through the metered network path: an AgentMemory whose `complete` is a ChatSession
 * on a real provider (tiny model, real protocols, EDR chain) has its segment summary written by a paid turn.
 * The tiny model cannot write the JSON asked for, so the answer is refused and changes nothing, but the turn
 * was served and vouched like any chat turn, and the user's own turns never waited for it.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { completeThroughChat } from "../../sdk/memory/complete.js";
import { AgentMemory, type MaintenanceFailed } from "../../sdk/memory/memory.js";
import type { Embedder } from "../../sdk/memory/retrieval/embedder.js";
import { generateAgentKey, ownerKeyFromSigner } from "../../sdk/vault/crypto.js";
import { TurnJournal } from "../../sdk/vault/journal.js";
import { AgentVault } from "../../sdk/vault/vault.js";
import { hashEmbedder } from "../helpers/hash-embedder.js";
import { MemoryBlockStore } from "../helpers/memory-block-store.js";
import { startTestNetwork, type TestNetwork } from "../helpers/test-network.js";

let net: TestNetwork;
let root: string;


beforeAll(async () => {
  net = await startTestNetwork();
  root = await mkdtemp(join(tmpdir(), "soulmesh-metered-memory-"));
}, 120_000);

afterAll(async () => {
  await net?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

describe("memory maintenance through the network", () => {
  it("asks for a segment summary with a paid chat turn, and a bad answer changes nothing", async () => {
    const background = await net.openTestChat();
    const vouchers: bigint[] = [];
    background.addEventListener("voucher:sent", (e) => vouchers.push(e.detail.voucher.outputTokens));

    const agent = { chainId: 31337n, registry: net.f.deployment.contracts.agentRegistry, agentId: 1n };
    const agentKey = generateAgentKey();
    const journal = new TurnJournal({ ...agent, dir: join(root, "journal"), key: agentKey });
    await journal.open();
    const vault = await AgentVault.open({
      store: new MemoryBlockStore(),
      journal,
      agent,
      agentKey,
      ownerKey: await ownerKeyFromSigner(Wallet.createRandom(), { chainId: agent.chainId, registry: agent.registry }),
    });
    const memory = await AgentMemory.open({ vault, embedder: hashEmbedder, owner: "alice", complete: completeThroughChat(background), segmentTurns: 2 });
    const failed: MaintenanceFailed[] = [];
    memory.addEventListener("maintenance:failed", (e) => failed.push(e.detail));

    const t0 = Date.now();
    await memory.recordTurn({ role: "user", speaker: "alice", text: "I adopted a cat named Miso last week.", time: t0 });
    await memory.recordTurn({ role: "assistant", text: "Miso is a lovely name!", time: t0 + 1 });
    await memory.recordTurn({ role: "user", speaker: "alice", text: "She sleeps on my keyboard all day.", time: t0 + 2 });
    await memory.settled();

    // The maintenance call was a metered turn: served, its usage checked, and paid by voucher.
    expect(vouchers.length).toBeGreaterThanOrEqual(1);
    expect(vouchers[0]).toBeGreaterThan(0n);
    expect(background.spent).toBeGreaterThan(0n);
    // The tiny model writes no JSON: the answer is refused, and no summary appears.
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(memory.segmentSummaries).toEqual([]);
    expect(memory.topicSummaries).toEqual([]);

    await memory.close();
    await journal.close();
    background.close();
  }, 60_000);
});
