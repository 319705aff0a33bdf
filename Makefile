# aft: `make run` starts the proxy on the embedded backend, `make test` runs every test.

CARGO ?= cargo

.PHONY: run test deps build lint unit clients bench clean

## Run the proxy on 127.0.0.1:7379 with conf/aft.toml (embedded backend, data in ./data).
run:
	$(CARGO) run --release --bin aft -- serve --config conf/aft.toml

## Install what the tests need (redis-server, redis-cli, Node.js, Python venv) if missing.
deps:
	@scripts/deps.sh

build:
	$(CARGO) build --all-targets

## Formatting, lints and documentation links, as CI enforces them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items

# Integration-test modules that do not use AFT_TEST_BACKEND (their own backends, or none).
NOT_ON_BACKEND = --skip crash:: --skip recovery:: --skip redis_backend:: --skip core_props:: --skip gc:: --skip isolation:: --skip nodes::

## Unit and integration tests (real sockets, real redis-server for comparisons), then the
## integration tests again with aft on DynamoDB (an emulator inside the test process), on
## Redis and on a 3-master Redis Cluster (redis-server processes on free loopback ports,
## started and stopped by the tests).
unit:
	$(CARGO) test --all-targets
	AFT_TEST_BACKEND=dynamodb $(CARGO) test --test it -- $(NOT_ON_BACKEND) --skip dynamodb::
	AFT_TEST_BACKEND=redis $(CARGO) test --test it -- $(NOT_ON_BACKEND)
	AFT_TEST_BACKEND=redis-cluster $(CARGO) test --test it -- $(NOT_ON_BACKEND)

## Real client libraries (redis-py, ioredis, redis-cli) against the real binary, on the
## embedded backend and on DynamoDB (the dynamodb_emulator example).
clients: build
	tests/clients/run.sh target/debug/aft
	AFT_TEST_BACKEND=dynamodb tests/clients/run.sh target/debug/aft

## Throughput of aft on the Redis backend against Redis itself, in one run (release build),
## then the micro-benchmarks of the hot paths (criterion). Not part of `make test`.
bench:
	scripts/bench.sh
	$(CARGO) bench --bench core

## Everything.
test: deps lint unit clients

clean:
	$(CARGO) clean
	rm -rf data
