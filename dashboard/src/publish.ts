import type { JsonRpcSigner } from "ethers";
import type { PersonaRegistry } from "../../sdk/chain/contracts.js";
import { findEvent } from "../../sdk/chain/receipt.js";
import { preparePersona, toBase64, uploadAdapter } from "./api.js";
import type { BaseModelSuggestion, DashboardConfig } from "./api-types.js";
import { parseAmountInput, parseRoyaltyInput } from "./amounts.js";
import { el } from "./dom.js";
import { InvalidBaseModelError, MissingCardError, MissingEventError, ReadOnlyViewError } from "./errors.js";
import type { ErrorBanner, TxTracker } from "./feedback.js";
import { formatBytes, formatToken } from "./format.js";
import type { TokenInfo } from "./format.js";

/** What the publish form needs from the page. */
export interface PublishFormContext {
  config: DashboardConfig;
  token: TokenInfo;
  registry: PersonaRegistry;
  /** The registry's `maxRoyaltyPerMillion()`: a higher royalty is refused before anything is uploaded. */
  maxRoyaltyPerMillion: bigint;
  tracker: TxTracker;
  banner: ErrorBanner;
  /** Called with the new persona's id once it is minted. */
  onPublished(personaId: bigint): void;
}

/** The base model chosen in the form. */
export interface ChosenBaseModel {
  hash: string;
  name?: string;
  uri?: string;
}

/**
 * The base model a form value names: a suggestion's name, or a raw 0x SHA-256 (matched to a suggestion when it is one).
 *
 * @example
 * resolveBaseModel("tiny-llama", [{ name: "tiny-llama", sha256: "0xab…" }]) // { hash: "0xab…", name: "tiny-llama" }
 * @throws InvalidBaseModelError.
 */
export function resolveBaseModel(input: string, suggestions: readonly BaseModelSuggestion[]): ChosenBaseModel {
  const text = input.trim();
  const isHash = /^0x[0-9a-fA-F]{64}$/.test(text);
  const match = suggestions.find((s) => (isHash ? s.sha256.toLowerCase() === text.toLowerCase() : s.name === text));
  if (!isHash && !match) throw new InvalidBaseModelError(input);
  const hash = isHash ? text.toLowerCase() : match!.sha256;
  return { hash, ...(match?.name ? { name: match.name } : {}), ...(match?.uri ? { uri: match.uri } : {}) };
}

type PublishState = "uploading" | "preparing" | "signing" | "done" | "failed";

/** The publish form. */
export interface PublishForm {
  setSigner(signer: JsonRpcSigner | undefined): void;
}

/**
 * Builds the publish form in `section`: card and optional LoRA go to the server's IPFS (the adapter with upload
 * progress), then the connected account signs `createPersona`.
 *
 * @example
 * const form = createPublishForm(document.querySelector("#publish")!, ctx); form.setSigner(account.signer)
 */
export function createPublishForm(section: HTMLElement, ctx: PublishFormContext): PublishForm {
  const { config, token } = ctx;
  const field = (id: string, label: string, input: HTMLElement, help?: string): HTMLElement =>
    el("div", { class: "field" }, el("label", { for: id, text: label }), input, ...(help ? [el("small", { class: "muted", text: help })] : []));
  const card = el("input", { id: "publish-card", type: "file", accept: ".json,.png,application/json,image/png", "data-testid": "publish-card", required: true });
  const adapter = el("input", { id: "publish-adapter", type: "file", accept: ".gguf", "data-testid": "publish-adapter" });
  const models = el(
    "datalist",
    { id: "base-models" },
    ...config.baseModels.map((m) => el("option", { value: m.name ?? m.sha256, label: m.name ? m.sha256 : (m.uri ?? "") })),
  );
  const baseModel = el("input", {
    id: "publish-base-model",
    type: "text",
    list: "base-models",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: config.baseModels[0]?.name ?? "0x… SHA-256 of the model file",
    "data-testid": "publish-base-model",
  });
  const royalty = el("input", {
    id: "publish-royalty",
    type: "text",
    inputmode: "decimal",
    placeholder: "0.2",
    "data-testid": "publish-royalty",
    "data-max-units": ctx.maxRoyaltyPerMillion.toString(),
  });
  const price = el("input", { id: "publish-adoption-price", type: "text", inputmode: "decimal", placeholder: "0", value: "0", "data-testid": "publish-adoption-price" });
  const submit = el("button", { type: "submit", class: "primary", "data-testid": "publish-submit", text: "Publish persona" });
  const status = el("p", { class: "status", "data-testid": "publish-status", "aria-live": "polite" });
  const hint = el("p", { class: "hint", hidden: true });
  const form = el(
    "form",
    { class: "publish-form card" },
    el(
      "div",
      { class: "grid" },
      field("publish-card", "Character card (JSON or PNG)", card),
      field("publish-adapter", "LoRA adapter (.gguf, optional)", adapter),
      field("publish-base-model", "Base model", baseModel, "A suggested model, or the model file's SHA-256 (0x + 64 hex)."),
      field("publish-royalty", `Royalty (${token.symbol} per 1M tokens)`, royalty, `At most ${formatToken(ctx.maxRoyaltyPerMillion, token)}.`),
      field("publish-adoption-price", `Adoption price (${token.symbol})`, price),
    ),
    models,
    el("div", { class: "row" }, submit, status),
    hint,
  );
  section.replaceChildren(el("h2", { text: "Publish a persona" }), form);

  let signer: JsonRpcSigner | undefined;
  let running = false;
  const sync = (): void => {
    const blocked = !signer || !config.ipfs;
    for (const input of [card, adapter, baseModel, royalty, price, submit]) input.disabled = blocked || running;
    hint.hidden = !blocked;
    hint.textContent = !config.ipfs
      ? "Publishing needs IPFS, which the dashboard server does not have: start IPFS (or `soulmesh up`) and restart `soulmesh dashboard`."
      : "Read-only view: connect as a creator to publish.";
  };
  const setStatus = (state: PublishState, text: string): void => {
    status.dataset.state = state;
    status.textContent = text;
  };

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (running) return;
    void (async () => {
      ctx.banner.clear();
      delete status.dataset.personaId;
      delete status.dataset.manifestCid;
      running = true;
      sync();
      try {
        if (!signer) throw new ReadOnlyViewError();
        const cardFile = card.files?.[0];
        if (!cardFile) throw new MissingCardError();
        const model = resolveBaseModel(baseModel.value, config.baseModels);
        const royaltyUnits = parseRoyaltyInput("Royalty", royalty.value, token, ctx.maxRoyaltyPerMillion);
        const priceUnits = parseAmountInput("Adoption price", price.value, token.decimals);
        const adapterFile = adapter.files?.[0];
        let adapterCid: string | undefined;
        if (adapterFile) {
          setStatus("uploading", `Uploading the adapter: 0 % of ${formatBytes(adapterFile.size)}…`);
          const uploaded = await uploadAdapter(adapterFile, (sent, total) => {
            const pct = total > 0 ? Math.floor((sent * 100) / total) : 0;
            setStatus("uploading", `Uploading the adapter: ${pct} % (${formatBytes(sent)} of ${formatBytes(total)})…`);
          });
          adapterCid = uploaded.cid;
        }
        setStatus("preparing", "Storing the card and manifest on IPFS…");
        const prepared = await preparePersona({
          card: toBase64(new Uint8Array(await cardFile.arrayBuffer())),
          baseModelHash: model.hash,
          ...(adapterCid ? { adapterCid } : {}),
          ...(model.name ? { baseModelName: model.name } : {}),
          ...(model.uri ? { baseModelUri: model.uri } : {}),
        });
        setStatus("signing", "Waiting for the createPersona transaction…");
        const registry = ctx.registry.connect(signer);
        const receipt = await ctx.tracker.send("Publish persona", () =>
          registry.createPersona(prepared.manifestCid, prepared.adapterSha256, prepared.baseModelHash, royaltyUnits, priceUnits),
        );
        const created = findEvent(registry, receipt.logs, "PersonaCreated");
        if (!created) throw new MissingEventError("PersonaCreated", receipt.hash);
        const personaId = created.args.personaId as bigint;
        status.dataset.personaId = personaId.toString();
        status.dataset.manifestCid = prepared.manifestCid;
        setStatus("done", `Published persona #${personaId} (manifest ${prepared.manifestCid}).`);
        form.reset();
        price.value = "0";
        ctx.onPublished(personaId);
      } catch (err) {
        setStatus("failed", "Publishing failed; see the message above.");
        ctx.banner.show(err);
      } finally {
        running = false;
        sync();
      }
    })();
  });
  sync();

  return {
    setSigner(next) {
      signer = next;
      sync();
    },
  };
}
