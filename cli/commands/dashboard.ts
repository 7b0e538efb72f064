import type { Command } from "commander";
import type { BlockStore } from "../../sdk/vault/types.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { assertDashboardBuilt, dashboardAssetsDir } from "../dashboard/assets.js";
import { homeBaseModels } from "../dashboard/base-models.js";
import { offeredDevAccounts, startDashboardServer } from "../dashboard/server.js";
import { parsePort } from "./options.js";

/** Runs the dashboard until the context's signal (Ctrl-C), then closes it. */
async function runDashboard(ctx: CommandContext, opts: { port: number; ipfs: boolean }): Promise<void> {
  const assetsDir = dashboardAssetsDir();
  // Checked first: nothing is worth starting for a page that is not there.
  await assertDashboardBuilt(assetsDir, ctx.signal);
  const deployment = await ctx.deployment();
  const provider = await ctx.abortable(ctx.provider());
  let store: BlockStore | undefined;
  if (opts.ipfs) {
    try {
      const ipfs = await ctx.abortable(ctx.ipfs());
      store = ipfs.store;
      ctx.out.progress(`IPFS: ${ipfs.description}`);
    } catch (err) {
      ctx.signal.throwIfAborted();
      // Reading figures needs only the chain: serve them, and say why publishing is off.
      ctx.out.progress(`IPFS unavailable (${err instanceof Error ? err.message : String(err)}): serving without publishing`);
    }
  } else {
    ctx.out.progress("IPFS off (--no-ipfs): serving without publishing");
  }
  const devAccounts = offeredDevAccounts(deployment);
  const server = await startDashboardServer({
    rpcUrl: provider._getConnection().url,
    deployment,
    assetsDir,
    ...(store !== undefined && { store }),
    provider,
    devAccounts,
    baseModels: await homeBaseModels(ctx.home, ctx.signal),
    port: opts.port,
    signal: ctx.signal,
  });
  try {
    ctx.out.progress(`Creator dashboard at ${server.url} — Ctrl-C stops it`);
    ctx.out.result({ url: server.url, chainId: deployment.chainId, devAccounts, ipfs: store !== undefined }, server.url);
    if (!ctx.signal.aborted) await new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));
    ctx.out.progress("stopping the dashboard…");
  } finally {
    await server.close();
  }
}

/** Registers `soulmesh dashboard`. */
export function registerDashboard(program: Command): void {
  program
    .command("dashboard")
    .description("Serve the creator dashboard on 127.0.0.1: your personas' adoptions, tokens and revenue from the chain, withdraw, publish")
    .option("--port <port>", "HTTP port on 127.0.0.1 (0 picks a free one)", parsePort, 5173)
    .option("--no-ipfs", "serve without IPFS: figures and withdrawals only, no publishing")
    .addHelpText(
      "after",
      `
The page reads everything from the chain (the deployment's, or --rpc), signs with your browser wallet
(EIP-1193) or, on the devnet, with a dev account the page offers. Cards and adapters go to the home's
IPFS node (or --ipfs-api). \`npm install\` builds the page; after changing dashboard/, run \`npm run build:dashboard\`.
\`soulmesh up\` (\`npm start\`) serves it already for its own network: this command is for a devnet or another chain.

Examples:
  $ soulmesh devnet &                          # a local chain and IPFS
  $ soulmesh dashboard                         # open http://127.0.0.1:5173, connect as "creator"
  $ soulmesh dashboard --port 0 --json         # a free port; prints { url, chainId, devAccounts, ipfs }
  $ soulmesh dashboard --deployment sepolia.json --rpc https://rpc.example --no-ipfs
                                               # figures on another chain, with a browser wallet`,
    )
    .action((opts: { port: number; ipfs: boolean }, cmd: Command) => withContext(cmd, (ctx) => runDashboard(ctx, opts)));
}
