/**
 * The client SDK: find providers (registry, DHT), pick one (quotes, price, latency, reputation), chat through
 * metered sessions paid by vouchers, check every turn's usage, and fail over when a provider goes away.
 *
 * @example
 * const host = await createClientHost()
 * const chat = await openChat({ libp2p: await host.start(), contracts, signer, escrow, agentId, personaId,
 *   modelSha256, spendingCap: 5_000_000n })
 * const { text } = await chat.turn({ prompt: "Hello!", maxTokens: 256 })
 */
export * from "./host.js";
export * from "./discovery.js";
export * from "./selection.js";
export * from "./usage.js";
export * from "./blocklist.js";
export * from "./errors.js";
export * from "./session.js";
export * from "./lanes.js";
export * from "./tokenizer.js";
export * from "./agent/index.js";
