//! What can go wrong in a move or a drain.

use crate::catalog::CatalogError;
use crate::dumps::DumpError;
use crate::leases::LeaseLost;
use crate::steps::Step;
use crate::target::TargetError;

/// A move problem.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The tenant is not READY, or another process holds it.
    #[error("{0}")]
    WrongState(String),
    /// No such server.
    #[error("no server {0:?}")]
    UnknownServer(String),
    /// The request makes no sense (same server, a target not active, a bad catalog row).
    #[error("{0}")]
    Invalid(String),
    /// The target server is down.
    #[error("{0}")]
    TargetDown(String),
    /// Catalog failure (not found included).
    #[error(transparent)]
    Catalog(CatalogError),
    /// The tenant's catalog row cannot lead to its database.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A server could not be used.
    #[error("{0}")]
    Server(String),
    /// A step failed.
    #[error("step {0}: {1}")]
    Step(Step, String),
    /// pg_dump / pg_restore.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// The copy differs from the source.
    #[error("verification failed: {0}")]
    Verify(String),
    /// An object under the tenant's names on a server is not tenantd's.
    #[error("{0}")]
    Foreign(String),
    /// A rollback interrupted before: it goes on with this reason.
    #[error("{0}")]
    Resumed(String),
    /// Another process holds the tenant now.
    #[error("lease lost: another process holds this tenant now")]
    LeaseLost,
    /// Shutdown: the move is given back, to be resumed.
    #[error("interrupted by shutdown; the move will be resumed")]
    Interrupted,
    /// An online move's prerequisites are missing (each named).
    #[error("online move refused; missing: {}", .0.join("; "))]
    OnlineRefused(Vec<String>),
    /// Every prerequisite of an online move is there, but this build cannot run one.
    #[error(
        "online moves are not implemented on this build (every prerequisite is met); move offline, without --online"
    )]
    OnlineNotImplemented,
    /// An injected crash (tests): nothing more is written.
    #[error("crashed (injected)")]
    Crashed,
}

impl From<CatalogError> for MoveError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::LeaseLost => MoveError::LeaseLost,
            other => MoveError::Catalog(other),
        }
    }
}

impl From<LeaseLost> for MoveError {
    fn from(_: LeaseLost) -> Self {
        MoveError::LeaseLost
    }
}

/// A server error of a step, described.
pub(crate) fn pg(step: Step) -> impl Fn(tokio_postgres::Error) -> MoveError {
    move |e| MoveError::Step(step, crate::pg::describe(&e))
}
