// Example: Node with the plain `ws` package and Herald's JSON protocol (docs/protocol.md),
// no client library. Subscribes, publishes one message and exits 0 once it came back
// (1 on an error or after 10 s).
//
//   npm install ws
//   HERALD_URL=ws://127.0.0.1:8080 node node-ws.mjs
import WebSocket from "ws";

const base = (process.env.HERALD_URL || "ws://127.0.0.1:8080").replace(/\/+$/, "");
const url = base.endsWith("/ws") ? base : `${base}/ws`;
const topic = process.env.HERALD_TOPIC || "examples.node-ws";
const nonce = `node-ws-${process.pid}-${Date.now()}`;

const ws = new WebSocket(url);
const fail = (why) => {
  console.error(`error: ${why}`);
  process.exit(1);
};
const timer = setTimeout(() => fail("no message of ours within 10 s"), 10_000);
ws.on("error", (e) => fail(e.message));
ws.on("close", (code, reason) => fail(`closed ${code} ${reason}`));

ws.on("message", (raw) => {
  const msg = JSON.parse(raw.toString());
  if (msg.type === "welcome") {
    console.log(`connected to node ${msg.node} as connection ${msg.connection}`);
    ws.send(JSON.stringify({ op: "subscribe", topics: [topic], id: 1 }));
  } else if (msg.type === "ack" && msg.id === 1) {
    console.log(`subscribed ${topic}`);
    ws.send(JSON.stringify({ op: "publish", topic, data: { from: "node-ws", nonce, text: "hello" }, id: 2 }));
  } else if (msg.type === "ack" && msg.id === 2) {
    console.log("published, ack received");
  } else if (msg.type === "message") {
    console.log(`received on ${msg.topic}:`, JSON.stringify(msg.data));
    if (msg.data && msg.data.nonce === nonce) {
      console.log("got our own message back");
      clearTimeout(timer);
      ws.removeAllListeners("close");
      ws.close(1000);
    }
  } else if (msg.type === "error") {
    fail(`${msg.code}: ${msg.message}`);
  }
});
