/**
 * An agent's memory over its vault: every turn is journaled before it is acknowledged and becomes a
 * memory item at once (with who said it and who may hear it again); instructions and confidence are
 * caught by pattern on the spot; summaries, topics, the user profile and follow-ups are written by the
 * model in the background. `save` writes each changed kind and the retrieval index to the vault.
 */
import * as dagCbor from "@ipld/dag-cbor";
import { TypedEventTarget } from "../events.js";
import type { ItemKind } from "../vault/dag.js";
import type { AgentVault, Turn } from "../vault/vault.js";
import { InvalidMemoryOptionError, MemoryClosedError, MemoryItemFormatError } from "./errors.js";
import { MaintenanceQueue, summarizeSegment, topicKey, type MaintenanceAnswer } from "./maintenance.js";
import { captureInstructions, hasConfidenceCue, notebookEntries, type NotebookEntry } from "./notebook.js";
import type { CharacterCard } from "./persona/card.js";
import type { Embedder } from "./retrieval/embedder.js";
import { MemoryIndex } from "./retrieval/memory-index.js";
import { estimateTokens, type Audience, type Complete, type MemoryItem, type TokenCounter } from "./types.js";
import {
  addNotes,
  detectFollowUp,
  emptyWorkingMemory,
  isWorkingMemory,
  markAnswered,
  type FollowUp,
  type Outreach,
  type WorkingMemory,
} from "./working-memory.js";

/** A turn of the history as memory sees it. */
export interface RememberedTurn {
  /** Its position in the vault's history (oldest is 0); its memory id is `turn:<index>`. */
  index: number;
  turn: Turn;
  /** The user the agent was talking with: the speaker of a user turn, the addressee of an agent turn. */
  partner: string;
  /** Said in confidence: only `partner` hears it again. */
  confidential: boolean;
  /** Its memory item; none for system turns, which are instructions rather than conversation. */
  item?: MemoryItem;
}

/** A lasting fact, preference or trait of a user: core memory, in every prompt of that user. */
export interface ProfileFact {
  kind: "fact" | "preference" | "trait";
  text: string;
  time: number;
  /** The turns it was learned from. */
  sources?: string[];
}

/** Facts kept per user: the newest win. */
export const PROFILE_FACTS_PER_USER = 40;

/** What {@link AgentMemory.open} needs. */
export interface AgentMemoryOptions {
  vault: AgentVault;
  /** Embeds memories for retrieval; the saved index is rebuilt when it was made with another. */
  embedder: Embedder;
  /** The owner's user id (address or name): a user turn without a speaker is the owner's. */
  owner: string;
  /** The creator's user id, whose instructions go in the notebook like the owner's. */
  creator?: string;
  persona?: CharacterCard;
  /** The model's token counter (default {@link estimateTokens}). */
  countTokens?: TokenCounter;
  /** The metered chat path for background maintenance; without it, only pattern capture runs. */
  complete?: Complete;
  /** A chat segment closes after this many turns (default 12)… */
  segmentTurns?: number;
  /** …or at a silence this long, in ms (default 30 minutes), or when the agent turns to another user. */
  segmentGapMs?: number;
  signal?: AbortSignal;
}

/** What a recorded turn produced. */
export interface RecordedTurn extends RememberedTurn {
  /** Instructions captured into the notebook from it. */
  notebook: NotebookEntry[];
  /** A follow-up found in it by pattern. */
  followUp?: FollowUp;
}

/** A chat segment summarized by maintenance. */
export interface MaintenanceDone {
  task: "segment";
  /** The segment's turns, [from, to). */
  from: number;
  to: number;
  userId: string;
  /** Ids of the items written or replaced. */
  written: string[];
  profileFacts: number;
  followUps: number;
}

/** A maintenance job that changed nothing. */
export interface MaintenanceFailed {
  task: "segment";
  from: number;
  to: number;
  /** Failed tries of this segment so far; after {@link MAX_SEGMENT_TRIES} it is skipped. */
  tries: number;
  /** Whether the segment was given up on (it will not be summarized). */
  skipped: boolean;
  error: unknown;
}

export interface AgentMemoryEvents {
  "maintenance:done": CustomEvent<MaintenanceDone>;
  "maintenance:failed": CustomEvent<MaintenanceFailed>;
}

/** Tries of one segment before maintenance skips it, so a segment the model cannot read is not paid for forever. */
export const MAX_SEGMENT_TRIES = 3;

const FORMAT = 1;
const HOUR = 3_600_000;

interface ProfileDoc {
  v: number;
  users: Record<string, ProfileFact[]>;
}
interface SummariesDoc {
  v: number;
  /** The first turn not yet in a summarized (or skipped) segment. */
  cursor: number;
  items: MemoryItem[];
}
interface ItemsDoc<T> {
  v: number;
  items: T[];
}
interface WorkingDoc extends WorkingMemory {
  v: number;
}
interface IndexEnvelope {
  v: number;
  embedder: string;
  dimensions: number;
  index: Uint8Array;
}

/**
 * An agent's memory, opened over its vault.
 *
 * @example
 * const memory = await AgentMemory.open({ vault, embedder, owner: wallet.address, persona, complete, signal })
 * await memory.recordTurn({ role: "user", speaker: wallet.address, text: "Hi!", time: Date.now() })
 * const prompt = await assemblePrompt({ memory, listener: { userId: wallet.address, isOwner: true }, message: "Hi!", now: Date.now() })
 * await memory.close()
 */
export class AgentMemory extends TypedEventTarget<AgentMemoryEvents> {
  readonly owner: string;
  readonly creator: string | undefined;
  readonly persona: CharacterCard | undefined;
  readonly countTokens: TokenCounter;
  readonly complete: Complete | undefined;
  readonly segmentTurns: number;
  readonly segmentGapMs: number;
  readonly #vault: AgentVault;
  readonly #embedder: Embedder;
  readonly #index: MemoryIndex;
  readonly #turns: RememberedTurn[];
  readonly #profiles: Map<string, ProfileFact[]>;
  readonly #segments: MemoryItem[];
  #cursor: number;
  readonly #topics: MemoryItem[];
  readonly #notebook: NotebookEntry[];
  readonly #working: WorkingMemory;
  readonly #dirty = new Set<ItemKind>();
  readonly #maintenance: MaintenanceQueue;
  readonly #segmentTries = new Map<number, number>();
  #draining = false;
  /** After a failed segment, maintenance waits until the history reaches this many turns (or a reopen). */
  #retryAt = 0;
  #closed = false;
  /** Turns are recorded one at a time so that indexes follow the vault's order. */
  #recording: Promise<unknown> = Promise.resolve();

  private constructor(
    options: AgentMemoryOptions,
    state: {
      index: MemoryIndex;
      turns: RememberedTurn[];
      profiles: Map<string, ProfileFact[]>;
      segments: MemoryItem[];
      cursor: number;
      topics: MemoryItem[];
      notebook: NotebookEntry[];
      working: WorkingMemory;
    },
  ) {
    super();
    this.owner = options.owner;
    this.creator = options.creator;
    this.persona = options.persona;
    this.countTokens = options.countTokens ?? estimateTokens;
    this.complete = options.complete;
    this.segmentTurns = options.segmentTurns ?? 12;
    this.segmentGapMs = options.segmentGapMs ?? 30 * 60_000;
    this.#vault = options.vault;
    this.#embedder = options.embedder;
    this.#index = state.index;
    this.#turns = state.turns;
    this.#profiles = state.profiles;
    this.#segments = state.segments;
    this.#cursor = state.cursor;
    this.#topics = state.topics;
    this.#notebook = state.notebook;
    this.#working = state.working;
    this.#maintenance = new MaintenanceQueue((error) => this.#failed(error));
  }

  /**
   * Opens the memory: commits what the vault's journal holds, reads the turns and every memory kind, and
   * loads the saved retrieval index (rebuilt from turns and items when missing, unreadable or made with
   * another embedder; brought up to date when the vault moved on without it).
   *
   * @example
   * const memory = await AgentMemory.open({ vault, embedder: await loadWordVectorEmbedder(), owner: "alice" })
   * @throws MemoryItemFormatError for a memory item this version cannot read.
   */
  static async open(options: AgentMemoryOptions): Promise<AgentMemory> {
    const problems: string[] = [];
    if (typeof options.owner !== "string" || options.owner.length === 0) problems.push("owner is a user id");
    for (const [name, value] of [["segmentTurns", options.segmentTurns], ["segmentGapMs", options.segmentGapMs]] as const) {
      if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) problems.push(`${name} is a positive integer`);
    }
    if (problems.length > 0) throw new InvalidMemoryOptionError(problems);
    const signal = options.signal;
    const o = signal !== undefined ? { signal } : {};
    await options.vault.commit(o);
    const turns = await options.vault.turns(o);
    const read = async <T>(kind: ItemKind, check: (v: unknown) => v is T): Promise<T | undefined> => {
      const bytes = await options.vault.item(kind, o);
      if (bytes === undefined) return undefined;
      let value: unknown;
      try {
        value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      } catch {
        throw new MemoryItemFormatError(kind, "not UTF-8 JSON");
      }
      const version = (value as { v?: unknown })?.v;
      if (version !== FORMAT) throw new MemoryItemFormatError(kind, `format version ${JSON.stringify(version)}, this version reads ${FORMAT}`);
      if (!check(value)) throw new MemoryItemFormatError(kind, "not the shape this version writes");
      return value;
    };
    const profile = await read<ProfileDoc>("profile", (v): v is ProfileDoc => isRecordOf((v as ProfileDoc).users, Array.isArray));
    const summaries = await read<SummariesDoc>("summaries", (v): v is SummariesDoc => Number.isSafeInteger((v as SummariesDoc).cursor) && itemsOk(v));
    const topics = await read<ItemsDoc<MemoryItem>>("topics", itemsOk);
    const notebook = await read<ItemsDoc<NotebookEntry>>("notebook", (v): v is ItemsDoc<NotebookEntry> => itemsOk(v));
    const working = await read<WorkingDoc>("working-memory", (v): v is WorkingDoc => isWorkingMemory(v));
    const workingMemory: WorkingMemory = working === undefined ? emptyWorkingMemory() : { notes: working.notes, followUps: working.followUps, outreach: working.outreach };

    const outreachTurns = new Map(workingMemory.outreach.map((r) => [r.turn, r.userId]));
    const remembered: RememberedTurn[] = [];
    let lastUser: RememberedTurn | undefined;
    for (const [index, turn] of turns.entries()) {
      const r = rememberTurn(turn, index, options.owner, lastUser, outreachTurns.get(index));
      if (turn.role === "user") lastUser = r;
      remembered.push(r);
    }
    remembered.forEach((_, i) => (remembered[i] = withContext(remembered, i)));

    const { index, rebuilt } = await loadIndex(options.vault, options.embedder, o);
    const memory = new AgentMemory(options, {
      index,
      turns: remembered,
      profiles: new Map(Object.entries(profile?.users ?? {})),
      segments: summaries?.items ?? [],
      cursor: Math.min(summaries?.cursor ?? 0, remembered.length),
      topics: topics?.items ?? [],
      notebook: notebook?.items ?? [],
      working: workingMemory,
    });
    if ((await memory.#syncIndex(o)) || rebuilt) memory.#dirty.add("retrieval-index");
    memory.#scheduleMaintenance();
    return memory;
  }

  /** The retrieval index of every memory item (turns, summaries, topics, notebook, working notes). */
  get index(): MemoryIndex {
    return this.#index;
  }

  /** The history, oldest first. */
  get turns(): readonly RememberedTurn[] {
    return this.#turns;
  }

  /** The user's profile facts, oldest first (empty for a user never profiled). */
  profile(userId: string): readonly ProfileFact[] {
    return this.#profiles.get(userId) ?? [];
  }

  /** The notebook, oldest first. */
  get notebook(): readonly NotebookEntry[] {
    return this.#notebook;
  }

  /** Segment summaries, oldest first. */
  get segmentSummaries(): readonly MemoryItem[] {
    return this.#segments;
  }

  /** Topic summaries (one per topic and audience). */
  get topicSummaries(): readonly MemoryItem[] {
    return this.#topics;
  }

  /** Working memory: notes, follow-ups, outreach. Change it only through this class and `wake`. */
  get workingMemory(): Readonly<WorkingMemory> {
    return this.#working;
  }

  /** Whether some kind changed since the last save. */
  get dirty(): boolean {
    return this.#dirty.size > 0;
  }

  /** Every memory item that belongs in the retrieval index. */
  *items(): IterableIterator<MemoryItem> {
    for (const t of this.#turns) if (t.item !== undefined) yield t.item;
    yield* this.#segments;
    yield* this.#topics;
    yield* this.#notebook.map(plainItem);
    yield* this.#working.notes;
  }

  /**
   * Records a turn: journaled in the vault first (when this resolves the turn is durable: acknowledge it
   * then), then indexed; instructions from the owner or creator go in the notebook and a plan with a time
   * becomes a follow-up, both by pattern. Maintenance is scheduled, never awaited. A user turn without a
   * speaker is the owner's; `confidential` (or a cue such as "between us") keeps it to its speaker.
   * `to` names the user an agent turn is addressed to when it is not the last user who spoke: `wake` uses it
   * for an outreach, which working memory keeps across reloads (a reload otherwise takes the last user).
   *
   * @example
   * const { confidential } = await memory.recordTurn({ role: "user", speaker: "alice", text: "Between us, I'm moving.", time: Date.now() })
   * @throws MemoryClosedError after close; the vault's errors for an invalid turn (nothing is recorded).
   */
  async recordTurn(turn: Turn, options: { signal?: AbortSignal; to?: string } = {}): Promise<RecordedTurn> {
    if (this.#closed) throw new MemoryClosedError("record a turn");
    const run = this.#recording.then(() => this.#record(turn, options));
    this.#recording = run.catch(() => undefined);
    return run;
  }

  async #record(turn: Turn, options: { signal?: AbortSignal; to?: string }): Promise<RecordedTurn> {
    if (this.#closed) throw new MemoryClosedError("record a turn");
    const index = this.#turns.length;
    const lastUser = this.#turns.findLast((t) => t.turn.role === "user");
    const draft = rememberTurn(turn, index, this.owner, lastUser, options.to);
    // The detected confidence is stored with the turn, so a reload (or a later change of the cues) keeps it.
    const stored: Turn = draft.confidential ? { ...turn, confidential: true } : turn;
    const o = options.signal !== undefined ? { signal: options.signal } : {};
    await this.#vault.appendTurn(stored, o);
    this.#turns.push({ ...draft, turn: stored });
    const remembered = withContext(this.#turns, index);
    this.#turns[index] = remembered;

    const result: RecordedTurn = { ...remembered, notebook: [] };
    const upserts: MemoryItem[] = remembered.item === undefined ? [] : [remembered.item];
    // The turns just before this one gain it as a later neighbour: their context grows, their text does not,
    // so the index updates their context field without embedding them again.
    for (let j = Math.max(0, index - CONTEXT_TURNS); j < index; j++) {
      const before = withContext(this.#turns, j);
      if (before.item === undefined || before.item.context === this.#turns[j]!.item?.context) continue;
      this.#turns[j] = before;
      upserts.push(before.item);
    }
    if (turn.role === "user") {
      if (markAnswered(this.#working, remembered.partner)) this.#dirty.add("working-memory");
      const role = remembered.partner === this.owner ? "owner" : remembered.partner === this.creator ? "creator" : undefined;
      if (role !== undefined) {
        const previousReply = this.#turns.findLast((t) => t.turn.role === "assistant" && t.partner === remembered.partner)?.turn.text;
        const entries = notebookEntries({
          text: turn.text,
          givenBy: remembered.partner,
          role,
          turnIndex: index,
          time: turn.time,
          // Only asked confidence makes rules private; a turn private for its note alone keeps its rules public.
          confidential: turn.confidential === true || hasConfidenceCue(turn.text),
          ...(previousReply !== undefined && { previousReply }),
        });
        if (entries.length > 0) {
          this.#notebook.push(...entries);
          this.#dirty.add("notebook");
          upserts.push(...entries.map(plainItem));
          result.notebook = entries;
        }
      }
      const followUp = detectFollowUp({ text: turn.text, userId: remembered.partner, time: turn.time, turnIndex: index });
      if (followUp !== undefined) {
        this.#working.followUps.push(followUp);
        this.#dirty.add("working-memory");
        result.followUp = followUp;
      }
    }
    if (upserts.length > 0) {
      await this.#index.upsert(upserts, o);
      this.#dirty.add("retrieval-index");
    }
    this.#scheduleMaintenance();
    return result;
  }

  /**
   * Writes each changed memory kind and the retrieval index to the vault, then commits. Returns the new
   * head (publish its CID with AgentRegistry.setMemoryHead).
   *
   * @example
   * const head = await memory.save({ signal })
   */
  async save(options: { signal?: AbortSignal } = {}): Promise<Awaited<ReturnType<AgentVault["commit"]>>> {
    const o = options.signal !== undefined ? { signal: options.signal } : {};
    for (const kind of [...this.#dirty]) {
      // Cleared before the bytes are taken: a change made while this awaits marks the kind again.
      this.#dirty.delete(kind);
      try {
        await this.#vault.setItem(kind, this.#encode(kind), o);
      } catch (error) {
        this.#dirty.add(kind);
        throw error;
      }
    }
    return this.#vault.commit(o);
  }

  /**
   * Resolves when background maintenance has nothing queued or running (for tests and an orderly exit;
   * turns never wait for it).
   */
  async settled(): Promise<void> {
    await this.#maintenance.idle();
  }

  /**
   * Stops maintenance (its model call is aborted, its result dropped), saves what changed, and refuses
   * further turns. Closing twice is harmless.
   *
   * @example
   * await memory.close({ signal })
   */
  async close(options: { signal?: AbortSignal; save?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#maintenance.close();
    await this.#recording;
    if (options.save !== false) await this.save(options);
  }

  /**
   * Notes that the agent reached out on its own to `userId` with turn `turn` about `followUp`: the follow-up
   * is spent and no new outreach goes to that user until they speak. Used by `wake`.
   */
  markReachedOut(followUp: FollowUp, turn: number, time: number): void {
    const f = this.#working.followUps.find((x) => x.id === followUp.id);
    if (f !== undefined) f.firedAt = time;
    this.#working.outreach.push({ userId: followUp.userId, followUpId: followUp.id, turn, time, answered: false });
    this.#dirty.add("working-memory");
  }

  /** Corrects the turn an outreach was recorded as (another turn came in between); used by `wake`. */
  markOutreachTurn(outreach: Outreach, turn: number): void {
    const mine = this.#working.outreach.find((o) => o === outreach);
    if (mine === undefined) return;
    mine.turn = turn;
    this.#dirty.add("working-memory");
  }

  #encode(kind: ItemKind): Uint8Array {
    const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));
    switch (kind) {
      case "profile":
        return json({ v: FORMAT, users: Object.fromEntries(this.#profiles) } satisfies ProfileDoc);
      case "summaries":
        return json({ v: FORMAT, cursor: this.#cursor, items: this.#segments } satisfies SummariesDoc);
      case "topics":
        return json({ v: FORMAT, items: this.#topics } satisfies ItemsDoc<MemoryItem>);
      case "notebook":
        return json({ v: FORMAT, items: this.#notebook } satisfies ItemsDoc<NotebookEntry>);
      case "working-memory":
        return json({ v: FORMAT, ...this.#working } satisfies WorkingDoc);
      case "retrieval-index":
        return dagCbor.encode({
          v: FORMAT,
          embedder: this.#embedder.id,
          dimensions: this.#embedder.dimensions,
          index: this.#index.serialize(),
        } satisfies IndexEnvelope);
    }
  }

  /** Makes the index hold exactly the memory items: adds or replaces what differs, removes the rest. */
  async #syncIndex(o: { signal?: AbortSignal }): Promise<boolean> {
    const expected = new Map<string, MemoryItem>();
    for (const item of this.items()) expected.set(item.id, item);
    const stale: string[] = [];
    for (const item of this.#index.items()) if (!expected.has(item.id)) stale.push(item.id);
    const upserts = [...expected.values()].filter((item) => !sameItem(this.#index.get(item.id), item));
    if (stale.length > 0) this.#index.remove(stale);
    if (upserts.length > 0) await this.#index.upsert(upserts, o);
    return stale.length > 0 || upserts.length > 0;
  }

  /** The closed segments from the cursor on: runs of turns with one partner, cut at a silence or a length. */
  #closedSegments(): { from: number; to: number }[] {
    const segments: { from: number; to: number }[] = [];
    let from = this.#cursor;
    for (let i = from + 1; i <= this.#turns.length; i++) {
      const prev = this.#turns[i - 1]!;
      const next = this.#turns[i];
      const full = i - from >= this.segmentTurns;
      const cut = next !== undefined && (next.partner !== prev.partner || next.turn.time - prev.turn.time > this.segmentGapMs);
      if (full || cut) {
        segments.push({ from, to: i });
        from = i;
      }
    }
    return segments;
  }

  #scheduleMaintenance(): void {
    if (this.complete === undefined || this.#draining || this.#closed || this.#turns.length < this.#retryAt) return;
    if (this.#closedSegments().length === 0) return;
    this.#draining = true;
    this.#maintenance.enqueue(async (signal) => {
      try {
        await this.#drain(this.complete!, signal);
      } finally {
        this.#draining = false;
      }
      // Turns recorded while the model was busy may have closed more segments.
      if (!signal.aborted) this.#scheduleMaintenance();
    });
  }

  async #drain(complete: Complete, signal: AbortSignal): Promise<void> {
    for (const { from, to } of this.#closedSegments()) {
      if (signal.aborted) return;
      const turns = this.#turns.slice(from, to);
      const userId = turns[0]!.partner;
      let answer: MaintenanceAnswer;
      try {
        answer = await summarizeSegment(
          complete,
          {
            userId,
            agentName: this.persona?.name || "the agent",
            lines: turns
              .filter((t) => t.turn.role !== "system")
              .map((t) => ({ speaker: t.turn.role === "assistant" ? "agent" : t.partner, text: t.turn.text, time: t.turn.time })),
            knownProfile: this.profile(userId).map((f) => f.text),
            knownTopics: this.#topics.filter((t) => t.audience === "everyone" || t.speaker === userId).map((t) => ({ topic: t.topic ?? "", summary: t.text })),
          },
          { signal },
        );
      } catch (error) {
        if (signal.aborted) return;
        const tries = (this.#segmentTries.get(from) ?? 0) + 1;
        const skipped = tries >= MAX_SEGMENT_TRIES;
        if (skipped) {
          this.#segmentTries.delete(from);
          this.#cursor = to;
          this.#dirty.add("summaries");
        } else {
          this.#segmentTries.set(from, tries);
          // Not again at once (the model may be down, or this segment may confuse it): after another
          // segment's worth of turns.
          this.#retryAt = this.#turns.length + this.segmentTurns;
        }
        this.dispatchEvent(new CustomEvent("maintenance:failed", { detail: { task: "segment", from, to, tries, skipped, error } }));
        if (!skipped) return;
        continue;
      }
      this.#segmentTries.delete(from);
      const done = await this.#apply(answer, turns, from, to, signal);
      if (done === undefined) return;
      this.dispatchEvent(new CustomEvent("maintenance:done", { detail: done }));
    }
  }

  /** Applies a parsed answer to the state and the index, all at once (nothing awaits between the changes). */
  async #apply(answer: MaintenanceAnswer, turns: RememberedTurn[], from: number, to: number, signal: AbortSignal): Promise<MaintenanceDone | undefined> {
    if (signal.aborted || this.#closed) return undefined;
    const userId = turns[0]!.partner;
    const confidential = turns.some((t) => t.confidential);
    const audience: Audience = confidential ? "speaker" : "everyone";
    const time = turns.at(-1)!.turn.time;
    const sources = turns.filter((t) => t.item !== undefined).map((t) => t.item!.id);
    const upserts: MemoryItem[] = [];
    const removed: string[] = [];

    const segment: MemoryItem = {
      id: `segment:${from}-${to}`,
      kind: "segment-summary",
      text: answer.summary,
      speaker: userId,
      audience,
      time,
      importance: 0.6,
      sources,
    };
    this.#segments.push(segment);
    upserts.push(segment);

    for (const t of answer.topics) {
      const topic = topicKey(t.topic);
      const id = `topic:${confidential ? userId : "*"}:${topic}`;
      const item: MemoryItem = { id, kind: "topic-summary", text: t.summary, speaker: userId, audience, time, importance: 0.7, topic, sources };
      const old = this.#topics.findIndex((x) => x.id === id);
      // The latest conclusion wins: a newer summary of the topic replaces the older one outright.
      if (old >= 0) this.#topics.splice(old, 1, item);
      else this.#topics.push(item);
      upserts.push(item);
    }

    const facts = [...this.profile(userId)];
    for (const f of answer.profile) {
      const same = facts.findIndex((x) => normalize(x.text) === normalize(f.text));
      if (same >= 0) facts.splice(same, 1);
      facts.push({ kind: f.kind, text: f.text, time, sources });
    }
    if (answer.profile.length > 0) this.#profiles.set(userId, facts.slice(-PROFILE_FACTS_PER_USER));

    if (answer.followUps.length > 0) {
      // The model read the whole segment: its follow-ups replace those the pattern found in it, unasked.
      const inSegment = new Set(sources);
      this.#working.followUps = this.#working.followUps.filter((f) => !(f.origin === "pattern" && f.firedAt === undefined && inSegment.has(f.source)));
      answer.followUps.forEach((f, n) =>
        this.#working.followUps.push({
          id: `follow-up:${from}-${to}:${n}`,
          userId,
          question: f.question,
          context: f.context,
          due: time + Math.round(f.dueInHours * HOUR),
          created: time,
          source: sources.at(-1) ?? `turn:${to - 1}`,
          origin: "model",
        }),
      );
    }
    const notes: MemoryItem[] = [
      ...answer.selfNotes.map((text, n): MemoryItem => ({
        id: `note:${from}-${to}:self:${n}`,
        kind: "working-memory",
        text,
        // The agent's view of itself, unless it came from a talk in confidence: then it stays with that user.
        speaker: confidential ? userId : "agent",
        audience,
        time,
        importance: 0.6,
        sources,
      })),
      ...answer.userNotes.map((text, n): MemoryItem => ({
        id: `note:${from}-${to}:user:${n}`,
        kind: "working-memory",
        text,
        speaker: userId,
        audience: "speaker",
        time,
        importance: 0.6,
        sources,
      })),
    ];
    removed.push(...addNotes(this.#working, notes));
    upserts.push(...notes.filter((n) => this.#working.notes.includes(n)));

    this.#cursor = to;
    for (const kind of ["summaries", "topics", "profile", "working-memory", "retrieval-index"] as const) this.#dirty.add(kind);
    if (removed.length > 0) this.#index.remove(removed);
    // Embedding may take a while; the items are already in memory, and a reload's sync re-adds any the
    // index missed if it is closed meanwhile.
    await this.#index.upsert(upserts, { signal });
    return {
      task: "segment",
      from,
      to,
      userId,
      written: upserts.map((i) => i.id),
      profileFacts: answer.profile.length,
      followUps: answer.followUps.length,
    };
  }

  #failed(error: unknown): void {
    this.dispatchEvent(
      new CustomEvent("maintenance:failed", { detail: { task: "segment", from: this.#cursor, to: this.#cursor, tries: 0, skipped: false, error } }),
    );
  }
}

/**
 * The memory view of one turn. `addressee` overrides the partner of an agent turn (an outreach).
 */
function rememberTurn(turn: Turn, index: number, owner: string, lastUser: RememberedTurn | undefined, addressee: string | undefined): RememberedTurn {
  if (turn.role === "user") {
    const speaker = turn.speaker ?? owner;
    // The owner's "remember that…" notes stay with the owner (notebook.ts), and so does the turn that gave
    // them, or retrieval would hand the same words to others.
    const confidential = turn.confidential === true || hasConfidenceCue(turn.text) || (speaker === owner && captureInstructions(turn.text).some((c) => !c.rule));
    return {
      index,
      turn,
      partner: speaker,
      confidential,
      item: {
        id: `turn:${index}`,
        kind: "turn",
        text: turn.text,
        speaker,
        audience: confidential ? "speaker" : "everyone",
        time: turn.time,
        importance: confidential ? 0.7 : 0.5,
      },
    };
  }
  const partner = addressee ?? lastUser?.partner ?? owner;
  if (turn.role === "system") return { index, turn, partner, confidential: turn.confidential === true };
  // The agent's answer to something said in confidence may repeat it: it stays with the same user. Its
  // speaker is then that user (mayHear keeps "speaker" items to their speaker), so it is marked "agent"
  // only when anyone may hear it.
  const confidential = turn.confidential === true || (addressee === undefined && lastUser?.confidential === true);
  return {
    index,
    turn,
    partner,
    confidential,
    item: {
      id: `turn:${index}`,
      kind: "turn",
      text: turn.text,
      speaker: confidential ? partner : "agent",
      audience: confidential ? "speaker" : "everyone",
      time: turn.time,
      importance: 0.4,
    },
  };
}

/** How many turns on each side give a turn its retrieval context (LoCoMo: 2 beat 1 and 3 on both halves). */
const CONTEXT_TURNS = 2;

/**
 * Turn `i` with the text of its neighbours as retrieval context: up to two turns before it and two after (those
 * recorded so far), oldest first. A reply ("yes, in May!") is then found by the question it answers, and a
 * question by its answer (LoCoMo, bench/memory-locomo.ts: ±2 turns 0.764 hybrid recall@10 against 0.737 for
 * the previous two alone). A neighbour counts only when whoever may hear this turn may hear it too, in either
 * direction, or a confidence would be searchable through a public turn.
 */
function withContext(turns: readonly RememberedTurn[], i: number): RememberedTurn {
  const r = turns[i]!;
  const own = r.item;
  if (own === undefined) return r;
  const neighbours = [...turns.slice(Math.max(0, i - CONTEXT_TURNS), i), ...turns.slice(i + 1, i + 1 + CONTEXT_TURNS)];
  const texts = neighbours
    .map((n) => n.item)
    .filter((n): n is MemoryItem => n !== undefined)
    .filter((n) => n.audience === "everyone" || (n.audience === own.audience && n.speaker === own.speaker))
    .map((n) => n.text);
  const { context: _old, ...plain } = own;
  return { ...r, item: texts.length > 0 ? { ...plain, context: texts.join("\n") } : plain };
}

async function loadIndex(vault: AgentVault, embedder: Embedder, o: { signal?: AbortSignal }): Promise<{ index: MemoryIndex; rebuilt: boolean }> {
  const bytes = await vault.item("retrieval-index", o);
  if (bytes !== undefined) {
    try {
      const envelope = dagCbor.decode(bytes) as IndexEnvelope;
      if (envelope?.v === FORMAT && envelope.embedder === embedder.id && envelope.dimensions === embedder.dimensions && envelope.index instanceof Uint8Array) {
        return { index: MemoryIndex.deserialize(envelope.index, { embedder }), rebuilt: false };
      }
    } catch {
      // An index is derived data: one this version cannot read is rebuilt from the turns and items.
    }
  }
  return { index: MemoryIndex.create({ embedder }), rebuilt: true };
}

function plainItem(entry: NotebookEntry): MemoryItem {
  const { rule: _rule, givenBy: _givenBy, ...item } = entry;
  return item;
}

function sameItem(a: MemoryItem | undefined, b: MemoryItem): boolean {
  return (
    a !== undefined &&
    a.kind === b.kind &&
    a.text === b.text &&
    a.speaker === b.speaker &&
    a.audience === b.audience &&
    a.time === b.time &&
    a.importance === b.importance &&
    a.topic === b.topic &&
    a.context === b.context
  );
}

function normalize(text: string): string {
  return text.toLowerCase().replace(/\s+/g, " ").replace(/[.!]+$/, "").trim();
}

function isRecordOf(value: unknown, check: (v: unknown) => boolean): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value) && Object.values(value).every(check);
}

function itemsOk(value: unknown): value is ItemsDoc<MemoryItem> {
  const items = (value as ItemsDoc<MemoryItem>)?.items;
  return Array.isArray(items) && items.every((i) => typeof i?.id === "string" && typeof i.text === "string" && typeof i.speaker === "string");
}
