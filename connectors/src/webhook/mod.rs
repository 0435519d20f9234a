//! Webhook ingest. So far: signature verification ([`signature`]) for the common schemes; the
//! HTTP server, durable acknowledgement and the source come with the rest of the webhook issue.

pub mod signature;

pub use signature::{Rejection, Scheme, Verifier};
