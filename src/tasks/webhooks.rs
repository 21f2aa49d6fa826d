//! Delivers the webhook outbox: every `webhooks.poll_interval`, claims due deliveries and
//! sends them ([`crate::webhooks::delivery`]). Every daemon runs it; `SKIP LOCKED` claims
//! keep them from sending the same delivery at once.

use std::sync::Arc;

use crate::app::App;
use crate::webhooks::delivery::Deliverer;

/// Starts the delivery loop on the daemon's task tracker. A client that cannot be built is
/// logged and counted, and nothing is delivered by this daemon (the outbox keeps the events
/// for any other daemon, or for this one once restarted).
pub fn spawn(app: Arc<App>) {
    let deliverer = match Deliverer::new(&app.settings.webhooks) {
        Ok(d) => Arc::new(d),
        Err(error) => {
            metrics::counter!("tenantd_webhook_client_errors_total").increment(1);
            tracing::error!(%error, "webhooks will not be delivered by this daemon");
            return;
        }
    };
    let period = app.settings.webhooks.poll_interval;
    super::every(app, period, move |app| {
        let deliverer = deliverer.clone();
        async move {
            if let Err(error) = crate::webhooks::delivery::round(&app.core, &deliverer).await {
                super::catalog_failed(
                    "webhooks",
                    "webhook deliveries could not be claimed or recorded",
                    &error,
                );
            }
        }
    });
}
