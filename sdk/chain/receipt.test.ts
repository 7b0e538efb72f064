import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Log } from "ethers";
import { createTestChain } from "../../test/helpers/chain.js";
import type { TestChain } from "../../test/helpers/chain.js";
import { deployFixture, USD } from "../../test/helpers/soulmesh.js";
import type { Fixture } from "../../test/helpers/soulmesh.js";
import { findEvent } from "./receipt.js";

let chain: TestChain;
let f: Fixture;
beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
});
afterAll(() => chain?.close());

describe("findEvent", () => {
  it("finds the contract's event among other contracts' logs, by name and filter", async () => {
    const [, user, creator] = chain.wallets;
    const personaId = await f.createPersona(creator!, { adoptionPrice: 2n * USD });
    await f.fund(user!.address, 2n * USD);
    const asUser = f.as(user!);
    await (await asUser.token.approve(f.deployment.contracts.agentRegistry, 2n * USD)).wait();
    // A mint emits the token's Transfer (the price), the agent NFT's Transfer and AgentMinted.
    const receipt = await (await asUser.agentRegistry.mint(personaId, 2n * USD)).wait();
    const logs = receipt!.logs as Log[];
    expect(findEvent(asUser.agentRegistry, logs, "AgentMinted")?.args.personaId).toBe(personaId);
    const tokenTransfer = findEvent(asUser.token, logs, "Transfer");
    expect(tokenTransfer?.args.value).toBe(2n * USD);
    // The agent NFT's Transfer has the same topic as the token's, and is not the token's.
    const nftTransfer = findEvent(asUser.agentRegistry, logs, "Transfer");
    expect(nftTransfer?.args.to).toBe(user!.address);
    expect(findEvent(asUser.agentRegistry, logs, "Transfer", (p) => p.args.from === user!.address)).toBeUndefined();
    // The persona registry is an ERC-721 too: the agent's Transfer would decode with its interface, but is not its log.
    expect(findEvent(asUser.personaRegistry, logs, "Transfer")).toBeUndefined();
    expect(findEvent(asUser.personaRegistry, logs, "PersonaCreated")).toBeUndefined();
    expect(findEvent(asUser.agentRegistry, [], "AgentMinted")).toBeUndefined();
  });
});
