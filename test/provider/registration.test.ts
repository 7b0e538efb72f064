/**
 * The provider's on-chain registration on a real (in-process EDR) chain: registered once with its stake,
 * unchanged on a restart with the same record, updated when a price or an address changes, topped up when
 * its stake is below the one asked, and a clear typed error when the wallet lacks the tokens to stake.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import {
  InsufficientStakeTokensError,
  InvalidProviderRecordError,
  StakeBelowMinimumError,
} from "../../node/provider/errors.js";
import { ensureProviderRegistered, readProviderRecord } from "../../node/provider/registration.js";
import { SerialSigner } from "../../node/provider/serial-signer.js";
import { createTestChain, type TestChain } from "../helpers/chain.js";
import { deployFixture, type Fixture } from "../helpers/soulmesh.js";

const MODEL = `0x${"ab".repeat(32)}`;
const OTHER_MODEL = `0x${"cd".repeat(32)}`;
const PEER = "12D3KooWProviderUnderTest";
const ADDRS = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWProviderUnderTest", "/ip4/127.0.0.1/tcp/4002/ws/p2p/12D3KooWProviderUnderTest"];

let chain: TestChain;
let f: Fixture;
let minStake: bigint;

beforeAll(async () => {
  chain = await createTestChain();
  f = await deployFixture(chain);
  minStake = BigInt(f.deployment.parameters.minStake);
});

afterAll(async () => {
  await chain?.close();
});

describe("ensureProviderRegistered", () => {
  it("registers with the minimum stake, then leaves an equal record alone", async () => {
    const wallet = chain.wallets[3]!;
    await f.fund(wallet.address, minStake * 2n);
    const contracts = f.as(wallet);
    const before = await f.contracts.token.balanceOf(wallet.address);
    const progress: string[] = [];

    const first = await ensureProviderRegistered({
      contracts,
      peerId: PEER,
      multiaddrs: ADDRS,
      modelHashes: [MODEL.toUpperCase().replace("0X", "0x")],
      prices: { input: 500_000n, output: 1_500_000n },
      onProgress: (m) => progress.push(m),
    });
    expect(first.action).toBe("registered");
    expect(first.txHashes).toHaveLength(2); // approve + register
    expect(progress).toHaveLength(2);
    expect(await f.contracts.token.balanceOf(wallet.address)).toBe(before - minStake);
    const record = await readProviderRecord(f.contracts, wallet.address);
    expect(record).toMatchObject({
      address: wallet.address,
      peerId: PEER,
      multiaddrs: ADDRS,
      modelHashes: [MODEL],
      prices: { input: 500_000n, output: 1_500_000n },
      stake: minStake,
      active: true,
    });
    expect(first.record).toEqual(record);

    // The same record, addresses in another order: nothing to send.
    const blockBefore = await chain.provider.getBlockNumber();
    const again = await ensureProviderRegistered({
      contracts,
      peerId: PEER,
      multiaddrs: [...ADDRS].reverse(),
      modelHashes: [MODEL],
      prices: { input: 500_000n, output: 1_500_000n },
    });
    expect(again).toMatchObject({ action: "unchanged", txHashes: [] });
    expect(await chain.provider.getBlockNumber()).toBe(blockBefore);
  });

  it("updates the record when a price, an address or a model changes", async () => {
    const contracts = f.as(chain.wallets[3]!);
    const priced = await ensureProviderRegistered({
      contracts,
      peerId: PEER,
      multiaddrs: ADDRS,
      modelHashes: [MODEL],
      prices: { input: 600_000n, output: 1_500_000n },
    });
    expect(priced.action).toBe("updated");
    expect(priced.txHashes).toHaveLength(1);
    expect(priced.record.prices).toEqual({ input: 600_000n, output: 1_500_000n });

    const moved = await ensureProviderRegistered({
      contracts,
      peerId: PEER,
      multiaddrs: [ADDRS[0]!],
      modelHashes: [MODEL, OTHER_MODEL],
      prices: { input: 600_000n, output: 1_500_000n },
    });
    expect(moved.action).toBe("updated");
    const record = await readProviderRecord(f.contracts, chain.wallets[3]!.address);
    expect(record?.multiaddrs).toEqual([ADDRS[0]]);
    expect(record?.modelHashes).toEqual([MODEL, OTHER_MODEL]);
    expect(record?.stake).toBe(minStake);
  });

  it("tops the stake up to the one asked, through a serializing signer", async () => {
    const wallet = chain.wallets[3]!;
    const result = await ensureProviderRegistered({
      contracts: f.as(new SerialSigner(wallet)),
      peerId: PEER,
      multiaddrs: [ADDRS[0]!],
      modelHashes: [MODEL, OTHER_MODEL],
      prices: { input: 600_000n, output: 1_500_000n },
      stake: minStake + 5n,
    });
    expect(result.action).toBe("updated");
    expect(result.record.stake).toBe(minStake + 5n);
  });

  it("refuses a wallet without the tokens to stake, saying how to get them on the devnet", async () => {
    const poor = chain.wallets[6]!;
    await f.fund(poor.address, minStake - 1n);
    const err = await ensureProviderRegistered({
      contracts: f.as(poor),
      peerId: PEER,
      multiaddrs: ADDRS,
      modelHashes: [MODEL],
      prices: { input: 1n, output: 1n },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InsufficientStakeTokensError);
    expect((err as InsufficientStakeTokensError).needed).toBe(minStake);
    expect((err as InsufficientStakeTokensError).balance).toBe(minStake - 1n);
    expect((err as Error).message).toContain("--dev-account");
    expect(await readProviderRecord(f.contracts, poor.address)).toBeUndefined();
  });

  it("refuses a stake below the minimum and a record the registry would reject, before any transaction", async () => {
    const wallet = chain.wallets[7]!;
    await f.fund(wallet.address, minStake);
    const base = { contracts: f.as(wallet), peerId: PEER, multiaddrs: ADDRS, modelHashes: [MODEL], prices: { input: 1n, output: 1n } };
    const low = ensureProviderRegistered({ ...base, stake: minStake - 1n });
    await expect(low).rejects.toBeInstanceOf(StakeBelowMinimumError);
    // Worded as --stake takes amounts: decimal tokens.
    await expect(low).rejects.toThrow(`Pass --stake ${formatUnitsFixed(minStake, 6)} or more`);
    await expect(ensureProviderRegistered({ ...base, multiaddrs: [] })).rejects.toBeInstanceOf(InvalidProviderRecordError);
    await expect(ensureProviderRegistered({ ...base, modelHashes: [`0x${"00".repeat(32)}`] })).rejects.toBeInstanceOf(
      InvalidProviderRecordError,
    );
    expect(await readProviderRecord(f.contracts, wallet.address)).toBeUndefined();
  });

  it("decodes other reverts into typed contract errors", async () => {
    // The register's transferFrom reverts inside the token.
    const wallet = chain.wallets[8]!;
    await f.fund(wallet.address, minStake);
    const c = f.as(wallet);
    await (await c.token.approve(f.deployment.contracts.providerRegistry, minStake)).wait();
    const registry = c.providerRegistry;
    const err = await ensureProviderRegistered({
      contracts: {
        ...c,
        // A balance check that lies, as a token with transfer fees or a race would: the revert is decoded.
        token: new Proxy(c.token, {
          get: (target, key, receiver) =>
            key === "balanceOf" ? async () => minStake * 10n : Reflect.get(target, key, receiver),
        }),
        providerRegistry: registry,
      },
      peerId: PEER,
      multiaddrs: ADDRS,
      modelHashes: [MODEL],
      prices: { input: 1n, output: 1n },
      stake: minStake * 2n,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContractRevertError);
    expect((err as ContractRevertError).reason).toBe("ERC20InsufficientBalance");
  });
});
