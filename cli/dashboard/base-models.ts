/**
 * Base models the publish form suggests: those registered providers serve (the chain's ProviderRegistry) and
 * those this home has hashed (`<home>/models/hashes.json`). Both are cheap: a few view calls and one small file;
 * nothing is hashed here.
 */
import { readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import type { ProviderRegistry } from "../../sdk/chain/contracts.js";
import type { BaseModelSuggestion } from "../../dashboard/src/api-types.js";
import { MODEL_HASHES_FILE } from "../models.js";

/** The most providers read: suggestions, not a census. */
const MAX_PROVIDERS = 200;
const SHA256 = /^0x[0-9a-f]{64}$/;

/**
 * The models of `<home>/models/hashes.json`, by file name; none when the file is absent or unreadable.
 *
 * @example
 * const mine = await homeBaseModels("/home/me/.soulmesh") // [{ name: "tiny.gguf", sha256: "0x3b0c…" }]
 */
export async function homeBaseModels(home: string, signal?: AbortSignal): Promise<BaseModelSuggestion[]> {
  let doc: { entries?: Record<string, { sha256?: unknown }> };
  try {
    doc = JSON.parse(await readFile(join(home, "models", MODEL_HASHES_FILE), { encoding: "utf8", signal })) as typeof doc;
  } catch {
    // No models hashed yet, or a damaged cache that `soulmesh model` rewrites: no suggestions from it.
    return [];
  }
  const found: BaseModelSuggestion[] = [];
  for (const [path, entry] of Object.entries(doc.entries ?? {})) {
    const sha256 = typeof entry?.sha256 === "string" ? entry.sha256.toLowerCase() : "";
    if (SHA256.test(sha256)) found.push({ name: basename(path), sha256 });
  }
  return mergeBaseModels(found);
}

/**
 * The model hashes registered providers declare, most served first.
 *
 * @example
 * const served = await chainBaseModels(contracts.providerRegistry)
 */
export async function chainBaseModels(registry: ProviderRegistry, signal?: AbortSignal): Promise<BaseModelSuggestion[]> {
  signal?.throwIfAborted();
  const addresses = await registry.providers(0, MAX_PROVIDERS);
  const counts = new Map<string, number>();
  for (let i = 0; i < addresses.length; i += 8) {
    signal?.throwIfAborted();
    const records = await Promise.all(addresses.slice(i, i + 8).map((a) => registry.providerOf(a)));
    for (const record of records) {
      for (const hash of record.modelHashes) counts.set(hash.toLowerCase(), (counts.get(hash.toLowerCase()) ?? 0) + 1);
    }
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([sha256]) => ({ sha256 }));
}

/**
 * One suggestion per hash, in first-seen order, each with the first name and URI any list gives it.
 *
 * @example
 * mergeBaseModels([{ sha256: h }], [{ sha256: h, name: "tiny.gguf" }]) // [{ sha256: h, name: "tiny.gguf" }]
 */
export function mergeBaseModels(...lists: BaseModelSuggestion[][]): BaseModelSuggestion[] {
  const merged = new Map<string, BaseModelSuggestion>();
  for (const model of lists.flat()) {
    const sha256 = model.sha256.toLowerCase();
    const known = merged.get(sha256) ?? { sha256 };
    merged.set(sha256, {
      ...known,
      ...(known.name === undefined && model.name !== undefined && { name: model.name }),
      ...(known.uri === undefined && model.uri !== undefined && { uri: model.uri }),
    });
  }
  return [...merged.values()];
}
