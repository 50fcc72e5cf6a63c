//! postwire: a queue-backed SMTP delivery service.
//!
//! Data flows one way: [`api`] → [`store`] / [`queue`] → [`worker`] → [`smtp`] →
//! [`store`]. [`startup`] wires the parts for a role; `main.rs` only parses the command
//! line.

pub mod accept;
pub mod admin;
pub mod api;
pub mod batcher;
pub mod config;
pub mod connections;
pub mod crypto;
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
pub mod worker;

pub use startup::{Application, Role};
