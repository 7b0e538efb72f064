/**
 * `soulmesh up` (`npm start`): the whole local network in one process, with the creator dashboard, then a chat with
 * the demo agent.
 * Ctrl-C or SIGTERM stops everything. The chain lives in memory, so what the provider is owed is settled while
 * it stops only for the record: the next `up` starts a fresh chain anyway.
 */
import { resolve } from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError, Option } from "commander";
import { soulmeshHome } from "../../sdk/chain/deployment.js";
import { commandContext, stopSignals } from "../context.js";
import { apiFilePath } from "../ipfs/local-ipfs.js";
import { createOutput } from "../output.js";
import { formatUnitsFixed } from "../../sdk/chain/units.js";
import type { Output } from "../output.js";
import { UP_DASHBOARD_PORT } from "../up/dashboard.js";
import { DEFAULT_MODEL_URI } from "../up/model.js";
import { startLocalNetwork, UP_ACCOUNTS, UP_DEFAULTS } from "../up/network.js";
import type { LocalNetwork, LocalNetworkEvent } from "../up/network.js";
import { parseTokenAmount } from "./escrow.js";
import { globalOptions, parsePort } from "./options.js";

/** The devnet token's decimals (tUSD), to parse --deposit before the chain exists. */
const DEVNET_DECIMALS = 6;

interface UpOptions {
  model?: string;
  offline: boolean;
  port: number;
  ipfsPort: number;
  metricsPort: number;
  dashboardPort: number;
  /** false with --no-dashboard. */
  dashboard: boolean;
  deposit: bigint;
  chat: boolean;
  maxTokens?: number;
}

function parseDeposit(value: string): bigint {
  try {
    const amount = parseTokenAmount(value, DEVNET_DECIMALS);
    if (amount <= 0n) throw new InvalidArgumentError("expected a positive amount of tUSD, e.g. 50.");
    return amount;
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`${(err as Error).message}`);
  }
}

function parsePositiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError("expected a positive whole number.");
  return Number(value);
}

/**
 * Progress lines for the model's phases: percentages at most every 10% (the download's bar, on a TTY, is
 * node-llama-cpp's own, so its percentage lines are left out there).
 */
function progressPrinter(out: Output, tty: boolean): (event: LocalNetworkEvent) => void {
  const shown = new Map<string, number>();
  return (event) => {
    switch (event.type) {
      case "step":
        out.progress(event.step === "ready" ? `✓ ${event.message}` : `▸ ${event.message}`);
        return;
      case "detail":
        out.progress(`  ${event.message}`);
        return;
      case "warning":
        out.progress(`  warning: ${event.message}`);
        return;
      case "model:fallback":
        // Said even with --json: a user must know the replies will be noise.
        process.stderr.write(`\n${event.message}\n\n`);
        return;
      case "model:progress": {
        const { phase, done, total } = event.progress;
        if (!(total > 0) || (tty && phase === "download")) return;
        const tenth = Math.floor((done / total) * 10);
        if ((shown.get(phase) ?? -1) >= tenth) return;
        shown.set(phase, tenth);
        const verb = phase === "download" ? "downloading" : phase === "hash" ? "hashing" : "loading";
        const size = phase === "load" ? "" : ` of ${(total / 2 ** 20).toFixed(1)} MiB`;
        out.progress(`  ${verb} the model: ${tenth * 10}%${size}`);
        return;
      }
    }
  };
}

/** The summary of a running network, as JSON (amounts as strings) and as text. */
function summary(net: LocalNetwork): { value: Record<string, unknown>; text: string } {
  const d = net.deployment;
  const money = (units: bigint): string => `${formatUnitsFixed(units, d.token.decimals)} ${d.token.symbol}`;
  const p = net.provider;
  const home = net.home;
  const value = {
    pid: process.pid,
    home,
    chainId: d.chainId,
    rpcUrl: d.rpcUrl,
    deploymentPath: net.devnet.deploymentPath,
    contracts: d.contracts,
    ipfs: { api: net.ipfs.api.url, peerId: net.ipfs.store.peerId.toString(), apiFile: apiFilePath(home) },
    model: {
      source: net.model.source,
      path: net.model.path,
      sha256: net.model.sha256,
      tiny: net.model.tiny,
      fallbackReason: net.model.fallback?.reason ?? null,
    },
    provider: {
      address: p.address,
      peerId: p.peerId,
      multiaddrs: p.multiaddrs,
      statusUrl: p.statusUrl,
      metricsUrl: p.metricsUrl,
      dataDir: net.providerDataDir,
      prices: UP_DEFAULTS.prices,
    },
    persona: { id: net.personaId, name: net.personaName, creator: net.creator.address },
    agent: { id: net.agentId, owner: net.user.address },
    deposit: { units: net.deposit, formatted: money(net.deposit) },
    dashboard: net.dashboard?.url ?? null,
  };
  const envPrefix = home === resolve(soulmeshHome({})) ? "" : `SOULMESH_HOME=${home} `;
  const text = [
    "",
    "Soulmesh is up: the whole local network runs in this process.",
    `  chain      ${d.chainId} at ${d.rpcUrl} (deployment ${net.devnet.deploymentPath})`,
    `  contracts  ${Object.entries(d.contracts).map(([k, v]) => `${k} ${v}`).join(", ")}`,
    `  IPFS       RPC API ${net.ipfs.api.url} (peer ${value.ipfs.peerId})`,
    `  model      ${net.model.tiny ? "generated tiny model (its replies are noise)" : net.model.source}`,
    `             ${net.model.path}, sha256 ${net.model.sha256}`,
    `  provider   ${p.address} (dev:${UP_ACCOUNTS.provider}), peer ${p.peerId}`,
    `             ${money(UP_DEFAULTS.prices.input)} / ${money(UP_DEFAULTS.prices.output)} per million input / output tokens; status ${p.statusUrl}`,
    `  persona    #${net.personaId} ${net.personaName}, by the creator ${net.creator.address} (dev:${UP_ACCOUNTS.creator})`,
    `  agent      #${net.agentId}, owned by the user ${net.user.address} (dev:${UP_ACCOUNTS.user})`,
    `  deposit    ${money(net.deposit)} in escrow for the user (committed to the provider at the first chat)`,
    net.dashboard !== undefined
      ? `  dashboard  ${net.dashboard.url} (the creator dashboard: connect as "creator")`
      : `  dashboard  not served: ${net.dashboardNotServed ?? "unknown"}`,
    "",
    "From another terminal:",
    ...[
      [`soulmesh chat ${net.agentId}`, "chat as the devnet's user"],
      ["soulmesh balance", "the user's deposit"],
      [`soulmesh provider status --data-dir ${net.providerDataDir}`, "the provider"],
      ["soulmesh earnings --account creator", "the persona's royalties"],
      // Served by this process already, unless it could not be.
      ...(net.dashboard === undefined ? [["soulmesh dashboard --port 0", "the creator dashboard in a browser"]] : []),
    ].map(([command, what]) => `  ${envPrefix}${command!.padEnd(36)} # ${what}`),
  ].join("\n");
  return { value, text };
}

async function runUp(cmd: Command, opts: UpOptions): Promise<void> {
  const g = globalOptions(cmd);
  const out = createOutput({ json: g.json });
  const home = resolve(g.home ?? soulmeshHome());
  const stops = stopSignals();

  let net: LocalNetwork | undefined;
  try {
    const tty = process.stderr.isTTY === true && !g.json;
    out.progress(`Starting the Soulmesh local network in ${home}…`);
    net = await startLocalNetwork({
      home,
      ...(opts.model !== undefined && { model: opts.model }),
      offline: opts.offline,
      port: opts.port,
      ipfsPort: opts.ipfsPort,
      metricsPort: opts.metricsPort,
      dashboardPort: opts.dashboard ? opts.dashboardPort : false,
      deposit: opts.deposit,
      showProgressBar: tty,
      onEvent: progressPrinter(out, tty),
      signal: stops.signal,
    });
    const { value, text } = summary(net);
    out.result(value, text);

    if (opts.chat && !stops.signal.aborted) {
      // The chat handles Ctrl-C itself (it cancels a turn, or ends the chat at an empty prompt); SIGTERM still
      // stops everything, through `stops`.
      stops.releaseSigint();
      await chatUntilDone(cmd, net, opts, stops.signal);
    } else {
      out.progress("Press Ctrl-C to stop.");
      if (!stops.signal.aborted) await new Promise((r) => stops.signal.addEventListener("abort", r, { once: true }));
    }
  } finally {
    // No SIGINT handler while stopping: a Ctrl-C then ends the process at once, a SIGTERM waits for the stop.
    stops.releaseSigint();
    if (net !== undefined) {
      out.progress("stopping the local network…");
      await net.stop();
      out.progress("stopped");
      // A download node-llama-cpp still retries, or a socket a peer keeps open, must not hold the exit.
      setTimeout(() => process.exit(), 3_000).unref();
    }
    stops.release();
  }
}

/** Runs the interactive chat with the network's agent, as its owner, until it ends or `signal` aborts. */
async function chatUntilDone(cmd: Command, net: LocalNetwork, opts: UpOptions, signal: AbortSignal): Promise<void> {
  // The chat acts as this network's user, on its deployment and IPFS, whatever the global options said.
  const root = rootOf(cmd);
  root.setOptionValueWithSource("deployment", net.devnet.deploymentPath, "cli");
  root.setOptionValueWithSource("account", `dev:${UP_ACCOUNTS.user}`, "cli");
  root.setOptionValueWithSource("ipfsApi", net.ipfs.api.url, "cli");
  root.setOptionValueWithSource("rpc", undefined, "cli");
  const ctx = commandContext(cmd, { handleSignals: false });
  try {
    const { runInteractiveChat } = await import("./chat.js");
    process.stderr.write(`\nOpening a chat with ${net.personaName} (agent #${net.agentId}); ending it also stops the local network.\n`);
    const chat = runInteractiveChat(ctx, net.agentId, { ...(opts.maxTokens !== undefined && { maxTokens: opts.maxTokens }) });
    // SIGTERM while chatting: the turns are journaled as they end, and this chain is gone on stop anyway.
    await Promise.race([chat, new Promise((r) => signal.addEventListener("abort", r, { once: true }))]);
  } finally {
    await ctx.close();
  }
}

function rootOf(cmd: Command): Command {
  let c = cmd;
  while (c.parent !== null) c = c.parent;
  return c;
}

/** Registers `soulmesh up`. */
export function registerUp(program: Command): void {
  program
    .command("up")
    .description(
      "Start the whole local network in this process (chain, contracts, IPFS, the creator dashboard, a provider with a " +
        "model, the demo persona, an agent with a deposit) and chat with the agent",
    )
    .option("--model <path|hf:…>", `the GGUF model to serve (default ${DEFAULT_MODEL_URI}, downloaded once)`)
    .option("--offline", "never download: use the model if already downloaded, else a generated tiny model", false)
    .option("--port <port>", "chain JSON-RPC port on 127.0.0.1 (0 picks a free one)", parsePort, 8545)
    .option("--ipfs-port <port>", "IPFS RPC API port on 127.0.0.1 (default 0: a free one, in <home>/ipfs/api.json)", parsePort, 0)
    .option("--metrics-port <port>", "the provider's metrics and status port (default 0: a free one)", parsePort, 0)
    .option("--dashboard-port <port>", "the creator dashboard's port on 127.0.0.1 (0 picks a free one)", parsePort, UP_DASHBOARD_PORT)
    .option("--no-dashboard", "do not serve the creator dashboard")
    .addOption(
      new Option("--deposit <amount>", "tUSD the user deposits in escrow to pay for chats")
        .argParser(parseDeposit)
        .default(UP_DEFAULTS.deposit, formatUnitsFixed(UP_DEFAULTS.deposit, DEVNET_DECIMALS)),
    )
    .option("--max-tokens <n>", "reply length per chat turn", parsePositiveInt)
    .option("--no-chat", "keep the network running without a chat, until Ctrl-C (for scripts; with --json prints the summary)")
    .addHelpText(
      "after",
      `
The chain lives in memory: each \`up\` starts a fresh one (persona #1, agent #1) and clears the local state
bound to the previous chain (<home>/agents/<chainId>-*, and the vouchers of <home>/up/provider).
When the model cannot be downloaded, \`up\` says why and serves a generated tiny model instead, whose
replies are noise.
The creator dashboard is served at http://127.0.0.1:5173 (connect as "creator"); if its page is not built
(\`npm run build:dashboard\`) or the port is taken, \`up\` says so and runs without it.

Examples:
  $ npm start                                   # the same as: soulmesh up
  $ soulmesh up --model ./models/my-model.gguf  # serve a GGUF file you have
  $ soulmesh up --offline                       # no download: the tiny model (or the default one if already downloaded)
  $ soulmesh up --no-chat --port 0 --json       # for scripts: one JSON summary on stdout, runs until SIGTERM
  $ soulmesh up --dashboard-port 8080           # the creator dashboard on another port (0: a free one)
  $ soulmesh up --no-dashboard                  # no dashboard (\`soulmesh dashboard\` can serve it later)
  $ SOULMESH_HOME=/tmp/sm soulmesh up           # keep this network's files apart`,
    )
    .action(async (opts: UpOptions, cmd: Command) => {
      await runUp(cmd, opts);
    });
}
