//! The daemon's background tasks. Each takes the daemon's [`App`](crate::app::App), runs on
//! its shutdown tracker, and calls domain operations; none holds state of its own.
//!
//! - [`workers`]: claim tenants that need provisioning or deletion, one attempt at a time.
//! - [`watcher`]: `LISTEN tenantd`; wakes workers, drops cached lookups, closes pools.
//! - [`health`]: checks every server on an interval.
//! - [`backups`]: the daily backup scheduler.
//! - [`limits`]: brings tenant roles in line with their limits.
//! - [`quotas`]: measures tenant databases against their storage quotas.
//! - [`upgrade`]: upgrade runs started by the API or `upgrade.auto`.

pub mod backups;
pub mod health;
pub mod limits;
pub mod quotas;
pub mod upgrade;
pub mod watcher;
pub mod workers;
