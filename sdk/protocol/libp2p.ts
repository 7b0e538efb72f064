/**
 * The one libp2p configuration that clients and providers share: TCP and WebSockets, Noise, Yamux, identify,
 * ping and a Kademlia DHT on {@link SOULMESH_DHT_PROTOCOL}. Both sides must build it alike, or a client could
 * meet a provider address it cannot dial or a DHT it cannot speak; only the role-specific knobs are parameters.
 *
 * Not re-exported from the protocol index: it loads Node-only transports, and the index is also for code
 * that only needs the wire messages.
 */
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify, type Identify } from "@libp2p/identify";
import type { PrivateKey } from "@libp2p/interface";
import { kadDHT, passthroughMapper, removePrivateAddressesMapper, type KadDHT } from "@libp2p/kad-dht";
import { ping, type Ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { webSockets } from "@libp2p/websockets";
import { createLibp2p, type Libp2p } from "libp2p";
import { SOULMESH_DHT_PROTOCOL } from "./ids.js";

/** The services every Soulmesh libp2p node runs. */
export type SoulmeshServices = { identify: Identify; ping: Ping; dht: KadDHT };

/** A Soulmesh libp2p node (client or provider). */
export type SoulmeshLibp2p = Libp2p<SoulmeshServices>;

/** Limits on inbound connections; a node that omits them keeps libp2p's defaults. */
export interface InboundConnectionLimits {
  /** New inbound connections accepted per second from one IP address. */
  perSecondPerHost: number;
  /** Inbound handshakes in flight at once. */
  pending: number;
}

export interface SoulmeshLibp2pOptions {
  /**
   * "client" queries the DHT without answering queries (a chat app may be behind NAT, or gone soon);
   * "server" answers them, which every provider must do or a small network could not route at all.
   */
  dhtMode: "client" | "server";
  /** Listen multiaddrs; empty for a node that only dials out. */
  listen: readonly string[];
  /** The peer key; default a fresh Ed25519 key made by libp2p. */
  privateKey?: PrivateKey;
  /**
   * Whether the DHT passes on loopback and private addresses. Default true, which devnets and LANs need
   * (they announce private addresses, and a peer must be able to use what it is told); false drops them.
   */
  announcePrivateAddresses?: boolean;
  /** Inbound connection limits; default libp2p's own. */
  inbound?: InboundConnectionLimits;
  signal?: AbortSignal;
}

/**
 * A Soulmesh libp2p node, not yet started (the caller owns start() and stop()).
 *
 * @example
 * const libp2p = await createSoulmeshLibp2p({ dhtMode: "server", listen: ["/ip4/0.0.0.0/tcp/4001"], privateKey })
 * await libp2p.start()
 */
export async function createSoulmeshLibp2p(options: SoulmeshLibp2pOptions): Promise<SoulmeshLibp2p> {
  options.signal?.throwIfAborted();
  const announcePrivate = options.announcePrivateAddresses ?? true;
  return createLibp2p({
    start: false,
    ...(options.privateKey !== undefined && { privateKey: options.privateKey }),
    addresses: { listen: [...options.listen] },
    ...(options.inbound !== undefined && {
      connectionManager: {
        inboundConnectionThreshold: options.inbound.perSecondPerHost,
        maxIncomingPendingConnections: options.inbound.pending,
      },
    }),
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // Discovery is the bootstrap list plus the DHT; mDNS is left to LAN setups that add it themselves.
    peerDiscovery: [],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: SOULMESH_DHT_PROTOCOL,
        clientMode: options.dhtMode === "client",
        peerInfoMapper: announcePrivate ? passthroughMapper : removePrivateAddressesMapper,
      }),
    },
  });
}
