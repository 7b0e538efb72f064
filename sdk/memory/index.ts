/**
 * The agent's soul: its memory over the vault (AgentMemory), prompt assembly within a budget, background
 * maintenance through the metered chat path, and reaching out when a follow-up falls due; with personas
 * (persona/) and retrieval (retrieval/) re-exported. Importing retrieval/ directly from memory.ts avoids
 * loading node-llama-cpp for the word-vector default; this barrel loads everything.
 */
export * from "./types.js";
export * from "./errors.js";
export { AgentMemory, MAX_SEGMENT_TRIES, PROFILE_FACTS_PER_USER } from "./memory.js";
export type {
  AgentMemoryEvents,
  AgentMemoryOptions,
  MaintenanceDone,
  MaintenanceFailed,
  ProfileFact,
  RecordedTurn,
  RememberedTurn,
} from "./memory.js";
export {
  assemblePrompt,
  DEFAULT_MEMORY_BUDGET,
  DEFAULT_PERSONA_BUDGET,
  HISTORY_WINDOW,
  RECENT_TURNS_FIRST,
  RETRIEVED,
} from "./assemble.js";
export type { AssembledPrompt, AssembleOptions, ChatMessage, DroppedItem } from "./assemble.js";
export { captureInstructions, hasConfidenceCue, notebookEntries } from "./notebook.js";
export type { CapturedInstruction, NotebookEntry } from "./notebook.js";
export { addNotes, detectFollowUp, dueFollowUps, emptyWorkingMemory, markAnswered, NOTES_PER_SUBJECT } from "./working-memory.js";
export type { FollowUp, Outreach, WorkingMemory } from "./working-memory.js";
export {
  MAINTENANCE_MAX_TOKENS,
  MaintenanceAnswer,
  MaintenanceQueue,
  parseMaintenanceAnswer,
  segmentPrompt,
  summarizeSegment,
  topicKey,
} from "./maintenance.js";
export type { SegmentLine, SegmentRequest } from "./maintenance.js";
export { wake, WAKE_MAX_TOKENS } from "./wake.js";
export { completeThroughChat } from "./complete.js";
export type { WakeMessage, WakeOptions } from "./wake.js";
export * from "./persona/index.js";
export * from "./retrieval/index.js";
