import * as dagCbor from "@ipld/dag-cbor";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";

/**
 * A raw block (CIDv1, sha2-256) of a text or bytes, with its CID.
 *
 * @example
 * const { cid, bytes } = await rawBlock("ciphertext of turn 1")
 */
export async function rawBlock(content: string | Uint8Array): Promise<{ cid: CID; bytes: Uint8Array }> {
  const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
  return { cid: CID.createV1(raw.code, await sha256.digest(bytes)), bytes };
}

/**
 * A dag-cbor block (CIDv1, sha2-256) of a value, with its CID.
 *
 * @example
 * const { cid, bytes } = await cborBlock({ seq: 1 })
 */
export async function cborBlock(value: unknown): Promise<{ cid: CID; bytes: Uint8Array }> {
  const bytes = dagCbor.encode(value);
  return { cid: CID.createV1(dagCbor.code, await sha256.digest(bytes)), bytes };
}

/**
 * What a promise rejects with; fails the test when it resolves.
 *
 * @example
 * expect(await rejection(store.get(cid))).toBeInstanceOf(BlockNotFoundError)
 */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}
