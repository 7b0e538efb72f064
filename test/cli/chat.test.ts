/**
 * `soulmesh chat` in child processes against a devnet, the home's IPFS service and a provider daemon on the
 * tiny model, all started in this process: a creator's persona with a LoRA published to IPFS, an agent minted
 * and a deposit made for dev account 1. Single turns with --json are paid and journaled, the memory head is
 * published and a new home (no local agent folder) loads the same turns from IPFS by it; the interactive chat
 * runs in a pseudo-terminal (util-linux `script`): streamed replies with cost lines, Ctrl-C cancelling a reply
 * (its delivered part paid and shown) while the chat goes on, /exit publishing the head. Bad inputs get typed errors.
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { startLocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import { startProvider } from "../../node/provider/provider.js";
import type { ProviderNode } from "../../node/provider/provider.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { publishPersona } from "../../sdk/memory/persona/publish.js";
import { readPublishedHead } from "../../sdk/vault/head.js";
import { removeTinyFixtures, tinyFixtures } from "../fixtures/gguf/llama.js";
import type { TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli, runCliJson, type CliJsonRun, SOULMESH_BIN } from "../helpers/cli.js";

const USD = 1_000_000n;
const PRICES = { input: 500_000n, output: 1_500_000n };

let root: string;
let home: string;
let devnet: Devnet;
let ipfs: LocalIpfsService;
let provider: ProviderNode;
let fx: TinyFixtures;
let contracts: SoulmeshContracts;
let agentId: bigint;
let noDepositAgent: bigint;

type Run = CliJsonRun;

/** Runs the CLI (with --json unless `json` is false) against the devnet, as the "user" unless `account` says. */
function cli(args: string[], options: { home?: string; account?: string; json?: boolean } = {}): Promise<Run> {
  return runCliJson(args, {
    home: options.home ?? home,
    deployment: devnet.deploymentPath,
    account: options.account ?? "user",
    ...(options.json !== undefined && { json: options.json }),
  });
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-chat-cli-"));
  home = join(root, "home");
  await mkdir(home, { recursive: true });
  devnet = await startDevnet({ port: 0, home });
  ipfs = await startLocalIpfsService({ home });
  fx = await tinyFixtures();
  const rpc = devnet.chain.provider;
  contracts = connectContracts(devnet.deployment, rpc);
  const [user, creator, providerAccount, other] = [1, 2, 3, 5].map((i) => new Wallet(devnet.deployment.devAccounts![i]!.privateKey, rpc)) as [
    Wallet,
    Wallet,
    Wallet,
    Wallet,
  ];
  provider = await startProvider({
    dataDir: join(root, "provider"),
    models: [fx.base.path],
    modelsDir: join(root, "models"),
    blockStore: ipfs.store,
    prices: PRICES,
    metricsPort: 0,
    deployment: devnet.deployment,
    rpc,
    privateKey: providerAccount.privateKey,
    settlement: { intervalMs: 0, amountThreshold: 0n },
    engine: { threads: 1, contextSize: 4096, memoryBudgetBytes: 2 ** 30 },
  });
  const card = new TextEncoder().encode(
    JSON.stringify({
      spec: "chara_card_v2",
      spec_version: "2.0",
      data: { name: "Mira", description: "A curious fox who remembers everything.", personality: "warm", scenario: "", first_mes: "", mes_example: "" },
    }),
  );
  const persona = await publishPersona({
    store: ipfs.store,
    registry: connectContracts(devnet.deployment, creator).personaRegistry,
    card,
    adapter: { path: fx.adapters[0]!.path },
    baseModelHash: fx.base.sha256,
    baseModelName: "tiny.gguf",
    royaltyPerMillion: 200_000n,
    adoptionPrice: 0n,
  });
  const mint = async (owner: Wallet): Promise<bigint> => {
    const c = connectContracts(devnet.deployment, owner);
    const id = (await c.agentRegistry.totalAgents()) + 1n;
    await (await c.agentRegistry.mint(persona.personaId, 0n)).wait();
    return id;
  };
  agentId = await mint(user);
  noDepositAgent = await mint(other);
  const asUser = connectContracts(devnet.deployment, user);
  await (await asUser.token.approve(devnet.deployment.contracts.inferenceEscrow, 20n * USD)).wait();
  await (await asUser.inferenceEscrow.deposit(20n * USD)).wait();
}, 120_000);

afterAll(async () => {
  await provider?.stop().catch(() => {});
  await ipfs?.stop().catch(() => {});
  await devnet?.stop().catch(() => {});
  await removeTinyFixtures();
  if (root) await rm(root, { recursive: true, force: true });
});

describe("chat --message", () => {
  it("pays and journals each turn, publishes the head, and a new home loads the same turns from IPFS by it", async () => {
    const first = await cli(["chat", String(agentId), "--message", "Hi! My cat is called Miso.", "--max-tokens", "8"]);
    expect(first.code, first.stderr).toBe(0);
    const a = first.json as Record<string, any>;
    expect(a.reply).toEqual(expect.any(String));
    expect(a.reply.length).toBeGreaterThan(0);
    expect(a.provider).toBe(provider.address);
    expect(BigInt(a.cost.units)).toBeGreaterThan(0n);
    expect(a.totalSpent).toEqual(a.cost);
    expect(a.usage.outputTokens).toBeGreaterThan(0);
    expect(a.turns).toBe(2);
    expect(a.head).toMatchObject({ published: true, transactionHash: expect.any(String) });

    const second = await cli(["chat", String(agentId), "--message", "What is my cat called?", "--max-tokens", "8"]);
    expect(second.code, `${second.stderr} ${JSON.stringify(second.json)}`).toBe(0);
    const b = second.json as Record<string, any>;
    expect(BigInt(b.cost.units)).toBeGreaterThan(0n);
    expect(b.turns).toBe(4);
    expect(b.head.seq).toBeGreaterThan(a.head.seq);
    const onChain = await readPublishedHead(contracts.agentRegistry, agentId);
    expect(onChain?.cid.toString()).toBe(b.head.cid);

    const shown = await cli(["memory", "show", String(agentId), "--turns", "4"]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json).toMatchObject({ turnCount: 4, head: { cid: b.head.cid, published: true } });
    const texts = (shown.json.turns as { text: string; role: string }[]).map((t) => [t.role, t.text]);
    expect(texts).toEqual([
      ["user", "Hi! My cat is called Miso."],
      ["assistant", a.reply],
      ["user", "What is my cat called?"],
      ["assistant", b.reply],
    ]);

    // Another machine: a fresh home with no agents/ folder, the same chain, the first home's IPFS by its API.
    const elsewhere = join(root, "elsewhere");
    await mkdir(elsewhere, { recursive: true });
    const p = runCli(["memory", "show", String(agentId), "--turns", "4", "--json", "--home", elsewhere, "--deployment", devnet.deploymentPath, "--ipfs-api", ipfs.api.url], {
      SOULMESH_ACCOUNT: "user",
      SOULMESH_PASSWORD: "",
      SOULMESH_IPFS_API: "",
    });
    p.child.stdin.end();
    expect(await p.exited(), p.stderr()).toBe(0);
    const restored = JSON.parse(p.stdout().trim().split("\n").at(-1)!) as Record<string, any>;
    expect(restored.loaded).toMatchObject({ from: "chain", cid: b.head.cid, turns: 4 });
    expect(restored.turns.map((t: { role: string; text: string }) => [t.role, t.text])).toEqual(texts);
    expect(restored.dataDir).toBe(join(elsewhere, "agents", `${devnet.deployment.chainId}-${agentId}`));
  }, 90_000);

  it("refuses with typed errors that say what to do, and changes nothing", async () => {
    const before = await readPublishedHead(contracts.agentRegistry, agentId);
    const [notOwner, unknown, noDeposit, empty] = await Promise.all([
      cli(["chat", String(agentId), "--message", "hi"], { account: "creator" }),
      cli(["chat", "999", "--message", "hi"]),
      cli(["chat", String(noDepositAgent), "--message", "hi"], { account: "user-2" }),
      cli(["chat", String(agentId), "--message", "  "]),
    ]);
    expect(notOwner.code).toBe(1);
    expect(notOwner.json.error).toMatchObject({ name: "NotAgentOwnerError", message: expect.stringContaining("--account") });
    expect(unknown.json.error).toMatchObject({ name: "UnknownAgentError", message: expect.stringContaining("soulmesh agent mint") });
    expect(noDeposit.json.error).toMatchObject({ name: "NoDepositError", message: expect.stringContaining("soulmesh deposit 10") });
    expect(empty.json.error?.name).toBe("InvalidChatArgumentError");
    const badId = await cli(["chat", "abc", "--message", "hi"], { json: false });
    expect(badId.code).not.toBe(0);
    expect(badId.stderr).toContain("expected an agent id");
    expect((await readPublishedHead(contracts.agentRegistry, agentId))?.cid.toString()).toBe(before?.cid.toString());
  }, 60_000);
});

/** A pseudo-terminal session of `soulmesh chat`: write keys, wait for output. */
function ptyChat(args: string[]) {
  const command = [process.execPath, SOULMESH_BIN, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  const child = spawn("script", ["-qfec", command, "/dev/null"], {
    env: { ...process.env, SOULMESH_ACCOUNT: "user", SOULMESH_PASSWORD: "", SOULMESH_IPFS_API: "", SOULMESH_RPC_URL: "", NO_COLOR: "1" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    output: () => out,
    write: (keys: string) => child.stdin.write(keys),
    exited,
    /** Resolves once `test` holds on the output after `from` (a character offset), with that output. */
    async until(test: (text: string) => boolean, from: number, timeoutMs = 30_000): Promise<string> {
      const deadline = Date.now() + timeoutMs;
      // The terminal's cursor moves are no part of what the user reads.
      const plain = (): string => out.slice(from).replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");
      while (!test(plain())) {
        if (Date.now() > deadline) throw new Error(`timed out; output so far:\n${out}`);
        if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}; output:\n${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return plain();
    },
    kill: () => child.kill("SIGKILL"),
  };
}

const COST_LINE = /(\d+) in \/ (\d+) out tokens · ([\d.]+) tUSD · total ([\d.]+) tUSD · provider 0x[0-9a-fA-F]{4}…[0-9a-fA-F]{4}/;
const CANCELLED_LINE = /\(cancelled\)\s*(?:\x1b\[\d+m)?(\d+) in \/ (\d+) out tokens delivered · ([\d.]+) tUSD · total ([\d.]+) tUSD/;

describe("interactive chat in a terminal", () => {
  it("streams replies with a cost line, cancels a reply on Ctrl-C (paying and showing what was delivered) and goes on, and /exit publishes the head", async () => {
    const before = (await readPublishedHead(contracts.agentRegistry, agentId))?.seq ?? 0n;
    let turnsBefore = 0;
    const chat = ptyChat(["chat", String(agentId), "--max-tokens", "3000", "--home", home, "--deployment", devnet.deploymentPath]);
    try {
      turnsBefore = Number(/memory: (\d+) turns/.exec(await chat.until((t) => t.includes("you> "), 0))![1]);
      let at = chat.output().length;
      chat.write("/help\n");
      await chat.until((t) => t.includes("/memory") && t.includes("you> "), at);

      // A long reply (the tiny model never stops by itself): cancel it as soon as it streams.
      at = chat.output().length;
      chat.write("Tell me a very long story.\n");
      // Streamed text, not the progress line of the lane's first commit that may come first.
      await chat.until((t) => /Mira> \s*\S{3,}/.test(t.replace(/committed [^\n]*\n/g, "")), at);
      chat.write("\x03");
      const cancelled = await chat.until((t) => t.includes("(cancelled)") && t.trimEnd().endsWith("you>"), at);
      expect(cancelled).not.toMatch(COST_LINE);
      // What was delivered before Ctrl-C is paid (the provider would otherwise refuse the next turns), and shown.
      expect(cancelled).toMatch(CANCELLED_LINE);
      const cancelledCost = CANCELLED_LINE.exec(cancelled);
      expect(cancelledCost).not.toBeNull();
      expect(Number(cancelledCost![2])).toBeGreaterThan(0);
      expect(Number(cancelledCost![3])).toBeGreaterThan(0);

      at = chat.output().length;
      chat.write("/memory\n");
      await chat.until((t) => t.includes("profile:") && t.includes("notebook:"), at);

      // Shorter replies now: the same session goes on.
      at = chat.output().length;
      chat.write("/tokens 8\n");
      await chat.until((t) => t.includes("replies now stop at 8 tokens"), at);
      at = chat.output().length;
      chat.write("Remember that I like tea.\n");
      const one = COST_LINE.exec(await chat.until((t) => COST_LINE.test(t), at))!;
      at = chat.output().length;
      chat.write("And what do I like?\n");
      const two = COST_LINE.exec(await chat.until((t) => COST_LINE.test(t), at))!;
      expect(Number(one[3])).toBeGreaterThan(0);
      expect(Number(two[4])).toBeGreaterThan(Number(one[4]));
      expect(Number(two[4])).toBeCloseTo(Number(cancelledCost![3]) + Number(one[3]) + Number(two[3]), 6);

      at = chat.output().length;
      chat.write("/exit\n");
      const end = await chat.until((t) => t.includes("Chat ended"), at);
      expect(end).toMatch(/Chat ended: 2 turns \(1 cancelled\), spent [\d.]+ tUSD\. Memory head \S+ \(#\d+\) published on chain\./);
      expect(await chat.exited).toBe(0);
    } finally {
      chat.kill();
    }
    const after = (await readPublishedHead(contracts.agentRegistry, agentId))!;
    expect(after.seq).toBeGreaterThan(before);
    const shown = await cli(["memory", "show", String(agentId), "--turns", "4"]);
    // The cancelled turn left nothing; the two answered ones are there, and the notebook caught the instruction.
    expect(shown.json.turnCount).toBe(turnsBefore + 4);
    const turns = shown.json.turns as { role: string; text: string }[];
    expect(turns.filter((t) => t.role === "user").map((t) => t.text)).toEqual(["Remember that I like tea.", "And what do I like?"]);
    expect(JSON.stringify(shown.json.notebook)).toContain("tea");
  }, 120_000);

  it("ends on Ctrl-C at an empty prompt, after dropping a half-typed line on the first", async () => {
    const chat = ptyChat(["chat", String(agentId), "--home", home, "--deployment", devnet.deploymentPath]);
    try {
      await chat.until((t) => t.includes("you> "), 0);
      const at = chat.output().length;
      chat.write("half a thought");
      await chat.until((t) => t.includes("half a thought"), at);
      chat.write("\x03");
      await chat.until((t) => /half a thought\s*you> $/.test(t), at);
      chat.write("\x03");
      const end = await chat.until((t) => t.includes("Chat ended"), at);
      expect(end).toContain("Chat ended: 0 turns, spent 0 tUSD.");
      expect(await chat.exited).toBe(0);
    } finally {
      chat.kill();
    }
  }, 60_000);
});
