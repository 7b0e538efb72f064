/**
 * CORS for the OpenAI gateway, so that a chat web page served from another origin (another localhost port,
 * a hosted UI) may call it from the browser when the operator allows that origin.
 *
 * Off by default: no CORS headers at all. Either way, a request that carries an `Origin` the gateway does not
 * allow is refused (403) before anything else: browsers send `Origin` with every cross-origin POST, including
 * the "simple" ones that skip the preflight (a `text/plain` body), so without this any web site the user
 * visits could make the agent run turns (spending the deposit, writing its memory) without reading the reply.
 * Programs that are not browsers (the OpenAI SDKs, curl) send no `Origin` and are not concerned.
 *
 * The preflight (`OPTIONS`) carries no credentials by design, so it needs no API key; the real request still does.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { OpenAiRequestError } from "./errors.js";

/** How long browsers may reuse a preflight's answer, in seconds (Chromium caps it at 7200). */
export const CORS_MAX_AGE_S = 7200;

/** Headers the gateway's answers carry that a page may read besides the safelisted ones. */
export const EXPOSED_HEADERS = ["x-soulmesh-ignored-messages", "x-soulmesh-provider", "x-soulmesh-cost", "x-should-retry", "retry-after", "allow"] as const;

/** Request headers always allowed: the API key and the JSON body's type. Others asked for are echoed. */
const BASE_ALLOWED_HEADERS = ["authorization", "content-type"];

/** The most request headers a preflight's answer echoes; a real client asks for about ten. */
const MAX_ECHOED_HEADERS = 64;

/** An HTTP header name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

/**
 * Normalises an origin as browsers send it in `Origin` (`scheme://host[:port]`, lower case, no default port,
 * no path), or `*` for any. Non-HTTP schemes (`chrome-extension://id`, `tauri://localhost`) are kept as written,
 * lower-cased.
 *
 * @example
 * normalizeOrigin("http://LocalHost:5173/") // "http://localhost:5173"
 * normalizeOrigin("https://chat.example.com:443") // "https://chat.example.com"
 * normalizeOrigin("http://localhost:5173/app") // undefined: an origin has no path
 * @returns the origin, or undefined when `value` is not one (`null`, a path, a query, not a URL).
 */
export function normalizeOrigin(value: string): string | undefined {
  const v = value.trim().replace(/\/$/, "");
  if (v === "*") return v;
  if (!/^[a-z][a-z0-9+.-]*:\/\/[^/?#\s@]+$/i.test(v)) return undefined;
  if (/^https?:/i.test(v)) {
    try {
      return new URL(v).origin;
    } catch {
      return undefined;
    }
  }
  return v.toLowerCase();
}

/**
 * Which web origins may call the gateway from a browser, and the CORS headers of their requests.
 *
 * @example
 * const cors = new CorsPolicy(["http://localhost:5173"])
 * cors.allows("http://localhost:5173") // true
 */
export class CorsPolicy {
  readonly #any: boolean;
  readonly #origins: ReadonlySet<string>;

  /** @param origins normalised origins ({@link normalizeOrigin}), `*` for any; none: CORS off. */
  constructor(origins: readonly string[]) {
    this.#any = origins.includes("*");
    this.#origins = new Set(origins);
  }

  /** Whether CORS is on (some origin is allowed). */
  get enabled(): boolean {
    return this.#any || this.#origins.size > 0;
  }

  /**
   * Whether a page at `origin` (a request's `Origin` header) may call the gateway.
   *
   * @example
   * new CorsPolicy(["*"]).allows("http://anything:1") // true
   */
  allows(origin: string): boolean {
    if (this.#any) return true;
    const normal = normalizeOrigin(origin);
    return normal !== undefined && normal !== "*" && this.#origins.has(normal);
  }

  /**
   * Refuses a request from a browser page whose origin is not allowed (403, no CORS headers), else sets the
   * CORS headers every answer to it carries (JSON, streamed or error). A request without `Origin` is not
   * from a cross-origin page: nothing to do.
   *
   * @example
   * cors.apply(req, res) // before the API key is checked, so a 401 is readable by an allowed page
   * @throws OpenAiRequestError 403 `origin_not_allowed`.
   */
  apply(req: IncomingMessage, res: ServerResponse): void {
    // Caches must not serve one origin's answer to another once answers depend on the origin.
    if (this.enabled && !this.#any) res.setHeader("vary", "Origin");
    const origin = req.headers.origin;
    if (origin === undefined) return;
    if (!this.allows(origin)) throw originNotAllowed(origin);
    res.setHeader("access-control-allow-origin", this.#any ? "*" : origin);
    res.setHeader("access-control-expose-headers", EXPOSED_HEADERS.join(", "));
  }

  /**
   * Whether `req` is a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
   *
   * @example
   * if (cors.isPreflight(req)) cors.answerPreflight(req, res)
   */
  isPreflight(req: IncomingMessage): boolean {
    return req.method === "OPTIONS" && req.headers.origin !== undefined && req.headers["access-control-request-method"] !== undefined;
  }

  /**
   * Answers a preflight of an allowed origin with 204: the methods, the headers asked for (the OpenAI JS
   * client's `x-stainless-*` among them) and how long to remember it. Call {@link apply} first.
   *
   * @example
   * cors.apply(req, res); cors.answerPreflight(req, res)
   */
  answerPreflight(req: IncomingMessage, res: ServerResponse): void {
    const headers: Record<string, string> = {
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": allowedHeaders(req.headers["access-control-request-headers"]).join(", "),
      "access-control-max-age": String(CORS_MAX_AGE_S),
      vary: this.#any ? "Access-Control-Request-Headers" : "Origin, Access-Control-Request-Headers",
    };
    // Chromium asks before a public page reaches a loopback server (Private Network Access); the origin is allowed.
    if (req.headers["access-control-request-private-network"] === "true") headers["access-control-allow-private-network"] = "true";
    res.writeHead(204, headers);
    res.end();
  }
}

/** The base headers plus the well-formed ones a preflight asked for, lower case, without duplicates. */
function allowedHeaders(requested: string | undefined): string[] {
  const asked = (requested ?? "")
    .split(",")
    .map((h) => h.trim().toLowerCase())
    .filter((h) => HEADER_NAME.test(h));
  return [...new Set([...BASE_ALLOWED_HEADERS, ...asked])].slice(0, BASE_ALLOWED_HEADERS.length + MAX_ECHOED_HEADERS);
}

function originNotAllowed(origin: string): OpenAiRequestError {
  const shown = origin.slice(0, 200);
  return new OpenAiRequestError(
    403,
    "invalid_request_error",
    "origin_not_allowed",
    `Requests from web pages at ${shown} are not allowed: restart \`soulmesh serve\` with --cors-origin ${shown} to let that page call this gateway.`,
  );
}
