import { mkdtemp, rm, stat } from "node:fs/promises";
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as dagCbor from "@ipld/dag-cbor";
import { LevelBlockstore } from "blockstore-level";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cborBlock, rawBlock, rejection } from "../../test/helpers/blocks.js";
import { freePort } from "../../test/helpers/net.js";
import { createBlockStore, createHeliaBlockStore, createKuboBlockStore } from "./block-store.js";
import type { HeliaBlockStore, KuboBlockStore } from "./block-store.js";
import {
  BlockIntegrityError,
  BlockNotFoundError,
  BlockStoreLockedError,
  BlockStoreNotStartedError,
  KuboUnreachableError,
  PeerDialError,
} from "./block-store-errors.js";

const text = new TextEncoder();

describe("Helia block store", () => {
  let root: string;
  let a: HeliaBlockStore;
  let b: HeliaBlockStore;
  const stores: HeliaBlockStore[] = [];

  function track(store: HeliaBlockStore): HeliaBlockStore {
    stores.push(store);
    return store;
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "soulmesh-blockstore-"));
    a = track(createHeliaBlockStore({ dir: join(root, "a") }));
    await a.start();
    b = track(createHeliaBlockStore({ dir: join(root, "b"), peers: [a.multiaddrs()[0]!], fetchTimeoutMs: 5_000 }));
    await b.start();
  });

  afterAll(async () => {
    await Promise.allSettled(stores.map((s) => s.stop()));
    if (root !== undefined) await rm(root, { recursive: true, force: true });
  });

  it("stores a block, reports it and returns it", async () => {
    const { cid, bytes } = await rawBlock("ciphertext of turn 1");
    expect(await a.has(cid)).toBe(false);
    await a.put(cid, bytes);
    await a.put(cid, bytes); // idempotent
    expect(await a.has(cid)).toBe(true);
    expect(await a.get(cid)).toEqual(bytes);
    expect(await b.has(cid)).toBe(false);
  });

  it("fetches a block from a connected peer by CID and keeps it", async () => {
    const { cid, bytes } = await rawBlock("ciphertext only A holds");
    await a.put(cid, bytes);
    expect(await b.get(cid, { timeoutMs: 10_000 })).toEqual(bytes);
    expect(await b.has(cid)).toBe(true);
  });

  it("pins recursively, fetching linked blocks from the peer, and pins idempotently", async () => {
    const child = await rawBlock("a segment's ciphertext");
    const parent = await cborBlock({ segments: [child.cid] });
    await a.put(child.cid, child.bytes);
    await a.put(parent.cid, parent.bytes);
    await a.pin(parent.cid);
    await a.pin(parent.cid);
    await b.pin(parent.cid, { timeoutMs: 10_000 });
    expect(await b.has(child.cid)).toBe(true);
  });

  it("refuses bytes that do not hash to the CID on put", async () => {
    const { cid } = await rawBlock("what the CID was computed from");
    const err = await rejection(a.put(cid, text.encode("other bytes")));
    expect(err).toBeInstanceOf(BlockIntegrityError);
    expect((err as BlockIntegrityError).name).toBe("BlockIntegrityError");
    expect(await a.has(cid)).toBe(false);
  });

  it("gives up on a block nobody has with BlockNotFoundError, on timeout and on abort", async () => {
    const { cid } = await rawBlock("nobody stored this");
    const started = Date.now();
    const timedOut = await rejection(b.get(cid, { timeoutMs: 300 }));
    expect(timedOut).toBeInstanceOf(BlockNotFoundError);
    expect((timedOut as BlockNotFoundError).reason).toBe("timeout");
    expect((timedOut as Error).message).toMatch(/within 300 ms.*--peer/);
    expect(Date.now() - started).toBeLessThan(5_000);

    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const aborted = await rejection(b.get(cid, { signal: controller.signal }));
    expect(aborted).toBeInstanceOf(BlockNotFoundError);
    expect((aborted as BlockNotFoundError).reason).toBe("aborted");
  });

  it("keeps its peer id and blocks across restarts; start/stop lifecycle", async () => {
    const dir = join(root, "c");
    const closedPort = await freePort();
    const deadPeer = `/ip4/127.0.0.1/tcp/${closedPort}/p2p/${a.peerId.toString()}`;
    const c = track(createHeliaBlockStore({ dir, peers: [deadPeer] }));
    const unreachable: string[] = [];
    c.addEventListener("peer:unreachable", (event) => unreachable.push(event.detail.multiaddr));

    const { cid, bytes } = await rawBlock("survives a restart");
    expect(await rejection(c.get(cid))).toBeInstanceOf(BlockStoreNotStartedError);
    await c.start();
    await c.start(); // already started: no-op
    expect(unreachable).toEqual([deadPeer]);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    const peerId = c.peerId.toString();
    await c.put(cid, bytes);

    // a second process on the same repository is refused, and the first keeps working
    const intruder = createHeliaBlockStore({ dir });
    expect(await rejection(intruder.start())).toBeInstanceOf(BlockStoreLockedError);
    expect(await c.has(cid)).toBe(true);

    await c.stop();
    await c.stop(); // already stopped: no-op
    expect(await rejection(c.has(cid))).toBeInstanceOf(BlockStoreNotStartedError);
    expect(() => c.peerId).toThrow(BlockStoreNotStartedError);

    await c.start();
    expect(c.peerId.toString()).toBe(peerId);
    expect(c.multiaddrs()[0]).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${peerId}$`));
    expect(await c.has(cid)).toBe(true);
    expect(await c.get(cid)).toEqual(bytes);

    const badDial = await rejection(c.dial(`/ip4/127.0.0.1/tcp/${closedPort}/p2p/${peerId}`));
    expect(badDial).toBeInstanceOf(PeerDialError);
    await c.stop();
  });

  it("refuses a corrupted local block, and a peer never accepts it", async () => {
    const dir = join(root, "d");
    const d = track(createHeliaBlockStore({ dir }));
    const { cid } = await rawBlock("the true bytes");
    // corrupt the repository behind the store's back, as a disk fault would
    const level = new LevelBlockstore(join(dir, "blocks"));
    await level.open();
    await level.put(cid, text.encode("rotten bytes"));
    await level.close();

    await d.start();
    const local = await rejection(d.get(cid));
    expect(local).toBeInstanceOf(BlockIntegrityError);
    expect((local as BlockIntegrityError).where).toBe("get");

    await b.dial(d.multiaddrs()[0]!);
    const remote = await rejection(b.get(cid, { timeoutMs: 1_000 }));
    expect(remote).toBeInstanceOf(BlockNotFoundError);
    expect(await b.has(cid)).toBe(false);
    await d.stop();
  });
});

// ---------------------------------------------------------------------------------------------------------

/**
 * A fake Kubo RPC API with just the endpoints the Kubo store calls, answering as Kubo's RPC does (POST,
 * `arg` query parameters, multipart upload for block/put, JSON error bodies with status 500). There is no
 * Kubo daemon on the test machine: the real daemon path is untested here.
 */
class FakeKubo {
  readonly blocks = new Map<string, Uint8Array>();
  readonly requests: URL[] = [];
  /** CIDs for which block/get returns these bytes instead of the stored ones. */
  readonly lies = new Map<string, Uint8Array>();
  private server: Server | undefined;

  async listen(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        res.writeHead(500).end(String(err));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    if (this.server === undefined) return;
    const server = this.server;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://fake");
    this.requests.push(url);
    const chunks: Buffer[] = [];
    for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    if (req.method !== "POST") return json(res, 405, kuboError(`${req.method} not allowed`));
    const arg = url.searchParams.get("arg") ?? "";
    switch (url.pathname) {
      case "/api/v0/version":
        return json(res, 200, { Version: "0.0.0-fake", Commit: "", Repo: "16", System: "", Golang: "" });
      case "/api/v0/block/put": {
        const bytes = multipartFile(req.headers["content-type"] ?? "", body);
        const codec = url.searchParams.get("cid-codec") ?? "raw";
        const code = codec === "dag-cbor" ? dagCbor.code : raw.code;
        const cid = CID.createV1(code, await sha256.digest(bytes));
        this.blocks.set(cid.toString(), bytes);
        return json(res, 200, { Key: cid.toString(), Size: bytes.byteLength });
      }
      case "/api/v0/block/get": {
        const bytes = this.lies.get(arg) ?? this.blocks.get(arg);
        if (bytes !== undefined) {
          res.writeHead(200, { "Content-Type": "text/plain" }).end(bytes);
          return;
        }
        // an online daemon keeps looking for the block on the network until the client gives up
        return new Promise((resolve) => req.socket.once("close", resolve));
      }
      case "/api/v0/block/stat": {
        const bytes = this.blocks.get(arg);
        if (bytes === undefined) {
          return json(res, 500, kuboError(`block was not found locally (offline): ipld: could not find ${arg}`));
        }
        return json(res, 200, { Key: arg, Size: bytes.byteLength });
      }
      case "/api/v0/pin/add": {
        if (!this.blocks.has(arg)) return new Promise((resolve) => req.socket.once("close", resolve));
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(`${JSON.stringify({ Pins: [arg] })}\n`);
        return;
      }
      default:
        return json(res, 404, kuboError(`unknown command ${url.pathname}`));
    }
  }
}

function kuboError(message: string): object {
  return { Message: message, Code: 0, Type: "error" };
}

function json(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(value));
}

// Kubo reads the first file part of a multipart/form-data body; so does this.
function multipartFile(contentType: string, body: Buffer): Uint8Array {
  const boundary = /boundary=(.+)$/.exec(contentType)?.[1];
  if (boundary === undefined) throw new Error("not multipart");
  const start = body.indexOf("\r\n\r\n") + 4;
  const end = body.indexOf(`\r\n--${boundary}--`, start);
  return new Uint8Array(body.subarray(start, end));
}


describe("Kubo block store (against a fake Kubo RPC server; the real daemon path is untested here)", () => {
  const kubo = new FakeKubo();
  let url: string;
  let store: KuboBlockStore;

  beforeAll(async () => {
    url = await kubo.listen();
    store = createKuboBlockStore({ url, fetchTimeoutMs: 5_000 });
    await store.start();
  });

  afterAll(async () => {
    await store?.stop();
    await kubo.close();
  });

  it("puts, reports, gets and pins blocks with Kubo's parameters", async () => {
    const child = await rawBlock("kubo child");
    const parent = await cborBlock({ child: child.cid });
    expect(await store.has(child.cid)).toBe(false);
    await store.put(child.cid, child.bytes);
    await store.put(parent.cid, parent.bytes);
    expect(await store.has(parent.cid)).toBe(true);
    expect(await store.get(parent.cid)).toEqual(parent.bytes);
    await store.pin(parent.cid);

    const put = kubo.requests.filter((u) => u.pathname === "/api/v0/block/put").at(-1)!;
    expect(put.searchParams.get("cid-codec")).toBe("dag-cbor");
    expect(put.searchParams.get("mhtype")).toBe("sha2-256");
    const statReq = kubo.requests.find((u) => u.pathname === "/api/v0/block/stat")!;
    expect(statReq.searchParams.get("offline")).toBe("true");
    const pin = kubo.requests.find((u) => u.pathname === "/api/v0/pin/add")!;
    expect(pin.searchParams.get("arg")).toBe(parent.cid.toString());
    expect(pin.searchParams.get("recursive")).toBe("true");
  });

  it("refuses bytes from the daemon that do not hash to the CID", async () => {
    const { cid, bytes } = await rawBlock("kubo will lie about this");
    await store.put(cid, bytes);
    kubo.lies.set(cid.toString(), text.encode("tampered"));
    const err = await rejection(store.get(cid));
    expect(err).toBeInstanceOf(BlockIntegrityError);
    expect((err as BlockIntegrityError).where).toBe("get");
  });

  it("gives up on a block the daemon cannot find with BlockNotFoundError", async () => {
    const { cid } = await rawBlock("not on the kubo node");
    const err = await rejection(store.get(cid, { timeoutMs: 300 }));
    expect(err).toBeInstanceOf(BlockNotFoundError);
    expect((err as BlockNotFoundError).reason).toBe("timeout");
    const get = kubo.requests.filter((u) => u.pathname === "/api/v0/block/get").at(-1)!;
    expect(get.searchParams.get("timeout")).toBe("300ms");
  });

  it("throws KuboUnreachableError when no daemon answers, at start or later", async () => {
    const deadUrl = `http://127.0.0.1:${await freePort()}`;
    const dead = createKuboBlockStore({ url: deadUrl });
    const err = await rejection(dead.start());
    expect(err).toBeInstanceOf(KuboUnreachableError);
    expect((err as Error).message).toContain(deadUrl);
    expect((err as Error).message).toMatch(/start `ipfs daemon` or check --ipfs-api/i);
    expect(await rejection(dead.has((await rawBlock("x")).cid))).toBeInstanceOf(BlockStoreNotStartedError);

    const dying = new FakeKubo();
    const dyingStore = createKuboBlockStore({ url: await dying.listen() });
    await dyingStore.start();
    await dying.close();
    const { cid, bytes } = await rawBlock("daemon went away");
    expect(await rejection(dyingStore.put(cid, bytes))).toBeInstanceOf(KuboUnreachableError);
    await dyingStore.stop();
  });

  it("createBlockStore picks Helia by default and Kubo when a URL is given", () => {
    expect(createBlockStore({ kubo: url }).kind).toBe("kubo");
    expect(createBlockStore({ dir: join(tmpdir(), "never-started") }).kind).toBe("helia");
  });
});
