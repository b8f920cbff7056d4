# Entry points only; the work is in cargo and in .ci/ scripts.
# mold links much faster than ld on two cores; used when installed (.ci/run installs
# it). `mold -run` swaps the linker without touching RUSTFLAGS, so builds with and
# without it share one cache.
CARGO ?= $(if $(shell command -v mold 2>/dev/null),mold -run cargo,cargo)

.PHONY: run build test lint fmt bench clean-test-dbs

## Build and run all eight services in one process (SQLite, in-process bus)
run:
	$(CARGO) run --release --bin hx -- up

build:
	$(CARGO) build --release --bin hx

## The whole suite: unit, contract and end-to-end tests on SQLite + in-process bus and
## on PostgreSQL + NATS (both must be reachable: see README), then lints.
test:
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Gateway path vs in-process storage calls; writes bench/results/foundation.json
bench:
	$(CARGO) run --release -p helix-bench -- --out bench/results/foundation.json
