import type { Command } from "commander";
import { SoulmeshError } from "../../sdk/errors.js";
import { parsePort } from "./options.js";

/** The creator dashboard is not part of this version yet. */
export class DashboardUnavailableError extends SoulmeshError {
  override readonly name = "DashboardUnavailableError";
  constructor() {
    super(
      "The creator dashboard is not in this version yet. Meanwhile the same figures come from the chain through " +
        "`soulmesh persona list --mine`, `soulmesh persona show ID` and `soulmesh earnings` (add --withdraw to collect).",
    );
  }
}

/**
 * Registers `soulmesh dashboard`: its place and options are fixed now so scripts and the README can name it; the web
 * page itself comes with the dashboard (dashboard/).
 */
export function registerDashboard(program: Command): void {
  program
    .command("dashboard")
    .description("The creator dashboard in the browser (not in this version yet: see persona and earnings)")
    .option("--port <port>", "HTTP port on 127.0.0.1", parsePort, 5173)
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh persona list --mine --account creator   # your personas, royalties and adoptions
  $ soulmesh earnings --account creator              # what they earned, by persona`,
    )
    .action(() => {
      throw new DashboardUnavailableError();
    });
}
