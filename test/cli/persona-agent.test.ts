/**
 * `soulmesh persona create|list|show` and `soulmesh agent mint|list|show` as child processes against a devnet and
 * the home's IPFS service, both started in this process: cards (JSON and PNG) and a tiny LoRA go to IPFS, every
 * field shown is checked against the chain and the card, bad inputs publish nothing, adoptions pay exactly.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InvalidAddressError,
  InvalidIdError,
  parseAddressOption,
  parseId,
} from "../../cli/commands/persona.js";
import { InvalidAmountError, parseAmountOrZero } from "../../cli/commands/escrow.js";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { startLocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import { BaseModelNotDownloadedError, InvalidBaseModelError, resolveBaseModel } from "../../cli/models.js";
import { ModelNotFoundError } from "../../node/engine/errors.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { DevAccount } from "../../sdk/chain/dev-accounts.js";
import { exportCharacterCard, parseCharacterCard } from "../../sdk/memory/persona/card.js";
import { tinyFixtures } from "../fixtures/gguf/llama.js";
import type { TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli, runCliJson, type CliJsonRun } from "../helpers/cli.js";

const DEMO_CARD = fileURLToPath(new URL("../../cli/up/demo-persona.json", import.meta.url));

let root: string;
let home: string;
let devnet: Devnet;
let ipfs: LocalIpfsService;
let contracts: SoulmeshContracts;
let fx: TinyFixtures;
let user: DevAccount;
let creator: DevAccount;

type Run = CliJsonRun;

/** Runs the CLI with --json in the test's home against the devnet and its IPFS service. */
function cli(args: string[]): Promise<Run> {
  return runCliJson(args, { home, deployment: devnet.deploymentPath });
}

const units = (m: unknown): bigint => BigInt((m as { units: string }).units);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-persona-cli-"));
  home = join(root, "home");
  [devnet, ipfs, fx] = await Promise.all([
    startDevnet({ port: 0, home: join(root, "devnet") }),
    startLocalIpfsService({ home, port: 0 }),
    tinyFixtures(),
  ]);
  contracts = connectContracts(devnet.deployment, devnet.chain.provider);
  const accounts = devnet.deployment.devAccounts!;
  user = accounts.find((a) => a.label === "user")!;
  creator = accounts.find((a) => a.label === "creator")!;
}, 60_000);

afterAll(async () => {
  await ipfs?.stop();
  await devnet?.stop();
  await rm(root, { recursive: true, force: true });
});

describe("argument parsing", () => {
  it("ids, addresses, zero-able amounts and base models parse exactly; junk gets typed errors", async () => {
    expect(parseId("7", "persona")).toBe(7n);
    for (const bad of ["0", "-1", "1.5", "x", "", "0x1"]) expect(() => parseId(bad, "agent"), bad).toThrow(InvalidIdError);
    expect(parseAmountOrZero("0", 6)).toBe(0n);
    expect(parseAmountOrZero("0.00", 6)).toBe(0n);
    expect(parseAmountOrZero("0.2", 6)).toBe(200_000n);
    for (const bad of ["-0.1", "abc", "1.0000001", "1e3"]) expect(() => parseAmountOrZero(bad, 6), bad).toThrow(InvalidAmountError);
    const hash = `0x${"Ab".repeat(32)}`;
    expect((await resolveBaseModel(hash, { home })).sha256).toBe(hash.toLowerCase());
    for (const bad of ["0x12", `0x${"0".repeat(64)}`, " "]) {
      await expect(resolveBaseModel(bad, { home }), bad).rejects.toThrow(InvalidBaseModelError);
    }
    await expect(resolveBaseModel(join(root, "missing.gguf"), { home })).rejects.toThrow(ModelNotFoundError);
    await expect(resolveBaseModel("hf:nobody/absent-GGUF/absent.gguf", { home })).rejects.toThrow(BaseModelNotDownloadedError);
    expect(await resolveBaseModel(fx.base.path, { home: join(root, "elsewhere") })).toMatchObject({
      sha256: fx.base.sha256,
      path: fx.base.path,
      name: "tiny.gguf",
      uri: undefined,
    });
    expect(parseAddressOption("--owner", user.address.toLowerCase())).toBe(user.address);
    expect(() => parseAddressOption("--owner", "0x1234")).toThrow(InvalidAddressError);
  });
});

describe("persona", () => {
  it("create from the JSON demo card with a LoRA and a base model by path: IPFS and chain agree, hashed as providers do", async () => {
    const created = await cli([
      "persona", "create", "--card", DEMO_CARD, "--base-model", fx.base.path, "--lora", fx.adapters[0]!.path,
      "--royalty", "0.2", "--adoption-price", "5", "--account", "creator",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const personaId = BigInt(created.json.personaId as string);
    expect(personaId).toBe(1n);
    expect(created.json).toMatchObject({
      name: "Wren",
      creator: creator.address,
      adapterSha256: fx.adapters[0]!.sha256,
      baseModelHash: fx.base.sha256,
      royaltyPerMillion: { units: "200000", formatted: "0.2" },
      adoptionPrice: { units: "5000000", formatted: "5" },
    });
    const record = await contracts.personaRegistry.personaOf(personaId);
    expect(record.manifestCid).toBe(created.json.manifestCid);
    expect(record.adapterSha256).toBe(fx.adapters[0]!.sha256);
    expect(record.baseModelHash).toBe(fx.base.sha256);
    expect(record.adoptionPrice).toBe(5_000_000n);
    expect(await contracts.personaRegistry.ownerOf(personaId)).toBe(creator.address);
    expect((await contracts.personaRegistry.royaltyScheduleOf(personaId)).current).toBe(200_000n);
    // The hash was cached where `soulmesh model` keeps hashes: the next publish of this model does not read it again.
    expect(await readFile(join(home, "models", "hashes.json"), "utf8")).toContain(fx.base.sha256);

    const shown = await cli(["persona", "show", "1"]);
    expect(shown.code, shown.stderr).toBe(0);
    const card = parseCharacterCard(await readFile(DEMO_CARD));
    expect(shown.json).toMatchObject({
      personaId: "1",
      holder: creator.address,
      manifestCid: record.manifestCid,
      cardCid: created.json.cardCid,
      adapterCid: created.json.adapterCid,
      adapterSha256: fx.adapters[0]!.sha256,
      baseModelHash: fx.base.sha256,
      royaltyPerMillion: { current: { units: "200000" }, scheduled: null },
      adoptionPrice: { units: "5000000" },
      agentsAdopted: 0,
      card: {
        name: card.name,
        tags: card.tags,
        creator: card.creator,
        lorebookEntries: card.characterBook!.entries.length,
        description: card.description.split("\n")[0],
      },
    });
    expect((shown.json.manifest as { baseModel: { name: string } }).baseModel.name).toBe("tiny.gguf");
  });

  it("create from a PNG card under another name, base model by hash, no adapter; list shows both as on chain", async () => {
    const png = exportCharacterCard(parseCharacterCard(await readFile(DEMO_CARD)), { format: "png" });
    const pngPath = join(root, "wren.png");
    await writeFile(pngPath, png);
    const created = await cli([
      "persona", "create", "--card", pngPath, "--base-model", fx.base.sha256.toUpperCase().replace("0X", "0x"),
      "--royalty", "0", "--name", "Wren (PNG)", "--account", "creator",
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.json).toMatchObject({ personaId: "2", name: "Wren (PNG)", adapterCid: null, adapterSha256: null });

    const [shown, all, others] = await Promise.all([
      cli(["persona", "show", "2"]),
      cli(["persona", "list"]),
      cli(["persona", "list", "--mine", "--account", "user"]),
    ]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json).toMatchObject({
      card: { name: "Wren (PNG)" },
      manifest: { card: { format: "png" } },
      adapterCid: null,
      royaltyPerMillion: { current: { units: "0" } },
      adoptionPrice: { units: "0" },
    });
    expect(all.code, all.stderr).toBe(0);
    expect(all.json.count).toBe(2);
    const listed = all.json.personas as Array<Record<string, unknown>>;
    for (const p of listed) {
      const id = BigInt(p.personaId as string);
      const record = await contracts.personaRegistry.personaOf(id);
      expect(p.manifestCid).toBe(record.manifestCid);
      expect(p.baseModelHash).toBe(record.baseModelHash);
      expect(units(p.adoptionPrice)).toBe(record.adoptionPrice);
      expect(p.holder).toBe(creator.address);
    }
    expect(listed.map((p) => [p.name, p.hasAdapter])).toEqual([["Wren", true], ["Wren (PNG)", false]]);
    expect(others.json).toMatchObject({ creator: user.address, count: 0, personas: [] });
  });

  it("a bad card, a missing file, a non-LoRA adapter, a bad royalty or an hf: model not downloaded: typed errors, nothing published", async () => {
    const before = await contracts.personaRegistry.totalPersonas();
    const junkCard = join(root, "junk.json");
    await writeFile(junkCard, JSON.stringify({ hello: "world" }));
    const base = ["--base-model", fx.base.path, "--royalty", "0.1", "--account", "creator"];
    const runs = await Promise.all([
      cli(["persona", "create", "--card", junkCard, ...base]),
      cli(["persona", "create", "--card", join(root, "nope.json"), ...base]),
      cli(["persona", "create", "--card", DEMO_CARD, "--lora", fx.base.path, ...base]),
      cli(["persona", "create", "--card", DEMO_CARD, "--base-model", fx.base.path, "--royalty", "abc", "--account", "creator"]),
      cli([
        "persona", "create", "--card", DEMO_CARD, "--royalty", "1", "--account", "creator",
        "--base-model", "hf:nobody/not-downloaded-GGUF/model-q4.gguf",
      ]),
      cli(["persona", "show", "99"]),
      cli(["persona", "list", "--mine", "--creator", user.address]),
    ]);
    expect(runs.map((r) => r.code)).toEqual(runs.map(() => 1));
    expect(runs.map((r) => r.json.error?.name)).toEqual([
      "NotACharacterCardError",
      "UnreadableFileError",
      "NotALoraAdapterError",
      "InvalidAmountError",
      "BaseModelNotDownloadedError",
      "UnknownPersonaError",
      "ConflictingOptionsError",
    ]);
    expect(runs[5]!.json.error?.message).toContain("ids go from 1 to 2");
    expect(runs[4]!.json.error?.message).toContain("soulmesh model inspect hf:nobody/not-downloaded-GGUF/model-q4.gguf");
    expect(await contracts.personaRegistry.totalPersonas()).toBe(before);
  });
});

describe("agent", () => {
  it("mint pays the adoption price to the creator exactly; a price above --max-price or above the wallet sends nothing", async () => {
    const [userBefore, creatorBefore] = await Promise.all([
      contracts.token.balanceOf(user.address),
      contracts.token.balanceOf(creator.address),
    ]);
    const minted = await cli(["agent", "mint", "--persona", "1", "--account", "user"]);
    expect(minted.code, minted.stderr).toBe(0);
    expect(minted.json).toMatchObject({
      agentId: "1",
      personaId: "1",
      owner: user.address,
      holder: creator.address,
      adoptionPrice: { units: "5000000" },
    });
    expect(minted.json.txHashes).toHaveLength(2); // approve, mint
    expect(await contracts.agentRegistry.ownerOf(1n)).toBe(user.address);
    expect(await contracts.token.balanceOf(user.address)).toBe(userBefore - 5_000_000n);
    expect(await contracts.token.balanceOf(creator.address)).toBe(creatorBefore + 5_000_000n);

    // A free persona: no approval.
    const free = await cli(["agent", "mint", "--persona", "2", "--account", "user"]);
    expect(free.code, free.stderr).toBe(0);
    expect(free.json).toMatchObject({ agentId: "2", adoptionPrice: { units: "0" } });
    expect(free.json.txHashes).toHaveLength(1);

    // More than any dev account holds.
    const pricey = await cli([
      "persona", "create", "--card", DEMO_CARD, "--base-model", fx.base.sha256, "--royalty", "1",
      "--adoption-price", "20000", "--account", "creator",
    ]);
    expect(pricey.code, pricey.stderr).toBe(0);
    const agentsBefore = await contracts.agentRegistry.totalAgents();
    const balanceBefore = await contracts.token.balanceOf(user.address);
    const [tooDear, broke, unknown] = await Promise.all([
      cli(["agent", "mint", "--persona", "1", "--max-price", "4.99", "--account", "user"]),
      cli(["agent", "mint", "--persona", String(pricey.json.personaId), "--account", "user"]),
      cli(["agent", "mint", "--persona", "42", "--account", "user"]),
    ]);
    expect([tooDear.code, broke.code, unknown.code]).toEqual([1, 1, 1]);
    expect(tooDear.json.error?.name).toBe("AdoptionPriceAboveMaxError");
    expect(broke.json.error?.name).toBe("InsufficientTokensForAdoptionError");
    expect(broke.json.error?.message).toContain("--account user");
    expect(unknown.json.error?.name).toBe("UnknownPersonaError");
    expect(await contracts.agentRegistry.totalAgents()).toBe(agentsBefore);
    expect(await contracts.token.balanceOf(user.address)).toBe(balanceBefore);
  });

  it("list and show: owner, persona name, memory head and head operators as on chain; unknown ids are typed errors", async () => {
    const owner = new Wallet(user.privateKey, devnet.chain.provider);
    const agents = contracts.agentRegistry.connect(owner);
    const headCid = "bafyreigdmqpykrgxyaxtlafqpqhzrb7qy2rh75nldvfd4tucqmqqme5yje";
    await (await agents.setMemoryHead(1n, headCid, 3n)).wait();
    const operator = Wallet.createRandom().address;
    await (await agents.setHeadOperator(operator, true)).wait();

    const [mine, creatorsAgents, shown, unknown] = await Promise.all([
      cli(["agent", "list", "--account", "user"]),
      cli(["agent", "list", "--owner", creator.address.toLowerCase()]),
      cli(["agent", "show", "1"]),
      cli(["agent", "show", "77"]),
    ]);
    expect(mine.code, mine.stderr).toBe(0);
    expect(mine.json).toMatchObject({
      owner: user.address,
      count: 2,
      agents: [
        { agentId: "1", personaId: "1", personaName: "Wren", memoryHead: { cid: headCid, seq: "3" } },
        { agentId: "2", personaId: "2", personaName: "Wren (PNG)", memoryHead: null },
      ],
    });
    expect(creatorsAgents.json).toMatchObject({ owner: creator.address, count: 0 });
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json).toMatchObject({
      agentId: "1",
      owner: user.address,
      persona: { personaId: "1", name: "Wren" },
      memoryHead: { cid: headCid, seq: "3" },
      spent: { settlements: 0, inputTokens: "0", outputTokens: "0", total: { units: "0" } },
      headOperators: [operator],
      approved: null,
    });
    expect(unknown.code).toBe(1);
    expect(unknown.json.error?.name).toBe("UnknownAgentError");
    expect(unknown.json.error?.message).toContain("ids go from 1 to 2");
  });
});
