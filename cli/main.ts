import { Command, CommanderError } from "commander";
import { addGlobalOptions } from "./commands/options.js";
import { reportError } from "./output.js";

type Register = (program: Command) => void;

/**
 * Each command's module, loaded only when that command runs: the provider's pulls in libp2p and the model
 * engine, seconds of start-up that `soulmesh balance` should not pay. Add a command here, one line each.
 */
const COMMANDS: Record<string, () => Promise<Register>> = {
  devnet: async () => (await import("./commands/devnet.js")).registerDevnet,
  deploy: async () => (await import("./commands/deploy.js")).registerDeploy,
  model: async () => (await import("./commands/model.js")).registerModel,
  provider: async () => (await import("./commands/provider.js")).registerProvider,
  wallet: async () => (await import("./commands/wallet.js")).registerWallet,
  deposit: async () => (await import("./commands/escrow.js")).registerEscrow,
  withdraw: async () => (await import("./commands/escrow.js")).registerEscrow,
  balance: async () => (await import("./commands/escrow.js")).registerEscrow,
  earnings: async () => (await import("./commands/escrow.js")).registerEscrow,
  up: async () => (await import("./commands/up.js")).registerUp,
  persona: async () => (await import("./commands/persona.js")).registerPersona,
  agent: async () => (await import("./commands/agent.js")).registerAgent,
  chat: async () => (await import("./commands/chat.js")).registerChat,
  memory: async () => (await import("./commands/memory.js")).registerMemory,
  serve: async () => (await import("./commands/serve.js")).registerServe,
  dashboard: async () => (await import("./commands/dashboard.js")).registerDashboard,
};

/** The global options that take a value, to skip over when looking for the command's name. */
const VALUE_OPTIONS = new Set(["--home", "--rpc", "--deployment", "--account", "--ipfs-api"]);

/** The command named on the command line, if any. */
function commandName(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (VALUE_OPTIONS.has(arg)) i++;
    else if (!arg.startsWith("-")) return arg;
  }
  return undefined;
}

const program = addGlobalOptions(
  new Command()
    .name("soulmesh")
    .description("Soulmesh: user-owned AI agents on a peer-to-peer network of compute providers")
    // Before the subcommands are added, so that each one's --help lists the global options too.
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride(),
);

// A known command loads its own module; anything else (help, a typo) loads all, to list or suggest them.
const name = commandName(process.argv.slice(2));
const loaders = name !== undefined && Object.hasOwn(COMMANDS, name) ? [COMMANDS[name]!] : Object.values(COMMANDS);
const registered = new Set<Register>();
for (const register of await Promise.all(loaders.map((load) => load()))) {
  if (!registered.has(register)) register(program);
  registered.add(register);
}

// `soulmesh --help | head` closes stdout early: that is the reader's choice, not an error to print.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else {
    process.exitCode = reportError(err, program.opts<{ json?: boolean }>().json === true);
  }
}
