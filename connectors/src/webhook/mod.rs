//! Webhook ingest. So far: signature verification ([`signature`]) for the common schemes, and
//! the durable log ([`log`]) a request is written to before it is acknowledged, with the
//! partition reader the dataflow reads it through. The HTTP server and the source config come
//! with the rest of the webhook issue.

pub mod log;
pub mod signature;

pub use log::{Appended, WebhookLog, WebhookReader};
pub use signature::{Rejection, Scheme, Verifier};
