//! The integration tests: one binary (linked once), one module per area, one shared
//! PostgreSQL cluster for the run (see [`common`]). Tests that need a second server, or one
//! they can stop, start their own cluster.
#![allow(dead_code)]

mod catalog_scale;
mod common;
mod console;
mod deploy;

mod hostile;
mod https;
mod layers;
mod leases;
mod lending;
mod lifecycle;
mod moves;
mod openapi;
mod outages;
mod pgbouncer;
mod provisioning;
mod reconcile;
mod servers;
mod signed_requests;
mod spares;
mod sqlhttp;
mod startup;
mod tls;
mod upgrade;
mod webhooks;
