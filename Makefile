# Entry points only; the work is in cargo and in .ci/ scripts.
# mold links much faster than ld on two cores; used when installed (.ci/run installs
# it). `mold -run` swaps the linker without touching RUSTFLAGS, so builds with and
# without it share one cache.
CARGO ?= $(if $(shell command -v mold 2>/dev/null),mold -run cargo,cargo)

.PHONY: run build test lint fmt bench venv deploy-check helm-check image compose-up

## Build and run all eight services in one process (SQLite, in-process bus)
run:
	$(CARGO) run --release --bin hx -- up

build:
	$(CARGO) build --release --bin hx

## The whole suite: unit, contract and end-to-end tests on SQLite + in-process bus and
## on PostgreSQL + NATS (both must be reachable: see README), then lints, then the
## deployment checks.
test:
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) deploy-check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Gateway path vs in-process storage calls; writes bench/results/foundation.json
bench:
	$(CARGO) run --release -p helix-bench -- --out bench/results/foundation.json

## Python tools for deploy-check, pinned in deploy/requirements.txt, in .venv
venv: .venv/.installed

.venv/.installed: deploy/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r deploy/requirements.txt
	touch $@

## The container image every service runs from (needs a Docker engine)
image:
	docker build -f deploy/Dockerfile -t helix:local .

## The fleet in containers: NATS, PostgreSQL, Qdrant, migrations, eight services (needs Docker)
compose-up:
	docker compose up -d --build

## The Helm chart rendered and validated offline (part of deploy-check)
helm-check: deploy-check

## Offline checks of deploy/Dockerfile, docker-compose.yml and helm/helix against
## deploy/fleet.json, Kubernetes' and Compose's schemas (no cluster, no Docker engine)
deploy-check: venv
	.venv/bin/python deploy/check.py
