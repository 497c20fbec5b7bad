// The connection to /v1/stream: auth probe, reconnect with exponential
// backoff and jitter, and resume with `since=<last id>` so that readings
// stored during an outage arrive exactly once (SPEC §4).
//
// A WebSocket upgrade refused with 401/403 shows in a browser only as a
// failed connection (close code 1006). To tell a rejected token from a
// server that is down, every failure is followed by a probe of
// /v1/devices with the same token: 401/403 means "token rejected" and the
// stream stops for good (no reconnect loop); anything else is retried.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;

/** The same-origin URL of a route, as ws: or wss: to match the page. */
function wsUrl(path, params) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}?${params}`;
}

/**
 * Probes the subscriber API with `token` (sent as a header, never in a
 * URL). Resolves to "ok", "rejected" (401/403) or "down".
 */
export async function probe(token) {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch("/v1/devices", { headers, cache: "no-store" });
    if (r.status === 401 || r.status === 403) return "rejected";
    return r.ok ? "ok" : "down";
  } catch {
    return "down";
  }
}

export class Stream {
  /**
   * @param {object} o
   * @param {string[]} o.topics   filters to subscribe to
   * @param {string|null} o.token subscriber JWT, null when public
   * @param {(msg: object) => void} o.onMessage  every server message
   * @param {(state: string, detail: string) => void} o.onStatus
   */
  constructor({ topics, token, onMessage, onStatus }) {
    this.topics = topics;
    this.token = token;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.lastId = null; // newest id delivered (or live start), for `since`
    this.resumedFrom = null; // the `since` of the current connection
    this.liveFrom = null; // its `subscribed.last_id`: replay covers (resumedFrom, liveFrom]
    this.attempt = 0;
    this.connects = 0;
    this.ws = null;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Closes the socket and cancels any pending reconnect. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
  }

  connect() {
    const q = new URLSearchParams();
    // Browsers cannot set headers on a WebSocket: the query parameter is
    // the documented way (docs/streaming.md), and sensorgate logs no URLs.
    if (this.token) q.set("access_token", this.token);
    for (const t of this.topics) q.append("topic", t);
    if (this.lastId !== null) q.set("since", String(this.lastId));
    this.resumedFrom = this.lastId;
    this.connects += 1;
    this.onStatus("connecting", this.lastId === null ? "connecting…" : `resuming after #${this.lastId}…`);
    const ws = new WebSocket(wsUrl("/v1/stream", q), ["sensorgate.json"]);
    this.ws = ws;
    this.subscribed = false;
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => this.closed(ev);
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "subscribed") {
      // Without `since`, live delivery starts after `last_id`.
      if (this.lastId === null) this.lastId = msg.last_id;
      this.liveFrom = msg.last_id;
      this.attempt = 0;
      this.subscribed = true;
      this.onStatus("connected", "connected");
    } else if (msg.type === "readings") {
      for (const r of msg.items) {
        // Relayed readings carry another instance's ids: not ours to resume from.
        if (r.origin === undefined && r.id > this.lastId) this.lastId = r.id;
      }
    }
    this.onMessage(msg);
  }

  async closed(ev) {
    this.ws = null;
    if (this.stopped) return;
    this.onStatus("reconnecting", `connection lost (${ev.code}); checking…`);
    const verdict = await probe(this.token);
    if (this.stopped) return;
    if (verdict === "rejected") {
      this.stopped = true;
      this.onStatus("auth", "token rejected");
      return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = base * (0.5 + Math.random() / 2);
    // The API answers but the upgrade failed: most likely this page's
    // origin is not in server.allowed_origins (HTTP 403 before the upgrade).
    this.hint = verdict === "ok" && !this.subscribed ? " (stream refused: is this origin in server.allowed_origins?)" : "";
    this.countdown(Date.now() + delay);
  }

  /** Shows "reconnecting in N s" each second until the next attempt. */
  countdown(at) {
    const left = at - Date.now();
    if (left <= 0) {
      this.connect();
      return;
    }
    this.onStatus("reconnecting", `reconnecting in ${Math.ceil(left / 1000)} s${this.hint}`);
    this.timer = setTimeout(() => this.countdown(at), Math.min(1000, left));
  }
}
