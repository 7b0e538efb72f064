import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PeerKeyCorruptError } from "./errors.js";
import { requestProtocol } from "./handler.js";
import { createProviderHost, PEER_KEY_FILE } from "./host.js";
import { serveQuotes } from "./quote.js";
import { FACTS, Fixture } from "./test-support.js";

const fx = new Fixture();
afterEach(() => fx.cleanup());

describe("provider host", () => {
  it("listens on loopback TCP and WebSockets", async () => {
    const host = await fx.host();
    const addrs = host.multiaddrs().map(String);
    expect(addrs.some((a) => /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//.test(a))).toBe(true);
    expect(addrs.some((a) => /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/ws\/p2p\//.test(a))).toBe(true);
  });

  it("keeps its peer id across restarts, in a 0600 key file", async () => {
    const dataDir = await fx.dir();
    const first = await fx.host({ dataDir });
    const id = first.peerId.toString();
    await first.stop();
    expect((await stat(join(dataDir, PEER_KEY_FILE))).mode & 0o777).toBe(0o600);
    const second = await fx.host({ dataDir });
    expect(second.peerId.toString()).toBe(id);
    const other = await fx.host();
    expect(other.peerId.toString()).not.toBe(id);
  });

  it("refuses a corrupt key file with a typed error saying what to do", async () => {
    const dataDir = await fx.dir();
    await writeFile(join(dataDir, PEER_KEY_FILE), "not a key");
    const err = await createProviderHost({ dataDir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PeerKeyCorruptError);
    expect((err as Error).name).toBe("PeerKeyCorruptError");
    expect((err as Error).message).toMatch(/Restore it from a backup.*or delete it/);
  });

  it("accepts a burst of new clients from one address (libp2p alone would refuse the sixth within a second)", async () => {
    const server = await fx.host();
    await serveQuotes(server.libp2p, { quoteSource: () => FACTS });
    const target = server.multiaddrs().find((m) => !m.toString().includes("/ws"))!;
    const clients = await Promise.all(Array.from({ length: 12 }, () => fx.host()));
    const quotes = await Promise.all(clients.map((c) => requestProtocol(c.libp2p, target, "quote", { type: "quote.request" }, { timeoutMs: 10_000 })));
    expect(quotes.map((q) => q.type)).toEqual(Array(12).fill("quote"));
  });

  it("reports an unreachable bootstrap peer and runs anyway", async () => {
    const dataDir = await fx.dir();
    const host = await createProviderHost({
      dataDir,
      bootstrap: ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGRUVh6ajAFEaAa7DqE3dhs4XHBcGm5ZtGZnkYTKHDxhP"],
    });
    fx.hosts.push(host);
    const events: string[] = [];
    host.addEventListener("peer:unreachable", (e) => events.push((e as CustomEvent<{ multiaddr: string }>).detail.multiaddr));
    await host.start();
    expect(events).toHaveLength(1);
    expect(host.running).toBe(true);
  });

  it("finds a peer's addresses through the DHT via a third node", async () => {
    const b = await fx.host();
    const bootstrap = [b.multiaddrs()[0]!.toString()];
    const a = await fx.host({ bootstrap });
    const c = await fx.host({ bootstrap });
    expect(await c.libp2p.peerStore.has(a.peerId)).toBe(false);
    // B adds A to its routing table only once identify shows A speaks the DHT protocol: retry until then.
    const found = await retry(() => c.libp2p.peerRouting.findPeer(a.peerId, { signal: AbortSignal.timeout(2_000) }), 10_000);
    expect(found.id.toString()).toBe(a.peerId.toString());
    const aPorts = a.multiaddrs().map((m) => m.toString().split("/")[4]);
    expect(found.multiaddrs.some((m) => aPorts.includes(m.toString().split("/")[4]))).toBe(true);
    // And C can reach A on what it found.
    const rtt = await c.libp2p.services.ping.ping(a.peerId, { signal: AbortSignal.timeout(5_000) });
    expect(rtt).toBeGreaterThanOrEqual(0);
  }, 30_000);
});

async function retry<T>(attempt: () => Promise<T>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
