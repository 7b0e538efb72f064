/**
 * `soulmesh devnet --protocol-fee BPS [--treasury ADDRESS] [--max-royalty TUSD]` as a child process: the fee is
 * scheduled at deployment (the escrow's fee delay applies, as on any chain), the output says when it takes effect
 * and the escrow agrees; the royalty cap is the persona registry's; bad values start nothing.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonRpcProvider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidProtocolFeeError, MAX_PROTOCOL_FEE_BPS, parseProtocolFee } from "../../cli/commands/devnet.js";
import type { ProtocolFeeState } from "../../cli/commands/devnet.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { devnetDeploymentPath } from "../../sdk/chain/deployment.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { runCli } from "../helpers/cli.js";
import type { CliProcess } from "../helpers/cli.js";

const CLEAN_ENV = { SOULMESH_HOME: "", SOULMESH_ACCOUNT: "", SOULMESH_RPC_URL: "", SOULMESH_IPFS_API: "", SOULMESH_DEPLOYMENT: "" };
/** Dev account 3, "provider" on the devnet: any address other than the deployer's. */
const TREASURY = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";

let root: string;
let home: string;
let devnet: CliProcess;
let printed: Deployment & { protocolFee: ProtocolFeeState };
let provider: JsonRpcProvider;
let contracts: SoulmeshContracts;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-devnet-fee-"));
  home = join(root, "home");
  devnet = runCli(["devnet", "--port", "0", "--json", "--home", home, "--protocol-fee", "250", "--treasury", TREASURY.toLowerCase(), "--max-royalty", "50"], CLEAN_ENV);
  printed = await devnet.firstJson<typeof printed>(60_000);
  provider = new JsonRpcProvider(printed.rpcUrl, printed.chainId, { staticNetwork: true });
  contracts = connectContracts(printed, provider);
}, 90_000);

afterAll(async () => {
  provider?.destroy();
  if (devnet !== undefined && devnet.child.exitCode === null) devnet.child.kill("SIGKILL");
  await rm(root, { recursive: true, force: true });
});

describe("parseProtocolFee", () => {
  it("takes whole basis points up to the escrow's maximum; anything else is a typed error", () => {
    expect(parseProtocolFee("0")).toBe(0);
    expect(parseProtocolFee("250")).toBe(250);
    expect(parseProtocolFee(` ${MAX_PROTOCOL_FEE_BPS} `)).toBe(MAX_PROTOCOL_FEE_BPS);
    for (const bad of ["2.5", "-1", "1001", "abc", "", "1e3", "0x10"]) {
      expect(() => parseProtocolFee(bad), bad).toThrow(InvalidProtocolFeeError);
    }
  });
});

describe("soulmesh devnet --protocol-fee", () => {
  it("schedules the fee at deployment and says when it takes effect, as the escrow reports it", async () => {
    expect(await contracts.inferenceEscrow.MAX_FEE_BPS()).toBe(BigInt(MAX_PROTOCOL_FEE_BPS));
    const [current, next, effectiveAt] = await contracts.inferenceEscrow.protocolFee();
    expect([current, next]).toEqual([0n, 250n]);
    expect(await contracts.inferenceEscrow.treasury()).toBe(TREASURY);
    const delay = Number(await contracts.inferenceEscrow.feeDelay());
    expect(delay).toBe(printed.parameters.royaltyDelay);
    expect(printed.parameters).toMatchObject({ protocolFeeBps: 250, treasury: TREASURY });
    expect(printed.protocolFee).toEqual({
      currentBps: 0,
      nextBps: 250,
      effectiveAt: new Date(Number(effectiveAt) * 1000).toISOString(),
      effectiveAtUnix: Number(effectiveAt),
      effectiveIn: "in 2 days",
      inSeconds: expect.any(Number),
      treasury: TREASURY,
    });
    // Scheduled during deployment, a moment before the output read the chain's time.
    expect(printed.protocolFee.inSeconds).toBeGreaterThan(delay - 60);
    expect(printed.protocolFee.inSeconds).toBeLessThanOrEqual(delay);

    await provider.send("evm_increaseTime", [delay]);
    await provider.send("evm_mine", []);
    expect(await contracts.inferenceEscrow.protocolFee()).toEqual([250n, 250n, 0n]);
  });

  it("deploys the persona registry with the royalty cap given by --max-royalty, in tUSD", async () => {
    expect(printed.parameters.maxRoyaltyPerMillion).toBe("50000000");
    expect(await contracts.personaRegistry.maxRoyaltyPerMillion()).toBe(50_000_000n);
  });

  it("refuses a bad fee or treasury before starting anything", async () => {
    const other = join(root, "bad");
    // The parser's other cases are covered above; each child process costs seconds.
    const runs = ["2.5", "1001"].map((bps) =>
      runCli(["devnet", "--port", "0", "--json", "--home", other, "--protocol-fee", bps], CLEAN_ENV),
    );
    runs.push(runCli(["devnet", "--port", "0", "--json", "--home", other, "--treasury", "0x1234"], CLEAN_ENV));
    runs.push(runCli(["devnet", "--port", "0", "--json", "--home", other, "--max-royalty", "0.0000001"], CLEAN_ENV));
    const codes = await Promise.all(runs.map((r) => r.exited()));
    expect(codes).toEqual(runs.map(() => 1));
    const errors = runs.map((r) => (JSON.parse(r.stdout().trim()) as { error: { name: string; message: string } }).error);
    expect(errors.map((e) => e.name)).toEqual([
      "InvalidProtocolFeeError",
      "InvalidProtocolFeeError",
      "InvalidAddressError",
      "InvalidAmountError",
    ]);
    expect(errors[1]!.message).toContain(`0 to ${MAX_PROTOCOL_FEE_BPS}`);
    expect(existsSync(devnetDeploymentPath(other))).toBe(false);
  });

  it("stops cleanly on SIGTERM", async () => {
    devnet.child.kill("SIGTERM");
    expect(await devnet.exited()).toBe(0);
    expect(existsSync(devnetDeploymentPath(home))).toBe(false);
  });
});
