//! A worker that loses its lease stops before doing anything more: the lease, not the
//! worker's belief, decides who may touch a tenant. (Own test binary: it reads a
//! process-wide metric.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{app, shared_cluster};
use serde_json::json;
use tenantd::steps::{Fault, FaultHook, Phase, Step};

async fn leases_lost(app: &crate::common::TestApp) -> u64 {
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("tenantd_leases_lost_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_worker_that_loses_its_lease_does_no_more_ddl() {
    let fired = Arc::new(AtomicBool::new(false));
    let once = fired.clone();
    // The first pass into the database step freezes for 5 s (a stalled process).
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        (slug == "stolen"
            && step == Step::Database
            && phase == Phase::Before
            && !once.swap(true, Ordering::SeqCst))
        .then_some(Fault::Stall(Duration::from_secs(5)))
    });
    let app = app().faults(hook).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    let (status, created) = app.post("/v1/tenants", &json!({ "slug": "stolen" })).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().replace('-', "");
    app.wait_tenant("stolen", "role made", Duration::from_secs(30), |_| fired.load(Ordering::SeqCst)).await;

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
    crate::common::wait_for("the worker notices", Duration::from_secs(10), || async {
        (leases_lost(&app).await >= 1).then_some(())
    })
    .await;
    // The stalled step was abandoned: no database, no event from the old owner after the theft.
    let su = shared_cluster().superuser("postgres").await;
    let staging: i64 = su
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&format!("tenantd_staging_{id}")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(staging, 0, "no CREATE DATABASE after the lease was lost");
    let (_, events) = app.get("/v1/tenants/stolen/events").await;
    assert!(!events.to_string().contains("step.database"), "{events}");

    // When the other process lets go, the tenant is finished normally.
    catalog
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = NULL, lease_until = NULL WHERE slug = 'stolen'",
            &[],
        )
        .await
        .unwrap();
    let ready = app.wait_ready("stolen").await;
    assert_eq!(ready["status"], "READY");
}
