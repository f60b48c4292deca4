"""Example: Python with the `websockets` package and Herald's JSON protocol.

Subscribes a topic, publishes one message to it and exits 0 once that message came back
(1 on an error or after 10 s).

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    HERALD_URL=ws://127.0.0.1:8080 .venv/bin/python subscribe_publish.py
"""

import asyncio
import json
import os
import sys

import websockets


async def main() -> None:
    base = os.environ.get("HERALD_URL", "ws://127.0.0.1:8080").rstrip("/")
    url = base if base.endswith("/ws") else base + "/ws"
    topic = os.environ.get("HERALD_TOPIC", "examples.python")
    nonce = f"python-{os.getpid()}"

    async with websockets.connect(url) as ws:
        welcome = json.loads(await ws.recv())
        print(f"connected to node {welcome['node']} as connection {welcome['connection']}")
        await ws.send(json.dumps({"op": "subscribe", "topics": [topic], "id": 1}))
        data = {"from": "python", "nonce": nonce, "text": "hello"}
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "error":
                raise RuntimeError(f"{msg['code']}: {msg['message']}")
            if msg["type"] == "ack" and msg.get("id") == 1:
                print(f"subscribed {topic}")
                await ws.send(json.dumps({"op": "publish", "topic": topic, "data": data, "id": 2}))
            elif msg["type"] == "ack" and msg.get("id") == 2:
                print("published, ack received")
            elif msg["type"] == "message":
                print(f"received on {msg['topic']}: {json.dumps(msg['data'])}")
                if isinstance(msg["data"], dict) and msg["data"].get("nonce") == nonce:
                    print("got our own message back")
                    return
    raise RuntimeError("connection closed before our message came back")


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), timeout=10))
    except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - an example reports and exits
        print(f"error: {e!r}", file=sys.stderr)
        sys.exit(1)
