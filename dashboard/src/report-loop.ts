import type { JsonRpcProvider } from "ethers";
import { readCreatorReport } from "../../sdk/chain/creator-report.js";
import type { CreatorReport, CreatorReportOptions, LogCache } from "../../sdk/chain/creator-report.js";
import { TypedEventTarget } from "../../sdk/events.js";

/** Events of {@link ReportLoop}. */
export interface ReportLoopEvents {
  "report:loading": CustomEvent<{ creator: string }>;
  /** `chainTime`: the timestamp of the report's block. */
  "report:ready": CustomEvent<{ report: CreatorReport; chainTime: number }>;
  "report:failed": CustomEvent<unknown>;
}

/** Options of {@link ReportLoop}. */
export interface ReportLoopOptions {
  provider: JsonRpcProvider;
  contracts: CreatorReportOptions["contracts"];
  fromBlock: number;
  cache: LogCache;
  /** Resolves once the cache is persisted: "ready" then also means a reload reads only newer blocks. */
  persisted?: () => Promise<void>;
  /** How often to look for a new block, in ms (default 4,000). */
  pollMs?: number;
}

/**
 * Keeps one creator's report current: reads on demand and whenever a new block appears, never two reads at once
 * (a request during a read queues one more), and drops results of a creator no longer shown.
 *
 * @example
 * const loop = new ReportLoop({ provider, contracts, fromBlock, cache })
 * loop.addEventListener("report:ready", (e) => view.show(e.detail.report))
 * loop.setCreator("0x3C44…93BC"); loop.start()
 */
export class ReportLoop extends TypedEventTarget<ReportLoopEvents> {
  #creator: string | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #lastBlock = -1;
  #timer: ReturnType<typeof setInterval> | undefined;
  #abort = new AbortController();

  constructor(private readonly options: ReportLoopOptions) {
    super();
  }

  /** Polls for new blocks until {@link stop}. */
  start(): void {
    this.#timer ??= setInterval(() => void this.#poll(), this.options.pollMs ?? 4_000);
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#abort.abort();
  }

  /** Shows another creator (undefined: none); a read of the previous one is abandoned. */
  setCreator(creator: string | undefined): void {
    if (creator?.toLowerCase() === this.#creator?.toLowerCase()) return;
    this.#creator = creator;
    this.#abort.abort();
    this.#abort = new AbortController();
    this.#lastBlock = -1;
    if (creator) this.refresh();
  }

  /** Reads again now (or right after the read under way). */
  refresh(): void {
    if (!this.#creator) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.#read().finally(() => {
      this.#running = undefined;
      if (this.#again) {
        this.#again = false;
        this.refresh();
      }
    });
  }

  async #poll(): Promise<void> {
    if (!this.#creator || this.#running) return;
    try {
      const block = await this.options.provider.getBlockNumber();
      if (block !== this.#lastBlock) this.refresh();
    } catch {
      // The next poll tries again; a read would report the failure.
    }
  }

  async #read(): Promise<void> {
    const creator = this.#creator;
    if (!creator) return;
    const signal = this.#abort.signal;
    this.dispatchEvent(new CustomEvent("report:loading", { detail: { creator } }));
    try {
      const { provider, contracts, fromBlock, cache } = this.options;
      const toBlock = await provider.getBlockNumber();
      const [report, block] = await Promise.all([
        readCreatorReport({ contracts, creator, fromBlock, toBlock: Math.max(fromBlock, toBlock), cache, signal }),
        provider.getBlock(Math.max(fromBlock, toBlock)),
      ]);
      await this.options.persisted?.();
      if (signal.aborted || creator !== this.#creator) return;
      this.#lastBlock = toBlock;
      this.dispatchEvent(new CustomEvent("report:ready", { detail: { report, chainTime: block?.timestamp ?? Date.now() / 1000 } }));
    } catch (err) {
      if (signal.aborted || creator !== this.#creator) return;
      this.dispatchEvent(new CustomEvent("report:failed", { detail: err }));
    }
  }
}
