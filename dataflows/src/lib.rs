//! sluice: pipeline configuration, dataflow assembly and the `sluice` command.
//!
//! This crate turns a pipeline file into a running timely computation over the operators of
//! sluice-operators and the connectors of sluice-connectors. It owns no operator logic and no
//! I/O format of its own beyond the output lines.
//!
//! | file | what it owns |
//! |---|---|
//! | `config.rs` | [`PipelineConfig`]: the TOML pipeline file (durations typed at load, errors with key and line) and its validation |
//! | `pipeline/` | [`run`]: the plan, connectors, stages and the commit loop (`mod.rs`, `stages.rs`, `worker.rs`) |
//! | `outputs.rs` | the JSONL formats of the output streams |
//! | `monitor.rs` | the monitor thread: freshness samples, SLO intervals, `slo` records |
//! | `prometheus.rs` | `/metrics` in the Prometheus text format |
//! | `reconcile.rs` | the `[reconcile]` pipeline: its section, input decoding and log, the reconciliation dataflow |
//! | `reconcile_demo.rs`, `reconcile_demo.toml` | `sluice demo --reconcile`: provider webhooks and ledger changes with the incident's faults; its pipeline file |
//! | `reference.rs` | `sluice drift reference`: drift reference files from samples |
//! | `serve.rs` | feature serving: `/v1/features/{entity}`, `/v1/features:batch` from committed snapshots |
//! | `server.rs` | the HTTP server (axum): `/metrics`, `/healthz` |
//! | `checkpoint.rs` | `sluice checkpoint list\|inspect` and the restart report: what a state directory holds |
//! | `demo.rs`, `demo.toml` | `sluice demo`: the embedded default pipeline (a pipeline file, `demo.toml`, with what the flags decide) and its progress display |
//! | `main.rs` | the command line |

pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod monitor;
pub mod outputs;
pub mod pipeline;
pub mod preflight;
pub mod prometheus;
pub mod reconcile;
pub mod reconcile_demo;
pub mod reference;
pub mod serve;
pub mod server;

pub use config::{ConfigError, PipelineConfig};
pub use pipeline::{run, RunControl, RunError, RunSummary, WorkerError};
