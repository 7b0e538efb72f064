/**
 * Every command's help renders, names its examples and lists the global options (--json among them): a help
 * that throws (commander JSON-stringifies option defaults, so a bigint default once did) is a broken command.
 */
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { addGlobalOptions } from "../../cli/commands/options.js";

const MODULES = [
  "devnet", "deploy", "model", "provider", "wallet", "escrow", "up", "persona", "agent", "chat", "memory", "serve", "dashboard",
] as const;

/** The program with every command registered, as `soulmesh --help` builds it. */
async function program(): Promise<Command> {
  const root = addGlobalOptions(new Command().name("soulmesh").configureHelp({ showGlobalOptions: true }).exitOverride());
  for (const name of MODULES) {
    const mod = (await import(`../../cli/commands/${name}.ts`)) as Record<string, unknown>;
    const register = Object.entries(mod).find(([key, v]) => key.startsWith("register") && typeof v === "function")?.[1];
    expect(register, `cli/commands/${name}.ts exports a register function`).toBeTypeOf("function");
    (register as (p: Command) => void)(root);
  }
  return root;
}

/** The commands users run: those without subcommands of their own. */
function leaves(cmd: Command, path: string[] = []): Array<{ path: string; cmd: Command }> {
  if (cmd.commands.length === 0) return [{ path: path.join(" "), cmd }];
  return cmd.commands.flatMap((sub) => leaves(sub, [...path, sub.name()]));
}

describe("soulmesh --help", () => {
  it("renders for every command, with examples and the global options", async () => {
    const all = leaves(await program());
    expect(all.map((c) => c.path)).toEqual(expect.arrayContaining(["up", "chat", "serve", "persona create", "memory forget", "provider start"]));
    for (const { path, cmd } of all) {
      let text = "";
      cmd.configureOutput({ writeOut: (s) => (text += s), writeErr: (s) => (text += s) });
      expect(() => cmd.outputHelp(), path).not.toThrow();
      expect(text, path).toContain("Examples:");
      for (const option of ["--json", "--home", "--rpc", "--account"]) expect(text, `${path} lists ${option}`).toContain(option);
    }
  }, 60_000);
});
