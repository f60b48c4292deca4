// fakes.mjs — a fake clock and a fake WebSocket for the herald.js unit tests (no test here).

export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 1;
  }
  now() { return this.t; }
  setTimeout(fn, ms) {
    const id = this.seq++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(id) { this.timers.delete(id); }
  /** Runs every timer due within `ms`, in time order, moving now() to each one's time. */
  advance(ms) {
    const end = this.t + ms;
    for (let guard = 0; guard < 100000; guard++) {
      let next = null;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }
  /** The machine slept: time moves on, no timer ran; the overdue ones then fire late. */
  sleep(ms) {
    this.t += ms;
    const due = [...this.timers].filter(([, tm]) => tm.at <= this.t).sort((a, b) => a[1].at - b[1].at);
    for (const [id, tm] of due) {
      if (!this.timers.has(id)) continue;
      this.timers.delete(id);
      tm.fn();
    }
  }
  clock() {
    return { now: () => this.now(), setTimeout: (f, ms) => this.setTimeout(f, ms), clearTimeout: (id) => this.clearTimeout(id) };
  }
}

export function fakeSocketClass() {
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      const wasConnecting = this.readyState === 0;
      this.closedWith = { code, reason };
      this.readyState = 3;
      // Like the `ws` package: closing a socket still connecting emits "error" a moment later;
      // with no "error" listener (onerror not a function) Node would crash: recorded here.
      if (wasConnecting) {
        queueMicrotask(() => {
          if (typeof this.onerror === "function") this.onerror({ type: "error" });
          else this.unhandledError = true;
        });
      }
    }
    // --- driven by the tests ---
    open() { this.readyState = 1; this.onopen && this.onopen({}); }
    recv(obj) { this.onmessage && this.onmessage({ data: JSON.stringify(obj) }); }
    welcome(extra = {}) { this.recv({ type: "welcome", node: "n1", connection: "7", ping_interval_ms: 1000, ...extra }); }
    drop(code = 1006, reason = "") { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
    ops(op) { return this.sent.filter((f) => f.op === op); }
  }
  FakeWS.sockets = sockets;
  FakeWS.last = () => sockets[sockets.length - 1];
  return FakeWS;
}

export class FakeTarget {
  constructor() { this.l = new Map(); this.visibilityState = "visible"; }
  addEventListener(n, f) { (this.l.get(n) || this.l.set(n, new Set()).get(n)).add(f); }
  removeEventListener(n, f) { this.l.get(n)?.delete(f); }
  fire(n) { for (const f of [...(this.l.get(n) || [])]) f({}); }
}

export const tick = () => new Promise((r) => setImmediate(r));

/** A JWT-shaped token (unsigned) with the given claims. */
export function fakeJwt(claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b({ alg: "HS256" })}.${b(claims)}.sig`;
}
