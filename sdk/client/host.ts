/**
 * The client's libp2p node: the same transports, encryption and muxer as a provider (so that any provider
 * address is dialable), but dial-only and a DHT client, since a chat app must not become a relay for other
 * peers' queries nor open a port it did not ask for.
 */
import type { PrivateKey } from "@libp2p/interface";
import { multiaddr } from "@multiformats/multiaddr";
import { createSoulmeshLibp2p, type SoulmeshLibp2p, type SoulmeshServices } from "../protocol/libp2p.js";
import { TypedEventTarget } from "../events.js";

export type ClientServices = SoulmeshServices;

/** A client's libp2p node. */
export type ClientLibp2p = SoulmeshLibp2p;

export interface ClientHostOptions {
  /**
   * Multiaddrs with /p2p/<id> dialed on start, so that the DHT has somewhere to begin. Providers' own
   * addresses come from the registry, so a client that only uses those may leave this empty.
   */
  bootstrap?: string[];
  /** Listen multiaddrs. Default none: a client dials out and never needs to be reached. */
  listen?: string[];
  /** The peer key; default a fresh Ed25519 key per host (a client has no identity worth keeping). */
  privateKey?: PrivateKey;
  signal?: AbortSignal;
}

export interface ClientHostEvents {
  /** A bootstrap peer could not be dialed; the host runs anyway. */
  "peer:unreachable": CustomEvent<{ multiaddr: string; error: unknown }>;
}

/**
 * A client's libp2p host, started on the first call of {@link ClientHost.start} (every API that needs the
 * network calls it), so that creating one costs nothing until a chat begins.
 *
 * @example
 * const host = await createClientHost({ bootstrap: [seed] })
 * const chat = await openChat({ libp2p: await host.start(), … })
 * await host.stop()
 */
export class ClientHost extends TypedEventTarget<ClientHostEvents> {
  #starting: Promise<ClientLibp2p> | undefined;

  constructor(
    /** The libp2p node; not started until {@link start}. */
    readonly libp2p: ClientLibp2p,
    readonly bootstrap: readonly string[],
  ) {
    super();
  }

  /** Whether the node is started. */
  get running(): boolean {
    return this.libp2p.status === "started";
  }

  /**
   * Starts the node (once: later and concurrent calls share the first) and dials the bootstrap peers. A
   * bootstrap peer that cannot be reached is reported by a `peer:unreachable` event, not thrown: the
   * registry's addresses may be all the client needs.
   */
  start(options: { signal?: AbortSignal } = {}): Promise<ClientLibp2p> {
    options.signal?.throwIfAborted();
    this.#starting ??= (async () => {
      await this.libp2p.start();
      await Promise.all(
        this.bootstrap.map(async (address) => {
          try {
            await this.libp2p.dial(multiaddr(address), { signal: options.signal ?? AbortSignal.timeout(10_000) });
          } catch (error) {
            this.dispatchEvent(new CustomEvent("peer:unreachable", { detail: { multiaddr: address, error } }));
          }
        }),
      );
      return this.libp2p;
    })();
    // A failed start must not be cached: the next call tries again.
    this.#starting.catch(() => (this.#starting = undefined));
    return this.#starting;
  }

  /** Closes every connection. Safe to call twice, or before start. */
  async stop(): Promise<void> {
    this.#starting = undefined;
    if (this.libp2p.status === "stopped") return;
    await this.libp2p.stop();
  }
}

/**
 * A client host, not yet started.
 *
 * @example
 * const host = await createClientHost()
 * const libp2p = await host.start()
 */
export async function createClientHost(options: ClientHostOptions = {}): Promise<ClientHost> {
  options.signal?.throwIfAborted();
  const libp2p = await createSoulmeshLibp2p({
    // Client mode: query the providers' DHT without answering queries (we may be behind NAT, or gone soon).
    dhtMode: "client",
    listen: options.listen ?? [],
    privateKey: options.privateKey,
    // Devnets and LANs announce private addresses; a client must be able to use what it is told.
    announcePrivateAddresses: true,
    signal: options.signal,
  });
  return new ClientHost(libp2p, options.bootstrap ?? []);
}
