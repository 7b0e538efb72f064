/**
 * `soulmesh wallet|wallet fund|deposit|withdraw|balance|earnings` as child processes against a devnet started in this
 * process: keystores on disk, account resolution, and every amount checked on the chain to the unit.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import type { BrowserProvider } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevnet } from "../../cli/devnet/devnet.js";
import type { Devnet } from "../../cli/devnet/devnet.js";
import { saveKeystore } from "../../cli/accounts/keystore.js";
import { InvalidAmountError, formatDuration, parseAmountOrZero, parseTokenAmount } from "../../cli/commands/escrow.js";
import { connectContracts } from "../../sdk/chain/contracts.js";
import type { SoulmeshContracts } from "../../sdk/chain/contracts.js";
import type { DevAccount } from "../../sdk/chain/dev-accounts.js";
import { signVoucher } from "../../sdk/chain/voucher.js";
import type { Voucher } from "../../sdk/chain/voucher.js";
import { runCli } from "../helpers/cli.js";

const PASSWORD = "correct horse battery staple";

let root: string;
let devnet: Devnet;
let rpc: BrowserProvider;
let contracts: SoulmeshContracts;
let accounts: DevAccount[];

interface Run {
  code: number | null;
  json: Record<string, unknown> & { error?: { name: string; message: string } };
  stderr: string;
}

/** Runs the CLI with --json in `home` against the devnet, no password or account from the environment. */
async function cli(home: string, args: string[], env: Record<string, string> = {}, stdin?: string): Promise<Run> {
  const deployment = args.includes("--deployment") ? [] : ["--deployment", devnet.deploymentPath];
  const p = runCli([...args, "--json", "--home", home, ...deployment], {
    SOULMESH_PASSWORD: "",
    SOULMESH_ACCOUNT: "",
    SOULMESH_RPC_URL: "",
    ...env,
  });
  p.child.stdin.end(stdin ?? "");
  const code = await p.exited();
  const line = p.stdout().trim().split("\n").at(-1) ?? "";
  let json: Run["json"];
  try {
    json = JSON.parse(line) as Run["json"];
  } catch {
    throw new Error(`no JSON (exit ${code}); stdout: ${p.stdout()} stderr: ${p.stderr()}`);
  }
  return { code, json, stderr: p.stderr() };
}

const units = (m: unknown): bigint => BigInt((m as { units: string }).units);

async function newHome(name: string): Promise<string> {
  const home = join(root, name);
  await mkdir(home, { recursive: true });
  return home;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-wallet-cli-"));
  devnet = await startDevnet({ port: 0, home: join(root, "devnet") });
  rpc = devnet.chain.provider;
  contracts = connectContracts(devnet.deployment, rpc);
  accounts = devnet.deployment.devAccounts!;
});

afterAll(async () => {
  await devnet?.stop();
  await rm(root, { recursive: true, force: true });
});

describe("amounts", () => {
  it("parse exactly with the token's decimals, and junk is refused with a typed error", () => {
    expect(parseTokenAmount("10", 6)).toBe(10_000_000n);
    expect(parseTokenAmount("2.5", 6)).toBe(2_500_000n);
    expect(parseTokenAmount("0.000001", 6)).toBe(1n);
    expect(parseTokenAmount("1.500000", 6)).toBe(1_500_000n);
    for (const bad of ["0", "0.0", "-1", "1.0000001", "abc", "1e3", "", "1,5", "0x10", " "]) {
      expect(() => parseTokenAmount(bad, 6), bad).toThrow(InvalidAmountError);
    }
    // The faucet takes zero too (to send one asset only), and is otherwise the same parser.
    for (const zero of ["0", "0.0", "00", ".0"]) expect(parseAmountOrZero(zero, 18), zero).toBe(0n);
    expect(parseAmountOrZero("0.25", 18)).toBe(250_000_000_000_000_000n);
    for (const bad of ["-0", "-1", "1.0000001", "1e3", "", "0x0", "ten"]) {
      expect(() => parseAmountOrZero(bad, 6), bad).toThrow(InvalidAmountError);
    }
    expect(formatDuration(172_800)).toBe("2d");
    expect(formatDuration(3_661)).toBe("1h 1m 1s");
  });
});

describe("wallets", () => {
  it("create: encrypted keystore (0600 in a 0700 folder), becomes the default, shown without a password, never overwritten", async () => {
    const home = await newHome("create");
    const created = await cli(home, ["wallet", "create", "--name", "alice"], { SOULMESH_PASSWORD: PASSWORD });
    expect(created.code).toBe(0);
    expect(created.json).toMatchObject({ name: "alice", default: true, path: join(home, "wallets", "alice.json") });
    const address = created.json.address as string;
    const path = created.json.path as string;
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(join(home, "wallets"))).mode & 0o777).toBe(0o700);
    const text = await readFile(path, "utf8");
    expect(text).not.toContain(PASSWORD);
    expect((await Wallet.fromEncryptedJson(text, PASSWORD)).address).toBe(address);

    const [shown, again] = await Promise.all([
      cli(home, ["wallet", "show"]), // no password in the environment, no terminal: reading needs none
      cli(home, ["wallet", "create", "--name", "alice"], { SOULMESH_PASSWORD: "other" }),
    ]);
    expect(shown.code).toBe(0);
    expect(shown.json).toMatchObject({ address, source: "keystore", name: "alice", chainId: devnet.deployment.chainId });
    expect(shown.json.tokens).toEqual({ units: "0", formatted: "0" });
    expect(shown.json.native).toMatchObject({ units: "0" });
    expect(shown.json.pendingWithdrawal).toBeNull();
    expect(again.code).toBe(1);
    expect(again.json.error?.name).toBe("KeystoreExistsError");
    expect(await readFile(path, "utf8")).toBe(text);
  });

  it("import from a key file and from stdin; bad keys, wrong passwords and corrupt keystores get typed errors and change nothing", async () => {
    const home = await newHome("import");
    const keyFile = join(root, "key.txt");
    await writeFile(keyFile, `${accounts[5]!.privateKey}\n`);
    const piped = Wallet.createRandom();
    const pw = { SOULMESH_PASSWORD: PASSWORD };
    const [fromFile, fromStdin, badKey] = await Promise.all([
      cli(home, ["wallet", "import", "--name", "k", "--key-file", keyFile], pw),
      cli(home, ["wallet", "import", "--name", "piped"], pw, `${piped.privateKey}\n`),
      cli(home, ["wallet", "import", "--name", "bad", "--key-env", "SOME_KEY"], { ...pw, SOME_KEY: "0x1234" }),
    ]);
    expect(fromFile.json).toMatchObject({ name: "k", address: accounts[5]!.address, default: expect.any(Boolean) });
    expect(fromStdin.json).toMatchObject({ name: "piped", address: piped.address });
    expect(badKey.code).toBe(1);
    expect(badKey.json.error?.name).toBe("InvalidKeyError");

    const corruptPath = join(home, "wallets", "broken.json");
    await writeFile(corruptPath, '{"version":3,"address":"nope"');
    const depositBefore = await contracts.inferenceEscrow.depositOf(accounts[5]!.address);
    const [wrong, noPassword, corrupt, list] = await Promise.all([
      cli(home, ["deposit", "1", "--account", "k"], { SOULMESH_PASSWORD: "wrong" }),
      cli(home, ["deposit", "1", "--account", "k"]),
      cli(home, ["balance", "--account", "broken"]),
      cli(home, ["wallet", "list"]),
    ]);
    expect(wrong.code).toBe(1);
    expect(wrong.json.error?.name).toBe("WrongPasswordError");
    expect(noPassword.json.error?.name).toBe("PasswordRequiredError");
    expect(noPassword.json.error?.message).toContain("SOULMESH_PASSWORD");
    expect(corrupt.code).toBe(1);
    expect(corrupt.json.error?.name).toBe("KeystoreCorruptError");
    expect(corrupt.json.error?.message).toContain(corruptPath);
    expect(await readFile(corruptPath, "utf8")).toBe('{"version":3,"address":"nope"');
    expect(await readFile(join(home, "wallets", "bad.json"), "utf8").catch(() => "absent")).toBe("absent");
    const listed = list.json.wallets as { name: string; address: string | null; default: boolean }[];
    expect(listed.map((w) => [w.name, w.address])).toEqual([
      ["broken", null],
      ["k", accounts[5]!.address],
      ["piped", piped.address],
    ]);
    expect(await contracts.inferenceEscrow.depositOf(accounts[5]!.address)).toBe(depositBefore);
  });

  it("picks the account: --account name/dev:N/label, config default, the only wallet, the devnet user, else a clear error", async () => {
    const empty = await newHome("empty");
    const one = await newHome("one");
    const a = Wallet.createRandom();
    await saveKeystore(one, "solo", a, PASSWORD);
    const [devUser, dev3, label, outOfRange, only, noDevnet] = await Promise.all([
      cli(empty, ["balance"]),
      cli(empty, ["balance", "--account", "dev:3"]),
      cli(empty, ["balance", "--account", "creator"]),
      cli(empty, ["balance", "--account", "dev:99"]),
      cli(one, ["balance"]),
      cli(empty, ["balance", "--deployment", join(root, "nowhere.json")]),
    ]);
    expect(devUser.json).toMatchObject({ address: accounts[1]!.address, source: "dev", label: "user" });
    expect(devUser.stderr).toBe(""); // --json: no progress lines
    expect(dev3.json).toMatchObject({ address: accounts[3]!.address, label: "provider" });
    expect(label.json).toMatchObject({ address: accounts[2]!.address, index: 2 });
    expect(outOfRange.json.error?.name).toBe("DevAccountUnavailableError");
    expect(only.json).toMatchObject({ address: a.address, source: "keystore", name: "solo" });
    expect(noDevnet.code).toBe(1);
    expect(noDevnet.json.error?.name).toBe("NoAccountError");
    expect(noDevnet.json.error?.message).toContain("soulmesh wallet create");

    const b = Wallet.createRandom();
    await saveKeystore(one, "second", b, PASSWORD);
    const ambiguous = await cli(one, ["balance"]);
    expect(ambiguous.json.error?.name).toBe("NoAccountError");
    expect((await cli(one, ["wallet", "default", "second"])).json).toMatchObject({ defaultAccount: "second" });
    const [byConfig, byEnv, missingDeployment] = await Promise.all([
      cli(one, ["balance"]),
      cli(one, ["balance"], { SOULMESH_ACCOUNT: "solo" }),
      cli(one, ["balance", "--account", "dev:1", "--deployment", join(root, "nowhere.json")]),
    ]);
    expect(byConfig.json).toMatchObject({ address: b.address, name: "second" });
    expect(byEnv.json).toMatchObject({ address: a.address, name: "solo" });
    expect(missingDeployment.json.error?.name).toBe("DeploymentNotFoundError");
    expect(missingDeployment.json.error?.message).toContain("--deployment");
  });
});

describe("deposits and withdrawals", () => {
  it("deposit 2.5 lands exactly; too much or junk fails with a typed error and changes nothing", async () => {
    const home = await newHome("deposit");
    const user = accounts[1]!.address;
    const [before, tokensBefore] = await Promise.all([
      contracts.inferenceEscrow.depositOf(user),
      contracts.token.balanceOf(user),
    ]);
    const ok = await cli(home, ["deposit", "2.5", "--account", "dev:1"]);
    expect(ok.code).toBe(0);
    expect(units(ok.json.amount)).toBe(2_500_000n);
    expect(await contracts.inferenceEscrow.depositOf(user)).toBe(before + 2_500_000n);
    expect(units(ok.json.deposit)).toBe(before + 2_500_000n);
    expect(await contracts.token.balanceOf(user)).toBe(tokensBefore - 2_500_000n);

    const [tooMuch, junk, tooPrecise] = await Promise.all([
      cli(home, ["deposit", "20000", "--account", "dev:1"]),
      cli(home, ["deposit", "ten", "--account", "dev:1"]),
      cli(home, ["deposit", "0.0000001", "--account", "dev:1"]),
    ]);
    expect(tooMuch.code).toBe(1);
    expect(tooMuch.json.error?.name).toBe("InsufficientTokensError");
    expect(tooMuch.json.error?.message).toContain("20000 tUSD");
    expect(tooMuch.json.error?.message).toContain("9997.5 tUSD");
    expect(junk.json.error?.name).toBe("InvalidAmountError");
    expect(tooPrecise.json.error?.name).toBe("InvalidAmountError");
    expect(await contracts.inferenceEscrow.depositOf(user)).toBe(before + 2_500_000n);
    expect(await contracts.token.balanceOf(user)).toBe(tokensBefore - 2_500_000n);
  });

  it("withdraw request → complete too early (time left) → after the delay, complete moves exactly the amount", async () => {
    const home = await newHome("withdraw");
    const user = accounts[1]!.address;
    const [deposit0, tokens0] = await Promise.all([contracts.inferenceEscrow.depositOf(user), contracts.token.balanceOf(user)]);
    const [tooMuch, requested] = await Promise.all([
      cli(home, ["withdraw", "request", "100000", "--account", "dev:1"]),
      cli(home, ["withdraw", "request", "1", "--account", "dev:1"]),
    ]);
    expect(tooMuch.json.error?.name).toBe("InsufficientDepositError");
    expect(requested.code).toBe(0);
    expect(units(requested.json.requested)).toBe(1_000_000n);
    const delay = devnet.deployment.parameters.withdrawalDelay;
    expect(requested.json.inSeconds).toBe(delay);
    const [, availableAt] = await contracts.inferenceEscrow.pendingWithdrawalOf(user);
    expect(requested.json.availableAtUnix).toBe(Number(availableAt));
    expect(requested.json.availableAt).toBe(new Date(Number(availableAt) * 1000).toISOString());

    const early = await cli(home, ["withdraw", "complete", "--account", "dev:1"]);
    expect(early.code).toBe(1);
    expect(early.json.error?.name).toBe("WithdrawalNotReadyError");
    expect(early.json.error?.message).toContain(new Date(Number(availableAt) * 1000).toISOString());
    expect(early.json.error?.message).toMatch(/in (1d 23h|2d)/);
    expect(await contracts.inferenceEscrow.depositOf(user)).toBe(deposit0);

    await rpc.send("evm_increaseTime", [delay]);
    await rpc.send("evm_mine", []);
    const done = await cli(home, ["withdraw", "complete", "--account", "dev:1"]);
    expect(done.code).toBe(0);
    expect(units(done.json.withdrawn)).toBe(1_000_000n);
    expect(await contracts.inferenceEscrow.depositOf(user)).toBe(deposit0 - 1_000_000n);
    expect(await contracts.token.balanceOf(user)).toBe(tokens0 + 1_000_000n);
    expect(units(done.json.tokens)).toBe(tokens0 + 1_000_000n);
    const [pendingAmount] = await contracts.inferenceEscrow.pendingWithdrawalOf(user);
    expect(pendingAmount).toBe(0n);
  });
});

/** Registers the account as a provider with the minimum stake (once). */
async function registerProvider(as: SoulmeshContracts): Promise<void> {
  const me = (as.token.runner as Wallet).address;
  if (await as.providerRegistry.isActive(me)) return;
  const stake = await as.providerRegistry.minStake();
  await (await as.token.approve(await as.providerRegistry.getAddress(), stake)).wait();
  await (await as.providerRegistry.register("12D3KooWWalletCliProvider", ["/ip4/127.0.0.1/tcp/1"], [`0x${"ab".repeat(32)}`], 500_000n, 1_500_000n, stake)).wait();
}

/** Deposits `amount` and commits it to the lane with `provider`, as the client does at a provider's first use. */
async function commitLane(as: SoulmeshContracts, provider: string, amount: bigint): Promise<void> {
  await (await as.token.approve(await as.inferenceEscrow.getAddress(), amount)).wait();
  await (await as.inferenceEscrow.depositAndCommit(provider, amount)).wait();
}

describe("lanes", () => {
  it("balance shows the free deposit and every lane; withdraw request --all asks for both, complete pays both out, cancel keeps both", async () => {
    const home = await newHome("lanes");
    const [payer, provider] = [4, 5].map((i) => new Wallet(accounts[i]!.privateKey, rpc)) as [Wallet, Wallet];
    const asPayer = connectContracts(devnet.deployment, payer);
    await registerProvider(connectContracts(devnet.deployment, provider));
    await commitLane(asPayer, provider.address, 3_000_000n);
    expect((await cli(home, ["deposit", "2", "--account", "dev:4"])).code).toBe(0);
    const deposit0 = await contracts.inferenceEscrow.depositOf(payer.address);

    const balance = await cli(home, ["balance", "--account", "dev:4"]);
    expect(units(balance.json.deposit)).toBe(deposit0);
    expect(units(balance.json.committed)).toBe(3_000_000n);
    expect(balance.json.lanes).toEqual([{ provider: provider.address, amount: { units: "3000000", formatted: "3" }, release: null }]);

    // An amount comes from the free deposit only, and says what the lanes hold.
    const tooMuch = await cli(home, ["withdraw", "request", String(Number(deposit0) / 1e6 + 1), "--account", "dev:4"]);
    expect(tooMuch.json.error?.name).toBe("InsufficientDepositError");
    expect(tooMuch.json.error?.message).toMatch(/lanes with providers 3(\.0)? .*--all/);

    // Request both, then cancel both: nothing moves.
    const requested = await cli(home, ["withdraw", "request", "--all", "--account", "dev:4"]);
    expect(requested.code).toBe(0);
    expect(units(requested.json.requested)).toBe(deposit0);
    expect((requested.json.releases as unknown[]).length).toBe(1);
    const [, releaseAt] = await contracts.inferenceEscrow.laneOf(payer.address, provider.address);
    expect(releaseAt).toBeGreaterThan(0n);
    const shown = await cli(home, ["balance", "--account", "dev:4"]);
    expect((shown.json.lanes as { release: unknown }[])[0]!.release).toMatchObject({ availableAtUnix: Number(releaseAt) });
    const cancelled = await cli(home, ["withdraw", "cancel", "--account", "dev:4"]);
    expect(cancelled.code).toBe(0);
    expect(cancelled.json.txHashes).toHaveLength(2);
    expect(await contracts.inferenceEscrow.laneOf(payer.address, provider.address)).toEqual([3_000_000n, 0n]);
    expect((await contracts.inferenceEscrow.pendingWithdrawalOf(payer.address))[1]).toBe(0n);
    const nothing = await cli(home, ["withdraw", "cancel", "--account", "dev:4"]);
    expect(nothing.json.error?.name).toBe("NothingPendingError");

    // Request both again; too early; after one delay complete pays out the lane and the withdrawal together.
    expect((await cli(home, ["withdraw", "request", "--all", "--account", "dev:4"])).code).toBe(0);
    const early = await cli(home, ["withdraw", "complete", "--account", "dev:4"]);
    expect(early.json.error?.name).toBe("WithdrawalNotReadyError");
    const tokens0 = await contracts.token.balanceOf(payer.address);
    await rpc.send("evm_increaseTime", [devnet.deployment.parameters.withdrawalDelay]);
    await rpc.send("evm_mine", []);
    const done = await cli(home, ["withdraw", "complete", "--account", "dev:4"]);
    expect(done.code).toBe(0);
    expect(done.json.released).toEqual([{ provider: provider.address, amount: { units: "3000000", formatted: "3" }, txHash: expect.stringMatching(/^0x/) }]);
    expect(units(done.json.withdrawn)).toBe(deposit0 + 3_000_000n);
    expect(await contracts.token.balanceOf(payer.address)).toBe(tokens0 + deposit0 + 3_000_000n);
    // Everything is out after one delay: nothing waits in the free deposit for a second request.
    expect(await contracts.inferenceEscrow.depositOf(payer.address)).toBe(0n);
    expect(await contracts.inferenceEscrow.laneOf(payer.address, provider.address)).toEqual([0n, 0n]);
  });
});

describe("earnings", () => {
  it("reports settled vouchers per role, and --withdraw moves exactly the pending amount", async () => {
    const home = await newHome("earnings");
    const [payer, creator, provider] = [1, 2, 3].map((i) => new Wallet(accounts[i]!.privateKey, rpc));
    const asCreator = connectContracts(devnet.deployment, creator!);
    const personaId = (await asCreator.personaRegistry.totalPersonas()) + 1n;
    const sha = `0x${"ab".repeat(32)}`;
    await (await asCreator.personaRegistry.createPersona("bafyWalletCliPersona", sha, sha, 200_000n, 0n)).wait();
    const asPayer = connectContracts(devnet.deployment, payer!);
    const agentId = (await asPayer.agentRegistry.totalAgents()) + 1n;
    await (await asPayer.agentRegistry.mint(personaId, 0n)).wait();
    const now = (await rpc.getBlock("latest"))!.timestamp;
    const escrowRef = { chainId: devnet.deployment.chainId, address: devnet.deployment.contracts.inferenceEscrow };
    const asProvider = connectContracts(devnet.deployment, provider!);
    // Vouchers settle from the payer's lane with a registered provider: register dev:3, fund the lane.
    await registerProvider(asProvider);
    await commitLane(asPayer, provider!.address, 1_000_000n);
    const [feeBps] = await contracts.inferenceEscrow.protocolFee();
    const settleOne = async (session: bigint, inputTokens: bigint, outputTokens: bigint): Promise<void> => {
      const voucher: Voucher = {
        payer: payer!.address,
        provider: provider!.address,
        agentId,
        session,
        inputTokens,
        outputTokens,
        priceInputPerMillion: 500_000n,
        priceOutputPerMillion: 1_500_000n,
        royaltyPerMillion: 200_000n,
        feeBps,
        expiry: BigInt(now + 3600),
      };
      await (await asProvider.inferenceEscrow.settle(voucher, await signVoucher(payer!, voucher, escrowRef))).wait();
    };
    await settleOne(1n, 1_000n, 500n); // provider 500 + 750 = 1250, royalty 1500 * 0.2 = 300
    await settleOne(1n, 3_000n, 1_000n); // adds provider 1000 + 750 = 1750, royalty 2500 * 0.2 = 500
    const pending = await contracts.inferenceEscrow.earningsOf(provider!.address);

    const [asProv, asCreat] = await Promise.all([
      cli(home, ["earnings", "--account", "dev:3"]),
      cli(home, ["earnings", "--account", "creator"]),
    ]);
    expect(units(asProv.json.pending)).toBe(pending);
    const p = asProv.json.asProvider as { amount: unknown; settlements: number; payerCount: number; outputTokens: string };
    expect(units(p.amount)).toBe(3_000n);
    expect(p).toMatchObject({ settlements: 2, payerCount: 1, outputTokens: "1000" });
    const c = asCreat.json.asCreator as { amount: unknown; personas: { personaId: string; amount: unknown; settlements: number }[] };
    expect(units(c.amount)).toBe(800n);
    expect(c.personas).toHaveLength(1);
    expect(c.personas[0]).toMatchObject({ personaId: personaId.toString(), settlements: 2 });
    expect(units(asCreat.json.pending)).toBe(await contracts.inferenceEscrow.earningsOf(creator!.address));

    const tokensBefore = await contracts.token.balanceOf(provider!.address);
    const withdrawn = await cli(home, ["earnings", "--withdraw", "--account", "dev:3"]);
    expect(withdrawn.code).toBe(0);
    expect(units(withdrawn.json.withdrawn)).toBe(pending);
    expect(await contracts.token.balanceOf(provider!.address)).toBe(tokensBefore + pending);
    expect(await contracts.inferenceEscrow.earningsOf(provider!.address)).toBe(0n);

    const [nothing, after] = await Promise.all([
      cli(home, ["earnings", "--withdraw", "--account", "dev:3"]),
      cli(home, ["earnings", "--account", "dev:3"]),
    ]);
    expect(nothing.code).toBe(1);
    expect(nothing.json.error?.name).toBe("ContractRevertError");
    expect(nothing.json.error?.message).toContain("Escrow__NoEarnings");
    expect(units(after.json.pending)).toBe(0n);
    expect(units(after.json.withdrawnSoFar)).toBe(pending);
    expect(await contracts.token.balanceOf(provider!.address)).toBe(tokensBefore + pending);
  });
});

describe("faucet", () => {
  const deployer = (): string => accounts[0]!.address;

  it("wallet fund: a new wallet gets exactly the amounts, then deposits with its own funds; defaults are 100 tUSD and 1 ETH", async () => {
    const home = await newHome("fund");
    const alice = Wallet.createRandom();
    await saveKeystore(home, "alice", alice, PASSWORD);
    const supply0 = await contracts.token.totalSupply();

    const funded = await cli(home, ["wallet", "fund", "alice", "--tusd", "2.5", "--eth", "0.25"]);
    expect(funded.code).toBe(0);
    expect(funded.stderr).toBe("");
    expect(funded.json).toMatchObject({ address: alice.address, source: "keystore", name: "alice" });
    expect(units(funded.json.tusd)).toBe(2_500_000n);
    expect(units(funded.json.eth)).toBe(250_000_000_000_000_000n);
    expect(funded.json.txHashes).toHaveLength(2);
    expect(await contracts.token.balanceOf(alice.address)).toBe(2_500_000n);
    expect(await rpc.getBalance(alice.address)).toBe(250_000_000_000_000_000n);
    expect(await contracts.token.totalSupply()).toBe(supply0 + 2_500_000n);
    const balances = funded.json.balances as { tusd: unknown; eth: unknown };
    expect(units(balances.tusd)).toBe(2_500_000n);
    expect(units(balances.eth)).toBe(250_000_000_000_000_000n);

    // Its own money now pays: the approval and deposit gas come out of the faucet's ETH.
    const deposited = await cli(home, ["deposit", "1", "--account", "alice"], { SOULMESH_PASSWORD: PASSWORD });
    expect(deposited.code).toBe(0);
    expect(await contracts.inferenceEscrow.depositOf(alice.address)).toBe(1_000_000n);
    expect(await contracts.token.balanceOf(alice.address)).toBe(1_500_000n);
    const ethAfterDeposit = await rpc.getBalance(alice.address);
    expect(ethAfterDeposit).toBeLessThan(250_000_000_000_000_000n);
    expect(ethAfterDeposit).toBeGreaterThan(0n);

    // No ACCOUNT: the only wallet of the home; no options: the defaults.
    const again = await cli(home, ["wallet", "fund"]);
    expect(again.code).toBe(0);
    expect(again.json).toMatchObject({ address: alice.address, tusd: { units: "100000000", formatted: "100" } });
    expect(units(again.json.eth)).toBe(10n ** 18n);
    expect(await contracts.token.balanceOf(alice.address)).toBe(101_500_000n);
    expect(await rpc.getBalance(alice.address)).toBe(ethAfterDeposit + 10n ** 18n);

    // A bare address can be funded (no key needed), and one asset alone.
    const watched = Wallet.createRandom().address;
    const tokensOnly = await cli(home, ["wallet", "fund", watched, "--eth", "0", "--tusd", "0.000001"]);
    expect(tokensOnly.code).toBe(0);
    expect(tokensOnly.json.txHashes).toHaveLength(1);
    expect(await contracts.token.balanceOf(watched)).toBe(1n);
    expect(await rpc.getBalance(watched)).toBe(0n);
  });

  it("bad amounts, nothing to send, unknown accounts and non-devnet deployments get typed errors and send nothing", async () => {
    const home = await newHome("fund-bad");
    const target = Wallet.createRandom().address;
    const nonce0 = await rpc.getTransactionCount(deployer());
    const supply0 = await contracts.token.totalSupply();

    const foreignChain = join(root, "chain-1.json");
    await writeFile(foreignChain, JSON.stringify({ ...devnet.deployment, chainId: 1 }));
    const noDevAccounts = join(root, "no-dev-accounts.json");
    await writeFile(noDevAccounts, JSON.stringify({ ...devnet.deployment, devAccounts: undefined, pid: undefined }));
    // The right chain and token, but dev accounts that do not own it: nobody here may mint.
    const stranger = Wallet.createRandom();
    const notOwner = join(root, "not-owner.json");
    await writeFile(
      notOwner,
      JSON.stringify({ ...devnet.deployment, devAccounts: [{ address: stranger.address, privateKey: stranger.privateKey, label: "deployer" }] }),
    );

    const runs = await Promise.all([
      cli(home, ["wallet", "fund", target, "--tusd", "ten"]),
      cli(home, ["wallet", "fund", target, "--eth", "-1"]),
      cli(home, ["wallet", "fund", target, "--tusd", "0", "--eth", "0.0"]),
      cli(home, ["wallet", "fund", "nobody"]),
      cli(home, ["wallet", "fund", "dev:99"]),
      cli(home, ["wallet", "fund", target, "--eth", "100000000"]),
      cli(home, ["wallet", "fund", target, "--deployment", foreignChain]),
      cli(home, ["wallet", "fund", target, "--deployment", noDevAccounts]),
      cli(home, ["wallet", "fund", target, "--deployment", notOwner]),
    ]);
    expect(runs.map((r) => [r.code, r.json.error?.name])).toEqual([
      [1, "InvalidAmountError"],
      [1, "InvalidAmountError"],
      [1, "NothingToFundError"],
      [1, "AccountNotFoundError"],
      [1, "DevAccountUnavailableError"],
      [1, "FaucetEmptyError"],
      [1, "FaucetDevnetOnlyError"],
      [1, "FaucetDevnetOnlyError"],
      [1, "FaucetDevnetOnlyError"],
    ]);
    expect(runs[3]!.json.error?.message).toContain("ACCOUNT argument");
    const [chain1, noDev, owner] = runs.slice(6).map((r) => r.json.error!.message);
    expect(chain1).toContain("chain 1");
    expect(chain1).toContain("only funds accounts on the local devnet");
    expect(noDev).toContain("no dev accounts");
    expect(owner).toContain(`owned by ${deployer()}`);

    expect(await rpc.getTransactionCount(deployer())).toBe(nonce0);
    expect(await contracts.token.totalSupply()).toBe(supply0);
    expect(await contracts.token.balanceOf(target)).toBe(0n);
    expect(await rpc.getBalance(target)).toBe(0n);
  });

  it("help shows the options and examples", async () => {
    const p = runCli(["wallet", "fund", "--help"]);
    expect(await p.exited()).toBe(0);
    expect(p.stdout()).toContain("--tusd <amount>");
    expect(p.stdout()).toContain("soulmesh wallet fund alice --tusd 250 --eth 0.5");
  });
});
