// herald.test.mjs — unit tests of clients/js/herald.js with a fake clock and a fake WebSocket.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald, HeraldError, buildUrl, jwtExpiry } from "../../herald.js";
import { FakeClock, FakeTarget, fakeSocketClass, fakeJwt, tick } from "./fakes.mjs";

function make(opts = {}) {
  const clock = new FakeClock();
  const WS = fakeSocketClass();
  const win = new FakeTarget();
  const doc = new FakeTarget();
  const events = [];
  const client = new Herald(opts.url || "ws://127.0.0.1:8080", {
    WebSocket: WS,
    _clock: clock.clock(),
    _random: opts._random || (() => 0.5),
    _window: win,
    _document: doc,
    ...opts,
  });
  for (const e of ["connected", "disconnected", "reconnecting", "error", "lost"]) client.on(e, (p) => events.push([e, p]));
  return { client, WS, clock, win, doc, events, of: (name) => events.filter((e) => e[0] === name).map((e) => e[1]) };
}

function up(ws, extra) {
  ws.open();
  ws.welcome(extra);
}

test("URL building: /ws added, path kept, heartbeat=json, http(s) mapped", () => {
  assert.equal(buildUrl("ws://127.0.0.1:8080"), "ws://127.0.0.1:8080/ws?heartbeat=json");
  assert.equal(buildUrl("ws://h:8080/"), "ws://h:8080/ws?heartbeat=json");
  assert.equal(buildUrl("http://h:8080"), "ws://h:8080/ws?heartbeat=json");
  assert.equal(buildUrl("https://h/herald/ws?echo=false"), "wss://h/herald/ws?echo=false&heartbeat=json");
  assert.equal(buildUrl("wss://h/ws?heartbeat=ws"), "wss://h/ws?heartbeat=json");
  assert.throws(() => buildUrl("ftp://h"), (e) => e instanceof HeraldError && e.code === "invalid_url");
  const { WS } = make({ url: "http://x:1" });
  assert.equal(WS.last().url, "ws://x:1/ws?heartbeat=json");
});

test("auth frame goes first, before the subscribes, and the token is not in the URL", () => {
  const { client, WS } = make({ token: "tok" });
  client.subscribe("a", () => {});
  client.subscribe("b", () => {});
  const ws = WS.last();
  assert.ok(!ws.url.includes("tok"));
  ws.open();
  assert.deepEqual(ws.sent.map((f) => f.op), ["auth", "subscribe", "subscribe"]);
  assert.equal(ws.sent[0].token, "tok");
  // each topic in its own frame with its own id
  assert.deepEqual(ws.sent[1].topics, ["a"]);
  assert.deepEqual(ws.sent[2].topics, ["b"]);
  assert.notEqual(ws.sent[1].id, ws.sent[2].id);
});

test("connected event and state", () => {
  const { client, WS, of } = make();
  assert.equal(client.state, "connecting");
  up(WS.last());
  assert.equal(client.state, "connected");
  assert.deepEqual(of("connected"), [{ node: "n1", connection: "7" }]);
});

test("backoff: full jitter from the first retry, exponential ceiling, capped at maxDelayMs", () => {
  const draws = [0.999, 0.999, 0.999, 0.999, 0.999, 0.999, 0, 0.5];
  const { WS, of, clock } = make({
    _random: () => draws.shift(),
    reconnect: { initialDelayMs: 100, maxDelayMs: 1000, factor: 2 },
  });
  for (let i = 0; i < 8; i++) {
    WS.last().drop();
    const r = of("reconnecting").at(-1);
    clock.advance(r.delayMs);
  }
  const delays = of("reconnecting").map((r) => r.delayMs);
  assert.deepEqual(of("reconnecting").map((r) => r.attempt), [1, 2, 3, 4, 5, 6, 7, 8]);
  // ceilings 100, 200, 400, 800, 1000 (cap), 1000; draws near 1 land just under them
  assert.deepEqual(delays.slice(0, 6), [99, 199, 399, 799, 999, 999]);
  assert.equal(delays[6], 0, "random 0 gives a zero delay: no deterministic first retry floor");
  assert.equal(delays[7], 500);
  assert.equal(WS.sockets.length, 9);
});

test("backoff: the first retry is already jittered in [0, initialDelayMs)", () => {
  for (const r of [0, 0.25, 0.9]) {
    const { WS, of } = make({ _random: () => r, reconnect: { initialDelayMs: 400 } });
    WS.last().drop();
    assert.equal(of("reconnecting")[0].delayMs, Math.floor(400 * r));
  }
});

test("attempts reset only after a connection that got its welcome and stayed up", () => {
  const { WS, of, clock } = make({ _random: () => 0.999, reconnect: { initialDelayMs: 100, maxDelayMs: 10000, resetAfterMs: 5000 } });
  WS.last().drop();
  clock.advance(200);
  WS.last().drop();
  clock.advance(400);
  assert.deepEqual(of("reconnecting").map((r) => r.attempt), [1, 2]);
  // welcomed but dropped at once: no reset
  up(WS.last());
  WS.last().drop();
  assert.equal(of("reconnecting").at(-1).attempt, 3);
  clock.advance(1000);
  // welcomed and up for 6 s: reset
  up(WS.last());
  for (let i = 0; i < 6; i++) { // kept alive by the node's pings
    clock.advance(1000);
    WS.last().recv({ type: "ping" });
  }
  assert.equal(WS.last().closedWith, null);
  WS.last().drop();
  const last = of("reconnecting").at(-1);
  assert.equal(last.attempt, 1);
  assert.equal(last.delayMs, 99);
});

test("reconnect:false: a drop closes the client", () => {
  const { client, WS, of } = make({ reconnect: false });
  up(WS.last());
  WS.last().drop(1001, "server shutting down");
  assert.equal(client.state, "closed");
  assert.deepEqual(of("disconnected"), [{ code: 1001, reason: "server shutting down" }]);
  assert.equal(of("reconnecting").length, 0);
});

test("resubscribe after reconnect with since = last message position; duplicates dropped", async () => {
  const { client, WS, clock } = make();
  const got = [];
  const sub = client.subscribe("chat", (d, m) => got.push([d, m.offset, m.epoch]));
  let ws = WS.last();
  up(ws);
  const s1 = ws.ops("subscribe")[0];
  assert.equal(s1.since, undefined);
  ws.recv({ type: "ack", id: s1.id, positions: { chat: { offset: 3, epoch: "E" } } });
  await sub.ready;
  ws.recv({ type: "message", topic: "chat", offset: 4, epoch: "E", data: "d4" });
  ws.recv({ type: "message", topic: "chat", offset: 5, epoch: "E", data: "d5" });
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  const s2 = ws.ops("subscribe")[0];
  assert.deepEqual(s2.since, { chat: { offset: 5, epoch: "E" } });
  ws.recv({ type: "ack", id: s2.id, recovered: { chat: true }, positions: { chat: { offset: 6, epoch: "E" } } });
  ws.recv({ type: "message", topic: "chat", offset: 5, epoch: "E", data: "dup" });
  ws.recv({ type: "message", topic: "chat", offset: 4, epoch: "E", data: "dup" });
  ws.recv({ type: "message", topic: "chat", offset: 6, epoch: "E", data: "d6" });
  // a new epoch is not a duplicate even with a lower offset
  ws.recv({ type: "message", topic: "chat", offset: 1, epoch: "F", data: "f1" });
  assert.deepEqual(got, [["d4", 4, "E"], ["d5", 5, "E"], ["d6", 6, "E"], ["f1", 1, "F"]]);
});

test("a topic that got nothing yet resumes from the ack's position", () => {
  const { client, WS, clock } = make();
  client.subscribe("quiet", () => {});
  client.subscribe("plain", () => {});
  let ws = WS.last();
  up(ws);
  const [q, p] = ws.ops("subscribe");
  ws.recv({ type: "ack", id: q.id, positions: { quiet: { offset: 0, epoch: "Z" } } });
  ws.recv({ type: "ack", id: p.id });
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  const [q2, p2] = ws.ops("subscribe");
  assert.deepEqual(q2.since, { quiet: { offset: 0, epoch: "Z" } });
  assert.equal(p2.since, undefined, "a topic without history resubscribes without since");
});

test("subscribe since option is sent and used for dedup", () => {
  const { client, WS } = make();
  const got = [];
  client.subscribe("t", (d) => got.push(d), { since: { offset: 10, epoch: "E" } });
  const ws = WS.last();
  up(ws);
  assert.deepEqual(ws.ops("subscribe")[0].since, { t: { offset: 10, epoch: "E" } });
  ws.recv({ type: "message", topic: "t", offset: 10, epoch: "E", data: "old" });
  ws.recv({ type: "message", topic: "t", offset: 11, epoch: "E", data: "new" });
  assert.deepEqual(got, ["new"]);
});

test("recovered:false emits lost not_recovered", () => {
  const { client, WS, of } = make();
  client.subscribe("t", () => {}, { since: { offset: 1, epoch: "OLD" } });
  const ws = WS.last();
  up(ws);
  const s = ws.ops("subscribe")[0];
  ws.recv({ type: "ack", id: s.id, recovered: { t: false }, positions: { t: { offset: 9, epoch: "NEW" } } });
  assert.deepEqual(of("lost"), [{ topic: "t", reason: "not_recovered" }]);
});

test("recovery_overflow resubscribes that topic with since; recovery_lost also emits lost once", () => {
  const { client, WS, of } = make();
  client.subscribe("t", () => {});
  client.subscribe("u", () => {});
  const ws = WS.last();
  up(ws);
  const [st, su] = ws.ops("subscribe");
  ws.recv({ type: "ack", id: st.id, positions: { t: { offset: 2, epoch: "E" } } });
  ws.recv({ type: "ack", id: su.id, positions: { u: { offset: 0, epoch: "E" } } });
  ws.recv({ type: "message", topic: "t", offset: 3, epoch: "E", data: 1 });
  ws.recv({ type: "error", code: "recovery_overflow", topic: "t", message: "behind" });
  const re = ws.ops("subscribe")[2];
  assert.deepEqual(re.topics, ["t"]);
  assert.deepEqual(re.since, { t: { offset: 3, epoch: "E" } });
  assert.equal(of("lost").length, 0);
  ws.recv({ type: "ack", id: re.id, recovered: { t: true } });
  ws.recv({ type: "error", code: "recovery_lost", topic: "u", message: "trimmed" });
  const re2 = ws.ops("subscribe")[3];
  assert.deepEqual(re2.since, { u: { offset: 0, epoch: "E" } });
  ws.recv({ type: "ack", id: re2.id, recovered: { u: false } });
  assert.deepEqual(of("lost"), [{ topic: "u", reason: "recovery_lost" }]);
});

test("several subscribe() on one topic share one server subscription; unsubscribe sends only for the last", async () => {
  const { client, WS } = make();
  const a = [], b = [];
  const s1 = client.subscribe("t", (d) => a.push(d));
  const ws = WS.last();
  up(ws);
  const s2 = client.subscribe("t", (d) => b.push(d));
  assert.equal(ws.ops("subscribe").length, 1);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id });
  await Promise.all([s1.ready, s2.ready]);
  const s3 = client.subscribe("t", () => {});
  await s3.ready; // already active: ready at once
  ws.recv({ type: "message", topic: "t", data: 1 });
  s1.unsubscribe();
  s3.unsubscribe();
  assert.equal(ws.ops("unsubscribe").length, 0);
  ws.recv({ type: "message", topic: "t", data: 2 });
  s2.unsubscribe();
  assert.deepEqual(ws.ops("unsubscribe"), [{ op: "unsubscribe", topics: ["t"] }]);
  ws.recv({ type: "message", topic: "t", data: 3 });
  assert.deepEqual(a, [1]);
  assert.deepEqual(b, [1, 2]);
});

test("forbidden rejects that sub.ready only, emits error; other topics unaffected", async () => {
  const { client, WS, of, clock } = make();
  const bad = client.subscribe("secret", () => {});
  const good = client.subscribe("open", () => {});
  let ws = WS.last();
  up(ws);
  const [sb, sg] = ws.ops("subscribe");
  ws.recv({ type: "error", id: sb.id, code: "forbidden", message: "not allowed to subscribe \"secret\"" });
  ws.recv({ type: "ack", id: sg.id });
  await good.ready;
  await assert.rejects(bad.ready, (e) => e instanceof HeraldError && e.code === "forbidden" && e.topic === "secret");
  assert.equal(of("error")[0].code, "forbidden");
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  assert.deepEqual(ws.ops("subscribe").map((f) => f.topics[0]), ["open"], "the refused topic is not resubscribed");
});

test("forbidden without id after a refresh ends the named subscription", () => {
  const { client, WS, of } = make();
  const got = [];
  client.subscribe("room:1", (d) => got.push(d));
  const ws = WS.last();
  up(ws);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id });
  ws.recv({ type: "error", code: "forbidden", topic: "room:1", message: "subscription to \"room:1\" dropped: the new token does not allow it" });
  assert.equal(of("error")[0].topic, "room:1");
  ws.recv({ type: "message", topic: "room:1", data: "late" });
  assert.deepEqual(got, []);
});

test("ping frames are answered with pong", () => {
  const { WS } = make();
  const ws = WS.last();
  up(ws);
  ws.recv({ type: "ping" });
  ws.recv({ type: "ping" });
  assert.deepEqual(ws.ops("pong"), [{ op: "pong" }, { op: "pong" }]);
});

test("dead connection: nothing for 2 ping intervals (+ slack) → close and reconnect", () => {
  const { WS, clock, of } = make({ liveness: { slackMs: 500 } });
  const ws = WS.last();
  up(ws, { ping_interval_ms: 1000 });
  // pings keep it alive
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    ws.recv({ type: "ping" });
  }
  assert.equal(ws.closedWith, null);
  clock.advance(2400);
  assert.equal(ws.closedWith, null, "still within 2 intervals + slack");
  clock.advance(200);
  assert.ok(ws.closedWith, "closed after 2.5 s of silence");
  assert.equal(of("disconnected").length, 1);
  assert.equal(of("reconnecting").length, 1);
});

test("sleep/wake: a timer firing late probes with ping; a frame keeps the connection", () => {
  const { WS, clock } = make();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 1000 });
  clock.sleep(60000);
  const probe = ws.ops("ping")[0];
  assert.ok(probe && probe.id !== undefined, "probe sent");
  assert.equal(ws.closedWith, null);
  clock.advance(1000);
  ws.recv({ type: "pong", id: probe.id });
  clock.advance(2000);
  assert.equal(ws.closedWith, null);
  // and liveness checking resumed: silence now kills it
  clock.advance(2000);
  assert.ok(ws.closedWith);
});

test("sleep/wake: no answer to the probe within probeTimeoutMs → replace the connection", () => {
  const { WS, clock } = make({ liveness: { probeTimeoutMs: 3000 } });
  const ws = WS.last();
  up(ws, { ping_interval_ms: 1000 });
  clock.sleep(60000);
  assert.equal(ws.ops("ping").length, 1);
  clock.advance(2900);
  assert.equal(ws.closedWith, null);
  clock.advance(200);
  assert.ok(ws.closedWith);
  assert.equal(WS.sockets.length, 1);
  clock.advance(10000);
  assert.equal(WS.sockets.length, 2, "reconnected");
});

test("visibilitychange after a long silence probes", () => {
  const { WS, clock, doc } = make({ liveness: { slackMs: 100000 } });
  const ws = WS.last();
  up(ws, { ping_interval_ms: 1000 });
  doc.fire("visibilitychange");
  assert.equal(ws.ops("ping").length, 0, "no probe right after traffic");
  clock.advance(5000);
  doc.visibilityState = "hidden";
  doc.fire("visibilitychange");
  assert.equal(ws.ops("ping").length, 0);
  doc.visibilityState = "visible";
  doc.fire("visibilitychange");
  assert.equal(ws.ops("ping").length, 1);
});

test("offline closes and retries only slowly; online reconnects soon, jittered", () => {
  const { client, WS, clock, win, of } = make({ _random: () => 0.5, reconnect: { initialDelayMs: 10000, maxDelayMs: 60000 } });
  up(WS.last());
  win.fire("offline");
  assert.ok(WS.last().closedWith);
  assert.equal(client.state, "reconnecting");
  assert.equal(of("reconnecting").at(-1).delayMs, 45000, "offline: a slow retry in [maxDelayMs/2, maxDelayMs)");
  clock.advance(40000);
  assert.equal(WS.sockets.length, 1, "no quick reconnect while offline");
  win.fire("online");
  assert.equal(of("reconnecting").at(-1).delayMs, 5000, "online: random(0, initialDelayMs)");
  clock.advance(4999);
  assert.equal(WS.sockets.length, 1);
  clock.advance(1);
  assert.equal(WS.sockets.length, 2, "reconnected after the jittered delay");
});

test("publish resolves with offset/epoch on the ack, rejects with the node's code, times out", async () => {
  const { client, WS, clock } = make({ ackTimeoutMs: 5000 });
  const ws = WS.last();
  up(ws, { ping_interval_ms: 60000 });
  const p1 = client.publish("h", { x: 1 });
  const p2 = client.publish("plain", 2);
  const p3 = client.publish("h", 3);
  const p4 = client.publish("h", 4);
  const [f1, f2, f3] = ws.ops("publish");
  assert.deepEqual(f1.data, { x: 1 });
  ws.recv({ type: "ack", id: f1.id, offset: 43, epoch: "E" });
  ws.recv({ type: "ack", id: f2.id });
  ws.recv({ type: "error", id: f3.id, code: "rate_limited", message: "slow down" });
  assert.deepEqual(await p1, { offset: 43, epoch: "E" });
  assert.deepEqual(await p2, { offset: undefined, epoch: undefined });
  await assert.rejects(p3, (e) => e instanceof HeraldError && e.code === "rate_limited" && e.message === "slow down");
  clock.advance(5001);
  await assert.rejects(p4, (e) => e.code === "timeout");
});

test("in-flight publishes reject connection_lost when the socket drops", async () => {
  const { client, WS } = make();
  up(WS.last());
  const p = client.publish("t", 1);
  WS.last().drop();
  await assert.rejects(p, (e) => e.code === "connection_lost");
});

test("offline queue: bounded, flushed after the resubscribes, paced at publishRatePerSecond", async () => {
  const { client, WS, clock } = make({ offlineQueue: 3, publishRatePerSecond: 10 });
  client.subscribe("a", () => {});
  const ps = [client.publish("a", 1), client.publish("a", 2), client.publish("a", 3)];
  const over = client.publish("a", 4);
  await assert.rejects(over, (e) => e.code === "disconnected");
  const ws = WS.last();
  ws.open();
  assert.equal(ws.ops("publish").length, 0, "not before the welcome");
  ws.welcome();
  const ops = ws.sent.map((f) => f.op);
  assert.deepEqual(ops, ["subscribe", "publish"], "resubscribe first, then the first queued publish");
  clock.advance(99);
  assert.equal(ws.ops("publish").length, 1);
  clock.advance(1);
  assert.equal(ws.ops("publish").length, 2);
  // a publish made while the queue flushes goes behind it
  const late = client.publish("a", 5);
  clock.advance(100);
  clock.advance(100);
  assert.deepEqual(ws.ops("publish").map((f) => f.data), [1, 2, 3, 5]);
  for (const f of ws.ops("publish")) ws.recv({ type: "ack", id: f.id });
  await Promise.all([...ps, late]);
});

test("offlineQueue:0 rejects at once with disconnected", async () => {
  const { client, WS } = make({ offlineQueue: 0 });
  await assert.rejects(client.publish("a", 1), (e) => e instanceof HeraldError && e.code === "disconnected");
  up(WS.last());
  const p = client.publish("a", 1);
  assert.equal(WS.last().ops("publish").length, 1);
  WS.last().recv({ type: "ack", id: WS.last().ops("publish")[0].id });
  await p;
});

test("token_expired notice → getToken() → refresh frame; getToken on every reconnect", async () => {
  let n = 0;
  const { WS, clock } = make({ getToken: async () => `t${++n}` });
  await tick();
  let ws = WS.last();
  up(ws);
  assert.equal(ws.ops("auth")[0].token, "t1");
  ws.recv({ type: "error", code: "token_expired", message: "expires in 30 s" });
  await tick();
  const r = ws.ops("refresh");
  assert.equal(r.length, 1);
  assert.equal(r[0].token, "t2");
  assert.notEqual(r[0].id, undefined);
  ws.recv({ type: "ack", id: r[0].id });
  ws.drop();
  clock.advance(1000);
  await tick();
  ws = WS.last();
  ws.open();
  assert.equal(ws.ops("auth")[0].token, "t3");
});

test("refresh is scheduled a bit before the JWT exp as a fallback", async () => {
  const clockStart = 1_000_000; // FakeClock default
  const exp = (clockStart + 120000) / 1000;
  let n = 0;
  const { WS, clock } = make({ getToken: async () => fakeJwt({ sub: "u", exp, n: ++n }), refreshBeforeExpiryMs: 10000 });
  assert.equal(jwtExpiry(fakeJwt({ exp: 5 })), 5);
  assert.equal(jwtExpiry("garbage"), undefined);
  await tick();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 }); // no JSON pings: no liveness check in this test
  clock.advance(120000 - 10000 - 100); // not yet
  await tick();
  assert.equal(ws.ops("refresh").length, 0);
  clock.advance(200);
  await tick();
  assert.equal(ws.ops("refresh").length, 1);
});

test("static token refused (unauthorized + 1008): error and no reconnect loop", () => {
  const { client, WS, clock, of } = make({ token: "bad" });
  const ws = WS.last();
  up(ws);
  const auth = ws.ops("auth")[0];
  ws.recv({ type: "error", id: auth.id, code: "unauthorized", message: "token signature is invalid" });
  ws.drop(1008, "unauthorized: token signature is invalid");
  clock.advance(120000);
  assert.equal(WS.sockets.length, 1);
  assert.equal(client.state, "closed");
  assert.ok(of("error").some((e) => e.code === "unauthorized"));
});

test("getToken + unauthorized keeps backing off (attempts grow)", async () => {
  const { WS, clock, of } = make({ getToken: async () => "t", _random: () => 0.999, reconnect: { initialDelayMs: 100, resetAfterMs: 0 } });
  for (let i = 0; i < 3; i++) {
    await tick();
    const ws = WS.last();
    up(ws);
    ws.recv({ type: "error", id: ws.ops("auth")[0].id, code: "unauthorized", message: "no" });
    ws.drop(1008, "unauthorized: no");
    clock.advance(of("reconnecting").at(-1).delayMs);
  }
  assert.deepEqual(of("reconnecting").map((r) => r.attempt), [1, 2, 3]);
});

test("close(): no reconnect, pending and queued rejected with closed, state closed", async () => {
  const { client, WS, clock, of } = make();
  const ws = WS.last();
  up(ws);
  const inflight = client.publish("t", 1);
  const sub = client.subscribe("s", () => {});
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(ws.closedWith, { code: 1000, reason: undefined });
  await assert.rejects(inflight, (e) => e.code === "closed");
  await assert.rejects(sub.ready, (e) => e.code === "closed");
  await assert.rejects(client.publish("t", 2), (e) => e.code === "closed");
  clock.advance(100000);
  assert.equal(WS.sockets.length, 1);
  assert.equal(of("reconnecting").length, 0);
});

test("close() while disconnected rejects the offline queue", async () => {
  const { client } = make();
  const p = client.publish("t", 1);
  client.close();
  await assert.rejects(p, (e) => e.code === "closed");
});

test("on() returns an off function; off() works", () => {
  const { client, WS } = make();
  const seen = [];
  const off = client.on("connected", () => seen.push("a"));
  const fb = () => seen.push("b");
  client.on("connected", fb);
  off();
  client.off("connected", fb);
  up(WS.last());
  assert.deepEqual(seen, []);
});

// ---- review findings ----------------------------------------------------------------------

test("close() while the socket is still connecting leaves an error handler (ws emits 'error')", async () => {
  const { client, WS } = make();
  const ws = WS.last();
  assert.equal(ws.readyState, 0);
  client.close();
  await tick();
  assert.ok(ws.closedWith);
  assert.equal(ws.unhandledError, undefined, "an 'error' with no listener would crash Node");
});

test("the saved position does not jump to a resubscribe ack's head before the replay arrives", () => {
  const { client, WS, clock } = make();
  const got = [];
  client.subscribe("h", (d, m) => got.push(m.offset));
  let ws = WS.last();
  up(ws);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id, positions: { h: { offset: 57, epoch: "E" } } });
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  let s = ws.ops("subscribe")[0];
  assert.deepEqual(s.since, { h: { offset: 57, epoch: "E" } });
  ws.recv({ type: "ack", id: s.id, recovered: { h: true }, positions: { h: { offset: 60, epoch: "E" } } });
  ws.drop(); // before 58..60 were replayed
  clock.advance(2000);
  ws = WS.last();
  up(ws);
  s = ws.ops("subscribe")[0];
  assert.deepEqual(s.since, { h: { offset: 57, epoch: "E" } }, "58..60 must still be asked for");
  ws.recv({ type: "ack", id: s.id, recovered: { h: true }, positions: { h: { offset: 60, epoch: "E" } } });
  ws.recv({ type: "message", topic: "h", offset: 58, epoch: "E", data: 58 });
  ws.drop();
  clock.advance(2000);
  ws = WS.last();
  up(ws);
  assert.deepEqual(ws.ops("subscribe")[0].since, { h: { offset: 58, epoch: "E" } }, "moves only with delivered messages");
  assert.deepEqual(got, [58]);
});

test("epoch change (recovered:false): the old position stays until the new epoch's replay is delivered", () => {
  const { client, WS, clock, of } = make();
  client.subscribe("h", () => {});
  client.subscribe("e", () => {});
  let ws = WS.last();
  up(ws);
  let [sh, se] = ws.ops("subscribe");
  ws.recv({ type: "ack", id: sh.id, positions: { h: { offset: 57, epoch: "OLD" } } });
  ws.recv({ type: "ack", id: se.id, positions: { e: { offset: 5, epoch: "OLD" } } });
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  [sh, se] = ws.ops("subscribe");
  assert.deepEqual(sh.since, { h: { offset: 57, epoch: "OLD" } });
  ws.recv({ type: "ack", id: sh.id, recovered: { h: false }, positions: { h: { offset: 9, epoch: "NEW" } } });
  // "e" restarted empty: nothing to replay, so its new epoch can be taken at once
  ws.recv({ type: "ack", id: se.id, recovered: { e: false }, positions: { e: { offset: 0, epoch: "NEW" } } });
  ws.drop(); // before NEW 1..9 of "h" were replayed
  clock.advance(2000);
  ws = WS.last();
  up(ws);
  [sh, se] = ws.ops("subscribe");
  assert.deepEqual(sh.since, { h: { offset: 57, epoch: "OLD" } }, "NEW 1..9 are not skipped");
  assert.deepEqual(se.since, { e: { offset: 0, epoch: "NEW" } });
  ws.recv({ type: "ack", id: sh.id, recovered: { h: false }, positions: { h: { offset: 9, epoch: "NEW" } } });
  ws.recv({ type: "ack", id: se.id, recovered: { e: true }, positions: { e: { offset: 0, epoch: "NEW" } } });
  assert.deepEqual(of("lost").map((l) => l.topic), ["h", "e", "h"], "the loss is reported again, never silent");
  ws.recv({ type: "message", topic: "h", offset: 1, epoch: "NEW", data: 1 });
  ws.drop();
  clock.advance(2000);
  ws = WS.last();
  up(ws);
  assert.deepEqual(ws.ops("subscribe")[0].since, { h: { offset: 1, epoch: "NEW" } });
});

test("queue bound holds while connected (queue_full); publishes behind the backlog are not paced", async () => {
  const { client, WS, clock } = make({ offlineQueue: 3, publishRatePerSecond: 10 });
  const backlog = [1, 2, 3].map((i) => client.publish("t", i));
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  assert.equal(ws.ops("publish").length, 1);
  const later = [client.publish("t", "a")];
  await assert.rejects(client.publish("t", "b"), (e) => e instanceof HeraldError && e.code === "queue_full");
  clock.advance(200); // the backlog (2, 3) at 10/s, then "a" at once
  assert.deepEqual(ws.ops("publish").map((f) => f.data), [1, 2, 3, "a"]);
  const direct = client.publish("t", "c");
  assert.equal(ws.ops("publish").at(-1).data, "c", "queue empty again: sent directly");
  for (const f of ws.ops("publish")) ws.recv({ type: "ack", id: f.id });
  await Promise.all([...backlog, ...later, direct]);
});

test("pacing is a token bucket on the clock: a throttled (late) timer still sends its share", () => {
  const { client, WS, clock } = make({ offlineQueue: 200, publishRatePerSecond: 50, ackTimeoutMs: 600000 });
  for (let i = 0; i < 120; i++) client.publish("t", i).catch(() => {});
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  assert.equal(ws.ops("publish").length, 1);
  clock.sleep(1000); // one late timer tick instead of 50
  assert.equal(ws.ops("publish").length, 51, "1 + one second's worth (the burst cap)");
  clock.sleep(60000);
  assert.equal(ws.ops("publish").length, 101, "capped at one second's worth per tick");
  clock.advance(2000);
  assert.equal(ws.ops("publish").length, 120);
  assert.deepEqual(ws.ops("publish").map((f) => f.data), [...Array(120).keys()], "in order");
});

test("a drop during a token refresh does not block later refreshes; a stale result is dropped", async () => {
  let n = 0;
  let release;
  const { client, WS, clock } = make({
    getToken: () => (++n === 2 ? new Promise((r) => { release = r; }) : Promise.resolve(`t${n}`)),
  });
  await tick();
  up(WS.last());
  WS.last().recv({ type: "error", code: "token_expired", message: "soon" });
  await tick();
  WS.last().drop(); // getToken() of the refresh still pending
  clock.advance(1000);
  await tick();
  const ws2 = WS.last();
  up(ws2);
  release("stale");
  await tick();
  assert.equal(ws2.ops("refresh").length, 0, "the old refresh's token is not sent on the new socket");
  ws2.recv({ type: "error", code: "token_expired", message: "soon" });
  await tick();
  await tick();
  assert.equal(ws2.ops("refresh").length, 1, "a new notice refreshes again");
  assert.equal(client._refreshing, true);
});

test("a refresh the node never answers is time-limited", async () => {
  let n = 0;
  const { WS, clock } = make({ getToken: async () => `t${++n}`, ackTimeoutMs: 5000 });
  await tick();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  ws.recv({ type: "error", code: "token_expired", message: "soon" });
  await tick();
  assert.equal(ws.ops("refresh").length, 1);
  ws.recv({ type: "error", code: "token_expired", message: "soon" });
  await tick();
  assert.equal(ws.ops("refresh").length, 1, "one at a time");
  clock.advance(5001);
  ws.recv({ type: "error", code: "token_expired", message: "soon" });
  await tick();
  await tick();
  assert.equal(ws.ops("refresh").length, 2, "after the time limit a new refresh can start");
});

test("client clock ahead of the issuer's: the fallback refresh uses exp - iat from the fetch time", async () => {
  const serverNow = 1_000_000 - 10 * 60_000; // our clock runs 10 min ahead
  const iat = Math.floor(serverNow / 1000);
  let calls = 0;
  const { WS, clock } = make({ getToken: async () => { calls++; return fakeJwt({ sub: "u", iat, exp: iat + 300 }); } });
  await tick();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  for (let i = 0; i < 60; i++) {
    clock.advance(1000);
    await tick();
    for (const f of ws.ops("refresh")) if (!f.acked) { f.acked = 1; ws.recv({ type: "ack", id: f.id }); }
  }
  assert.equal(ws.ops("refresh").length, 0, "no refresh in the first minute of a 5-minute token");
  clock.advance(300000 - 10000 - 60000 - 100);
  await tick();
  assert.equal(ws.ops("refresh").length, 0);
  clock.advance(200);
  await tick();
  await tick();
  assert.equal(ws.ops("refresh").length, 1, "refreshBeforeExpiryMs before the end of its lifetime");
  assert.equal(calls, 2);
});

test("a token without iat whose exp already passed on our clock: refreshes back off, no 1/s loop", async () => {
  const exp = Math.floor((1_000_000 - 5 * 60_000) / 1000);
  const { WS, clock } = make({ getToken: async () => fakeJwt({ sub: "u", exp }) });
  await tick();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  for (let i = 0; i < 120; i++) {
    clock.advance(1000);
    await tick();
    await tick();
    for (const f of ws.ops("refresh")) if (!f.acked) { f.acked = 1; ws.recv({ type: "ack", id: f.id }); }
  }
  // floors 5, 10, 20, 40, 80 s: refreshes at 5, 15, 35, 75 s
  assert.equal(ws.ops("refresh").length, 4);
});

test("getToken() that never settles: token_timeout, backoff, a later attempt connects; late result ignored", async () => {
  let n = 0;
  let late;
  const { WS, clock, of } = make({
    tokenTimeoutMs: 2000,
    getToken: () => (++n === 1 ? new Promise((r) => { late = r; }) : Promise.resolve("good")),
  });
  await tick();
  assert.equal(WS.sockets.length, 0);
  clock.advance(2000);
  await tick();
  assert.equal(of("error")[0].code, "token_timeout");
  assert.equal(of("reconnecting").length, 1);
  clock.advance(of("reconnecting")[0].delayMs);
  await tick();
  assert.equal(WS.sockets.length, 1);
  late("stale");
  await tick();
  assert.equal(WS.sockets.length, 1, "the late result opens nothing");
  WS.last().open();
  assert.equal(WS.last().ops("auth")[0].token, "good");
});

test("publish data JSON cannot encode rejects at once with invalid_data; the queue keeps going", async () => {
  const { client, WS } = make();
  const cyclic = {};
  cyclic.self = cyclic;
  await assert.rejects(client.publish("t", 1n), (e) => e instanceof HeraldError && e.code === "invalid_data");
  await assert.rejects(client.publish("t", cyclic), (e) => e.code === "invalid_data");
  const ok = client.publish("t", "next");
  const ws = WS.last();
  ws.open();
  assert.doesNotThrow(() => ws.welcome());
  assert.deepEqual(ws.ops("publish").map((f) => f.data), ["next"]);
  ws.recv({ type: "ack", id: ws.ops("publish")[0].id });
  await ok;
  await assert.rejects(client.publish("t", { n: 2n }), (e) => e.code === "invalid_data");
});

test("herald.d.ts: WebSocketConstructor accepts both ws and the browser's WebSocket (loose)", async () => {
  const { readFile } = await import("node:fs/promises");
  const dts = await readFile(new URL("../../herald.d.ts", import.meta.url), "utf8");
  const m = dts.match(/export type WebSocketConstructor = ([^;]+);/);
  assert.ok(m, "WebSocketConstructor declared");
  assert.match(m[1], /^new \(url: string(, \.\.\.rest: any\[\])?\) => any$/, "returns any: a strict instance type rejects ws or the DOM WebSocket (TS2322)");
});

test("connect timeout: a socket stuck connecting, or open without a welcome, is replaced with backoff", () => {
  const { client, WS, clock, of } = make({ connectTimeoutMs: 15000 });
  clock.advance(14999);
  assert.equal(WS.last().closedWith, null);
  clock.advance(1);
  assert.equal(WS.sockets[0].closedWith.code, 4000, "stuck connecting");
  assert.equal(of("disconnected").length, 1);
  assert.equal(of("reconnecting").length, 1);
  clock.advance(of("reconnecting")[0].delayMs);
  assert.equal(WS.sockets.length, 2);
  WS.last().open(); // upgraded, but no welcome
  clock.advance(15000);
  assert.ok(WS.sockets[1].closedWith, "open without a welcome");
  assert.equal(of("reconnecting")[1].attempt, 2, "backing off");
  clock.advance(of("reconnecting")[1].delayMs);
  up(WS.last(), { ping_interval_ms: 0 });
  clock.advance(60000);
  assert.equal(WS.last().closedWith, null, "the welcome cleared the timeout");
  assert.equal(client.state, "connected");
});

test("a spurious offline (no online event ever) does not leave the client dead", () => {
  const { client, WS, clock, win } = make({ reconnect: { maxDelayMs: 20000 } });
  up(WS.last());
  win.fire("offline");
  clock.advance(20000);
  assert.equal(WS.sockets.length, 2, "retried within maxDelayMs");
  up(WS.last());
  assert.equal(client.state, "connected");
});

test("a queued publish times out ackTimeoutMs after publish() while reconnects keep failing", async () => {
  const { client, WS, clock } = make({ ackTimeoutMs: 5000 });
  const p = client.publish("t", 1);
  for (let i = 0; i < 10; i++) {
    WS.last()?.drop();
    clock.advance(600);
  }
  await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "timeout" && e.sent === false);
  up(WS.last());
  assert.equal(WS.last().ops("publish").length, 0, "a timed-out publish is never sent later");
});

test("default ackTimeoutMs is 15 s (above the node's 10 s relay wait)", async () => {
  const { client, WS, clock } = make();
  const ws = WS.last();
  up(ws, { ping_interval_ms: 0 });
  let done = null;
  client.publish("t", 1).then(() => (done = "ok"), (e) => (done = e.code));
  clock.advance(14999);
  await tick();
  assert.equal(done, null, "still waiting at 10 s and beyond");
  ws.recv({ type: "error", id: ws.ops("publish")[0].id, code: "relay_unavailable", message: "no verdict" });
  await tick();
  assert.equal(done, "relay_unavailable");
  const p2 = client.publish("t", 2);
  clock.advance(15001);
  await assert.rejects(p2, (e) => e.code === "timeout" && e.sent === true);
});

test("relay_unavailable: a second subscribe on the topic gets the same answer until a clean ack", async () => {
  const { client, WS, clock } = make();
  const s1 = client.subscribe("a", () => {});
  let ws = WS.last();
  up(ws);
  ws.recv({ type: "error", id: ws.ops("subscribe")[0].id, code: "relay_unavailable", message: "x" });
  const s2 = client.subscribe("a", () => {});
  await assert.rejects(s1.ready, (e) => e.code === "relay_unavailable");
  await assert.rejects(s2.ready, (e) => e.code === "relay_unavailable" && e.topic === "a");
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id });
  await client.subscribe("a", () => {}).ready;
});

test("a resubscribe whose replay the node cannot read yet (relay_unavailable) is asked again; nothing is skipped", async () => {
  const { client, WS, clock, of } = make();
  const got = [];
  const sub = client.subscribe("h", (d, m) => got.push([d, m.offset]));
  let ws = WS.last();
  up(ws);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id, positions: { h: { offset: 1, epoch: "E" } } });
  await sub.ready;
  ws.drop();
  clock.advance(1000);
  ws = WS.last();
  up(ws);
  const s2 = ws.ops("subscribe")[0];
  assert.deepEqual(s2.since, { h: { offset: 1, epoch: "E" } });
  // The restarted node's relay is not up yet: its replay fails.
  ws.recv({ type: "error", id: s2.id, code: "relay_unavailable", message: "redis relay is down" });
  assert.equal(of("error").at(-1).code, "relay_unavailable");
  // A live message arrives once the relay is up: it is not delivered ahead of the gap.
  ws.recv({ type: "message", topic: "h", offset: 6, epoch: "E", data: "d6" });
  assert.deepEqual(got, []);
  // The retry goes out within [initialDelayMs/2, initialDelayMs) (375 ms with random 0.5)
  // and asks for the same range.
  clock.advance(374);
  assert.equal(ws.ops("subscribe").length, 1);
  clock.advance(1);
  const s3 = ws.ops("subscribe")[1];
  assert.deepEqual(s3.since, { h: { offset: 1, epoch: "E" } });
  // Still down: the next retry waits longer (in [500, 1000) ms: 750).
  ws.recv({ type: "error", id: s3.id, code: "relay_unavailable", message: "x" });
  clock.advance(749);
  assert.equal(ws.ops("subscribe").length, 2);
  clock.advance(1);
  const s4 = ws.ops("subscribe")[2];
  assert.deepEqual(s4.since, { h: { offset: 1, epoch: "E" } });
  ws.recv({ type: "ack", id: s4.id, recovered: { h: true }, positions: { h: { offset: 6, epoch: "E" } } });
  for (let i = 2; i <= 6; i++) ws.recv({ type: "message", topic: "h", offset: i, epoch: "E", data: `d${i}` });
  ws.recv({ type: "message", topic: "h", offset: 6, epoch: "E", data: "dup" });
  assert.deepEqual(got, [["d2", 2], ["d3", 3], ["d4", 4], ["d5", 5], ["d6", 6]]);
  // A topic without history keeps the old behaviour: no retry, live messages flow.
  const plain = [];
  client.subscribe("p", (d) => plain.push(d));
  const sp = ws.ops("subscribe").at(-1);
  ws.recv({ type: "error", id: sp.id, code: "relay_unavailable", message: "x" });
  clock.advance(2_000);
  assert.equal(ws.ops("subscribe").filter((f) => f.topics[0] === "p").length, 1);
  ws.recv({ type: "message", topic: "p", data: "live" });
  assert.deepEqual(plain, ["live"]);
});

test("an answered liveness probe leaves no pending entry", () => {
  const { client, WS, clock, doc } = make({ liveness: { slackMs: 100000 } });
  const ws = WS.last();
  up(ws);
  for (let i = 0; i < 5; i++) {
    clock.advance(5000);
    doc.fire("visibilitychange");
    const probe = ws.ops("ping").at(-1);
    ws.recv({ type: "pong", id: probe.id });
  }
  assert.equal(ws.ops("ping").length, 5);
  assert.equal(client._pending.size, 0);
});

test("options: non-finite or negative numbers throw invalid_option; undefined fields take the default", () => {
  const WS = fakeSocketClass();
  const opts = { WebSocket: WS, _clock: new FakeClock().clock(), _window: null, _document: null };
  for (const bad of [{ offlineQueue: Infinity }, { offlineQueue: -1 }, { ackTimeoutMs: NaN }, { publishRatePerSecond: 0 },
    { reconnect: { maxDelayMs: Infinity } }, { reconnect: { initialDelayMs: "5" } }, { liveness: { slackMs: -5 } }, { tokenTimeoutMs: 0 }]) {
    assert.throws(() => new Herald("ws://h:1", { ...opts, ...bad }), (e) => e instanceof HeraldError && e.code === "invalid_option", JSON.stringify(bad));
  }
  assert.equal(WS.sockets.length, 0, "nothing connects with invalid options");
  const { WS: W2, of } = make({ _random: () => 0.999, reconnect: { maxDelayMs: undefined, initialDelayMs: 100 } });
  W2.last().drop();
  assert.equal(of("reconnecting")[0].delayMs, 99, "a finite delay, not NaN");
});

test("a handler unsubscribed by another handler during the same message does not get it", () => {
  const { client, WS } = make();
  const got = [];
  let other;
  client.subscribe("b", () => other.unsubscribe());
  other = client.subscribe("b", (d) => got.push(d));
  const ws = WS.last();
  up(ws);
  ws.recv({ type: "ack", id: ws.ops("subscribe")[0].id });
  ws.recv({ type: "message", topic: "b", data: 9 });
  assert.deepEqual(got, []);
});
