//! Executing an upgrade run: plan, record, then `concurrency` tenants at a time, with a
//! heartbeat, canary and failure limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::tenant::Claimed;
use super::{Options, Outcome, Plan, Planned, Progress, Selection, Summary, plan};
use crate::catalog::CatalogError;
use crate::catalog::servers::ServerRecord;
use crate::catalog::upgrades::{ResultKind, RunResult, RunStatus};
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
            let result = RunResult {
                run,
                slug,
                kind: ResultKind::NotFound,
                from: None,
                to: None,
                detail: Some("no such READY tenant"),
            };
            self.core.catalog.insert_result(&result).await?;
        }
        for t in plan.tenants.iter().filter(|t| t.ahead) {
            let detail = format!(
                "database at version {}, newer than this build ({})",
                t.from_version, plan.target_version
            );
            let result = RunResult {
                run,
                slug: &t.slug,
                kind: ResultKind::Ahead,
                from: Some(t.from_version),
                to: None,
                detail: Some(&detail),
            };
            self.core.catalog.insert_result(&result).await?;
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
        let servers = self.core.catalog.servers().await?;
        let ctx = Ctx { run, servers: servers.into_iter().map(|s| (s.name.clone(), s)).collect() };
        let mut results = self.batch(&ctx, first, options.concurrency, None, &counters, progress).await;
        let mut stopped = None;
        if counters.failed.load(Ordering::SeqCst) > 0 {
            stopped = Some(format!(
                "canary failed: {} of the first {canary} tenants failed",
                counters.failed.load(Ordering::SeqCst)
            ));
        } else {
            results.extend(
                self.batch(&ctx, rest, options.concurrency, options.max_failures, &counters, progress).await,
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
            let result = RunResult {
                run,
                slug,
                kind: ResultKind::NotStarted,
                from: None,
                to: None,
                detail: stopped.as_deref(),
            };
            self.core.catalog.insert_result(&result).await?;
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
        ctx: &Ctx,
        tenants: &[Planned],
        concurrency: usize,
        max_failures: Option<usize>,
        counters: &Counters,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Vec<(String, Outcome)> {
        let stopping = || max_failures.is_some_and(|max| counters.failed.load(Ordering::SeqCst) >= max);
        // Leases are claimed a chunk at a time, by the first tenant of a chunk to come up.
        let chunk = (2 * concurrency).clamp(4, 32);
        let chunks: Vec<ChunkClaims> =
            (0..tenants.len().div_ceil(chunk)).map(|_| ChunkClaims::new()).collect();
        let chunks = &chunks;
        // Indices rather than references keep the stream's closures free of borrowed
        // arguments (which a spawned future cannot prove general enough).
        let results = futures::stream::iter(0..tenants.len())
            .map(|i| async move {
                let t = &tenants[i];
                let cell = &chunks[i / chunk];
                // Claims left in the chunk are given back below, after the stream.
                if stopping() {
                    return None;
                }
                let claims = cell
                    .get_or_init(|| async {
                        let first = i / chunk * chunk;
                        let claims = self.claim(&tenants[first..(first + chunk).min(tenants.len())]).await;
                        claims.into_iter().map(|c| std::sync::Mutex::new(Some(c))).collect()
                    })
                    .await;
                let claim = take(&claims[i % chunk]);
                let (outcome, recorded) = self.one(ctx, t, claim).await;
                if let Err(e) = recorded {
                    counters.unrecorded.fetch_add(1, Ordering::SeqCst);
                    tracing::error!(tenant = %t.slug, error = %e, "cannot record an upgrade result");
                }
                counters.finished(matches!(outcome, Outcome::Failed { .. }), progress);
                Some((t.slug.clone(), outcome))
            })
            .buffer_unordered(concurrency)
            .filter_map(std::future::ready)
            .collect()
            .await;
        // Claims of tenants that were never started (the run stopped while their chunk was
        // being claimed): given back now rather than left to expire.
        for claims in chunks.iter().filter_map(|cell| cell.get()) {
            for slot in claims {
                if let claim @ Claimed::Held { .. } = take(slot) {
                    self.release(claim).await;
                }
            }
        }
        results
    }
}

/// What every tenant of a run shares: the run id, and the servers as read when the run
/// began (a server added since is read when a tenant on it comes up).
pub(super) struct Ctx {
    pub(super) run: Uuid,
    pub(super) servers: HashMap<String, ServerRecord>,
}

/// The claims of one chunk of a run's tenants, made once by whichever comes up first; each
/// tenant takes its own out.
type ChunkClaims = tokio::sync::OnceCell<Vec<std::sync::Mutex<Option<Claimed>>>>;

/// A tenant's claim, taken out of its chunk (each tenant comes up once).
fn take(slot: &std::sync::Mutex<Option<Claimed>>) -> Claimed {
    let taken = slot.lock().map(|mut c| c.take());
    taken.ok().flatten().unwrap_or_else(|| Claimed::Failed("claim already used (a bug)".to_owned()))
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
