#!/usr/bin/env bash
# Makes sure the system tools Herald's tests need are present on a Debian 12 machine,
# installing only what is missing; safe to run any number of times.
#   - redis-server: the testkit starts its own redis-server processes on free loopback
#     ports. This script never starts, stops, flushes or relies on a Redis on 6379
#     (installing the package may auto-start Debian's service there; we leave it alone).
#   - kill (procps): the testkit pauses/resumes redis-server with SIGSTOP/SIGCONT.
#   - haproxy and nginx: the fleet tests run a real HAProxy in front of herald processes and
#     check deploy/'s configs with `haproxy -c` and `nginx -t` (never on fixed ports).
#   - make, node and npm, and the `ws` package in tests/interop (npm ci from the lockfile).
#   - curl, python3 and python3-venv for the examples' test (examples/; the Makefile puts
#     Python's websockets in a venv under the target directory, npm ci gives examples/ ws).
#   - chromium (Debian's, /usr/bin/chromium) and playwright-core in clients/js for the
#     browser tests; npm never downloads a browser (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP="$ROOT/tests/interop"
JS_CLIENT="$ROOT/clients/js"
APT_LOG="$(mktemp -t herald-ensure-deps.XXXXXX)"
trap 'rm -f "$APT_LOG"' EXIT

die() {
    echo "ensure-deps: $*" >&2
    exit 1
}

SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n)
fi

APT_UPDATED=0
# apt_install PKG...: installs Debian packages, running `apt-get update` at most once.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*, and apt-get is not available to install it"
    echo "ensure-deps: installing $* (apt-get)"
    if [[ $APT_UPDATED -eq 0 ]]; then
        if ! "${SUDO[@]}" apt-get update -qq >"$APT_LOG" 2>&1; then
            tail -n 20 "$APT_LOG" >&2
            die "apt-get update failed"
        fi
        APT_UPDATED=1
    fi
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >"$APT_LOG" 2>&1; then
        tail -n 20 "$APT_LOG" >&2
        die "apt-get install $* failed"
    fi
}

# haproxy and nginx live in /usr/sbin, which is not on a normal user's PATH on Debian.
PATH="$PATH:/usr/sbin:/sbin"

# System packages: command -> Debian package.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
fi
for cmd in redis-server kill haproxy nginx make node npm curl python3; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing after installation"
done
[[ -x /usr/bin/chromium ]] || die "/usr/bin/chromium is still missing after installation"

# Node's ws for tests/interop: reinstall when absent or older than the lockfile.
stamp="$INTEROP/node_modules/.package-lock.json"
if [[ ! -d "$INTEROP/node_modules/ws" || ! -f "$stamp" || "$INTEROP/package-lock.json" -nt "$stamp" ]]; then
    echo "ensure-deps: npm ci in tests/interop"
    (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/interop failed"
    touch "$stamp"
fi

# playwright-core for the browser tests in clients/js (drives /usr/bin/chromium; no download).
stamp="$JS_CLIENT/node_modules/.package-lock.json"
if [[ -f "$JS_CLIENT/package-lock.json" ]] &&
    [[ ! -d "$JS_CLIENT/node_modules/playwright-core" || ! -f "$stamp" || "$JS_CLIENT/package-lock.json" -nt "$stamp" ]]; then
    echo "ensure-deps: npm ci in clients/js"
    (cd "$JS_CLIENT" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
        die "npm ci in clients/js failed"
    touch "$stamp"
fi

echo "ensure-deps: ok (redis-server $(redis-server --version | sed -n "s/.*v=\([^ ]*\).*/\1/p"), node $(node --version))"
