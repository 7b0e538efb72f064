/**
 * `soulmesh persona royalty|price` as child processes against a devnet and the home's IPFS service, both started in
 * this process: a royalty change is scheduled after the registry's delay (and shown as such), becomes current once
 * chain time passes it; a price change applies at once and the next adoption pays it exactly; only the holder may
 * change either, and bad inputs change nothing.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { durationWords, whenFromNow } from "../../cli/commands/persona.js";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { startLocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../../cli/ipfs/local-ipfs.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { DevAccount } from "../../sdk/chain/dev-accounts.js";
import { runCli, runCliJson, type CliJsonRun } from "../helpers/cli.js";

const DEMO_CARD = fileURLToPath(new URL("../../cli/up/demo-persona.json", import.meta.url));
/** Any SHA-256 names a base model for publishing; no provider runs it in this test. */
const BASE_MODEL = `0x${"ab".repeat(32)}`;

let root: string;
let home: string;
let devnet: Devnet;
let ipfs: LocalIpfsService;
let contracts: SoulmeshContracts;
let user: DevAccount;
let creator: DevAccount;
let personaId: bigint;

type Run = CliJsonRun;

/** Runs the CLI with --json in the test's home against the devnet and its IPFS service. */
function cli(args: string[]): Promise<Run> {
  return runCliJson(args, { home, deployment: devnet.deploymentPath });
}

const units = (m: unknown): bigint => BigInt((m as { units: string }).units);

async function chainTime(): Promise<number> {
  return (await devnet.chain.provider.getBlock("latest"))!.timestamp;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-royalty-cli-"));
  home = join(root, "home");
  [devnet, ipfs] = await Promise.all([startDevnet({ port: 0, home: join(root, "devnet") }), startLocalIpfsService({ home, port: 0 })]);
  contracts = connectContracts(devnet.deployment, devnet.chain.provider);
  const accounts = devnet.deployment.devAccounts!;
  user = accounts.find((a) => a.label === "user")!;
  creator = accounts.find((a) => a.label === "creator")!;
  const created = await cli([
    "persona", "create", "--card", DEMO_CARD, "--base-model", BASE_MODEL, "--royalty", "0.2", "--adoption-price", "5",
    "--account", "creator",
  ]);
  expect(created.code, created.stderr).toBe(0);
  personaId = BigInt(created.json.personaId as string);
}, 60_000);

afterAll(async () => {
  await ipfs?.stop();
  await devnet?.stop();
  await rm(root, { recursive: true, force: true });
});

describe("durations in words", () => {
  it("keeps the two largest units, rounded to the smaller, and says now for the past", () => {
    expect(durationWords(172_800)).toBe("2 days");
    expect(durationWords(90_061)).toBe("1 day 1 hour");
    expect(durationWords(3_660)).toBe("1 hour 1 minute");
    expect(durationWords(86_400 + 59)).toBe("1 day");
    expect(durationWords(172_800 - 10)).toBe("2 days");
    expect(durationWords(3_599.6)).toBe("1 hour");
    expect(durationWords(86_400 + 3_600 * 23 + 60 * 40)).toBe("2 days");
    expect(durationWords(7_200 + 61)).toBe("2 hours 1 minute");
    expect(durationWords(45)).toBe("45 seconds");
    expect(durationWords(0)).toBe("0 seconds");
    expect(whenFromNow(1_000 + 172_800, 1_000)).toBe("in 2 days");
    expect(whenFromNow(1_000, 2_000)).toBe("now");
  });
});

describe("persona royalty", () => {
  it("not the holder, a bad amount, an unknown persona: typed errors, the schedule unchanged", async () => {
    const before = await contracts.personaRegistry.royaltyScheduleOf(personaId);
    const [notHolder, junk, unknown, badId] = await Promise.all([
      cli(["persona", "royalty", String(personaId), "0.5", "--account", "user"]),
      cli(["persona", "royalty", String(personaId), "-1", "--account", "creator"]),
      cli(["persona", "royalty", "99", "0.5", "--account", "creator"]),
      cli(["persona", "royalty", "x", "0.5", "--account", "creator"]),
    ]);
    expect([notHolder, junk, unknown, badId].map((r) => r.code)).toEqual([1, 1, 1, 1]);
    expect([notHolder, junk, unknown, badId].map((r) => r.json.error?.name)).toEqual([
      "NotPersonaHolderError",
      "InvalidAmountError",
      "UnknownPersonaError",
      "InvalidIdError",
    ]);
    expect(notHolder.json.error?.message).toContain(`held by ${creator.address}, not by ${user.address}`);
    expect(notHolder.json.error?.message).toContain("--account");
    expect(await contracts.personaRegistry.royaltyScheduleOf(personaId)).toEqual(before);
  });

  it("schedules the change after the royalty delay, says when, and persona show reports it current once chain time passes", async () => {
    const delay = devnet.deployment.parameters.royaltyDelay;
    expect(delay).toBe(2 * 24 * 3600);
    const scheduled = await cli(["persona", "royalty", String(personaId), "0.5", "--account", "creator"]);
    expect(scheduled.code, scheduled.stderr).toBe(0);
    const [current, next, effectiveAt] = await contracts.personaRegistry.royaltyScheduleOf(personaId);
    expect([current, next]).toEqual([200_000n, 500_000n]);
    const receipt = await devnet.chain.provider.getTransactionReceipt(scheduled.json.tx as string);
    const minedAt = (await receipt!.getBlock()).timestamp;
    expect(Number(effectiveAt)).toBe(minedAt + delay);
    expect(scheduled.json).toMatchObject({
      personaId: String(personaId),
      holder: creator.address,
      current: { units: "200000", formatted: "0.2" },
      scheduled: { units: "500000", formatted: "0.5" },
      effectiveAt: new Date(Number(effectiveAt) * 1000).toISOString(),
      effectiveAtUnix: Number(effectiveAt),
      effectiveIn: "in 2 days",
      inSeconds: delay,
      chainTime: new Date(minedAt * 1000).toISOString(),
      replaced: null,
    });

    // Rescheduling replaces the pending change and says so.
    const again = await cli(["persona", "royalty", String(personaId), "0.75", "--account", "creator"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({
      current: { units: "200000" },
      scheduled: { units: "750000" },
      replaced: { royalty: { units: "500000" }, effectiveAt: new Date(Number(effectiveAt) * 1000).toISOString() },
    });
    const newEffectiveAt = again.json.effectiveAtUnix as number;

    const pending = await cli(["persona", "show", String(personaId)]);
    expect(pending.code, pending.stderr).toBe(0);
    expect(pending.json.royaltyPerMillion).toMatchObject({
      current: { units: "200000" },
      scheduled: { royalty: { units: "750000" }, effectiveAtUnix: newEffectiveAt },
    });

    // A minute short of the date the old royalty still holds; past it the new one is current.
    await devnet.chain.provider.send("evm_increaseTime", [newEffectiveAt - (await chainTime()) - 60]);
    await devnet.chain.provider.send("evm_mine", []);
    expect(await chainTime()).toBeLessThan(newEffectiveAt);
    expect((await contracts.personaRegistry.royaltyOf(personaId))[1]).toBe(200_000n);
    await devnet.chain.provider.send("evm_increaseTime", [120]);
    await devnet.chain.provider.send("evm_mine", []);
    expect(await chainTime()).toBeGreaterThanOrEqual(newEffectiveAt);
    const shown = await cli(["persona", "show", String(personaId)]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json.royaltyPerMillion).toEqual({ current: { units: "750000", formatted: "0.75" }, scheduled: null });
    expect((await contracts.personaRegistry.royaltyOf(personaId))[1]).toBe(750_000n);
  });
});

describe("persona price", () => {
  it("not the holder or a bad amount: typed errors, the price unchanged", async () => {
    const [, before] = await contracts.personaRegistry.adoptionTermsOf(personaId);
    const [notHolder, junk] = await Promise.all([
      cli(["persona", "price", String(personaId), "1", "--account", "user"]),
      cli(["persona", "price", String(personaId), "1.0000001", "--account", "creator"]),
    ]);
    expect(notHolder.json.error?.name).toBe("NotPersonaHolderError");
    expect(junk.json.error?.name).toBe("InvalidAmountError");
    expect([notHolder.code, junk.code]).toEqual([1, 1]);
    expect((await contracts.personaRegistry.adoptionTermsOf(personaId))[1]).toBe(before);
  });

  it("applies at once: the next adoption pays the new price exactly, and zero makes it free", async () => {
    const set = await cli(["persona", "price", String(personaId), "7.25", "--account", "creator"]);
    expect(set.code, set.stderr).toBe(0);
    expect(set.json).toMatchObject({
      personaId: String(personaId),
      holder: creator.address,
      previous: { units: "5000000", formatted: "5" },
      adoptionPrice: { units: "7250000", formatted: "7.25" },
    });
    expect((await contracts.personaRegistry.adoptionTermsOf(personaId))[1]).toBe(7_250_000n);

    const [userBefore, creatorBefore] = await Promise.all([
      contracts.token.balanceOf(user.address),
      contracts.token.balanceOf(creator.address),
    ]);
    const minted = await cli(["agent", "mint", "--persona", String(personaId), "--account", "user"]);
    expect(minted.code, minted.stderr).toBe(0);
    expect(units(minted.json.adoptionPrice)).toBe(7_250_000n);
    expect(await contracts.token.balanceOf(user.address)).toBe(userBefore - 7_250_000n);
    expect(await contracts.token.balanceOf(creator.address)).toBe(creatorBefore + 7_250_000n);

    const free = await cli(["persona", "price", String(personaId), "0", "--account", "creator"]);
    expect(free.code, free.stderr).toBe(0);
    expect(free.json).toMatchObject({ previous: { units: "7250000" }, adoptionPrice: { units: "0" } });
    expect((await contracts.personaRegistry.adoptionTermsOf(personaId))[1]).toBe(0n);
  });
});
