# aft: `make run` starts the proxy on the embedded backend, `make test` runs every test.

CARGO ?= cargo

.PHONY: run test deps build lint unit clients clean

## Run the proxy on 127.0.0.1:7379 with conf/aft.toml (embedded backend, data in ./data).
run:
	$(CARGO) run --release --bin aft -- serve --config conf/aft.toml

## Install what the tests need (redis-server, redis-cli, Node.js, Python venv) if missing.
deps:
	@scripts/deps.sh

build:
	$(CARGO) build --all-targets

## Formatting and lints, as CI enforces them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## Unit and integration tests (real sockets, real redis-server for comparisons).
unit:
	$(CARGO) test --all-targets

## Real client libraries (redis-py, ioredis, redis-cli) against the real binary.
clients: build
	tests/clients/run.sh target/debug/aft

## Everything.
test: deps lint unit clients

clean:
	$(CARGO) clean
	rm -rf data
