import { Command, CommanderError } from "commander";
import { registerDeploy } from "./commands/deploy.js";
import { registerDevnet } from "./commands/devnet.js";
import { registerModel } from "./commands/model.js";
import { registerProvider } from "./commands/provider.js";
import { reportError } from "./output.js";

const program = new Command()
  .name("soulmesh")
  .description("Soulmesh: user-owned AI agents on a peer-to-peer network of compute providers")
  .option("--json", "print the result as one JSON object on stdout", false)
  .option("--home <dir>", "Soulmesh's data folder (env SOULMESH_HOME, default ~/.soulmesh)", process.env.SOULMESH_HOME)
  .showHelpAfterError("(run with --help for usage)")
  .exitOverride();

registerDevnet(program);
registerDeploy(program);
registerModel(program);
registerProvider(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else {
    process.exitCode = reportError(err, program.opts<{ json?: boolean }>().json === true);
  }
}
