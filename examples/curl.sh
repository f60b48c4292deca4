#!/usr/bin/env bash
# Example: a backend with curl and the admin HTTP API (docs/http-api.md). Publishes one
# message to a topic with history, then reads it back from the topic's history and exits 0
# once it is there (curl cannot hold a WebSocket, so history is where it sees its message).
#
#   HERALD_ADMIN=http://127.0.0.1:9090 HERALD_TOPIC=demo.chat ./curl.sh
#
# The topic must keep history ([[history]] in the config; `demo.chat` does on a `make demo`
# node). Add -H "Authorization: Bearer $HERALD_KEY" to both calls when admin.api_keys is set.
set -euo pipefail

admin="${HERALD_ADMIN:-http://127.0.0.1:9090}"
topic="${HERALD_TOPIC:-demo.chat}"
nonce="curl-$$-$(date +%s%N)"

answer=$(curl -fsS --max-time 10 -H 'content-type: application/json' \
    -d "{\"topic\":\"$topic\",\"data\":{\"from\":\"curl\",\"nonce\":\"$nonce\",\"text\":\"hello\"}}" \
    "$admin/api/publish")
echo "published: $answer"

# The answer of a history topic carries the message's offset: read from just before it.
offset=$(sed -n 's/.*"offset":\([0-9]*\).*/\1/p' <<<"$answer")
if [[ -z "$offset" ]]; then
    echo "error: $topic keeps no history (no offset in the answer)" >&2
    exit 1
fi
page=$(curl -fsS --max-time 10 "$admin/api/topics/$topic/history?since=$((offset - 1))&limit=1")
echo "history: $page"
if grep -q "\"nonce\":\"$nonce\"" <<<"$page"; then
    echo "got our own message back"
else
    echo "error: our message is not in $topic's history" >&2
    exit 1
fi
