import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { devnetDeploymentPath, parseDeployment, readDeployment, soulmeshHome, writeDeployment } from "./deployment.js";
import type { Deployment } from "./deployment.js";
import { DeploymentNotFoundError, InvalidDeploymentError } from "./errors.js";

const valid: Deployment = {
  format: "soulmesh-deployment/2",
  chainId: 31337,
  rpcUrl: "http://127.0.0.1:8545",
  deployedAt: "2026-11-23T00:00:00.000Z",
  startBlock: 0,
  contracts: {
    token: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    providerRegistry: "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9",
    personaRegistry: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    agentRegistry: "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0",
    inferenceEscrow: "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9",
  },
  token: { name: "Soulmesh Test USD", symbol: "tUSD", decimals: 6 },
  parameters: {
    maxVoucherLifetime: 86_400,
    withdrawalDelay: 172_800,
    royaltyDelay: 172_800,
    unbondingDelay: 604_800,
    minStake: "100000000",
    maxRoyaltyPerMillion: "1000000000",
    protocolFeeBps: 0,
    treasury: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    owner: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
  },
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-deployment-"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe("deployment files", () => {
  it("round-trip through write and read, private to the user", async () => {
    const path = join(dir, "nested", "devnet.json");
    await writeDeployment(path, valid);
    expect(await readDeployment(path)).toEqual(valid);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it("normalise addresses to their checksum", () => {
    const lower = { ...valid, contracts: { ...valid.contracts, token: valid.contracts.token.toLowerCase() } };
    expect(parseDeployment(lower).contracts.token).toBe(valid.contracts.token);
  });

  it("that are missing say how to start a devnet", async () => {
    const err = await readDeployment(join(dir, "devnet.json")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeploymentNotFoundError);
    expect((err as Error).message).toContain("soulmesh devnet");
  });

  it("that are not JSON are rejected with a typed error", async () => {
    const path = join(dir, "devnet.json");
    await writeFile(path, "{ half a file");
    await expect(readDeployment(path)).rejects.toBeInstanceOf(InvalidDeploymentError);
  });

  it("list every problem of a malformed deployment", () => {
    const bad = {
      ...valid,
      chainId: -1,
      contracts: { ...valid.contracts, inferenceEscrow: "0x123" },
      parameters: { ...valid.parameters, protocolFeeBps: 5_000 },
    };
    const err = (() => {
      try {
        parseDeployment(bad, "x.json");
      } catch (e) {
        return e as InvalidDeploymentError;
      }
    })();
    expect(err).toBeInstanceOf(InvalidDeploymentError);
    expect(err!.problems.join("\n")).toMatch(/chainId/);
    expect(err!.problems.join("\n")).toMatch(/contracts\.inferenceEscrow/);
    expect(err!.problems.join("\n")).toMatch(/parameters\.protocolFeeBps/);
  });

  it("are never written invalid, and a failed write leaves the old file intact", async () => {
    const path = join(dir, "devnet.json");
    await writeDeployment(path, valid);
    await expect(writeDeployment(path, { ...valid, chainId: 0 })).rejects.toBeInstanceOf(InvalidDeploymentError);
    expect(JSON.parse(await readFile(path, "utf8"))).toEqual(valid);
  });

  it("live in $SOULMESH_HOME, else ~/.soulmesh", () => {
    expect(soulmeshHome({ SOULMESH_HOME: "/srv/sm" })).toBe("/srv/sm");
    expect(soulmeshHome({})).toMatch(/\.soulmesh$/);
    expect(devnetDeploymentPath("/srv/sm")).toBe("/srv/sm/devnet.json");
  });
});
