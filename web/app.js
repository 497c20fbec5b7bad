// The dashboard's wiring: auth (token from the URL fragment or
// sessionStorage), the device list, the live stream and the charts.
// Every number a test asserts on is exposed as a `data-` attribute:
// #held[data-count|data-duplicates|data-last-id|data-id-sum],
// #status[data-state|data-connects|data-resumed-from|data-live-from],
// #lagged[data-lagged|data-truncated].

import { Stream, probe } from "./stream.js";
import { DeviceTable, Rate } from "./devices.js";
import { Charts } from "./charts.js";

/** On open, the charts start with this much history from /v1/readings. */
const HISTORY_MS = 10 * 60 * 1000;
/** At most this many ids back are searched for that history. */
const HISTORY_IDS = 20000;
const DEVICES_POLL_MS = 5000;
const TOKEN_KEY = "sensorgate.token";
const TOPIC_KEY = "sensorgate.topic";
const SELECTION_KEY = "sensorgate.charts";

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  stream: null,
  paused: false,
  // Readings this page holds, for the resume promise: each id once.
  count: 0,
  duplicates: 0,
  lastId: 0,
  idSum: 0,
  lagged: 0,
  total: new Rate(),
  devicesTimer: null,
  dirty: false,
  historyLoaded: false,
};

const charts = new Charts(
  $("charts"),
  JSON.parse(sessionStorage.getItem(SELECTION_KEY) ?? "null"),
  (sel) => {
    sessionStorage.setItem(SELECTION_KEY, JSON.stringify(sel));
    table.refreshChips();
    state.dirty = true;
  },
);
const table = new DeviceTable(
  $("devices").tBodies[0],
  (topic) => charts.toggle(topic),
  (topic) => charts.isCharted(topic),
);

/** The token from `/#token=…` (then removed from the address bar) or this tab's storage. */
function takeToken() {
  const frag = new URLSearchParams(location.hash.slice(1));
  const t = frag.get("token");
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function setStatus(st, text) {
  const s = $("status");
  s.dataset.state = st;
  s.dataset.connects = String(state.stream?.connects ?? 0);
  s.dataset.resumedFrom = String(state.stream?.resumedFrom ?? "");
  s.dataset.liveFrom = String(state.stream?.liveFrom ?? "");
  $("status-text").textContent = state.paused && st === "connected" ? "connected (view paused)" : text;
  if (st === "auth") stopAll("token rejected");
}

function showNotice(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

/** One reading into the page's state (not the DOM). */
function take(item, live) {
  if (item.origin === undefined) {
    if (live && item.id <= state.lastId) {
      state.duplicates += 1;
      return;
    }
    state.lastId = Math.max(state.lastId, item.id);
    state.idSum += item.id;
  }
  state.count += 1;
  if (live) state.total.add(1);
  table.reading(item, live);
  charts.add(item);
  state.dirty = true;
}

function onMessage(msg) {
  switch (msg.type) {
    case "readings":
      for (const item of msg.items) take(item, true);
      break;
    case "subscribed":
      // Once per filter: later `subscribed` answers are resumes, whose
      // replay (`since`) already covers what was missed.
      if (!state.historyLoaded) {
        state.historyLoaded = true;
        loadHistory(msg.last_id);
      }
      break;
    case "lagged":
      state.lagged += msg.dropped;
      $("lagged").dataset.lagged = String(state.lagged);
      $("lagged").textContent = `missed ${state.lagged} (too slow)`;
      $("lagged").hidden = false;
      break;
    case "truncated":
      $("lagged").dataset.truncated = String(msg.oldest_id);
      showNotice(`Readings before #${msg.oldest_id} were already pruned by retention.`);
      break;
    case "error":
      showNotice(`Server: ${msg.code}: ${msg.detail}`);
      break;
  }
}

/**
 * The last HISTORY_MS of readings up to `upTo` (where live delivery
 * starts), so a chart is never empty on open. Ids above `upTo` come live.
 */
async function loadHistory(upTo) {
  const topics = currentTopics();
  const since0 = Math.max(0, upTo - HISTORY_IDS);
  const cutoff = Date.now() - HISTORY_MS;
  const got = [];
  for (const topic of topics) {
    let since = since0;
    while (since < upTo) {
      const q = new URLSearchParams({ topic, since: String(since), limit: "10000" });
      const r = await fetch(`/v1/readings?${q}`, { headers: authHeaders(), cache: "no-store" }).catch(() => null);
      if (!r || !r.ok) return;
      const page = await r.json();
      if (page.items.length === 0) break;
      got.push(...page.items.filter((i) => i.id <= upTo && i.received >= cutoff));
      since = page.next;
    }
  }
  // Several filters may overlap: each id once, in id order.
  got.sort((a, b) => a.id - b.id);
  let prev = 0;
  for (const item of got) {
    if (item.id === prev) continue;
    prev = item.id;
    // Added below anything live: ids <= upTo never arrive on the stream.
    state.count += 1;
    state.idSum += item.id;
    table.reading(item, false);
    charts.add(item);
  }
  state.dirty = true;
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

/**
 * The `topics` claim of a JWT, read (not verified: the server does that)
 * so that a restricted token starts with a filter it may use.
 */
function tokenTopics(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const topics = JSON.parse(atob(b64)).topics;
    return Array.isArray(topics) && topics.length > 0 ? topics : null;
  } catch {
    return null;
  }
}

function currentTopics() {
  return $("topic")
    .value.split(/[\s,]+/)
    .filter((t) => t !== "");
}

async function pollDevices() {
  clearTimeout(state.devicesTimer);
  try {
    const r = await fetch("/v1/devices", { headers: authHeaders(), cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      setStatus("auth", "token rejected");
      return;
    }
    if (r.ok) {
      table.update(await r.json());
      state.dirty = true;
    }
  } catch {
    // The server is down: the stream's status says so; keep polling.
  }
  state.devicesTimer = setTimeout(pollDevices, DEVICES_POLL_MS);
}

function stopAll(why) {
  clearTimeout(state.devicesTimer);
  if (state.stream) state.stream.stop();
  $("auth").hidden = false;
  $("auth-msg").textContent = why === "token rejected" ? "Token rejected: enter another subscriber token." : why;
  $("status-text").textContent = why;
}

function startStream() {
  if (state.stream) state.stream.stop();
  state.stream = new Stream({ topics: currentTopics(), token: state.token, onMessage, onStatus: setStatus });
  state.stream.start();
}

/** Probes the API, then either starts or asks for a token. */
async function boot() {
  state.token = takeToken();
  let verdict = await probe(state.token);
  if (verdict === "rejected" && state.token && (await probe(null)) === "ok") {
    // A stale token on a daemon with public subscribers: go without it.
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    verdict = "ok";
  }
  if (verdict === "rejected") {
    $("status").dataset.state = "auth";
    stopAll(state.token ? "token rejected" : "token required");
    return;
  }
  $("auth").hidden = true;
  const allowed = state.token && tokenTopics(state.token);
  if (allowed && sessionStorage.getItem(TOPIC_KEY) === null) $("topic").value = allowed.join(" ");
  pollDevices();
  startStream();
}

/** Once a second: throughput, relative times, counters. */
function tick() {
  const now = Date.now();
  const rate = state.total.tick();
  $("rate").dataset.rate = rate.toFixed(1);
  $("rate").textContent = `${rate.toFixed(1)} readings/s`;
  if (!state.paused) table.tick(now);
}

/** Redraws what changed, at most once per frame. */
function frame() {
  if (state.dirty && !state.paused) {
    state.dirty = false;
    const held = $("held");
    held.dataset.count = String(state.count);
    held.dataset.duplicates = String(state.duplicates);
    held.dataset.lastId = String(state.lastId);
    held.dataset.idSum = String(state.idSum);
    held.textContent = `${state.count} readings` + (state.duplicates ? `, ${state.duplicates} duplicates` : "");
    table.flush(Date.now());
    charts.flush();
    const { total, connected } = table.counts();
    const dc = $("device-count");
    dc.dataset.devices = String(total);
    dc.dataset.connected = String(connected);
    dc.textContent = `${connected}/${total} connected`;
  }
  requestAnimationFrame(frame);
}

function wire() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    boot();
  });
  $("topic-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOPIC_KEY, $("topic").value);
    Object.assign(state, { count: 0, duplicates: 0, lastId: 0, idSum: 0, dirty: true, historyLoaded: false });
    charts.clear();
    showNotice("");
    if ($("auth").hidden) startStream();
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    document.body.classList.toggle("paused", state.paused);
    state.dirty = true;
  });
  $("device-filter").addEventListener("input", (ev) => table.setFilter(ev.target.value));
  $("devices").tHead.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-sort]");
    if (b) table.setSort(b.dataset.sort);
  });
  $("topic").value = sessionStorage.getItem(TOPIC_KEY) ?? "#";
  addEventListener("hashchange", boot);
}

wire();
setInterval(tick, 1000);
requestAnimationFrame(frame);
boot();
