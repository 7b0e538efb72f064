import { formatUnits } from "ethers";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { DayRevenue } from "../../sdk/chain/creator-report.js";
import type { TokenInfo } from "./format.js";

const DAY = 86_400;

/**
 * Every UTC day from the first to the last day with revenue, as chart series. Days without revenue stay on
 * the axis with a null value, so no bar is drawn for them (a zero-height bar still paints a hairline).
 * Values are plotted as floats (the table under the chart carries the exact amounts).
 *
 * @example
 * dailySeries([{ day: "2026-01-01", amount: 1n }, { day: "2026-01-03", amount: 2n }], 0)
 * // [[1767225600, 1767312000, 1767398400], [1, null, 2]]
 */
export function dailySeries(days: readonly DayRevenue[], decimals: number): [number[], (number | null)[]] {
  const first = days[0];
  const last = days.at(-1);
  if (!first || !last) return [[], []];
  const byDay = new Map(days.map((d) => [d.day, d.amount]));
  const start = Date.parse(`${first.day}T00:00:00Z`) / 1000;
  const end = Date.parse(`${last.day}T00:00:00Z`) / 1000;
  const xs: number[] = [];
  const ys: (number | null)[] = [];
  for (let t = start; t <= end; t += DAY) {
    xs.push(t);
    const amount = byDay.get(new Date(t * 1000).toISOString().slice(0, 10)) ?? 0n;
    ys.push(amount > 0n ? Number(formatUnits(amount, decimals)) : null);
  }
  return [xs, ys];
}

function cssVar(node: Element, name: string, fallback: string): string {
  return getComputedStyle(node).getPropertyValue(name).trim() || fallback;
}

/** A revenue-per-day bar chart that follows its container's width. */
export interface RevenueChart {
  update(days: readonly DayRevenue[]): void;
  destroy(): void;
}

/**
 * Draws revenue per UTC day as bars in `container` (uPlot), redrawing only when the figures change.
 *
 * @example
 * const chart = createRevenueChart(node, token); chart.update(report.revenueByDay)
 */
export function createRevenueChart(container: HTMLElement, token: TokenInfo): RevenueChart {
  let plot: uPlot | undefined;
  let shown = "";
  const resize = new ResizeObserver(() => {
    if (plot) plot.setSize({ width: Math.max(200, container.clientWidth), height: 180 });
  });
  resize.observe(container);

  function draw(days: readonly DayRevenue[]): void {
    plot?.destroy();
    plot = undefined;
    container.replaceChildren();
    const [xs, ys] = dailySeries(days, token.decimals);
    if (xs.length === 0) {
      container.append(Object.assign(document.createElement("p"), { className: "muted empty-chart", textContent: "No revenue yet." }));
      return;
    }
    const step = Math.max(1, Math.ceil(xs.length / 10));
    // Half a day either side of the first and last day, from the days themselves: uPlot widens a single day's
    // range to [day, day + 1 d] before calling the range function, which pushed a lone bar to the left edge.
    const accent = cssVar(container, "--accent", "#4f46e5");
    const ink = cssVar(container, "--muted", "#666");
    const grid = cssVar(container, "--grid", "rgba(128,128,128,0.2)");
    const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts: uPlot.Options = {
      width: Math.max(200, container.clientWidth),
      height: 180,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: () => [xs[0]! - DAY / 2, xs.at(-1)! + DAY / 2] }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        {
          ...axis,
          // One tick per day (or every few days on long ranges): uPlot's own time ticks would fall between days.
          splits: () => xs.filter((_x, i) => i % step === 0),
          values: (_u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)),
        },
        { ...axis, size: 60, values: (_u, ticks) => ticks.map((t) => `${t}`) },
      ],
      series: [
        {},
        {
          label: `Revenue (${token.symbol})`,
          fill: accent,
          stroke: accent,
          paths: uPlot.paths.bars?.({ size: [0.7, 48], align: 0 }),
          points: { show: false },
        },
      ],
    };
    plot = new uPlot(opts, [xs, ys], container);
  }

  return {
    update(days) {
      const key = days.map((d) => `${d.day}=${d.amount}`).join(",");
      if (key === shown && (plot || days.length === 0) && container.childElementCount > 0) return;
      shown = key;
      draw(days);
    },
    destroy() {
      resize.disconnect();
      plot?.destroy();
      plot = undefined;
    },
  };
}
