/**
 * libp2p protocol ids. The version is part of the id so that a node can serve two versions side by side
 * while clients migrate; bump the major version for any change an old peer would misread.
 *
 * @example
 * node.handle(PROTOCOL_IDS.quote, handleQuote)
 */
export const PROTOCOL_IDS = {
  quote: "/soulmesh/quote/1.0.0",
  session: "/soulmesh/session/1.0.0",
  inference: "/soulmesh/inference/1.0.0",
  voucher: "/soulmesh/voucher/1.0.0",
} as const;

/** The name of a Soulmesh protocol: "quote", "session", "inference" or "voucher". */
export type ProtocolName = keyof typeof PROTOCOL_IDS;

/** A Soulmesh protocol id, e.g. "/soulmesh/quote/1.0.0". */
export type ProtocolId = (typeof PROTOCOL_IDS)[ProtocolName];

/**
 * Soulmesh's own DHT protocol: providers form their own Kademlia network rather than joining IPFS's Amino
 * DHT, whose thousands of peers would answer none of our queries.
 */
export const SOULMESH_DHT_PROTOCOL = "/soulmesh/kad/1.0.0";
