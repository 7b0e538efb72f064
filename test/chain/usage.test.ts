import type { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readSettlements, readUsage, utcDay } from "../../sdk/chain/usage.js";
import type { UsageRow } from "../../sdk/chain/usage.js";
import { voucherCost } from "../../sdk/chain/voucher.js";
import { createTestChain } from "../helpers/chain.js";
import type { TestChain } from "../helpers/chain.js";
import { deployFixture, USD } from "../helpers/soulmesh.js";
import type { Fixture } from "../helpers/soulmesh.js";

let chain: TestChain;
let f: Fixture;
let users: Wallet[], creators: Wallet[], providers: Wallet[];
/** What the test itself expects, computed independently of the events. */
const expected = new Map<string, UsageRow>();

function add(key: string, day: string, fields: Partial<UsageRow>): void {
  const id = `${key}|${day}`;
  const row = expected.get(id) ?? {
    key,
    day,
    settlements: 0,
    inputTokens: 0n,
    outputTokens: 0n,
    providerAmount: 0n,
    royaltyAmount: 0n,
    feeAmount: 0n,
    adoptions: 0,
    adoptionRevenue: 0n,
  };
  for (const [k, v] of Object.entries(fields) as [keyof UsageRow, number | bigint][]) {
    (row as unknown as Record<string, number | bigint>)[k] = ((row[k] as number | bigint) + (v as never)) as never;
  }
  expected.set(id, row);
}

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain, { protocolFeeBps: 500 });
  const w = chain.wallets;
  users = [w[1]!, w[5]!];
  creators = [w[2]!, w[6]!];
  providers = [w[3]!, w[4]!];
  // The fee takes effect after its delay.
  await chain.increaseTime(f.deployment.parameters.royaltyDelay + 1);

  const personas = [
    await f.createPersona(creators[0]!, { royaltyPerMillion: 300_000n, adoptionPrice: 2n * USD }),
    await f.createPersona(creators[1]!, { royaltyPerMillion: 50_000n }),
  ];
  for (const p of providers) await f.registerProvider(p);
  let session = 1n;
  for (let day = 0; day < 3; day++) {
    for (const [u, user] of users.entries()) {
      for (const provider of providers) await f.depositAndCommit(user, provider.address, 10n * USD);
      const personaId = personas[(u + day) % 2]!;
      const agentId = await f.mintAgent(user, personaId);
      const [, price] = await f.contracts.personaRegistry.adoptionTermsOf(personaId);
      add(personaId.toString(), utcDay(await chain.now()), { adoptions: 1, adoptionRevenue: price });
      const [, royalty] = await f.contracts.personaRegistry.royaltyOf(personaId);
      for (const provider of providers) {
        const tokens = { inputTokens: BigInt(1000 * (day + 1) + u), outputTokens: BigInt(333 * (day + 2)) };
        const { voucher, signature } = await f.voucher(user, {
          provider: provider.address,
          agentId,
          session: session++,
          ...tokens,
          royaltyPerMillion: royalty,
          feeBps: 500n,
        });
        await (await f.as(provider).inferenceEscrow.settle(voucher, signature)).wait();
        const cost = voucherCost(voucher, { inputTokens: 0n, outputTokens: 0n });
        const today = utcDay(await chain.now());
        const fields = { settlements: 1, ...tokens, ...cost };
        delete (fields as Partial<typeof cost>).total;
        add(personaId.toString(), today, fields);
        add(`provider:${provider.address}`, today, fields);
      }
    }
    await chain.increaseTime(86_400);
  }
});
afterAll(() => chain?.close());

describe("usage and revenue from events", () => {
  const range = () => ({ fromBlock: f.deployment.startBlock });
  const contracts = () => ({ escrow: f.contracts.inferenceEscrow, agents: f.contracts.agentRegistry });

  it("sum per persona and day what was settled and adopted, to the unit", async () => {
    const rows = await readUsage(contracts(), "persona", range());
    const want = [...expected.values()].filter((r) => !r.key.startsWith("provider:"));
    expect(rows).toHaveLength(want.length);
    expect(new Set(rows.map((r) => r.day)).size).toBe(3);
    for (const row of rows) expect(row).toEqual(expected.get(`${row.key}|${row.day}`));
  });

  it("sum per provider and day, and add up to each provider's earnings on chain", async () => {
    const rows = await readUsage(contracts(), "provider", range());
    for (const row of rows) {
      const want = expected.get(`provider:${row.key}|${row.day}`)!;
      expect(row).toEqual({ ...want, key: row.key });
    }
    for (const p of providers) {
      const total = rows.filter((r) => r.key === p.address).reduce((s, r) => s + r.providerAmount, 0n);
      expect(total).toBe(await f.contracts.inferenceEscrow.earningsOf(p.address));
    }
  });

  it("royalties per creator add up to their earnings on chain", async () => {
    const settlements = await readSettlements(f.contracts.inferenceEscrow, range());
    for (const [i, creator] of creators.entries()) {
      const royalties = settlements.filter((s) => s.personaId === BigInt(i + 1)).reduce((t, s) => t + s.royaltyAmount, 0n);
      expect(royalties).toBe(await f.contracts.inferenceEscrow.earningsOf(creator.address));
    }
    const fees = settlements.reduce((t, s) => t + s.feeAmount, 0n);
    expect(fees).toBeGreaterThan(0n);
    expect(fees).toBe(await f.contracts.inferenceEscrow.earningsOf(f.deployment.parameters.treasury));
  });

  it("filter on indexed fields and read in small chunks with progress", async () => {
    const progress: number[] = [];
    const one = await readSettlements(
      f.contracts.inferenceEscrow,
      { ...range(), chunkSize: 7, onProgress: (p) => progress.push(p.block) },
      { provider: providers[1]!.address, personaId: 2n },
    );
    expect(one.length).toBe(3);
    expect(one.every((s) => s.provider === providers[1]!.address && s.personaId === 2n)).toBe(true);
    expect(progress.length).toBeGreaterThan(3);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
  });

  it("stop when aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(
      readSettlements(f.contracts.inferenceEscrow, { ...range(), signal: controller.signal }),
    ).rejects.toThrow();
  });
});
