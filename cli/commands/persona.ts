import { readFile as readLocalFile, stat } from "node:fs/promises";
import type { Command } from "commander";
import { getAddress, isAddress } from "ethers";
import type { ContractTransactionResponse, TransactionReceipt } from "ethers";
import type { PersonaRegistry, SoulmeshContracts } from "../../sdk/chain/contracts.js";
import { ContractRevertError } from "../../sdk/chain/errors.js";
import { readAdoptions } from "../../sdk/chain/usage.js";
import { SoulmeshError } from "../../sdk/errors.js";
import { exportCharacterCard, parseCharacterCard } from "../../sdk/memory/persona/card.js";
import type { CharacterCard } from "../../sdk/memory/persona/card.js";
import { decodePersonaManifest, MAX_MANIFEST_BYTES } from "../../sdk/memory/persona/manifest.js";
import type { PersonaManifest } from "../../sdk/memory/persona/manifest.js";
import { isPng } from "../../sdk/memory/persona/png.js";
import { listPersonas, publishPersona, readPersona } from "../../sdk/memory/persona/publish.js";
import type { PersonaInfo, PersonaRecord, PublishProgress, RoyaltySchedule } from "../../sdk/memory/persona/publish.js";
import { parseFileCid, readFile as readIpfsFile } from "../../sdk/vault/files.js";
import type { BlockStore } from "../../sdk/vault/types.js";
import { withContext } from "../context.js";
import type { CommandContext } from "../context.js";
import { resolveBaseModel } from "../models.js";
import type { Output } from "../output.js";
import { sendTransaction } from "../transactions.js";
import { InvalidAmountError, isoTime, money, parseAmountOrZero, showMoney, tokenInfo } from "./escrow.js";
import type { Money, TokenInfo } from "./escrow.js";

/** How long a listing waits for one manifest from IPFS before showing the persona without its name. */
const MANIFEST_TIMEOUT_MS = 5_000;

// ------------------------------------------------------------------------------------------ shared errors

/** An id argument that is not a positive whole number. */
export class InvalidIdError extends SoulmeshError {
  override readonly name = "InvalidIdError";
  constructor(
    readonly what: string,
    readonly input: string,
  ) {
    super(`${JSON.stringify(input)} is not a ${what} id: give a positive whole number such as 1 (see \`soulmesh ${what} list\`).`);
  }
}

/** An address argument that is not an address. */
export class InvalidAddressError extends SoulmeshError {
  override readonly name = "InvalidAddressError";
  constructor(
    readonly option: string,
    readonly input: string,
  ) {
    super(`${option} ${JSON.stringify(input)} is not an address: give a 0x-prefixed 20-byte address.`);
  }
}

/** Two options that exclude each other were both given. */
export class ConflictingOptionsError extends SoulmeshError {
  override readonly name = "ConflictingOptionsError";
  constructor(
    readonly first: string,
    readonly second: string,
  ) {
    super(`${first} and ${second} cannot be used together: pass one of them.`);
  }
}

/** No persona has this id. */
export class UnknownPersonaError extends SoulmeshError {
  override readonly name = "UnknownPersonaError";
  constructor(
    readonly personaId: bigint,
    readonly total: bigint,
  ) {
    super(
      total === 0n
        ? `No persona ${personaId}: none is published yet. Publish one with \`soulmesh persona create --card FILE --base-model MODEL --royalty AMOUNT\`.`
        : `No persona ${personaId}: ids go from 1 to ${total}. See them with \`soulmesh persona list\`.`,
    );
  }
}

/** A local file named on the command line cannot be read. */
export class UnreadableFileError extends SoulmeshError {
  override readonly name = "UnreadableFileError";
  constructor(
    readonly option: string,
    readonly path: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`Cannot read ${option} ${path}: ${reason}. Check the path; nothing was stored or sent.`, options);
  }
}

// ---------------------------------------------------------------------------------------- shared helpers

/**
 * Parses a persona or agent id.
 *
 * @example
 * parseId("3", "persona") // 3n
 * @throws InvalidIdError for anything but a positive whole number.
 */
export function parseId(input: string, what: "persona" | "agent"): bigint {
  const text = input.trim();
  if (!/^\d+$/.test(text) || BigInt(text) === 0n) throw new InvalidIdError(what, input);
  return BigInt(text);
}

/**
 * Parses an address option, checksummed.
 *
 * @example
 * parseAddressOption("--creator", "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc") // "0x3C44…93BC"
 * @throws InvalidAddressError.
 */
export function parseAddressOption(option: string, input: string): string {
  if (!isAddress(input)) throw new InvalidAddressError(option, input);
  return getAddress(input);
}

/**
 * Checks that a persona exists, turning the registry's revert into an error that names the valid range.
 *
 * @example
 * await requirePersona(contracts.personaRegistry, 4n) // throws UnknownPersonaError when only 3 exist
 */
export async function requirePersona(registry: PersonaRegistry, personaId: bigint): Promise<void> {
  const total = await registry.totalPersonas();
  if (personaId < 1n || personaId > total) throw new UnknownPersonaError(personaId, total);
}

/**
 * A persona's manifest from IPFS, or undefined when it cannot be had within a few seconds (listings then
 * show the chain's fields alone).
 *
 * @example
 * const manifest = await tryManifest(ipfs.store, record.manifestCid, ctx.signal)
 */
export async function tryManifest(
  store: BlockStore | undefined,
  manifestCid: string,
  signal: AbortSignal,
): Promise<PersonaManifest | undefined> {
  const cid = parseFileCid(manifestCid);
  if (store === undefined || cid === undefined) return undefined;
  try {
    const bytes = await readIpfsFile(store, cid, {
      maxBytes: MAX_MANIFEST_BYTES,
      signal: AbortSignal.any([signal, AbortSignal.timeout(MANIFEST_TIMEOUT_MS)]),
    });
    return decodePersonaManifest(bytes);
  } catch {
    signal.throwIfAborted();
    return undefined;
  }
}

/**
 * The IPFS store of the context, or undefined (with a progress line saying why) when it cannot be opened:
 * for listings, where names are a nicety and the chain's fields are what matters.
 *
 * @example
 * const store = await optionalStore(ctx)
 */
export async function optionalStore(ctx: CommandContext): Promise<BlockStore | undefined> {
  try {
    return (await ctx.ipfs()).store;
  } catch (err) {
    ctx.signal.throwIfAborted();
    ctx.out.progress(`IPFS is not reachable (${err instanceof Error ? err.message : String(err)}): names are left out`);
    return undefined;
  }
}

/**
 * How many agents were adopted from each persona, from the AgentRegistry's AgentMinted logs.
 *
 * @example
 * (await adoptionCounts(contracts, deployment.startBlock, ctx.signal)).get(1n) // 3
 */
export async function adoptionCounts(
  contracts: SoulmeshContracts,
  fromBlock: number,
  signal: AbortSignal,
  personaId?: bigint,
): Promise<Map<bigint, number>> {
  const adoptions = await readAdoptions(contracts.agentRegistry, { fromBlock, signal }, personaId);
  const counts = new Map<bigint, number>();
  for (const a of adoptions) counts.set(a.personaId, (counts.get(a.personaId) ?? 0) + 1);
  return counts;
}

// ------------------------------------------------------------------------------------------------ create

interface CreateOptions {
  card: string;
  baseModel: string;
  lora?: string;
  royalty: string;
  adoptionPrice: string;
  name?: string;
}

/** Reads a file named by an option, as a typed error when it cannot be. */
async function readOptionFile(option: string, path: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readLocalFile(path));
  } catch (err) {
    throw new UnreadableFileError(option, path, describeFsError(err), { cause: err });
  }
}

async function checkReadableFile(option: string, path: string): Promise<void> {
  try {
    if (!(await stat(path)).isFile()) throw Object.assign(new Error("not a file"), { code: "EISDIR" });
  } catch (err) {
    throw new UnreadableFileError(option, path, describeFsError(err), { cause: err });
  }
}

function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EISDIR") return "it is a folder, not a file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  return err instanceof Error ? err.message : String(err);
}

/** The card with another name, in its own format (a PNG keeps its image and other chunks). */
function renamedCard(bytes: Uint8Array, name: string): Uint8Array {
  const card: CharacterCard = { ...parseCharacterCard(bytes), name };
  return isPng(bytes)
    ? exportCharacterCard(card, { format: "png", image: bytes })
    : new TextEncoder().encode(exportCharacterCard(card, { format: "json", indent: 2 }));
}

/** Progress lines for publishing: one per stage, and the adapter's upload every 10%. */
function publishProgress(out: Output): (p: PublishProgress) => void {
  let lastTenth = -1;
  const said = new Set<string>();
  return (p) => {
    if (p.stage === "adapter") {
      if (p.bytesTotal === undefined || p.bytesTotal === 0) return;
      const tenth = Math.floor((p.bytesDone / p.bytesTotal) * 10);
      if (tenth > lastTenth) out.progress(`storing the adapter on IPFS: ${tenth * 10}%`);
      lastTenth = Math.max(lastTenth, tenth);
      return;
    }
    if (p.stage === "transaction") {
      if (p.transactionHash !== undefined) out.progress(`transaction ${p.transactionHash} sent, waiting for it to be mined…`);
      else out.progress("sending the createPersona transaction…");
      return;
    }
    if (said.has(p.stage)) return;
    said.add(p.stage);
    out.progress(p.stage === "card" ? "storing the card on IPFS…" : "storing the manifest on IPFS…");
  };
}

async function runCreate(ctx: CommandContext, opts: CreateOptions): Promise<void> {
  const token = await tokenInfo(await ctx.contracts());
  const royalty = parseAmountOrZero(opts.royalty, token.decimals);
  const adoptionPrice = parseAmountOrZero(opts.adoptionPrice, token.decimals);
  let card = await readOptionFile("--card", opts.card);
  // Parsed here too, so that a bad card fails before the model is hashed (minutes for a large GGUF).
  card = opts.name !== undefined ? renamedCard(card, opts.name) : (parseCharacterCard(card), card);
  if (opts.lora !== undefined) await checkReadableFile("--lora", opts.lora);

  let lastTenth = -1;
  const model = await resolveBaseModel(opts.baseModel, {
    home: ctx.home,
    signal: ctx.signal,
    onProgress: (done, total) => {
      const tenth = total > 0 ? Math.floor((done / total) * 10) : 10;
      if (tenth > lastTenth) ctx.out.progress(`hashing the base model: ${tenth * 10}%`);
      lastTenth = Math.max(lastTenth, tenth);
    },
  });
  const signer = await ctx.signer();
  const { personaRegistry } = await ctx.contracts(signer);
  const ipfs = await ctx.ipfs();
  ctx.out.progress(`publishing to ${ipfs.description} and the chain as ${signer.address}…`);
  const published = await ctx.abortable(
    publishPersona({
      store: ipfs.store,
      registry: personaRegistry,
      card,
      ...(opts.lora !== undefined && { adapter: { path: opts.lora } }),
      baseModelHash: model.sha256,
      ...(model.name !== undefined && { baseModelName: model.name }),
      ...(model.uri !== undefined && { baseModelUri: model.uri }),
      royaltyPerMillion: royalty,
      adoptionPrice,
      onProgress: publishProgress(ctx.out),
      signal: ctx.signal,
    }),
  );
  ctx.out.result(
    {
      personaId: published.personaId,
      name: published.manifest.name,
      creator: signer.address,
      manifestCid: published.manifestCid,
      cardCid: published.cardCid,
      adapterCid: published.adapterCid ?? null,
      adapterSha256: published.adapterCid === undefined ? null : published.adapterSha256,
      baseModelHash: model.sha256,
      royaltyPerMillion: money(royalty, token),
      adoptionPrice: money(adoptionPrice, token),
      tx: published.transactionHash,
    },
    [
      `Published persona ${published.personaId} "${published.manifest.name}".`,
      `  manifest    ${published.manifestCid}`,
      `  card        ${published.cardCid}`,
      `  adapter     ${published.adapterCid === undefined ? "none" : `${published.adapterCid} (sha256 ${published.adapterSha256})`}`,
      `  base model  ${model.sha256}${model.name !== undefined ? ` (${model.name})` : ""}`,
      `  royalty     ${showMoney(royalty, token)} per million tokens`,
      `  adoption    ${adoptionPrice === 0n ? "free" : showMoney(adoptionPrice, token)}`,
      `  tx          ${published.transactionHash}`,
      "",
      `Users adopt it with \`soulmesh agent mint --persona ${published.personaId}\`.`,
    ].join("\n"),
  );
}

// -------------------------------------------------------------------------------------------------- list

function royaltyJson(r: RoyaltySchedule, token: TokenInfo): Record<string, unknown> {
  return {
    current: money(r.current, token),
    scheduled:
      r.effectiveAt === 0n
        ? null
        : { royalty: money(r.next, token), effectiveAt: isoTime(Number(r.effectiveAt)), effectiveAtUnix: Number(r.effectiveAt) },
  };
}

function royaltyText(r: RoyaltySchedule, token: TokenInfo): string {
  const now = `${showMoney(r.current, token)}/M tokens`;
  return r.effectiveAt === 0n ? now : `${now}, ${showMoney(r.next, token)}/M from ${isoTime(Number(r.effectiveAt))}`;
}

interface ListedPersona {
  personaId: bigint;
  name: string | null;
  holder: string;
  manifestCid: string;
  hasAdapter: boolean;
  adapterSha256: string | null;
  baseModelHash: string;
  royaltyPerMillion: Record<string, unknown>;
  adoptionPrice: Money;
  agentsAdopted: number;
}

async function runList(ctx: CommandContext, opts: { mine: boolean; creator?: string }): Promise<void> {
  if (opts.mine && opts.creator !== undefined) throw new ConflictingOptionsError("--mine", "--creator");
  const creator = opts.creator !== undefined ? parseAddressOption("--creator", opts.creator) : opts.mine ? await ctx.address() : undefined;
  const deployment = await ctx.deployment();
  const contracts = await ctx.contracts();
  const token = await tokenInfo(contracts);
  const [records, counts] = await ctx.abortable(
    Promise.all([
      listPersonas({
        registry: contracts.personaRegistry,
        ...(creator !== undefined && { creator }),
        fromBlock: deployment.startBlock,
        signal: ctx.signal,
      }),
      adoptionCounts(contracts, deployment.startBlock, ctx.signal),
    ]),
  );
  const store = records.length > 0 ? await optionalStore(ctx) : undefined;
  const manifests = await Promise.all(records.map((r) => tryManifest(store, r.manifestCid, ctx.signal)));
  const personas: ListedPersona[] = records.map((r: PersonaRecord, i) => ({
    personaId: r.personaId,
    name: manifests[i]?.name ?? null,
    holder: r.holder,
    manifestCid: r.manifestCid,
    hasAdapter: r.adapterSha256 !== undefined,
    adapterSha256: r.adapterSha256 ?? null,
    baseModelHash: r.baseModelHash,
    royaltyPerMillion: royaltyJson(r.royalty, token),
    adoptionPrice: money(r.adoptionPrice, token),
    agentsAdopted: counts.get(r.personaId) ?? 0,
  }));
  const lines = records.map((r, i) => {
    const p = personas[i]!;
    return (
      `${String(r.personaId).padStart(4)}  ${(p.name ?? "(name unavailable)").padEnd(24)} ` +
      `royalty ${royaltyText(r.royalty, token)}; adoption ${r.adoptionPrice === 0n ? "free" : showMoney(r.adoptionPrice, token)}; ` +
      `${p.hasAdapter ? "LoRA" : "no adapter"}; ${p.agentsAdopted} agent${p.agentsAdopted === 1 ? "" : "s"}; holder ${r.holder}`
    );
  });
  const scope = creator !== undefined ? ` by ${creator}` : "";
  ctx.out.result(
    { ...(creator !== undefined && { creator }), count: personas.length, personas },
    personas.length === 0
      ? `No personas${scope} yet. Publish one with \`soulmesh persona create --card FILE --base-model MODEL --royalty AMOUNT\`.`
      : [`${personas.length} persona${personas.length === 1 ? "" : "s"}${scope}:`, ...lines].join("\n"),
  );
}

// -------------------------------------------------------------------------------------------------- show

function cardSummary(card: CharacterCard): Record<string, unknown> {
  return {
    name: card.name,
    description: card.description.split("\n").find((l) => l.trim() !== "")?.trim() ?? "",
    tags: card.tags,
    creator: card.creator,
    spec: card.spec,
    characterVersion: card.characterVersion,
    lorebookEntries: card.characterBook?.entries.length ?? 0,
    alternateGreetings: card.alternateGreetings.length,
  };
}

/** A line cut to `max` characters, with an ellipsis when it was longer. */
function ellipsis(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1).trimEnd()}…`;
}

async function runShow(ctx: CommandContext, idText: string): Promise<void> {
  const personaId = parseId(idText, "persona");
  const deployment = await ctx.deployment();
  const contracts = await ctx.contracts();
  await requirePersona(contracts.personaRegistry, personaId);
  const token = await tokenInfo(contracts);
  const ipfs = await ctx.ipfs();
  const [info, counts]: [PersonaInfo, Map<bigint, number>] = await ctx.abortable(
    Promise.all([
      readPersona({ registry: contracts.personaRegistry, store: ipfs.store, personaId, signal: ctx.signal }),
      adoptionCounts(contracts, deployment.startBlock, ctx.signal, personaId),
    ]),
  );
  const summary = cardSummary(info.card);
  const adopted = counts.get(personaId) ?? 0;
  const m = info.manifest;
  ctx.out.result(
    {
      personaId,
      holder: info.holder,
      manifestCid: info.manifestCid,
      manifest: m,
      card: summary,
      cardCid: m.card.cid,
      adapterCid: info.adapterCid ?? null,
      adapterSha256: info.adapterSha256 ?? null,
      baseModelHash: info.baseModelHash,
      royaltyPerMillion: royaltyJson(info.royalty, token),
      adoptionPrice: money(info.adoptionPrice, token),
      agentsAdopted: adopted,
    },
    [
      `persona     ${personaId} "${m.name}"`,
      `holder      ${info.holder} (paid its royalties and adoptions)`,
      `card        ${m.card.cid} (${m.card.format}, ${m.card.size} bytes, ${info.card.spec})`,
      `  creator   ${info.card.creator === "" ? "(not given)" : info.card.creator}`,
      `  about     ${ellipsis(String(summary.description), 120)}`,
      `  tags      ${info.card.tags.length === 0 ? "none" : info.card.tags.join(", ")}`,
      `  lorebook  ${String(summary.lorebookEntries)} entries`,
      `adapter     ${info.adapterCid === undefined ? "none" : `${info.adapterCid} (sha256 ${info.adapterSha256}, ${m.adapter!.size} bytes)`}`,
      `base model  ${info.baseModelHash}${m.baseModel.name !== undefined ? ` (${m.baseModel.name})` : ""}`,
      `royalty     ${royaltyText(info.royalty, token)}`,
      `adoption    ${info.adoptionPrice === 0n ? "free" : showMoney(info.adoptionPrice, token)}`,
      `agents      ${adopted} adopted`,
      `manifest    ${info.manifestCid} (created ${m.createdAt})`,
    ].join("\n"),
  );
}

// ------------------------------------------------------------------------------------- royalty and price

/** The registry keeps royalties in a uint96. */
const MAX_ROYALTY = 2n ** 96n - 1n;

/** The account does not hold the persona: only its holder may change its royalty or adoption price. */
export class NotPersonaHolderError extends SoulmeshError {
  override readonly name = "NotPersonaHolderError";
  constructor(
    readonly personaId: bigint,
    readonly holder: string,
    readonly caller: string,
    options?: ErrorOptions,
  ) {
    super(
      `Persona ${personaId} is held by ${holder}, not by ${caller}: only its holder may change its royalty or adoption price. ` +
        "Run the command as the holder (--account NAME|ADDRESS|dev:N); nothing was changed.",
      options,
    );
  }
}

/** Units for {@link durationWords}, largest first. */
const WORD_UNITS = [["day", 86_400], ["hour", 3_600], ["minute", 60], ["second", 1]] as const;

/**
 * A duration in words, in its two largest units, rounded to the smaller one: a change scheduled two days
 * ahead and read a few seconds later is still "2 days" away.
 *
 * @example
 * durationWords(172_790) // "2 days"
 * durationWords(90_061) // "1 day 1 hour"
 */
export function durationWords(seconds: number): string {
  let s = Math.max(0, Math.round(seconds));
  const largest = WORD_UNITS.findIndex(([, size]) => s >= size);
  if (largest === -1) return "0 seconds";
  const step = WORD_UNITS[Math.min(largest + 1, WORD_UNITS.length - 1)]![1];
  s = Math.round(s / step) * step;
  const parts: string[] = [];
  for (const [unit, size] of WORD_UNITS) {
    if (s >= size && parts.length < 2) {
      const n = Math.floor(s / size);
      parts.push(`${n} ${unit}${n === 1 ? "" : "s"}`);
      s %= size;
    } else if (parts.length > 0) break;
  }
  return parts.join(" ");
}

/**
 * When a scheduled change takes effect, relative to chain time.
 *
 * @example
 * whenFromNow(1_700_172_800, 1_700_000_000) // "in 2 days"
 */
export function whenFromNow(effectiveAt: number, chainTime: number): string {
  return effectiveAt <= chainTime ? "now" : `in ${durationWords(effectiveAt - chainTime)}`;
}

/** A royalty per million tokens: zero is allowed (none); above the registry's uint96 is not. */
function parseRoyalty(input: string, decimals: number): bigint {
  const royalty = parseAmountOrZero(input, decimals);
  if (royalty > MAX_ROYALTY) throw new InvalidAmountError(input, "it is above the largest royalty the registry can hold");
  return royalty;
}

/**
 * Sends a holder-only transaction, turning the registry's Persona__NotHolder revert (raised when the gas is
 * estimated, so before anything is sent) into an error naming the holder.
 */
async function asHolder(
  ctx: CommandContext,
  registry: PersonaRegistry,
  personaId: bigint,
  caller: string,
  what: string,
  tx: () => Promise<ContractTransactionResponse>,
): Promise<TransactionReceipt> {
  try {
    return await sendTransaction(ctx, what, tx);
  } catch (err) {
    if (err instanceof ContractRevertError && err.reason === "Persona__NotHolder") {
      throw new NotPersonaHolderError(personaId, await registry.ownerOf(personaId), caller, { cause: err });
    }
    throw err;
  }
}

async function runRoyalty(ctx: CommandContext, idText: string, amountText: string): Promise<void> {
  const personaId = parseId(idText, "persona");
  const read = await ctx.contracts();
  const token = await tokenInfo(read);
  const royalty = parseRoyalty(amountText, token.decimals);
  await requirePersona(read.personaRegistry, personaId);
  const signer = await ctx.signer();
  const { personaRegistry } = await ctx.contracts(signer);
  const before = await personaRegistry.royaltyScheduleOf(personaId);
  const replaced =
    before.effectiveAt === 0n ? null : { royalty: money(before.next, token), effectiveAt: isoTime(Number(before.effectiveAt)) };
  if (replaced !== null) {
    ctx.out.progress(`this replaces the pending change to ${showMoney(before.next, token)} from ${replaced.effectiveAt}`);
  }
  const receipt = await asHolder(
    ctx,
    personaRegistry,
    personaId,
    signer.address,
    `scheduling a royalty of ${showMoney(royalty, token)} per million tokens for persona ${personaId}…`,
    () => personaRegistry.scheduleRoyalty(personaId, royalty),
  );
  // Read at the transaction's block: the schedule as it was set, whatever the chain did since.
  const [schedule, block] = await Promise.all([
    personaRegistry.royaltyScheduleOf(personaId, { blockTag: receipt.blockNumber }),
    receipt.getBlock(),
  ]);
  const effectiveAt = Number(schedule.effectiveAt);
  const chainTime = block.timestamp;
  const inWords = whenFromNow(effectiveAt, chainTime);
  ctx.out.result(
    {
      personaId,
      holder: signer.address,
      current: money(schedule.current, token),
      scheduled: money(schedule.next, token),
      effectiveAt: isoTime(effectiveAt),
      effectiveAtUnix: effectiveAt,
      effectiveIn: inWords,
      inSeconds: effectiveAt - chainTime,
      chainTime: isoTime(chainTime),
      chainTimeUnix: chainTime,
      replaced,
      tx: receipt.hash,
    },
    [
      `Scheduled a royalty change for persona ${personaId}.`,
      `  now         ${showMoney(schedule.current, token)} per million tokens`,
      `  scheduled   ${showMoney(schedule.next, token)} per million tokens`,
      `  from        ${isoTime(effectiveAt)} (chain time), ${inWords}`,
      ...(replaced !== null ? [`  replaces    the pending change to ${showMoney(before.next, token)} from ${replaced.effectiveAt}`] : []),
      `  tx          ${receipt.hash}`,
      "",
      "Sessions opened before the change keep paying the royalty in force when they opened.",
    ].join("\n"),
  );
}

async function runPrice(ctx: CommandContext, idText: string, amountText: string): Promise<void> {
  const personaId = parseId(idText, "persona");
  const read = await ctx.contracts();
  const token = await tokenInfo(read);
  const price = parseAmountOrZero(amountText, token.decimals);
  await requirePersona(read.personaRegistry, personaId);
  const signer = await ctx.signer();
  const { personaRegistry } = await ctx.contracts(signer);
  const [, previous] = await personaRegistry.adoptionTermsOf(personaId);
  const receipt = await asHolder(
    ctx,
    personaRegistry,
    personaId,
    signer.address,
    `setting the adoption price of persona ${personaId} to ${price === 0n ? "free" : showMoney(price, token)}…`,
    () => personaRegistry.setAdoptionPrice(personaId, price),
  );
  const [, now] = await personaRegistry.adoptionTermsOf(personaId, { blockTag: receipt.blockNumber });
  const show = (v: bigint): string => (v === 0n ? "free" : showMoney(v, token));
  ctx.out.result(
    { personaId, holder: signer.address, previous: money(previous, token), adoptionPrice: money(now, token), tx: receipt.hash },
    [
      `Persona ${personaId}'s adoption price is now ${show(now)} (was ${show(previous)}), from the next adoption.`,
      `  tx          ${receipt.hash}`,
    ].join("\n"),
  );
}

// ---------------------------------------------------------------------------------------------- register

/** Registers `soulmesh persona create|list|show|royalty|price`. */
export function registerPersona(program: Command): void {
  const persona = program
    .command("persona")
    .description("Publish personas (a character card and an optional LoRA adapter) and browse the published ones");

  persona
    .command("create")
    .description("Publish a persona: the card and adapter go to IPFS, the persona NFT is minted to the account")
    .requiredOption("--card <file>", "a Character Card V1/V2/V3, as JSON or as a PNG with the card embedded")
    .requiredOption(
      "--base-model <model>",
      "the model it runs on: a GGUF path (hashed), an hf: URI already downloaded, or its SHA-256 as 0x…",
    )
    .option("--lora <file>", "a GGUF LoRA adapter trained on the base model")
    .requiredOption("--royalty <amount>", "tokens earned per million tokens the persona generates (0 for none)")
    .option("--adoption-price <amount>", "tokens a user pays to adopt it (mint an agent)", "0")
    .option("--name <name>", "publish under this name instead of the card's (the card is rewritten, losslessly)")
    .addHelpText(
      "after",
      `
The royalty and price are in the payment token (tUSD on the devnet). The base model's SHA-256 is what
providers compare: only providers serving that exact file can run the persona.

Examples:
  $ soulmesh persona create --card wren.json --base-model ./models/qwen2.5-0.5b-instruct-q4_k_m.gguf --royalty 0.2
  $ soulmesh persona create --card aria.png --lora aria-lora.gguf --royalty 0.5 --adoption-price 5 \\
      --base-model hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf --account creator
  $ soulmesh persona create --card bot.json --base-model 0x3b0c…(64 hex digits) --royalty 0 --json`,
    )
    .action((opts: CreateOptions, cmd: Command) => withContext(cmd, (ctx) => runCreate(ctx, opts)));

  persona
    .command("list")
    .description("Personas on chain: royalty (and any scheduled change), adoption price, adapter, agents adopted")
    .option("--mine", "only those the account created", false)
    .option("--creator <address>", "only those this address created")
    .addHelpText(
      "after",
      `
Names come from each persona's manifest on IPFS; when it cannot be fetched the persona is listed without it.

Examples:
  $ soulmesh persona list
  $ soulmesh persona list --mine --account creator
  $ soulmesh persona list --creator 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC --json`,
    )
    .action((opts: { mine: boolean; creator?: string }, cmd: Command) => withContext(cmd, (ctx) => runList(ctx, opts)));

  persona
    .command("show")
    .description("One persona: its card, adapter, base model, royalty schedule, adoption price and agents adopted")
    .argument("<id>", "the persona's id")
    .addHelpText(
      "after",
      `
Examples:
  $ soulmesh persona show 1
  $ soulmesh persona show 1 --json`,
    )
    .action((id: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runShow(ctx, id)));

  persona
    .command("royalty")
    .description("Schedule a new royalty for a persona the account holds; it takes effect after the registry's royalty delay")
    .argument("<id>", "the persona's id")
    .argument("<amount>", "tokens earned per million tokens the persona generates (0 for none)")
    .addHelpText(
      "after",
      `
The change takes effect after the registry's royalty delay (2 days on the devnet), so that every voucher
settles at a royalty its payer could see; sessions opened before it keep the old royalty. A change still
pending is replaced. See the schedule with \`soulmesh persona show ID\`.

Examples:
  $ soulmesh persona royalty 1 0.5 --account creator
  $ soulmesh persona royalty 1 0 --json          # no royalty from two days on`,
    )
    .action((id: string, amount: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runRoyalty(ctx, id, amount)));

  persona
    .command("price")
    .description("Set the adoption price of a persona the account holds; it applies to the next adoption")
    .argument("<id>", "the persona's id")
    .argument("<amount>", "tokens a user pays to adopt it (0 for free)")
    .addHelpText(
      "after",
      `
Adopters are protected by the price they were shown: \`soulmesh agent mint\` refuses to pay more.

Examples:
  $ soulmesh persona price 1 7.5 --account creator
  $ soulmesh persona price 1 0 --json            # free to adopt`,
    )
    .action((id: string, amount: string, _opts: unknown, cmd: Command) => withContext(cmd, (ctx) => runPrice(ctx, id, amount)));
}
