// Line charts drawn as SVG by hand (smaller than any library): a few series over time,
// gaps where a value is null, a y axis with round gridlines, a legend, and a readout of
// the values under the pointer. No dependencies; colours follow the page's theme.

const NS = "http://www.w3.org/2000/svg";
const H = 180, LEFT = 52, RIGHT = 8, TOP = 8, BOTTOM = 22;
const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#5c7cfa", "#c2255c", "#74b816", "#495057"];

function el(name, attrs = {}) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** A round step for about `n` gridlines up to `max`. */
function niceStep(max, n = 4) {
  const raw = max / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

export function formatNumber(v) {
  if (v == null) return "—";
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  return a >= 100 || Number.isInteger(v) ? String(Math.round(v)) : String(+v.toFixed(2));
}

function ago(ms) {
  const s = Math.round(ms / 1000);
  return s <= 0 ? "now" : s < 60 ? `−${s}s` : `−${Math.round(s / 60)}m`;
}

/**
 * Draws (or redraws) a chart into `host`.
 * `times`: sample times (ms), oldest first; `series`: [{ name, values }] aligned with them;
 * `unit`: appended to values in the readout. The host gets `data-points` (samples drawn)
 * and `data-last` (the newest non-null value of each series, comma-separated), which the
 * browser tests read.
 */
export function drawChart(host, { times, series, unit = "", empty = "no samples yet" }) {
  host.classList.add("chart");
  // Drawn at the host's width in pixels, so that text keeps its shape.
  const W = Math.max(280, Math.round(host.clientWidth || 640));
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const legend = document.createElement("div");
  legend.className = "chart-legend";
  const readout = document.createElement("div");
  readout.className = "chart-readout muted small";
  host.replaceChildren(svg, legend, readout);
  const n = times.length;
  host.dataset.points = String(n);
  host.dataset.last = series.map((s) => {
    for (let i = s.values.length - 1; i >= 0; i--) if (s.values[i] != null) return s.values[i];
    return "";
  }).join(",");
  const values = series.flatMap((s) => s.values.filter((v) => v != null));
  if (n < 2 || values.length === 0) {
    const t = el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" });
    t.textContent = empty;
    svg.append(t);
    svg.setAttribute("aria-label", empty);
    return;
  }
  const max = Math.max(...values, 0) || 1;
  const step = niceStep(max);
  const top = Math.ceil(max / step) * step;
  const t0 = times[0], t1 = times[n - 1], span = Math.max(t1 - t0, 1);
  const x = (t) => LEFT + ((t - t0) / span) * (W - LEFT - RIGHT);
  const y = (v) => TOP + (1 - v / top) * (H - TOP - BOTTOM);
  for (let v = 0; v <= top + step / 2; v += step) {
    svg.append(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: "chart-grid" }));
    const label = el("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end", class: "chart-axis" });
    label.textContent = formatNumber(v);
    svg.append(label);
  }
  for (const frac of [0, 0.5, 1]) {
    const t = t0 + frac * span;
    const label = el("text", { x: x(t), y: H - 6, "text-anchor": frac === 0 ? "start" : frac === 1 ? "end" : "middle", class: "chart-axis" });
    label.textContent = ago(t1 - t);
    svg.append(label);
  }
  series.forEach((s, k) => {
    const colour = PALETTE[k % PALETTE.length];
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    svg.append(el("path", { d, fill: "none", stroke: colour, "stroke-width": 1.8, "vector-effect": "non-scaling-stroke", "data-series": s.name }));
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour;
    item.append(swatch, s.name);
    legend.append(item);
  });
  const cursor = el("line", { y1: TOP, y2: H - BOTTOM, class: "chart-cursor", visibility: "hidden" });
  svg.append(cursor);
  svg.setAttribute("aria-label", series.map((s) => `${s.name}: ${formatNumber(s.values[n - 1])}${unit}`).join("; "));
  svg.addEventListener("pointermove", (e) => {
    const box = svg.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * W;
    const t = t0 + ((px - LEFT) / (W - LEFT - RIGHT)) * span;
    let i = 0;
    for (let j = 1; j < n; j++) if (Math.abs(times[j] - t) < Math.abs(times[i] - t)) i = j;
    cursor.setAttribute("x1", x(times[i])); cursor.setAttribute("x2", x(times[i]));
    cursor.setAttribute("visibility", "visible");
    const at = new Date(times[i]).toLocaleTimeString();
    readout.textContent = `${at}: ` + series.map((s) => `${s.name} ${formatNumber(s.values[i])}${unit}`).join(" · ");
  });
  svg.addEventListener("pointerleave", () => { cursor.setAttribute("visibility", "hidden"); readout.textContent = ""; });
}

/** The `n` series with the largest recent values (the rest would be unreadable lines). */
export function topSeries(series, n = 8) {
  const recent = (s) => s.values.slice(-15).reduce((a, v) => a + (v ?? 0), 0);
  return [...series].sort((a, b) => recent(b) - recent(a)).slice(0, n);
}

/** How a series moved over its last `points` samples: "↓ 120", "↑ 40", "→ 0" or "". */
export function trend(values, points = 30) {
  const live = values.slice(-points).filter((v) => v != null);
  if (live.length < 2) return "";
  const delta = live[live.length - 1] - live[0];
  return delta < 0 ? `↓ ${formatNumber(-delta)}` : delta > 0 ? `↑ ${formatNumber(delta)}` : "→ 0";
}
