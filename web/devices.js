// The devices table: one row per device from /v1/devices, kept live by
// readings from the stream. Rows are created once and patched in place:
// a reading only marks its row dirty, and dirty rows are redrawn at most
// once per flush, so hundreds of devices stay cheap.

const RATE_WINDOW_S = 5;

/** "4 s ago", "3 min ago", ... from a Unix-ms timestamp (or "never"). */
export function ago(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A reading's value for display: numbers trimmed, unit appended. */
export function formatValue(value, unit) {
  let v = value;
  if (typeof v === "number" && !Number.isInteger(v)) v = Number(v.toPrecision(6));
  return unit ? `${v} ${unit}` : String(v);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Sets a text only when it changed: no DOM work for the same words. */
function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

/** A per-second counter over the last RATE_WINDOW_S seconds. */
export class Rate {
  constructor() {
    this.buckets = [0];
  }
  add(n) {
    this.buckets[this.buckets.length - 1] += n;
  }
  /** Closes the current second; returns readings/s over the window. */
  tick() {
    const full = this.buckets.slice(-RATE_WINDOW_S);
    const rate = full.reduce((a, b) => a + b, 0) / Math.max(1, full.length);
    this.buckets = [...full.slice(-(RATE_WINDOW_S - 1)), 0];
    return rate;
  }
}

export class DeviceTable {
  /**
   * @param {HTMLTableSectionElement} tbody
   * @param {(topic: string) => void} onSensor  a sensor chip was clicked
   * @param {(topic: string) => boolean} isCharted
   */
  constructor(tbody, onSensor, isCharted) {
    this.tbody = tbody;
    this.isCharted = isCharted;
    this.rows = new Map(); // device -> row
    this.dirty = new Set();
    this.filter = "";
    this.sort = { key: "device", dir: 1 };
    this.order = [];
    tbody.addEventListener("click", (ev) => {
      const chip = ev.target.closest("button[data-topic]");
      if (chip) onSensor(chip.dataset.topic);
    });
  }

  row(device) {
    let r = this.rows.get(device);
    if (r) return r;
    const tr = el("tr");
    tr.dataset.device = device;
    const cells = {
      name: el("td", "name", device),
      state: el("td", "state"),
      seen: el("td", "seen"),
      rate: el("td", "num"),
      sensors: el("td", "sensors"),
    };
    tr.append(cells.name, cells.state, cells.seen, cells.rate, cells.sensors);
    r = { device, tr, cells, connected: false, lastSeen: null, rate: new Rate(), perSec: 0, chips: new Map() };
    tr.hidden = !this.matches(device);
    this.rows.set(device, r);
    this.tbody.append(tr);
    this.dirty.add(r);
    return r;
  }

  chip(r, sensor) {
    let c = r.chips.get(sensor);
    if (c) return c;
    const topic = `${r.device}/${sensor}`;
    const b = el("button", "chip");
    b.type = "button";
    b.dataset.topic = topic;
    const name = el("span", "sensor", sensor);
    const value = el("span", "value", "");
    b.append(name, value);
    c = { b, value, latest: null, unit: undefined, shown: null };
    r.chips.set(sensor, c);
    r.cells.sensors.append(b);
    return c;
  }

  /** Applies a /v1/devices answer: connection state, last seen, sensors. */
  update(list) {
    const seen = new Set();
    for (const d of list) {
      const r = this.row(d.device);
      seen.add(d.device);
      r.connected = d.connected;
      if (d.last_seen !== null && (r.lastSeen === null || d.last_seen > r.lastSeen)) r.lastSeen = d.last_seen;
      for (const s of d.sensors) this.chip(r, s);
      this.dirty.add(r);
    }
    for (const r of this.rows.values()) {
      if (!seen.has(r.device) && r.connected) {
        r.connected = false;
        this.dirty.add(r);
      }
    }
  }

  /** A reading from the stream or history. */
  reading(item, live) {
    const r = this.row(item.device);
    const c = this.chip(r, item.sensor);
    if (c.latestId === undefined || item.id > c.latestId || item.origin !== undefined) {
      c.latest = item.value;
      c.unit = item.unit;
      c.latestId = item.id;
    }
    if (item.received > (r.lastSeen ?? 0)) r.lastSeen = item.received;
    if (live) {
      r.rate.add(1);
      // A device that publishes is connected, whatever the last poll said.
      r.connected = true;
    }
    this.dirty.add(r);
  }

  setFilter(text) {
    this.filter = text.trim().toLowerCase();
    for (const r of this.rows.values()) r.tr.hidden = !this.matches(r.device);
  }

  matches(device) {
    return this.filter === "" || device.toLowerCase().includes(this.filter);
  }

  setSort(key) {
    this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : key === "device" ? 1 : -1 };
    this.reorder();
  }

  /** Once a second: rates, relative times, order. */
  tick(now) {
    for (const r of this.rows.values()) {
      const perSec = r.rate.tick();
      if (perSec !== r.perSec) {
        r.perSec = perSec;
        this.dirty.add(r);
      }
      setText(r.cells.seen, ago(r.lastSeen, now));
    }
    this.reorder();
  }

  /** Redraws dirty rows; cheap when nothing changed. */
  flush(now) {
    for (const r of this.dirty) this.draw(r, now);
    this.dirty.clear();
  }

  draw(r, now) {
    const { cells } = r;
    r.tr.dataset.connected = String(r.connected);
    cells.state.textContent = r.connected ? "connected" : "offline";
    cells.state.className = r.connected ? "state on" : "state off";
    setText(cells.seen, ago(r.lastSeen, now));
    setText(cells.rate, r.perSec.toFixed(1));
    for (const c of r.chips.values()) {
      if (c.latest !== null && c.shown !== c.latestId) {
        c.value.textContent = formatValue(c.latest, c.unit);
        c.b.dataset.value = String(c.latest);
        c.shown = c.latestId;
      }
      c.b.classList.toggle("on", this.isCharted(c.b.dataset.topic));
    }
  }

  /** Moves rows only when the sorted order changed. */
  reorder() {
    const { key, dir } = this.sort;
    const val = (r) => (key === "device" ? r.device : key === "connected" ? Number(r.connected) : key === "rate" ? r.perSec : r.lastSeen ?? 0);
    const rows = [...this.rows.values()].sort((a, b) => {
      const x = val(a);
      const y = val(b);
      return (x < y ? -1 : x > y ? 1 : a.device < b.device ? -1 : 1) * (x === y ? 1 : dir);
    });
    const order = rows.map((r) => r.device);
    if (order.length === this.order.length && order.every((d, i) => d === this.order[i])) return;
    this.order = order;
    // Move only the rows that are out of place.
    rows.forEach((r, i) => {
      const at = this.tbody.children[i];
      if (at !== r.tr) this.tbody.insertBefore(r.tr, at ?? null);
    });
  }

  /** Total and connected device counts. */
  counts() {
    let connected = 0;
    for (const r of this.rows.values()) if (r.connected) connected += 1;
    return { total: this.rows.size, connected };
  }

  /** Marks every chip's "charted" state again (after a selection change). */
  refreshChips() {
    for (const r of this.rows.values()) this.dirty.add(r);
  }
}
