//! Why a provisioning attempt stopped, and how other errors become that.

use std::fmt;

use super::Step;
use crate::catalog::CatalogError;
use crate::leases::LeaseLost;

/// Why an attempt stopped.
#[derive(Debug)]
pub enum StepError {
    /// Worth another attempt after a delay (connection refused, lock held, SQL error, …).
    Retry(Step, String),
    /// The tenant's server cannot be reached or is going away (refused, closed, shutting down):
    /// retried for as long as that lasts, never a reason for `ERROR`.
    ServerDown(Step, String),
    /// Must not be retried: something we may not touch is in the way.
    Fatal(Step, String),
    /// Not a failure: no eligible server yet.
    Wait(String),
    /// Another process holds the tenant now.
    LeaseLost,
    /// A simulated crash (fault injection).
    Crashed,
    /// The process is shutting down.
    Interrupted,
    /// The catalog failed; nothing could be recorded.
    Catalog(CatalogError),
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Retry(step, m) | StepError::Fatal(step, m) => write!(f, "step {step}: {m}"),
            StepError::ServerDown(step, m) => write!(f, "step {step}: server unavailable: {m}"),
            StepError::Wait(m) => f.write_str(m),
            StepError::LeaseLost => f.write_str("lease lost"),
            StepError::Crashed => f.write_str("crashed (injected)"),
            StepError::Interrupted => f.write_str("interrupted by shutdown"),
            StepError::Catalog(e) => write!(f, "catalog: {e}"),
        }
    }
}

impl From<LeaseLost> for StepError {
    fn from(_: LeaseLost) -> Self {
        StepError::LeaseLost
    }
}

impl From<crate::target::TargetError> for StepError {
    fn from(e: crate::target::TargetError) -> Self {
        match e {
            crate::target::TargetError::Catalog(c) => c.into(),
            other => StepError::Fatal(Step::Place, other.to_string()),
        }
    }
}

impl From<CatalogError> for StepError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::LeaseLost => StepError::LeaseLost,
            other => StepError::Catalog(other),
        }
    }
}

/// A PostgreSQL error of a step: the server gone ([`StepError::ServerDown`]) or anything
/// else ([`StepError::Retry`]).
pub(super) fn pg_retry(step: Step) -> impl Fn(tokio_postgres::Error) -> StepError {
    move |e| {
        if crate::pg::is_unavailable(&e) {
            StepError::ServerDown(step, crate::pg::describe(&e))
        } else {
            StepError::Retry(step, crate::pg::describe(&e))
        }
    }
}

/// An admin connection that could not be had: the server is unreachable or refuses the admin
/// (either way nothing about the tenant is wrong, and it heals when the server or its
/// registration is fixed); a password that cannot be opened is a plain retry.
pub(super) fn admin_retry(step: Step) -> impl Fn(crate::admin::AdminError) -> StepError {
    move |e| match e {
        crate::admin::AdminError::Unreachable { .. } => StepError::ServerDown(step, e.to_string()),
        other => StepError::Retry(step, other.to_string()),
    }
}
