/**
 * The dashboard's HTTP API, as its server (cli/dashboard/server.ts) answers and the page (api.ts) reads it: one
 * definition for both sides. Types only: nothing here runs. Errors are `{ error: { name, message } }`.
 */
import type { Deployment } from "../../sdk/chain/deployment.js";

/** A base model the publish form offers. */
export interface BaseModelSuggestion {
  /** A short name: the GGUF file's name. */
  name?: string;
  /** "0x" + 64 lowercase hex digits. */
  sha256: string;
  /** Where providers can download it. */
  uri?: string;
}

/** `GET /api/config`. */
export interface DashboardConfig {
  chainId: number;
  /** The deployment, without the dev accounts' keys and the devnet's pid. */
  deployment: Omit<Deployment, "devAccounts" | "pid">;
  /** Accounts the devnet signs for (empty on other chains). */
  devAccounts: { label: string; address: string }[];
  /** Whether publishing is possible (the server has an IPFS store). */
  ipfs: boolean;
  baseModels: BaseModelSuggestion[];
}

/** `POST /api/adapters` (body: the adapter's bytes): the adapter as stored and pinned. */
export interface UploadedAdapter {
  cid: string;
  /** "0x" + 64 hex digits, what createPersona records. */
  sha256: string;
  size: number;
}

/** `POST /api/personas/prepare` body. */
export interface PrepareRequest {
  /** The card file (JSON or PNG), base64. */
  card: string;
  /** An adapter this server stored (`POST /api/adapters`). */
  adapterCid?: string;
  baseModelHash: string;
  baseModelName?: string;
  baseModelUri?: string;
}

/** `POST /api/personas/prepare`: what `createPersona` then records. */
export interface PrepareAnswer {
  manifestCid: string;
  cardCid: string;
  adapterCid?: string;
  /** ZeroHash without an adapter. */
  adapterSha256: string;
  baseModelHash: string;
  manifest: unknown;
}

/** `GET /api/personas/:id`. */
export interface PersonaAnswer {
  /** Decimal. */
  personaId: string;
  name: string;
  manifestCid: string;
  manifest: unknown;
  card: { name: string; description?: string };
}
