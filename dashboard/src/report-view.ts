import type { CreatorReport, PersonaReport } from "../../sdk/chain/creator-report.js";
import { createRevenueChart } from "./chart.js";
import type { RevenueChart } from "./chart.js";
import type { Account } from "./connection.js";
import { byTestId, el, setAmount } from "./dom.js";
import { formatCount, formatRoyalty, formatToken, formatWhen, shortAddress } from "./format.js";
import type { TokenInfo } from "./format.js";
import { createRoyaltyForm } from "./royalty.js";
import type { RoyaltyForm, RoyaltyFormContext } from "./royalty.js";

/** What the report view needs from the page. */
export interface ReportViewContext extends RoyaltyFormContext {
  token: TokenInfo;
  /** The persona's display name, once the server has read its card (undefined meanwhile or on failure). */
  personaName(personaId: bigint, manifestCid: string, onLoaded: () => void): string | undefined;
  /** The withdraw button was pressed. */
  onWithdraw(): void;
}

function stat(label: string, testId: string): [HTMLElement, HTMLElement] {
  const value = el("dd", { "data-testid": testId });
  return [el("div", { class: "stat" }, el("dt", { text: label }), value), value];
}

/** One persona's card, kept between reports so forms and charts survive refreshes. */
class PersonaView {
  readonly node: HTMLElement;
  readonly #name = el("h3", { "data-testid": "persona-name" });
  readonly #meta = el("p", { class: "muted meta" });
  readonly #holder = el("p", { class: "notice", "data-testid": "persona-holder" });
  readonly #values: Record<string, HTMLElement> = {};
  readonly #scheduledSlot = el("div", { class: "scheduled-slot" });
  readonly #days = el("tbody");
  readonly #providers = el("tbody");
  readonly #chart: RevenueChart;
  readonly #royalty: RoyaltyForm;
  readonly #royaltySlot = el("div");

  constructor(
    readonly personaId: bigint,
    private readonly ctx: ReportViewContext,
  ) {
    const stats = el("dl", { class: "stats" });
    const add = (label: string, id: string): void => {
      const [wrap, value] = stat(label, id);
      stats.append(wrap);
      this.#values[id] = value;
    };
    add("Agents adopted", "persona-agents-adopted");
    add("Adoption price", "persona-adoption-price");
    add("Adoption revenue", "persona-adoption-revenue");
    add("Input tokens", "persona-input-tokens");
    add("Output tokens", "persona-output-tokens");
    add("Royalty revenue", "persona-revenue");
    add("Royalty now", "persona-royalty-now");
    const chartNode = el("div", { class: "chart", "data-testid": "persona-chart", role: "img", "aria-label": "Revenue per day" });
    this.#chart = createRevenueChart(chartNode, ctx.token);
    this.#royalty = createRoyaltyForm(personaId, ctx);
    this.node = el(
      "article",
      { class: "persona card", "data-testid": "persona", "data-persona-id": personaId.toString() },
      el("header", {}, this.#name, this.#meta),
      this.#holder,
      stats,
      this.#scheduledSlot,
      el("h4", { text: "Revenue per day (UTC)" }),
      chartNode,
      el(
        "div",
        { class: "tables" },
        el(
          "table",
          { class: "days" },
          el("caption", { text: "Days with revenue" }),
          el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Day" }), el("th", { scope: "col", class: "num", text: "Revenue" }))),
          this.#days,
        ),
        el(
          "table",
          { class: "providers" },
          el("caption", { text: "Top providers" }),
          el(
            "thead",
            {},
            el(
              "tr",
              {},
              el("th", { scope: "col", text: "Provider" }),
              el("th", { scope: "col", class: "num", text: "Revenue" }),
              el("th", { scope: "col", class: "num", text: "Input tokens" }),
              el("th", { scope: "col", class: "num", text: "Output tokens" }),
            ),
          ),
          this.#providers,
        ),
      ),
      this.#royaltySlot,
    );
  }

  update(p: PersonaReport, account: Account | undefined): void {
    const { token } = this.ctx;
    const rename = (): void => {
      this.#name.textContent = this.ctx.personaName(p.personaId, p.manifestCid, rename) ?? `Persona #${p.personaId}`;
    };
    rename();
    this.#meta.textContent = `#${p.personaId} · manifest ${p.manifestCid}`;
    const v = this.#values;
    setAmount(v["persona-agents-adopted"]!, p.agentsAdopted, formatCount(p.agentsAdopted));
    setAmount(v["persona-adoption-price"]!, p.adoptionPrice, formatToken(p.adoptionPrice, token));
    setAmount(v["persona-adoption-revenue"]!, p.adoptionRevenue, formatToken(p.adoptionRevenue, token));
    setAmount(v["persona-input-tokens"]!, p.inputTokens, formatCount(p.inputTokens));
    setAmount(v["persona-output-tokens"]!, p.outputTokens, formatCount(p.outputTokens));
    setAmount(v["persona-revenue"]!, p.revenue, formatToken(p.revenue, token));
    setAmount(v["persona-royalty-now"]!, p.royaltyNow, formatRoyalty(p.royaltyNow, token));

    const holdsIt = account !== undefined && p.holder.toLowerCase() === account.address.toLowerCase();
    if (holdsIt) this.#holder.remove();
    else {
      this.#holder.textContent = `Now held by ${p.holder}: royalties from its later usage go to the holder.`;
      this.#holder.dataset.holder = p.holder;
      if (!this.#holder.isConnected) this.node.querySelector("header")!.after(this.#holder);
    }

    if (p.royaltyScheduled) {
      const { value, effectiveAt } = p.royaltyScheduled;
      const node = el(
        "p",
        {
          class: "scheduled",
          "data-testid": "persona-royalty-scheduled",
          "data-units": value.toString(),
          "data-effective-at": String(effectiveAt),
        },
        `Royalty changes to ${formatRoyalty(value, token)} on ${formatWhen(effectiveAt, this.ctx.chainNow())}.`,
      );
      this.#scheduledSlot.replaceChildren(node);
    } else this.#scheduledSlot.replaceChildren();

    this.#chart.update(p.revenueByDay);
    this.#days.replaceChildren(
      ...p.revenueByDay.map((d) =>
        el(
          "tr",
          { "data-testid": "persona-revenue-day", "data-day": d.day, "data-units": d.amount.toString() },
          el("td", { text: d.day }),
          el("td", { class: "num", text: formatToken(d.amount, token) }),
        ),
      ),
    );
    if (p.revenueByDay.length === 0) this.#days.append(el("tr", {}, el("td", { colspan: 2, class: "muted", text: "None yet." })));
    this.#providers.replaceChildren(
      ...p.topProviders.map((t) =>
        el(
          "tr",
          {
            "data-testid": "persona-top-provider",
            "data-provider": t.provider,
            "data-units": t.amount.toString(),
            "data-input-tokens": t.inputTokens.toString(),
            "data-output-tokens": t.outputTokens.toString(),
          },
          el("td", { class: "addr", title: t.provider, text: shortAddress(t.provider) }),
          el("td", { class: "num", text: formatToken(t.amount, token) }),
          el("td", { class: "num", text: formatCount(t.inputTokens) }),
          el("td", { class: "num", text: formatCount(t.outputTokens) }),
        ),
      ),
    );
    if (p.topProviders.length === 0) this.#providers.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "None yet." })));

    if (holdsIt) {
      this.#royalty.setSigner(account.signer);
      if (!this.#royalty.node.isConnected) this.#royaltySlot.replaceChildren(this.#royalty.node);
    } else this.#royaltySlot.replaceChildren();
  }

  destroy(): void {
    this.#chart.destroy();
    this.node.remove();
  }
}

/**
 * Shows a creator report: totals and earnings with the withdraw button, and one card per persona. Updates in place,
 * so a refresh keeps what the user is typing.
 *
 * @example
 * const view = new ReportView(overviewNode, personasNode, ctx); view.show(report, account)
 */
export class ReportView {
  readonly #personas = new Map<bigint, PersonaView>();
  readonly #list = el("div", { class: "persona-list" });
  readonly #empty = el("p", { class: "muted", text: "No personas yet: publish one below." });
  readonly #withdraw: HTMLButtonElement;
  readonly #withdrawHint = el("p", { class: "hint", hidden: true });
  #pending = 0n;
  #account: Account | undefined;
  #busy = false;

  constructor(
    private readonly overview: HTMLElement,
    personasSection: HTMLElement,
    private readonly ctx: ReportViewContext,
  ) {
    const card = (label: string, id: string, extra?: string): HTMLElement =>
      el("div", { class: `figure ${extra ?? ""}` }, el("span", { class: "label", text: label }), el("span", { class: "value", "data-testid": id }));
    this.#withdraw = el("button", { type: "button", class: "primary", "data-testid": "withdraw-button", disabled: true, text: "Withdraw earnings" });
    this.#withdraw.addEventListener("click", () => ctx.onWithdraw());
    overview.replaceChildren(
      el("h2", { text: "Earnings" }),
      el(
        "div",
        { class: "figures" },
        card("Pending earnings", "earnings-pending", "big"),
        card("Withdrawn", "earnings-withdrawn"),
        card("Royalty revenue", "total-revenue"),
        card("Input tokens", "total-input-tokens"),
        card("Output tokens", "total-output-tokens"),
        card("Agents adopted", "total-agents-adopted"),
      ),
      el("div", { class: "row" }, this.#withdraw, this.#withdrawHint),
    );
    overview.hidden = true;
    personasSection.replaceChildren(el("h2", { text: "Personas" }), this.#empty, this.#list);
    personasSection.hidden = true;
    this.#sections = [overview, personasSection];
  }

  readonly #sections: HTMLElement[];

  /** Disables the withdraw button while a withdrawal is pending. */
  setBusy(busy: boolean): void {
    this.#busy = busy;
    this.#syncWithdraw();
  }

  /** Empties the view (disconnected or another account). */
  clear(): void {
    for (const v of this.#personas.values()) v.destroy();
    this.#personas.clear();
    for (const s of this.#sections) s.hidden = true;
  }

  show(report: CreatorReport, account: Account | undefined): void {
    const { token } = this.ctx;
    this.#account = account;
    for (const s of this.#sections) s.hidden = false;
    const o = this.overview;
    setAmount(byTestId(o, "earnings-pending"), report.earnings.pending, formatToken(report.earnings.pending, token));
    setAmount(byTestId(o, "earnings-withdrawn"), report.earnings.withdrawn, formatToken(report.earnings.withdrawn, token));
    setAmount(byTestId(o, "total-revenue"), report.totals.revenue, formatToken(report.totals.revenue, token));
    setAmount(byTestId(o, "total-input-tokens"), report.totals.inputTokens, formatCount(report.totals.inputTokens));
    setAmount(byTestId(o, "total-output-tokens"), report.totals.outputTokens, formatCount(report.totals.outputTokens));
    const adopted = report.personas.reduce((a, p) => a + p.agentsAdopted, 0);
    setAmount(byTestId(o, "total-agents-adopted"), adopted, formatCount(adopted));
    this.#pending = report.earnings.pending;
    this.#syncWithdraw();

    const seen = new Set<bigint>();
    for (const p of report.personas) {
      seen.add(p.personaId);
      let view = this.#personas.get(p.personaId);
      if (!view) {
        view = new PersonaView(p.personaId, this.ctx);
        this.#personas.set(p.personaId, view);
        // Ids only grow, so a new persona goes last; existing cards are not moved (that would blur their inputs).
        this.#list.append(view.node);
      }
      view.update(p, account);
    }
    for (const [id, view] of this.#personas) {
      if (!seen.has(id)) {
        view.destroy();
        this.#personas.delete(id);
      }
    }
    this.#empty.hidden = report.personas.length > 0;
  }

  #syncWithdraw(): void {
    const signer = this.#account?.signer;
    this.#withdraw.disabled = !signer || this.#pending === 0n || this.#busy;
    this.#withdrawHint.hidden = signer !== undefined;
    this.#withdrawHint.textContent = signer ? "" : "Read-only view: connect as this creator to withdraw.";
  }
}
