// The gregor console: topics, produce, a record browser, a live WebSocket view, consumer groups.
// Plain ES module, no dependencies; everything it talks to is this server's API.

import { drawChart, formatNumber, topSeries, trend } from "/chart.js";

const $ = (sel) => document.querySelector(sel);
const MAX_LIVE_ROWS = 500;

/** Shows an API problem (RFC 9457) or any error in the banner. */
function showError(err) {
  const box = $("#error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = err.problem
    ? `${err.problem.title}: ${err.problem.detail} (${err.problem.code}, HTTP ${err.problem.status})`
    : String(err.message || err);
}

// ---- credentials ------------------------------------------------------------
// The token (an API key or a JWT) lives in sessionStorage: it is gone when the
// tab closes, and it is sent only to this server.

const TOKEN_KEY = "gregor.token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showWho() {
  $("#whoami").textContent = token() ? "token set" : "";
}

$("#auth").onsubmit = (e) => {
  e.preventDefault();
  const t = $("#token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("#token").value = "";
  showWho();
  refreshTopics();
  refreshGroups();
};

/** base64url of a string's UTF-8 bytes, without padding (the WebSocket subprotocol form). */
function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

/** Browsers cannot set headers on a WebSocket: the token rides in a subprotocol. */
function streamProtocols() {
  return token() ? ["gregor.v1", `gregor.bearer.${base64url(token())}`] : [];
}

/** fetch + JSON; throws { problem } for problem+json answers. */
async function api(method, path, body) {
  const headers = body === undefined ? {} : { "content-type": "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = new Error(data && data.detail ? data.detail : `HTTP ${res.status}`);
    err.problem = data && data.code ? data : { title: `HTTP ${res.status}`, detail: text, code: "http_error", status: res.status };
    throw err;
  }
  return data;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

/** Makes a clickable element reachable with Tab and opened with Enter or Space. */
function keyboardClick(el) {
  el.tabIndex = 0;
  el.onkeydown = (e) => {
    if (e.target === el && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); el.click(); }
  };
}

function show(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

// ---- topics ---------------------------------------------------------------

let topicNames = [];
/** Partition count of each listed topic. */
const topicPartitions = new Map();

async function refreshTopics() {
  try {
    const { topics } = await api("GET", "/v1/topics");
    const details = await Promise.all(topics.map((t) => api("GET", `/v1/topics/${encodeURIComponent(t.name)}`)));
    const body = $("#topics tbody");
    const focused = document.activeElement?.closest?.("#topics tbody tr")?.dataset.topic;
    body.replaceChildren();
    for (const t of details) {
      const row = body.insertRow();
      row.className = "clickable";
      row.dataset.topic = t.name;
      cell(row, t.name);
      cell(row, t.partition_count);
      cell(row, t.partitions.reduce((n, p) => n + (p.end_offset - p.beginning_offset), 0));
      cell(row, formatNumber(topicRates.get(t.name) ?? null)).dataset.rate = t.name;
      const del = document.createElement("button");
      del.className = "small";
      del.textContent = "delete";
      del.onclick = async (e) => {
        e.stopPropagation();
        if (!confirm(`Delete topic ${t.name} and all its records?`)) return;
        try { await api("DELETE", `/v1/topics/${encodeURIComponent(t.name)}`); showError(null); refreshTopics(); }
        catch (err) { showError(err); }
      };
      row.insertCell().append(del);
      row.onclick = () => showTopic(t);
      keyboardClick(row);
      if (t.name === focused) row.focus();
      topicPartitions.set(t.name, t.partition_count);
    }
    const names = details.map((t) => t.name);
    if (names.join() !== topicNames.join()) {
      topicNames = names;
      for (const sel of document.querySelectorAll(".topic-select")) {
        const keep = sel.value;
        sel.replaceChildren(...names.map((n) => new Option(n, n)));
        if (names.includes(keep)) sel.value = keep;
      }
    }
    if ($("#browse select[name=partition]").options.length !== (topicPartitions.get($("#browse select[name=topic]").value) ?? 0) + 1) browsePartitions();
  } catch (err) { showError(err); }
}

function formatBytes(n) {
  if (n == null) return "—";
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
  return `${n} B`;
}

let openTopic = null;

function showTopic(t) {
  openTopic = t.name;
  const box = $("#topic-detail");
  box.replaceChildren();
  const h = document.createElement("h3");
  h.textContent = `${t.name}: retention ${t.config.retention_ms < 0 ? "forever" : t.config.retention_ms + " ms"}, max record ${t.config.max_message_bytes} bytes`;
  const table = document.createElement("table");
  table.id = "topic-partitions";
  table.createTHead().innerHTML = "<tr><th>Partition</th><th>Beginning offset</th><th>End offset</th><th>Records</th><th>Size</th><th>Records/s</th></tr>";
  const body = table.createTBody();
  for (const p of t.partitions) {
    const row = body.insertRow();
    cell(row, p.partition); cell(row, p.beginning_offset); cell(row, p.end_offset);
    cell(row, p.end_offset - p.beginning_offset); cell(row, formatBytes(p.size_bytes));
    cell(row, "—").dataset.partitionRate = p.partition;
  }
  const total = t.partitions.reduce((n, p) => n + (p.size_bytes ?? 0), 0);
  const size = document.createElement("p");
  size.className = "muted small";
  size.textContent = t.partitions.some((p) => p.size_bytes == null) ? "" : `${formatBytes(total)} stored`;
  const chartTitle = document.createElement("h3");
  chartTitle.textContent = "Records per second, by partition (last 10 minutes)";
  const chart = document.createElement("div");
  chart.id = "chart-topic";
  box.append(h, table, size, chartTitle, chart, topicSettings(t));
  refreshTopicChart();
  const subjects = api("GET", "/registry/subjects").catch(() => []);
  for (const part of ["value", "key"]) {
    if (t.config[`${part}_schema_validation`]) {
      const note = document.createElement("p");
      note.className = "muted small";
      note.textContent = `${part}s are validated against subject ${t.name}-${part}`;
      box.append(note);
    }
    showSchema(box, t.name, part, subjects);
  }
}

/** A form that edits a topic's configuration and adds partitions (PATCH). */
function topicSettings(t) {
  const form = document.createElement("form");
  form.id = "topic-settings";
  form.className = "controls";
  const field = (name, label, value, type = "number") => {
    const l = document.createElement("label");
    const input = document.createElement("input");
    input.name = name; input.type = type;
    if (type === "checkbox") input.checked = value; else { input.value = value; input.style.width = "9rem"; }
    l.append(`${label} `, input);
    form.append(l);
  };
  field("partitions", "Partitions", t.partition_count);
  field("retention_ms", "retention_ms", t.config.retention_ms);
  field("retention_bytes", "retention_bytes", t.config.retention_bytes);
  field("max_message_bytes", "max_message_bytes", t.config.max_message_bytes);
  field("value_schema_validation", "validate values", t.config.value_schema_validation, "checkbox");
  field("key_schema_validation", "validate keys", t.config.key_schema_validation, "checkbox");
  const save = document.createElement("button");
  save.type = "submit"; save.textContent = "Save";
  form.append(save);
  form.onsubmit = async (e) => {
    e.preventDefault();
    const config = {};
    for (const k of ["retention_ms", "retention_bytes", "max_message_bytes"]) {
      if (Number(form[k].value) !== t.config[k]) config[k] = Number(form[k].value);
    }
    for (const k of ["value_schema_validation", "key_schema_validation"]) {
      if (form[k].checked !== t.config[k]) config[k] = form[k].checked;
    }
    const body = { config };
    const partitions = Number(form.partitions.value);
    if (partitions !== t.partition_count) {
      if (!confirm(`Grow ${t.name} from ${t.partition_count} to ${partitions} partitions? Keys will map to other partitions.`)) return;
      body.partitions = partitions;
    }
    try {
      const updated = await api("PATCH", `/v1/topics/${encodeURIComponent(t.name)}`, body);
      showError(null);
      showTopic(updated);
      refreshTopics();
    } catch (err) { showError(err); }
  };
  return form;
}

/** The latest schema of the topic's subject (`<topic>-value`, `<topic>-key`), if it has one. */
async function showSchema(box, topic, part, subjects) {
  const subject = `${topic}-${part}`;
  let v;
  try {
    // Asked only for subjects that exist, so that a topic without a schema costs no 404.
    if (!(await subjects).includes(subject)) return;
    v = await api("GET", `/registry/subjects/${encodeURIComponent(subject)}/versions/latest`);
  } catch {
    return; // No registry, or not allowed to read it: nothing to show.
  }
  const details = document.createElement("details");
  details.className = "schema";
  const summary = document.createElement("summary");
  summary.textContent = `${part} schema: ${subject} v${v.version}, id ${v.id}, ${v.schemaType || "AVRO"}`;
  const pre = document.createElement("pre");
  try { pre.textContent = JSON.stringify(JSON.parse(v.schema), null, 2); } catch { pre.textContent = v.schema; }
  details.append(summary, pre);
  box.append(details);
}

$("#create-topic").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    await api("POST", "/v1/topics", { name: f.name.value.trim(), partitions: Number(f.partitions.value || 1) });
    showError(null);
    f.name.value = "";
    await refreshTopics();
  } catch (err) { showError(err); }
});
$("#topics-refresh").onclick = refreshTopics;

// ---- produce --------------------------------------------------------------

$("#produce").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const out = $("#produce-result");
  out.textContent = "";
  try {
    const record = {};
    if (f.key.value !== "") record.key = f.key.value;
    const raw = f.value.value;
    if (f.form.value === "json") {
      try { record.value = JSON.parse(raw); }
      catch { throw new Error("the value is not valid JSON (choose 'text' to send it as text)"); }
    } else if (f.form.value === "text") {
      record.value = raw;
    } else {
      record.value_base64 = raw.trim();
    }
    const headers = f.headers.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      const i = l.indexOf(":");
      return i < 0 ? { name: l, value: "" } : { name: l.slice(0, i).trim(), value: l.slice(i + 1).trim() };
    });
    if (headers.length) record.headers = headers;
    if (f.partition.value !== "") record.partition = Number(f.partition.value);
    const res = await api("POST", `/v1/topics/${encodeURIComponent(f.topic.value)}/records`, { records: [record] });
    const o = res.offsets[0];
    out.textContent = `stored at partition ${o.partition}, offset ${o.offset}`;
    showError(null);
    refreshTopics();
  } catch (err) {
    showError(err);
  }
});

// ---- record browser -------------------------------------------------------
// Reads a page at a time (REST reads) from one partition or from all of them merged by time,
// from the earliest or latest offset, an offset, or a date-time (each partition's offset for
// that time). Filters are evaluated here, in the browser, on the page read: key equality, a
// substring of the value's text, a JSON path comparison such as `$.status == "failed"` or
// `$.items[0].qty > 3`, and a header.

const PAGE = 50;
const browse = { topic: "", partition: 0, all: false, from: 0, next: 0, positions: new Map(), nextPositions: new Map(), history: [] };

/** `$.a.b[2] OP literal` (OP: == != > >= < <=, or none: the path exists): a predicate, or throws. */
function jsonPathFilter(text) {
  const m = text.trim().match(/^\$((?:\.[A-Za-z_][\w-]*|\[\d+\]|\["[^"]*"\])*)\s*(?:(==|!=|>=|<=|>|<)\s*(.+))?$/);
  if (!m) throw new Error(`not a JSON path comparison: ${text} (e.g. $.status == "failed")`);
  const steps = [...m[1].matchAll(/\.([A-Za-z_][\w-]*)|\[(\d+)\]|\["([^"]*)"\]/g)].map((s) => s[1] ?? (s[2] !== undefined ? Number(s[2]) : s[3]));
  let want;
  if (m[2]) {
    try { want = JSON.parse(m[3]); } catch { throw new Error(`the value to compare with is not JSON: ${m[3]}`); }
  }
  return (value) => {
    let v = value;
    for (const step of steps) {
      if (v === null || typeof v !== "object" || !(step in v)) return false;
      v = v[step];
    }
    switch (m[2]) {
      case undefined: return true;
      case "==": return JSON.stringify(v) === JSON.stringify(want);
      case "!=": return JSON.stringify(v) !== JSON.stringify(want);
      case ">": return v > want;
      case ">=": return v >= want;
      case "<": return v < want;
      case "<=": return v <= want;
    }
    return false;
  };
}

function browseFilter(f) {
  return recordFilter(f.key.value, f.contains.value, f.path.value, f.header.value);
}

/** A header's value as text (headers that are not UTF-8 arrive as base64). */
function headerText(h) {
  return h.value_base64 !== undefined ? `base64:${h.value_base64}` : show(h.value);
}

/**
 * Key equality, a value substring, a JSON path comparison and a header (`name`: present;
 * `name=value`: present with that value), each when given.
 */
function recordFilter(key, contains, pathText, headerSpec = "") {
  const path = pathText.trim();
  const matches = path ? jsonPathFilter(path) : null;
  const spec = headerSpec.trim();
  const eq = spec.indexOf("=");
  const [hName, hValue] = eq < 0 ? [spec, null] : [spec.slice(0, eq), spec.slice(eq + 1)];
  return (r) => {
    if (key !== "" && show(r.key) !== key) return false;
    const text = r.value_base64 !== undefined ? r.value_base64 : show(r.value);
    if (contains !== "" && !text.includes(contains)) return false;
    if (matches && (r.value === undefined || !matches(r.value))) return false;
    if (spec && !(r.headers || []).some((h) => h.name === hName && (hValue === null || headerText(h) === hValue))) return false;
    return true;
  };
}

/** A record's cells, as the browser and the live view show them: partition, offset, time, key, value, headers. */
function recordCells(row, r, time) {
  row.dataset.partition = r.partition;
  row.dataset.offset = r.offset;
  cell(row, r.partition); cell(row, r.offset); cell(row, time);
  valueCell(row, r.key, r.key_base64, r.key_schema_id);
  valueCell(row, r.value, r.value_base64, r.value_schema_id);
  cell(row, (r.headers || []).map((h) => `${h.name}=${headerText(h)}`).join(", "), "value");
}

/** One row of the record browser. */
function browseRow(body, r) {
  const row = body.insertRow();
  recordCells(row, r, new Date(r.timestamp).toISOString());
  const actions = row.insertCell();
  const copy = document.createElement("button");
  copy.className = "small"; copy.textContent = "copy"; copy.title = "copy the record as JSON";
  copy.onclick = () => navigator.clipboard?.writeText(JSON.stringify(r, null, 2));
  const link = document.createElement("a");
  link.textContent = "link"; link.title = "a link to this record";
  link.href = `#record=${encodeURIComponent(r.topic)}/${r.partition}/${r.offset}`;
  actions.append(copy, " ", link);
}

function partitionPath(topic, partition) {
  return `/v1/topics/${encodeURIComponent(topic)}/partitions/${partition}`;
}

/** Up to a page of the browsed topic's `partition` from `offset` on. */
function readPage(partition, offset) {
  return api("GET", `${partitionPath(browse.topic, partition)}/records?offset=${offset}&limit=${PAGE}`);
}

async function browseFrom(offset) {
  const f = $("#browse");
  const matches = browseFilter(f);
  const page = await readPage(browse.partition, offset);
  browse.from = offset;
  browse.next = page.next_offset;
  const shown = page.records.filter(matches);
  const body = $("#browse-records");
  body.replaceChildren();
  for (const r of shown) browseRow(body, r);
  const last = page.records.length ? page.records[page.records.length - 1].offset : offset - 1;
  $("#browse-status").textContent = page.records.length
    ? `offsets ${offset}–${last} of [${page.beginning_offset}, ${page.end_offset}): ${shown.length} of ${page.records.length} match`
    : `nothing at ${offset} (partition holds [${page.beginning_offset}, ${page.end_offset}))`;
  $("#browse-prev").disabled = offset <= page.beginning_offset;
  $("#browse-next").disabled = page.next_offset >= page.end_offset;
  return page;
}

/**
 * All partitions at once: a page is the first PAGE records by time of what each partition
 * holds from its position on (each read up to PAGE), merged; each partition's position then
 * moves past what the page took from it. `positions`: partition → offset.
 */
async function browseAllFrom(positions) {
  const f = $("#browse");
  const matches = browseFilter(f);
  const reads = await Promise.all([...positions].map(async ([p, offset]) => {
    return { p, offset, page: await readPage(p, offset) };
  }));
  const merged = reads.flatMap((x) => x.page.records)
    .sort((a, b) => a.timestamp - b.timestamp || a.partition - b.partition || a.offset - b.offset)
    .slice(0, PAGE);
  const next = new Map(positions);
  for (const r of merged) next.set(r.partition, r.offset + 1);
  browse.positions = positions;
  browse.nextPositions = next;
  const shown = merged.filter(matches);
  const body = $("#browse-records");
  body.replaceChildren();
  for (const r of shown) browseRow(body, r);
  const total = reads.reduce((n, x) => n + Math.max(0, x.page.end_offset - x.offset), 0);
  $("#browse-status").textContent = merged.length
    ? `${merged.length} records by time from ${reads.length} partitions (${total} from here on): ${shown.length} of ${merged.length} match`
    : `nothing from here on in ${reads.length} partitions`;
  $("#browse-prev").disabled = browse.history.length === 0;
  $("#browse-next").disabled = reads.every((x) => next.get(x.p) >= x.page.end_offset);
}

async function seek() {
  const f = $("#browse");
  browse.topic = f.topic.value;
  browse.all = f.partition.value === "all";
  browse.history = [];
  const ms = f.seek.value === "time" ? timeMs(f.time.value, "seek to") : null;
  if (browse.all) {
    const t = await api("GET", `/v1/topics/${encodeURIComponent(browse.topic)}`);
    const positions = new Map();
    const per = Math.ceil(PAGE / Math.max(1, t.partitions.length));
    for (const p of t.partitions) {
      let offset = p.beginning_offset;
      if (f.seek.value === "latest") offset = Math.max(p.beginning_offset, p.end_offset - per);
      if (f.seek.value === "offset") offset = Math.min(Math.max(Number(f.offset.value || 0), p.beginning_offset), p.end_offset);
      if (ms !== null) offset = await offsetAt(browse.topic, p.partition, ms);
      positions.set(p.partition, offset);
    }
    return browseAllFrom(positions);
  }
  browse.partition = Number(f.partition.value || 0);
  const part = await api("GET", partitionPath(browse.topic, browse.partition));
  let offset = part.beginning_offset;
  if (f.seek.value === "latest") offset = Math.max(part.beginning_offset, part.end_offset - PAGE);
  if (f.seek.value === "offset") offset = Number(f.offset.value || 0);
  if (ms !== null) offset = await offsetAt(browse.topic, browse.partition, ms);
  return browseFrom(offset);
}

/** A datetime-local input's value in ms since the epoch; `purpose` names the action in the error. */
function timeMs(value, purpose) {
  const ms = new Date(value).getTime();
  if (Number.isNaN(ms)) throw new Error(`pick a date and time to ${purpose}`);
  return ms;
}

/** The first offset of `topic`'s `partition` at or after `ms`. */
async function offsetAt(topic, partition, ms) {
  return (await api("GET", `${partitionPath(topic, partition)}/offsets?timestamp=${ms}`)).offset;
}

/** The browser's partition choices for the chosen topic: all, or one. */
function browsePartitions() {
  const f = $("#browse");
  const count = topicPartitions.get(f.topic.value) ?? 1;
  const keep = f.partition.value;
  const options = [new Option("all", "all"), ...Array.from({ length: count }, (_, i) => new Option(String(i), String(i)))];
  f.partition.replaceChildren(...options);
  f.partition.value = options.some((o) => o.value === keep) ? keep : "all";
}
$("#browse select[name=topic]").addEventListener("change", browsePartitions);

$("#browse").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await seek(); showError(null); } catch (err) { showError(err); }
});
$("#browse-next").onclick = async () => {
  try {
    if (browse.all) { browse.history.push(browse.positions); await browseAllFrom(browse.nextPositions); }
    else await browseFrom(browse.next);
    showError(null);
  } catch (err) { showError(err); }
};
$("#browse-prev").onclick = async () => {
  try {
    if (browse.all) await browseAllFrom(browse.history.pop());
    else await browseFrom(Math.max(0, browse.from - PAGE));
    showError(null);
  } catch (err) { showError(err); }
};

/** A permalink `#record=topic/partition/offset` opens the browser at that record. */
async function openPermalink() {
  const m = location.hash.match(/^#record=([^/]+)\/(\d+)\/(\d+)$/);
  if (!m) return;
  const f = $("#browse");
  const topic = decodeURIComponent(m[1]);
  if (![...f.topic.options].some((o) => o.value === topic)) f.topic.append(new Option(topic, topic));
  f.topic.value = topic;
  browsePartitions();
  if (![...f.partition.options].some((o) => o.value === m[2])) f.partition.append(new Option(m[2], m[2]));
  f.partition.value = m[2];
  f.seek.value = "offset";
  f.offset.value = m[3];
  try {
    await seek();
    const row = document.querySelector(`#browse-records tr[data-offset="${m[3]}"]`);
    if (row) { row.classList.add("focused"); row.scrollIntoView({ block: "center" }); }
    showError(null);
  } catch (err) { showError(err); }
}
window.addEventListener("hashchange", openPermalink);

// ---- live view ------------------------------------------------------------

let socket = null;
let paused = false;
const pending = [];
/** Records held while paused, at most: past it the oldest go (and are counted as dropped). */
const MAX_PENDING = 10000;
const live = { received: 0, shown: 0, filtered: 0, dropped: 0, filter: () => true };

function showLiveCounts() {
  $("#live-counts").textContent =
    `${live.received} received · ${live.shown} shown · ${live.filtered} filtered out · ${live.dropped} dropped from view`;
}

/** The live filters as typed (an invalid JSON path shows its error and lets everything through). */
function updateLiveFilter() {
  try {
    live.filter = recordFilter($("#live-key").value, $("#live-contains").value, $("#live-path").value, $("#live-header").value);
    showError(null);
  } catch (err) {
    live.filter = () => true;
    showError(err);
  }
}
for (const id of ["#live-key", "#live-contains", "#live-path", "#live-header"]) $(id).addEventListener("change", updateLiveFilter);

/** A key or value: compact, expanding to pretty-printed JSON on click; decoded ones name their schema. */
function valueCell(row, json, b64, schemaId) {
  const td = cell(row, b64 !== undefined ? `base64:${b64}` : show(json), "value");
  if (schemaId !== undefined) {
    const tag = document.createElement("span");
    tag.className = "schema-tag";
    tag.textContent = `schema ${schemaId}`;
    td.prepend(tag, " ");
  }
  let expanded = null;
  if (json !== null && typeof json === "object") expanded = () => jsonTree(json);
  else if (b64 !== undefined) expanded = () => hexDump(b64);
  if (!expanded) return td;
  td.classList.add("expandable");
  td.tabIndex = 0;
  td.title = b64 !== undefined ? "click for a hex view" : "click to expand";
  const compact = td.lastChild;
  let full = null;
  const toggle = (e) => {
    // Folding a branch of the tree is not a click on the cell.
    if (e.target.closest && e.target.closest("summary")) return;
    full = full || expanded();
    if (td.contains(full)) full.replaceWith(compact); else compact.replaceWith(full);
  };
  td.onclick = toggle;
  td.onkeydown = (e) => { if (e.key === "Enter") toggle(e); };
  return td;
}

/** A JSON value as a tree of <details>: objects and arrays fold, the first two levels open. */
function jsonTree(value, name, depth = 0) {
  const label = name === undefined ? "" : `${JSON.stringify(name)}: `;
  if (value === null || typeof value !== "object") {
    const leaf = document.createElement("div");
    leaf.className = "json-leaf";
    leaf.textContent = label + JSON.stringify(value);
    return leaf;
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const node = document.createElement("details");
  node.className = "json-tree";
  node.open = depth < 2;
  const summary = document.createElement("summary");
  const n = entries.length;
  summary.textContent = Array.isArray(value) ? `${label}[ ${n} item${n === 1 ? "" : "s"} ]` : `${label}{ ${n} key${n === 1 ? "" : "s"} }`;
  node.append(summary, ...entries.map(([k, v]) => jsonTree(v, Array.isArray(value) ? undefined : k, depth + 1)));
  return node;
}

/** Bytes (base64) as a hex dump: offset, 16 bytes in hex, and their printable ASCII. */
function hexDump(b64) {
  const bin = atob(b64);
  const lines = [];
  for (let i = 0; i < bin.length; i += 16) {
    const chunk = [...bin.slice(i, i + 16)].map((c) => c.charCodeAt(0));
    const hex = chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ").padEnd(47);
    const ascii = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${i.toString(16).padStart(8, "0")}  ${hex}  ${ascii}`);
  }
  const pre = document.createElement("pre");
  pre.className = "hex";
  pre.textContent = lines.join("\n") || "(empty)";
  return pre;
}

function setLiveStatus(text) { $("#live-status").textContent = text; }

function addRecord(r) {
  if (!live.filter(r)) { live.filtered++; return; }
  live.shown++;
  const body = $("#live-records");
  recordCells(body.insertRow(0), r, new Date(r.timestamp).toLocaleTimeString());
  while (body.rows.length > MAX_LIVE_ROWS) { body.deleteRow(-1); live.dropped++; }
}

function stopLive() {
  if (socket) { socket.onclose = null; socket.close(1000); socket = null; }
  $("#live-start").textContent = "Start";
  $("#live-pause").disabled = true;
  setLiveStatus("stopped");
}

$("#live-start").onclick = () => {
  if (socket) { stopLive(); return; }
  const topic = $("#live-topic").value;
  if (!topic) { showError(new Error("create a topic first")); return; }
  const from = $("#live-from").value;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/v1/topics/${encodeURIComponent(topic)}/stream?from=${from}`, streamProtocols());
  paused = false;
  $("#live-pause").textContent = "Pause";
  setLiveStatus("connecting…");
  socket.onopen = () => {
    setLiveStatus(`live: ${topic} from ${from}`);
    $("#live-start").textContent = "Stop";
    $("#live-pause").disabled = false;
  };
  socket.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "records") {
      live.received += frame.records.length;
      for (const r of frame.records) (paused ? pending.push(r) : addRecord(r));
      if (pending.length > MAX_PENDING) live.dropped += pending.splice(0, pending.length - MAX_PENDING).length;
      if (paused) setLiveStatus(`paused: ${pending.length} records waiting`);
      showLiveCounts();
    } else if (frame.type === "error") {
      showError({ problem: { title: "Stream error", detail: frame.message, code: frame.code, status: "-" } });
    }
  };
  socket.onclose = (e) => {
    socket = null;
    stopLive();
    if (e.code !== 1000) setLiveStatus(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
  };
};

$("#live-pause").onclick = () => {
  paused = !paused;
  $("#live-pause").textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const r of pending.splice(0)) addRecord(r);
    showLiveCounts();
    setLiveStatus("live");
  } else {
    setLiveStatus("paused");
  }
};

$("#live-clear").onclick = () => {
  $("#live-records").replaceChildren();
  pending.length = 0;
  Object.assign(live, { received: 0, shown: 0, filtered: 0, dropped: 0 });
  showLiveCounts();
};

// ---- groups ---------------------------------------------------------------

let openGroup = null;

async function refreshGroups() {
  try {
    const { groups } = await api("GET", "/v1/groups");
    const details = await Promise.all(groups.map((g) => api("GET", `/v1/groups/${encodeURIComponent(g.group)}`).catch(() => null)));
    const history = openGroup ? await groupHistory(openGroup) : null;
    const body = $("#groups tbody");
    // Keyboard focus on a row survives the re-render.
    const focused = document.activeElement?.closest?.("#groups tbody tr")?.dataset.group;
    body.replaceChildren();
    for (const g of details.filter(Boolean)) {
      const row = body.insertRow();
      row.className = "clickable";
      row.dataset.group = g.group;
      cell(row, g.group); cell(row, g.state); cell(row, g.generation); cell(row, g.members.length);
      cell(row, g.offsets.reduce((n, o) => n + (o.lag ?? 0), 0));
      row.onclick = async () => {
        openGroup = g.group;
        showGroup(g, await groupHistory(g.group));
      };
      keyboardClick(row);
      if (g.group === focused) row.focus();
      // Not while the person is using the detail (a reset being previewed, a field with focus).
      const busy = $("#group-detail").contains(document.activeElement) || $("#group-reset-preview")?.childElementCount;
      if (g.group === openGroup && !busy) showGroup(g, history);
    }
    if (openGroup && !details.some((g) => g && g.group === openGroup)) { openGroup = null; $("#group-detail").replaceChildren(); }
  } catch (err) { showError(err); }
}

/** A group's lag over time, or null where there is none to show (the charts say why not). */
function groupHistory(group) {
  return api("GET", `/v1/history/groups/${encodeURIComponent(group)}`).catch(() => null);
}

function showGroup(g, history) {
  const box = $("#group-detail");
  box.replaceChildren();
  const h = document.createElement("h3");
  h.textContent = `${g.group}: ${g.state}, generation ${g.generation}, assignor ${g.assignor}`;
  const members = document.createElement("table");
  members.createTHead().innerHTML = "<tr><th>Member</th><th>Assignment</th><th>Revoking</th><th>Last heartbeat</th></tr>";
  const mb = members.createTBody();
  const fmt = (list) => list.map((t) => `${t.topic}[${t.partitions.join(",")}]`).join(" ") || "—";
  for (const m of g.members) {
    const row = mb.insertRow();
    cell(row, m.instance_id ? `${m.member_id} (${m.instance_id})` : m.member_id);
    cell(row, fmt(m.assignment)); cell(row, fmt(m.revoking)); cell(row, `${m.last_heartbeat_ms_ago} ms ago`);
  }
  const offsets = document.createElement("table");
  offsets.id = "group-offsets";
  offsets.createTHead().innerHTML = "<tr><th>Topic</th><th>Partition</th><th>Committed</th><th>End</th><th>Lag</th><th title=\"Change of the lag over the last minute\">Trend (1 min)</th><th>Owner</th></tr>";
  const ob = offsets.createTBody();
  const lagOf = new Map((history?.partitions ?? []).map((p) => [`${p.topic}/${p.partition}`, p.lag]));
  for (const o of g.offsets) {
    const row = ob.insertRow();
    row.dataset.partition = `${o.topic}/${o.partition}`;
    cell(row, o.topic); cell(row, o.partition); cell(row, o.committed_offset ?? "—");
    cell(row, o.end_offset); cell(row, o.lag ?? "—", "lag");
    cell(row, trend(lagOf.get(`${o.topic}/${o.partition}`) ?? []), "trend");
    cell(row, o.owner ?? "—");
  }
  const chartTitle = document.createElement("h3");
  chartTitle.textContent = "Lag by partition (last 10 minutes)";
  const chart = document.createElement("div");
  chart.id = "chart-group";
  box.append(h, members, offsets, chartTitle, chart, groupActions(g));
  // Drawn once in the page, at its width.
  if (history) {
    const series = history.partitions.map((p) => ({ name: `${p.topic}[${p.partition}]`, values: p.lag }));
    series.unshift({ name: "total", values: history.total_lag });
    drawChart(chart, { times: history.times_ms, series: topSeries(series, 9), empty: "no committed offsets sampled yet" });
  }
}

/** Reset a group's offsets (with a preview of what moves, then a confirmation), or delete it when empty. */
function groupActions(g) {
  const wrap = document.createElement("div");
  const form = document.createElement("form");
  form.id = "group-reset";
  form.className = "controls";
  const topics = [...new Set(g.offsets.map((o) => o.topic))];
  form.innerHTML = `<label>Reset <select name="topic"></select></label>
    <label>to <select name="to"><option value="earliest">earliest</option><option value="latest">latest</option>
      <option value="offset">offset</option><option value="timestamp">date-time</option></select></label>
    <label><input name="offset" type="number" min="0" placeholder="offset" style="width:7rem"></label>
    <label><input name="time" type="datetime-local" step="1"></label>
    <button type="submit">Preview</button>`;
  form.topic.replaceChildren(...topics.map((t) => new Option(t, t)));
  const preview = document.createElement("div");
  preview.id = "group-reset-preview";
  form.onsubmit = async (e) => {
    e.preventDefault();
    try {
      const topic = form.topic.value;
      const body = { topic };
      const parts = g.offsets.filter((o) => o.topic === topic);
      const targets = [];
      for (const o of parts) {
        let to;
        if (form.to.value === "earliest" || form.to.value === "latest") {
          const p = await api("GET", partitionPath(topic, o.partition));
          to = form.to.value === "earliest" ? p.beginning_offset : p.end_offset;
          body.to = form.to.value;
        } else if (form.to.value === "offset") {
          to = Number(form.offset.value || 0);
          body.offset = to;
        } else {
          body.timestamp = timeMs(form.time.value, "reset to");
          to = await offsetAt(topic, o.partition, body.timestamp);
        }
        targets.push({ partition: o.partition, from: o.committed_offset, to });
      }
      const table = document.createElement("table");
      table.createTHead().innerHTML = "<tr><th>Partition</th><th>Committed now</th><th>After the reset</th><th>Moves</th></tr>";
      const tb = table.createTBody();
      for (const t of targets) {
        const row = tb.insertRow();
        cell(row, t.partition); cell(row, t.from ?? "—"); cell(row, t.to);
        cell(row, t.from == null ? "new" : t.to - t.from);
      }
      const apply = document.createElement("button");
      apply.textContent = "Apply the reset";
      apply.onclick = async () => {
        if (!confirm(`Reset group ${g.group} on ${topic} as previewed?`)) return;
        try {
          await api("POST", `/v1/groups/${encodeURIComponent(g.group)}/offsets/reset`, body);
          preview.replaceChildren();
          showError(null);
          refreshGroups();
        } catch (err) { showError(err); }
      };
      preview.replaceChildren(table, apply);
      showError(null);
    } catch (err) { showError(err); }
  };
  wrap.append(form, preview);
  if (g.members.length === 0) {
    const del = document.createElement("button");
    del.id = "group-delete";
    del.textContent = "Delete this empty group";
    del.onclick = async () => {
      if (!confirm(`Delete group ${g.group} and its committed offsets?`)) return;
      try {
        await api("DELETE", `/v1/groups/${encodeURIComponent(g.group)}`);
        openGroup = null;
        $("#group-detail").replaceChildren();
        showError(null);
        refreshGroups();
      } catch (err) { showError(err); }
    };
    wrap.append(del);
  }
  return wrap;
}

// ---- charts ---------------------------------------------------------------
// The server samples every 2 s and keeps 10 minutes (`/v1/history/...`); the console
// redraws at the same pace while the tab is visible.

const topicRates = new Map();

/** Shows why a chart has no data (e.g. the principal may not describe the cluster). */
function chartProblem(host, err) {
  host.replaceChildren();
  const p = document.createElement("p");
  p.className = "muted small chart-note";
  p.textContent = err.problem && err.problem.status === 403
    ? `Not shown: your principal may not see this (${err.problem.detail}).`
    : `Not available: ${err.message || err}`;
  host.append(p);
}

async function refreshCharts() {
  if (document.hidden) return;
  try {
    const h = await api("GET", "/v1/history/topics");
    const series = h.topics.map((t) => ({ name: t.topic, values: t.records_per_second }));
    for (const s of series) topicRates.set(s.name, s.values.at(-1) ?? null);
    for (const c of document.querySelectorAll("#topics td[data-rate]")) c.textContent = formatNumber(topicRates.get(c.dataset.rate) ?? null);
    drawChart($("#chart-topics"), { times: h.times_ms, series: topSeries(series), unit: "/s", empty: "no topic has records arriving yet" });
  } catch (err) { chartProblem($("#chart-topics"), err); }
  try {
    const p = await api("GET", "/v1/history/produce");
    drawChart($("#chart-latency"), {
      times: p.times_ms,
      series: [{ name: "p50", values: p.p50_ms }, { name: "p99", values: p.p99_ms }, { name: "max", values: p.max_ms }],
      unit: " ms",
      empty: "no produce yet",
    });
  } catch (err) { chartProblem($("#chart-latency"), err); }
  refreshTopicChart();
}

async function refreshTopicChart() {
  const host = $("#chart-topic");
  if (!host || !openTopic || document.hidden) return;
  const name = openTopic;
  try {
    const h = await api("GET", `/v1/history/topics/${encodeURIComponent(name)}`);
    if (name !== openTopic) return;
    const series = h.partitions.map((p) => ({ name: `partition ${p.partition}`, values: p.records_per_second }));
    drawChart(host, { times: h.times_ms, series: topSeries(series, 10), unit: "/s", empty: "no samples yet (one every 2 s)" });
    for (const p of h.partitions) {
      const c = document.querySelector(`#topic-partitions td[data-partition-rate="${p.partition}"]`);
      if (c) c.textContent = formatNumber(p.records_per_second.at(-1) ?? null);
    }
  } catch (err) { chartProblem(host, err); }
}

// ---- health ---------------------------------------------------------------

async function refreshHealth() {
  const pill = $("#health");
  try {
    const res = await fetch("/readyz");
    pill.textContent = res.ok ? "ready" : "not ready";
    pill.classList.toggle("bad", !res.ok);
  } catch {
    pill.textContent = "unreachable";
    pill.classList.add("bad");
  }
}

showWho();
refreshTopics().then(openPermalink);
refreshGroups();
refreshHealth();
setInterval(refreshGroups, 2000);
setInterval(refreshHealth, 5000);
setInterval(refreshTopics, 5000);
refreshCharts();
setInterval(refreshCharts, 2000);
