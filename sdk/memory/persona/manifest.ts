/**
 * The persona manifest: what a persona's on-chain `manifestCid` names on IPFS. It points at the character
 * card and the LoRA adapter (each a UnixFS file) and repeats what the chain records about them, so that a
 * reader can check the two agree before using either.
 *
 * Stored as a JSON UnixFS file, not dag-json: `ipfs cat <manifestCid>` on any Kubo node or gateway shows it,
 * and it needs no IPLD codec beyond what every block store here verifies (a small manifest is one raw
 * block). The price is that its CIDs are strings, not IPLD links, so pinning the manifest does not pin the
 * card and adapter: the publisher pins each (see publish.ts).
 */
import { CID } from "multiformats/cid";
import { z } from "zod";
import { SoulmeshError } from "../../errors.js";

/** The largest manifest accepted: a real one is a few hundred bytes. */
export const MAX_MANIFEST_BYTES = 64 * 1024;

/** A manifest that cannot be read: not JSON, not this schema, or an unknown version. Nothing was used. */
export class PersonaManifestError extends SoulmeshError {
  override readonly name = "PersonaManifestError";
  constructor(
    readonly detail: string,
    readonly issues: string[] = [],
    options?: ErrorOptions,
  ) {
    const listed = issues.length > 0 ? ` (${issues.slice(0, 5).join("; ")}${issues.length > 5 ? "; …" : ""})` : "";
    super(
      `Invalid persona manifest: ${detail}${listed}. Publish the persona again with \`soulmesh persona create\`, ` +
        `or upgrade soulmesh if the manifest is of a newer version.`,
      options,
    );
  }
}

/**
 * The manifest says something other than the chain about the adapter or base model. The chain wins: the
 * manifest is not used, since its adapter or model would not be the registered one.
 */
export class PersonaManifestMismatchError extends SoulmeshError {
  override readonly name = "PersonaManifestMismatchError";
  constructor(
    readonly personaId: bigint,
    readonly field: "adapterSha256" | "baseModelHash",
    readonly onChain: string,
    readonly inManifest: string,
  ) {
    super(
      `Persona ${personaId}'s manifest gives ${field} ${inManifest}, the chain records ${onChain}. The manifest ` +
        `is not used. Its holder must publish a matching manifest (updatePersona) before the persona can be read.`,
    );
  }
}

const HEX32 = /^0x[0-9a-f]{64}$/;

const cidString = z.string().refine(
  (s) => {
    try {
      return CID.parse(s).version === 1;
    } catch {
      return false;
    }
  },
  { message: "not a CIDv1 string" },
);
const bytes32 = z
  .string()
  .transform((s) => s.toLowerCase())
  .refine((s) => HEX32.test(s), { message: "not 0x followed by 64 hex digits" });
const size = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/** The manifest's schema, version 1. Unknown fields are refused: a field this code ignores could matter. */
export const personaManifestSchema = z
  .object({
    v: z.literal(1),
    name: z.string().min(1).max(256),
    card: z.object({ cid: cidString, format: z.enum(["json", "png"]), size }).strict(),
    adapter: z.object({ cid: cidString, sha256: bytes32, size }).strict().optional(),
    baseModel: z
      .object({ hash: bytes32, name: z.string().max(256).optional(), uri: z.string().max(2048).optional() })
      .strict(),
    /** ISO 8601, UTC. */
    createdAt: z.iso.datetime(),
  })
  .strict();

/** A persona manifest (version 1); hashes are lower-case "0x" + 64 hex digits. */
export type PersonaManifest = z.infer<typeof personaManifestSchema>;

/**
 * The manifest as stored: compact JSON with a fixed key order, so one manifest always has one CID.
 *
 * @example
 * const { cid } = await addFile(store, encodePersonaManifest(manifest))
 * @throws PersonaManifestError when `manifest` does not fit the schema.
 */
export function encodePersonaManifest(manifest: PersonaManifest): Uint8Array {
  const m = validate(manifest);
  const ordered = {
    v: m.v,
    name: m.name,
    card: { cid: m.card.cid, format: m.card.format, size: m.card.size },
    ...(m.adapter === undefined ? {} : { adapter: { cid: m.adapter.cid, sha256: m.adapter.sha256, size: m.adapter.size } }),
    baseModel: {
      hash: m.baseModel.hash,
      ...(m.baseModel.name === undefined ? {} : { name: m.baseModel.name }),
      ...(m.baseModel.uri === undefined ? {} : { uri: m.baseModel.uri }),
    },
    createdAt: m.createdAt,
  };
  return new TextEncoder().encode(JSON.stringify(ordered));
}

/**
 * Reads a stored manifest.
 *
 * @example
 * const manifest = decodePersonaManifest(await readFile(store, cid, { maxBytes: MAX_MANIFEST_BYTES }))
 * @throws PersonaManifestError (too large, not UTF-8 JSON, not the schema, unknown version).
 */
export function decodePersonaManifest(bytes: Uint8Array): PersonaManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new PersonaManifestError(`it is ${bytes.byteLength} bytes, above the limit of ${MAX_MANIFEST_BYTES}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new PersonaManifestError("it is not UTF-8 JSON", [], { cause: err });
  }
  if (typeof value === "object" && value !== null && "v" in value && value.v !== 1) {
    throw new PersonaManifestError(`its version ${JSON.stringify(value.v)} is not one this code reads (1)`);
  }
  return validate(value);
}

function validate(value: unknown): PersonaManifest {
  const parsed = personaManifestSchema.safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new PersonaManifestError("it does not match the manifest schema", issues);
  }
  return parsed.data;
}
