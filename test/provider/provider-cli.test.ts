/**
 * `soulmesh provider start --json` and `soulmesh provider status --json` as child processes against a devnet
 * served over JSON-RPC by another child process: the provider starts on the tiny model with a dev account,
 * registers, answers status and metrics, and on SIGTERM settles, stops and exits 0; status then says it is not
 * running (exit code 1) and still shows the on-chain record. Amounts are decimal tUSD like every other command's:
 * a restart with new prices and stake puts exactly the parsed units in the registry, and bad amounts are refused
 * with InvalidAmountError before anything starts.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidAmountError } from "../../cli/commands/escrow.js";
import { parseProviderAmounts } from "../../cli/commands/provider.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { connectDeployment } from "../../sdk/chain/rpc.js";
import { readProviderRecord, type OnChainProvider } from "../../node/provider/registration.js";
import { removeTinyFixtures, tinyFixtures, type TinyFixtures } from "../fixtures/gguf/llama.js";
import { runCli, type CliProcess } from "../helpers/cli.js";
import { parseExposition, sample } from "./prom.js";

let home: string;
let devnet: CliProcess;
let deployment: Deployment;
let fx: TinyFixtures;
let provider: CliProcess | undefined;

interface StartResult {
  pid: number;
  peerId: string;
  multiaddrs: string[];
  address: string;
  metricsUrl: string;
  statusUrl: string;
  dataDir: string;
  registration: { action: string; txHashes: string[] };
  prices: { input: string; output: string };
}

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), "soulmesh-provider-cli-"));
  devnet = runCli(["devnet", "--port", "0", "--json"], { SOULMESH_HOME: home });
  [deployment, fx] = await Promise.all([devnet.firstJson<Deployment>(), tinyFixtures()]);
});

/** The provider's record as the registry holds it now. */
async function onChain(address: string): Promise<OnChainProvider | undefined> {
  const rpc = await connectDeployment(deployment);
  try {
    return await readProviderRecord(connectContracts(deployment, rpc), address);
  } finally {
    rpc.destroy();
  }
}

/** Resolves once the child's stdout contains `text`; rejects if it exits first. */
function printed(p: CliProcess, text: string, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`"${text}" not printed within ${timeoutMs} ms; stderr: ${p.stderr()}`)), timeoutMs);
    const check = (): void => {
      if (!p.stdout().includes(text)) return;
      clearTimeout(timer);
      p.child.stdout.off("data", check);
      resolve();
    };
    p.child.stdout.on("data", check);
    void p.exited().then((code) => reject(new Error(`exited with ${code}; stdout: ${p.stdout()} stderr: ${p.stderr()}`)));
    check();
  });
}

afterAll(async () => {
  if (provider && provider.child.exitCode === null) provider.child.kill("SIGKILL");
  if (devnet && devnet.child.exitCode === null) {
    devnet.child.kill("SIGINT");
    await devnet.exited();
  }
  await rm(home, { recursive: true, force: true });
  await removeTinyFixtures();
});

describe("soulmesh provider", () => {
  let started: StartResult;

  it("start --json registers on the devnet and prints one JSON object", async () => {
    provider = runCli(
      ["provider", "start", "--model", fx.base.path, "--dev-account", "3", "--metrics-port", "0", "--threads", "1",
        "--context-size", "512", "--json"],
      { SOULMESH_HOME: home },
    );
    started = await provider.firstJson<StartResult>(60_000);
    expect(started).toMatchObject({
      pid: provider.child.pid,
      address: deployment.devAccounts![3]!.address,
      dataDir: join(home, "provider"),
      registration: { action: "registered" },
      // The defaults, 0.5 and 1.5 tUSD per million tokens, in raw units in JSON as before.
      prices: { input: "500000", output: "1500000" },
    });
    expect(started.registration.txHashes).toHaveLength(2);
    expect(started.multiaddrs.length).toBeGreaterThan(0);
    expect(existsSync(join(home, "provider", "provider.json"))).toBe(true);
  });

  it("status --json reads the running provider's /status", async () => {
    const status = runCli(["provider", "status", "--json"], { SOULMESH_HOME: home });
    expect(await status.exited()).toBe(0);
    const st = JSON.parse(status.stdout());
    expect(st).toMatchObject({
      running: true,
      state: "running",
      pid: started.pid,
      peerId: started.peerId,
      address: started.address,
      registration: { action: "registered" },
      models: [{ sha256: fx.base.sha256 }],
      prices: { input: "500000", output: "1500000" },
      sessions: { open: 0 },
    });
    const text = runCli(["provider", "status"], { SOULMESH_HOME: home });
    expect(await text.exited()).toBe(0);
    expect(text.stdout()).toContain("prices     0.5 input / 1.5 output tUSD per million tokens");
    const metrics = parseExposition(await (await fetch(started.metricsUrl)).text());
    expect(sample(metrics, "soulmesh_output_tokens_total")).toBe(0);
    expect(sample(metrics, 'soulmesh_settlement_transactions_total{state="sent"}')).toBe(0);
  });

  it("stops cleanly on SIGTERM; status then says it is not running and shows the on-chain record", async () => {
    provider!.child.kill("SIGTERM");
    expect(await provider!.exited()).toBe(0);
    expect(provider!.stderr()).not.toContain("error");
    expect(existsSync(join(home, "provider", "provider.json"))).toBe(false);

    const status = runCli(["provider", "status", "--json"], { SOULMESH_HOME: home });
    expect(await status.exited()).toBe(1);
    const st = JSON.parse(status.stdout());
    expect(st).toMatchObject({
      running: false,
      address: started.address,
      onChain: { peerId: started.peerId, modelHashes: [fx.base.sha256], active: true },
    });
    expect(st.message).toContain("soulmesh provider start");

    const text = runCli(["provider", "status"], { SOULMESH_HOME: home });
    expect(await text.exited()).toBe(1);
    expect(text.stdout()).toContain("start it with `soulmesh provider start`");
    expect(text.stdout()).toContain(started.peerId);
    expect(text.stdout()).toContain("stake 100 tUSD");
    expect(text.stdout()).toContain("prices   0.5 input / 1.5 output tUSD per million tokens");
  });

  it("restarts with decimal --price-in/--price-out/--stake: the registry holds exactly the parsed units", async () => {
    provider = runCli(
      ["provider", "start", "--model", fx.base.path, "--dev-account", "3", "--metrics-port", "0", "--threads", "1",
        "--context-size", "512", "--price-in", "0.123456", "--price-out", "2.5", "--stake", "150.000001", "--no-ipfs"],
      { SOULMESH_HOME: home },
    );
    await printed(provider, "Press Ctrl-C to stop.");
    const out = provider.stdout();
    expect(out).toContain("on chain     updated, stake 150.000001 tUSD");
    expect(out).toContain("prices       0.123456 input / 2.5 output tUSD per million tokens");
    const record = await onChain(started.address);
    expect(record).toMatchObject({ prices: { input: 123_456n, output: 2_500_000n }, stake: 150_000_001n, active: true });

    provider.child.kill("SIGTERM");
    expect(await provider.exited(), provider.stderr()).toBe(0);
  });

  it("refuses bad amounts with InvalidAmountError before anything starts", async () => {
    const before = await onChain(started.address);
    const dataDir = join(home, "never-started");
    // One process (each costs seconds); the parser's table below covers the other bad inputs. This one needs the
    // deployment's decimals, so it is refused only once the deployment is read, still before anything starts.
    const bad = runCli(
      ["provider", "start", "--model", fx.base.path, "--dev-account", "3", "--data-dir", dataDir, "--stake", "150.0000001", "--json"],
      { SOULMESH_HOME: home },
    );
    expect(await bad.exited()).toBe(1);
    const { error } = JSON.parse(bad.stdout()) as { error: { name: string; message: string } };
    expect(error).toMatchObject({ name: "InvalidAmountError", message: expect.stringContaining("the token has 6 decimals") });
    expect(existsSync(dataDir)).toBe(false);
    expect(await onChain(started.address)).toEqual(before);
  });

  it("parses amounts exactly with the token's decimals", () => {
    const defaults = { priceIn: "0.5", priceOut: "1.5", settleThreshold: "10" };
    expect(parseProviderAmounts(defaults, 6)).toEqual({ prices: { input: 500_000n, output: 1_500_000n }, settleThreshold: 10_000_000n });
    expect(parseProviderAmounts({ priceIn: "0", priceOut: ".000001", stake: "150", settleThreshold: "0.0" }, 6)).toEqual({
      prices: { input: 0n, output: 1n },
      stake: 150_000_000n,
      settleThreshold: 0n,
    });
    // 18 decimals: well past what a float holds exactly.
    expect(parseProviderAmounts({ ...defaults, priceIn: "123456789.123456789123456789" }, 18).prices.input).toBe(
      123_456_789_123_456_789_123_456_789n,
    );
    const max = (1n << 128n) - 1n;
    expect(parseProviderAmounts({ priceIn: "1", priceOut: max.toString(), settleThreshold: "0" }, 0).prices.output).toBe(max);
  });

  it.each([
    ["--price-in", { priceIn: "abc" }],
    ["--price-in", { priceIn: "" }],
    ["--price-in", { priceIn: "1e3" }],
    ["--price-out", { priceOut: "-1" }],
    ["--price-out", { priceOut: "0.0000001" }],
    ["--price-out", { priceOut: "0x10" }],
    ["--price-in", { priceIn: "340282366920938463463374607431768.211456" }],
    ["--stake", { stake: "1,5" }],
    ["--stake", { stake: "-150" }],
    ["--settle-threshold", { settleThreshold: "ten" }],
  ])("refuses a bad %s: %j", (_option, bad) => {
    const input = { priceIn: "0.5", priceOut: "1.5", settleThreshold: "10", ...bad };
    expect(() => parseProviderAmounts(input, 6)).toThrow(InvalidAmountError);
  });

  it("refuses to start without a key, saying where to put one", async () => {
    const noKey = runCli(["provider", "start", "--model", fx.base.path, "--json"], { SOULMESH_HOME: home, SOULMESH_PROVIDER_KEY: "" });
    expect(await noKey.exited()).toBe(1);
    expect(JSON.parse(noKey.stdout())).toMatchObject({ error: { name: "ProviderKeyError" } });
    expect(noKey.stdout()).toContain("SOULMESH_PROVIDER_KEY");
  });
});
