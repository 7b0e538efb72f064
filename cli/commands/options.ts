import { InvalidArgumentError } from "commander";
import type { Command } from "commander";

/** Options every command takes. */
export interface GlobalOptions {
  json: boolean;
  home?: string;
}

/** The global options as seen from a (sub)command. */
export function globalOptions(cmd: Command): GlobalOptions {
  const o = cmd.optsWithGlobals<{ json?: boolean; home?: string }>();
  return { json: o.json === true, home: o.home };
}

/**
 * Parses a TCP port (0 to 65535) for commander.
 *
 * @example
 * parsePort("8545") // 8545
 */
export function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65_535) {
    throw new InvalidArgumentError("expected a port number from 0 to 65535.");
  }
  return port;
}
