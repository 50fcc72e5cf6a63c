//! postwire: a queue-backed SMTP delivery service.
//!
//! Two pipelines, each with one home: [`accept`] (validate → render → commit with
//! idempotency and outbox → publish) and [`delivery`] (claim → send → decide → record).
//! Data flows one way: [`api`] → [`accept`] → [`store`] / [`queue`]; [`queue`] →
//! [`worker`] → [`delivery`] → [`smtp`] → [`store`]. [`startup`] wires the parts for a
//! role; `main.rs` only parses the command line. See `ARCHITECTURE.md`.

pub mod accept;
pub mod admin;
pub mod api;
pub mod batcher;
pub mod config;
pub mod connections;
pub mod console;
pub mod crypto;
pub mod delivery;
pub mod domain;
pub mod keys;
pub mod metrics;
pub mod mime;
pub mod queue;
pub mod reconcile;
pub mod retention;
pub mod smtp;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

pub use startup::{Application, Role};
