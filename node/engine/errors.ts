import { SoulmeshError } from "../../sdk/errors.js";

/** A model source that is neither a readable GGUF file nor an `hf:` URI that resolves. */
export class ModelNotFoundError extends SoulmeshError {
  override readonly name = "ModelNotFoundError";
  constructor(
    readonly source: string,
    options?: ErrorOptions,
  ) {
    super(
      `No model at ${source}. Give the path of a GGUF file, or an hf:<user>/<repo>/<file>.gguf URI ` +
        `(downloads need network access; the file is kept in the models folder afterwards).`,
      options,
    );
  }
}

/** A file that is not a GGUF model (or adapter) node-llama-cpp can read. */
export class InvalidGgufError extends SoulmeshError {
  override readonly name = "InvalidGgufError";
  constructor(
    readonly path: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`${path} is not a usable GGUF file: ${reason}. Check that the download finished, or re-export it.`, options);
  }
}

/** Bytes whose SHA-256 differs from the one registered for them: never loaded. */
export class HashMismatchError extends SoulmeshError {
  override readonly name = "HashMismatchError";
  constructor(
    readonly what: "model" | "adapter",
    readonly id: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(
      `The ${what} ${id} has SHA-256 ${actual}, but ${expected} is registered for it: refusing to load it. ` +
        `The source served other bytes than the creator published; try another source, or ask the creator ` +
        `to publish the adapter again.`,
    );
  }
}

/** No adapter with this CID in the cache or at any configured source. */
export class AdapterNotFoundError extends SoulmeshError {
  override readonly name = "AdapterNotFoundError";
  constructor(
    readonly cid: string,
    options?: ErrorOptions,
  ) {
    super(
      `Adapter ${cid} is not in the adapter cache and no source had it. Put the GGUF file in the adapters ` +
        `folder (named by its CID), or connect the node to IPFS.`,
      options,
    );
  }
}

/** An adapter made for another base model (another architecture, tensor shapes or model hash). */
export class AdapterBaseMismatchError extends SoulmeshError {
  override readonly name = "AdapterBaseMismatchError";
  constructor(
    readonly cid: string,
    readonly reason: string,
  ) {
    super(
      `Adapter ${cid} was made for another base model (${reason}): refusing to load it. ` +
        `Serve the persona on the base model it names, or ask its creator for an adapter for this one.`,
    );
  }
}

/** The engine's queue is full: the request was not admitted. Try another provider, or later. */
export class ProviderBusyError extends SoulmeshError {
  override readonly name = "ProviderBusy";
  constructor(
    readonly queued: number,
    readonly maxQueued: number,
  ) {
    super(
      `This provider is busy (${queued} requests queued, at most ${maxQueued}). Retry later or pick another provider.`,
    );
  }
}

/** No open session with this id on this node. */
export class SessionNotFoundError extends SoulmeshError {
  override readonly name = "SessionNotFoundError";
  constructor(readonly sessionId: string) {
    super(`No open session ${sessionId} on this node (closed, expired or never opened). Open a new session.`);
  }
}

/** A session opened twice, or reopened with other model or adapters than it was opened with. */
export class SessionConflictError extends SoulmeshError {
  override readonly name = "SessionConflictError";
  constructor(
    readonly sessionId: string,
    readonly reason: string,
  ) {
    super(`Session ${sessionId} cannot be opened: ${reason}. Use a new session id.`);
  }
}

/** A saved session state that the key given cannot decrypt, or that was tampered with. */
export class SessionStateError extends SoulmeshError {
  override readonly name = "SessionStateError";
  constructor(
    readonly sessionId: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `The saved state of session ${sessionId} cannot be used: ${reason}. It has been discarded; the next ` +
        `turn evaluates the whole prompt.`,
      options,
    );
  }
}

/** A request the engine cannot serve as given (empty prompt, prompt above the context, bad option). */
export class InvalidRequestError extends SoulmeshError {
  override readonly name = "InvalidRequestError";
  constructor(readonly reason: string) {
    super(`Invalid generation request: ${reason}.`);
  }
}

/** Not enough of the memory budget for even one context of the size asked. */
export class MemoryBudgetError extends SoulmeshError {
  override readonly name = "MemoryBudgetError";
  constructor(
    readonly requiredBytes: number,
    readonly budgetBytes: number,
  ) {
    super(
      `A context needs ${Math.ceil(requiredBytes / 2 ** 20)} MiB but the engine's memory budget is ` +
        `${Math.floor(budgetBytes / 2 ** 20)} MiB. Raise the budget or lower the context size.`,
    );
  }
}

/** The engine was stopped (or not started) while the call was pending. */
export class EngineStoppedError extends SoulmeshError {
  override readonly name = "EngineStoppedError";
  constructor() {
    super("The inference engine is not running. Start it (engine.start()) before serving requests.");
  }
}

/** A session id the state store refuses: empty, too long, or with control characters. */
export class InvalidSessionIdError extends SoulmeshError {
  override readonly name = "InvalidSessionIdError";
  constructor(readonly reason: string) {
    super(`Invalid session id: ${reason}. Use 1 to 256 printable characters (a UUID, for instance).`);
  }
}

/** A session key that is not 32 bytes: saved states are encrypted with a key the client supplies. */
export class InvalidSessionKeyError extends SoulmeshError {
  override readonly name = "InvalidSessionKeyError";
  constructor(
    readonly sessionId: string,
    readonly length: number,
  ) {
    super(
      `The state key of session ${sessionId} is ${length} bytes; it must be 32 random bytes. ` +
        `Generate one per session on the client (crypto.getRandomValues(new Uint8Array(32))).`,
    );
  }
}

/** A model/adapter binding that does not name one exact configuration (bad hash, duplicate adapter, bad scale). */
export class InvalidStateBindingError extends SoulmeshError {
  override readonly name = "InvalidStateBindingError";
  constructor(readonly reason: string) {
    super(`Invalid session state binding: ${reason}.`);
  }
}

/** The session state store was used before start() or after stop(). */
export class StateStoreStoppedError extends SoulmeshError {
  override readonly name = "StateStoreStoppedError";
  constructor() {
    super("The session state store is not running. Start it (store.start()) before saving or restoring states.");
  }
}

/**
 * A session state larger than the state store's per-state limit: the save is skipped (the previous state, if any,
 * stays), so one very long context can neither fill the provider's disk nor push every other state out.
 */
export class StateTooLargeError extends SoulmeshError {
  override readonly name = "StateTooLargeError";
  constructor(
    readonly sessionId: string,
    /** The size the state file would have had (a lower bound when the save was refused from its tokens alone). */
    readonly bytes: number,
    readonly maxStateBytes: number,
  ) {
    super(
      `The state of session ${sessionId} would take ${bytes} bytes, above the limit of ${maxStateBytes} bytes per ` +
        `saved state: it is not saved, and the session's next turn evaluates its prompt again.`,
    );
  }
}

/** A SHA-256 that is not written as "0x" and 64 hex digits (the form of an on-chain bytes32). */
export class InvalidHashError extends SoulmeshError {
  override readonly name = "InvalidHashError";
  constructor(
    readonly value: string,
    readonly what: string,
  ) {
    super(
      `${JSON.stringify(value.slice(0, 80))} is not a valid SHA-256 for the ${what}: write it as 0x followed by 64 ` +
        `hex digits, as the registry returns it.`,
    );
  }
}

/** A model source that looks like a Hugging Face URI but is not a well-formed one. */
export class InvalidModelUriError extends SoulmeshError {
  override readonly name = "InvalidModelUriError";
  constructor(
    readonly uri: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `${uri} is not a valid model URI (${reason}). Write hf:<user>/<repo>/<file>.gguf, or hf:<user>/<repo>:<quant> ` +
        `(for example hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M), or give the path of a GGUF file.`,
      options,
    );
  }
}

/** An adapter larger than the whole adapter cache: it could never be kept, so it is not fetched. */
export class AdapterTooLargeError extends SoulmeshError {
  override readonly name = "AdapterTooLargeError";
  constructor(
    readonly cid: string,
    readonly size: number,
    readonly maxBytes: number,
    /** False when the download was stopped as soon as it passed the limit: `size` is then a lower bound. */
    readonly sizeKnown = true,
  ) {
    super(
      `Adapter ${cid} is ${sizeKnown ? "" : "at least "}${size} bytes, more than the adapter cache's limit of ` +
        `${maxBytes} bytes. Raise the adapter cache size to serve it.`,
    );
  }
}

/** A session asked for a base model this node does not serve. */
export class ModelNotServedError extends SoulmeshError {
  override readonly name = "ModelNotServedError";
  constructor(
    readonly modelSha256: string,
    readonly served: readonly string[],
  ) {
    super(
      `This node does not serve model ${modelSha256}; it serves ${served.join(", ") || "no model"}. ` +
        `Pick a provider that lists the model in its registration.`,
    );
  }
}
