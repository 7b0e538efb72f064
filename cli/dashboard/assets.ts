/**
 * Where the creator dashboard's built page is, for `soulmesh dashboard` and `soulmesh up` alike.
 */
import { access } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DashboardNotBuiltError } from "./errors.js";

/**
 * Where the built page is: SOULMESH_DASHBOARD_DIST (for tests), else this package's dashboard/dist.
 *
 * @example
 * dashboardAssetsDir() // "/opt/soulmesh/dashboard/dist"
 */
export function dashboardAssetsDir(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.SOULMESH_DASHBOARD_DIST;
  return override !== undefined && override !== "" ? resolve(override) : fileURLToPath(new URL("../../dashboard/dist", import.meta.url));
}

/**
 * Resolves when `assetsDir` holds the built page (its index.html); the server itself would only answer 404s.
 *
 * @example
 * await assertDashboardBuilt(dashboardAssetsDir()) // throws DashboardNotBuiltError before `npm run build:dashboard`
 * @throws DashboardNotBuiltError when index.html is missing.
 */
export async function assertDashboardBuilt(assetsDir: string, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  await access(join(assetsDir, "index.html")).catch(() => {
    throw new DashboardNotBuiltError(assetsDir);
  });
}
