// Interop tests: the real `herald` binary driven by an independent WebSocket
// implementation (the `ws` package), so the JSON protocol v1 and raw mode are checked
// against a peer that shares no code with the node.
//
// The binary comes from $HERALD_BIN (resolved against the current directory) or
// ../../target/debug/herald relative to this file. It is started once for the file on
// 127.0.0.1:0 with the in-process relay, and killed in `after`. Each test uses its own
// random topics, so tests do not see each other's traffic.

import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : resolve(HERE, '../../target/debug/herald');

/** The one line the binary prints to stdout once both listeners are bound. */
const LISTENING = /listening on ws:\/\/([^ ]+) admin http:\/\/(\S+)/;

const START_TIMEOUT_MS = 15_000;
const FRAME_TIMEOUT_MS = 5_000;
const TEST_TIMEOUT_MS = 20_000;

/** The running node: { child, wsAddr, adminAddr, stderr() }. */
let node;
/** Clients opened by the current test, closed in afterEach. */
let clients = [];

before(async () => {
  node = await startHerald();
}, { timeout: START_TIMEOUT_MS + 5_000 });

afterEach(() => {
  for (const c of clients) c.terminate();
  clients = [];
});

after(async () => {
  if (node) await stopHerald(node.child);
}, { timeout: 10_000 });

/** A topic name no other test uses. */
function topic(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/**
 * Asserts the fields named in `expected` (the contract allows new fields, so extra
 * fields in `frame` are fine; `undefined` in `expected` asserts a field is absent).
 */
function assertFrame(frame, expected) {
  for (const [key, value] of Object.entries(expected)) {
    assert.deepEqual(frame[key], value, `field "${key}" of ${JSON.stringify(frame)}`);
  }
}

/** Spawns the binary and resolves once it printed its listening line. */
function startHerald() {
  // The tests need the default single-node setup: no HERALD_* overrides from the caller.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')),
  );
  const args = ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'];
  return new Promise((resolvePromise, reject) => {
    const child = spawn(HERALD_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    process.on('exit', () => child.kill('SIGKILL'));
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr = (stderr + chunk).slice(-8_192);
    });
    const fail = (why) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${why}\n--- herald stderr ---\n${stderr}`));
    };
    const timer = setTimeout(
      () => fail(`${HERALD_BIN} printed no "listening on" line within ${START_TIMEOUT_MS} ms`),
      START_TIMEOUT_MS,
    );
    child.on('error', (e) =>
      fail(`cannot run ${HERALD_BIN}: ${e.message} (build it: cargo build -p herald-gateway --bin herald)`),
    );
    child.on('exit', (code, signal) =>
      fail(`herald exited before listening (code ${code}, signal ${signal})`),
    );
    // Keeps draining stdout after the match, so the node never blocks on a full pipe.
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = LISTENING.exec(line);
      if (m) {
        clearTimeout(timer);
        resolvePromise({ child, wsAddr: m[1], adminAddr: m[2], stderr: () => stderr });
      }
    });
  });
}

/** SIGTERM, then SIGKILL if the node has not exited within 3 s. */
async function stopHerald(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(timer);
}

/** A WebSocket with an ordered inbox and per-frame timeouts. */
class Client {
  constructor(ws, label) {
    this.ws = ws;
    this.label = label;
    this.inbox = [];
    this.waiters = [];
    this.closed = null;
    ws.on('message', (data, isBinary) => {
      const frame = { data: Buffer.from(data), isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(frame);
      else this.inbox.push(frame);
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.waiters.splice(0)) {
        w.reject(new Error(`${this.label}: closed (${code} ${this.closed.reason}) while waiting`));
      }
    });
    ws.on('error', () => {}); // surfaced through 'close' and timeouts
  }

  /** Opens `path` (e.g. "/ws?topics=a") on the node and waits for the handshake. */
  static open(path) {
    const url = `ws://${node.wsAddr}${path}`;
    const ws = new WebSocket(url);
    const client = new Client(ws, path);
    clients.push(client);
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${url}: no handshake within ${FRAME_TIMEOUT_MS} ms`)), FRAME_TIMEOUT_MS);
      ws.once('open', () => {
        clearTimeout(timer);
        res(client);
      });
      ws.once('unexpected-response', (_req, resp) => {
        clearTimeout(timer);
        rej(new Error(`${url}: HTTP ${resp.statusCode} instead of an upgrade`));
      });
      ws.once('error', (e) => {
        clearTimeout(timer);
        rej(new Error(`${url}: ${e.message}`));
      });
    });
  }

  /** Opens a JSON protocol connection and checks its welcome frame. */
  static async openJson(path = '/ws') {
    const client = await Client.open(path);
    const welcome = await client.nextJson();
    assert.equal(welcome.type, 'welcome', `first frame on ${path}: ${JSON.stringify(welcome)}`);
    assert.equal(typeof welcome.node, 'string');
    assert.ok(welcome.node.length > 0, 'welcome.node is empty');
    assert.equal(typeof welcome.connection, 'string');
    assert.ok(welcome.connection.length > 0, 'welcome.connection is empty');
    client.welcome = welcome;
    return client;
  }

  /** The next frame: { data: Buffer, isBinary }. */
  next(timeoutMs = FRAME_TIMEOUT_MS) {
    if (this.inbox.length > 0) return Promise.resolve(this.inbox.shift());
    if (this.closed) {
      return Promise.reject(new Error(`${this.label}: closed (${this.closed.code} ${this.closed.reason})`));
    }
    return new Promise((res, rej) => {
      const waiter = {
        resolve: (f) => {
          clearTimeout(timer);
          res(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          rej(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        rej(new Error(`${this.label}: no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** The next frame, which must be a text frame holding JSON. */
  async nextJson(timeoutMs) {
    const frame = await this.next(timeoutMs);
    assert.equal(frame.isBinary, false, `${this.label}: expected a text frame`);
    return JSON.parse(frame.data.toString('utf8'));
  }

  /** The next frame, which must be a text frame; returns its text. */
  async nextText(timeoutMs) {
    const frame = await this.next(timeoutMs);
    assert.equal(frame.isBinary, false, `${this.label}: expected a text frame`);
    return frame.data.toString('utf8');
  }

  /** The next frame, which must be a binary frame; returns its bytes. */
  async nextBinary(timeoutMs) {
    const frame = await this.next(timeoutMs);
    assert.equal(frame.isBinary, true, `${this.label}: expected a binary frame`);
    return frame.data;
  }

  /** Asserts that no frame arrives within `ms`. */
  async expectNothing(ms) {
    await new Promise((r) => setTimeout(r, ms));
    assert.deepEqual(
      this.inbox.map((f) => (f.isBinary ? [...f.data] : f.data.toString('utf8'))),
      [],
      `${this.label}: expected no frames`,
    );
  }

  sendJson(obj) {
    this.ws.send(JSON.stringify(obj));
  }

  send(data) {
    this.ws.send(data);
  }

  terminate() {
    this.ws.terminate();
  }
}

test('JSON protocol: welcome, subscribe ack, publish ack, delivery', { timeout: TEST_TIMEOUT_MS }, async () => {
  const chat = topic('chat');
  const sub = await Client.openJson();
  sub.sendJson({ op: 'subscribe', topics: [chat], id: 1 });
  assertFrame(await sub.nextJson(), { type: 'ack', id: 1 });

  const pub = await Client.openJson();
  assert.notEqual(pub.welcome.connection, sub.welcome.connection);
  assert.equal(pub.welcome.node, sub.welcome.node);
  pub.sendJson({ op: 'publish', topic: chat, data: { n: 1 }, id: 'p1' });
  assertFrame(await pub.nextJson(), { type: 'ack', id: 'p1' });

  assertFrame(await sub.nextJson(), { type: 'message', topic: chat, data: { n: 1 } });
  await pub.expectNothing(100);
});

test('/ws?topics= subscribes at connect', { timeout: TEST_TIMEOUT_MS }, async () => {
  const a = topic('a');
  const b = topic('b');
  const sub = await Client.openJson(`/ws?topics=${a},${b}`);
  const pub = await Client.openJson();

  pub.sendJson({ op: 'publish', topic: a, data: 'on a', id: 1 });
  assertFrame(await pub.nextJson(), { type: 'ack', id: 1 });
  assertFrame(await sub.nextJson(), { type: 'message', topic: a, data: 'on a' });

  pub.sendJson({ op: 'publish', topic: b, data: [1, 2], id: 2 });
  assertFrame(await pub.nextJson(), { type: 'ack', id: 2 });
  assertFrame(await sub.nextJson(), { type: 'message', topic: b, data: [1, 2] });
});

test('raw mode echoes text and binary frames to the sender', { timeout: TEST_TIMEOUT_MS }, async () => {
  const raw = await Client.open(`/raw/${topic('echo')}`);
  raw.send('hello');
  assert.equal(await raw.nextText(), 'hello');
  raw.send(Buffer.from([1, 2, 3]));
  assert.deepEqual([...(await raw.nextBinary())], [1, 2, 3]);
});

test('raw mode with ?echo=false does not receive its own frames', { timeout: TEST_TIMEOUT_MS }, async () => {
  const t = topic('echo');
  const quiet = await Client.open(`/raw/${t}?echo=false`);
  const other = await Client.open(`/raw/${t}`);

  // `other` sees its own echo, so both are subscribed; `quiet` still gets others' frames.
  other.send('sync');
  assert.equal(await other.nextText(), 'sync');
  assert.equal(await quiet.nextText(), 'sync');

  quiet.send('from quiet');
  assert.equal(await other.nextText(), 'from quiet');
  quiet.send(Buffer.from([9, 8]));
  assert.deepEqual([...(await other.nextBinary())], [9, 8]);
  await quiet.expectNothing(300);
});

test('payloads cross between raw and JSON subscribers', { timeout: TEST_TIMEOUT_MS }, async () => {
  const t = topic('mixed');
  const json = await Client.openJson();
  json.sendJson({ op: 'subscribe', topics: [t], id: 'sub' });
  assertFrame(await json.nextJson(), { type: 'ack', id: 'sub' });
  const raw = await Client.open(`/raw/${t}`);
  const publisher = await Client.openJson();

  // Raw text reaches JSON subscribers as a JSON string.
  raw.send('raw text "quoted" \u00e9');
  assert.equal(await raw.nextText(), 'raw text "quoted" \u00e9');
  assertFrame(await json.nextJson(), { type: 'message', topic: t, data: 'raw text "quoted" \u00e9', encoding: undefined });

  // A JSON string reaches raw subscribers unquoted.
  publisher.sendJson({ op: 'publish', topic: t, data: 'json "string"', id: 3 });
  assertFrame(await publisher.nextJson(), { type: 'ack', id: 3 });
  assert.equal(await raw.nextText(), 'json "string"');
  assertFrame(await json.nextJson(), { type: 'message', topic: t, data: 'json "string"' });

  // Raw binary reaches JSON subscribers as base64.
  const bytes = Buffer.from([0, 1, 2, 250, 255]);
  raw.send(bytes);
  assert.deepEqual([...(await raw.nextBinary())], [...bytes]);
  assertFrame(await json.nextJson(), {
    type: 'message',
    topic: t,
    data: bytes.toString('base64'),
    encoding: 'base64',
  });
});

test('invalid JSON gets an error frame and the connection stays open', { timeout: TEST_TIMEOUT_MS }, async () => {
  const c = await Client.openJson();
  c.send('{"op": "subscribe", not json');
  const err = await c.nextJson();
  assert.equal(err.type, 'error');
  assert.equal(err.code, 'invalid_json');
  assert.equal(typeof err.message, 'string');
  assert.equal(err.id, undefined);

  c.sendJson({ op: 'ping', id: 5 });
  assertFrame(await c.nextJson(), { type: 'pong', id: 5 });
  assert.equal(c.closed, null);
});
