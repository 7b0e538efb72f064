/**
 * The creator dashboard as a part of `soulmesh up`: served by the same process, on the local network's chain and
 * IPFS node. Unlike `soulmesh dashboard`, a page that is not built or a port that is taken does not stop the
 * network: the network is what `up` is for, and the dashboard can still be served beside it later.
 */
import type { Deployment } from "../../sdk/chain/deployment.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { PortInUseError } from "../devnet/rpc-server.js";
import { assertDashboardBuilt } from "../dashboard/assets.js";
import { homeBaseModels } from "../dashboard/base-models.js";
import { DashboardNotBuiltError } from "../dashboard/errors.js";
import { startDashboardServer } from "../dashboard/server.js";
import type { DashboardServer } from "../dashboard/server.js";

/** The port `up` serves the dashboard on unless told otherwise (Vite's, which creators may know). */
export const UP_DASHBOARD_PORT = 5173;

/** Options of {@link startUpDashboard}. */
export interface UpDashboardOptions {
  /** The local chain's JSON-RPC URL. */
  rpcUrl: string;
  deployment: Deployment;
  store: BlockStore;
  /** The built page (dashboardAssetsDir()). */
  assetsDir: string;
  /** The soulmesh home, for the base models it has hashed. */
  home: string;
  /** 0 picks a free one. */
  port: number;
  signal?: AbortSignal;
}

/** Either the running server, or why it is not served (`warning` says so and what to do). */
export type UpDashboard = { server: DashboardServer } | { server: undefined; reason: string; warning: string };

/**
 * Serves the creator dashboard for the local network; a page that is not built or a taken port is reported,
 * not thrown.
 *
 * @example
 * const d = await startUpDashboard({ rpcUrl: devnet.rpc.url, deployment, store: ipfs.store, assetsDir, home, port: 5173 })
 * if (d.server) console.log(d.server.url); else console.warn(d.warning)
 * @throws whatever else startDashboardServer throws (an abort, a port it may not bind).
 */
export async function startUpDashboard(options: UpDashboardOptions): Promise<UpDashboard> {
  const { deployment, signal } = options;
  try {
    await assertDashboardBuilt(options.assetsDir, signal);
    const server = await startDashboardServer({
      rpcUrl: options.rpcUrl,
      deployment,
      store: options.store,
      assetsDir: options.assetsDir,
      baseModels: await homeBaseModels(options.home, signal),
      port: options.port,
      ...(signal && { signal }),
    });
    return { server };
  } catch (err) {
    if (err instanceof DashboardNotBuiltError) {
      return {
        server: undefined,
        reason: "its page is not built (run `npm run build:dashboard`)",
        warning:
          `the creator dashboard is not served: its page is not built (${err.assetsDir}/index.html is missing). ` +
          "Run `npm run build:dashboard` in the soulmesh checkout, then `soulmesh dashboard` beside this network " +
          "or `soulmesh up` again; pass --no-dashboard to go without it.",
      };
    }
    if (err instanceof PortInUseError) {
      return {
        server: undefined,
        reason: `port ${options.port} is in use (pass --dashboard-port 0 or --no-dashboard)`,
        warning:
          `the creator dashboard is not served: port ${options.port} on 127.0.0.1 is in use. Start \`soulmesh up\` with ` +
          "--dashboard-port 0 (a free port) or --no-dashboard, or run `soulmesh dashboard --port 0` beside this network.",
      };
    }
    throw err;
  }
}
