//! postwire's integration tests: the real PostgreSQL and RabbitMQ (a database and queue
//! prefix per test), scripted SMTP servers, and `postwire` processes of this build.
//! One binary with a module per concern.

use postwire_test_support as helpers;

mod cluster;
mod console;
mod crash;
mod delivery;
mod hostile;
mod limits;
mod openapi;
mod operations;
mod outages;
mod reliability;
mod scale;
mod security;
mod suppressions;
mod tenants;
mod validation;
mod webhooks;
