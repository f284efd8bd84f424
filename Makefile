# The two commands of the README: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test lint unit-and-integration build release clean

## Run the server on 0.0.0.0:8000 with the embedded memory engine (no Redis needed).
## Set ENIGMA__REDIS__URL=redis://127.0.0.1:6379/ for the Redis engine.
run:
	$(CARGO) run --release --bin enigma-server

## Every test: formatting, lints, unit tests, integration tests (real redis-server processes).
test: lint unit-and-integration

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

unit-and-integration:
	$(CARGO) test --all-targets --locked

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

clean:
	$(CARGO) clean
