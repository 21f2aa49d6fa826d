//! The steps of tenant operations, and the fault-injection points between them.
//!
//! [`Step`] names provisioning and deletion steps in events, metrics and logs. The fault
//! hook ([`FaultHook`]) lets the integration tests fail, stall or "crash" a process at any
//! step; it is reachable only through `#[doc(hidden)]` test entry points
//! (`Core::with_fault_injection`, `Extras::fault_injection`), never from configuration, and is
//! `None` in every production code path.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A step of provisioning (also the names used in events, metrics and fault points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Choose and persist a server and names.
    Place,
    /// Create or adopt the role.
    Role,
    /// Create or adopt the database.
    Database,
    /// Revoke PUBLIC, grant the tenant role.
    Lockdown,
    /// Apply tenant migrations.
    Migrate,
    /// Staging name → final name.
    Rename,
    /// Mark READY.
    Ready,
    /// Write the final archive of a tenant being deleted.
    Archive,
    /// Drop the database and the role of a tenant being deleted.
    Drop,
    /// Move: end the tenant's sessions and logins on the source.
    MoveClose,
    /// Move: the role and the staging database on the target.
    MoveStage,
    /// Move: `pg_dump` of the source.
    MoveDump,
    /// Move: `pg_restore` into the staging database.
    MoveRestore,
    /// Move: row counts, checksums, sequences and schema version compared.
    MoveVerify,
    /// Move: the staging database gets the tenant's name on the target.
    MovePromote,
    /// Move: the catalog names the target (one transaction).
    MoveSwitch,
    /// Move: the source database is renamed (kept) or dropped.
    MoveSource,
    /// Take a warm spare: its role and database get the tenant's names, password and marker.
    SpareTake,
}

impl Step {
    /// Every step in order.
    pub const ALL: [Step; 7] =
        [Step::Place, Step::Role, Step::Database, Step::Lockdown, Step::Migrate, Step::Rename, Step::Ready];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Place => "place",
            Step::Role => "role",
            Step::Database => "database",
            Step::Lockdown => "lockdown",
            Step::Migrate => "migrate",
            Step::Rename => "rename",
            Step::Ready => "ready",
            Step::Archive => "archive",
            Step::Drop => "drop",
            Step::MoveClose => "move.close",
            Step::MoveStage => "move.stage",
            Step::MoveDump => "move.dump",
            Step::MoveRestore => "move.restore",
            Step::MoveVerify => "move.verify",
            Step::MovePromote => "move.promote",
            Step::MoveSwitch => "move.switch",
            Step::MoveSource => "move.source",
            Step::SpareTake => "spare.take",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a fault may be injected: before a step does anything, or after it did its work on
/// the server but before anything was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the step.
    Before,
    /// After the step's effect, before its bookkeeping.
    After,
}

/// A fault to inject (tests only).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Fault {
    /// The attempt fails with this message (recorded, retried with backoff).
    Fail(String),
    /// The process "dies": nothing more is written, the lease is left to expire.
    Crash,
    /// The step stalls this long (a frozen process, a hung server), then goes on.
    Stall(Duration),
}

/// A fault-injection hook (tests only): called at every step and phase with the tenant's slug.
#[doc(hidden)]
pub type FaultHook = Arc<dyn Fn(&str, Step, Phase) -> Option<Fault> + Send + Sync>;
