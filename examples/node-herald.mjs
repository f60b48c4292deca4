// Example: Node with herald.js. Subscribes a topic, publishes one message to it and exits 0
// once that message came back (1 on an error or after 10 s).
//
//   npm install ws            (Node 18-21 have no global WebSocket)
//   HERALD_URL=ws://127.0.0.1:8080 node node-herald.mjs
//
// Outside this repository, import "herald-client" (npm install ./clients/js) instead of the
// relative path.
import WebSocket from "ws";
import { Herald } from "../clients/js/herald.js";

const url = process.env.HERALD_URL || "ws://127.0.0.1:8080";
const topic = process.env.HERALD_TOPIC || "examples.node-herald";
const nonce = `node-herald-${process.pid}-${Date.now()}`;

const client = new Herald(url, { WebSocket, reconnect: false });
const fail = (why) => {
  console.error(`error: ${why}`);
  client.close();
  process.exit(1);
};
const timer = setTimeout(() => fail("no message of ours within 10 s"), 10_000);
client.on("error", (e) => console.error("client error:", e.code || e.message));

const sub = client.subscribe(topic, (data, meta) => {
  console.log(`received on ${meta.topic}:`, JSON.stringify(data));
  if (data && data.nonce === nonce) {
    console.log("got our own message back");
    clearTimeout(timer);
    client.close();
  }
});
try {
  await sub.ready;
  console.log(`subscribed ${topic}`);
  await client.publish(topic, { from: "node-herald", nonce, text: "hello" });
  console.log("published, ack received");
} catch (e) {
  fail(`${e.code || "error"}: ${e.message}`);
}
