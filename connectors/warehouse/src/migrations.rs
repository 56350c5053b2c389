//! The warehouse schema, as versioned SQL migrations the sink applies.
//!
//! Migrations live in `migrations/NNNN_name.sql` and are compiled in. Each
//! runs in its own transaction, under an advisory lock (two sinks starting
//! at once apply each migration once), and is recorded with its SHA-256 in
//! `trellis_sink.migrations`; an applied migration whose text has since
//! changed is refused, because the database no longer matches the file.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// `(version, name, SQL)`, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "tables", include_str!("../migrations/0001_tables.sql"))];

/// Any number; the same in every sink.
const MIGRATION_LOCK: i64 = 0x0074_7265_6c6c_6973; // "trellis"

/// The roles `trellis-warehouse setup` creates, which the tables are
/// granted to.
pub const REQUIRED_ROLES: &[&str] = &["trellis_readers", "trellis_service"];

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Postgres refused.
    #[error(
        "migration {version} ({name}): {}",
        crate::connection::describe(source)
    )]
    Sql {
        /// The migration.
        version: i32,
        /// Its name.
        name: &'static str,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// Setting up the bookkeeping failed.
    #[error("preparing migrations: {}", crate::connection::describe(.0))]
    Bookkeeping(#[from] tokio_postgres::Error),
    /// An applied migration is not the file compiled in.
    #[error(
        "migration {version} was applied from a different text (checksum {applied}, this build has {ours}): the database does not match this version of the sink"
    )]
    Changed {
        /// The migration.
        version: i32,
        /// Checksum recorded at application.
        applied: String,
        /// Checksum of this build's file.
        ours: String,
    },
    /// The database has migrations this build does not know.
    #[error(
        "the database is at schema version {0}, newer than this sink knows ({1}): run a newer sink"
    )]
    Newer(i32, i32),
    /// The administrator's setup has not run.
    #[error(
        "role `{0}` does not exist: run `trellis-warehouse setup` as a database administrator first"
    )]
    MissingRole(String),
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies every migration the database lacks; returns the versions applied.
///
/// # Errors
/// [`MigrationError`] naming the migration and the cause.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrationError> {
    for role in REQUIRED_ROLES {
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
            .await?
            .is_some();
        if !exists {
            return Err(MigrationError::MissingRole((*role).to_string()));
        }
    }
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS trellis_sink;
             CREATE TABLE IF NOT EXISTS trellis_sink.migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied: Vec<(i32, String)> = tx
        .query("SELECT version, checksum FROM trellis_sink.migrations", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(v) = applied.iter().map(|a| a.0).max()
        && v > newest
    {
        return Err(MigrationError::Newer(v, newest));
    }
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let ours = checksum(sql);
        if let Some((_, recorded)) = applied.iter().find(|a| a.0 == version) {
            if *recorded != ours {
                return Err(MigrationError::Changed {
                    version,
                    applied: recorded.clone(),
                    ours,
                });
            }
            continue;
        }
        let sql_error = |source| MigrationError::Sql {
            version,
            name,
            source,
        };
        tx.batch_execute(sql).await.map_err(sql_error)?;
        tx.execute(
            "INSERT INTO trellis_sink.migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &ours],
        )
        .await
        .map_err(sql_error)?;
        done.push(version);
    }
    tx.commit().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, (version, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
            assert!(!sql.trim().is_empty());
        }
    }
}
