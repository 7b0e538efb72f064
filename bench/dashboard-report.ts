/**
 * How fast the creator dashboard's figures come from the chain: `readCreatorReport` over JSON-RPC on loopback
 * (as the page reads through `soulmesh dashboard`'s /rpc), on a real EDR chain seeded with a creator's
 * usage: 3 personas, 2 providers, `--days` days of `--per-day` settlements each (defaults 30 × 50 = 1,500).
 *
 * Figures: the first report with an empty cache (`coldMs`, `coldGetLogs`), a refresh with nothing new
 * (`unchangedMs`), a refresh after one more day of settlements (`refreshMs`, `refreshGetLogs`), a report
 * from a new cache over the persisted storage, as after a page reload (`reloadMs`), and the bytes the cache
 * persists (`storageBytes`: the page keeps them in IndexedDB, as localStorage's ~5 MB fills at about 10,000
 * settlements). Each timing is the median of `--runs` (default 5).
 *
 *   npm run bench -- dashboard-report [--days 30] [--per-day 50] [--runs 5]
 */
import { JsonRpcProvider } from "ethers";
import type { Wallet } from "ethers";
import { serveJsonRpc } from "../cli/devnet/rpc-server.js";
import { connectContracts } from "../sdk/chain/contracts.js";
import { createLogCache, readCreatorReport } from "../sdk/chain/creator-report.js";
import type { KeyValueStorage } from "../sdk/chain/creator-report.js";
import { createTestChain } from "../test/helpers/chain.js";
import { deployFixture, USD } from "../test/helpers/soulmesh.js";
import type { Fixture } from "../test/helpers/soulmesh.js";
import { argNumber, log, median, round } from "./_util.js";

const days = argNumber("days", 30);
const perDay = argNumber("per-day", 50);
const runs = argNumber("runs", 5);

/** A key-value storage, as the page's, that counts what it holds. */
function memoryStorage(): KeyValueStorage & { bytes(): number } {
  const items = new Map<string, string>();
  return {
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => void items.set(k, v),
    bytes: () => [...items].reduce((a, [k, v]) => a + k.length + v.length, 0),
  };
}

let session = 1n;

/** A payer's agent, and the royalty its vouchers carry (its persona's, in force). */
interface Agent {
  user: Wallet;
  agentId: bigint;
  royaltyPerMillion: bigint;
}

/** One day of settlements, in batches, spread over the personas' agents and both providers. */
async function settleDay(f: Fixture, agents: Agent[], providers: Wallet[], day: number): Promise<void> {
  for (const [pi, provider] of providers.entries()) {
    const batch = [];
    for (let i = pi; i < perDay; i += providers.length) {
      const { user, agentId, royaltyPerMillion } = agents[(i + day) % agents.length]!;
      batch.push(
        await f.voucher(user, {
          provider: provider.address,
          agentId,
          royaltyPerMillion,
          session: session++,
          inputTokens: BigInt(500 + ((i * 37 + day * 11) % 4000)),
          outputTokens: BigInt(50 + ((i * 13 + day) % 600)),
        }),
      );
    }
    const escrow = f.as(provider).inferenceEscrow;
    for (let i = 0; i < batch.length; i += 25) {
      const receipt = await (await escrow.settleBatch(batch.slice(i, i + 25))).wait();
      // settleBatch skips a voucher it cannot settle instead of reverting: a skip would make the bench read less.
      if (receipt!.logs.some((l) => escrow.interface.parseLog(l)?.name === "SettlementSkipped")) {
        throw new Error("a seeded voucher was skipped (SettlementSkipped)");
      }
    }
  }
  await f.chain.increaseTime(86_400);
}

async function main(): Promise<void> {
  const chain = await createTestChain();
  const f = await deployFixture(chain);
  const w = chain.wallets;
  const creator = w[2]!;
  const providers = [w[3]!, w[4]!];
  const users = [w[1]!, w[5]!, w[6]!, w[7]!];
  const personas = [
    await f.createPersona(creator, { royaltyPerMillion: 300_000n, adoptionPrice: 2n * USD }),
    await f.createPersona(creator, { royaltyPerMillion: 120_000n }),
    await f.createPersona(creator, { royaltyPerMillion: 50_000n }),
  ];
  for (const p of providers) await f.registerProvider(p);
  const agents: Agent[] = [];
  for (const [i, user] of users.entries()) {
    // Vouchers settle from the payer's lane with their provider.
    for (const p of providers) await f.depositAndCommit(user, p.address, 5_000n * USD);
    const personaId = personas[i % personas.length]!;
    const [, royaltyPerMillion] = await f.contracts.personaRegistry.royaltyOf(personaId);
    agents.push({ user, agentId: await f.mintAgent(user, personaId), royaltyPerMillion });
  }
  for (let day = 0; day < days; day++) {
    await settleDay(f, agents, providers, day);
    if ((day + 1) % 5 === 0 || day === days - 1) log(`seeded day ${day + 1}/${days}`);
  }

  // Served over HTTP as `soulmesh dashboard` reaches the chain, with every eth_getLogs counted.
  let getLogs = 0;
  const rpc = await serveJsonRpc(
    {
      request: async ({ method, params }: { method: string; params?: unknown[] | Record<string, unknown> }) => {
        if (method === "eth_getLogs") getLogs++;
        return chain.provider.send(method, (params ?? []) as unknown[]);
      },
    },
    { host: "127.0.0.1", port: 0 },
  );
  const provider = new JsonRpcProvider(rpc.url, chain.chainId, { staticNetwork: true, cacheTimeout: -1 });
  const contracts = connectContracts(f.deployment, provider);
  const report = (cache: ReturnType<typeof createLogCache>) =>
    readCreatorReport({ contracts, creator: creator.address, fromBlock: f.deployment.startBlock, cache });
  const timed = async (fn: () => Promise<unknown>): Promise<number> => {
    const t0 = performance.now();
    await fn();
    return performance.now() - t0;
  };

  const cold: number[] = [];
  const unchanged: number[] = [];
  const refresh: number[] = [];
  const reload: number[] = [];
  let coldGetLogs = 0;
  let refreshGetLogs = 0;
  let storageBytes = 0;
  let settlements = 0;
  for (let r = 0; r < runs; r++) {
    const storage = memoryStorage();
    const cache = createLogCache({ storage });
    getLogs = 0;
    cold.push(await timed(() => report(cache)));
    coldGetLogs = getLogs;
    unchanged.push(await timed(() => report(cache)));
    await settleDay(f, agents, providers, days + r);
    getLogs = 0;
    refresh.push(await timed(() => report(cache)));
    refreshGetLogs = getLogs;
    reload.push(await timed(() => report(createLogCache({ storage }))));
    storageBytes = storage.bytes();
    const last = await report(cache);
    settlements = Number(
      (await contracts.inferenceEscrow.queryFilter(contracts.inferenceEscrow.filters.VoucherSettled(), f.deployment.startBlock)).length,
    );
    log(`run ${r + 1}/${runs}: cold ${round(cold.at(-1)!)} ms, refresh ${round(refresh.at(-1)!)} ms, ${last.personas.length} personas`);
  }
  provider.destroy();
  await rpc.close();
  await chain.close();
  console.log(
    JSON.stringify({
      settlements,
      days: days + runs,
      coldMs: round(median(cold)),
      coldGetLogs,
      unchangedMs: round(median(unchanged)),
      refreshMs: round(median(refresh)),
      refreshGetLogs,
      reloadMs: round(median(reload)),
      storageBytes,
    }),
  );
}

await main();
