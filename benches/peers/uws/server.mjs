// uWebSockets.js (v20 binaries, from npm's `uws-pack`) speaking the part of Herald's JSON
// protocol that herald-loadtest uses, so the same generator measures uWS and Herald alike:
// the welcome frame, `?topics=` and `subscribe` (acknowledged), `publish` (not
// acknowledged, no `id` from the generator) and `ping`. Deliveries have Herald's shape,
// built once per publish and handed to uWS's own topic fan-out (`app.publish`).
//
//   node server.mjs [port]        (listens on 127.0.0.1 only)
import { App, DISABLED } from 'uws-pack';

const port = Number(process.argv[2] || 18600);
let nextConn = 0;
const app = App();

app.ws('/ws', {
  compression: DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 4 * 1024 * 1024,
  idleTimeout: 120,
  upgrade: (res, req, context) => {
    const topics = req.getQuery('topics');
    res.upgrade(
      { topics: topics ? decodeURIComponent(topics).split(',') : [] },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    for (const t of ws.getUserData().topics) ws.subscribe(t);
    ws.send(`{"type":"welcome","node":"uws","conn":"${nextConn++}"}`, false);
  },
  message: (ws, message) => {
    let m;
    try {
      m = JSON.parse(Buffer.from(message).toString());
    } catch {
      ws.send('{"type":"error","code":"invalid_json","message":"not JSON"}', false);
      return;
    }
    if (m.op === 'publish') {
      const frame = `{"type":"message","topic":${JSON.stringify(m.topic)},"data":${JSON.stringify(m.data)}}`;
      app.publish(m.topic, frame, false);
    } else if (m.op === 'subscribe') {
      for (const t of m.topics) ws.subscribe(t);
      if (m.id !== undefined) ws.send(`{"type":"ack","id":${JSON.stringify(m.id)}}`, false);
    } else if (m.op === 'ping') {
      ws.send('{"type":"pong"}', false);
    }
  },
});

app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    console.error(`uws peer: cannot listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`uws peer on ws://127.0.0.1:${port}/ws`);
});
