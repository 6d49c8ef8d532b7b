# sqs-forwarder: the two commands that matter are `make demo` and `make test`.
# Both start LocalStack by themselves (localstack/start.sh installs it into a venv).

CARGO ?= cargo
export FORWARDER_TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: all build demo test unit lint fmt localstack localstack-stop clean

all: build

build:
	$(CARGO) build

## demo: LocalStack, demo queues, sample events, the worker until idle, what arrived.
demo: build
	./localstack/demo.sh

## test: every test, against a real LocalStack (started here if it is not running).
test: localstack
	$(CARGO) test --all-targets

## unit: the tests that need no LocalStack.
unit:
	$(CARGO) test --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

localstack:
	./localstack/start.sh

localstack-stop:
	./localstack/stop.sh

clean:
	$(CARGO) clean
