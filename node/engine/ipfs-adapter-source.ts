import { BlockNotFoundError } from "../../sdk/vault/block-store-errors.js";
import { catFile, fileSize, FileDagError, NotAFileError, parseFileCid } from "../../sdk/vault/files.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import type { AdapterSource, AdapterStream } from "./adapters.js";

/** How long an IPFS source waits for an adapter's root block before letting the next source try. */
export const DEFAULT_IPFS_ADAPTER_TIMEOUT_MS = 30_000;

/** Options of {@link ipfsAdapterSource}. */
export interface IpfsAdapterSourceOptions {
  /** Deadline for the root block (default 30 s); the content then streams under the caller's signal only. */
  timeoutMs?: number;
}

/**
 * A source serving adapters from IPFS by CID (the UnixFS file a creator published; see sdk/vault/files.ts).
 * `open` answers undefined when the CID is not a file or its root cannot be fetched in time, so that the
 * store tries its next source. The bytes are not trusted here: AdapterStore hashes them against the
 * persona's registered SHA-256 and drops them on a mismatch.
 *
 * @example
 * const sources = [folderAdapterSource("/srv/adapters"), ipfsAdapterSource(blockStore)]
 * const adapters = new AdapterStore({ dir: join(home, "adapters"), maxBytes: 2 ** 32, sources })
 */
export function ipfsAdapterSource(store: BlockStore, options: IpfsAdapterSourceOptions = {}): AdapterSource {
  const timeoutMs = options.timeoutMs ?? DEFAULT_IPFS_ADAPTER_TIMEOUT_MS;
  return {
    name: "ipfs",
    async open(cidText: string, openOptions: { signal?: AbortSignal } = {}): Promise<AdapterStream | undefined> {
      const { signal } = openOptions;
      signal?.throwIfAborted();
      const cid = parseFileCid(cidText);
      if (cid === undefined) return undefined;
      const deadline = AbortSignal.timeout(timeoutMs);
      let size: number;
      try {
        size = await fileSize(store, cid, { signal: signal === undefined ? deadline : AbortSignal.any([signal, deadline]) });
      } catch (err) {
        signal?.throwIfAborted();
        if (deadline.aborted || isUnavailable(err)) return undefined;
        throw err;
      }
      return {
        size,
        // Streamed only when read: the store's download loop drives it and aborts it with its signal.
        [Symbol.asyncIterator]: () => catFile(store, cid, { signal })[Symbol.asyncIterator](),
      };
    },
  };
}

function isUnavailable(err: unknown): boolean {
  return (
    err instanceof BlockNotFoundError ||
    err instanceof NotAFileError ||
    err instanceof FileDagError ||
    (err instanceof Error && (err.name === "UnsupportedCidError" || err.name === "TimeoutError" || err.name === "AbortError"))
  );
}
