import { describe, expect, it } from "vitest";
import { MaintenanceAnswerError } from "./errors.js";
import { MaintenanceQueue, parseMaintenanceAnswer, topicKey } from "./maintenance.js";
import { captureInstructions, hasConfidenceCue, notebookEntries } from "./notebook.js";
import { detectFollowUp, dueFollowUps, emptyWorkingMemory, markAnswered } from "./working-memory.js";

const HOUR = 3_600_000;

describe("confidence cues", () => {
  it("finds the usual ways of asking for confidence, and not ordinary talk", () => {
    for (const text of [
      "Between us, I'm leaving my job.",
      "Don't tell anyone, but I'm pregnant",
      "Please keep this secret: I failed the exam",
      "This is confidential.",
      "Off the record, the boss is leaving.",
      "just between you and me, I hate cilantro",
    ]) {
      expect(hasConfidenceCue(text), text).toBe(true);
    }
    for (const text of ["We went to the zoo between two meetings", "Tell me a secret recipe", "I told everyone about the party"]) {
      expect(hasConfidenceCue(text), text).toBe(false);
    }
  });
});

describe("notebook capture", () => {
  it("captures remember / always / never / don't do that again, one entry per sentence", () => {
    const found = captureInstructions("Hi! Remember that my sister Ana is allergic to peanuts. Never use emojis. Always answer in French.");
    expect(found).toEqual([
      { text: "Remember: my sister Ana is allergic to peanuts.", rule: false },
      { text: "Never use emojis.", rule: true },
      { text: "Always answer in French.", rule: true },
    ]);
  });

  it("quotes the reply that 'don't do that again' refers to", () => {
    const [entry] = captureInstructions("Ugh. Don't do that again!", "Here is a limerick about your boss");
    expect(entry?.rule).toBe(true);
    expect(entry?.text).toContain("Here is a limerick about your boss");
  });

  it("ignores questions and statements that only look like instructions", () => {
    expect(captureInstructions("Do you remember when we met? I always walk my dog at six. Never mind.")).toEqual([]);
    expect(captureInstructions("Remember when we went hiking?")).toEqual([]);
  });

  it("keeps the owner's notes to the owner, rules for everyone, and confidential ones to the owner", () => {
    const base = { givenBy: "0xowner", turnIndex: 3, time: 10 };
    const [note, rule] = notebookEntries({ ...base, text: "Remember that I hate mornings. Never swear.", role: "owner", confidential: false });
    expect(note).toMatchObject({ id: "notebook:3:0", audience: "owner", rule: false, givenBy: "0xowner", speaker: "owner", sources: ["turn:3"] });
    expect(rule).toMatchObject({ id: "notebook:3:1", audience: "everyone", rule: true });
    const [secret] = notebookEntries({ ...base, text: "Never mention my ex.", role: "owner", confidential: true });
    expect(secret?.audience).toBe("owner");
    const [creatorNote] = notebookEntries({ ...base, text: "Remember that your favourite colour is teal.", role: "creator", confidential: false });
    expect(creatorNote).toMatchObject({ audience: "everyone", speaker: "creator" });
  });
});

describe("follow-ups", () => {
  it("turns a plan with a time into a follow-up due after it", () => {
    const f = detectFollowUp({ text: "Ugh. I'm going to the hospital tomorrow.", userId: "alice", time: 1000, turnIndex: 7 });
    expect(f).toMatchObject({ id: "follow-up:7", userId: "alice", due: 1000 + 30 * HOUR, source: "turn:7", origin: "pattern" });
    expect(f?.question).toContain("hospital");
    expect(detectFollowUp({ text: "I have an exam in 3 days", userId: "a", time: 0, turnIndex: 0 })?.due).toBe(3 * 24 * HOUR + 6 * HOUR);
    expect(detectFollowUp({ text: "Are you free tomorrow?", userId: "a", time: 0, turnIndex: 0 })).toBeUndefined();
    expect(detectFollowUp({ text: "The weather was nice", userId: "a", time: 0, turnIndex: 0 })).toBeUndefined();
  });

  it("is due once, and not while the user has an unanswered outreach", () => {
    const memory = emptyWorkingMemory();
    memory.followUps.push(detectFollowUp({ text: "I'm flying home tomorrow", userId: "alice", time: 0, turnIndex: 1 })!);
    expect(dueFollowUps(memory, 29 * HOUR)).toEqual([]);
    expect(dueFollowUps(memory, 31 * HOUR).map((f) => f.id)).toEqual(["follow-up:1"]);
    memory.outreach.push({ userId: "alice", followUpId: "other", turn: 5, time: 0, answered: false });
    expect(dueFollowUps(memory, 31 * HOUR)).toEqual([]);
    expect(markAnswered(memory, "alice")).toBe(true);
    expect(dueFollowUps(memory, 31 * HOUR)).toHaveLength(1);
    memory.followUps[0]!.firedAt = 31 * HOUR;
    expect(dueFollowUps(memory, 40 * HOUR)).toEqual([]);
  });
});

describe("maintenance answers", () => {
  it("reads strict JSON, tolerating a fence around it, with missing lists empty", () => {
    const answer = parseMaintenanceAnswer('```json\n{"summary":"They talked about cats.","topics":[{"topic":"Pets","summary":"Alice has a cat"}]}\n```');
    expect(answer).toEqual({
      summary: "They talked about cats.",
      topics: [{ topic: "Pets", summary: "Alice has a cat" }],
      profile: [],
      followUps: [],
      selfNotes: [],
      userNotes: [],
    });
  });

  it("refuses prose, broken JSON and wrong shapes as a whole", () => {
    for (const bad of [
      "Sure! Here is the summary: they talked.",
      '{"summary": "x", ',
      '{"topics": []}',
      '{"summary":"ok","profile":[{"kind":"mood","text":"happy"}]}',
      '{"summary":"ok","followUps":[{"question":"q","context":"c","dueInHours":-5}]}',
    ]) {
      expect(() => parseMaintenanceAnswer(bad), bad).toThrow(MaintenanceAnswerError);
    }
  });

  it("keys topics case- and punctuation-insensitively", () => {
    expect(topicKey("Job Search!")).toBe("job-search");
    expect(topicKey("  job   search ")).toBe("job-search");
    expect(topicKey("???")).toBe("general");
  });

  it("runs jobs one at a time and stops a hanging job on close", async () => {
    const errors: unknown[] = [];
    const queue = new MaintenanceQueue((e) => errors.push(e));
    let running = 0;
    let most = 0;
    const order: number[] = [];
    for (let i = 0; i < 4; i++) {
      queue.enqueue(async () => {
        running++;
        most = Math.max(most, running);
        await new Promise((r) => setTimeout(r, 5));
        order.push(i);
        running--;
        if (i === 2) throw new Error("boom");
      });
    }
    await queue.idle();
    expect(order).toEqual([0, 1, 2, 3]);
    expect(most).toBe(1);
    expect(errors).toHaveLength(1);
    let aborted = false;
    queue.enqueue(async (signal) => {
      signal.addEventListener("abort", () => (aborted = true));
      await new Promise(() => undefined); // never settles, and ignores the signal
    });
    await new Promise((r) => setTimeout(r, 5));
    await queue.close();
    expect(aborted).toBe(true);
    expect(errors).toHaveLength(1);
  });
});
