//! Connecting to Postgres, and what its errors mean for the sink.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A connection string, parsed; never printed with its password.
#[derive(Clone)]
pub struct ConnectionString {
    config: tokio_postgres::Config,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `user@host:port/dbname`: what a log line may say about a connection.
impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        write!(
            f,
            "{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or("?"),
            self.config.get_dbname().unwrap_or("?")
        )
    }
}

impl ConnectionString {
    /// Parses a `postgresql://` URL or a `key=value` string. The error
    /// never repeats the text (it may hold a password).
    ///
    /// # Errors
    /// A message saying what form is expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config = tokio_postgres::Config::from_str(text.trim()).map_err(|_| {
            "is not a Postgres connection string (postgresql://user:password@host:port/dbname)"
                .to_string()
        })?;
        if config.get_user().is_none() || config.get_dbname().is_none() {
            return Err("must name the user and the database".into());
        }
        Ok(Self { config })
    }

    /// The role it logs in as.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// The database.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// The same server and database as `user` with `password`, as a URL (for
    /// the one time a new role's credentials are shown).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let shown = self.to_string();
        let (_, host_and_db) = shown.split_once('@').unwrap_or(("", &shown));
        format!("postgresql://{user}:{password}@{host_and_db}")
    }

    /// Connects; the connection is driven by a task of its own.
    ///
    /// # Errors
    /// The driver's error (connection refused, authentication).
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }
}

/// What an error means for the batch being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server or the network may recover: reconnect, back off, retry.
    Transient,
    /// A row's data was refused (class 22 data exception, 23 integrity
    /// constraint): find the row, dead-letter it, write the rest.
    Data,
    /// Anything else (permissions, a dropped table): an operator must act.
    Fatal,
}

/// Sorts a Postgres error.
pub fn verdict(error: &tokio_postgres::Error) -> Verdict {
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection broke, timed out or was refused.
        return Verdict::Transient;
    };
    if error.is_closed() {
        return Verdict::Transient;
    }
    let class = &code.code()[..2];
    match class {
        // connection exception, insufficient resources, operator
        // intervention (shutdown, cancel), system error (I/O), transaction
        // rollback (serialization failure, deadlock, completion unknown)
        "08" | "53" | "57" | "58" | "40" => Verdict::Transient,
        // A standby after a failover, a lock that timed out.
        _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::LOCK_NOT_AVAILABLE =>
        {
            Verdict::Transient
        }
        "22" | "23" => Verdict::Data,
        _ => Verdict::Fatal,
    }
}

/// An error as a log line or message should show it: the server's message
/// and SQLSTATE when it has them (the driver's own `Display` says only
/// "db error").
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The connection string in the secret `spec` of `secrets`.
///
/// # Errors
/// A message naming the variable (never its value) when it does not parse.
pub fn connection(
    secrets: &trellis_runtime::secret::Secrets,
    spec: &trellis_runtime::secret::SecretSpec,
) -> Result<ConnectionString, String> {
    let text = String::from_utf8_lossy(secrets.get(spec.env).expose()).into_owned();
    ConnectionString::parse(&text).map_err(|e| format!("{} {e}", spec.env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_never_shows_its_password() {
        let c =
            ConnectionString::parse("postgresql://sink:s3cr3t-pw@127.0.0.1:5544/trellis").unwrap();
        assert_eq!(c.to_string(), "sink@127.0.0.1:5544/trellis");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let e = ConnectionString::parse("http://nope:s3cr3t-pw@x").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert_eq!(
            c.url_for("reader", "pw"),
            "postgresql://reader:pw@127.0.0.1:5544/trellis"
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
