import { getAddress } from "ethers";
import type { UsageViolation } from "./usage.js";

/** Why a provider was dropped. */
export interface DroppedProvider {
  provider: string;
  violations: UsageViolation[];
  /** Unix milliseconds. */
  at: number;
}

/**
 * Providers a client never uses again: those that overcharged or signed a receipt that was not the turn's.
 * Share one list between chats (pass it to every openChat) so that a provider caught once is avoided by all
 * of them; persist `entries()` to keep it across runs.
 *
 * @example
 * const blocklist = new ProviderBlocklist()
 * const chat = await openChat({ …, blocklist })
 * blocklist.has(address) // true once the provider cheated
 */
export class ProviderBlocklist {
  readonly #dropped = new Map<string, DroppedProvider>();

  constructor(entries: Iterable<DroppedProvider> = []) {
    for (const e of entries) this.#dropped.set(getAddress(e.provider), { ...e, provider: getAddress(e.provider) });
  }

  /** Adds `provider`; the first reason is kept. */
  drop(provider: string, violations: UsageViolation[], at: number = Date.now()): void {
    const address = getAddress(provider);
    if (!this.#dropped.has(address)) this.#dropped.set(address, { provider: address, violations, at });
  }

  has(provider: string): boolean {
    return this.#dropped.has(getAddress(provider));
  }

  get(provider: string): DroppedProvider | undefined {
    return this.#dropped.get(getAddress(provider));
  }

  entries(): DroppedProvider[] {
    return [...this.#dropped.values()];
  }
}
