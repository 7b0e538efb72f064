import { SoulmeshError } from "../errors.js";
import type { ItemKind } from "../vault/dag.js";

/** A call on an AgentMemory after `close()`: open it again from the vault. */
export class MemoryClosedError extends SoulmeshError {
  override readonly name = "MemoryClosedError";
  constructor(readonly operation: string) {
    super(`Cannot ${operation}: this agent memory is closed. Open it again with AgentMemory.open({ vault, ... }).`);
  }
}

/**
 * A memory item in the vault that this version cannot read (not the JSON it writes, or a newer format).
 * Nothing was loaded; the item is left as it is in the vault.
 */
export class MemoryItemFormatError extends SoulmeshError {
  override readonly name = "MemoryItemFormatError";
  constructor(
    readonly kind: ItemKind,
    readonly detail: string,
  ) {
    super(
      `The vault's "${kind}" memory item is unreadable (${detail}). Update Soulmesh if another version wrote it, ` +
        `or remove it with vault.forget({ items: ["${kind}"] }) to start that kind afresh (turns are kept).`,
    );
  }
}

/** An option out of range (a budget that is not a positive integer, a segment of no turns…); nothing was done. */
export class InvalidMemoryOptionError extends SoulmeshError {
  override readonly name = "InvalidMemoryOptionError";
  constructor(readonly problems: string[]) {
    super(`Invalid memory options: ${problems.join("; ")}.`);
  }
}

/**
 * The model's answer to a maintenance request was not the strict JSON asked for; nothing was changed. It is
 * reported in a `maintenance:failed` event, never thrown to a turn.
 */
export class MaintenanceAnswerError extends SoulmeshError {
  override readonly name = "MaintenanceAnswerError";
  constructor(
    readonly issues: string[],
    /** The start of the answer, for the log. */
    readonly excerpt: string,
  ) {
    super(`The model's maintenance answer was not the JSON asked for (${issues.join("; ")}); nothing was changed.`);
  }
}
