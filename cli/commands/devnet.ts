import { resolve } from "node:path";
import type { Command } from "commander";
import { connectContracts } from "../../sdk/chain/contracts.js";
import { soulmeshHome } from "../../sdk/chain/deployment.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { startDevnet } from "../devnet/devnet.js";
import type { Devnet, DevnetEvent } from "../devnet/devnet.js";
import { stopSignals } from "../context.js";
import { apiFilePath, startLocalIpfsService } from "../ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../ipfs/local-ipfs.js";
import { createOutput } from "../output.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import type { Output } from "../output.js";
import { parseMaxRoyalty } from "./deploy.js";
import { globalOptions, parsePort } from "./options.js";
import { isoTime } from "./escrow.js";
import { parseAddressOption, whenFromNow } from "./persona.js";

/** The highest protocol fee the escrow accepts (InferenceEscrow.MAX_FEE_BPS): 10%. */
export const MAX_PROTOCOL_FEE_BPS = 1_000;

/** A --protocol-fee that is not a whole number of basis points within the escrow's range. Nothing was started. */
export class InvalidProtocolFeeError extends SoulmeshError {
  override readonly name = "InvalidProtocolFeeError";
  constructor(
    readonly input: string,
    reason: string,
  ) {
    super(
      `--protocol-fee ${JSON.stringify(input)} is not usable: ${reason}. Give a whole number of basis points from 0 to ` +
        `${MAX_PROTOCOL_FEE_BPS} (100 = 1%), e.g. --protocol-fee 250 for 2.5%.`,
    );
  }
}

/**
 * Parses a protocol fee in basis points.
 *
 * @example
 * parseProtocolFee("250") // 250
 * @throws InvalidProtocolFeeError for anything but a whole number from 0 to MAX_PROTOCOL_FEE_BPS.
 */
export function parseProtocolFee(input: string): number {
  const text = input.trim();
  if (!/^\d+$/.test(text)) throw new InvalidProtocolFeeError(input, "it is not a whole number");
  const bps = Number(text);
  if (bps > MAX_PROTOCOL_FEE_BPS) throw new InvalidProtocolFeeError(input, `it is above the escrow's maximum, ${MAX_PROTOCOL_FEE_BPS}`);
  return bps;
}

/** The escrow's protocol fee, as it reports it: the fee in force and the change pending, if any. */
export interface ProtocolFeeState {
  currentBps: number;
  /** The fee that replaces it; equal to currentBps when nothing is pending. */
  nextBps: number;
  /** ISO time (chain time) when nextBps takes effect; null when nothing is pending. */
  effectiveAt: string | null;
  effectiveAtUnix: number | null;
  /** "in 2 days"; null when nothing is pending. */
  effectiveIn: string | null;
  /** Seconds of chain time until nextBps takes effect; null when nothing is pending. */
  inSeconds: number | null;
  treasury: string;
}

/** A fee in basis points for people: "2.5% (250 bps)". */
function percent(bps: number): string {
  return `${bps / 100}% (${bps} bps)`;
}

function feeText(fee: ProtocolFeeState): string {
  const now = `Protocol fee: ${percent(fee.currentBps)}`;
  const pending =
    fee.effectiveAt === null ? "" : `, ${percent(fee.nextBps)} from ${fee.effectiveAt} (chain time, ${fee.effectiveIn}: the escrow's fee delay)`;
  return `${now}${pending}; treasury ${fee.treasury}`;
}

function describe(event: DevnetEvent): string {
  switch (event.type) {
    case "chain:started":
      return `chain ${event.chainId} started (Hardhat EDR, in process)`;
    case "state:cleared":
      return `removed the local state of ${event.agents.length} agent(s) of an earlier devnet (its chain is gone): ${event.agents.join(", ")}`;
    case "rpc:listening":
      return `JSON-RPC listening on ${event.url}`;
    case "deploy:progress": {
      const p = event.progress;
      return `[${p.step}/${p.steps}] ${p.contract} at ${p.address}`;
    }
    case "accounts:funded":
      return `funded ${event.count} dev accounts with ${formatUnitsFixed(event.amount, 6)} tUSD each`;
    case "deployment:written":
      return `deployment written to ${event.path}`;
  }
}

/**
 * Runs the devnet and the home's IPFS service until SIGINT or SIGTERM, then stops both cleanly (a second
 * signal exits at once).
 */
async function runDevnet(
  out: Output,
  opts: { port: number; home: string; ipfsPort: number; protocolFeeBps?: number; treasury?: string; maxRoyaltyPerMillion?: bigint },
): Promise<void> {
  const stops = stopSignals();
  let ipfs: LocalIpfsService | undefined;
  try {
    out.progress("starting the Soulmesh devnet…");
    const devnet = await startDevnet({
      port: opts.port,
      home: opts.home,
      signal: stops.signal,
      onEvent: (e) => out.progress(describe(e)),
      parameters: {
        ...(opts.protocolFeeBps !== undefined && { protocolFeeBps: opts.protocolFeeBps }),
        ...(opts.treasury !== undefined && { treasury: opts.treasury }),
        ...(opts.maxRoyaltyPerMillion !== undefined && { maxRoyaltyPerMillion: opts.maxRoyaltyPerMillion }),
      },
    });
    let fee: ProtocolFeeState;
    try {
      fee = await readProtocolFee(devnet);
      // Personas, adapters and agents' memories live on IPFS: the other commands reach this node's API.
      ipfs = await startLocalIpfsService({ home: opts.home, port: opts.ipfsPort, signal: stops.signal, onProgress: (m) => out.progress(m) });
    } catch (err) {
      await devnet.stop();
      throw err;
    }
    const d = devnet.deployment;
    const accounts = (d.devAccounts ?? []).map((a) => `  ${a.label.padEnd(11)} ${a.address}  key ${a.privateKey}`);
    out.result(
      { ...d, protocolFee: fee, ipfs: { api: ipfs.api.url, peerId: ipfs.store.peerId.toString(), apiFile: apiFilePath(opts.home) } },
      [
        "",
        `Soulmesh devnet running: chain ${d.chainId} at ${d.rpcUrl}`,
        "",
        "Contracts:",
        ...Object.entries(d.contracts).map(([name, address]) => `  ${name.padEnd(17)} ${address}`),
        "",
        feeText(fee),
        "",
        "Dev accounts (public test keys: never use them on a real chain):",
        ...accounts,
        "",
        `IPFS: RPC API at ${ipfs.api.url} (peer ${ipfs.store.peerId.toString()})`,
        `Deployment: ${devnet.deploymentPath} (other soulmesh commands read it, and find IPFS through ${apiFilePath(opts.home)})`,
        "Press Ctrl-C to stop.",
      ].join("\n"),
    );

    if (!stops.signal.aborted) await new Promise((r) => stops.signal.addEventListener("abort", r, { once: true }));
    out.progress("stopping…");
    await ipfs.stop();
    await devnet.stop();
    out.progress("devnet stopped");
  } finally {
    stops.release();
  }
}

/** The fee as the escrow reports it right after deployment (a fee set at deployment is scheduled, not in force). */
async function readProtocolFee(devnet: Devnet): Promise<ProtocolFeeState> {
  const { inferenceEscrow } = connectContracts(devnet.deployment, devnet.chain.provider);
  const [[current, next, effectiveAt], treasury, block] = await Promise.all([
    inferenceEscrow.protocolFee(),
    inferenceEscrow.treasury(),
    devnet.chain.provider.getBlock("latest"),
  ]);
  const at = effectiveAt === 0n ? null : Number(effectiveAt);
  const now = block?.timestamp ?? Math.floor(Date.now() / 1000);
  return {
    currentBps: Number(current),
    nextBps: Number(next),
    effectiveAt: at === null ? null : isoTime(at),
    effectiveAtUnix: at,
    effectiveIn: at === null ? null : whenFromNow(at, now),
    inSeconds: at === null ? null : at - now,
    treasury,
  };
}

/** Registers `soulmesh devnet`. */
export function registerDevnet(program: Command): void {
  program
    .command("devnet")
    .description("Start a local chain with every Soulmesh contract deployed and the dev accounts funded, and the local IPFS node")
    .option("--port <port>", "JSON-RPC port on 127.0.0.1 (0 picks a free one)", parsePort, 8545)
    .option("--ipfs-port <port>", "the IPFS RPC API's port on 127.0.0.1 (default 0: a free one, recorded in <home>/ipfs/api.json)", parsePort, 0)
    .option(
      "--protocol-fee <bps>",
      `the escrow's protocol fee in basis points of what providers and creators are paid (0 to ${MAX_PROTOCOL_FEE_BPS}; default 0)`,
    )
    .option("--treasury <address>", "the address that receives protocol fees (default the deployer, dev account 0)")
    .option(
      "--max-royalty <amount>",
      "the highest royalty per million tokens a persona may ask, in tUSD (default 1000; 0 forbids royalties)",
    )
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh devnet                      # chain at http://127.0.0.1:8545, deployment in ~/.soulmesh/devnet.json,
                                         # IPFS API recorded in ~/.soulmesh/ipfs/api.json
  $ soulmesh devnet --port 0 --json      # a free port; prints the deployment as one JSON object
  $ SOULMESH_HOME=/tmp/sm soulmesh devnet # keep this devnet's files apart
  $ soulmesh devnet --protocol-fee 250 --treasury 0x90F79bf6EB2c4f870365E785982E1f101E93b906
                                         # a 2.5% fee to that address; as on any chain, it is scheduled at
                                         # deployment and takes effect after the fee delay (2 days), which
                                         # the output gives in chain time
  $ soulmesh devnet --max-royalty 50     # personas may ask at most 50 tUSD per million tokens`,
    )
    .action(async (opts: { port: number; ipfsPort: number; protocolFee?: string; treasury?: string; maxRoyalty?: string }, cmd: Command) => {
      const g = globalOptions(cmd);
      const home = resolve(g.home ?? soulmeshHome());
      // Checked before anything starts: a bad value must not leave a half-started devnet behind.
      const protocolFeeBps = opts.protocolFee === undefined ? undefined : parseProtocolFee(opts.protocolFee);
      const treasury = opts.treasury === undefined ? undefined : parseAddressOption("--treasury", opts.treasury);
      // The devnet deploys its own tUSD, of 6 decimals.
      const maxRoyaltyPerMillion = opts.maxRoyalty === undefined ? undefined : parseMaxRoyalty(opts.maxRoyalty, 6);
      await runDevnet(createOutput({ json: g.json }), {
        port: opts.port,
        home,
        ipfsPort: opts.ipfsPort,
        ...(protocolFeeBps !== undefined && { protocolFeeBps }),
        ...(treasury !== undefined && { treasury }),
        ...(maxRoyaltyPerMillion !== undefined && { maxRoyaltyPerMillion }),
      });
    });
}
