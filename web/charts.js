// Live charts: one uPlot per selected topic (`device/sensor`), time on x
// (the device's `ts`), value on y with its unit. Points are kept per topic
// in sorted arrays, bounded by count and age, and redrawn at most once per
// flush, only for the charts whose data changed.

import uPlot from "./vendor/uplot/uPlot.esm.js";

/** Points kept for a charted topic... */
const MAX_POINTS = 5000;
/** ...and for any other, so that thousands of topics stay small. */
const MAX_BACKGROUND_POINTS = 600;
/** How many topics get a chart by themselves before the user picks. */
const AUTO_CHARTS = 4;

/** Numeric value of a reading, or null when it cannot be plotted. */
function plottable(v) {
  if (typeof v === "number") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  return null;
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** Index at which `x` keeps `xs` sorted (after equal values). */
function insertAt(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class Charts {
  /**
   * @param {HTMLElement} root
   * @param {string[]|null} selection topics chosen by the user, null = automatic
   * @param {(sel: string[]) => void} onSelection
   */
  constructor(root, selection, onSelection) {
    this.root = root;
    this.series = new Map(); // topic -> { xs, ys, unit, dirty }
    this.selection = selection;
    this.onSelection = onSelection;
    this.plots = new Map(); // topic -> { u, box }
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(root);
    // uPlot paints with the colours it was given: rebuild on a scheme change.
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.rebuild());
  }

  rebuild() {
    for (const topic of [...this.plots.keys()]) this.drop(topic);
    this.flush();
  }

  /** Adds a reading's point to its topic. */
  add(item) {
    const y = plottable(item.value);
    if (y === null) return;
    const topic = `${item.device}/${item.sensor}`;
    let s = this.series.get(topic);
    if (!s) {
      s = { xs: [], ys: [], unit: item.unit, dirty: true };
      this.series.set(topic, s);
    }
    const x = item.ts / 1000;
    const i = s.xs.length === 0 || x >= s.xs[s.xs.length - 1] ? s.xs.length : insertAt(s.xs, x);
    s.xs.splice(i, 0, x);
    s.ys.splice(i, 0, y);
    const cap = this.plots.has(topic) ? MAX_POINTS : MAX_BACKGROUND_POINTS;
    if (s.xs.length > cap * 1.1) {
      // Drop in chunks so the cost per reading stays constant.
      const drop = s.xs.length - cap;
      s.xs.splice(0, drop);
      s.ys.splice(0, drop);
    }
    if (item.unit !== undefined) s.unit = item.unit;
    s.dirty = true;
  }

  /** Forgets every point (a new topic filter). */
  clear() {
    this.series.clear();
    for (const topic of [...this.plots.keys()]) this.drop(topic);
  }

  isCharted(topic) {
    return this.plots.has(topic);
  }

  /** Toggles a topic's chart; the choice becomes explicit from then on. */
  toggle(topic) {
    const sel = new Set(this.selection ?? [...this.plots.keys()]);
    if (sel.has(topic)) sel.delete(topic);
    else sel.add(topic);
    this.selection = [...sel];
    this.onSelection(this.selection);
  }

  wanted() {
    if (this.selection !== null) return this.selection.filter((t) => this.series.has(t));
    return [...this.series.keys()].slice(0, AUTO_CHARTS);
  }

  /** Creates/removes charts for the selection and redraws changed data. */
  flush() {
    const want = this.wanted();
    for (const topic of [...this.plots.keys()]) if (!want.includes(topic)) this.drop(topic);
    for (const topic of want) if (!this.plots.has(topic)) this.make(topic);
    for (const [topic, p] of this.plots) {
      const s = this.series.get(topic);
      if (!s.dirty) continue;
      s.dirty = false;
      p.u.setData([s.xs, s.ys]);
      p.box.dataset.points = String(s.xs.length);
    }
    this.root.dataset.charts = String(this.plots.size);
    const empty = this.root.querySelector(".empty");
    if (empty) empty.hidden = this.plots.size > 0;
  }

  make(topic) {
    const s = this.series.get(topic);
    const box = document.createElement("figure");
    box.className = "chart";
    box.dataset.topic = topic;
    const cap = document.createElement("figcaption");
    cap.textContent = s.unit ? `${topic} (${s.unit})` : topic;
    box.append(cap);
    this.root.append(box);
    const ink = cssVar("--fg", "#222");
    const grid = cssVar("--grid", "#0002");
    const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
    const opts = {
      width: this.width(),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [axis, { ...axis, size: 60, label: s.unit ?? "" }],
      series: [{}, { label: topic, stroke: cssVar("--line", "#1668c4"), width: 2, points: { show: false } }],
    };
    const u = new uPlot(opts, [s.xs, s.ys], box);
    s.dirty = false;
    box.dataset.points = String(s.xs.length);
    this.plots.set(topic, { u, box });
  }

  drop(topic) {
    const p = this.plots.get(topic);
    p.u.destroy();
    p.box.remove();
    this.plots.delete(topic);
  }

  width() {
    return Math.max(240, Math.min(this.root.clientWidth - 8, 900));
  }

  fit() {
    const w = this.width();
    for (const { u } of this.plots.values()) if (u.width !== w) u.setSize({ width: w, height: 180 });
  }
}
