import { SoulmeshError } from "../errors.js";

/**
 * The block did not arrive before the caller gave up: its timeout elapsed (`reason: "timeout"`) or its
 * signal was aborted (`reason: "aborted"`). Neither this node nor any connected peer served it in time.
 *
 * @example
 * try { await store.get(cid, { timeoutMs: 5_000 }) } catch (err) {
 *   if (err instanceof BlockNotFoundError) await store.dial(peerThatHasIt)
 * }
 */
export class BlockNotFoundError extends SoulmeshError {
  override readonly name = "BlockNotFoundError";
  constructor(
    readonly cid: string,
    readonly reason: "timeout" | "aborted",
    readonly timeoutMs: number | undefined,
    cause?: unknown,
  ) {
    super(
      reason === "timeout"
        ? `Block ${cid} was not found here nor on any connected peer within ${timeoutMs} ms. ` +
            `Connect a node that holds it (--peer <multiaddr>, or dial it), check that it still pins the ` +
            `block, or retry with a longer timeout.`
        : `Fetching block ${cid} was aborted before any node served it. Retry when the caller still needs it.`,
      { cause },
    );
  }
}

/**
 * Bytes whose hash is not the CID's: refused on put (the caller computed the CID from other bytes) and on
 * get (the local store or the daemon returned corrupted data). Peers' bad blocks never reach here: the
 * bitswap layer drops them and the fetch ends in a `BlockNotFoundError` instead.
 */
export class BlockIntegrityError extends SoulmeshError {
  override readonly name = "BlockIntegrityError";
  constructor(
    readonly cid: string,
    readonly where: "put" | "get",
  ) {
    super(
      where === "put"
        ? `The bytes given for block ${cid} do not hash to that CID. Compute the CID from the exact bytes ` +
            `you store (sha2-256 over the encoded block) and put again.`
        : `Block ${cid} failed verification: the store returned bytes that do not hash to its CID. ` +
            `The local repository (or the Kubo daemon's) is corrupted: restore it from a backup, or remove ` +
            `the block and fetch it again from a peer that pins it.`,
    );
  }
}

/** A CID this store cannot verify or store: only CIDv1 raw, dag-cbor or dag-pb blocks hashed with sha2-256 are. */
export class UnsupportedCidError extends SoulmeshError {
  override readonly name = "UnsupportedCidError";
  constructor(
    readonly cid: string,
    readonly problem: string,
  ) {
    super(
      `Cannot store or verify block ${cid}: ${problem}. Vault blocks are CIDv1, codec raw (0x55), ` +
        `dag-cbor (0x71) or dag-pb (0x70, UnixFS files), hashed with sha2-256; re-encode the block with those.`,
    );
  }
}

/** An operation on a block store that is not started (never started, or stopped). */
export class BlockStoreNotStartedError extends SoulmeshError {
  override readonly name = "BlockStoreNotStartedError";
  constructor(readonly operation: string) {
    super(`Cannot ${operation}: the block store is not started. Call \`await store.start()\` first.`);
  }
}

/** The repository folder is held open by another process (LevelDB's lock). */
export class BlockStoreLockedError extends SoulmeshError {
  override readonly name = "BlockStoreLockedError";
  constructor(
    readonly dir: string,
    cause?: unknown,
  ) {
    super(
      `The block store at ${dir} is in use by another process (another soulmesh node or CLI?). ` +
        `Stop that process, or give this one its own folder (--home / SOULMESH_HOME).`,
      { cause },
    );
  }
}

/** Dialing a peer's multiaddr failed (bad address, peer down, or it speaks other protocols). */
export class PeerDialError extends SoulmeshError {
  override readonly name = "PeerDialError";
  constructor(
    readonly multiaddr: string,
    cause?: unknown,
  ) {
    super(
      `Could not connect to the IPFS peer ${multiaddr}: ${cause instanceof Error ? cause.message : String(cause)}. ` +
        `Check that the address (with its /p2p/<peer id>) is right and that the peer is running and reachable.`,
      { cause },
    );
  }
}

/** The Kubo RPC API did not answer: no daemon there, or the wrong address. */
export class KuboUnreachableError extends SoulmeshError {
  override readonly name = "KuboUnreachableError";
  constructor(
    readonly url: string,
    cause?: unknown,
  ) {
    super(
      `Cannot reach the Kubo RPC API at ${url}. Start \`ipfs daemon\` or check --ipfs-api ` +
        `(it is the daemon's API address, by default http://127.0.0.1:5001).`,
      { cause },
    );
  }
}

/** The Kubo daemon answered a request with an error. */
export class KuboRequestError extends SoulmeshError {
  override readonly name = "KuboRequestError";
  constructor(
    readonly url: string,
    readonly operation: string,
    readonly detail: string,
    cause?: unknown,
  ) {
    super(
      `The Kubo daemon at ${url} refused ${operation}: ${detail}. Check the daemon's log and its ` +
        `version (Kubo 0.13 or later is needed for \`cid-codec\`), then retry.`,
      { cause },
    );
  }
}

/** The Kubo daemon stored a block under another CID than the one computed here (an old or odd daemon). */
export class KuboCidMismatchError extends SoulmeshError {
  override readonly name = "KuboCidMismatchError";
  constructor(
    readonly url: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(
      `The Kubo daemon at ${url} stored the block as ${actual}, not ${expected}. Upgrade Kubo to 0.13 or ` +
        `later (it must honour cid-codec and mhtype on block/put), or use the embedded Helia store.`,
    );
  }
}
