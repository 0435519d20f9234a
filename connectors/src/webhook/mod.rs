//! Webhook ingest: `[[sources]] type = "webhook"` ([`config`]) runs an HTTP server
//! ([`server`]) whose route verifies the signature ([`signature`]), writes the webhook to a
//! durable log ([`log`]) and only then answers 2xx; the dataflow reads the log as a partition.

pub mod config;
pub mod log;
pub mod server;
pub mod signature;

pub use config::WebhookSourceConfig;
pub use server::{Gate, WebhookServer};

pub use log::{Appended, WebhookLog, WebhookReader};
pub use signature::{Rejection, Scheme, Verifier};
