//! The administrator's side of the warehouse: the roles, and one reader role
//! per tenant.
//!
//! Three kinds of roles touch the tables:
//! - the **owner** (default `trellis_sink`): the sink's own login. It owns
//!   the schemas and tables and writes through its own policy; it is
//!   neither superuser nor `BYPASSRLS`, and row-level security is forced on
//!   it too.
//! - a **reader per tenant** (`trellis_reader_<tenant>`), for that tenant's
//!   analysts: a member of `trellis_readers` (which holds `SELECT`), mapped
//!   to its tenant in `trellis_sink.reader_roles`, which it cannot write. The
//!   policies take the tenant from that mapping by `current_user`, so no
//!   setting a reader makes in its session widens what it sees.
//! - **`trellis_service`**, a trusted multi-tenant service (a dashboard API):
//!   it sees the tenant named by `SET LOCAL trellis.tenant = '…'` in its
//!   current transaction, and nothing without it.
//!
//! Passwords are sent to Postgres as SCRAM-SHA-256 verifiers, never in the
//! clear (a statement log would keep them), and shown once.

use tokio_postgres::Client;

use crate::connection::{ConnectionString, quote_ident, quote_literal};

/// The group every tenant reader belongs to.
pub const READERS: &str = "trellis_readers";
/// The multi-tenant service role.
pub const SERVICE: &str = "trellis_service";
/// Prefix of tenant reader roles.
const READER_PREFIX: &str = "trellis_reader_";

/// What went wrong administering roles.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// Postgres refused.
    #[error("{what}: {}", crate::connection::describe(source))]
    Sql {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// The request does not make sense.
    #[error("{0}")]
    Invalid(String),
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RoleError {
    move |source| RoleError::Sql { what, source }
}

/// A new random password (24 random bytes as hex: URL-safe).
pub fn new_password() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// `password` as a SCRAM-SHA-256 verifier literal for `PASSWORD '…'`.
fn verifier(password: &str) -> String {
    quote_literal(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

async fn role_exists(admin: &Client, role: &str) -> Result<bool, RoleError> {
    Ok(admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(sql("looking up a role"))?
        .is_some())
}

/// Creates the roles the warehouse needs (idempotent): the owner `owner`
/// with `owner_password`, `trellis_readers`, and `trellis_service` with
/// `service_password` (when given), and lets the owner create its schemas
/// in the current database.
///
/// # Errors
/// [`RoleError`]; an existing owner that is superuser or `BYPASSRLS` is
/// refused, since row-level security would not hold for it.
pub async fn setup(
    admin: &Client,
    owner: &str,
    owner_password: Option<&str>,
    service_password: Option<&str>,
) -> Result<Vec<String>, RoleError> {
    let mut done = Vec::new();
    let limits = "NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION";
    for (role, login, password) in [
        (owner, true, owner_password),
        (READERS, false, None),
        (SERVICE, true, service_password),
    ] {
        let login = if login { "LOGIN" } else { "NOLOGIN" };
        if role_exists(admin, role).await? {
            let row = admin
                .query_one(
                    "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1",
                    &[&role],
                )
                .await
                .map_err(sql("checking a role"))?;
            if row.get::<_, bool>(0) {
                return Err(RoleError::Invalid(format!(
                    "role `{role}` is superuser or BYPASSRLS: row-level security would not apply to it"
                )));
            }
        } else {
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {} {login} {limits}",
                    quote_ident(role)
                ))
                .await
                .map_err(sql("creating a role"))?;
            done.push(format!("created role {role}"));
        }
        if let Some(password) = password {
            admin
                .batch_execute(&format!(
                    "ALTER ROLE {} PASSWORD {}",
                    quote_ident(role),
                    verifier(password)
                ))
                .await
                .map_err(sql("setting a password"))?;
            done.push(format!("set the password of {role}"));
        }
    }
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(sql("reading the database name"))?
        .get(0);
    admin
        .batch_execute(&format!(
            "GRANT CONNECT, CREATE ON DATABASE {db} TO {owner};
             GRANT CONNECT ON DATABASE {db} TO {READERS}, {SERVICE};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
            db = quote_ident(&database),
            owner = quote_ident(owner),
        ))
        .await
        .map_err(sql("granting the database"))?;
    Ok(done)
}

/// The reader role of `tenant`: `trellis_reader_` and the tenant with
/// anything but `[a-z0-9_]` as `_`.
///
/// # Errors
/// [`RoleError::Invalid`] for an empty or too long tenant.
pub fn reader_role(tenant: &str) -> Result<String, RoleError> {
    if tenant.is_empty() {
        return Err(RoleError::Invalid("the tenant is empty".into()));
    }
    let name: String = tenant
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let role = format!("{READER_PREFIX}{name}");
    if role.len() > 63 {
        return Err(RoleError::Invalid(format!(
            "tenant `{tenant}` makes a role name longer than Postgres allows (63 bytes)"
        )));
    }
    Ok(role)
}

/// A reader role just created: shown once.
pub struct Granted {
    /// The role.
    pub role: String,
    /// Its connection URL, with the password.
    pub url: String,
}

/// Creates `tenant`'s reader role with a new password and maps it to the
/// tenant. `admin` connects as an administrator; `via` is the address the
/// reader will use.
///
/// # Errors
/// [`RoleError`]; a tenant that already has a reader is refused (revoke it
/// first), and so is a role name another tenant's reader already has.
pub async fn grant(
    admin: &mut Client,
    via: &ConnectionString,
    tenant: &str,
) -> Result<Granted, RoleError> {
    let role = reader_role(tenant)?;
    let tx = admin
        .transaction()
        .await
        .map_err(sql("starting a transaction"))?;
    if let Some(row) = tx
        .query_opt(
            "SELECT tenant_id FROM trellis_sink.reader_roles WHERE role_name = $1",
            &[&role],
        )
        .await
        .map_err(sql(
            "reading the reader roles (has the sink migrated the warehouse?)",
        ))?
    {
        let holder: String = row.get(0);
        return Err(RoleError::Invalid(if holder == tenant {
            format!(
                "tenant `{tenant}` already has reader role `{role}`: revoke it first to issue a new one"
            )
        } else {
            format!("role `{role}` already reads tenant `{holder}`")
        }));
    }
    let password = new_password();
    tx.batch_execute(&format!(
        "CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {READERS} \
         NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION",
        quote_ident(&role),
        verifier(&password)
    ))
    .await
    .map_err(sql("creating the reader role"))?;
    tx.execute(
        "INSERT INTO trellis_sink.reader_roles (role_name, tenant_id) VALUES ($1, $2)",
        &[&role, &tenant],
    )
    .await
    .map_err(sql("mapping the reader to its tenant"))?;
    tx.batch_execute(&format!(
        "ALTER ROLE {} SET search_path = trellis",
        quote_ident(&role)
    ))
    .await
    .map_err(sql("setting the reader's search path"))?;
    tx.commit().await.map_err(sql("committing"))?;
    Ok(Granted {
        url: via.url_for(&role, &password),
        role,
    })
}

/// Removes `tenant`'s reader role: its mapping, its sessions, the role.
/// Returns the role removed, if there was one.
///
/// # Errors
/// [`RoleError`].
pub async fn revoke(admin: &mut Client, tenant: &str) -> Result<Option<String>, RoleError> {
    let role = reader_role(tenant)?;
    let tx = admin
        .transaction()
        .await
        .map_err(sql("starting a transaction"))?;
    if let Some(row) = tx
        .query_opt(
            "SELECT tenant_id FROM trellis_sink.reader_roles WHERE role_name = $1",
            &[&role],
        )
        .await
        .map_err(sql("reading the reader roles"))?
    {
        let holder: String = row.get(0);
        if holder != tenant {
            // Two tenants whose names differ only in characters a role name
            // cannot hold: never drop the other one's reader.
            return Err(RoleError::Invalid(format!(
                "role `{role}` reads tenant `{holder}`, not `{tenant}`"
            )));
        }
    }
    let mapped = tx
        .execute(
            "DELETE FROM trellis_sink.reader_roles WHERE role_name = $1 AND tenant_id = $2",
            &[&role, &tenant],
        )
        .await
        .map_err(sql("unmapping the reader"))?;
    let exists = tx
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(sql("looking up the reader"))?
        .is_some();
    if exists {
        tx.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .map_err(sql("ending the reader's sessions"))?;
        tx.batch_execute(&format!(
            "DROP OWNED BY {r}; DROP ROLE {r}",
            r = quote_ident(&role)
        ))
        .await
        .map_err(sql("dropping the reader role"))?;
    }
    tx.commit().await.map_err(sql("committing"))?;
    Ok((mapped > 0 || exists).then_some(role))
}

/// Every reader role and its tenant.
///
/// # Errors
/// [`RoleError`].
pub async fn readers(admin: &Client) -> Result<Vec<(String, String)>, RoleError> {
    Ok(admin
        .query(
            "SELECT role_name::text, tenant_id FROM trellis_sink.reader_roles ORDER BY tenant_id",
            &[],
        )
        .await
        .map_err(sql("reading the reader roles"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_roles_are_safe_identifiers() {
        assert_eq!(
            reader_role("northwind-uni").unwrap(),
            "trellis_reader_northwind_uni"
        );
        assert_eq!(reader_role("A'b").unwrap(), "trellis_reader___b");
        assert!(reader_role("").is_err());
        assert!(reader_role(&"x".repeat(60)).is_err());
    }

    #[test]
    fn passwords_are_sent_as_scram_verifiers() {
        let v = verifier("hunter2");
        assert!(v.starts_with("'SCRAM-SHA-256$"), "{v}");
        assert!(!v.contains("hunter2"));
    }
}
