//! tenantd: a PostgreSQL database per tenant, provisioned, migrated, pooled and lent out.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]. Modules are layered; a module uses
//! only the layers below its own (README's "Layout" shows the same):
//!
//! 1. entry points: [`cli`], [`startup`] (assembles a daemon), [`bench`];
//! 2. the HTTP API ([`api`]) and the daemon's background [`tasks`];
//! 3. the daemon's state: [`app`] (`App` = `Core` + runtime parts);
//! 4. domain operations: [`provisioner`], [`lifecycle`], [`driver`], [`upgrade`], [`backups`],
//!    [`dumps`], [`tenants`], [`servers`], lending ([`pools`], [`handles`], [`sqlhttp`],
//!    [`resolver`]);
//! 5. shared foundations of every operation: [`core`] (`Core`), [`target`] (the one way to
//!    reach a tenant's database), [`leases`], [`markers`] ("is this object ours?");
//! 6. the bottom: [`catalog`] (the only SQL on the catalog), [`tenant_sql`] (the only DDL),
//!    [`admin`], [`crypto`], [`names`], [`config`], [`steps`], [`placement`],
//!    [`tenant_migrations`], [`embedded`], [`pg`], [`pgcluster`], [`shutdown`], [`telemetry`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod backups;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod dumps;
pub mod embedded;
pub mod handles;
pub mod leases;
pub mod lifecycle;
pub mod markers;
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
pub mod steps;
pub mod target;
pub mod tasks;
pub mod telemetry;
pub mod tenant_migrations;
pub mod tenant_sql;
pub mod tenants;
pub mod upgrade;
