import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { InvalidHashError } from "./errors.js";
import { FileHashCache, SharedWork, normalizeSha256, sha256File, writeFileAtomic } from "./file-hash.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "soulmesh-file-hash-"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

function sha256Of(bytes: Uint8Array | string): string {
  return `0x${createHash("sha256").update(bytes).digest("hex")}`;
}

describe("sha256File", () => {
  it("hashes a file as 0x + 64 lowercase hex, reporting progress up to the size", async () => {
    // Larger than one read chunk, so that progress is reported more than once.
    const bytes = Buffer.alloc(9 * 2 ** 20, 7);
    const path = join(dir, "big.bin");
    await writeFile(path, bytes);
    const progress: Array<[number, number]> = [];
    const sha256 = await sha256File(path, { onProgress: (done, total) => progress.push([done, total]) });
    expect(sha256).toBe(sha256Of(bytes));
    expect(sha256).toMatch(/^0x[0-9a-f]{64}$/);
    expect(progress.length).toBeGreaterThan(2);
    expect(progress.at(-1)).toEqual([bytes.length, bytes.length]);
  });

  it("hashes an empty file", async () => {
    const path = join(dir, "empty");
    await writeFile(path, "");
    expect(await sha256File(path)).toBe(sha256Of(""));
  });

  it("fails with the file system's error for a missing path or a directory", async () => {
    await expect(sha256File(join(dir, "nope"))).rejects.toMatchObject({ code: "ENOENT" });
    await expect(sha256File(dir)).rejects.toMatchObject({ code: "EISDIR" });
  });

  it("stops with the signal's reason when aborted", async () => {
    const path = join(dir, "big.bin");
    await writeFile(path, Buffer.alloc(16 * 2 ** 20));
    const controller = new AbortController();
    const reason = new Error("stop");
    const promise = sha256File(path, {
      signal: controller.signal,
      onProgress: (done) => {
        if (done > 0) controller.abort(reason);
      },
    });
    await expect(promise).rejects.toBe(reason);
  });
});

describe("normalizeSha256", () => {
  it("lowercases a 0x-prefixed hash and refuses anything else", () => {
    const hash = `0x${"AB".repeat(32)}`;
    expect(normalizeSha256(hash, "model")).toBe(hash.toLowerCase());
    for (const bad of ["ab".repeat(32), `0x${"ab".repeat(31)}`, `0x${"zz".repeat(32)}`, "0x../../etc/passwd", ""]) {
      expect(() => normalizeSha256(bad, "model")).toThrow(InvalidHashError);
    }
  });
});

describe("writeFileAtomic", () => {
  it("creates the folder and leaves no temporary file behind", async () => {
    const path = join(dir, "a", "b", "doc.json");
    await writeFileAtomic(path, "{}");
    await writeFileAtomic(path, '{"v":2}');
    expect(await readFile(path, "utf8")).toBe('{"v":2}');
    expect(await readdir(join(dir, "a", "b"))).toEqual(["doc.json"]);
  });
});

describe("FileHashCache", () => {
  it("hashes a file once, then answers from the cache, also after a restart", async () => {
    const path = join(dir, "model.gguf");
    await writeFile(path, "model bytes");
    const cachePath = join(dir, "state", "hashes.json");
    const cache = new FileHashCache({ path: cachePath });
    expect(await cache.peek(path)).toBeUndefined();
    expect(await cache.sha256(path)).toBe(sha256Of("model bytes"));
    expect(await cache.peek(path)).toBe(sha256Of("model bytes"));

    // A fresh instance reads the persisted entry: proven by a hash no file read could give.
    const doc = JSON.parse(await readFile(cachePath, "utf8")) as { entries: Record<string, { sha256: string }> };
    const [key] = Object.keys(doc.entries);
    doc.entries[key!]!.sha256 = `0x${"11".repeat(32)}`;
    await writeFile(cachePath, JSON.stringify(doc));
    const restarted = new FileHashCache({ path: cachePath });
    expect(await restarted.sha256(path)).toBe(`0x${"11".repeat(32)}`);
  });

  it("keys entries by real path, so a symlink shares the entry of its target", async () => {
    const path = join(dir, "model.gguf");
    await writeFile(path, "bytes");
    const cache = new FileHashCache({ path: join(dir, "hashes.json") });
    await cache.sha256(path);
    await symlink(path, join(dir, "link.gguf"));
    expect(await cache.peek(join(dir, "link.gguf"))).toBe(sha256Of("bytes"));
    const doc = JSON.parse(await readFile(join(dir, "hashes.json"), "utf8")) as { entries: object };
    expect(Object.keys(doc.entries)).toHaveLength(1);
  });

  it("hashes again when the file's size, mtime or inode change", async () => {
    const path = join(dir, "model.gguf");
    const cache = new FileHashCache({ path: join(dir, "hashes.json") });
    await writeFile(path, "version 1");
    expect(await cache.sha256(path)).toBe(sha256Of("version 1"));

    // Same size, new mtime.
    await writeFile(path, "version 2");
    await utimes(path, new Date(), new Date(Date.now() + 5_000));
    expect(await cache.peek(path)).toBeUndefined();
    expect(await cache.sha256(path)).toBe(sha256Of("version 2"));

    // Same size and mtime, other inode (a file replaced by rename).
    const stats = await stat(path);
    await writeFile(join(dir, "next"), "version 3");
    await utimes(join(dir, "next"), stats.atime, stats.mtime);
    await rename(join(dir, "next"), path);
    expect(await cache.sha256(path)).toBe(sha256Of("version 3"));

    // Other size.
    await writeFile(path, "version 4, longer");
    expect(await cache.sha256(path)).toBe(sha256Of("version 4, longer"));
  });

  it("treats a damaged cache file as empty instead of failing", async () => {
    const cachePath = join(dir, "hashes.json");
    await writeFile(cachePath, "{ not json");
    const path = join(dir, "model.gguf");
    await writeFile(path, "bytes");
    const cache = new FileHashCache({ path: cachePath });
    expect(await cache.sha256(path)).toBe(sha256Of("bytes"));
    expect(JSON.parse(await readFile(cachePath, "utf8"))).toMatchObject({ format: "soulmesh-file-hashes/1" });
  });

  it("fails for a missing path or a directory, remembering nothing", async () => {
    const cachePath = join(dir, "hashes.json");
    const cache = new FileHashCache({ path: cachePath });
    await expect(cache.sha256(join(dir, "nope"))).rejects.toMatchObject({ code: "ENOENT" });
    await mkdir(join(dir, "folder"));
    await expect(cache.sha256(join(dir, "folder"))).rejects.toMatchObject({ code: "EISDIR" });
    await expect(readFile(cachePath)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("reads a file once when asked for it twice at the same time", async () => {
    const path = join(dir, "model.gguf");
    await writeFile(path, Buffer.alloc(6 * 2 ** 20, 1));
    const cache = new FileHashCache({ path: join(dir, "hashes.json") });
    const first = vi.fn();
    const second = vi.fn();
    const [a, b] = await Promise.all([
      cache.sha256(path, { onProgress: first }),
      cache.sha256(path, { onProgress: second }),
    ]);
    expect(a).toBe(b);
    // A read reports (0, total) when it starts. Exactly one caller read the file; the other joined its read
    // (or, under load, found its result already cached). Which one reads first depends on which finishes its
    // stat first, so the test does not assume it.
    const started = (fn: typeof first): boolean => fn.mock.calls.some(([done]) => done === 0);
    expect([started(first), started(second)].filter(Boolean)).toHaveLength(1);
  });

  it("lets one caller abort without cancelling the hashing another caller waits for", async () => {
    const path = join(dir, "model.gguf");
    await writeFile(path, Buffer.alloc(12 * 2 ** 20, 2));
    const cache = new FileHashCache({ path: join(dir, "hashes.json") });
    const controller = new AbortController();
    const aborted = cache.sha256(path, { signal: controller.signal });
    const kept = cache.sha256(path);
    controller.abort(new Error("first caller left"));
    await expect(aborted).rejects.toThrow("first caller left");
    expect(await kept).toBe(sha256Of(Buffer.alloc(12 * 2 ** 20, 2)));
  });
});

describe("SharedWork", () => {
  it("aborts the work only once every caller has aborted", async () => {
    const work = new SharedWork<string, string>();
    let workSignal: AbortSignal | undefined;
    const body = (task: { signal: AbortSignal }): Promise<string> => {
      workSignal = task.signal;
      return new Promise((_, reject) =>
        task.signal.addEventListener("abort", () => reject(task.signal.reason as Error), { once: true }),
      );
    };
    const a = new AbortController();
    const b = new AbortController();
    const pa = work.run("k", body, { signal: a.signal });
    const pb = work.run("k", body, { signal: b.signal });
    await Promise.resolve();
    a.abort(new Error("a"));
    await expect(pa).rejects.toThrow("a");
    expect(workSignal?.aborted).toBe(false);
    b.abort(new Error("b"));
    await expect(pb).rejects.toThrow("b");
    expect(workSignal?.aborted).toBe(true);
    expect(work.has("k")).toBe(false);
  });

  it("claim() counts the callers that will receive the result", async () => {
    const work = new SharedWork<string, number>();
    const body = async (task: { claim(): number }): Promise<number> => {
      await new Promise((r) => setTimeout(r, 10));
      return task.claim();
    };
    const results = await Promise.all([work.run("k", body), work.run("k", body), work.run("k", body)]);
    expect(results).toEqual([3, 3, 3]);
  });
});
