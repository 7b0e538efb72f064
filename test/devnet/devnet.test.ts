import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatUnits, Wallet } from "ethers";
import type { JsonRpcProvider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { devnetDeploymentPath, readDeployment } from "../../sdk/chain/deployment.js";
import type { Deployment } from "../../sdk/chain/deployment.js";
import { ChainMismatchError, ContractRevertError, RpcUnreachableError } from "../../sdk/chain/errors.js";
import { connectDeployment, connectRpc } from "../../sdk/chain/rpc.js";
import { withRevertDecoding } from "../../sdk/chain/revert.js";
import { DEV_FUNDING } from "../../cli/devnet/devnet.js";
import { MAX_VOUCHER_ROYALTY, parseMaxRoyalty } from "../../cli/commands/deploy.js";
import { InvalidAmountError } from "../../cli/commands/escrow.js";
import { DEFAULT_DEPLOY_PARAMETERS } from "../../sdk/chain/deploy.js";
import { runCli } from "../helpers/cli.js";
import type { CliProcess } from "../helpers/cli.js";

let home: string;
let devnet: CliProcess;
let printed: Deployment;
let provider: JsonRpcProvider;

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), "soulmesh-devnet-"));
  devnet = runCli(["devnet", "--port", "0", "--json"], { SOULMESH_HOME: home });
  printed = await devnet.firstJson<Deployment>();
});

afterAll(async () => {
  provider?.destroy();
  if (devnet.child.exitCode === null) devnet.child.kill("SIGKILL");
  await rm(home, { recursive: true, force: true });
});

describe("soulmesh devnet", () => {
  it("prints the deployment as JSON and writes the same one to $SOULMESH_HOME/devnet.json, with the IPFS service's address", async () => {
    const written = await readDeployment(devnetDeploymentPath(home));
    // The printed result adds where the home's IPFS service listens and the fee in force; the file is the deployment alone.
    const { ipfs, protocolFee: _fee, ...deployment } = printed as Deployment & {
      ipfs?: { api: string; apiFile: string; peerId: string };
      protocolFee?: unknown;
    };
    expect(written).toEqual(deployment);
    expect(ipfs?.apiFile).toBe(join(home, "ipfs", "api.json"));
    expect(JSON.parse(await readFile(ipfs!.apiFile, "utf8"))).toMatchObject({ url: ipfs!.api, peerId: ipfs!.peerId });
    expect(written.rpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(written.devAccounts).toHaveLength(10);
    expect(written.pid).toBe(devnet.child.pid);
    // The royalty cap is the default one, recorded and in force.
    expect(written.parameters.maxRoyaltyPerMillion).toBe(DEFAULT_DEPLOY_PARAMETERS.maxRoyaltyPerMillion.toString());
  });

  it("serves a chain another process can use with the deployment alone", async () => {
    const deployment = await readDeployment(devnetDeploymentPath(home));
    provider = await connectDeployment(deployment);
    const user = new Wallet(deployment.devAccounts![1]!.privateKey, provider);
    const c = connectContracts(deployment, user);

    expect(await c.token.balanceOf(user.address)).toBe(DEV_FUNDING);
    expect(await c.inferenceEscrow.personaRegistry()).toBe(deployment.contracts.personaRegistry);
    await (await c.token.approve(deployment.contracts.inferenceEscrow, 25_000_000n)).wait();
    await (await c.inferenceEscrow.deposit(25_000_000n)).wait();
    expect(await c.inferenceEscrow.depositOf(user.address)).toBe(25_000_000n);

    // Reverts cross the JSON-RPC server with their data, so they decode to typed errors.
    const err = await withRevertDecoding(c.inferenceEscrow.requestWithdrawal(26_000_000n)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContractRevertError);
    expect((err as ContractRevertError).reason).toBe("Escrow__InsufficientDeposit");
  });

  it("tells a client on the wrong chain or a dead endpoint what is wrong", async () => {
    await expect(connectRpc(printed.rpcUrl, { expectedChainId: 1 })).rejects.toBeInstanceOf(ChainMismatchError);
    const dead = await connectRpc("http://127.0.0.1:9", { timeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(dead).toBeInstanceOf(RpcUnreachableError);
    expect((dead as Error).message).toContain("soulmesh devnet");
  });

  it("refuses a taken port with a clear error", async () => {
    const port = new URL(printed.rpcUrl).port;
    const other = await mkdtemp(join(tmpdir(), "soulmesh-devnet-"));
    const second = runCli(["devnet", "--port", port], { SOULMESH_HOME: other });
    expect(await second.exited()).toBe(1);
    expect(second.stderr()).toContain(`Port ${port}`);
    expect(second.stderr()).toContain("--port");
    expect(existsSync(devnetDeploymentPath(other))).toBe(false);
    await rm(other, { recursive: true, force: true });
  });

  it("answers malformed JSON-RPC with JSON-RPC errors and keeps serving", async () => {
    const post = async (body: string) =>
      (await fetch(printed.rpcUrl, { method: "POST", headers: { "content-type": "application/json" }, body })).json();
    expect(await post("{not json")).toMatchObject({ error: { code: -32700 } });
    expect(await post("[]")).toMatchObject({ error: { code: -32600 } });
    expect(await post(JSON.stringify({ jsonrpc: "2.0", id: 1, method: 5 }))).toMatchObject({ error: { code: -32600 } });
    expect(await post(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "eth_chainId" }))).toEqual({
      jsonrpc: "2.0",
      id: 2,
      result: "0x7a69",
    });
  });

  it("deploys to a chain given by URL, with the key from SOULMESH_DEPLOYER_KEY only", async () => {
    const other = await mkdtemp(join(tmpdir(), "soulmesh-deploy-"));
    const key = printed.devAccounts![9]!.privateKey;
    const deploy = runCli(
      ["deploy", "--rpc", printed.rpcUrl, "--token", printed.contracts.token, "--fee-bps", "100", "--max-royalty", "2.5", "--json"],
      { SOULMESH_HOME: other, SOULMESH_DEPLOYER_KEY: key },
    );
    const result = await deploy.firstJson<Deployment & { path: string; maxRoyaltyPerMillion: { units: string; formatted: string } }>();
    expect(await deploy.exited()).toBe(0);
    expect(result.path).toBe(join(other, "deployments", "31337.json"));
    const written = await readDeployment(result.path);
    expect(written.contracts.token).toBe(printed.contracts.token);
    expect(written.contracts.inferenceEscrow).not.toBe(printed.contracts.inferenceEscrow);
    expect(written.parameters.protocolFeeBps).toBe(100);
    expect(written.parameters.maxRoyaltyPerMillion).toBe("2500000");
    expect(result.maxRoyaltyPerMillion).toEqual({ units: "2500000", formatted: "2.5" });
    const c = connectContracts(written, provider);
    expect(await c.personaRegistry.maxRoyaltyPerMillion()).toBe(2_500_000n);
    const [, nextFee] = await c.inferenceEscrow.protocolFee();
    expect(nextFee).toBe(100n);
    expect(await c.inferenceEscrow.token()).toBe(printed.contracts.token);
    await rm(other, { recursive: true, force: true });
  });

  it("refuses to deploy without a key or an RPC URL, saying which variable to set", async () => {
    const noKey = runCli(["deploy", "--rpc", printed.rpcUrl], { SOULMESH_DEPLOYER_KEY: "" });
    expect(await noKey.exited()).toBe(1);
    expect(noKey.stderr()).toContain("SOULMESH_DEPLOYER_KEY");
    const noRpc = runCli(["deploy", "--json"], { SOULMESH_DEPLOYER_KEY: "0x" + "11".repeat(32), SOULMESH_RPC_URL: "" });
    expect(await noRpc.exited()).toBe(1);
    expect(JSON.parse(noRpc.stdout())).toMatchObject({ error: { name: "MissingConfigError" } });
    const badKey = runCli(["deploy", "--rpc", printed.rpcUrl], { SOULMESH_DEPLOYER_KEY: "0x1234" });
    expect(await badKey.exited()).toBe(1);
    expect(badKey.stderr()).toContain("32-byte hex private key");
  });

  it("parses --max-royalty exactly, in the token's decimals, and refuses a bad one before deploying anything", async () => {
    expect(parseMaxRoyalty("1000", 6)).toBe(1_000_000_000n);
    expect(parseMaxRoyalty("0.000001", 6)).toBe(1n);
    expect(parseMaxRoyalty("0", 6)).toBe(0n);
    expect(parseMaxRoyalty(".5", 18)).toBe(500_000_000_000_000_000n);
    expect(parseMaxRoyalty(formatUnits(MAX_VOUCHER_ROYALTY, 6), 6)).toBe(MAX_VOUCHER_ROYALTY);
    for (const bad of ["0.0000001", "-1", "1e3", "abc", "", formatUnits(MAX_VOUCHER_ROYALTY + 1n, 6)]) {
      expect(() => parseMaxRoyalty(bad, 6), bad).toThrow(InvalidAmountError);
    }
    const other = await mkdtemp(join(tmpdir(), "soulmesh-deploy-"));
    const key = printed.devAccounts![8]!.privateKey;
    const nonce = await provider.getTransactionCount(new Wallet(key).address);
    const run = runCli(["deploy", "--rpc", printed.rpcUrl, "--max-royalty", "0.0000001", "--json"], { SOULMESH_HOME: other, SOULMESH_DEPLOYER_KEY: key });
    expect(await run.exited()).toBe(1);
    expect(JSON.parse(run.stdout())).toMatchObject({ error: { name: "InvalidAmountError" } });
    expect(await provider.getTransactionCount(new Wallet(key).address)).toBe(nonce);
    expect(existsSync(join(other, "deployments"))).toBe(false);
    await rm(other, { recursive: true, force: true });
  });

  it("stops cleanly on Ctrl-C and removes its deployment file", async () => {
    devnet.child.kill("SIGINT");
    expect(await devnet.exited()).toBe(0);
    expect(existsSync(devnetDeploymentPath(home))).toBe(false);
  });
});
