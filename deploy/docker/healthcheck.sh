#!/bin/bash
# Container health probe for the Herald image: exits 0 when `GET PATH` on the node's admin
# listener (127.0.0.1:PORT inside the container) answers 200 within 3 s. It needs nothing
# but bash (no curl in the image).
#   herald-healthcheck [PATH=/healthz] [PORT=9090]
# (No HERALD_* variable: the node warns about every HERALD_* name that is not a config key.)
set -u
path="${1:-/healthz}"
port="${2:-9090}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 3 status <&3 || exit 1
[[ "$status" == "HTTP/1.1 200 "* ]]
