/**
 * The dashboard server's failures. Each reaches the page as `{ error: { name, message } }` with the HTTP status
 * that {@link httpStatusOf} gives it; the message says what to do next.
 */
import { SoulmeshError } from "../../sdk/errors.js";

/** The dashboard's page was not built: dashboard/dist/index.html is missing. */
export class DashboardNotBuiltError extends SoulmeshError {
  override readonly name = "DashboardNotBuiltError";
  constructor(readonly assetsDir: string) {
    super(
      `The creator dashboard is not built: ${assetsDir}/index.html is missing. Build it with \`npm run build:dashboard\` ` +
        "in the soulmesh checkout (npm install does it too), then run `soulmesh dashboard` again.",
    );
  }
}

/** A request whose Host header is not this server's loopback address: a DNS-rebinding page, most likely. */
export class ForbiddenHostError extends SoulmeshError {
  override readonly name = "ForbiddenHostError";
  constructor(readonly host: string | undefined) {
    super(
      `Refused a request for host ${JSON.stringify(host ?? "")}: the dashboard answers only on 127.0.0.1 or localhost ` +
        "at its own port. Open the URL that `soulmesh dashboard` printed.",
    );
  }
}

/** A POST sent by a page of another origin (cross-site request forgery). */
export class ForbiddenOriginError extends SoulmeshError {
  override readonly name = "ForbiddenOriginError";
  constructor(readonly origin: string) {
    super(
      `Refused a request from the page at ${origin}: only the dashboard's own page may send transactions and uploads. ` +
        "Open the URL that `soulmesh dashboard` printed.",
    );
  }
}

/** No such page, asset or API route. */
export class RouteNotFoundError extends SoulmeshError {
  override readonly name = "RouteNotFoundError";
  constructor(
    readonly method: string,
    readonly path: string,
  ) {
    super(`Nothing at ${method} ${path} on the dashboard server. Open / for the page; the API is under /api and /rpc.`);
  }
}

/** The route exists but not with this method. */
export class MethodNotAllowedError extends SoulmeshError {
  override readonly name = "MethodNotAllowedError";
  constructor(
    readonly method: string,
    readonly path: string,
    readonly allowed: string[],
  ) {
    super(`${path} does not take ${method}; use ${allowed.join(" or ")}.`);
  }
}

/** An upload without Content-Length: its size must be known before anything is stored. */
export class LengthRequiredError extends SoulmeshError {
  override readonly name = "LengthRequiredError";
  constructor() {
    super("The upload has no Content-Length header. Send the adapter as a file body of known size (fetch with a Blob does).");
  }
}

/** A request body above the route's limit; nothing was stored. */
export class RequestTooLargeError extends SoulmeshError {
  override readonly name = "RequestTooLargeError";
  constructor(
    readonly path: string,
    readonly limit: number,
  ) {
    super(`The request body for ${path} is above its limit of ${limit} bytes. Send less: nothing was stored.`);
  }
}

/** A request body or parameter that is not what the route takes. */
export class InvalidRequestError extends SoulmeshError {
  override readonly name = "InvalidRequestError";
  constructor(readonly detail: string) {
    super(`Invalid request: ${detail}. Nothing was stored; fix the request and send it again.`);
  }
}

/** prepare named an adapter CID this server did not store (or stored before a restart). */
export class UnknownAdapterError extends SoulmeshError {
  override readonly name = "UnknownAdapterError";
  constructor(readonly adapterCid: string) {
    super(
      `The adapter ${adapterCid} was not uploaded to this dashboard server (or it restarted since). Upload the .gguf ` +
        "file again (POST /api/adapters), then prepare the persona with the CID it returns.",
    );
  }
}

/** The server has no IPFS node, so it cannot store or read cards, adapters and manifests. */
export class IpfsUnavailableError extends SoulmeshError {
  override readonly name = "IpfsUnavailableError";
  constructor() {
    super(
      "The dashboard server has no IPFS node, so personas cannot be published or read here. Restart `soulmesh dashboard` " +
        "without --no-ipfs, with `soulmesh devnet`/`soulmesh up` running, or with --ipfs-api pointing at a Kubo daemon.",
    );
  }
}

/** No persona with this id on chain. */
export class PersonaNotFoundError extends SoulmeshError {
  override readonly name = "PersonaNotFoundError";
  constructor(readonly personaId: bigint) {
    super(`There is no persona ${personaId} on this chain. Check the id (personas are numbered from 1).`);
  }
}

/** The chain's JSON-RPC endpoint did not answer the proxied request. */
export class ChainUnreachableError extends SoulmeshError {
  override readonly name = "ChainUnreachableError";
  constructor(
    readonly rpcUrl: string,
    options?: ErrorOptions,
  ) {
    super(
      `The chain at ${rpcUrl} did not answer. Check that the devnet (\`soulmesh devnet\`) or the node behind --rpc is running, ` +
        "then reload the page.",
      options,
    );
  }
}
