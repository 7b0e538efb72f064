/**
 * The quote protocol (/soulmesh/quote/1.0.0): a client asks what a provider serves and at what price, and
 * gets one Quote. The figures come from a callback so that this file knows nothing of the engine or billing.
 */
import type { Libp2p } from "libp2p";
import type { Quote, QuoteRequest } from "../../sdk/protocol/index.js";
import { handleProtocol, type HandleProtocolOptions, type ProtocolService } from "./handler.js";

/** What a quote reports, before it is narrowed to the client's request. */
export type QuoteFacts = Omit<Quote, "type">;

export interface QuoteServiceOptions extends Omit<HandleProtocolOptions<"quote">, "handler"> {
  /**
   * The provider's current offer: models and cached adapters by SHA-256 (0x-prefixed), prices, and the
   * queue length (e.g. the engine's `load.queued + load.running`). Called once per request, so it must be
   * cheap; the engine's `load` getter is.
   */
  quoteSource: (options: { signal: AbortSignal }) => QuoteFacts | Promise<QuoteFacts>;
}

/**
 * The quote for `request`: when the client names models or adapters, only those the provider has are
 * listed, so that it learns what it asked about without receiving the whole catalogue.
 *
 * @example
 * buildQuote({ type: "quote.request", models: [sha] }, facts)
 */
export function buildQuote(request: QuoteRequest, facts: QuoteFacts): Quote {
  const narrow = (have: readonly string[], wanted: readonly string[] | undefined): string[] => {
    if (wanted === undefined) return [...have];
    const set = new Set(wanted.map((h) => h.toLowerCase()));
    return have.filter((h) => set.has(h.toLowerCase()));
  };
  return {
    type: "quote",
    ...facts,
    models: narrow(facts.models, request.models),
    cachedAdapters: narrow(facts.cachedAdapters, request.adapters),
  };
}

/**
 * Serves the quote protocol on `libp2p`.
 *
 * @example
 * const quotes = await serveQuotes(host.libp2p, {
 *   quoteSource: () => ({ provider, models, cachedAdapters, priceInputPerMillion: "100", priceOutputPerMillion: "300",
 *     queueLength: engine.load.queued + engine.load.running, maxTokens: 4096 }),
 * })
 * await quotes.stop()
 */
export function serveQuotes(libp2p: Libp2p, options: QuoteServiceOptions): Promise<ProtocolService> {
  const { quoteSource, ...rest } = options;
  return handleProtocol(libp2p, "quote", {
    ...rest,
    handler: async (request, { signal }) => buildQuote(request, await quoteSource({ signal })),
  });
}
