import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidSessionIdError,
  InvalidSessionKeyError,
  InvalidStateBindingError,
  SessionStateError,
  StateStoreStoppedError,
  StateTooLargeError,
} from "./errors.js";
import {
  bindingId,
  canonicalBinding,
  SessionStateStore,
  stateFileId,
  type StateBinding,
  type StateDiscardedDetail,
} from "./state-store.js";

const MODEL = `0x${"11".repeat(32)}`;
const OTHER_MODEL = `0x${"12".repeat(32)}`;
const ADAPTER_A = `0x${"aa".repeat(32)}`;
const ADAPTER_B = `0x${"bb".repeat(32)}`;
const TTL = 60_000;
const HEADER_BYTES = 104;

const binding: StateBinding = {
  modelSha256: MODEL,
  contextSize: 4096,
  adapters: [
    { sha256: ADAPTER_A, scale: 0.75 },
    { sha256: ADAPTER_B, scale: 1 },
  ],
};

/** A plaintext "state" that is easy to spot: a marker repeated, then random bytes. */
function fakeState(marker = "PLAINTEXT-KV-STATE"): Buffer {
  return Buffer.concat([Buffer.from(marker.repeat(2000)), randomBytes(50_000)]);
}

const tokens = Array.from({ length: 300 }, (_, i) => 70_000 + i);

let dir: string;
let staging: string;
let clock: number;
let store: SessionStateStore;
let discarded: StateDiscardedDetail[];
let key: Uint8Array;

function writer(bytes: Buffer, seen: string[] = []): (p: string) => Promise<void> {
  return async (p) => {
    seen.push(p);
    await writeFile(p, bytes);
  };
}

function reader(into: { bytes?: Buffer; paths: string[] }): (p: string) => Promise<void> {
  return async (p) => {
    into.paths.push(p);
    into.bytes = await readFile(p);
  };
}

async function stagedFiles(): Promise<string[]> {
  const out: string[] = [];
  for (const folder of await readdir(staging)) out.push(...(await readdir(join(staging, folder))));
  out.push(...(await readdir(join(dir, ".staging"))));
  return out;
}

async function flipByte(path: string, at: number): Promise<void> {
  const bytes = await readFile(path);
  bytes[at] = bytes[at]! ^ 0x01;
  await writeFile(path, bytes);
}

beforeEach(async () => {
  const root = await mkdtemp(join(tmpdir(), "sm-state-"));
  dir = join(root, "states");
  staging = join(root, "shm");
  await mkdir(staging);
  clock = 1_700_000_000_000;
  key = randomBytes(32);
  discarded = [];
  store = new SessionStateStore({ dir, ttlMs: TTL, stagingDir: staging, now: () => clock });
  store.addEventListener("discard", (e) => discarded.push(e.detail));
  await store.start();
});

afterEach(async () => {
  await store.stop();
  await rm(join(dir, ".."), { recursive: true, force: true });
});

describe("bindingId", () => {
  it("ignores adapter order, hash case and zero-scale adapters", () => {
    const reordered = { ...binding, adapters: [...binding.adapters].reverse() };
    const upper = { ...binding, modelSha256: `0x${"AB".repeat(32)}` };
    const lower = { ...binding, modelSha256: `0x${"ab".repeat(32)}` };
    const withZero = { ...binding, adapters: [...binding.adapters, { sha256: `0x${"cc".repeat(32)}`, scale: 0 }] };
    expect(bindingId(reordered)).toBe(bindingId(binding));
    expect(bindingId(upper)).toBe(bindingId(lower));
    expect(bindingId(withZero)).toBe(bindingId(binding));
    expect(bindingId(binding)).toMatch(/^0x[0-9a-f]{64}$/);
  });

  it("compares scales as the float32 llama.cpp gets", () => {
    const at = (scale: number): string => bindingId({ ...binding, adapters: [{ sha256: ADAPTER_A, scale }] });
    expect(at(0.1)).toBe(at(0.1 + 1e-12));
    expect(at(0.1)).not.toBe(at(0.2));
    expect(at(0.5)).not.toBe(at(-0.5));
    expect(canonicalBinding({ ...binding, adapters: [{ sha256: ADAPTER_A, scale: 0.5 }] })).toContain(
      `adapter ${ADAPTER_A} 3f000000`,
    );
  });

  it("changes with the model, the context size, an adapter or a scale", () => {
    const ids = new Set([
      bindingId(binding),
      bindingId({ ...binding, modelSha256: OTHER_MODEL }),
      bindingId({ ...binding, contextSize: 8192 }),
      bindingId({ ...binding, adapters: [binding.adapters[0]!] }),
      bindingId({ ...binding, adapters: [binding.adapters[0]!, { sha256: ADAPTER_B, scale: 0.9 }] }),
    ]);
    expect(ids.size).toBe(5);
  });

  it("refuses malformed bindings", () => {
    expect(() => bindingId({ ...binding, modelSha256: "11".repeat(32) })).toThrow(InvalidStateBindingError);
    expect(() => bindingId({ ...binding, contextSize: 0 })).toThrow(InvalidStateBindingError);
    expect(() => bindingId({ ...binding, adapters: [{ sha256: ADAPTER_A, scale: Number.NaN }] })).toThrow(
      InvalidStateBindingError,
    );
    expect(() => bindingId({ ...binding, adapters: [{ sha256: ADAPTER_A, scale: 1e300 }] })).toThrow(
      InvalidStateBindingError,
    );
    expect(() =>
      bindingId({
        ...binding,
        adapters: [
          { sha256: ADAPTER_A, scale: 0.5 },
          { sha256: ADAPTER_A.toUpperCase().replace("0X", "0x"), scale: 0.7 },
        ],
      }),
    ).toThrow(/listed twice/);
  });
});

describe("SessionStateStore", () => {
  it("round-trips a state and its tokens, through a staging file that is then removed", async () => {
    const state = fakeState();
    const written: string[] = [];
    const { bytes } = await store.save("s1", key, binding, tokens, writer(state, written));
    expect(bytes).toBe((await stat(store.statePath("s1"))).size);
    expect(bytes).toBe(HEADER_BYTES + tokens.length * 4 + state.length + 16);
    expect(store.totalBytes).toBe(bytes);
    expect(store.has("s1")).toBe(true);
    expect(store.has("s2")).toBe(false);

    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    const restored = await store.restore("s1", key, binding, reader(got));
    expect(restored?.tokens).toEqual(tokens);
    expect(restored?.savedAt).toBe(clock);
    expect(got.bytes?.equals(state)).toBe(true);
    for (const p of [...written, ...got.paths]) {
      expect(p.startsWith(staging)).toBe(true);
      expect(existsSync(p)).toBe(false);
    }
    expect(await stagedFiles()).toEqual([]);
    // Restoring keeps the file: the session may be evicted again before its next save.
    expect(existsSync(store.statePath("s1"))).toBe(true);
  });

  it("round-trips an empty token list", async () => {
    await store.save("s1", key, binding, [], writer(Buffer.from("x")));
    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    expect((await store.restore("s1", key, binding, reader(got)))?.tokens).toEqual([]);
    expect(got.bytes?.toString()).toBe("x");
  });

  it("keeps no plaintext on disk: not the state, not the tokens, not the session id", async () => {
    const sessionId = "session-visible-name";
    await store.save(sessionId, key, binding, tokens, writer(fakeState("SECRET-KV")));
    const names = await readdir(dir);
    expect(names.filter((n) => n.endsWith(".state"))).toEqual([`${stateFileId(sessionId)}.state`]);
    expect(names.join()).not.toContain(sessionId);
    const file = await readFile(store.statePath(sessionId));
    expect(file.includes(Buffer.from("SECRET-KV"))).toBe(false);
    const tokenBytes = Buffer.alloc(16);
    for (let i = 0; i < 4; i++) tokenBytes.writeUInt32LE(tokens[i]!, i * 4);
    expect(file.includes(tokenBytes)).toBe(false);
    expect(file.includes(Buffer.from(sessionId))).toBe(false);
    expect((await stat(store.statePath(sessionId))).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
  });

  it("refuses a wrong key, and deletes the state", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    const read: { paths: string[] } = { paths: [] };
    await expect(store.restore("s1", randomBytes(32), binding, reader(read))).rejects.toThrow(SessionStateError);
    expect(read.paths).toEqual([]);
    expect(existsSync(store.statePath("s1"))).toBe(false);
    expect(discarded.map((d) => d.reason)).toEqual(["undecryptable"]);
    expect(await store.restore("s1", key, binding, reader(read))).toBeUndefined();
    expect(await stagedFiles()).toEqual([]);
  });

  it.each([
    ["the magic", 0, "corrupt"],
    ["the salt", 10, "undecryptable"],
    ["the nonce", 45, "undecryptable"],
    ["the token count", HEADER_BYTES - 1, "undecryptable"],
    ["the encrypted tokens", HEADER_BYTES + 3, "undecryptable"],
    ["the encrypted state", HEADER_BYTES + tokens.length * 4 + 1000, "undecryptable"],
    ["the tag", -1, "undecryptable"],
  ])("refuses a file with a byte of %s altered", async (_what, offset, reason) => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    const path = store.statePath("s1");
    await flipByte(path, offset >= 0 ? offset : (await stat(path)).size + offset);
    const read: { paths: string[] } = { paths: [] };
    const err = await store.restore("s1", key, binding, reader(read)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SessionStateError);
    expect((err as Error).name).toBe("SessionStateError");
    expect(read.paths).toEqual([]);
    expect(existsSync(path)).toBe(false);
    expect(discarded.map((d) => d.reason)).toEqual([reason]);
    expect(await stagedFiles()).toEqual([]);
  });

  it("refuses an altered save time (authenticated header) and a truncated file", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    await flipByte(store.statePath("s1"), 90); // low byte of savedAt
    await expect(store.restore("s1", key, binding, async () => {})).rejects.toThrow(SessionStateError);

    await store.save("s2", key, binding, tokens, writer(fakeState()));
    const path = store.statePath("s2");
    await writeFile(path, (await readFile(path)).subarray(0, HEADER_BYTES + 100));
    await expect(store.restore("s2", key, binding, async () => {})).rejects.toThrow(SessionStateError);
    expect(existsSync(path)).toBe(false);
  });

  it("treats an altered binding id as another binding: deleted, never loaded", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    await flipByte(store.statePath("s1"), 60);
    const read: { paths: string[] } = { paths: [] };
    expect(await store.restore("s1", key, binding, reader(read))).toBeUndefined();
    expect(read.paths).toEqual([]);
    expect(discarded.map((d) => d.reason)).toEqual(["binding-mismatch"]);
  });

  it("refuses another session's file renamed to this one, even under the same key", async () => {
    await store.save("alice", key, binding, tokens, writer(fakeState()));
    await copyFile(store.statePath("alice"), store.statePath("mallory"));
    await expect(store.restore("mallory", key, binding, async () => {})).rejects.toThrow(SessionStateError);
    expect((await store.restore("alice", key, binding, async () => {}))?.tokens).toEqual(tokens);
  });

  it.each<[string, StateBinding]>([
    ["another model", { ...binding, modelSha256: OTHER_MODEL }],
    ["another context size", { ...binding, contextSize: 2048 }],
    ["another adapter", { ...binding, adapters: [binding.adapters[0]!, { sha256: `0x${"cd".repeat(32)}`, scale: 1 }] }],
    ["an adapter less", { ...binding, adapters: [binding.adapters[0]!] }],
    ["another scale", { ...binding, adapters: [{ sha256: ADAPTER_A, scale: 0.5 }, binding.adapters[1]!] }],
  ])("never restores under %s, and deletes the state", async (_what, other) => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    const read: { paths: string[] } = { paths: [] };
    expect(await store.restore("s1", key, other, reader(read))).toBeUndefined();
    expect(read.paths).toEqual([]);
    expect(existsSync(store.statePath("s1"))).toBe(false);
    expect(discarded).toEqual([expect.objectContaining({ sessionId: "s1", reason: "binding-mismatch" })]);
    expect(store.totalBytes).toBe(0);
  });

  it("restores under the same adapters listed in another order", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    const reordered = { ...binding, adapters: [...binding.adapters].reverse() };
    expect((await store.restore("s1", key, reordered, async () => {}))?.tokens).toEqual(tokens);
  });

  it("expires states after the TTL, on restore and by the sweep", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    await store.save("s2", key, binding, tokens, writer(fakeState()));
    clock += TTL - 1;
    expect(store.has("s1")).toBe(true);
    expect(await store.sweep()).toBe(0);
    clock += 1;
    expect(store.has("s1")).toBe(false);
    expect(await store.restore("s1", key, binding, async () => {})).toBeUndefined();
    expect(existsSync(store.statePath("s1"))).toBe(false);
    expect(await store.sweep()).toBe(1);
    expect(existsSync(store.statePath("s2"))).toBe(false);
    expect(discarded.map((d) => d.reason)).toEqual(["expired", "expired"]);
    expect(store.totalBytes).toBe(0);
  });

  it("restarts the TTL on each save", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    clock += TTL - 1;
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    clock += TTL - 1;
    expect((await store.restore("s1", key, binding, async () => {}))?.tokens).toEqual(tokens);
  });

  it("deletes a state", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    expect(await store.delete("s1")).toBe(true);
    expect(await store.delete("s1")).toBe(false);
    expect(store.has("s1")).toBe(false);
    expect(store.totalBytes).toBe(0);
    expect(await store.restore("s1", key, binding, async () => {})).toBeUndefined();
    expect(discarded).toEqual([]);
  });

  it("keeps hostile session ids inside the folder, and refuses empty, long or unprintable ones", async () => {
    for (const id of ["../x", "../../../../tmp/evil", "/etc/passwd", "a/b\\c", "é🙂", "x".repeat(256)]) {
      await store.save(id, key, binding, tokens, writer(Buffer.from(id)));
      expect(store.statePath(id).startsWith(`${dir}/`)).toBe(true);
      const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
      await store.restore(id, key, binding, reader(got));
      expect(got.bytes?.toString()).toBe(id);
    }
    expect((await readdir(dir)).filter((n) => n !== ".staging").every((n) => /^[0-9a-f]{64}\.state$/.test(n))).toBe(
      true,
    );
    expect(existsSync(join(dir, "..", "x"))).toBe(false);
    for (const id of ["", "x".repeat(257), "a\nb", "a\u0000b", "\ud800"]) {
      await expect(store.save(id, key, binding, tokens, writer(Buffer.from("s")))).rejects.toThrow(
        InvalidSessionIdError,
      );
      await expect(store.restore(id, key, binding, async () => {})).rejects.toThrow(InvalidSessionIdError);
      expect(() => store.has(id)).toThrow(InvalidSessionIdError);
    }
  });

  it("refuses keys that are not 32 bytes", async () => {
    for (const bad of [new Uint8Array(0), new Uint8Array(16), new Uint8Array(33)]) {
      await expect(store.save("s1", bad, binding, tokens, writer(Buffer.from("s")))).rejects.toThrow(
        InvalidSessionKeyError,
      );
      await expect(store.restore("s1", bad, binding, async () => {})).rejects.toThrow(InvalidSessionKeyError);
    }
    expect(await readdir(dir)).toEqual([".staging"]);
  });

  it("removes the staging file when write throws, and keeps the previous state restorable", async () => {
    const old = fakeState("OLD");
    await store.save("s1", key, binding, tokens, writer(old));
    const written: string[] = [];
    const failing = async (p: string): Promise<void> => {
      written.push(p);
      await writeFile(p, "half a state");
      throw new Error("saveStateToFile failed");
    };
    await expect(store.save("s1", key, binding, [1, 2, 3], failing)).rejects.toThrow("saveStateToFile failed");
    expect(existsSync(written[0]!)).toBe(false);
    expect(await stagedFiles()).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.endsWith(".tmp"))).toEqual([]);
    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    expect((await store.restore("s1", key, binding, reader(got)))?.tokens).toEqual(tokens);
    expect(got.bytes?.equals(old)).toBe(true);
  });

  it("replaces a state on a new save", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState("OLD")));
    const fresh = fakeState("NEW");
    await store.save("s1", key, binding, [...tokens, 5], writer(fresh));
    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    expect((await store.restore("s1", key, binding, reader(got)))?.tokens).toEqual([...tokens, 5]);
    expect(got.bytes?.equals(fresh)).toBe(true);
    expect((await readdir(dir)).sort()).toEqual([".staging", `${stateFileId("s1")}.state`]);
  });

  it("removes the staging file when read throws, and discards the unloadable state", async () => {
    await store.save("s1", key, binding, tokens, writer(fakeState()));
    const read: string[] = [];
    const failing = async (p: string): Promise<void> => {
      read.push(p);
      throw new Error("The given state file is too large for the current context size");
    };
    const err = await store.restore("s1", key, binding, failing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SessionStateError);
    expect((err as Error).cause).toBeInstanceOf(Error);
    expect(existsSync(read[0]!)).toBe(false);
    expect(existsSync(store.statePath("s1"))).toBe(false);
    expect(discarded.map((d) => d.reason)).toEqual(["unloadable"]);
    expect(await stagedFiles()).toEqual([]);
  });

  it("honours an aborted signal: before, during write, during read", async () => {
    const aborted = AbortSignal.abort();
    await expect(
      store.save("s1", key, binding, tokens, writer(fakeState()), { signal: aborted }),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(existsSync(store.statePath("s1"))).toBe(false);

    const old = fakeState("OLD");
    await store.save("s1", key, binding, tokens, writer(old));
    const duringWrite = new AbortController();
    await expect(
      store.save(
        "s1",
        key,
        binding,
        [9],
        async (p) => {
          await writeFile(p, fakeState("NEW"));
          duringWrite.abort();
        },
        { signal: duringWrite.signal },
      ),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(await stagedFiles()).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.endsWith(".tmp"))).toEqual([]);

    await expect(store.restore("s1", key, binding, async () => {}, { signal: aborted })).rejects.toMatchObject({
      name: "AbortError",
    });
    const duringRead = new AbortController();
    await expect(
      store.restore(
        "s1",
        key,
        binding,
        async () => {
          duringRead.abort();
          throw duringRead.signal.reason;
        },
        { signal: duringRead.signal },
      ),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(await stagedFiles()).toEqual([]);
    // An abort is not the state's fault: it is kept, and still the old one.
    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    expect((await store.restore("s1", key, binding, reader(got)))?.tokens).toEqual(tokens);
    expect(got.bytes?.equals(old)).toBe(true);
    expect(discarded).toEqual([]);
  });

  it("serializes calls on one session", async () => {
    const results = await Promise.all([
      store.save("s1", key, binding, [1], writer(Buffer.from("one"))),
      store.restore("s1", key, binding, async () => {}),
      store.save("s1", key, binding, [1, 2], writer(Buffer.from("two"))),
      store.restore("s1", key, binding, async () => {}),
      store.delete("s1"),
      store.restore("s1", key, binding, async () => {}),
    ]);
    expect(results[1]).toMatchObject({ tokens: [1] });
    expect(results[3]).toMatchObject({ tokens: [1, 2] });
    expect(results[4]).toBe(true);
    expect(results[5]).toBeUndefined();
  });

  it("evicts the oldest states above maxBytes", async () => {
    await store.stop();
    const state = fakeState();
    const size = HEADER_BYTES + tokens.length * 4 + state.length + 16;
    store = new SessionStateStore({ dir, ttlMs: TTL, stagingDir: staging, now: () => clock, maxBytes: 2 * size });
    store.addEventListener("discard", (e) => discarded.push(e.detail));
    await store.start();
    for (const id of ["a", "b", "c"]) {
      await store.save(id, key, binding, tokens, writer(state));
      clock += 1;
    }
    expect(store.has("a")).toBe(false);
    expect(store.has("b") && store.has("c")).toBe(true);
    expect(store.totalBytes).toBe(2 * size);
    expect(discarded).toEqual([expect.objectContaining({ reason: "evicted", fileId: stateFileId("a") })]);
  });

  // Issue 14, attack 3: a payer opening and abandoning sessions (each evicted session leaves a state file until its
  // TTL) must not fill the provider's disk. The store stays under maxBytes after every save, and what it deletes
  // first is the state least recently used (saved or restored), never one a call is using.
  it("attack 3: saved KV states stay within maxBytes, least recently used deleted first", async () => {
    await store.stop();
    const state = fakeState();
    const size = HEADER_BYTES + tokens.length * 4 + state.length + 16;
    store = new SessionStateStore({ dir, ttlMs: TTL, stagingDir: staging, now: () => clock, maxBytes: 3 * size });
    store.addEventListener("discard", (e) => discarded.push(e.detail));
    await store.start();
    const onDisk = async (): Promise<number> => {
      let total = 0;
      for (const name of await readdir(dir)) if (name.endsWith(".state")) total += (await stat(join(dir, name))).size;
      return total;
    };
    for (const id of ["a", "b", "c"]) {
      await store.save(id, key, binding, tokens, writer(state));
      clock += 1;
    }
    // "a" is the oldest save but was used last: "b" is the least recently used.
    expect((await store.restore("a", key, binding, async () => {}))?.tokens).toEqual(tokens);
    clock += 1;
    await store.save("d", key, binding, tokens, writer(state));
    clock += 1;
    expect(["a", "b", "c", "d"].map((id) => store.has(id))).toEqual([true, false, true, true]);
    expect(discarded).toEqual([expect.objectContaining({ reason: "evicted", fileId: stateFileId("b") })]);

    // The attacker's many abandoned sessions: the total never passes the limit, on disk as in the accounting.
    for (let i = 0; i < 12; i++) {
      await store.save(`abandoned-${i}`, key, binding, tokens, writer(state));
      clock += 1;
      expect(store.totalBytes).toBeLessThanOrEqual(3 * size);
      expect(await onDisk()).toBe(store.totalBytes);
    }
    expect(["abandoned-9", "abandoned-10", "abandoned-11"].every((id) => store.has(id))).toBe(true);

    // The least recently used state is being saved again (its session was evicted once more): in use, so the save
    // that overflows the store deletes the next one instead of waiting for it or deleting it under the call.
    let writing!: () => void;
    const started = new Promise<void>((resolve) => (writing = resolve));
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const resaving = store.save("abandoned-9", key, binding, tokens, async (p) => {
      writing();
      await held;
      await writeFile(p, state);
    });
    await started;
    discarded = [];
    await store.save("e", key, binding, tokens, writer(state));
    clock += 1;
    expect(discarded).toEqual([expect.objectContaining({ reason: "evicted", fileId: stateFileId("abandoned-10") })]);
    expect(store.totalBytes).toBeLessThanOrEqual(3 * size);
    release();
    await resaving;
    expect(["abandoned-9", "abandoned-11", "e"].map((id) => store.has(id))).toEqual([true, true, true]);
    expect(store.totalBytes).toBe(3 * size);

    // A restart rebuilds the accounting from the folder and enforces a lower limit, oldest first.
    await store.stop();
    discarded = [];
    store = new SessionStateStore({ dir, ttlMs: TTL, stagingDir: staging, now: () => clock, maxBytes: 2 * size });
    store.addEventListener("discard", (e) => discarded.push(e.detail));
    await store.start();
    expect(store.totalBytes).toBe(2 * size);
    expect(await onDisk()).toBe(2 * size);
    expect(["abandoned-11", "e", "abandoned-9"].map((id) => store.has(id))).toEqual([false, true, true]);
  });

  it("has a finite default limit, and refuses limits that cannot hold", async () => {
    const plain = new SessionStateStore({ dir, ttlMs: TTL });
    expect(plain.maxBytes).toBe(2 * 2 ** 30);
    expect(plain.maxStateBytes).toBe(256 * 2 ** 20);
    expect(new SessionStateStore({ dir, ttlMs: TTL, maxBytes: 2 ** 20 }).maxStateBytes).toBe(2 ** 20);
    expect(() => new SessionStateStore({ dir, ttlMs: TTL, maxBytes: 0 })).toThrow(RangeError);
    expect(() => new SessionStateStore({ dir, ttlMs: TTL, maxStateBytes: -1 })).toThrow(RangeError);
    expect(() => new SessionStateStore({ dir, ttlMs: TTL, maxBytes: 100, maxStateBytes: 101 })).toThrow(RangeError);
  });

  // Attack 3 with one very long context: one state alone is refused above maxStateBytes, so it can neither fill the
  // disk nor evict every other session's state. The save is skipped with a typed error (the engine treats it as any
  // failed save: the session recomputes its prompt next turn), and the previous state stays as it was.
  it("skips a save whose state would exceed maxStateBytes, with StateTooLargeError", async () => {
    await store.stop();
    const small = fakeState("SMALL").subarray(0, 1000);
    const big = fakeState("BIG");
    const limit = HEADER_BYTES + tokens.length * 4 + 16 + 20_000;
    store = new SessionStateStore({ dir, ttlMs: TTL, stagingDir: staging, now: () => clock, maxStateBytes: limit });
    store.addEventListener("discard", (e) => discarded.push(e.detail));
    await store.start();
    const { bytes } = await store.save("s1", key, binding, tokens, writer(small));
    expect(bytes).toBe(HEADER_BYTES + tokens.length * 4 + small.length + 16);

    const err = await store.save("s1", key, binding, [...tokens, 1], writer(big)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StateTooLargeError);
    expect(err).toMatchObject({
      name: "StateTooLargeError",
      sessionId: "s1",
      bytes: HEADER_BYTES + (tokens.length + 1) * 4 + big.length + 16,
      maxStateBytes: limit,
    });
    expect(store.totalBytes).toBe(bytes);
    expect(await stagedFiles()).toEqual([]);
    expect((await readdir(dir)).sort()).toEqual([".staging", `${stateFileId("s1")}.state`]);
    const got: { bytes?: Buffer; paths: string[] } = { paths: [] };
    expect((await store.restore("s1", key, binding, reader(got)))?.tokens).toEqual(tokens);
    expect(got.bytes?.equals(small)).toBe(true);

    // Tokens alone above the limit: refused before the engine is asked to write anything.
    const written: string[] = [];
    const many = Array.from({ length: limit / 4 }, (_, i) => i);
    await expect(store.save("s2", key, binding, many, writer(small, written))).rejects.toThrow(StateTooLargeError);
    expect(written).toEqual([]);
    expect(store.has("s2")).toBe(false);
    expect(discarded).toEqual([]);
  });

  it("cleans up after a crash on start: temporary files, staged plaintext, expired states", async () => {
    await store.save("old1", key, binding, tokens, writer(fakeState()));
    await store.save("old2", key, binding, tokens, writer(fakeState()));
    await store.stop();
    await writeFile(join(dir, `${stateFileId("x")}.1234.tmp`), "partial");
    await writeFile(join(dir, ".staging", "leftover.plain"), "plaintext");
    await writeFile(join(dir, `${"0".repeat(64)}.state`), "not a state file, long enough for a header".repeat(4));
    await writeFile(join(dir, "README"), "not the store's");
    // pid_max is at most 4194304: this process cannot be alive.
    const dead = join(staging, "soulmesh-state-4194305-abc");
    await mkdir(dead);
    await writeFile(join(dead, "x.plain"), "plaintext");

    clock += TTL;
    store = new SessionStateStore({ dir, ttlMs: TTL * 10, stagingDir: staging, now: () => clock });
    store.addEventListener("discard", (e) => discarded.push(e.detail));
    await store.start();
    expect(existsSync(dead)).toBe(false);
    expect((await readdir(dir)).sort()).toEqual([".staging", "README"]);
    expect(discarded.map((d) => d.reason).sort()).toEqual(["corrupt", "expired", "expired"]);
  });

  it("refuses calls before start and after stop", async () => {
    await store.stop();
    await expect(store.save("s1", key, binding, tokens, writer(Buffer.from("x")))).rejects.toThrow(
      StateStoreStoppedError,
    );
    await expect(store.restore("s1", key, binding, async () => {})).rejects.toThrow(StateStoreStoppedError);
    await expect(store.sweep()).rejects.toThrow(StateStoreStoppedError);
    expect(await readdir(staging)).toEqual([]);
    await store.start();
  });

  it.runIf(existsSync("/dev/shm"))("stages in /dev/shm by default", async () => {
    await store.stop();
    store = new SessionStateStore({ dir, ttlMs: TTL, now: () => clock });
    await store.start();
    const written: string[] = [];
    await store.save("s1", key, binding, tokens, writer(fakeState(), written));
    expect(written[0]!.startsWith("/dev/shm/soulmesh-state-")).toBe(true);
    expect(existsSync(written[0]!)).toBe(false);
    expect((await store.restore("s1", key, binding, async () => {}))?.tokens).toEqual(tokens);
  });
});
