import type { Command } from "commander";
import { startDevnet } from "../devnet/devnet.js";
import type { DevnetEvent } from "../devnet/devnet.js";
import { createOutput, formatUnitsFixed } from "../output.js";
import type { Output } from "../output.js";
import { globalOptions, parsePort } from "./options.js";

function describe(event: DevnetEvent): string {
  switch (event.type) {
    case "chain:started":
      return `chain ${event.chainId} started (Hardhat EDR, in process)`;
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

/** Runs the devnet until SIGINT or SIGTERM, then stops it cleanly. */
async function runDevnet(out: Output, opts: { port: number; home?: string }): Promise<void> {
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  out.progress("starting the Soulmesh devnet…");
  const devnet = await startDevnet({
    port: opts.port,
    home: opts.home,
    signal: abort.signal,
    onEvent: (e) => out.progress(describe(e)),
  });
  const d = devnet.deployment;
  const accounts = (d.devAccounts ?? []).map((a) => `  ${a.label.padEnd(11)} ${a.address}  key ${a.privateKey}`);
  out.result(
    d,
    [
      "",
      `Soulmesh devnet running: chain ${d.chainId} at ${d.rpcUrl}`,
      "",
      "Contracts:",
      ...Object.entries(d.contracts).map(([name, address]) => `  ${name.padEnd(17)} ${address}`),
      "",
      "Dev accounts (public test keys: never use them on a real chain):",
      ...accounts,
      "",
      `Deployment: ${devnet.deploymentPath} (other soulmesh commands read it)`,
      "Press Ctrl-C to stop.",
    ].join("\n"),
  );

  if (!abort.signal.aborted) await new Promise((resolve) => abort.signal.addEventListener("abort", resolve));
  out.progress("stopping…");
  await devnet.stop();
  out.progress("devnet stopped");
}

/** Registers `soulmesh devnet`. */
export function registerDevnet(program: Command): void {
  program
    .command("devnet")
    .description("Start a local chain with every Soulmesh contract deployed and the dev accounts funded")
    .option("--port <port>", "JSON-RPC port on 127.0.0.1 (0 picks a free one)", parsePort, 8545)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh devnet                      # chain at http://127.0.0.1:8545, deployment in ~/.soulmesh/devnet.json
  $ soulmesh devnet --port 0 --json      # a free port; prints the deployment as one JSON object
  $ SOULMESH_HOME=/tmp/sm soulmesh devnet # keep this devnet's files apart`,
    )
    .action(async (opts: { port: number }, cmd: Command) => {
      const g = globalOptions(cmd);
      await runDevnet(createOutput({ json: g.json }), { port: opts.port, home: g.home });
    });
}
