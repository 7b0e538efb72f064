import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Wallet } from "ethers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryBlockStore } from "../../test/helpers/memory-block-store.js";
import { generateAgentKey, ownerKeyFromSigner, type AgentRef } from "../vault/crypto.js";
import { TurnJournal } from "../vault/journal.js";
import { AgentVault, type Turn } from "../vault/vault.js";
import { assemblePrompt, HISTORY_WINDOW, type AssembledPrompt } from "./assemble.js";
import { MemoryClosedError } from "./errors.js";
import { AgentMemory, type AgentMemoryOptions, type MaintenanceDone, type MaintenanceFailed } from "./memory.js";
import { parseCharacterCard } from "./persona/index.js";
import type { Embedder } from "./retrieval/embedder.js";
import { estimateTokens, mayHear, type Complete, type Listener, type TokenCounter } from "./types.js";
import { wake } from "./wake.js";

const deployment = { chainId: 31337n, registry: "0x5FbDB2315678afecb367f032d93F642f64180aa3" };
const agent: AgentRef = { ...deployment, agentId: 6n };
const HOUR = 3_600_000;
const T0 = Date.UTC(2025, 0, 6, 9);
const OWNER = "0xowner";
const ALICE: Listener = { userId: "alice", isOwner: false };
const BOB: Listener = { userId: "bob", isOwner: false };
const OWNER_L: Listener = { userId: OWNER, isOwner: true };

/** Deterministic bag-of-words vectors: enough for the engine's tests; real embedders are tested by their owner. */
function bagOfWords(id = "test-bag-of-words-v1", dimensions = 64): Embedder {
  return {
    id,
    dimensions,
    async embed(texts) {
      return texts.map((text) => {
        const v = new Float32Array(dimensions);
        for (const word of text.toLowerCase().match(/[a-z0-9]+/g) ?? []) {
          let h = 2166136261;
          for (const c of word) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
          v[(h >>> 0) % dimensions]! += 1;
        }
        const norm = Math.hypot(...v);
        if (norm > 0) for (let i = 0; i < dimensions; i++) v[i]! /= norm;
        return v;
      });
    },
  };
}

const card = parseCharacterCard({
  spec: "chara_card_v2",
  spec_version: "2.0",
  data: {
    name: "Mira",
    description: "{{char}} is a patient, curious companion who remembers the little things.",
    personality: "warm, dry humour",
    scenario: "",
    first_mes: "Hi!",
    mes_example: "",
    creator_notes: "",
    system_prompt: "You are {{char}}.",
    post_history_instructions: "",
    alternate_greetings: [],
    tags: [],
    creator: "tester",
    character_version: "1",
    extensions: {},
  },
});

let root: string;
let ownerKey: Uint8Array;
const journals: TurnJournal[] = [];
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "soulmesh-memory-"));
  ownerKey = await ownerKeyFromSigner(Wallet.createRandom(), deployment);
});
afterAll(async () => {
  for (const j of journals) await j.close().catch(() => undefined);
  await rm(root, { recursive: true, force: true });
});

/** A vault on an in-memory block store with a journal on disk; `reopen` is the same agent after a restart. */
interface Place {
  store: MemoryBlockStore;
  agentKey: Uint8Array;
  dir: string;
}
let places = 0;
function newPlace(): Place {
  return { store: new MemoryBlockStore(), agentKey: generateAgentKey(), dir: join(root, `journal-${places++}`) };
}
async function openVault(place: Place): Promise<AgentVault> {
  const journal = new TurnJournal({ ...agent, dir: place.dir, key: place.agentKey });
  await journal.open();
  journals.push(journal);
  return AgentVault.open({ store: place.store, journal, agent, agentKey: place.agentKey, ownerKey });
}
async function closeJournals(): Promise<void> {
  while (journals.length > 0) await journals.pop()!.close();
}
async function openMemory(place: Place, options: Partial<AgentMemoryOptions> = {}): Promise<AgentMemory> {
  await closeJournals();
  return AgentMemory.open({ vault: await openVault(place), embedder: bagOfWords(), owner: OWNER, persona: card, ...options });
}

const said = (speaker: string, text: string, time: number): Turn => ({ role: "user", speaker, text, time });
const reply = (text: string, time: number): Turn => ({ role: "assistant", text, time });

/** Every text a provider would see. */
const promptText = (p: AssembledPrompt): string => p.messages.map((m) => m.content).join("\n");

/** A scripted model: answers in order, then the last answer again; records the prompts it saw. */
function scripted(answers: string[]): Complete & { prompts: string[] } {
  const prompts: string[] = [];
  let i = 0;
  const complete = async (request: { prompt: string }) => {
    prompts.push(request.prompt);
    return answers[Math.min(i++, answers.length - 1)]!;
  };
  return Object.assign(complete, { prompts });
}

function events(memory: AgentMemory): { done: MaintenanceDone[]; failed: MaintenanceFailed[] } {
  const out = { done: [] as MaintenanceDone[], failed: [] as MaintenanceFailed[] };
  memory.addEventListener("maintenance:done", (e) => out.done.push(e.detail));
  memory.addEventListener("maintenance:failed", (e) => out.failed.push(e.detail));
  return out;
}

/** A small deterministic random generator, so a failing case can be replayed from its seed. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    s ^= s + Math.imul(s ^ (s >>> 7), s | 61);
    return ((s ^ (s >>> 14)) >>> 0) / 4294967296;
  };
}
const WORDS = "the cat sat on a mat hospital garden coffee music travel paris exam dog rain book film work sister peanut sailing".split(" ");

describe("the prompt budget", () => {
  it("holds for any history and budget, keeps whole items and the latest turns contiguous", async () => {
    const rand = random(0x5eed);
    const counters: [string, TokenCounter][] = [
      ["estimate", estimateTokens],
      // Costs more for the whole than for its pieces (convex in length), as a real tokenizer may: the
      // per-piece fill overshoots and only the final check of the whole keeps the budget.
      ["convex", (text) => Math.ceil((text.length / 4) * (1 + text.length / 3000))],
    ];
    for (const [name, countTokens] of counters) {
      const summaries = JSON.stringify({
        summary: "They talked about travel and a cat.",
        topics: [{ topic: "travel", summary: "Planning a trip to Paris in spring." }],
        profile: [
          { kind: "fact", text: "Has a cat called Miso." },
          { kind: "preference", text: "Prefers tea to coffee, strongly, in the mornings especially." },
        ],
        userNotes: ["Seems tired lately."],
      });
      const memory = await openMemory(newPlace(), { countTokens, complete: scripted([summaries]), segmentTurns: 10 });
      let time = T0;
      let cases = 0;
      let secrets = 0;
      for (let round = 0; round < 12; round++) {
        const add = Math.floor(rand() * (round === 0 ? 3 : 40));
        for (let i = 0; i < add; i++) {
          const who = [OWNER, "alice", "bob"][Math.floor(rand() * 3)]!;
          const words = Array.from({ length: 1 + Math.floor(rand() * (rand() < 0.1 ? 300 : 40)) }, () => WORDS[Math.floor(rand() * WORDS.length)]);
          // A secret and the agent's answer to it carry a marker found nowhere else.
          const secret = rand() < 0.15 ? `Between us, SECRET${secrets++} ` : "";
          time += Math.floor(rand() * 2 * HOUR);
          await memory.recordTurn(said(who, `${secret}${words.join(" ")}`, time));
          if (rand() < 0.7) await memory.recordTurn(reply(`${secret === "" ? "" : `SECRET${secrets - 1} `}${words.slice(0, 12).join(" ")}`, time + 1000));
        }
        await memory.settled();
        for (let k = 0; k < 6; k++) {
          const listener = [ALICE, BOB, OWNER_L][Math.floor(rand() * 3)]!;
          const budget = Math.floor(rand() * (rand() < 0.3 ? 60 : 3000));
          const message = `tell me about ${WORDS[Math.floor(rand() * WORDS.length)]}`;
          const p = await assemblePrompt({ memory, listener, message, budget, personaBudget: 200, now: time + HOUR });
          cases++;
          const label = `${name} round ${round} case ${k} budget ${budget}`;
          const history = p.messages.slice(p.messages[0]?.role === "system" ? 1 : 0, -1);
          const counted = (p.memoryText.length > 0 ? countTokens(p.memoryText) : 0) + history.reduce((s, m) => s + countTokens(m.content), 0);
          expect(counted, label).toBe(p.tokens);
          expect(p.tokens, label).toBeLessThanOrEqual(budget);
          expect(p.persona.tokens, label).toBeLessThanOrEqual(200);
          expect(p.messages.at(-1), label).toEqual({ role: "user", content: message });
          const system = [p.persona.text, p.memoryText].filter((s) => s.length > 0).join("\n\n");
          if (system.length > 0) expect(p.messages[0], label).toEqual({ role: "system", content: system });
          // The history kept is the newest audible turns, without a gap.
          const audible = memory.turns.filter((t) => t.item !== undefined && mayHear(t.item, listener));
          const latest = audible.slice(audible.length - history.length).map((t) => ({
            role: t.turn.role,
            content: t.turn.role === "user" && t.partner !== listener.userId ? `${t.partner}: ${t.turn.text}` : t.turn.text,
          }));
          expect(history, label).toEqual(latest);
          if (history.length < Math.min(audible.length, HISTORY_WINDOW)) expect(p.dropped.map((d) => d.id), label).toContain(`turn:${audible.at(-history.length - 1)!.index}`);
          // Nobody hears another user's confidence.
          for (const t of memory.turns) {
            const marker = /SECRET\d+/.exec(t.turn.text)?.[0];
            if (marker !== undefined && t.partner !== listener.userId) expect(promptText(p), label).not.toMatch(new RegExp(`${marker}\\b`));
          }
          // Whole items: every memory line in the prompt is a whole line of a candidate.
          expect(new Set(p.included).size, label).toBe(p.included.length);
          for (const d of p.dropped) expect(p.included, label).not.toContain(d.id);
        }
      }
      expect(cases).toBe(72);
      await memory.close();
    }
  });

  it("drops by rank: the listener's profile and the latest turn before older history", async () => {
    const complete = scripted([
      JSON.stringify({ summary: "Intro.", profile: [{ kind: "fact", text: "Alice is a nurse in Lyon." }] }),
    ]);
    const memory = await openMemory(newPlace(), { complete, segmentTurns: 2 });
    for (let i = 0; i < 40; i++) {
      await memory.recordTurn(said("alice", `message number ${i} about gardening and the weather in spring`, T0 + i * 60_000));
      await memory.recordTurn(reply(`answer number ${i} about flowers`, T0 + i * 60_000 + 1000));
    }
    await memory.settled();
    const p = await assemblePrompt({ memory, listener: ALICE, message: "hello", budget: 120, now: T0 + 50 * HOUR });
    expect(p.memoryText).toContain("Alice is a nurse in Lyon.");
    expect(p.messages.at(-2)?.content).toBe("answer number 39 about flowers");
    expect(p.dropped.length).toBeGreaterThan(0);
    expect(p.tokens).toBeLessThanOrEqual(120);
    // Same inputs, same prompt.
    expect(await assemblePrompt({ memory, listener: ALICE, message: "hello", budget: 120, now: T0 + 50 * HOUR })).toEqual(p);
    await memory.close();
  });
});

describe("the privacy rule", () => {
  it("keeps what alice said in confidence (and the agent's answer, and its summary) out of bob's prompt", async () => {
    const complete = scripted([
      JSON.stringify({
        summary: "Alice confided she is interviewing at Globex.",
        topics: [{ topic: "career", summary: "Alice is interviewing at Globex." }],
        profile: [{ kind: "fact", text: "Interviewing at Globex." }],
        userNotes: ["Alice is nervous about Globex."],
        selfNotes: ["I promised Alice to keep Globex quiet."],
      }),
      JSON.stringify({ summary: "Bob talked about sailing.", profile: [{ kind: "preference", text: "Loves sailing." }] }),
    ]);
    const memory = await openMemory(newPlace(), { complete, segmentTurns: 50 });
    const a = await memory.recordTurn(said("alice", "Between us, I'm interviewing at Globex on Friday.", T0));
    expect(a.confidential).toBe(true);
    await memory.recordTurn(reply("Your Globex secret is safe with me.", T0 + 1000));
    await memory.recordTurn(said("bob", "I went sailing. Does anyone work at Globex?", T0 + 2000));
    await memory.recordTurn(reply("Sailing sounds lovely.", T0 + 3000));
    await memory.recordTurn(said("alice", "Thanks.", T0 + 4000)); // closes bob's segment
    await memory.settled();
    expect(memory.segmentSummaries).toHaveLength(2);
    // Bob's turn follows the agent's confidential answer: it must not carry that answer as retrieval context,
    // or the confidence would be found through a public turn.
    const bobTurn = [...memory.items()].find((i) => i.kind === "turn" && i.speaker === "bob");
    expect(bobTurn).toBeDefined();
    expect(bobTurn!.context ?? "").not.toContain("secret");
    // Later turns join an earlier turn's context as they arrive (the two after it, here the reply and "Thanks.").
    expect(bobTurn!.context).toBe("Sailing sounds lovely.\nThanks.");
    const sailingReply = [...memory.items()].find((i) => i.kind === "turn" && i.text === "Sailing sounds lovely.");
    expect(sailingReply!.context).toBe("I went sailing. Does anyone work at Globex?\nThanks.");
    // Two earlier turns give context when both may be heard: the reply and the question it answers.
    const thanks = [...memory.items()].find((i) => i.kind === "turn" && i.text === "Thanks.");
    expect(thanks!.context).toBe("I went sailing. Does anyone work at Globex?\nSailing sounds lovely.");

    const message = "Who is interviewing at Globex?";
    const forBob = await assemblePrompt({ memory, listener: BOB, message, now: T0 + HOUR });
    const bobSees = promptText(forBob).replace(message, "").replace("Does anyone work at Globex?", "");
    expect(bobSees).not.toContain("Globex");
    expect(promptText(forBob)).toContain("Loves sailing.");
    const forOwner = await assemblePrompt({ memory, listener: OWNER_L, message, now: T0 + HOUR });
    expect(promptText(forOwner).replace(message, "").replace("Does anyone work at Globex?", "")).not.toContain("Globex");

    const forAlice = await assemblePrompt({ memory, listener: ALICE, message, now: T0 + HOUR });
    const aliceSees = promptText(forAlice);
    expect(aliceSees).toContain("Between us, I'm interviewing at Globex on Friday.");
    expect(aliceSees).toContain("Your Globex secret is safe with me.");
    expect(aliceSees).toContain("Interviewing at Globex.");
    expect(aliceSees).not.toContain("Loves sailing.");
    await memory.close();
  });

  it("gives a turn the two turns after it as context when they come, without embedding it again, never a later confidence", async () => {
    let embedded = 0;
    const base = bagOfWords();
    const counting: Embedder = {
      id: base.id,
      dimensions: base.dimensions,
      embed: async (texts, o) => {
        embedded += texts.length;
        return base.embed(texts, o);
      },
    };
    const place = newPlace();
    let memory = await openMemory(place, { embedder: counting });
    await memory.recordTurn(said("alice", "Did you paint anything this week?", T0));
    await memory.recordTurn(reply("A sunset over the lake.", T0 + 1000));
    await memory.recordTurn(said("alice", "Lovely, send me a photo.", T0 + 2000));
    // Three turns, three texts embedded: growing the first two turns' context embedded nothing.
    expect(embedded).toBe(3);
    const context = (text: string, m = memory): string | undefined => m.index.get([...m.items()].find((i) => i.text === text)!.id)?.context;
    expect(context("Did you paint anything this week?")).toBe("A sunset over the lake.\nLovely, send me a photo.");
    expect(context("A sunset over the lake.")).toBe("Did you paint anything this week?\nLovely, send me a photo.");
    const found = await memory.index.searchBm25("sunset", { k: 5, listener: ALICE });
    expect(found.map((h) => h.item.text)).toContain("Did you paint anything this week?");

    // A public turn followed by a confidence: the confidence (and the agent's answer to it) stays out of the
    // public turns' context, which bob may search.
    await memory.recordTurn({ ...said("alice", "My PIN is 4821.", T0 + 3000), confidential: true });
    await memory.recordTurn(reply("I'll keep your PIN to myself.", T0 + 4000));
    expect(embedded).toBe(5);
    for (const item of memory.index.items()) {
      if (item.audience === "everyone") expect(item.context ?? "").not.toMatch(/PIN/);
    }
    expect(context("My PIN is 4821.")).toBe("A sunset over the lake.\nLovely, send me a photo.\nI'll keep your PIN to myself.");
    expect(await memory.index.searchBm25("4821", { k: 5, listener: BOB })).toEqual([]);

    // The grown contexts are saved with the index and come back without embedding anything.
    await memory.close();
    embedded = 0;
    memory = await openMemory(place, { embedder: counting });
    expect(embedded).toBe(0);
    expect(context("Did you paint anything this week?")).toBe("A sunset over the lake.\nLovely, send me a photo.");
    await memory.close();
  });

  it("honours the explicit flag, and keeps it in the vault across a reload", async () => {
    const place = newPlace();
    let memory = await openMemory(place);
    await memory.recordTurn({ ...said("alice", "My PIN is 4821.", T0), confidential: true });
    await memory.close();
    memory = await openMemory(place);
    expect(memory.turns[0]?.confidential).toBe(true);
    const p = await assemblePrompt({ memory, listener: BOB, message: "What is the PIN?", now: T0 + HOUR });
    expect(promptText(p)).not.toContain("4821");
    await memory.close();
  });
});

describe("the notebook", () => {
  it("captures the owner's instructions at once and brings them back when relevant, long after", async () => {
    const memory = await openMemory(newPlace());
    const r = await memory.recordTurn(said(OWNER, "Remember that my sister Ana is allergic to peanuts. Never use emojis.", T0));
    expect(r.notebook.map((n) => n.text)).toEqual(["Remember: my sister Ana is allergic to peanuts.", "Never use emojis."]);
    expect(r.notebook.every((n) => n.givenBy === OWNER)).toBe(true);
    const notOwner = await memory.recordTurn(said("bob", "Remember that I like jazz. Always call me captain.", T0 + 1));
    expect(notOwner.notebook).toEqual([]);
    for (let i = 0; i < 120; i++) {
      await memory.recordTurn(said(OWNER, `Small talk ${i} about the weather, the train and the office.`, T0 + HOUR + i * 60_000));
      await memory.recordTurn(reply(`Reply ${i} about rain.`, T0 + HOUR + i * 60_000 + 1000));
    }
    const p = await assemblePrompt({ memory, listener: OWNER_L, message: "I'm cooking for Ana tonight, any ideas?", budget: 600, now: T0 + 10 * HOUR });
    expect(p.memoryText).toContain("allergic to peanuts");
    expect(p.memoryText).toContain("Never use emojis.");
    expect(p.memoryText).toContain("- [2025-01-06, note from your owner] Remember: my sister Ana is allergic to peanuts.");
    expect(p.messages.slice(1, -1).map((m) => m.content)).not.toContain("Remember that my sister Ana is allergic to peanuts. Never use emojis.");
    // The rule reaches other users; the owner's note does not.
    const forBob = await assemblePrompt({ memory, listener: BOB, message: "What is Ana allergic to?", budget: 600, now: T0 + 10 * HOUR });
    expect(forBob.memoryText).toContain("Never use emojis.");
    expect(promptText(forBob)).not.toContain("peanuts");
    await memory.close();
  });

  it("records what 'don't do that again' is about", async () => {
    const memory = await openMemory(newPlace());
    await memory.recordTurn(said(OWNER, "Tell me a joke.", T0));
    await memory.recordTurn(reply("Why did the accountant cross the road? To audit the chicken.", T0 + 1));
    const r = await memory.recordTurn(said(OWNER, "Don't do that again.", T0 + 2));
    expect(r.notebook[0]?.text).toContain("audit the chicken");
    await memory.close();
  });
});

describe("wake", () => {
  it("follows up once when due, does not nag while unanswered, and not again after a reload", async () => {
    const place = newPlace();
    let memory = await openMemory(place);
    const r = await memory.recordTurn(said("alice", "I'm going to the hospital tomorrow.", T0));
    expect(r.followUp?.due).toBe(T0 + 30 * HOUR);
    await memory.recordTurn(reply("Good luck!", T0 + 1000));
    await memory.recordTurn(said("alice", "And I have an exam in 3 days.", T0 + 2000));
    await memory.save();

    expect(await wake({ memory, now: T0 + 2 * HOUR })).toBeUndefined();
    const model = scripted(["How did it go at the hospital, Alice?"]);
    const first = await wake({ memory, now: T0 + 31 * HOUR, complete: model });
    expect(first).toMatchObject({ userId: "alice", text: "How did it go at the hospital, Alice?", written: true, turn: 3 });
    expect(model.prompts[0]).toContain("hospital");
    expect(memory.turns[3]).toMatchObject({ partner: "alice", turn: { role: "assistant", text: "How did it go at the hospital, Alice?" } });
    expect(await wake({ memory, now: T0 + 32 * HOUR })).toBeUndefined(); // fired once
    // The exam falls due, but alice has not answered the hospital message: no second message.
    expect(await wake({ memory, now: T0 + 4 * 24 * HOUR })).toBeUndefined();

    await memory.close();
    memory = await openMemory(place);
    expect(memory.turns[3]?.partner).toBe("alice");
    expect(await wake({ memory, now: T0 + 4 * 24 * HOUR })).toBeUndefined();

    await memory.recordTurn(said("alice", "It went fine, thanks!", T0 + 4 * 24 * HOUR + 1));
    const second = await wake({ memory, now: T0 + 4 * 24 * HOUR + 2 });
    expect(second).toMatchObject({ userId: "alice", written: false });
    expect(second?.text).toContain("exam");
    expect(await wake({ memory, now: T0 + 9 * 24 * HOUR })).toBeUndefined();
    await memory.close();
    memory = await openMemory(place);
    expect(await wake({ memory, now: T0 + 9 * 24 * HOUR })).toBeUndefined();
    expect(memory.workingMemory.followUps.every((f) => f.firedAt !== undefined)).toBe(true);
    await memory.close();
  });

  it("sends the plain question when the model fails", async () => {
    const memory = await openMemory(newPlace());
    await memory.recordTurn(said("bob", "We're moving house this weekend.", T0));
    const failing: Complete = async () => {
      throw new Error("no provider");
    };
    const msg = await wake({ memory, now: T0 + 7 * 24 * HOUR, complete: failing });
    expect(msg?.written).toBe(false);
    expect(msg?.text).toContain("moving house");
    await memory.close();
  });
});

describe("reloading from the vault", () => {
  it("keeps turns, items, notebook, follow-ups and the index", async () => {
    const place = newPlace();
    const complete = scripted([
      JSON.stringify({
        summary: "Alice talked about her cat Miso.",
        topics: [{ topic: "pets", summary: "Alice has a cat called Miso." }],
        profile: [{ kind: "fact", text: "Has a cat called Miso." }],
        followUps: [{ question: "How is Miso after the vet?", context: "Miso goes to the vet", dueInHours: 48 }],
        selfNotes: ["I like hearing about cats."],
      }),
      JSON.stringify({ summary: "The owner asked for kindness about pets." }),
    ]);
    let memory = await openMemory(place, { complete, segmentTurns: 4 });
    await memory.recordTurn(said("alice", "My cat Miso goes to the vet tomorrow.", T0));
    await memory.recordTurn(reply("Poor Miso!", T0 + 1));
    await memory.recordTurn(said(OWNER, "Always be kind about pets.", T0 + 2));
    await memory.recordTurn(reply("Of course.", T0 + 3));
    await memory.recordTurn(said("alice", "Thanks", T0 + 4));
    await memory.settled();
    expect(complete.prompts).toHaveLength(2); // alice's segment, then the owner's (a new partner closes a segment)
    const before = {
      turns: memory.turns.map((t) => t.turn),
      segments: memory.segmentSummaries,
      topics: memory.topicSummaries,
      notebook: memory.notebook,
      working: memory.workingMemory,
      profile: memory.profile("alice"),
      size: memory.index.size,
      search: (await memory.index.search("cat vet", { k: 5, listener: ALICE, now: T0 })).map((h) => h.item.id),
    };
    expect(before.segments.map((s) => s.id)).toEqual(["segment:0-2", "segment:2-4"]);
    expect(before.working.followUps.map((f) => f.origin)).toEqual(["model"]); // replaced the pattern's
    expect(before.size).toBe(5 + 2 + 1 + 1 + 1); // turns, segments, topic, notebook rule, self note
    await memory.close();

    memory = await openMemory(place, { complete, segmentTurns: 4 });
    expect(memory.dirty).toBe(false); // the saved index was loaded, not rebuilt
    expect({
      turns: memory.turns.map((t) => t.turn),
      segments: memory.segmentSummaries,
      topics: memory.topicSummaries,
      notebook: memory.notebook,
      working: memory.workingMemory,
      profile: memory.profile("alice"),
      size: memory.index.size,
      search: (await memory.index.search("cat vet", { k: 5, listener: ALICE, now: T0 })).map((h) => h.item.id),
    }).toEqual(before);
    await memory.close({ save: false });

    // Another embedder: the index is rebuilt from turns and items.
    memory = await openMemory(place, { embedder: bagOfWords("another-embedder-v1", 32) });
    expect(memory.dirty).toBe(true);
    expect(memory.index.size).toBe(before.size);
    await memory.close();
  });

  it("brings the index up to date with turns journaled but never saved (a crash)", async () => {
    const place = newPlace();
    let memory = await openMemory(place);
    await memory.recordTurn(said("alice", "I adopted a parrot named Kiwi.", T0));
    await memory.save();
    await memory.recordTurn(said("alice", "Kiwi can say hello now.", T0 + 1));
    // No save, no close: the process dies. The journal holds the second turn.
    memory = await openMemory(place);
    expect(memory.turns.map((t) => t.turn.text)).toEqual(["I adopted a parrot named Kiwi.", "Kiwi can say hello now."]);
    expect(memory.index.get("turn:1")?.text).toBe("Kiwi can say hello now.");
    await memory.close();
    await expect(memory.recordTurn(said("alice", "late", T0 + 2))).rejects.toBeInstanceOf(MemoryClosedError);
  });
});

describe("background maintenance", () => {
  it("writes summaries and the profile; a newer topic summary replaces the older", async () => {
    const complete = scripted([
      JSON.stringify({
        summary: "Alice is looking for a job.",
        topics: [{ topic: "Job search", summary: "Alice applied to three bakeries." }],
        profile: [{ kind: "trait", text: "Determined." }],
      }),
      JSON.stringify({
        summary: "Alice got the job.",
        topics: [{ topic: "job search", summary: "Alice was hired by the bakery on Rue Verte." }],
        profile: [{ kind: "fact", text: "Works at the bakery on Rue Verte." }],
      }),
    ]);
    const memory = await openMemory(newPlace(), { complete, segmentTurns: 2 });
    const log = events(memory);
    await memory.recordTurn(said("alice", "I applied to three bakeries.", T0));
    await memory.recordTurn(reply("Fingers crossed!", T0 + 1));
    await memory.recordTurn(said("alice", "I got hired on Rue Verte!", T0 + 2 * HOUR));
    await memory.settled();
    expect(log.done).toHaveLength(1);
    expect(memory.topicSummaries.map((t) => t.text)).toEqual(["Alice applied to three bakeries."]);
    await memory.recordTurn(reply("Congratulations!", T0 + 2 * HOUR + 1));
    await memory.recordTurn(said("alice", "Thanks!", T0 + 2 * HOUR + 2));
    await memory.settled();
    expect(log.done.map((d) => [d.from, d.to])).toEqual([[0, 2], [2, 4]]);
    expect(memory.segmentSummaries.map((s) => s.text)).toEqual(["Alice is looking for a job.", "Alice got the job."]);
    expect(memory.topicSummaries).toHaveLength(1);
    expect(memory.topicSummaries[0]).toMatchObject({ id: "topic:*:job-search", topic: "job-search", text: "Alice was hired by the bakery on Rue Verte." });
    expect(memory.index.get("topic:*:job-search")?.text).toBe("Alice was hired by the bakery on Rue Verte.");
    expect(memory.profile("alice").map((f) => f.text)).toEqual(["Determined.", "Works at the bakery on Rue Verte."]);
    expect(complete.prompts[1]).toContain("job-search: Alice applied to three bakeries."); // the model saw the old conclusion
    const p = await assemblePrompt({ memory, listener: ALICE, message: "How is the new job?", now: T0 + 3 * HOUR });
    expect(p.memoryText).toContain("Works at the bakery on Rue Verte.");
    await memory.close();
  });

  it("changes nothing on a garbage answer and reports it", async () => {
    const memory = await openMemory(newPlace(), { complete: scripted(["Sure! They talked about stuff. {not json"]), segmentTurns: 2 });
    const log = events(memory);
    await memory.recordTurn(said("alice", "I love hiking.", T0));
    await memory.recordTurn(reply("Me too!", T0 + 1));
    await memory.recordTurn(said("alice", "Let's go.", T0 + 2));
    await memory.settled();
    expect(log.done).toEqual([]);
    expect(log.failed).toHaveLength(1);
    expect(log.failed[0]).toMatchObject({ from: 0, to: 2, tries: 1, skipped: false });
    expect((log.failed[0]!.error as Error).name).toBe("MaintenanceAnswerError");
    expect(memory.segmentSummaries).toEqual([]);
    expect(memory.topicSummaries).toEqual([]);
    expect(memory.profile("alice")).toEqual([]);
    expect(memory.workingMemory.notes).toEqual([]);
    expect(memory.index.size).toBe(3);
    await memory.close();
  });

  it("never makes a turn or a prompt wait for the model, and close stops a hanging call", async () => {
    let started = 0;
    let aborted = false;
    const hanging: Complete = ({ signal }) => {
      started++;
      signal?.addEventListener("abort", () => (aborted = true));
      return new Promise<string>(() => undefined);
    };
    const memory = await openMemory(newPlace(), { complete: hanging, segmentTurns: 2 });
    await memory.recordTurn(said("alice", "one", T0));
    await memory.recordTurn(reply("two", T0 + 1));
    await memory.recordTurn(said("alice", "three", T0 + 2));
    await new Promise((r) => setTimeout(r, 10));
    expect(started).toBe(1); // the model is now busy, forever
    const t = performance.now();
    for (let i = 0; i < 10; i++) await memory.recordTurn(said("alice", `more ${i}`, T0 + 10 + i));
    const p = await assemblePrompt({ memory, listener: ALICE, message: "hi", now: T0 + HOUR });
    expect(performance.now() - t).toBeLessThan(2000);
    expect(p.messages.at(-2)?.content).toBe("more 9");
    expect(started).toBe(1); // concurrency 1: nothing else started meanwhile
    await memory.close();
    expect(aborted).toBe(true);
  });
});
