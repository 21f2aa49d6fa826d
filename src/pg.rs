//! Small helpers around tokio-postgres shared by every module that opens its own connections.

use tokio_postgres::{Client, Config, NoTls};

/// Connects and runs the connection driver on its own task. When the driver ends with an
/// error (server gone, network cut), it is logged with `label`; the client then reports
/// `is_closed()` and its next query fails, so the error also reaches the caller.
pub async fn connect(config: &Config, label: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let label = label.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(connection = %label, %error, "connection ended with an error");
        }
    });
    Ok(client)
}

/// A one-line description of a PostgreSQL error: message and SQLSTATE, or the I/O cause chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
