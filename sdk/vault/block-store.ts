/**
 * Where a vault's ciphertext blocks live. Two backends behind the one `BlockStore` interface:
 *
 * - `createHeliaBlockStore`: an embedded Helia node (the default). Blocks and node state live in LevelDB
 *   under one folder; libp2p over TCP + Noise + Yamux (+ identify, ping) and bitswap, so peers that dial
 *   each other exchange blocks. No DHT, no public bootstrap list, no HTTP gateways: the node talks only to
 *   the peers it is told about, which keeps CIDs of a user's vault off the public network by default.
 * - `createKuboBlockStore`: an external Kubo daemon through its RPC API (`--ipfs-api`).
 *
 * Both verify every block's bytes against its CID, on put and on get, whatever the backend says.
 */
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { multiaddr } from "@multiformats/multiaddr";
import { LevelBlockstore } from "blockstore-level";
import { LevelDatastore } from "datastore-level";
import { createHelia } from "helia";
import { create as createKuboClient } from "kubo-rpc-client";
import type { KuboRPCClient } from "kubo-rpc-client";
import type { Libp2p } from "libp2p";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";
import {
  BlockIntegrityError,
  BlockNotFoundError,
  BlockStoreLockedError,
  BlockStoreNotStartedError,
  KuboCidMismatchError,
  KuboRequestError,
  KuboUnreachableError,
  PeerDialError,
  UnsupportedCidError,
} from "./block-store-errors.js";
import type { BlockStore } from "./types.js";

export type PeerId = Libp2p["peerId"];

/** Options of `get` and `pin`: both may wait on the network, so both take a deadline as well as a signal. */
export interface BlockFetchOptions {
  signal?: AbortSignal;
  /** Give up after this long (default: the store's `fetchTimeoutMs`). */
  timeoutMs?: number;
}

/** The default deadline of a network fetch (get or pin of a block that is not local). */
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

const RAW = 0x55;
const DAG_CBOR = 0x71;
/** UnixFS nodes above the raw leaves of a multi-chunk public file (cards, adapters). */
const DAG_PB = 0x70;
const SHA2_256 = 0x12;
const CODEC_NAMES: ReadonlyMap<number, string> = new Map([
  [RAW, "raw"],
  [DAG_CBOR, "dag-cbor"],
  [DAG_PB, "dag-pb"],
]);

// ---------------------------------------------------------------------------------------------------------
// Helia

export interface HeliaBlockStoreInit {
  /** The repository folder: LevelDB block store in `blocks/`, node state (peer key, pins) in `datastore/`. */
  dir: string;
  /** libp2p listen addresses. Default: one loopback TCP port chosen by the OS. */
  listen?: string[];
  /** Multiaddrs (with `/p2p/<peer id>`) dialed at start; a peer that cannot be reached does not fail start. */
  peers?: string[];
  /** Deadline of a network fetch unless the call gives its own (default 30 s). */
  fetchTimeoutMs?: number;
  /** Aborts a start() in progress (its peer dials). */
  signal?: AbortSignal;
}

export interface HeliaBlockStoreEvents {
  /** A peer from `peers` could not be dialed at start; the store runs without it. */
  "peer:unreachable": CustomEvent<{ multiaddr: string; error: PeerDialError }>;
}

/** An embedded Helia node as a `BlockStore`; see `createHeliaBlockStore`. */
export interface HeliaBlockStore extends BlockStore {
  readonly kind: "helia";
  /** Fsyncs the block store's log: every block put before is durable against a power cut. */
  flush(options?: { signal?: AbortSignal }): Promise<void>;
  /** This node's libp2p identity; the same across restarts on the same `dir`. Throws when not started. */
  readonly peerId: PeerId;
  /** Where peers reach this node, each ending in `/p2p/<peer id>`. */
  multiaddrs(): string[];
  /** Connects to a peer so that each can fetch the other's blocks. */
  dial(multiaddr: string, options?: { signal?: AbortSignal }): Promise<void>;
  get(cid: CID, options?: BlockFetchOptions): Promise<Uint8Array>;
  pin(cid: CID, options?: BlockFetchOptions): Promise<void>;
  start(options?: { signal?: AbortSignal }): Promise<void>;
  addEventListener<K extends keyof HeliaBlockStoreEvents>(
    type: K,
    listener: (event: HeliaBlockStoreEvents[K]) => void,
    options?: AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HeliaBlockStoreEvents>(
    type: K,
    listener: (event: HeliaBlockStoreEvents[K]) => void,
  ): void;
}

/**
 * An embedded Helia node storing blocks in LevelDB under `dir`. Created stopped; `start()` opens the
 * repository, starts libp2p and dials `peers`. The peer key is kept in the repository's datastore (Helia's
 * keychain), so the peer id survives restarts; `dir` is made private to the user (0700).
 *
 * @example
 * const store = createHeliaBlockStore({ dir: join(home, "ipfs"), peers: ["/ip4/127.0.0.1/tcp/4011/p2p/12D3K…"] })
 * await store.start()
 * await store.put(cid, bytes)
 * const again = await store.get(cid, { timeoutMs: 10_000 })
 * await store.stop()
 */
export function createHeliaBlockStore(init: HeliaBlockStoreInit): HeliaBlockStore {
  return new HeliaBlockStoreImpl(init);
}

type HeliaNode = ReturnType<typeof createHelia>;

const FLUSH_KEY = "/soulmesh-flush";

interface Running {
  helia: HeliaNode;
  blockstore: LevelBlockstore;
  datastore: LevelDatastore;
}

class HeliaBlockStoreImpl implements HeliaBlockStore {
  readonly kind = "helia" as const;
  private readonly events = new EventTarget();
  private readonly dir: string;
  private readonly listen: string[];
  private readonly peers: string[];
  private readonly fetchTimeoutMs: number;
  private readonly initSignal: AbortSignal | undefined;
  private running: Running | undefined;
  // start() and stop() may be called again while one is under way; they wait on it instead of racing it.
  private transition: Promise<void> = Promise.resolve();

  constructor(init: HeliaBlockStoreInit) {
    this.dir = init.dir;
    this.listen = init.listen ?? ["/ip4/127.0.0.1/tcp/0"];
    this.peers = init.peers ?? [];
    this.fetchTimeoutMs = init.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    this.initSignal = init.signal;
  }

  addEventListener<K extends keyof HeliaBlockStoreEvents>(
    type: K,
    listener: (event: HeliaBlockStoreEvents[K]) => void,
    options?: AddEventListenerOptions,
  ): void {
    this.events.addEventListener(type, listener as EventListener, options);
  }

  removeEventListener<K extends keyof HeliaBlockStoreEvents>(
    type: K,
    listener: (event: HeliaBlockStoreEvents[K]) => void,
  ): void {
    this.events.removeEventListener(type, listener as EventListener);
  }

  get peerId(): PeerId {
    return this.node("read the peer id").libp2p.peerId;
  }

  multiaddrs(): string[] {
    return this.node("list addresses")
      .libp2p.getMultiaddrs()
      .map((ma) => ma.toString());
  }

  async dial(address: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    const helia = this.node("dial a peer");
    try {
      await helia.libp2p.dial(multiaddr(address), { signal: options.signal });
    } catch (err) {
      options.signal?.throwIfAborted();
      throw new PeerDialError(address, err);
    }
  }

  async put(cid: CID, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<void> {
    const helia = this.node("put a block");
    await verifyBlock(cid, bytes, "put");
    await helia.blockstore.put(cid, bytes, { signal: options.signal });
  }

  /**
   * Helia's level blockstore writes without fsync. One synced write to the same LevelDB flushes its log,
   * and with it every put before: a delete of a key no block uses is such a write, and leaves no trace.
   */
  async flush(options: { signal?: AbortSignal } = {}): Promise<void> {
    this.node("flush blocks");
    options.signal?.throwIfAborted();
    await this.running!.blockstore.db.del(FLUSH_KEY, { sync: true });
  }

  async get(cid: CID, options: BlockFetchOptions = {}): Promise<Uint8Array> {
    const helia = this.node("get a block");
    assertSupportedCid(cid);
    const deadline = fetchDeadline(options, this.fetchTimeoutMs);
    let bytes: Uint8Array;
    try {
      const chunks: Uint8Array[] = [];
      for await (const chunk of helia.blockstore.get(cid, { signal: deadline.signal })) chunks.push(chunk);
      bytes = concat(chunks);
    } catch (err) {
      throw deadline.explain(cid, err);
    }
    // Helia checks blocks that come from peers, not those it reads back from its own disk.
    await verifyBlock(cid, bytes, "get");
    return bytes;
  }

  async has(cid: CID, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    return this.node("check for a block").blockstore.has(cid, { signal: options.signal });
  }

  /** Pins the block and, for dag-cbor, every block it links to (fetching what is missing). Idempotent. */
  async pin(cid: CID, options: BlockFetchOptions = {}): Promise<void> {
    const helia = this.node("pin a block");
    assertSupportedCid(cid);
    const deadline = fetchDeadline(options, this.fetchTimeoutMs);
    try {
      if (await helia.pins.isPinned(cid, { signal: deadline.signal })) return;
      for await (const _ of helia.pins.add(cid, { signal: deadline.signal })) {
        // draining the generator is what walks the DAG and records each block's pin
      }
    } catch (err) {
      // two concurrent pins of one CID: the loser's work is already done by the winner
      if (err instanceof Error && err.name === "AlreadyPinnedError") return;
      throw deadline.explain(cid, err);
    }
  }

  start(options: { signal?: AbortSignal } = {}): Promise<void> {
    const run = this.transition.then(() => this.doStart(options.signal));
    this.transition = run.catch(() => {});
    return run;
  }

  stop(): Promise<void> {
    const run = this.transition.then(() => this.doStop());
    this.transition = run.catch(() => {});
    return run;
  }

  private async doStart(callerSignal: AbortSignal | undefined): Promise<void> {
    if (this.running !== undefined) return;
    const signal = anySignal(callerSignal, this.initSignal);
    signal?.throwIfAborted();
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // The datastore holds the node's private key: keep the repository private even if `dir` existed.
    await chmod(this.dir, 0o700);
    const blockstore = new LevelBlockstore(join(this.dir, "blocks"));
    const datastore = new LevelDatastore(join(this.dir, "datastore"));
    try {
      // Opening the Level databases directly, not through the stores' open(): those flatten the error to
      // a string, losing the LEVEL_LOCKED code that says another process holds the repository.
      await blockstore.db.open({ createIfMissing: true, compression: false });
      await datastore.db.open({ createIfMissing: true, compression: false });
    } catch (err) {
      await closeQuietly(blockstore, datastore);
      throw isLevelLocked(err) ? new BlockStoreLockedError(this.dir, err) : err;
    }
    // Full control over libp2p (config "replace"): every default Helia would add (public bootstrap list,
    // mDNS, DHT, relays, UPnP, delegated HTTP routing and gateways) reaches beyond the peers we were given.
    const helia = createHelia({
      blockstore,
      datastore,
      libp2p: {
        config: "replace",
        addresses: { listen: this.listen },
        transports: [tcp()],
        connectionEncrypters: [noise()],
        streamMuxers: [yamux()],
        peerDiscovery: [],
        services: { identify: identify(), ping: ping() },
      },
      http: { delegatedRouters: [], recursiveGateways: [] },
    });
    try {
      await helia.start();
    } catch (err) {
      await helia.stop().catch(() => {});
      await closeQuietly(blockstore, datastore);
      throw err;
    }
    this.running = { helia, blockstore, datastore };
    await Promise.all(
      this.peers.map(async (peer) => {
        try {
          await this.dial(peer, { signal });
        } catch (err) {
          if (signal?.aborted === true) return;
          const error = err instanceof PeerDialError ? err : new PeerDialError(peer, err);
          this.events.dispatchEvent(new CustomEvent("peer:unreachable", { detail: { multiaddr: peer, error } }));
        }
      }),
    );
    if (signal?.aborted === true) {
      await this.doStop();
      signal.throwIfAborted();
    }
  }

  private async doStop(): Promise<void> {
    const running = this.running;
    if (running === undefined) return;
    this.running = undefined;
    try {
      await running.helia.stop();
    } finally {
      await closeQuietly(running.blockstore, running.datastore);
    }
  }

  private node(operation: string): HeliaNode {
    if (this.running === undefined) throw new BlockStoreNotStartedError(operation);
    return this.running.helia;
  }
}

async function closeQuietly(...stores: Array<{ close(): Promise<void> }>): Promise<void> {
  for (const store of stores) await store.close().catch(() => {});
}

function isLevelLocked(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if ((e as { code?: unknown }).code === "LEVEL_LOCKED") return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// Kubo

export interface KuboBlockStoreInit {
  /** The daemon's RPC API, e.g. `http://127.0.0.1:5001` (what `--ipfs-api` names). */
  url: string;
  /** Deadline of a get or pin that may wait on the IPFS network (default 30 s). */
  fetchTimeoutMs?: number;
  /** Aborts a start() in progress (its check that the daemon answers). */
  signal?: AbortSignal;
}

/** A Kubo daemon as a `BlockStore`; see `createKuboBlockStore`. */
export interface KuboBlockStore extends BlockStore {
  readonly kind: "kubo";
  readonly url: string;
  get(cid: CID, options?: BlockFetchOptions): Promise<Uint8Array>;
  pin(cid: CID, options?: BlockFetchOptions): Promise<void>;
  start(options?: { signal?: AbortSignal }): Promise<void>;
}

/**
 * A Kubo daemon reached over its RPC API. `start()` checks that the daemon answers (`KuboUnreachableError`
 * otherwise); the daemon's own repository and network do the storing and fetching.
 *
 * Tested against a fake RPC server that mimics the four endpoints used (block/put, block/get, block/stat,
 * pin/add, plus version) and, in test/cli/ipfs.test.ts, through kubo-rpc-client against cli/ipfs/rpc-server.ts
 * over a real Helia node; the path against a real `ipfs daemon` is untested in this repository.
 *
 * @example
 * const store = createKuboBlockStore({ url: "http://127.0.0.1:5001" })
 * await store.start() // throws KuboUnreachableError when no daemon listens there
 * await store.put(cid, bytes)
 */
export function createKuboBlockStore(init: KuboBlockStoreInit): KuboBlockStore {
  return new KuboBlockStoreImpl(init);
}

// Options the client forwards as query parameters but does not declare (Kubo's names, as sent).
type KuboParams = Record<string, unknown> & { signal?: AbortSignal };

class KuboBlockStoreImpl implements KuboBlockStore {
  readonly kind = "kubo" as const;
  readonly url: string;
  private readonly fetchTimeoutMs: number;
  private readonly initSignal: AbortSignal | undefined;
  private client: KuboRPCClient | undefined;

  constructor(init: KuboBlockStoreInit) {
    this.url = init.url;
    this.fetchTimeoutMs = init.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    this.initSignal = init.signal;
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.client !== undefined) return;
    const signal = anySignal(options.signal, this.initSignal);
    let client: KuboRPCClient;
    try {
      client = createKuboClient({ url: this.url });
    } catch (err) {
      throw new KuboUnreachableError(this.url, err);
    }
    try {
      await client.version({ signal });
    } catch (err) {
      signal?.throwIfAborted();
      throw this.requestError("version", err);
    }
    this.client = client;
  }

  async stop(): Promise<void> {
    this.client = undefined;
  }

  async put(cid: CID, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<void> {
    const client = this.rpc("put a block");
    await verifyBlock(cid, bytes, "put");
    let stored: CID;
    try {
      // `cid-codec` (Kubo ≥ 0.13) rather than the client's deprecated `format`, whose dag-cbor retry
      // would silently fall back to the legacy "cbor" name.
      const params: KuboParams = {
        signal: options.signal,
        "cid-codec": CODEC_NAMES.get(cid.code),
        mhtype: "sha2-256",
      };
      stored = await client.block.put(bytes, params);
    } catch (err) {
      options.signal?.throwIfAborted();
      throw this.requestError("block/put", err);
    }
    if (!stored.toV1().equals(cid.toV1())) throw new KuboCidMismatchError(this.url, cid.toString(), stored.toString());
  }

  async get(cid: CID, options: BlockFetchOptions = {}): Promise<Uint8Array> {
    const client = this.rpc("get a block");
    assertSupportedCid(cid);
    const deadline = fetchDeadline(options, this.fetchTimeoutMs);
    let bytes: Uint8Array;
    try {
      // `timeout` also bounds the daemon's own search of the network, not only our wait for it.
      const params: KuboParams = { signal: deadline.signal, timeout: deadline.timeoutMs };
      bytes = await client.block.get(cid, params);
    } catch (err) {
      throw deadline.explain(cid, err, (e) => this.requestError("block/get", e));
    }
    await verifyBlock(cid, bytes, "get");
    return bytes;
  }

  async has(cid: CID, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    const client = this.rpc("check for a block");
    try {
      // offline: an online daemon would otherwise look for the block on the network and wait.
      const params: KuboParams = { signal: options.signal, offline: true };
      await client.block.stat(cid, params);
      return true;
    } catch (err) {
      options.signal?.throwIfAborted();
      if (isHttpError(err) && /not found|could not find/i.test(err.message)) return false;
      throw this.requestError("block/stat", err);
    }
  }

  /** Pins recursively on the daemon (which fetches missing linked blocks). Idempotent, as Kubo's pin is. */
  async pin(cid: CID, options: BlockFetchOptions = {}): Promise<void> {
    const client = this.rpc("pin a block");
    assertSupportedCid(cid);
    const deadline = fetchDeadline(options, this.fetchTimeoutMs);
    try {
      const params: KuboParams = { signal: deadline.signal, recursive: true, timeout: deadline.timeoutMs };
      await client.pin.add(cid, params);
    } catch (err) {
      throw deadline.explain(cid, err, (e) => this.requestError("pin/add", e));
    }
  }

  private rpc(operation: string): KuboRPCClient {
    if (this.client === undefined) throw new BlockStoreNotStartedError(operation);
    return this.client;
  }

  private requestError(operation: string, err: unknown): Error {
    if (isConnectionFailure(err)) return new KuboUnreachableError(this.url, err);
    const detail = err instanceof Error ? err.message : String(err);
    return new KuboRequestError(this.url, operation, detail, err);
  }
}

function isHttpError(err: unknown): err is Error {
  return err instanceof Error && err.name === "HTTPError";
}

const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
]);

// fetch() reports a refused or dropped connection as TypeError("fetch failed") with the socket error as
// its cause, sometimes wrapped once more (AggregateError for each address tried).
function isConnectionFailure(err: unknown): boolean {
  const seen = new Set<unknown>();
  const stack: unknown[] = [err];
  while (stack.length > 0) {
    const e = stack.pop();
    if (!(e instanceof Error) || seen.has(e)) continue;
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_ERROR_CODES.has(code)) return true;
    if (e.name === "TypeError" && e.message === "fetch failed") return true;
    stack.push(e.cause);
    if (e instanceof AggregateError) stack.push(...e.errors);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// Choosing a backend

/** Helia unless `kubo` names a daemon's RPC API. */
export type BlockStoreConfig =
  | (HeliaBlockStoreInit & { kubo?: undefined })
  | ({ kubo: string; fetchTimeoutMs?: number; signal?: AbortSignal } & Partial<HeliaBlockStoreInit>);

/**
 * The store a config asks for: an embedded Helia node in `dir` (the default), or the Kubo daemon at `kubo`
 * (then `dir`, `listen` and `peers` are ignored: the daemon has its own repository and peers).
 *
 * @example
 * const store = createBlockStore(opts.ipfsApi ? { kubo: opts.ipfsApi } : { dir: join(home, "ipfs") })
 * await store.start()
 */
export function createBlockStore(config: HeliaBlockStoreInit & { kubo?: undefined }): HeliaBlockStore;
export function createBlockStore(config: { kubo: string; fetchTimeoutMs?: number; signal?: AbortSignal }): KuboBlockStore;
export function createBlockStore(config: BlockStoreConfig): HeliaBlockStore | KuboBlockStore;
export function createBlockStore(config: BlockStoreConfig): HeliaBlockStore | KuboBlockStore {
  if (typeof config.kubo === "string") {
    return createKuboBlockStore({ url: config.kubo, fetchTimeoutMs: config.fetchTimeoutMs, signal: config.signal });
  }
  return createHeliaBlockStore(config as HeliaBlockStoreInit);
}

// ---------------------------------------------------------------------------------------------------------
// Shared

function assertSupportedCid(cid: CID): void {
  if (cid.version !== 1) throw new UnsupportedCidError(cid.toString(), `it is a CIDv${cid.version}`);
  if (!CODEC_NAMES.has(cid.code)) {
    throw new UnsupportedCidError(cid.toString(), `its codec is 0x${cid.code.toString(16)}`);
  }
  if (cid.multihash.code !== SHA2_256) {
    throw new UnsupportedCidError(cid.toString(), `its hash function is 0x${cid.multihash.code.toString(16)}`);
  }
}

async function verifyBlock(cid: CID, bytes: Uint8Array, where: "put" | "get"): Promise<void> {
  assertSupportedCid(cid);
  const digest = await sha256.digest(bytes);
  if (!equalBytes(digest.digest, cid.multihash.digest)) throw new BlockIntegrityError(cid.toString(), where);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

// Always a plain Uint8Array (LevelDB hands back Buffers), so that callers compare and serialise alike.
function concat(chunks: Uint8Array[]): Uint8Array {
  if (chunks.length === 1) {
    const chunk = chunks[0]!;
    return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

function anySignal(...signals: Array<AbortSignal | undefined>): AbortSignal | undefined {
  const present = signals.filter((s): s is AbortSignal => s !== undefined);
  if (present.length <= 1) return present[0];
  return AbortSignal.any(present);
}

interface FetchDeadline {
  signal: AbortSignal;
  timeoutMs: number;
  /** The typed error for a failed fetch: not found in time when a signal fired, else `other(err)` or err. */
  explain(cid: CID, err: unknown, other?: (err: unknown) => Error): unknown;
}

// The caller's signal and the timeout end the fetch alike, but the error says which one did, so that a
// caller that gave up is not told to "retry with a longer timeout".
function fetchDeadline(options: BlockFetchOptions, defaultTimeoutMs: number): FetchDeadline {
  const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = anySignal(options.signal, timeout)!;
  return {
    signal,
    timeoutMs,
    explain(cid, err, other) {
      if (err instanceof BlockIntegrityError || err instanceof UnsupportedCidError) return err;
      if (options.signal?.aborted === true) return new BlockNotFoundError(cid.toString(), "aborted", undefined, err);
      if (timeout.aborted || isTimeoutError(err)) return new BlockNotFoundError(cid.toString(), "timeout", timeoutMs, err);
      return other !== undefined ? other(err) : err;
    },
  };
}

// Kubo's own `timeout` can beat ours by a few milliseconds; the client reports it as a TimeoutError.
function isTimeoutError(err: unknown): boolean {
  return err instanceof Error && err.name === "TimeoutError";
}
