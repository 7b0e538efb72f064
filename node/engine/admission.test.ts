import { describe, expect, it } from "vitest";
import { AdmissionQueue } from "./admission.js";
import { ProviderBusyError } from "./errors.js";
import { defaultThreads } from "./threads.js";

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe("AdmissionQueue", () => {
  it("runs up to maxConcurrent at once, queues up to maxQueued, and refuses the next one at once", async () => {
    const queue = new AdmissionQueue({ maxConcurrent: 1, maxQueued: 2 });
    const gate = deferred();
    const order: number[] = [];
    const first = queue.run(async () => {
      order.push(1);
      await gate.promise;
    });
    const second = queue.run(async () => void order.push(2));
    const third = queue.run(async () => void order.push(3));
    expect(queue.running).toBe(1);
    expect(queue.queued).toBe(2);

    const refused = queue.run(async () => void order.push(4));
    await expect(refused).rejects.toBeInstanceOf(ProviderBusyError);
    await expect(refused).rejects.toMatchObject({ name: "ProviderBusy", queued: 2, maxQueued: 2 });

    gate.resolve();
    await Promise.all([first, second, third]);
    expect(order).toEqual([1, 2, 3]);
    expect(queue.running).toBe(0);
    expect(queue.queued).toBe(0);
  });

  it("frees the slot when a task throws", async () => {
    const queue = new AdmissionQueue({ maxConcurrent: 1, maxQueued: 0 });
    await expect(queue.run(async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    await expect(queue.run(async () => 7)).resolves.toBe(7);
  });

  it("drops an aborted waiter without running it, and the queue moves on", async () => {
    const queue = new AdmissionQueue({ maxConcurrent: 1, maxQueued: 1 });
    const gate = deferred();
    const first = queue.run(() => gate.promise);
    const controller = new AbortController();
    let ran = false;
    const waiting = queue.run(async () => void (ran = true), { signal: controller.signal });
    controller.abort(new Error("client went away"));
    await expect(waiting).rejects.toThrow("client went away");
    expect(queue.queued).toBe(0);
    // The freed queue place takes a new request.
    const next = queue.run(async () => "next");
    gate.resolve();
    await first;
    await expect(next).resolves.toBe("next");
    expect(ran).toBe(false);
  });

  it("refuses an already aborted signal and bad limits", async () => {
    const queue = new AdmissionQueue({ maxConcurrent: 1, maxQueued: 1 });
    await expect(queue.run(async () => 1, { signal: AbortSignal.abort(new Error("gone")) })).rejects.toThrow("gone");
    expect(() => new AdmissionQueue({ maxConcurrent: 0, maxQueued: 1 })).toThrow(RangeError);
    expect(() => new AdmissionQueue({ maxConcurrent: 1, maxQueued: -1 })).toThrow(RangeError);
    expect(() => new AdmissionQueue({ maxConcurrent: 1.5, maxQueued: 1 })).toThrow(RangeError);
  });
});

describe("defaultThreads", () => {
  it("leaves one core free and never goes below one thread", () => {
    expect(defaultThreads(2)).toBe(1);
    expect(defaultThreads(16)).toBe(15);
    expect(defaultThreads(1)).toBe(1);
    expect(defaultThreads(0)).toBe(1);
  });
});
