/**
 * The agent runtime: memory, metered chat and head publishing behind one object (see agent.ts).
 *
 * @example
 * const agent = await openAgent({ libp2p, contracts, signer, escrow, agentId, store, dataDir, persona, embedder, spendingCap })
 * const { reply } = await agent.send("Hi!")
 * await agent.close()
 */
export { Agent, openAgent } from "./agent.js";
export type { AgentEvents, AgentPersona, AgentReply, HeadPublished, MemoryLoaded, OpenAgentOptions, SendOptions } from "./agent.js";
export * from "./errors.js";
export { LazyChat } from "./lazy-chat.js";
export { readLocalState, writeLocalState } from "./local-state.js";
export type { LocalAgentState, SyncedHead } from "./local-state.js";
