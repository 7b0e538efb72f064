/**
 * `soulmesh provider start --json` and `soulmesh provider status --json` as child processes against a devnet
 * served over JSON-RPC by another child process: the provider starts on the tiny model with a dev account,
 * registers, answers status and metrics, and on SIGTERM settles, stops and exits 0; status then says it is not
 * running (exit code 1) and still shows the on-chain record.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Deployment } from "../../sdk/chain/deployment.js";
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
}

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), "soulmesh-provider-cli-"));
  devnet = runCli(["devnet", "--port", "0", "--json"], { SOULMESH_HOME: home });
  [deployment, fx] = await Promise.all([devnet.firstJson<Deployment>(), tinyFixtures()]);
});

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
  });

  it("refuses to start without a key, saying where to put one", async () => {
    const noKey = runCli(["provider", "start", "--model", fx.base.path, "--json"], { SOULMESH_HOME: home, SOULMESH_PROVIDER_KEY: "" });
    expect(await noKey.exited()).toBe(1);
    expect(JSON.parse(noKey.stdout())).toMatchObject({ error: { name: "ProviderKeyError" } });
    expect(noKey.stdout()).toContain("SOULMESH_PROVIDER_KEY");
  });
});
