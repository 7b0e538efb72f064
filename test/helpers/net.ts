import { createServer } from "node:net";
import type { AddressInfo } from "node:net";

/**
 * A loopback port that was free a moment ago and is closed now: an address where nothing answers.
 *
 * @example
 * const dead = `http://127.0.0.1:${await freePort()}`
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
