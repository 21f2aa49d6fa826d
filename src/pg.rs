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

/// A `postgres://` URL with every part percent-encoded (user names and passwords may hold
/// any character).
pub fn url(user: &str, password: &str, host: &str, port: u16, dbname: &str) -> String {
    format!("postgres://{}:{}@{}:{port}/{}", percent(user), percent(password), host, percent(dbname))
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_round_trip_through_the_driver() {
        let url = super::url("we ird", "p@ss:w/rd'\\", "db.example", 6543, "my db");
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_user(), Some("we ird"));
        assert_eq!(config.get_password(), Some("p@ss:w/rd'\\".as_bytes()));
        assert_eq!(config.get_dbname(), Some("my db"));
    }
}
