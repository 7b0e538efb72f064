/*
 * handleProtocol's stream slots over real libp2p on TCP loopback: the limit per peer, the first-byte timeout,
 * the slots kept for priority peers, and refusals answered at once without reading the request. The attack
 * these stop, on the provider's real protocols, is "attack 5" in provider-protocols.test.ts.
 */
import type { PeerId, Stream } from "@libp2p/interface";
import { afterEach, describe, expect, it } from "vitest";
import {
  decodeFrames,
  encodeVarint,
  errorFromWire,
  PROTOCOL_IDS,
  ProviderBusyError,
  QuoteResponseSchema,
  type QuoteResponse,
} from "../../sdk/protocol/index.js";
import {
  DEFAULT_FIRST_BYTE_TIMEOUT_MS,
  DEFAULT_MAX_STREAMS_PER_PEER,
  DEFAULT_PEER_SLOT_WAIT_MS,
  handleProtocol,
  HandleProtocolOptionsError,
  readStream,
  requestProtocol,
  type HandleProtocolOptions,
  type ProtocolService,
  type StreamRefusal,
} from "./handler.js";
import type { ProviderHost } from "./host.js";
import { SessionPeers } from "./provider-protocols.js";
import { FACTS, Fixture } from "./test-support.js";

const fx = new Fixture();
afterEach(() => fx.cleanup());

const tcp = (host: ProviderHost) => host.multiaddrs().find((m) => !m.toString().includes("/ws"))!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A quote server with `options`; its handler answers at once. Refusals are recorded by reason. */
async function server(options: Omit<HandleProtocolOptions<"quote">, "handler"> = {}) {
  const host = await fx.host();
  const handled: string[] = [];
  const service = await handleProtocol(host.libp2p, "quote", {
    ...options,
    handler: async (_, { peer }) => {
      handled.push(peer.toString());
      return { type: "quote", ...FACTS };
    },
  });
  const refused: StreamRefusal[] = [];
  service.addEventListener("stream:refused", (e) => refused.push((e as CustomEvent<{ reason: StreamRefusal }>).detail.reason));
  return { host, service, handled, refused };
}

/** A stream of `peer` to `to` that sends `bytes` (nothing by default) and never closes its side. */
async function stalled(peer: ProviderHost, to: ProviderHost, bytes?: Uint8Array): Promise<Stream> {
  const stream = await peer.libp2p.dialProtocol(tcp(to), PROTOCOL_IDS.quote);
  if (bytes !== undefined) stream.send(bytes);
  return stream;
}

/** Everything `stream` receives until the node closes its side, with the time that took. */
async function answers(stream: Stream): Promise<{ messages: QuoteResponse[]; ms: number }> {
  const started = Date.now();
  const messages: QuoteResponse[] = [];
  for await (const msg of decodeFrames(readStream(stream), { maxFrameBytes: 65536, schema: QuoteResponseSchema })) messages.push(msg);
  return { messages, ms: Date.now() - started };
}

const quote = (peer: ProviderHost, to: ProviderHost) =>
  requestProtocol(peer.libp2p, tcp(to), "quote", { type: "quote.request" }, { timeoutMs: 5_000 }).catch((e: unknown) => e as Error);

/** Waits until `service` serves `n` streams (stalled ones included). */
async function serving(service: ProtocolService, n: number): Promise<void> {
  for (let t = 0; service.active < n && t < 100; t++) await sleep(20);
  expect(service.active).toBe(n);
}

describe("stream slots", () => {
  it("serves one peer at most maxStreamsPerPeer streams at once and answers the next ProviderBusyError after peerSlotWaitMs, unread", async () => {
    expect(DEFAULT_MAX_STREAMS_PER_PEER).toBe(4);
    expect(DEFAULT_PEER_SLOT_WAIT_MS).toBe(2_000);
    const { host, service, handled, refused } = await server({ firstByteTimeoutMs: 10_000, peerSlotWaitMs: 300 });
    const greedy = await fx.host();
    const other = await fx.host();
    const held = [];
    for (let i = 0; i < DEFAULT_MAX_STREAMS_PER_PEER; i++) held.push(await stalled(greedy, host));
    await serving(service, 4);
    // The fifth stream sends nothing and keeps its side open: the refusal does not wait for a request, only for
    // one of the peer's own slots, and none frees.
    const fifth = await answers(await stalled(greedy, host));
    expect(fifth.messages).toEqual([expect.objectContaining({ type: "error", code: "ProviderBusyError", retryable: true })]);
    expect(fifth.ms).toBeGreaterThanOrEqual(250);
    expect(fifth.ms).toBeLessThan(1_500);
    // A full request on a refused stream is not read: the handler never sees it.
    const sixth = await quote(greedy, host);
    expect(sixth).toBeInstanceOf(ProviderBusyError);
    expect((sixth as Error).message).toMatch(/of one peer/);
    expect(handled).toEqual([]);
    expect(refused).toEqual(["peer-limit", "peer-limit"]);
    // Another peer is served meanwhile.
    expect(await quote(other, host)).toMatchObject({ type: "quote" });
    expect(service.activeByPeer.get(greedy.peerId.toString())).toBe(4);
    // A slot freed is the peer's again.
    held[0]!.abort(new Error("done"));
    for (let t = 0; service.active > 4 - 1 && t < 100; t++) await sleep(20);
    expect(await quote(greedy, host)).toMatchObject({ type: "quote" });
    for (const s of held) s.abort(new Error("done"));
  });

  it("serves a stream over its peer's limit once one of the peer's own streams ends within the wait", async () => {
    const { host, service, handled, refused } = await server({ firstByteTimeoutMs: 10_000, peerSlotWaitMs: 5_000 });
    const peer = await fx.host();
    const held = [];
    for (let i = 0; i < 4; i++) held.push(await stalled(peer, host));
    await serving(service, 4);
    const started = Date.now();
    const fifth = quote(peer, host);
    await sleep(300);
    expect(handled).toEqual([]);
    held[0]!.abort(new Error("done"));
    expect(await fifth).toMatchObject({ type: "quote" });
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(refused).toEqual([]);
    for (const s of held) s.abort(new Error("done"));
  });

  it("drops a stream that sends no byte within the first-byte timeout, and holds one that sent a byte until the frame timeout", async () => {
    expect(DEFAULT_FIRST_BYTE_TIMEOUT_MS).toBe(2_000);
    const { host, service } = await server({ firstByteTimeoutMs: 300, requestTimeoutMs: 1_500 });
    const peer = await fx.host();
    const silent = answers(await stalled(peer, host));
    const slow = answers(await stalled(peer, host, Uint8Array.from([...encodeVarint(300), 0x7b])));
    const early = await silent;
    expect(early.messages).toEqual([expect.objectContaining({ type: "error", code: "ProtocolTimeoutError" })]);
    expect(errorFromWire(early.messages[0] as Parameters<typeof errorFromWire>[0]).message).toMatch(/No request byte within 300 ms/);
    expect(early.ms).toBeGreaterThanOrEqual(250);
    expect(early.ms).toBeLessThan(1_200);
    expect(service.active).toBe(1);
    const late = await slow;
    expect(late.messages).toEqual([expect.objectContaining({ type: "error", code: "ProtocolTimeoutError" })]);
    expect(errorFromWire(late.messages[0] as Parameters<typeof errorFromWire>[0]).message).toMatch(/No complete request frame within 1500 ms/);
    expect(late.ms).toBeGreaterThanOrEqual(1_400);
    expect(service.active).toBe(0);
    // A request written at once is served as before.
    expect(await quote(peer, host)).toMatchObject({ type: "quote" });
  });

  it("keeps half the slots for priority peers: peers without standing share the rest, however many they are", async () => {
    const vip = await fx.host();
    const isPriority = (peer: PeerId) => peer.equals(vip.peerId);
    const { host, service, handled, refused } = await server({ maxConcurrentStreams: 8, firstByteTimeoutMs: 10_000, peerSlotWaitMs: 200, isPriority });
    // Two peers without standing take the 4 shared slots (the per-peer limit would let them take 8).
    const sybils = [await fx.host(), await fx.host()];
    const held = [];
    for (const s of sybils) for (let i = 0; i < 2; i++) held.push(await stalled(s, host));
    await serving(service, 4);
    expect(service.activeUnprioritized).toBe(4);
    const third = await fx.host();
    const refusedOther = await quote(third, host);
    expect(refusedOther).toBeInstanceOf(ProviderBusyError);
    expect(await quote(sybils[0]!, host)).toBeInstanceOf(ProviderBusyError);
    expect(refused).toEqual(["reserved", "reserved"]);
    // The priority peer is served, up to its own limit, on the reserved slots.
    const vipHeld = [];
    for (let i = 0; i < 3; i++) vipHeld.push(await stalled(vip, host));
    await serving(service, 7);
    expect(await quote(vip, host)).toMatchObject({ type: "quote" });
    expect(handled).toEqual([vip.peerId.toString()]);
    for (let i = 0; i < 1; i++) vipHeld.push(await stalled(vip, host));
    await serving(service, 8);
    // All 8 taken: even the priority peer is now refused, for its own limit first.
    expect(await quote(vip, host)).toBeInstanceOf(ProviderBusyError);
    expect(refused.at(-1)).toBe("peer-limit");
    for (const s of [...held, ...vipHeld]) s.abort(new Error("done"));
  });

  it("lets a priority peer use the shared slots too, and counts a failing hook as no standing", async () => {
    const vip = await fx.host();
    let calls = 0;
    const { host, service } = await server({
      maxConcurrentStreams: 4,
      reservedForPriority: 1,
      firstByteTimeoutMs: 10_000,
      isPriority: (peer) => {
        calls++;
        if (!peer.equals(vip.peerId)) throw new Error("hook failed");
        return true;
      },
    });
    const held = [];
    for (let i = 0; i < 4; i++) held.push(await stalled(vip, host));
    await serving(service, 4);
    expect(service.activeUnprioritized).toBe(0);
    for (const s of held) s.abort(new Error("done"));
    for (let t = 0; service.active > 0 && t < 100; t++) await sleep(20);
    const other = await fx.host();
    const three = [];
    for (let i = 0; i < 3; i++) three.push(await stalled(other, host));
    await serving(service, 3);
    expect(await quote(other, host)).toBeInstanceOf(ProviderBusyError);
    expect(calls).toBeGreaterThanOrEqual(8);
    for (const s of three) s.abort(new Error("done"));
  });

  it("refuses options that do not fit together, before serving anything", async () => {
    const host = await fx.host();
    const handler = async () => ({ type: "quote" as const, ...FACTS });
    const cases: Omit<HandleProtocolOptions<"quote">, "handler">[] = [
      { maxStreamsPerPeer: 0 },
      { maxConcurrentStreams: 1.5 },
      { firstByteTimeoutMs: -1 },
      { peerSlotWaitMs: 0 },
      { maxConcurrentStreams: 8, reservedForPriority: 8, isPriority: () => true },
      { reservedForPriority: -1 },
    ];
    for (const options of cases) {
      await expect(handleProtocol(host.libp2p, "quote", { ...options, handler }), JSON.stringify(options)).rejects.toBeInstanceOf(
        HandleProtocolOptionsError,
      );
    }
    expect(host.libp2p.getProtocols()).not.toContain(PROTOCOL_IDS.quote);
  });
});

describe("SessionPeers", () => {
  it("gives a peer standing while one of its sessions is open, and a second peer of a session takes none from the first", () => {
    const peers = new SessionPeers();
    peers.bind("peerA", "0xAB");
    peers.bind("peerA", "0xcd");
    peers.bind("peerB", "0xab");
    expect([peers.has("peerA"), peers.has("peerB"), peers.size]).toEqual([true, true, 2]);
    peers.unbind("0xAB");
    expect([peers.has("peerA"), peers.has("peerB"), peers.size]).toEqual([true, false, 1]);
    peers.unbind("0xcd");
    peers.unbind("0xcd");
    expect([peers.has("peerA"), peers.size]).toEqual([false, 0]);
  });
});
