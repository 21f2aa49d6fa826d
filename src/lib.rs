//! tenantd: a PostgreSQL database per tenant, provisioned, migrated, pooled and lent out.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]; the daemon ([`startup`]) and the CLI
//! ([`cli`]) share every code path below.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod backups;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod driver;
pub mod dumps;
pub mod embedded;
pub mod handles;
pub mod health;
pub mod lifecycle;
pub mod names;
pub mod pg;
pub mod pgcluster;
pub mod placement;
pub mod pools;
pub mod provisioner;
pub mod resolver;
pub mod servers;
pub mod shutdown;
pub mod sqlhttp;
pub mod startup;
pub mod telemetry;
pub mod tenant_migrations;
pub mod tenant_sql;
pub mod tenants;
pub mod upgrade;
pub mod watcher;
pub mod workers;
