//! Every integration test, in one binary (linked once, as zero-to-production's
//! `tests/api`): one module per area, and [`helpers`], the harness they share.
//!
//! They run against the real LocalStack and PostgreSQL that `make test` provides, most
//! of them with the real binary (`CARGO_BIN_EXE_sqs-forwarder`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod attributes;
mod bad_input;
mod batching;
mod cargo_lambda;
mod classify;
mod cli;
mod crash;
mod destinations;
mod effectively_once;
mod fair_queues;
mod faults;
mod forwarding;
mod health;
mod http_pool;
mod indexer;
mod isolation;
mod lambda;
mod large_events;
mod metrics_backends;
mod offload;
mod otlp;
mod outage;
mod pack;
mod prometheus;
mod redrive;
mod reload;
mod routes;
mod secrets;
mod shape;
mod shared_cache;
mod worker;
