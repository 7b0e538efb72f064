import { resolve } from "node:path";
import type { Command } from "commander";
import { soulmeshHome } from "../../sdk/chain/deployment.js";
import { startDevnet } from "../devnet/devnet.js";
import type { DevnetEvent } from "../devnet/devnet.js";
import { apiFilePath, startLocalIpfsService } from "../ipfs/local-ipfs.js";
import type { LocalIpfsService } from "../ipfs/local-ipfs.js";
import { createOutput, formatUnitsFixed } from "../output.js";
import type { Output } from "../output.js";
import { globalOptions, parsePort } from "./options.js";

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
async function runDevnet(out: Output, opts: { port: number; home: string; ipfsPort: number }): Promise<void> {
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (): void => {
    if (++signals === 1) abort.abort();
    else {
      process.stderr.write("stopping at once (second signal)\n");
      process.exit(130);
    }
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let ipfs: LocalIpfsService | undefined;
  try {
    out.progress("starting the Soulmesh devnet…");
    const devnet = await startDevnet({
      port: opts.port,
      home: opts.home,
      signal: abort.signal,
      onEvent: (e) => out.progress(describe(e)),
    });
    try {
      // Personas, adapters and agents' memories live on IPFS: the other commands reach this node's API.
      ipfs = await startLocalIpfsService({ home: opts.home, port: opts.ipfsPort, signal: abort.signal, onProgress: (m) => out.progress(m) });
    } catch (err) {
      await devnet.stop();
      throw err;
    }
    const d = devnet.deployment;
    const accounts = (d.devAccounts ?? []).map((a) => `  ${a.label.padEnd(11)} ${a.address}  key ${a.privateKey}`);
    out.result(
      { ...d, ipfs: { api: ipfs.api.url, peerId: ipfs.store.peerId.toString(), apiFile: apiFilePath(opts.home) } },
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
        `IPFS: RPC API at ${ipfs.api.url} (peer ${ipfs.store.peerId.toString()})`,
        `Deployment: ${devnet.deploymentPath} (other soulmesh commands read it, and find IPFS through ${apiFilePath(opts.home)})`,
        "Press Ctrl-C to stop.",
      ].join("\n"),
    );

    if (!abort.signal.aborted) await new Promise((r) => abort.signal.addEventListener("abort", r, { once: true }));
    out.progress("stopping…");
    await ipfs.stop();
    await devnet.stop();
    out.progress("devnet stopped");
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** Registers `soulmesh devnet`. */
export function registerDevnet(program: Command): void {
  program
    .command("devnet")
    .description("Start a local chain with every Soulmesh contract deployed and the dev accounts funded, and the local IPFS node")
    .option("--port <port>", "JSON-RPC port on 127.0.0.1 (0 picks a free one)", parsePort, 8545)
    .option("--ipfs-port <port>", "the IPFS RPC API's port on 127.0.0.1 (default 0: a free one, recorded in <home>/ipfs/api.json)", parsePort, 0)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh devnet                      # chain at http://127.0.0.1:8545, deployment in ~/.soulmesh/devnet.json,
                                         # IPFS API recorded in ~/.soulmesh/ipfs/api.json
  $ soulmesh devnet --port 0 --json      # a free port; prints the deployment as one JSON object
  $ SOULMESH_HOME=/tmp/sm soulmesh devnet # keep this devnet's files apart`,
    )
    .action(async (opts: { port: number; ipfsPort: number }, cmd: Command) => {
      const g = globalOptions(cmd);
      const home = resolve(g.home ?? soulmeshHome());
      await runDevnet(createOutput({ json: g.json }), { port: opts.port, home, ipfsPort: opts.ipfsPort });
    });
}
