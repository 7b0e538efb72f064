import { afterEach, describe, expect, it } from "vitest";
import {
  decodeFrames,
  encodeVarint,
  InternalError,
  InvalidMessageError,
  PROTOCOL_IDS,
  ProtocolTimeoutError,
  ProviderBusyError,
  QuoteResponseSchema,
} from "../../sdk/protocol/index.js";
import { handleProtocol, readStream, requestProtocol } from "./handler.js";
import type { ProviderHost } from "./host.js";
import { serveQuotes, type QuoteFacts } from "./quote.js";
import { ADAPTER_A, FACTS, Fixture, MODEL_A } from "./test-support.js";

const fx = new Fixture();
afterEach(() => fx.cleanup());

async function pair(source: () => QuoteFacts | Promise<QuoteFacts> = () => FACTS, requestTimeoutMs?: number) {
  const server = await fx.host();
  const client = await fx.host();
  const service = await serveQuotes(server.libp2p, {
    quoteSource: source,
    ...(requestTimeoutMs !== undefined && { requestTimeoutMs }),
  });
  return { server, client, service };
}

const addr = (host: ProviderHost, ws: boolean) => host.multiaddrs().find((m) => m.toString().includes("/ws/") === ws)!;

describe("quote protocol", () => {
  it.each([
    ["TCP", false],
    ["WebSockets", true],
  ])("answers a quote over %s", async (_, ws) => {
    const { server, client } = await pair();
    const quote = await requestProtocol(client.libp2p, addr(server, ws), "quote", { type: "quote.request" });
    expect(quote).toEqual({ type: "quote", ...FACTS });
    const connections = client.libp2p.getConnections(server.peerId);
    expect(connections.some((c) => c.remoteAddr.toString().includes("/ws") === ws)).toBe(true);
  });

  it("narrows the models and adapters to those asked about", async () => {
    const { server, client } = await pair();
    const quote = await requestProtocol(client.libp2p, addr(server, false), "quote", {
      type: "quote.request",
      models: [MODEL_A.toUpperCase().replace("0X", "0x"), `0x${"ee".repeat(32)}`],
      adapters: [],
    });
    expect(quote.models).toEqual([MODEL_A]);
    expect(quote.cachedAdapters).toEqual([]);
    expect(ADAPTER_A).toBeDefined();
  });

  it("reads the queue length from the source on each request", async () => {
    let queued = 0;
    const { server, client } = await pair(() => ({ ...FACTS, queueLength: queued++ }));
    const target = addr(server, false);
    expect((await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" })).queueLength).toBe(0);
    expect((await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" })).queueLength).toBe(1);
  });

  it("sends the source's typed error, and hides an untyped one as InternalError", async () => {
    let fail: Error = new ProviderBusyError("queue full");
    const { server, client } = await pair(() => {
      throw fail;
    });
    const target = addr(server, false);
    const busy = await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" }).catch((e: unknown) => e);
    expect(busy).toBeInstanceOf(ProviderBusyError);
    expect((busy as Error).message).toBe("queue full");
    fail = new Error("/secret/path leaked");
    const internal = await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" }).catch((e: unknown) => e);
    expect(internal).toBeInstanceOf(InternalError);
    expect((internal as Error).message).not.toContain("secret");
  });

  it("answers InternalError, not InvalidMessageError, when its own quote is invalid", async () => {
    const { server, client } = await pair(() => ({ ...FACTS, queueLength: -1 }));
    const err = await requestProtocol(client.libp2p, addr(server, false), "quote", { type: "quote.request" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InternalError);
    expect(err).not.toBeInstanceOf(InvalidMessageError);
  });

  it("closes a stalled stream (no bytes) with a typed timeout error", async () => {
    const { server, client } = await pair(undefined, 300);
    const stream = await client.libp2p.dialProtocol(addr(server, false), PROTOCOL_IDS.quote);
    const started = Date.now();
    const messages = [];
    for await (const msg of decodeFrames(readStream(stream), { maxFrameBytes: 65536, schema: QuoteResponseSchema })) messages.push(msg);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(messages).toEqual([expect.objectContaining({ type: "error", code: "ProtocolTimeoutError", retryable: true })]);
    // The node still serves.
    expect((await requestProtocol(client.libp2p, addr(server, false), "quote", { type: "quote.request" })).type).toBe("quote");
  });

  it("refuses a huge frame from its prefix; a peer pushing megabytes of body may get a reset instead", async () => {
    const { server, client } = await pair();
    const target = addr(server, false);
    const stream = await client.libp2p.dialProtocol(target, PROTOCOL_IDS.quote);
    const body = new Uint8Array(8 * 1024 * 1024).fill(0x20);
    const outcome = (async () => {
      const out = [];
      for await (const msg of decodeFrames(readStream(stream), { maxFrameBytes: 65536, schema: QuoteResponseSchema })) out.push(msg);
      return out;
    })().catch((e: unknown) => e);
    try {
      stream.send(Uint8Array.from([...encodeVarint(body.length), ...body.subarray(0, 1)]));
      for (let off = 1; off < body.length; off += 65536) {
        if (!stream.send(body.subarray(off, off + 65536))) await stream.onDrain();
      }
      await stream.close();
    } catch {
      // The provider may reset the stream while we are still sending: that is the documented alternative.
    }
    const result = await outcome;
    if (Array.isArray(result)) {
      expect(result).toEqual([expect.objectContaining({ type: "error", code: "FrameTooLargeError" })]);
    } else {
      expect((result as Error).name).toMatch(/StreamResetError|StreamAbortedError/);
    }
    expect((await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" })).type).toBe("quote");
  });

  it("answers ProviderBusyError past the concurrent stream cap", async () => {
    const server = await fx.host();
    const client = await fx.host();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    await handleProtocol(server.libp2p, "quote", {
      maxConcurrentStreams: 2,
      handler: async () => {
        await gate;
        return { type: "quote", ...FACTS };
      },
    });
    const target = addr(server, false);
    const ask = () => requestProtocol(client.libp2p, target, "quote", { type: "quote.request" }).catch((e: unknown) => e);
    const first = [ask(), ask()];
    await new Promise((r) => setTimeout(r, 200));
    const third = await ask();
    expect(third).toBeInstanceOf(ProviderBusyError);
    release();
    for (const r of await Promise.all(first)) expect(r).toMatchObject({ type: "quote" });
  });

  it("times out a handler that ignores its deadline, and the client's own timeout is typed", async () => {
    const server = await fx.host();
    const client = await fx.host();
    await handleProtocol(server.libp2p, "quote", { responseTimeoutMs: 200, handler: () => new Promise(() => {}) });
    const target = addr(server, false);
    const serverSide = await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" }).catch((e: unknown) => e);
    expect(serverSide).toBeInstanceOf(ProtocolTimeoutError);
    const clientSide = await requestProtocol(client.libp2p, target, "quote", { type: "quote.request" }, { timeoutMs: 100 }).catch(
      (e: unknown) => e,
    );
    expect(clientSide).toBeInstanceOf(ProtocolTimeoutError);
  });
});
