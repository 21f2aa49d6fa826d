//! Executing an upgrade run: plan, record, then `concurrency` tenants at a time, with a
//! heartbeat, canary and failure limits.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::{Options, Outcome, Plan, Planned, Progress, Selection, Summary, plan};
use crate::catalog::CatalogError;
use crate::catalog::upgrades::{ResultKind, RunStatus};
use crate::core::Core;
use crate::tenant_migrations::MigrationSet;

/// Upgrade runs of one process, acting as `actor`.
pub struct Upgrader<'a> {
    pub(super) core: &'a Core,
    pub(super) actor: &'a str,
    pub(super) migrations: &'a MigrationSet,
}

/// A run that has been planned and recorded, ready to execute.
#[derive(Debug, Clone)]
pub struct Started {
    /// Run id.
    pub run: Uuid,
    /// The plan.
    pub plan: Plan,
}

impl<'a> Upgrader<'a> {
    /// Upgrade runs acting as `actor` (run records, events, lease owners).
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor, migrations: &core.migrations }
    }

    /// Applies these migrations instead of the core's (a benchmark's "newer build").
    #[must_use]
    pub fn with_migrations(mut self, migrations: &'a MigrationSet) -> Self {
        self.migrations = migrations;
        self
    }
}

impl Upgrader<'_> {
    /// Plans and (unless dry) runs; `progress` is called after every tenant.
    pub async fn run(
        &self,
        selection: &Selection,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        if options.dry_run {
            let plan = plan(&self.core.catalog, self.migrations, selection).await?;
            return Ok(Summary { run: None, plan, results: Vec::new(), stopped: None });
        }
        let started = self.start(selection, options).await?;
        self.execute(started, options, progress).await
    }

    /// Plans and records the run (and the tenants it will not touch).
    pub async fn start(&self, selection: &Selection, options: &Options) -> Result<Started, CatalogError> {
        let plan = plan(&self.core.catalog, self.migrations, selection).await?;
        let params = json!({ "selection": selection, "options": options });
        let total = plan.behind().count() as i32;
        let run = self.core.catalog.insert_run(self.actor, &params, plan.target_version, total).await?;
        for slug in &plan.not_found {
            self.core
                .catalog
                .insert_result(run, slug, ResultKind::NotFound, None, None, Some("no such READY tenant"))
                .await?;
        }
        for t in plan.tenants.iter().filter(|t| t.ahead) {
            let detail = format!(
                "database at version {}, newer than this build ({})",
                t.from_version, plan.target_version
            );
            self.core
                .catalog
                .insert_result(run, &t.slug, ResultKind::Ahead, Some(t.from_version), None, Some(&detail))
                .await?;
        }
        tracing::info!(%run, tenants = total, target = plan.target_version, "upgrade run started");
        Ok(Started { run, plan })
    }

    /// Upgrades the tenants of a started run.
    pub async fn execute(
        &self,
        started: Started,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        let run = started.run;
        tokio::select! {
            summary = self.execute_inner(started, options, progress) => summary,
            never = self.heartbeat(run) => match never {},
        }
    }

    /// Marks the run alive every [`crate::catalog::upgrades::RUN_HEARTBEAT`]; never returns.
    async fn heartbeat(&self, run: Uuid) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(crate::catalog::upgrades::RUN_HEARTBEAT).await;
            if let Err(e) = self.core.catalog.run_heartbeat(run).await {
                tracing::warn!(%run, error = %e, "cannot mark the upgrade run alive");
            }
        }
    }

    async fn execute_inner(
        &self,
        started: Started,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        let Started { run, plan } = started;
        let work: Vec<Planned> = plan.behind().cloned().collect();
        let counters = Counters {
            total: work.len(),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            unrecorded: AtomicUsize::new(0),
        };
        let canary = options.canary.min(work.len());
        let (first, rest) = work.split_at(canary);
        let mut results = self.batch(run, first, options.concurrency, None, &counters, progress).await;
        let mut stopped = None;
        if counters.failed.load(Ordering::SeqCst) > 0 {
            stopped = Some(format!(
                "canary failed: {} of the first {canary} tenants failed",
                counters.failed.load(Ordering::SeqCst)
            ));
        } else {
            results.extend(
                self.batch(run, rest, options.concurrency, options.max_failures, &counters, progress).await,
            );
            if let Some(max) = options.max_failures.filter(|m| counters.failed.load(Ordering::SeqCst) >= *m) {
                stopped = Some(format!("stopped after {max} failures"));
            }
        }
        let done: std::collections::HashSet<&str> = results.iter().map(|(s, _)| s.as_str()).collect();
        let not_started: Vec<(String, Outcome)> = work
            .iter()
            .filter(|t| !done.contains(t.slug.as_str()))
            .map(|t| (t.slug.clone(), Outcome::NotStarted))
            .collect();
        for (slug, _) in &not_started {
            self.core
                .catalog
                .insert_result(run, slug, ResultKind::NotStarted, None, None, stopped.as_deref())
                .await?;
        }
        results.extend(not_started);
        let status = if stopped.is_some() { RunStatus::Stopped } else { RunStatus::Finished };
        let unrecorded = counters.unrecorded.load(Ordering::SeqCst);
        let reason = match (&stopped, unrecorded) {
            (_, 0) => stopped.clone(),
            (Some(r), n) => Some(format!("{r}; {n} result(s) could not be recorded (see the log)")),
            (None, n) => Some(format!("{n} result(s) could not be recorded (see the log)")),
        };
        self.core.catalog.finish_run(run, status, reason.as_deref()).await?;
        tracing::info!(%run, status = status.as_str(), failed = counters.failed.load(Ordering::SeqCst), "upgrade run ended");
        Ok(Summary { run: Some(run), plan, results, stopped })
    }

    async fn batch(
        &self,
        run: Uuid,
        tenants: &[Planned],
        concurrency: usize,
        max_failures: Option<usize>,
        counters: &Counters,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Vec<(String, Outcome)> {
        // Indices rather than references keep the stream's closures free of borrowed
        // arguments (which a spawned future cannot prove general enough).
        futures::stream::iter(0..tenants.len())
            .map(|i| async move {
                let t = &tenants[i];
                if max_failures.is_some_and(|max| counters.failed.load(Ordering::SeqCst) >= max) {
                    return None;
                }
                let outcome = self.one(t).await;
                if let Err(e) = self.record(run, t, &outcome).await {
                    counters.unrecorded.fetch_add(1, Ordering::SeqCst);
                    tracing::error!(tenant = %t.slug, error = %e, "cannot record an upgrade result");
                }
                counters.finished(matches!(outcome, Outcome::Failed { .. }), progress);
                Some((t.slug.clone(), outcome))
            })
            .buffer_unordered(concurrency)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    async fn record(&self, run: Uuid, t: &Planned, outcome: &Outcome) -> Result<(), CatalogError> {
        let (to, detail) = match outcome {
            Outcome::Upgraded { to, .. } => (Some(*to), None),
            Outcome::Current { version } => (Some(*version), None),
            Outcome::Ahead { version } => (Some(*version), Some("newer than this build".to_owned())),
            Outcome::Failed { error, .. } => (None, Some(error.clone())),
            Outcome::Skipped { reason } => (None, Some(reason.clone())),
            Outcome::NotStarted => (None, None),
        };
        self.core
            .catalog
            .insert_result(run, &t.slug, outcome.kind(), Some(t.from_version), to, detail.as_deref())
            .await
    }
}

struct Counters {
    total: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
    unrecorded: AtomicUsize,
}

impl Counters {
    fn finished(&self, failed: bool, progress: &(dyn Fn(Progress) + Sync)) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let failed = if failed {
            self.failed.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.failed.load(Ordering::SeqCst)
        };
        progress(Progress { total: self.total, done, failed });
    }
}
