//! tenantd: a PostgreSQL database per tenant, provisioned, migrated, pooled and lent out.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]. Modules are layered; a module uses
//! only the layers below its own (README's "Layout" shows the same):
//!
//! 1. entry points: `cli`, `startup` (assembles a daemon), `bench`;
//! 2. the HTTP API (`api`) and the daemon's background `tasks`;
//! 3. the daemon's state: `app` (`App` = `Core` + runtime parts);
//! 4. domain operations: `provisioner`, `lifecycle`, `driver`, `upgrade`, `backups`,
//!    `dumps`, `tenants`, `servers`, `pgbouncer`, `webhooks`, `moves`, `reconcile`, `spares`, lending
//!    (`pools`, `handles`, `sqlhttp`, `resolver`);
//! 5. shared foundations of every operation: `core` (`Core`), `target` (the one way to
//!    reach a tenant's database), `leases`, `markers` ("is this object ours?");
//! 6. the bottom: `catalog` (the only SQL on the catalog), `tenant_sql` (the only DDL),
//!    `admin`, `crypto`, `names`, `config`, `steps`, `placement`, `limits`,
//!    `tenant_migrations`, `embedded`, `pg`, `pgcluster`, `pgtls`, `pgwire`, `shutdown`, `telemetry`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod admin;
pub mod api;
pub(crate) mod app;
pub mod backups;
pub(crate) mod bench;
pub(crate) mod catalog;
/// The catalog's hot statements and their indexes (for the EXPLAIN test and `bench catalog`).
pub use catalog::plans;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod dumps;
pub mod embedded;
pub(crate) mod handles;
pub(crate) mod leases;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod markers;
pub(crate) mod moves;
pub(crate) mod names;
pub(crate) mod pg;
pub mod pgbouncer;
pub mod pgcluster;
pub(crate) mod pgtls;
pub(crate) mod pgwire;
pub(crate) mod placement;
pub(crate) mod pools;
pub(crate) mod provisioner;
pub(crate) mod quotas;
pub(crate) mod reconcile;
pub(crate) mod resolver;
pub(crate) mod servers;
pub mod shutdown;
pub(crate) mod spares;
pub mod sqlhttp;
pub mod startup;
pub mod steps;
pub(crate) mod target;
pub(crate) mod tasks;
pub(crate) mod telemetry;
pub mod tenant_migrations;
pub(crate) mod tenant_sql;
pub(crate) mod tenants;
pub(crate) mod upgrade;
pub mod webhooks;
