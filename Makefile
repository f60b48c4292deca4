# Developer and CI entry points. `make test` is what .ci/run runs.
# Cargo honours CARGO_TARGET_DIR; the interop tests run the herald binary from there.

CARGO ?= cargo
ARGS ?=
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
HERALD_BIN ?= $(TARGET_DIR)/debug/herald
INTEROP := tests/interop
JS_CLIENT := clients/js

.PHONY: run build test deps fmt fmt-check clippy unit interop js examples bench

## run: a single-node broker with defaults (no Redis, no config); pass flags with ARGS="..."
run:
	$(CARGO) run --release -p herald-gateway --bin herald -- $(ARGS)

## demo: a release node with the demo pages on (HERALD_DEMO__ENABLED=true); open the URL it prints
.PHONY: demo
demo:
	$(CARGO) build --release -p herald-gateway --bin herald
	@echo "Herald demo: http://127.0.0.1:8080/demo/  (Ctrl-C stops the node)"
	HERALD_DEMO__ENABLED=true $(TARGET_DIR)/release/herald $(ARGS)

## build: release build of the whole workspace
build:
	$(CARGO) build --workspace --release

## test: deps, formatting, clippy, unit and integration tests, then the Node interop tests
## and the JavaScript client's tests (unit, then headless Chromium)
test:
	scripts/ensure-deps.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory interop
	$(MAKE) --no-print-directory js
	$(MAKE) --no-print-directory examples

## deps: install missing system tools (redis-server, chromium, node's ws and playwright-core)
deps:
	scripts/ensure-deps.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: cargo's tests only
unit:
	$(CARGO) test --workspace

## interop: the herald binary against an independent WebSocket client (node + ws)
interop: $(INTEROP)/node_modules/.package-lock.json
	$(CARGO) build -p herald-gateway --bin herald
	cd $(INTEROP) && HERALD_BIN='$(HERALD_BIN)' node --test

$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json $(INTEROP)/package.json
	cd $(INTEROP) && npm ci --no-audit --no-fund
	touch $@

## js: clients/js's unit tests (node:test), then its browser tests: the demo pages and
## herald.js in Debian's headless Chromium (/usr/bin/chromium, via playwright-core) against
## the herald binary; screenshots go to target/browser-artifacts/
js: $(JS_CLIENT)/node_modules/.package-lock.json
	$(CARGO) build -p herald-gateway --bin herald
	cd $(JS_CLIENT) && node --test test/unit/
	cd $(JS_CLIENT) && HERALD_BIN='$(HERALD_BIN)' node --test test/browser/

$(JS_CLIENT)/node_modules/.package-lock.json: $(JS_CLIENT)/package-lock.json $(JS_CLIENT)/package.json
	cd $(JS_CLIENT) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

## examples: runs every example in examples/ (Node with herald.js and with ws, Python,
## Rust, curl, the page in headless Chromium) against a herald node; Python's websockets
## goes into a venv under the target directory
EXAMPLES := examples
EXAMPLES_VENV := $(TARGET_DIR)/examples-venv
examples: $(EXAMPLES)/node_modules/.package-lock.json $(JS_CLIENT)/node_modules/.package-lock.json $(EXAMPLES_VENV)/.installed
	$(CARGO) build -p herald-gateway --bin herald
	$(CARGO) build -p herald-example
	cd $(EXAMPLES) && HERALD_BIN='$(HERALD_BIN)' EXAMPLES_PYTHON='$(EXAMPLES_VENV)/bin/python' \
	  EXAMPLES_RUST_BIN='$(TARGET_DIR)/debug/herald-example' node --test test/

$(EXAMPLES)/node_modules/.package-lock.json: $(EXAMPLES)/package-lock.json $(EXAMPLES)/package.json
	cd $(EXAMPLES) && npm ci --no-audit --no-fund
	touch $@

$(EXAMPLES_VENV)/.installed: $(EXAMPLES)/python/requirements.txt
	python3 -m venv '$(EXAMPLES_VENV)'
	'$(EXAMPLES_VENV)/bin/pip' install --quiet --disable-pip-version-check -r $(EXAMPLES)/python/requirements.txt
	touch $@

bench:
	$(CARGO) bench -p herald-benches

.PHONY: cluster cluster-down

## cluster: redis-server, three herald nodes and HAProxy on loopback (ports printed; state in .cluster/)
cluster:
	scripts/cluster.sh up

## cluster-down: stop exactly what `make cluster` started
cluster-down:
	scripts/cluster.sh down

.PHONY: bench-shards

## bench-shards: Redis CPU per cross-node message: one Redis, topics sharded over 3, a 3-master Redis Cluster (3 interleaved rounds, ~3 min)
bench-shards:
	$(CARGO) build --release -p herald-gateway -p herald-loadtest
	HERALD_BIN='$(TARGET_DIR)/release/herald' LOADTEST_BIN='$(TARGET_DIR)/release/herald-loadtest' scripts/bench-shards.sh

.PHONY: loadtest

## loadtest: ~30 s cross-node run of herald-loadtest on a local cluster (uses a running
## `make cluster`, else starts redis-server + 3 nodes and stops them after); scenario and
## flags with LOADTEST_ARGS="fanout -s 1000 -r max -d 10s", targets with LOADTEST_URLS=...
loadtest:
	$(CARGO) build --release -p herald-gateway -p herald-loadtest
	HERALD_BIN='$(TARGET_DIR)/release/herald' LOADTEST_BIN='$(TARGET_DIR)/release/herald-loadtest' scripts/loadtest-local.sh

.PHONY: fuzz

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (nightly; installs cargo-fuzz if missing).
## Not part of `make test`. One target: FUZZ_TARGETS=ws_frames. New corpus entries go to
## $(FUZZ_WORK), not to the small committed seeds in fuzz/corpus; crashes to fuzz/artifacts.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= ws_frames json_request envelope proxy_header token
FUZZ_WORK ?= $(TARGET_DIR)/fuzz-corpus
FUZZ_ARGS ?=
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	$(CARGO) +nightly fuzz build --target-dir '$(TARGET_DIR)/fuzz'
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p '$(FUZZ_WORK)'/$$t; \
	  dict=; [ -f fuzz/$$t.dict ] && dict=-dict=fuzz/$$t.dict; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO) +nightly fuzz run --target-dir '$(TARGET_DIR)/fuzz' $$t '$(FUZZ_WORK)'/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict $(FUZZ_ARGS); \
	done
