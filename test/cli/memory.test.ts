/**
 * `soulmesh memory show|search|export|import|forget` in child processes against a devnet and the home's IPFS
 * service started in this process (no provider: memory commands need none). Turns go in by `import` (through
 * the memory engine: the notebook catches instructions), come back out by `export` (plaintext, 0600), are
 * found by `search`, and `forget` removes them for good with a new head published on chain. Malformed imports
 * and forgets without a selector get typed errors and change nothing.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MEMORY_EXPORT_FORMAT, MemoryImportFormatError, parseMemoryExport } from "../../cli/commands/memory.js";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { startLocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { publishPersona } from "../../sdk/memory/persona/publish.js";
import { readPublishedHead } from "../../sdk/vault/head.js";
import { runCli, runCliJson, type CliJsonRun } from "../helpers/cli.js";

let root: string;
let home: string;
let devnet: Devnet;
let ipfs: LocalIpfsService;
let contracts: SoulmeshContracts;
let agentId: bigint;
let secondAgent: bigint;

type Run = CliJsonRun;

/** Runs the CLI with --json in the test's home against the devnet, as the "user" unless `account` says. */
function cli(args: string[], options: { account?: string } = {}): Promise<Run> {
  return runCliJson(args, { home, deployment: devnet.deploymentPath, account: options.account ?? "user" });
}

const T0 = Date.UTC(2025, 0, 10, 9, 0, 0);
const TURNS = [
  { role: "user", text: "Hello! I just moved to Lisbon.", time: T0 },
  { role: "assistant", text: "Welcome to Lisbon! How do you like it?", time: T0 + 1_000 },
  { role: "user", text: "Please remember that I like green tea in the morning.", time: T0 + 60_000 },
  { role: "assistant", text: "Noted: green tea in the morning.", time: T0 + 61_000 },
  { role: "user", text: "My bank password is hunter2, don't forget it.", time: T0 + 120_000 },
  { role: "assistant", text: "I will keep that in mind.", time: T0 + 121_000 },
];

function exportFile(turns: unknown[], extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ format: MEMORY_EXPORT_FORMAT, version: 1, exportedAt: new Date(T0).toISOString(), turns, ...extra });
}

async function headOnChain(id: bigint): Promise<string | undefined> {
  return (await readPublishedHead(contracts.agentRegistry, id))?.cid.toString();
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-memory-cli-"));
  home = join(root, "home");
  await mkdir(home, { recursive: true });
  devnet = await startDevnet({ port: 0, home });
  ipfs = await startLocalIpfsService({ home });
  const rpc = devnet.chain.provider;
  contracts = connectContracts(devnet.deployment, rpc);
  const [user, creator] = [1, 2].map((i) => new Wallet(devnet.deployment.devAccounts![i]!.privateKey, rpc)) as [Wallet, Wallet];
  const card = new TextEncoder().encode(
    JSON.stringify({
      spec: "chara_card_v2",
      spec_version: "2.0",
      data: { name: "Mira", description: "A curious fox.", personality: "warm", scenario: "", first_mes: "", mes_example: "" },
    }),
  );
  const persona = await publishPersona({
    store: ipfs.store,
    registry: connectContracts(devnet.deployment, creator).personaRegistry,
    card,
    baseModelHash: `0x${"ab".repeat(32)}`,
    royaltyPerMillion: 100_000n,
    adoptionPrice: 0n,
  });
  const asUser = connectContracts(devnet.deployment, user);
  agentId = (await asUser.agentRegistry.totalAgents()) + 1n;
  await (await asUser.agentRegistry.mint(persona.personaId, 0n)).wait();
  secondAgent = agentId + 1n;
  await (await asUser.agentRegistry.mint(persona.personaId, 0n)).wait();
}, 180_000);

afterAll(async () => {
  await ipfs?.stop().catch(() => {});
  await devnet?.stop().catch(() => {});
  if (root) await rm(root, { recursive: true, force: true });
});

describe("export files", () => {
  it("are checked whole: another format or version, or a malformed turn, is refused with every problem named", () => {
    expect(parseMemoryExport(JSON.parse(exportFile(TURNS)), "f.json")).toEqual(TURNS);
    const bad: [unknown, RegExp][] = [
      [[], /not a JSON object/],
      [{ ...JSON.parse(exportFile(TURNS)), version: 2 }, /format version is 2/],
      [{ format: "other", version: 1, turns: [] }, /format is "other"/],
      [{ format: MEMORY_EXPORT_FORMAT, version: 1 }, /no turns array/],
      [JSON.parse(exportFile([{ role: "bot", text: "x", time: 1 }, { role: "user", text: "", time: -1 }, null])), /turn 0 has role "bot".*turn 1 has no text.*turn 1 has no time.*turn 2 is not an object/],
    ];
    for (const [value, message] of bad) {
      expect(() => parseMemoryExport(value, "f.json")).toThrow(MemoryImportFormatError);
      expect(() => parseMemoryExport(value, "f.json")).toThrow(message);
    }
  });
});

describe("memory commands", () => {
  it("import appends turns through the memory engine, skips those already there, and publishes the head", async () => {
    const file = join(root, "turns.json");
    await writeFile(file, exportFile(TURNS));
    const first = await cli(["memory", "import", String(agentId), file]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json).toMatchObject({ imported: 6, skipped: 0, turnCount: 6, head: { published: true } });
    expect(await headOnChain(agentId)).toBe(first.json.head.cid);

    const again = await cli(["memory", "import", String(agentId), file]);
    expect(again.json).toMatchObject({ imported: 0, skipped: 6, turnCount: 6, head: { cid: first.json.head.cid }, published: null });

    const shown = await cli(["memory", "show", String(agentId), "--turns", "2"]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json).toMatchObject({ turnCount: 6, head: { cid: first.json.head.cid, published: true }, loaded: { from: "local" } });
    expect(shown.json.turns.map((t: { index: number; text: string }) => [t.index, t.text])).toEqual([
      [4, TURNS[4]!.text],
      [5, TURNS[5]!.text],
    ]);
    expect(shown.json.notebook.map((n: { text: string }) => n.text).join(" ")).toContain("green tea");
  }, 180_000);

  it("search finds memories; export writes plaintext JSON readable by the owner only", async () => {
    const out = join(root, "export.json");
    // One process at a time: an agent's local journal is open in one process only.
    const found = await cli(["memory", "search", String(agentId), "bank password", "--top", "3"]);
    const exported = await cli(["memory", "export", String(agentId), "--out", out]);
    expect(found.code, found.stderr).toBe(0);
    expect(found.json.results.length).toBeGreaterThan(0);
    expect(found.json.results.length).toBeLessThanOrEqual(3);
    expect(found.json.results, JSON.stringify(found.json.results)).toContainEqual(expect.objectContaining({ kind: "turn", text: TURNS[4]!.text, score: expect.any(Number) }));

    expect(exported.code, exported.stderr).toBe(0);
    expect(exported.json).toMatchObject({ path: out, turns: 6, plaintext: true });
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    const data = JSON.parse(await readFile(out, "utf8")) as Record<string, any>;
    expect(data).toMatchObject({ format: MEMORY_EXPORT_FORMAT, version: 1, agentId: String(agentId), turns: TURNS });
    expect(JSON.stringify(data.notebook)).toContain("green tea");

    // Into another agent of the same owner: the same turns, its own head.
    const copied = await cli(["memory", "import", String(secondAgent), out]);
    expect(copied.json).toMatchObject({ imported: 6, turnCount: 6, head: { published: true } });
    expect(await headOnChain(secondAgent)).toBe(copied.json.head.cid);
  }, 180_000);

  it("bad imports and forgets get typed errors and change nothing", async () => {
    const head = await headOnChain(agentId);
    const files = {
      junk: join(root, "junk.json"),
      v2: join(root, "v2.json"),
      badTurn: join(root, "bad-turn.json"),
    };
    await writeFile(files.junk, "{ not json");
    await writeFile(files.v2, JSON.stringify({ ...JSON.parse(exportFile(TURNS)), version: 2 }));
    // A good turn first: it must not be imported either.
    await writeFile(files.badTurn, exportFile([{ role: "user", text: "A new fact.", time: T0 + 999_000 }, { role: "robot", text: "x", time: 1 }]));
    const runs = await Promise.all([
      cli(["memory", "import", String(agentId), files.junk]),
      cli(["memory", "import", String(agentId), files.v2]),
      cli(["memory", "import", String(agentId), files.badTurn]),
      cli(["memory", "forget", String(agentId)]),
      cli(["memory", "forget", String(agentId), "--match", "hunter2"]),
      cli(["memory", "forget", String(agentId), "--turn", "99", "--yes"]),
      cli(["memory", "import", String(agentId), files.v2], { account: "creator" }),
    ]);
    expect(runs.map((r) => [r.code, r.json.error?.name])).toEqual([
      [1, "MemoryImportFormatError"],
      [1, "MemoryImportFormatError"],
      [1, "MemoryImportFormatError"],
      [1, "ForgetSelectorError"],
      [1, "ConfirmationRequiredError"],
      [1, "ForgetSelectorError"],
      [1, "MemoryImportFormatError"],
    ]);
    expect(runs[1]!.json.error!.message).toContain("format version is 2");
    expect(runs[3]!.json.error!.message).toContain("--match TEXT");
    const notOwner = await cli(["memory", "show", String(agentId)], { account: "creator" });
    expect(notOwner.json.error?.name).toBe("NotAgentOwnerError");
    expect(await headOnChain(agentId)).toBe(head);
    const shown = await cli(["memory", "show", String(agentId)]);
    expect(shown.json).toMatchObject({ turnCount: 6, head: { cid: head } });
  }, 180_000);

  it("forget removes matching turns for good, publishes a new head, and --all empties the agent", async () => {
    const before = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    const forgot = await cli(["memory", "forget", String(agentId), "--match", "HUNTER2", "--yes"]);
    expect(forgot.code, JSON.stringify(forgot.json) + forgot.stderr).toBe(0);
    expect(forgot.json).toMatchObject({ forgotten: { turns: 1, indexes: [4] }, turnCount: 5, head: { published: true } });
    expect(forgot.json.forgotten.items).toEqual(expect.arrayContaining(["retrieval-index"]));
    const after = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    expect(after.seq).toBeGreaterThan(before.seq);
    expect(after.cid.toString()).toBe(forgot.json.head.cid);

    // From a fresh home (the head on chain, through IPFS): the turn is gone, search no longer finds it.
    const elsewhere = join(root, "elsewhere");
    await mkdir(elsewhere, { recursive: true });
    const p = runCli(["memory", "export", String(agentId), "--json", "--home", elsewhere, "--deployment", devnet.deploymentPath, "--ipfs-api", ipfs.api.url], {
      SOULMESH_ACCOUNT: "user",
      SOULMESH_IPFS_API: "",
    });
    p.child.stdin.end();
    expect(await p.exited(), p.stderr()).toBe(0);
    expect(p.stderr()).toContain("plaintext");
    const data = JSON.parse(p.stdout()) as { turns: { text: string }[] };
    expect(data.turns.map((t) => t.text)).toEqual(TURNS.filter((_, i) => i !== 4).map((t) => t.text));
    expect(JSON.stringify(data)).not.toContain("hunter2");
    const found = await cli(["memory", "search", String(agentId), "hunter2 password"]);
    expect(JSON.stringify(found.json.results)).not.toContain("hunter2");

    const all = await cli(["memory", "forget", String(secondAgent), "--all", "--yes"]);
    expect(all.code, all.stderr).toBe(0);
    expect(all.json).toMatchObject({ forgotten: { turns: 6 }, turnCount: 0 });
    const empty = await cli(["memory", "show", String(secondAgent)]);
    expect(empty.json).toMatchObject({ turnCount: 0, notebook: [], profile: {} });
  }, 90_000);
});
