//! Rocket Rides services and the `rides` binary.
//!
//! # Layout
//!
//! - [`es`]: event sourcing, the driving part: the unit of work over an event store.
//! - [`rides`]: the ride service: runs a `POST /rides` through its atomic phases.
//! - [`http`]: the HTTP API (axum), one status table for errors.
//! - [`runtime`]: the consumer runtime: write a handler, the runtime reads, removes
//!   duplicates, checkpoints, follows cutovers, retries, parks and holds leases.
//! - [`services`]: the background services (streamer, consumer, completer, reaper, trimmer),
//!   each a testable single step inside a loop that stops on shutdown.
//! - [`faults`]: seeded fault injection (double sends, consumer crashes, API crashes).
//! - [`wiring`]: the only place that turns URLs into adapters.
//! - [`consumers`]: `rides consumer list|parked|retry-parked|remove`.
//! - [`cutover`]: swapping the log of a live system (`rides log cutover --to URL`).
//! - [`simulator`], [`demo`], [`cli`]: the load generator, the one-command demo, the CLI.
//! - [`bench`]: the project's own benchmarks (`rides bench log|store|relay|fleet`).
//! - [`telemetry`]: log format and destination (the demo logs to a file).
//! - [`config`]: the TOML config file under the environment and the flags, `rides config show`.
//! - [`metrics`]: the process's Prometheus registry and latency samples (`GET /metrics`).

pub mod bench;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod cutover;
pub mod demo;
pub mod es;
pub mod faults;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod repair;
pub mod rides;
pub mod runtime;
pub mod services;
pub mod simulator;
pub mod telemetry;
pub mod wiring;
