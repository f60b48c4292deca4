// herald.js — the Herald client for browsers and Node 18+ (JSON protocol v1 on /ws).
//
// A dependency-free ES module, served by every node at /client/herald.js. It keeps one
// WebSocket to a node and hides its failures: reconnect with exponential backoff and full
// jitter, resubscribe every topic with `since` (history recovery, duplicate offsets
// dropped), liveness from the node's JSON pings (with a probe after the page slept),
// auth and token refresh, and a bounded offline queue for publishes.
// Documentation: docs/client-js.md. Types: herald.d.ts.

/**
 * An error from the node (its `code`) or from the client (disconnected, queue_full, timeout,
 * closed, connection_lost, invalid_data, token_timeout, invalid_option, ...).
 */
export class HeraldError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

const OPEN = 1;
const DEFAULT_RECONNECT = { initialDelayMs: 500, maxDelayMs: 20000, factor: 2, resetAfterMs: 5000 };
const DEFAULT_LIVENESS = { slackMs: 1000, probeTimeoutMs: 3000, lateTimerMs: 2000 };
const MAX_TIMER_MS = 2147483647;
/** Fallback token refresh: never sooner than this after arming, doubling on each clamped arm. */
const REFRESH_FLOOR_MS = 5000;
const REFRESH_FLOOR_MAX_MS = 300000;
const noop = () => {};

/** A finite number >= min (or > min with `above`), `def` when undefined; anything else throws invalid_option. */
function numberOption(value, name, def, { min = 0, above = false } = {}) {
  if (value === undefined) return def;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || (above && value === min)) {
    throw new HeraldError("invalid_option", `option ${name} must be a finite number ${above ? ">" : ">="} ${min} (got ${String(value)})`);
  }
  return value;
}

function groupOption(value, name, defaults, rules = {}) {
  if (value !== undefined && (value === null || typeof value !== "object")) {
    throw new HeraldError("invalid_option", `option ${name} must be an object`);
  }
  const out = {};
  for (const key of Object.keys(defaults)) {
    out[key] = numberOption(value ? value[key] : undefined, `${name}.${key}`, defaults[key], rules[key]);
  }
  return out;
}

/** Turns the node's base URL into the /ws URL the client connects to. */
export function buildUrl(url) {
  let text = String(url);
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    const loc = globalThis.location;
    if (text.startsWith("/") && loc && loc.host) text = `${loc.protocol}//${loc.host}${text}`;
    else text = `ws://${text}`;
  }
  const u = new URL(text);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new HeraldError("invalid_url", `unsupported URL scheme ${u.protocol}`);
  }
  if (u.pathname === "" || u.pathname === "/") u.pathname = "/ws";
  u.searchParams.set("heartbeat", "json");
  return u.toString();
}

/** Reads a JWT's `exp` (seconds) without verifying it; undefined when unreadable. */
export function jwtExpiry(token) {
  const claims = jwtClaims(token);
  return claims && typeof claims.exp === "number" ? claims.exp : undefined;
}

/** A JWT's payload (unverified), or undefined. */
function jwtClaims(token) {
  try {
    const part = String(token).split(".")[1];
    if (!part) return undefined;
    let b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bin = globalThis.atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : undefined;
  } catch {
    return undefined;
  }
}

function defaultClock() {
  return {
    now: () => Date.now(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (t) => globalThis.clearTimeout(t),
  };
}

export class Herald {
  constructor(url, options = {}) {
    this.url = buildUrl(url);
    const o = options;
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new HeraldError("no_websocket", "no WebSocket: pass options.WebSocket (Node: the `ws` package)");
    }
    this._token = o.token;
    this._getToken = typeof o.getToken === "function" ? o.getToken : null;
    // Options: undefined means the default; any other value that is not a finite number in
    // range throws HeraldError "invalid_option" (Infinity or NaN would break the timers).
    this._reconnect = o.reconnect === false ? null : groupOption(o.reconnect, "reconnect", DEFAULT_RECONNECT, { factor: { min: 1 } });
    this._offlineMax = Math.floor(numberOption(o.offlineQueue, "offlineQueue", 100));
    this._rate = numberOption(o.publishRatePerSecond, "publishRatePerSecond", 50, { above: true });
    // 15 s: above the node's own 10 s wait for the relay's verdict, so the node's definite
    // answer (ack or relay_unavailable) arrives before the client gives up with "timeout".
    this._ackTimeoutMs = numberOption(o.ackTimeoutMs, "ackTimeoutMs", 15000, { above: true });
    this._refreshAheadMs = numberOption(o.refreshBeforeExpiryMs, "refreshBeforeExpiryMs", 10000);
    this._tokenTimeoutMs = numberOption(o.tokenTimeoutMs, "tokenTimeoutMs", 10000, { above: true });
    this._connectTimeoutMs = numberOption(o.connectTimeoutMs, "connectTimeoutMs", 15000, { above: true });
    this._liveness = groupOption(o.liveness, "liveness", DEFAULT_LIVENESS);
    this._clock = o._clock || defaultClock();
    this._random = o._random || Math.random;
    this._window = o._window !== undefined ? o._window : globalThis.window || null;
    this._document = o._document !== undefined ? o._document : globalThis.document || null;

    this._listeners = new Map();
    this._topics = new Map(); // topic -> TopicState
    this._pending = new Map(); // id -> { kind, ... }
    this._queue = []; // publish items not sent yet: { text(id), resolve, reject, timer, paced }
    this._bucket = { tokens: 0, at: 0 }; // pacing of the backlog found at the welcome
    this._nextId = 1;
    this._ws = null;
    this._state = "connecting";
    this._attempt = 0;
    this._welcomed = false;
    this._openedAt = 0;
    this._lastRecv = 0;
    this._pingMs = 0;
    this._timers = {};
    this._authFailed = false;
    this._refreshing = false;
    this._refreshSeq = 0;
    this._refreshStreak = 0;
    this._tokenFetchedAt = 0;
    this._connecting = false;
    this._offline = false;
    this._installBrowserHooks();
    this._connect();
  }

  /** "connecting" | "connected" | "reconnecting" | "closed" */
  get state() {
    return this._state;
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  subscribe(topic, onMessage, options = {}) {
    if (typeof onMessage !== "function") throw new TypeError("subscribe(topic, onMessage): onMessage must be a function");
    const sub = { topic, handler: onMessage, active: true };
    sub.ready = new Promise((resolve, reject) => {
      sub._resolve = resolve;
      sub._reject = reject;
    });
    sub.ready.catch(() => {}); // a rejected ready nobody awaits must not crash Node
    sub.unsubscribe = () => this._unsubscribe(sub);
    if (this._state === "closed") {
      sub.active = false;
      sub._reject(new HeraldError("closed", "the client is closed"));
      return publicSub(sub);
    }
    let ts = this._topics.get(topic);
    if (!ts) {
      // last: the last message delivered to the handlers (or options.since); ackPos: the head
      // the ack of a subscribe *without* since gave. `since` on resubscribe = last || ackPos.
      // relayError: the relay_unavailable of the last ack, given to handles added meanwhile.
      ts = { topic, subs: new Set(), status: "idle", last: null, ackPos: null, reqId: null, suppressLost: false, relayError: null };
      // options.since counts only for a topic not held yet (a held topic keeps its position).
      if (options.since && options.since.epoch !== undefined) {
        ts.last = { offset: options.since.offset, epoch: options.since.epoch };
      }
      this._topics.set(topic, ts);
      ts.subs.add(sub);
      if (this._isOpen()) this._sendSubscribe(ts);
    } else {
      ts.subs.add(sub);
      if (ts.status === "active") settle(sub, ts.relayError);
    }
    return publicSub(sub);
  }

  publish(topic, data) {
    return new Promise((resolve, reject) => {
      if (this._state === "closed") return reject(new HeraldError("closed", "the client is closed"));
      // Encoded now, so data JSON cannot encode (BigInt, a cycle) rejects here and never
      // breaks a later flush; later changes to `data` do not alter what is sent.
      let dataJson;
      try {
        dataJson = JSON.stringify(data);
      } catch (e) {
        return reject(new HeraldError("invalid_data", `publish data cannot be encoded as JSON: ${e && e.message ? e.message : e}`));
      }
      if (dataJson === undefined) dataJson = "null"; // undefined, a function, a symbol
      const head = JSON.stringify({ op: "publish", topic }).slice(0, -1);
      const item = { text: (id) => `${head},"data":${dataJson},"id":${JSON.stringify(id)}}`, resolve, reject, timer: null, id: null, paced: false };
      const connected = this._state === "connected" && this._isOpen();
      if (connected && this._queue.length === 0) {
        this._armPublishTimeout(item);
        this._sendPublish(item);
        return;
      }
      if (this._queue.length >= this._offlineMax) {
        if (connected) {
          return reject(new HeraldError("queue_full", "the queue of publishes waiting behind the reconnect backlog is full"));
        }
        return reject(new HeraldError("disconnected", this._offlineMax === 0
          ? "not connected (offline queue disabled)" : "not connected and the offline queue is full"));
      }
      this._armPublishTimeout(item);
      this._queue.push(item); // connected: behind the backlog being flushed, keeping the order
    });
  }

  close() {
    if (this._state === "closed") return;
    this._state = "closed";
    this._clearAllTimers();
    this._removeBrowserHooks();
    const err = () => new HeraldError("closed", "the client was closed");
    this._failPending(err);
    for (const item of this._queue.splice(0)) {
      if (item.timer) this._clock.clearTimeout(item.timer);
      item.reject(err());
    }
    for (const ts of this._topics.values()) for (const sub of ts.subs) settle(sub, err());
    this._topics.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws); // no-op handlers: `ws` emits "error" when closing a CONNECTING socket
      try { ws.close(1000); } catch { /* already closing */ }
      this._emit("disconnected", { code: 1000, reason: "closed by the client" });
    }
  }

  // ---- connection --------------------------------------------------------------------

  async _connect() {
    this._clearTimer("reconnect");
    // While offline this still runs: the slow offline retry (a spurious `offline` must not
    // leave the client dead) comes through here.
    if (this._state === "closed" || this._connecting || this._ws) return;
    let token = this._token;
    if (this._getToken) {
      this._connecting = true;
      try {
        token = await this._fetchToken();
      } catch (e) {
        this._connecting = false;
        if (this._state === "closed" || this._ws) return;
        this._emit("error", e instanceof Error ? e : new Error(String(e)));
        this._scheduleReconnect();
        return;
      }
      this._connecting = false;
      if (this._state === "closed" || this._ws) return;
      this._tokenFetchedAt = this._clock.now();
    }
    this._currentToken = token || null;
    this._welcomed = false;
    this._authFailed = false;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (e) {
      this._emit("error", e instanceof Error ? e : new Error(String(e)));
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    // Nothing throws out of the socket's event handlers: a surprise becomes an `error` event.
    ws.onopen = () => this._guard(() => this._onOpen(ws));
    ws.onmessage = (ev) => this._guard(() => this._onFrame(ws, ev.data));
    ws.onclose = (ev) => this._guard(() => this._onClose(ws, ev && ev.code, ev && ev.reason));
    ws.onerror = () => { /* a close event follows */ };
    // A socket stuck connecting (black-holed SYN) or open without a welcome is replaced.
    this._setTimer("connect", this._connectTimeoutMs, () => {
      if (this._ws === ws && !this._welcomed) this._replaceConnection(`no welcome within ${this._connectTimeoutMs} ms`);
    });
  }

  /** getToken() raced against tokenTimeoutMs; a late answer is ignored. */
  _fetchToken() {
    return new Promise((resolve, reject) => {
      let done = false;
      const timer = this._clock.setTimeout(() => {
        if (done) return;
        done = true;
        reject(new HeraldError("token_timeout", `getToken() did not settle within ${this._tokenTimeoutMs} ms`));
      }, this._tokenTimeoutMs);
      const finish = (fn, value) => {
        if (done) return;
        done = true;
        this._clock.clearTimeout(timer);
        fn(value);
      };
      let result;
      try {
        result = this._getToken();
      } catch (e) {
        return finish(reject, e);
      }
      Promise.resolve(result).then((t) => finish(resolve, t), (e) => finish(reject, e));
    });
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._openedAt = this._clock.now();
    this._lastRecv = this._openedAt;
    if (this._currentToken) {
      const id = this._id();
      this._pending.set(id, { kind: "auth" });
      this._send({ op: "auth", token: this._currentToken, id });
    }
    for (const ts of this._topics.values()) this._sendSubscribe(ts);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    detach(ws);
    this._ws = null;
    const now = this._clock.now();
    const stayedUp = this._welcomed && this._openedAt && now - this._openedAt >= (this._reconnect ? this._reconnect.resetAfterMs : 0);
    const authRefused = this._authFailed || (code === 1008 && /^unauthorized/.test(reason || ""));
    this._welcomed = false;
    this._refreshing = false;
    this._refreshSeq += 1; // a refresh still waiting for getToken() is for a gone socket
    for (const k of ["liveness", "probe", "flush", "refresh", "connect"]) this._clearTimer(k);
    this._failPending(() => new HeraldError("connection_lost", "the connection dropped before the answer (the request may or may not have taken effect)"),
      (p) => p.kind === "publish");
    // Other requests (refresh) may carry a timer too.
    for (const p of this._pending.values()) if (p.timer) this._clock.clearTimeout(p.timer);
    // Subscribes and other requests in flight are simply resent after the reconnect.
    this._pending.clear();
    for (const ts of this._topics.values()) if (ts.status !== "idle") ts.status = "idle";
    if (this._state === "closed") return;
    this._emit("disconnected", { code: code === undefined ? 1006 : code, reason: reason || "" });
    if (authRefused && !this._getToken) {
      this._emit("error", new HeraldError("unauthorized", `authentication refused (${reason || "unauthorized"}); not reconnecting with the same token`));
      this.close();
      return;
    }
    if (stayedUp && !authRefused) this._attempt = 0;
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this._state === "closed") return;
    if (!this._reconnect) {
      this.close();
      return;
    }
    this._state = "reconnecting";
    const r = this._reconnect;
    let delayMs;
    if (this._offline) {
      // The browser says offline: retry slowly, in [maxDelayMs/2, maxDelayMs), in case the
      // event was spurious; `online` brings the retry forward.
      delayMs = Math.floor(r.maxDelayMs / 2 + this._random() * (r.maxDelayMs / 2));
    } else {
      const ceiling = Math.min(r.maxDelayMs, r.initialDelayMs * Math.pow(r.factor, this._attempt));
      delayMs = Math.floor(this._random() * ceiling);
    }
    this._attempt += 1;
    this._emit("reconnecting", { attempt: this._attempt, delayMs });
    this._setTimer("reconnect", delayMs, () => this._connect());
  }

  /** Drops the current socket (dead or asleep) and goes through the reconnect path. */
  _replaceConnection(reason) {
    const ws = this._ws;
    if (!ws) return;
    try { ws.close(4000, reason); } catch { /* ignore */ }
    this._onClose(ws, 4000, reason);
  }

  // ---- frames ------------------------------------------------------------------------

  _onFrame(ws, raw) {
    if (ws !== this._ws) return;
    this._lastRecv = this._clock.now();
    if (this._timers.probe) {
      this._clearTimer("probe");
      this._armLiveness();
    }
    let f;
    try {
      f = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      this._emit("error", new HeraldError("invalid_frame", "the node sent a frame that is not JSON"));
      return;
    }
    if (!f || typeof f !== "object") return;
    switch (f.type) {
      case "welcome": return this._onWelcome(f);
      case "ping": this._send({ op: "pong" }); return;
      case "pong": {
        const p = f.id !== undefined ? this._pending.get(f.id) : undefined;
        if (p && p.kind === "ping") this._pending.delete(f.id);
        return;
      }
      case "message": return this._onMessage(f);
      case "ack": return this._onAck(f);
      case "error": return this._onError(f);
      default: return;
    }
  }

  _onWelcome(f) {
    if (this._welcomed) return;
    this._welcomed = true;
    this._clearTimer("connect");
    this._state = "connected";
    this._pingMs = f.ping_interval_ms > 0 ? f.ping_interval_ms : 0;
    this._armLiveness();
    this._armRefresh();
    this._emit("connected", { node: f.node, connection: f.connection });
    // The backlog found now is paced; publishes made while it drains go behind it unpaced.
    for (const item of this._queue) item.paced = true;
    this._bucket = { tokens: 1, at: this._clock.now() };
    this._flushQueue();
  }

  _onMessage(f) {
    const ts = this._topics.get(f.topic);
    if (!ts) return;
    // Recovering (see _onSubscribeError): the retried replay brings these again, in order.
    if (ts.recovering && f.offset !== undefined) return;
    const meta = { topic: f.topic };
    if (f.offset !== undefined) {
      meta.offset = f.offset;
      meta.epoch = f.epoch;
      if (ts.last && ts.last.epoch === f.epoch && f.offset <= ts.last.offset) return; // duplicate
      ts.last = { offset: f.offset, epoch: f.epoch };
    }
    if (f.encoding) meta.encoding = f.encoding;
    for (const sub of [...ts.subs]) {
      if (!sub.active) continue; // unsubscribed by an earlier handler of this message
      try {
        sub.handler(f.data, meta);
      } catch (e) {
        this._emit("error", e instanceof Error ? e : new Error(String(e)));
      }
    }
  }

  _onAck(f) {
    const p = this._pending.get(f.id);
    if (!p) return;
    this._pending.delete(f.id);
    if (p.timer) this._clock.clearTimeout(p.timer);
    if (p.kind === "publish") {
      p.resolve({ offset: f.offset, epoch: f.epoch });
    } else if (p.kind === "subscribe") {
      const ts = this._topics.get(p.topic);
      if (!ts || ts.reqId !== f.id) return;
      ts.status = "active";
      ts.reqId = null;
      ts.relayError = null;
      ts.recovering = false;
      ts.recoveryAttempt = 0;
      const pos = f.positions && f.positions[p.topic];
      const notRecovered = !!(f.recovered && f.recovered[p.topic] === false);
      // The saved position only ever moves to a message delivered to the handlers, or to the
      // head at a subscribe without since. The ack of a resubscribe with since gives the head
      // *before* the replay: taking it would skip the replay if the socket drops first.
      if (pos && pos.epoch !== undefined) {
        if (!p.since) {
          ts.ackPos = { offset: pos.offset, epoch: pos.epoch };
        } else if (notRecovered && pos.offset === 0 && !(ts.last && ts.last.epoch === pos.epoch)) {
          // Another epoch whose stream is empty: nothing to replay, so nothing to wait for;
          // resuming from the old epoch would only report the same loss on every reconnect.
          ts.last = null;
          ts.ackPos = { offset: 0, epoch: pos.epoch };
        }
      }
      if (notRecovered) {
        if (ts.suppressLost) ts.suppressLost = false;
        else this._emit("lost", { topic: p.topic, reason: "not_recovered" });
      } else {
        ts.suppressLost = false;
      }
      for (const sub of ts.subs) settle(sub, null);
    } else if (p.kind === "refresh") {
      if (p.seq !== this._refreshSeq) return;
      this._refreshing = false;
      this._armRefresh();
    }
  }

  _onError(f) {
    const err = new HeraldError(f.code, f.message, f.topic !== undefined ? { topic: f.topic } : undefined);
    const p = f.id !== undefined ? this._pending.get(f.id) : undefined;
    if (p) {
      this._pending.delete(f.id);
      if (p.timer) this._clock.clearTimeout(p.timer);
      if (p.kind === "publish") return p.reject(err);
      if (p.kind === "subscribe") return this._onSubscribeError(p.topic, f.id, err, p.since);
      if (p.kind === "auth" || p.kind === "refresh") {
        if (p.kind === "refresh" && p.seq === this._refreshSeq) this._refreshing = false;
        if (f.code === "unauthorized" || f.code === "token_expired") this._authFailed = true;
        this._emit("error", err);
        return;
      }
      return; // ping probe: any frame already counted as liveness
    }
    switch (f.code) {
      case "token_expired":
        this._refresh();
        return;
      case "recovery_overflow":
      case "recovery_lost": {
        const ts = this._topics.get(f.topic);
        if (!ts) return this._emit("error", err);
        if (f.code === "recovery_lost") {
          ts.suppressLost = true; // the resubscribe answers recovered:false; one "lost" is enough
          this._emit("lost", { topic: f.topic, reason: "recovery_lost" });
        }
        if (this._isOpen()) this._sendSubscribe(ts);
        return;
      }
      case "forbidden": {
        const topic = f.topic; // a subscription a refresh dropped; without it, a refused publish
        const ts = topic !== undefined ? this._topics.get(topic) : undefined;
        if (ts) {
          err.topic = topic;
          this._endTopic(ts, err);
        }
        this._emit("error", err);
        return;
      }
      default:
        this._emit("error", err);
    }
  }

  _onSubscribeError(topic, id, err, withSince) {
    const ts = this._topics.get(topic);
    if (!ts || ts.reqId !== id) return;
    ts.reqId = null;
    err.topic = topic;
    if (err.code === "relay_unavailable" && withSince) {
      // A resubscribe with since whose replay could not be read (the node's relay is down,
      // or still connecting after the node started): nothing was recovered. Ask again after
      // a jittered, growing delay; meanwhile this topic's live messages are dropped (the
      // replay sends them again, in order), so the saved position never jumps the gap.
      ts.status = "active";
      ts.recovering = true;
      ts.relayError = err;
      for (const sub of ts.subs) settle(sub, err);
      this._retryRecovery(ts);
      this._emit("error", err);
      return;
    }
    if (err.code === "relay_unavailable") {
      // The subscription holds on this node; other nodes' messages follow when the relay is back.
      // Handles added before the next clean ack get the same answer.
      ts.status = "active";
      ts.relayError = err;
      for (const sub of ts.subs) settle(sub, err);
    } else {
      this._endTopic(ts, err);
    }
    this._emit("error", err);
  }

  /** Sends a recovering topic's subscribe with since again, after a delay in [d/2, d) where
   * d doubles from initialDelayMs up to maxDelayMs with each failed attempt on this connection. */
  _retryRecovery(ts) {
    const r = this._reconnect || DEFAULT_RECONNECT;
    ts.recoveryAttempt = (ts.recoveryAttempt || 0) + 1;
    const ceiling = Math.min(r.maxDelayMs, r.initialDelayMs * Math.pow(r.factor, ts.recoveryAttempt - 1));
    const delayMs = Math.floor(ceiling / 2 + this._random() * (ceiling / 2));
    const ws = this._ws;
    this._clock.setTimeout(() => {
      if (ws !== this._ws || !this._isOpen() || this._topics.get(ts.topic) !== ts || !ts.recovering || ts.reqId !== null) return;
      this._sendSubscribe(ts);
    }, delayMs);
  }

  /** A subscription the node refused or dropped: every handle on it ends. */
  _endTopic(ts, err) {
    this._topics.delete(ts.topic);
    for (const sub of ts.subs) {
      sub.active = false;
      settle(sub, err);
    }
  }

  _unsubscribe(sub) {
    if (!sub.active) return;
    sub.active = false;
    settle(sub, new HeraldError("unsubscribed", "unsubscribed before the subscription was ready"));
    const ts = this._topics.get(sub.topic);
    if (!ts || !ts.subs.has(sub)) return;
    ts.subs.delete(sub);
    if (ts.subs.size > 0) return;
    this._topics.delete(sub.topic);
    if (this._isOpen()) this._send({ op: "unsubscribe", topics: [sub.topic] });
  }

  // ---- requests ----------------------------------------------------------------------

  _sendSubscribe(ts) {
    const id = this._id();
    const frame = { op: "subscribe", topics: [ts.topic], id };
    const since = ts.last || ts.ackPos;
    if (since && since.epoch !== undefined) {
      frame.since = { [ts.topic]: { offset: since.offset, epoch: since.epoch } };
    }
    ts.status = "subscribing";
    ts.reqId = id;
    this._pending.set(id, { kind: "subscribe", topic: ts.topic, since: !!frame.since });
    this._send(frame);
  }

  /** ackTimeoutMs counts from publish(), queued or not; a queued publish that times out is never sent. */
  _armPublishTimeout(item) {
    item.timer = this._clock.setTimeout(() => {
      item.timer = null;
      if (item.id === null) {
        const i = this._queue.indexOf(item);
        if (i < 0) return;
        this._queue.splice(i, 1);
        item.reject(new HeraldError("timeout", `not sent within ${this._ackTimeoutMs} ms of publish() (not connected, or still queued): it was not published`, { sent: false }));
        return;
      }
      const p = this._pending.get(item.id);
      if (!p || p.item !== item) return;
      this._pending.delete(item.id);
      item.reject(new HeraldError("timeout", `no answer to the publish within ${this._ackTimeoutMs} ms`, { sent: true }));
    }, this._ackTimeoutMs);
  }

  _sendPublish(item) {
    const id = this._id();
    item.id = id;
    const p = { kind: "publish", resolve: item.resolve, reject: item.reject, timer: item.timer, item };
    this._pending.set(id, p);
    this._sendText(item.text(id));
  }

  /**
   * Sends the queued publishes: the backlog found at the welcome (`paced`) from a token bucket
   * on clock.now() (publishRatePerSecond, at most one second's worth at once), so a throttled
   * background-tab timer still sends its share; then whatever was published meanwhile, at once.
   */
  _flushQueue() {
    this._clearTimer("flush");
    if (this._state !== "connected" || !this._isOpen()) return;
    const b = this._bucket;
    const now = this._clock.now();
    const burst = Math.max(1, this._rate);
    b.tokens = Math.min(burst, b.tokens + (Math.max(0, now - b.at) * this._rate) / 1000);
    b.at = now;
    while (this._queue.length > 0 && this._queue[0].paced) {
      if (b.tokens + 1e-9 < 1) break;
      b.tokens -= 1;
      this._sendPublish(this._queue.shift());
      if (!this._isOpen()) return;
    }
    if (this._queue.length > 0 && this._queue[0].paced) {
      const waitMs = Math.max(1, Math.ceil(((1 - b.tokens) * 1000) / this._rate));
      this._setTimer("flush", waitMs, () => this._flushQueue());
      return;
    }
    while (this._queue.length > 0 && this._isOpen()) this._sendPublish(this._queue.shift());
  }

  async _refresh() {
    if (this._refreshing || !this._isOpen()) return;
    if (!this._getToken) {
      this._emit("error", new HeraldError("token_expired", "the token expires soon and there is no getToken() to renew it"));
      return;
    }
    this._refreshing = true;
    const seq = ++this._refreshSeq;
    const ws = this._ws;
    let token;
    try {
      token = await this._fetchToken();
    } catch (e) {
      if (seq !== this._refreshSeq) return; // the socket went meanwhile; _onClose reset the state
      this._refreshing = false;
      this._emit("error", e instanceof Error ? e : new Error(String(e)));
      this._armRefresh(); // try again later (the floor backs off)
      return;
    }
    if (seq !== this._refreshSeq || ws !== this._ws || !this._isOpen()) return; // for a gone socket
    if (!token) {
      this._refreshing = false;
      return;
    }
    this._currentToken = token;
    this._tokenFetchedAt = this._clock.now();
    const id = this._id();
    const p = { kind: "refresh", seq };
    // Time-limited: without an answer the next notice or fallback can refresh again.
    p.timer = this._clock.setTimeout(() => {
      if (this._pending.get(id) !== p) return;
      this._pending.delete(id);
      if (seq === this._refreshSeq) this._refreshing = false;
      this._armRefresh();
    }, this._ackTimeoutMs);
    this._pending.set(id, p);
    this._send({ op: "refresh", token, id });
  }

  /**
   * Fallback to the node's token_expired notice: refresh refreshBeforeExpiryMs before the
   * token expires. With `iat`, the lifetime (exp - iat) is counted from when the token was
   * fetched, so a client clock off from the issuer's does not matter; without it, from `exp`
   * on the local clock. Never sooner than 5 s, doubling (up to 5 min) while it keeps being
   * that soon, so a skewed clock cannot make a refresh loop.
   */
  _armRefresh() {
    this._clearTimer("refresh");
    if (!this._getToken || !this._currentToken) return;
    const claims = jwtClaims(this._currentToken);
    if (!claims || typeof claims.exp !== "number") return;
    const now = this._clock.now();
    const due = typeof claims.iat === "number" && claims.exp > claims.iat
      ? this._tokenFetchedAt + (claims.exp - claims.iat) * 1000 - this._refreshAheadMs
      : claims.exp * 1000 - this._refreshAheadMs;
    let delay = due - now;
    if (delay >= REFRESH_FLOOR_MS) {
      this._refreshStreak = 0;
    } else {
      delay = Math.min(REFRESH_FLOOR_MAX_MS, REFRESH_FLOOR_MS * Math.pow(2, this._refreshStreak));
      this._refreshStreak += 1;
    }
    this._setTimer("refresh", Math.min(delay, MAX_TIMER_MS), () => this._refresh());
  }

  // ---- liveness ----------------------------------------------------------------------

  _deadAfterMs() {
    return 2 * this._pingMs + this._liveness.slackMs;
  }

  _armLiveness() {
    this._clearTimer("liveness");
    if (!this._pingMs || !this._isOpen()) return;
    const due = this._lastRecv + this._deadAfterMs();
    const delay = Math.max(10, due - this._clock.now());
    const scheduledFor = this._clock.now() + delay;
    this._setTimer("liveness", delay, () => this._checkLiveness(scheduledFor));
  }

  _checkLiveness(scheduledFor) {
    if (!this._isOpen()) return;
    const now = this._clock.now();
    const silentMs = now - this._lastRecv;
    if (silentMs < this._deadAfterMs()) return this._armLiveness();
    if (now - scheduledFor > this._liveness.lateTimerMs) return this._probe(); // woke from sleep
    this._replaceConnection("no ping from the node");
  }

  /** Asks the node for a frame; replaces the connection if none arrives within probeTimeoutMs. */
  _probe() {
    if (!this._isOpen() || this._timers.probe) return;
    const id = this._id();
    this._pending.set(id, { kind: "ping" });
    this._send({ op: "ping", id });
    this._setTimer("probe", this._liveness.probeTimeoutMs, () => {
      this._pending.delete(id);
      this._replaceConnection("no answer to the liveness probe");
    });
    this._clearTimer("liveness"); // the probe decides now; a frame re-arms the check
  }

  _installBrowserHooks() {
    const w = this._window;
    const d = this._document;
    this._hooks = [];
    if (w && typeof w.addEventListener === "function") {
      const offline = () => {
        if (this._state === "closed") return;
        this._offline = true;
        this._clearTimer("reconnect");
        if (this._ws) this._replaceConnection("browser offline"); // schedules the slow retry
        else if (!this._connecting) this._scheduleReconnect();
      };
      const online = () => {
        if (!this._offline) return;
        this._offline = false;
        if (this._state === "closed" || !this._reconnect || this._ws || this._connecting) return;
        // Back online: soon, but jittered, since a whole office comes back at once.
        const delayMs = Math.floor(this._random() * this._reconnect.initialDelayMs);
        this._emit("reconnecting", { attempt: this._attempt, delayMs });
        this._setTimer("reconnect", delayMs, () => this._connect());
      };
      w.addEventListener("offline", offline);
      w.addEventListener("online", online);
      this._hooks.push([w, "offline", offline], [w, "online", online]);
    }
    if (d && typeof d.addEventListener === "function") {
      const visible = () => {
        if (d.visibilityState !== "visible" || !this._isOpen() || !this._welcomed) return;
        const silence = this._clock.now() - this._lastRecv;
        if (silence > (this._pingMs || this._liveness.probeTimeoutMs)) this._probe();
      };
      d.addEventListener("visibilitychange", visible);
      this._hooks.push([d, "visibilitychange", visible]);
    }
  }

  _removeBrowserHooks() {
    for (const [target, name, fn] of this._hooks || []) target.removeEventListener(name, fn);
    this._hooks = [];
  }

  // ---- helpers -----------------------------------------------------------------------

  _isOpen() {
    return !!this._ws && this._ws.readyState === OPEN;
  }

  _send(frame) {
    this._sendText(JSON.stringify(frame));
  }

  /** Never throws (it runs inside the socket's event handlers). */
  _sendText(text) {
    if (!this._isOpen()) return;
    try {
      this._ws.send(text);
    } catch (e) {
      this._emit("error", e instanceof Error ? e : new Error(String(e)));
    }
  }

  _guard(fn) {
    try {
      fn();
    } catch (e) {
      this._emit("error", e instanceof Error ? e : new Error(String(e)));
    }
  }

  _id() {
    return this._nextId++;
  }

  _failPending(makeErr, filter) {
    for (const [id, p] of [...this._pending]) {
      if (filter && !filter(p)) continue;
      this._pending.delete(id);
      if (p.timer) this._clock.clearTimeout(p.timer);
      if (p.item) p.item.timer = null;
      if (p.reject) p.reject(makeErr());
    }
  }

  _setTimer(name, ms, fn) {
    this._clearTimer(name);
    this._timers[name] = this._clock.setTimeout(() => {
      this._timers[name] = null;
      fn();
    }, ms);
  }

  _clearTimer(name) {
    if (this._timers[name]) {
      this._clock.clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (e) {
        if (event !== "error") this._emit("error", e instanceof Error ? e : new Error(String(e)));
      }
    }
  }
}

function settle(sub, err) {
  if (sub._settled) return;
  sub._settled = true;
  if (err) sub._reject(err);
  else sub._resolve();
}

function publicSub(sub) {
  return { topic: sub.topic, ready: sub.ready, unsubscribe: sub.unsubscribe };
}

/**
 * Silences a socket we are done with. No-op handlers, not null: with the `ws` package,
 * `onerror = null` removes the only "error" listener, and closing a socket that is still
 * connecting then emits an unhandled "error", which ends the Node process.
 */
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = noop;
}

