//! A worker that loses its lease stops before doing anything more: the lease, not the
//! worker's belief, decides who may touch a tenant. Taken away from it, or not renewable in
//! time, the worker's stalled step never resumes, even after the stall ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{TestApp, app, shared_cluster, wait_for};
use serde_json::{Value, json};
use tenantd::steps::{Fault, FaultHook, Phase, Step};

async fn leases_lost(app: &TestApp) -> u64 {
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("tenantd_leases_lost_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Every fault point a tenant's provisioning passes, with the time it got there.
type Passes = Arc<Mutex<Vec<(Step, Phase, Instant)>>>;

/// A hook that records every pass of `slug` and stalls its first pass into the database step
/// for `stall` (a frozen process, a hung server).
fn stall_before_database(slug: &'static str, stall: Duration) -> (FaultHook, Passes) {
    let passes: Passes = Arc::default();
    let seen = passes.clone();
    let hook: FaultHook = Arc::new(move |s, step, phase| {
        if s != slug {
            return None;
        }
        let mut seen = seen.lock().unwrap();
        let first = !seen.iter().any(|(st, ph, _)| (*st, *ph) == (Step::Database, Phase::Before));
        seen.push((step, phase, Instant::now()));
        (step == Step::Database && phase == Phase::Before && first).then_some(Fault::Stall(stall))
    });
    (hook, passes)
}

/// When the stalled pass began.
async fn stall_started(app: &TestApp, slug: &str, passes: &Passes) -> Instant {
    let stalled = || {
        passes
            .lock()
            .unwrap()
            .iter()
            .find(|(st, ph, _)| (*st, *ph) == (Step::Database, Phase::Before))
            .map(|p| p.2)
    };
    app.wait_tenant(slug, "its stalled database step", Duration::from_secs(30), |_| stalled().is_some())
        .await;
    stalled().unwrap()
}

async fn events(app: &TestApp, slug: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/tenants/{slug}/events")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn staging_databases(id: &str) -> i64 {
    shared_cluster()
        .superuser("postgres")
        .await
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&format!("tenantd_staging_{id}")])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `until`: showing that something did *not* happen needs the moment when it
/// would have happened to be past.
async fn let_the_window_pass(until: Instant) {
    tokio::time::sleep_until(until.into()).await;
}

/// After a stall that a lease-less worker must not wake from, and once its lease is free again:
/// the tenant is finished by a new claim; the database step was done once, by that claim.
async fn finished_by_a_new_claim(app: &TestApp, slug: &str, first_owner: &str, passes: &Passes) {
    app.catalog()
        .await
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = NULL, lease_until = NULL WHERE slug = $1",
            &[&slug],
        )
        .await
        .unwrap();
    let ready = app.wait_ready(slug).await;
    assert_eq!(ready["status"], "READY");
    let events = events(app, slug).await;
    let created: Vec<&Value> = events.iter().filter(|e| e["kind"] == "step.database.created").collect();
    assert_eq!(created.len(), 1, "{events:?}");
    assert_ne!(created[0]["actor"], first_owner, "made by the new claim, not the stalled one: {events:?}");
    let after = passes
        .lock()
        .unwrap()
        .iter()
        .filter(|(st, ph, _)| (*st, *ph) == (Step::Database, Phase::After))
        .count();
    assert_eq!(after, 1, "one CREATE DATABASE in all");
}

#[tokio::test]
async fn a_worker_that_loses_its_lease_does_no_more_ddl() {
    const STALL: Duration = Duration::from_secs(5);
    let (hook, passes) = stall_before_database("stolen", STALL);
    let app = app().faults(hook).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    let lost_before = leases_lost(&app).await;
    let (status, created) = app.post("/v1/tenants", &json!({ "slug": "stolen" })).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().replace('-', "");
    let stalled_at = stall_started(&app, "stolen", &passes).await;
    // The role is made while the database step runs (and stalls): its event follows.
    let before_theft = wait_for("the role's event", Duration::from_secs(10), || async {
        let events = events(&app, "stolen").await;
        events.iter().any(|e| e["kind"] == "step.role.created").then_some(events)
    })
    .await;
    let first_owner =
        before_theft.iter().find(|e| e["kind"] == "step.role.created").unwrap()["actor"].clone();

    // Another process takes the tenant over (as if our lease had expired meanwhile).
    let catalog = app.catalog().await;
    catalog
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = 'another-process', lease_until = now() + interval '1 hour' \
             WHERE slug = 'stolen'",
            &[],
        )
        .await
        .unwrap();
    wait_for("the worker notices", Duration::from_secs(10), || async {
        (leases_lost(&app).await > lost_before).then_some(())
    })
    .await;
    // The stall ends; a worker that went on would now create the database and record it.
    let passes_at_theft = passes.lock().unwrap().len();
    let_the_window_pass(stalled_at + STALL + Duration::from_secs(2)).await;

    // The stalled step was abandoned: no database, no event from the old owner after the theft.
    assert_eq!(staging_databases(&id).await, 0, "no CREATE DATABASE after the lease was lost");
    assert_eq!(passes.lock().unwrap().len(), passes_at_theft, "the stalled step never resumed");
    let (_, events) = app.get("/v1/tenants/stolen/events").await;
    assert!(!events.to_string().contains("step.database"), "{events}");
    let by_old_owner = |events: &[Value]| events.iter().filter(|e| e["actor"] == first_owner).count();
    assert_eq!(by_old_owner(events.as_array().unwrap()), by_old_owner(&before_theft), "{events}");

    // When the other process lets go, the tenant is finished normally.
    finished_by_a_new_claim(&app, "stolen", first_owner.as_str().unwrap(), &passes).await;
}

#[tokio::test]
async fn a_worker_that_cannot_renew_in_time_stops_before_its_lease_can_be_taken() {
    const STALL: Duration = Duration::from_secs(6);
    let lease = Duration::from_secs(3);
    let (hook, passes) = stall_before_database("slow-catalog", STALL);
    let app = app().faults(hook).configure(move |s| s.workers.lease = lease).spawn().await;
    let (status, created) = app.post("/v1/tenants", &json!({ "slug": "slow-catalog" })).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().replace('-', "");
    let stalled_at = stall_started(&app, "slow-catalog", &passes).await;

    // The catalog turns very slow for this worker: its tenant row is locked, so every renewal
    // hangs (the worker's catalog connection is fine; only the answer never comes).
    let mut other = app.catalog().await;
    let tx = other.transaction().await.unwrap();
    let owner: String = tx
        .query_one("SELECT lease_owner FROM tenantd.tenants WHERE slug = 'slow-catalog' FOR UPDATE", &[])
        .await
        .unwrap()
        .get(0);
    let passes_at_lock = passes.lock().unwrap().len();
    // The lease runs out by the catalog's clock; then another process can, and does, take it.
    wait_for("the lease to run out", Duration::from_secs(3 * lease.as_secs()), || async {
        let expired: bool = tx
            .query_one(
                "SELECT lease_until < clock_timestamp() FROM tenantd.tenants WHERE slug = 'slow-catalog'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        expired.then_some(())
    })
    .await;
    let taken = tx
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = 'another-process', \
               lease_until = clock_timestamp() + interval '1 hour' \
             WHERE slug = 'slow-catalog' AND lease_until < clock_timestamp()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(taken, 1, "the lease could be taken");
    assert!(Instant::now() < stalled_at + STALL, "the stall outlasts the lease (else this proves nothing)");

    // The stall ends while the other process holds the tenant. A worker still going would now
    // run CREATE DATABASE on the server, which no catalog lock can stop: it must have stopped.
    let_the_window_pass(stalled_at + STALL + Duration::from_secs(2)).await;
    assert_eq!(staging_databases(&id).await, 0, "no CREATE DATABASE by the worker that could not renew");
    assert_eq!(passes.lock().unwrap().len(), passes_at_lock, "the stalled step never resumed");
    tx.commit().await.unwrap();
    let events = events(&app, "slow-catalog").await;
    assert!(!events.iter().any(|e| e["kind"].as_str().unwrap().starts_with("step.database")), "{events:?}");

    finished_by_a_new_claim(&app, "slow-catalog", &owner, &passes).await;
}
