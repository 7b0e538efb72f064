/** Attributes of {@link el}: `dataset`-style keys go through setAttribute, `text` sets textContent. */
export type Attrs = Record<string, string | number | boolean | undefined> & { text?: string };

/**
 * Creates an element with attributes and children; `false`/`undefined` attributes are left out.
 *
 * @example
 * el("button", { type: "button", "data-testid": "refresh", text: "Refresh" })
 */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

/**
 * The element with `data-testid="<id>"` inside `root`; throws when the page's markup lacks it (a bug).
 *
 * @example
 * const refresh = byTestId<HTMLButtonElement>(document, "refresh")
 */
export function byTestId<T extends HTMLElement = HTMLElement>(root: ParentNode, id: string): T {
  const found = root.querySelector<T>(`[data-testid="${id}"]`);
  if (!found) throw new Error(`missing element data-testid=${id}`);
  return found;
}

/**
 * Sets an element's text and `data-units` (the raw integer the text shows).
 *
 * @example
 * setAmount(node, 1_500_000n, "1.5 tUSD")
 */
export function setAmount(node: HTMLElement, units: bigint | number, text: string): void {
  node.dataset.units = units.toString();
  if (node.textContent !== text) node.textContent = text;
}
