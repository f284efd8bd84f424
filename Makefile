# The two commands of the README: `make run` and `make test`.
CARGO ?= cargo

PYTHON ?= python3

.PHONY: run quick test lint unit-and-integration api-check helm-check prometheus-check docs-check fuzz bench build release clean cluster cluster-down

## Run the server on 0.0.0.0:8000 with the embedded engine (no Redis needed): its data file is
## kept in ./enigma-data (delete it to start afresh). ENIGMA__ENGINE=memory keeps nothing;
## set ENIGMA__REDIS__URL=redis://127.0.0.1:6379/ for the Redis engine. Builds the CLI with it
## (one build, the `quick` profile of Cargo.toml): target/quick/enigma-server, target/quick/enigma.
run: export ENIGMA__DATA_DIR ?= $(CURDIR)/enigma-data
run: quick
	$(CARGO) run $(QUICK) --bin enigma-server

## The relay and the CLI, built the way `make run` uses them: the `quick` profile, the client
## crates, the system allocator (jemalloc, a long C build, is for deployments).
QUICK = --profile quick --locked --no-default-features --features client
quick:
	$(CARGO) build $(QUICK) --bin enigma-server --bin enigma

## Every test: formatting, lints, unit tests, integration tests (real redis-server processes).
test: lint unit-and-integration api-check helm-check prometheus-check wasm-check browser-check docs-check

lint:
	$(CARGO) fmt --all -- --check
	timeout 1200 $(CARGO) clippy --all-targets --locked -- -D warnings
	timeout 1200 $(CARGO) clippy --locked --no-default-features --lib --bin enigma-server -- -D warnings
	timeout 1200 $(CARGO) clippy -p enigma-verify --all-targets --locked --features testing,wasm -- -D warnings

# Bounded: a hung test fails the run after 20 minutes instead of holding CI. The descriptor
# limit is raised for the 1,000-socket rings. `--all-targets` skips doctests: they run apart.
unit-and-integration:
	ulimit -n $$(ulimit -Hn) && timeout 1200 $(CARGO) test --all-targets --locked
	timeout 600 $(CARGO) test -p enigma-verify --all-targets --locked --features testing,wasm
	timeout 600 $(CARGO) test --doc --locked

## The HTTP API against its own OpenAPI document: schemathesis, all checks, live memory-engine server.
api-check:
	bash tests/api/schemathesis.sh

## Each fuzz target for FUZZ_SECONDS (default 600) on the nightly toolchain; what the fuzzers keep
## lands in fuzz/corpus/ (minimised) and crashes in fuzz/artifacts/: commit both, `make test` replays them.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= client_frame envelope public_key claim_key token doorbell config
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

## The Helm chart, linted and rendered by the real Helm engine, every object validated.
helm-check:
	timeout 600 $(PYTHON) tests/helm/check_chart.py

## The benchmark figures docs/operations.md quotes are docs/BENCHMARKS.md's latest run (its
## marked spans, which `make bench` rewrites), and every target there says met or missed.
docs-check:
	$(PYTHON) scripts/sizing.py --check

## The standard load scenarios (release build); writes docs/BENCHMARKS.md and the benchmark
## figures of docs/operations.md.
bench:
	bash scripts/bench.sh

## Redis, 3 replicas and an nginx load balancer on 127.0.0.1:8000 (deploy/local/).
cluster:
	bash deploy/local/cluster.sh up

cluster-down:
	bash deploy/local/cluster.sh down

## Rewrites docs/vectors/v1.json from its generator (tests/it/vectors/); `make test` fails while
## the file differs from what the generator writes (docs/vectors/README.md).
.PHONY: vectors
vectors:
	$(CARGO) test --locked --test it vectors::write_vectors -- --ignored --exact

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

clean:
	$(CARGO) clean

## The alert rules: `promtool check rules`, and promtool unit tests (each alert fires on its
## condition and stays silent otherwise; deploy/prometheus/tests/).
prometheus-check:
	$(PYTHON) tests/prometheus/check_rules.py


## A long run (SOAK_MINUTES, default 30) at half the saturation rate, sampled every minute:
## relay RSS/CPU, Redis memory/keys; pass/fail lines, CSV and plot appended to docs/BENCHMARKS.md.
.PHONY: soak
soak:
	bash scripts/soak.sh
## The web page at / in Debian's headless chromium (playwright-core, node's test runner): two
## browser users, browser <-> CLI, a server restart, RFC 9180 vectors and the project's own
## (docs/vectors/); screenshots go to a temporary directory (`make screenshots` refreshes
## docs/screenshots/).
browser-check:
	$(CARGO) build --locked --bins
	cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && node --test --test-concurrency=1

## The browser tests, writing their screenshots to docs/screenshots/ (commit what changed).
.PHONY: screenshots
screenshots:
	$(CARGO) build --locked --bins
	cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && ENIGMA_SCREENSHOTS=../../docs/screenshots node --test --test-concurrency=1

## The key directory's checks for the web page: crates/verify compiled to WebAssembly
## (web/verify/enigma_verify.wasm, committed: the page needs no build step). Reproducible: the
## pinned rustc, Cargo.lock, the `wasm` profile of Cargo.toml, and the machine's paths remapped
## out of the binary. `make wasm-check` (part of `make test`) fails while the committed module
## differs from a fresh build.
WASM_RUSTC = 1.95.0
WASM_TARGET = wasm32-unknown-unknown
WASM_OUT = web/verify/enigma_verify.wasm
WASM_BUILD = target/wasm/$(WASM_TARGET)/wasm/enigma_verify.wasm
CARGO_HOME_DIR = $(or $(CARGO_HOME),$(HOME)/.cargo)
.PHONY: wasm wasm-build wasm-check
wasm-build:
	@rustc --version | grep -q '^rustc $(WASM_RUSTC) ' || { echo "make wasm: needs rustc $(WASM_RUSTC) (found: $$(rustc --version))"; exit 1; }
	@rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)
	CARGO_TARGET_DIR=target/wasm \
	CARGO_ENCODED_RUSTFLAGS="$$(printf '%s\037%s' '--remap-path-prefix=$(CARGO_HOME_DIR)=/cargo' '--remap-path-prefix=$(CURDIR)=/enigma')" \
	$(CARGO) rustc -p enigma-verify --lib --locked --profile wasm --target $(WASM_TARGET) --features wasm --crate-type cdylib

wasm: wasm-build
	mkdir -p $(dir $(WASM_OUT))
	cp $(WASM_BUILD) $(WASM_OUT)
	@echo "$(WASM_OUT): $$(wc -c < $(WASM_OUT)) bytes, sha256 $$(sha256sum $(WASM_OUT) | cut -c1-16)…"

wasm-check: wasm-build
	@cmp $(WASM_BUILD) $(WASM_OUT) || { echo "$(WASM_OUT) is not what \`make wasm\` builds: run make wasm and commit it"; exit 1; }
	@echo "$(WASM_OUT) is what make wasm builds ($$(wc -c < $(WASM_OUT)) bytes)"

## Rewrites docs/vectors/directory-v1.json (the key directory's answers and refusals) from its
## generator (crates/verify/tests/vectors.rs); `make test` fails while the file differs.
.PHONY: directory-vectors
directory-vectors:
	$(CARGO) test --locked -p enigma-verify --features testing,wasm --test vectors write_vectors -- --ignored --exact
