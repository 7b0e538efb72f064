import type { JsonRpcSigner } from "ethers";
import type { PersonaRegistry } from "../../sdk/chain/contracts.js";
import { findEvent } from "../../sdk/chain/receipt.js";
import { parseRoyaltyInput } from "./amounts.js";
import { el } from "./dom.js";
import { MissingEventError, ReadOnlyViewError } from "./errors.js";
import type { ErrorBanner, TxTracker } from "./feedback.js";
import { formatDuration, formatToken, formatWhen } from "./format.js";
import type { TokenInfo } from "./format.js";

/** What a royalty form needs from the page. */
export interface RoyaltyFormContext {
  token: TokenInfo;
  /** Seconds from scheduling to effect (personaRegistry.royaltyDelay()). */
  royaltyDelay: number;
  /** The registry's `maxRoyaltyPerMillion()`: a higher royalty is refused before sending. */
  maxRoyaltyPerMillion: bigint;
  registry: PersonaRegistry;
  tracker: TxTracker;
  banner: ErrorBanner;
  /** The chain's time now, Unix seconds. */
  chainNow(): number;
  /** Called after the change is mined. */
  onScheduled(): void;
}

/** A royalty change form of one persona. */
export interface RoyaltyForm {
  node: HTMLElement;
  /** Who signs; undefined disables the form (read-only view). */
  setSigner(signer: JsonRpcSigner | undefined): void;
}

/**
 * The form that schedules a persona's new royalty: it says before sending when the change would take effect,
 * and after the transaction the chain's own effectiveAt (from the RoyaltyScheduled event).
 *
 * @example
 * const form = createRoyaltyForm(7n, ctx); article.append(form.node); form.setSigner(account.signer)
 */
export function createRoyaltyForm(personaId: bigint, ctx: RoyaltyFormContext): RoyaltyForm {
  const inputId = `royalty-input-${personaId}`;
  const input = el("input", {
    id: inputId,
    type: "text",
    inputmode: "decimal",
    autocomplete: "off",
    placeholder: "0.2",
    "data-testid": "royalty-input",
    "data-max-units": ctx.maxRoyaltyPerMillion.toString(),
    title: `At most ${formatToken(ctx.maxRoyaltyPerMillion, ctx.token)} per 1M tokens`,
  });
  const submit = el("button", { type: "submit", "data-testid": "royalty-submit", text: "Schedule change" });
  const effect = el("p", { class: "muted", "data-testid": "royalty-effect", "aria-live": "polite" });
  const hint = el("p", { class: "hint", hidden: true, text: "Read-only view: connect as the holder to change the royalty." });
  const form = el(
    "form",
    { class: "royalty-form" },
    el("label", { for: inputId, text: `New royalty (${ctx.token.symbol} per 1M tokens)` }),
    el("div", { class: "row" }, input, submit),
    effect,
    hint,
  );
  let signer: JsonRpcSigner | undefined;
  let sending = false;

  const before = (): void => {
    delete effect.dataset.effectiveAt;
    effect.textContent = `The change takes effect about ${formatDuration(ctx.royaltyDelay)} after the transaction; settlements of sessions opened before then keep the current royalty.`;
  };
  const sync = (): void => {
    input.disabled = !signer || sending;
    submit.disabled = !signer || sending;
    hint.hidden = signer !== undefined;
  };
  before();
  input.addEventListener("input", before);

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void (async () => {
      ctx.banner.clear();
      try {
        if (!signer) throw new ReadOnlyViewError();
        const units = parseRoyaltyInput("New royalty", input.value, ctx.token, ctx.maxRoyaltyPerMillion);
        sending = true;
        sync();
        const registry = ctx.registry.connect(signer);
        const receipt = await ctx.tracker.send(`Royalty change of persona #${personaId}`, () =>
          registry.scheduleRoyalty(personaId, units),
        );
        const event = findEvent(registry, receipt.logs, "RoyaltyScheduled", (p) => p.args.personaId === personaId);
        if (!event) throw new MissingEventError("RoyaltyScheduled", receipt.hash);
        const effectiveAt = Number(event.args.effectiveAt as bigint);
        effect.dataset.effectiveAt = String(effectiveAt);
        effect.textContent = `Scheduled: takes effect ${formatWhen(effectiveAt, ctx.chainNow())}.`;
        ctx.onScheduled();
      } catch (err) {
        ctx.banner.show(err);
      } finally {
        sending = false;
        sync();
      }
    })();
  });

  return {
    node: form,
    setSigner(next) {
      signer = next;
      sync();
    },
  };
}
