/**
 * The provider's libp2p host: TCP and WebSockets, Noise, Yamux, identify, ping and a Kademlia DHT (server
 * mode) for peer routing, with a peer key that persists in the node's data folder.
 */
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import type { PeerId, PrivateKey } from "@libp2p/interface";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import { SOULMESH_DHT_PROTOCOL } from "../../sdk/protocol/ids.js";
import { createSoulmeshLibp2p, type SoulmeshLibp2p, type SoulmeshServices } from "../../sdk/protocol/libp2p.js";
import { HostNotRunningError, PeerKeyCorruptError } from "./errors.js";

/** Loopback TCP and WebSockets on ports the OS picks. */
export const DEFAULT_LISTEN = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"] as const;

export { SOULMESH_DHT_PROTOCOL };

/** The file under `dataDir` that holds the peer's private key (libp2p protobuf encoding). */
export const PEER_KEY_FILE = "peer.key";

export type HostServices = SoulmeshServices;

export interface ProviderHostOptions {
  /** The node's data folder; holds `peer.key`. Created when missing. */
  dataDir: string;
  /** Listen multiaddrs. Default {@link DEFAULT_LISTEN}. */
  listen?: string[];
  /** Multiaddrs (with /p2p/<id>) dialed on start; the DHT learns the network from them. No public default. */
  bootstrap?: string[];
  /**
   * Whether the DHT passes on loopback and private addresses. Default true, which a LAN or a devnet needs;
   * set false on the public internet so that peers are not told addresses they cannot reach.
   */
  announcePrivateAddresses?: boolean;
  /**
   * New inbound connections accepted per second from one IP address; default 64. libp2p's own default of 5
   * refuses the 6th client behind one NAT (or on one machine) within a second; the total stays bounded by
   * libp2p's connection limit.
   */
  inboundConnectionsPerSecondPerHost?: number;
  signal?: AbortSignal;
}

export interface ProviderHostEvents {
  /** A bootstrap peer could not be dialed on start; the host runs anyway. */
  "peer:unreachable": CustomEvent<{ multiaddr: string; error: unknown }>;
}

/**
 * Reads the peer key from `path`, or creates an Ed25519 one there (mode 0600) when the file is missing.
 *
 * @example
 * const key = await loadOrCreatePeerKey("/var/lib/soulmesh/peer.key")
 * @throws PeerKeyCorruptError when the file exists but is not a key.
 */
export async function loadOrCreatePeerKey(path: string): Promise<PrivateKey> {
  let bytes: Uint8Array | undefined;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes);
    } catch (err) {
      throw new PeerKeyCorruptError(path, { cause: err });
    }
  }
  const key = await generateKeyPair("Ed25519");
  // Written aside then renamed, so a crash mid-write never leaves a truncated key that would later read as corrupt.
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600, flag: "wx" });
  await rename(tmp, path);
  await chmod(path, 0o600);
  return key;
}

/**
 * A provider's libp2p host. Create with {@link createProviderHost}, then start().
 *
 * @example
 * const host = await createProviderHost({ dataDir: "/var/lib/soulmesh", bootstrap: [seed] })
 * await host.start()
 * console.log(host.peerId.toString(), host.multiaddrs().map(String))
 * await host.stop()
 */
export class ProviderHost extends EventTarget {
  #running = false;

  constructor(
    /** The libp2p node, for registering protocol handlers and dialing. */
    readonly libp2p: SoulmeshLibp2p,
    readonly bootstrap: readonly string[],
  ) {
    super();
  }

  /** This provider's peer id; stable across restarts on the same data folder. */
  get peerId(): PeerId {
    return this.libp2p.peerId;
  }

  /** Whether start() has completed and stop() has not been called. */
  get running(): boolean {
    return this.#running;
  }

  /** The addresses peers may dial, each ending in /p2p/<peer id>. */
  multiaddrs(): Multiaddr[] {
    if (!this.#running) throw new HostNotRunningError("The host is not started: call start() first.");
    return this.libp2p.getMultiaddrs();
  }

  /**
   * Starts listening and dials the bootstrap peers. A bootstrap peer that cannot be reached is reported by a
   * `peer:unreachable` event rather than failing the start: one seed being down must not stop a provider.
   */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#running) return;
    options.signal?.throwIfAborted();
    await this.libp2p.start();
    this.#running = true;
    await Promise.all(
      this.bootstrap.map(async (address) => {
        try {
          await this.libp2p.dial(multiaddr(address), { signal: options.signal });
        } catch (error) {
          if (options.signal?.aborted === true) return;
          this.dispatchEvent(new CustomEvent("peer:unreachable", { detail: { multiaddr: address, error } }));
        }
      }),
    );
    if (options.signal?.aborted === true) {
      await this.stop();
      options.signal.throwIfAborted();
    }
  }

  /** Closes every connection and stops listening. Safe to call twice. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    await this.libp2p.stop();
  }
}

/**
 * A provider host over `dataDir`'s peer key, not yet started.
 *
 * @example
 * const host = await createProviderHost({ dataDir, listen: ["/ip4/0.0.0.0/tcp/4001"], bootstrap })
 * await host.start({ signal })
 * @throws PeerKeyCorruptError when `dataDir/peer.key` exists but is unreadable as a key.
 */
export async function createProviderHost(options: ProviderHostOptions): Promise<ProviderHost> {
  options.signal?.throwIfAborted();
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const privateKey = await loadOrCreatePeerKey(join(options.dataDir, PEER_KEY_FILE));
  options.signal?.throwIfAborted();
  const libp2p = await createSoulmeshLibp2p({
    // Server mode: every provider answers DHT queries, or a small network could not route at all.
    dhtMode: "server",
    listen: options.listen ?? DEFAULT_LISTEN,
    privateKey,
    announcePrivateAddresses: options.announcePrivateAddresses ?? true,
    inbound: {
      perSecondPerHost: options.inboundConnectionsPerSecondPerHost ?? 64,
      // Handshakes in flight at once; raised with the rate so that a burst of clients is not cut short.
      pending: 32,
    },
    signal: options.signal,
  });
  return new ProviderHost(libp2p, options.bootstrap ?? []);
}
