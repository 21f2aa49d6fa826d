//! Scheduled backups: every READY or SUSPENDED tenant dumped once a day, pruned by retention.
//!
//! When `backups.dir` is set, each daemon wakes at `backups.daily_at` (UTC) and tries to take
//! the day in `backup_runs`; exactly one daemon gets it, dumps the due tenants
//! (`backups.concurrency` at once) into `<dir>/<slug>-<id8>/<slug>-<YYYYMMDDTHHMMSSZ>.dump`, and
//! records each result as an event (`backup.created` / `backup.failed`) and a metric
//! (`tenantd_backups_total{result}`). A daemon that dies mid-run stops renewing its lease;
//! another takes the day over and backs up only the tenants still without a backup that day.
//! A daemon started after the daily time catches up on the same day.
//!
//! Retention works per tenant like restic's `--keep-daily/--keep-weekly`: keep the newest
//! backup of each of the `keep_daily` most recent days that have one, and the newest of each
//! of the `keep_weekly` most recent ISO weeks that have one; delete the others. Only files
//! named like our backups are ever touched.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tokio_util::sync::CancellationToken;

use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::TenantRecord;
use crate::config::BackupSettings;
use crate::core::Core;
use crate::lifecycle::LifecycleError;

const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// A backup problem.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `backups.dir` is not set.
    #[error("backups.dir (TENANTD_BACKUPS_DIR) is not set")]
    NotConfigured,
    /// Reading or pruning the directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The dump failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Catalog failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// One backup file.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    /// Where it is.
    pub path: PathBuf,
    /// When it was taken (from its name).
    pub taken_at: DateTime<Utc>,
    /// Size.
    pub bytes: u64,
}

/// The file name of a backup of `slug` taken at `at`.
pub fn file_name(slug: &str, at: DateTime<Utc>) -> String {
    format!("{slug}-{}.dump", at.format(STAMP))
}

fn parse_name(slug: &str, name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(slug)?.strip_prefix('-')?.strip_suffix(".dump")?;
    NaiveDateTime::parse_from_str(stamp, STAMP).ok().map(|t| Utc.from_utc_datetime(&t))
}

/// The directory of a tenant's backups: `<slug>-<first 8 hex digits of its id>`, so that a
/// later tenant reusing the slug never prunes (or lists) an earlier one's backups.
pub fn tenant_dir(dir: &Path, slug: &str, id: Uuid) -> PathBuf {
    dir.join(format!("{slug}-{}", &id.simple().to_string()[..8]))
}

/// A tenant's backups, newest first (none when its directory does not exist).
pub fn list(dir: &Path, slug: &str, id: Uuid) -> Result<Vec<Backup>, BackupError> {
    let tenant_dir = tenant_dir(dir, slug, id);
    let entries = match std::fs::read_dir(&tenant_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BackupError::Io { what: format!("cannot read {}", tenant_dir.display()), source });
        }
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| BackupError::Io {
            what: format!("cannot read {}", tenant_dir.display()),
            source,
        })?;
        let name = entry.file_name();
        let Some(taken_at) = name.to_str().and_then(|n| parse_name(slug, n)) else { continue };
        let meta = entry.metadata().map_err(|source| BackupError::Io {
            what: format!("cannot stat {}", entry.path().display()),
            source,
        })?;
        if meta.is_file() {
            backups.push(Backup { path: entry.path(), taken_at, bytes: meta.len() });
        }
    }
    backups.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then_with(|| b.path.cmp(&a.path)));
    Ok(backups)
}

/// Which of `taken` (newest first) retention keeps: the newest of each of the `keep_daily`
/// most recent days, and the newest of each of the `keep_weekly` most recent ISO weeks.
pub fn retained(taken: &[DateTime<Utc>], keep_daily: usize, keep_weekly: usize) -> Vec<bool> {
    let mut keep = vec![false; taken.len()];
    let mut bucketed = |key: &dyn Fn(&DateTime<Utc>) -> (i32, u32), limit: usize| {
        let mut seen = HashSet::new();
        for (i, at) in taken.iter().enumerate() {
            if seen.len() >= limit {
                break;
            }
            if seen.insert(key(at)) {
                keep[i] = true;
            }
        }
    };
    bucketed(&|at| (at.year(), at.ordinal()), keep_daily);
    bucketed(
        &|at| {
            let week = at.iso_week();
            (week.year(), week.week())
        },
        keep_weekly,
    );
    keep
}

/// Deletes the backups of `slug` that retention does not keep; returns the deleted files.
pub fn prune(
    dir: &Path,
    slug: &str,
    id: Uuid,
    settings: &BackupSettings,
) -> Result<Vec<PathBuf>, BackupError> {
    let backups = list(dir, slug, id)?;
    let taken: Vec<_> = backups.iter().map(|b| b.taken_at).collect();
    let keep = retained(&taken, settings.keep_daily, settings.keep_weekly);
    let mut deleted = Vec::new();
    for (backup, keep) in backups.into_iter().zip(keep) {
        if !keep {
            std::fs::remove_file(&backup.path).map_err(|source| BackupError::Io {
                what: format!("cannot delete {}", backup.path.display()),
                source,
            })?;
            deleted.push(backup.path);
        }
    }
    Ok(deleted)
}

/// Backups taken by one process, acting as `actor`.
pub struct Backups<'a> {
    core: &'a Core,
    actor: &'a str,
}

/// The outcome of backing up a set of tenants.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Backups written.
    pub succeeded: usize,
    /// Backups that failed (each recorded as a `backup.failed` event).
    pub failed: usize,
}

impl<'a> Backups<'a> {
    /// Backups acting as `actor` (events).
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor }
    }

    fn settings(&self) -> &'a BackupSettings {
        &self.core.settings.backups
    }
}

impl Backups<'_> {
    fn dir(&self) -> Result<&Path, BackupError> {
        self.settings().dir.as_deref().ok_or(BackupError::NotConfigured)
    }

    /// Backs up one tenant, records the result (event, metric, log) and prunes its backups.
    pub async fn one(&self, t: &TenantRecord) -> Result<Backup, BackupError> {
        let started = Instant::now();
        let result = self.write(t).await;
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("tenantd_backup_seconds").record(seconds);
        let (kind, detail) = match &result {
            Ok(b) => {
                metrics::counter!("tenantd_backups_total", "result" => "ok").increment(1);
                tracing::info!(tenant = %t.slug, file = %b.path.display(), bytes = b.bytes, seconds, "backup written");
                (
                    EventKind::BackupCreated,
                    json!({ "file": b.path.display().to_string(), "bytes": b.bytes, "seconds": seconds }),
                )
            }
            Err(e) => {
                metrics::counter!("tenantd_backups_total", "result" => "failed").increment(1);
                tracing::error!(tenant = %t.slug, error = %e, "backup failed");
                (EventKind::BackupFailed, json!({ "error": e.to_string() }))
            }
        };
        self.core.catalog.record_event(t.id, kind, detail, self.actor).await?;
        let backup = result?;
        let deleted = prune(self.dir()?, &t.slug, t.id, self.settings())?;
        if !deleted.is_empty() {
            tracing::info!(tenant = %t.slug, deleted = deleted.len(), "old backups pruned");
        }
        Ok(backup)
    }

    async fn write(&self, t: &TenantRecord) -> Result<Backup, BackupError> {
        let dir = tenant_dir(self.dir()?, &t.slug, t.id);
        crate::dumps::create_dir(&dir).map_err(LifecycleError::from)?;
        let taken_at = Utc::now();
        let path = dir.join(file_name(&t.slug, taken_at));
        let (target, admin) = crate::lifecycle::resolve(self.core, t).await?;
        let dumped = crate::dumps::dump(&admin, &target.database, &target.role, t.id, &path)
            .await
            .map_err(LifecycleError::from)?;
        Ok(Backup { path, taken_at, bytes: dumped.bytes })
    }

    /// Backs up `tenants`, `backups.concurrency` at once; every failure is recorded and counted.
    pub async fn run(&self, tenants: &[TenantRecord]) -> Summary {
        // Indices rather than references keep the closure free of borrowed arguments (which
        // a spawned future cannot prove general enough).
        let results: Vec<bool> = futures::stream::iter(0..tenants.len())
            .map(|i| async move {
                let t = &tenants[i];
                match self.one(t).await {
                    Ok(_) => true,
                    Err(e) => {
                        // `one` recorded the failure unless recording itself failed.
                        tracing::warn!(tenant = %t.slug, error = %e, "backup not completed");
                        false
                    }
                }
            })
            .buffer_unordered(self.settings().concurrency)
            .collect()
            .await;
        let succeeded = results.iter().filter(|ok| **ok).count();
        Summary { succeeded, failed: results.len() - succeeded }
    }
}

/// The daily time on `day`.
pub(crate) fn at_on(day: NaiveDate, (hour, minute): (u32, u32)) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(hour, minute, 0).unwrap_or_default())
}

/// How long the scheduler sleeps before looking again: until the next daily time, but at most
/// a few minutes so that it notices a holder that died.
pub(crate) fn next_look(now: DateTime<Utc>, time: (u32, u32), lease: Duration) -> Duration {
    let today = at_on(now.date_naive(), time);
    let next = if now < today { today } else { at_on(now.date_naive() + chrono::Days::new(1), time) };
    let until = (next - now).to_std().unwrap_or_default();
    until.min(lease.max(Duration::from_secs(60)) * 2)
}

impl Backups<'_> {
    /// Runs today's backups if their time (`time`, UTC) has come and this process gets the
    /// day; `cancel` interrupts them (another daemon or the next start carries them on).
    pub async fn daily(&self, time: (u32, u32), cancel: &CancellationToken) -> Result<(), CatalogError> {
        let catalog = &self.core.catalog;
        let now = Utc::now();
        let day = now.date_naive();
        let since = at_on(day, time);
        if now < since {
            return Ok(());
        }
        let owner = crate::leases::claim_owner(self.actor);
        let lease = self.core.settings.workers.lease;
        if !catalog.claim_backup_day(day, &owner, lease).await? {
            return Ok(());
        }
        let due = catalog.tenants_due_for_backup(since).await?;
        tracing::info!(%day, tenants = due.len(), "daily backups started");
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = catalog.renew_backup_day(day, &owner, lease).await {
                    return e;
                }
            }
        };
        let summary = tokio::select! {
            summary = self.run(&due) => summary,
            lost = renew => {
                tracing::error!(%day, error = %lost, "lost the daily backup run; another daemon carries it on");
                return Ok(());
            }
            () = cancel.cancelled() => {
                tracing::warn!(%day, "daily backups interrupted by shutdown; another daemon or the next start carries them on");
                return Ok(());
            }
        };
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        catalog.finish_backup_day(day, &owner, count(summary.succeeded), count(summary.failed)).await?;
        tracing::info!(%day, succeeded = summary.succeeded, failed = summary.failed, "daily backups finished");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
    }

    fn kept(taken: &[&str], daily: usize, weekly: usize) -> Vec<String> {
        let taken: Vec<_> = taken.iter().map(|s| at(s)).collect();
        let keep = retained(&taken, daily, weekly);
        taken
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(t, _)| t.format("%Y-%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn retention_keeps_the_newest_of_each_recent_day_and_week() {
        // Newest first: 2020-01-20 is a Monday (ISO week 4), 01-13..19 week 3, 01-06..12 week 2.
        let mut taken = vec!["2020-01-20 03:00", "2020-01-20 01:00"];
        let days: Vec<String> = (1..=19).rev().map(|d| format!("2020-01-{d:02} 03:00")).collect();
        taken.extend(days.iter().map(String::as_str));
        assert_eq!(kept(&taken, 3, 0), ["2020-01-20 03:00", "2020-01-19 03:00", "2020-01-18 03:00"]);
        assert_eq!(kept(&taken, 0, 3), ["2020-01-20 03:00", "2020-01-19 03:00", "2020-01-12 03:00"]);
        assert_eq!(
            kept(&taken, 2, 4),
            ["2020-01-20 03:00", "2020-01-19 03:00", "2020-01-12 03:00", "2020-01-05 03:00"]
        );
        // Fewer backups than the limits: all distinct days are kept, same-day extras are not.
        assert_eq!(kept(&["2020-01-20 03:00", "2020-01-20 01:00"], 7, 4), ["2020-01-20 03:00"]);
        assert!(kept(&[], 7, 4).is_empty());
    }

    #[test]
    fn backup_names_round_trip_and_foreign_files_are_ignored() {
        let t = at("2026-11-23 03:00");
        assert_eq!(file_name("acme", t), "acme-20261123T030000Z.dump");
        assert_eq!(parse_name("acme", &file_name("acme", t)), Some(t));
        // Another tenant whose slug starts the same, partial files, other files: not ours.
        assert_eq!(parse_name("acme", "acme-eu-20261123T030000Z.dump"), None);
        assert_eq!(parse_name("acme", ".acme-20261123T030000Z.dump.partial-12"), None);
        assert_eq!(parse_name("acme", "notes.txt"), None);
    }

    #[test]
    fn the_scheduler_looks_again_at_the_daily_time_or_within_minutes() {
        let lease = Duration::from_secs(30);
        assert_eq!(next_look(at("2026-11-23 02:59"), (3, 0), lease), Duration::from_secs(60));
        assert_eq!(next_look(at("2026-11-23 02:00"), (3, 0), lease), Duration::from_secs(120));
        assert_eq!(next_look(at("2026-11-23 23:59"), (0, 0), lease), Duration::from_secs(60));
    }
}
