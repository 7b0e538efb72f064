/** Memory heads published to AgentRegistry on a real EDR chain and loaded back from them. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { createHeliaBlockStore, type HeliaBlockStore } from "../../sdk/vault/block-store.js";
import { generateAgentKey, ownerKeyFromSigner, type AgentRef } from "../../sdk/vault/crypto.js";
import { publishHead, readPublishedHead } from "../../sdk/vault/head.js";
import { TurnJournal } from "../../sdk/vault/journal.js";
import { AgentVault, loadAgent } from "../../sdk/vault/vault.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, type Fixture } from "../helpers/soulmesh.js";

let chain: TestChain;
let f: Fixture;
let root: string;
let store: HeliaBlockStore;

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  root = await mkdtemp(join(tmpdir(), "soulmesh-head-"));
  store = createHeliaBlockStore({ dir: join(root, "ipfs") });
  await store.start();
});

afterAll(async () => {
  await store?.stop();
  await chain?.close();
  await rm(root, { recursive: true, force: true });
});

describe("memory head", () => {
  it("publishes a commit as the agent's head; the owner loads the agent from the chain alone", async () => {
    const [, creator, user] = chain.wallets as [Wallet, Wallet, Wallet];
    const personaId = await f.createPersona(creator);
    const agentId = await f.mintAgent(user, personaId);
    const deployment = { chainId: f.deployment.chainId, registry: f.deployment.contracts.agentRegistry };
    const agent: AgentRef = { ...deployment, agentId };
    const ownerKey = await ownerKeyFromSigner(user, deployment);
    const agentKey = generateAgentKey();
    const journal = new TurnJournal({ ...agent, dir: join(root, "journal"), key: agentKey });
    await journal.open();
    const vault = await AgentVault.open({ store, journal, agent, agentKey, ownerKey });
    const agents = f.as(user).agentRegistry;

    expect(await readPublishedHead(agents, agentId)).toBeUndefined();
    await vault.appendTurn({ role: "user", text: "remember the lighthouse", time: 1 });
    const first = (await vault.commit())!;
    await publishHead(agents, agentId, first);
    await vault.appendTurn({ role: "assistant", text: "I will.", time: 2 });
    const second = (await vault.commit())!;
    await publishHead(agents, agentId, second);

    const published = (await readPublishedHead(agents, agentId))!;
    expect(published.cid.equals(second.cid)).toBe(true);
    expect(published.seq).toBe(2n);
    const loaded = await loadAgent({ store, agent, ownerKey, head: published.cid });
    expect(loaded.turns.map((t) => t.text)).toEqual(["remember the lighthouse", "I will."]);

    // An older commit can't replace a newer head, and a stranger can't publish.
    await expect(publishHead(agents, agentId, first)).rejects.toMatchObject({
      name: "ContractRevertError",
      reason: "Agent__StaleHeadSequence",
    });
    const stranger = chain.wallets[3]!;
    await expect(publishHead(f.as(stranger).agentRegistry, agentId, { cid: second.cid, seq: 3 })).rejects.toBeInstanceOf(
      ContractRevertError,
    );
    await journal.close();
  });
});
