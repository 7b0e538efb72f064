import type { CID } from "multiformats/cid";

/**
 * Where an agent's encrypted blocks live: an embedded Helia node (default) or an external Kubo daemon.
 * Blocks are opaque ciphertext to it; CIDs are CIDv1 (dag-cbor, raw, or dag-pb for public UnixFS files; sha2-256).
 */
export interface BlockStore {
  /** Stores a block under its CID (the caller computed it from the bytes); idempotent. */
  put(cid: CID, bytes: Uint8Array, options?: { signal?: AbortSignal }): Promise<void>;
  /** The block's bytes, from this node or, for a networked store, from peers; verified against the CID. */
  get(cid: CID, options?: { signal?: AbortSignal }): Promise<Uint8Array>;
  has(cid: CID, options?: { signal?: AbortSignal }): Promise<boolean>;
  /**
   * Makes every block put so far durable against an OS crash or power cut, not only a process kill. The
   * vault calls it before recording a head that names those blocks. Absent: the store is durable already.
   */
  flush?(options?: { signal?: AbortSignal }): Promise<void>;
  /** Keeps the blocks from garbage collection (pin) or lets them go. */
  pin?(cid: CID, options?: { signal?: AbortSignal }): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** The kinds of records a vault seals; each is bound into the AEAD's associated data. */
export type RecordKind =
  | "commit"
  | "turns"
  | "segment-index"
  | "profile"
  | "summaries"
  | "topics"
  | "notebook"
  | "working-memory"
  | "retrieval-index"
  | "journal"
  | "key-wrap";
