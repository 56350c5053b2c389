//! A throwaway Postgres cluster on a free loopback port, for the warehouse
//! tests: the local stack's cluster (`trellis_kit::stack::Postgres`, which
//! `trellis stack postgres up` makes for ops/), with the warehouse's
//! database and roles. Password authentication over TCP, as in
//! production, so role tests mean something; stopped on drop.

use std::process::Command;

use trellis_kit::stack::Postgres as Cluster;

use crate::free_port;

/// The superuser's name in test clusters.
pub const SUPERUSER: &str = "trellis";
/// The database the warehouse lives in.
pub const DATABASE: &str = "trellis";
/// The sink's owner role.
pub const OWNER: &str = "trellis_sink";

/// A running test cluster.
pub struct Postgres {
    /// Scratch space (the cluster in `pg/`), removed on drop after the
    /// server stops.
    dir: tempfile::TempDir,
    cluster: Cluster,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password.
    pub superuser_password: String,
    /// The owner's password.
    pub owner_password: String,
    /// `trellis_service`'s password.
    pub service_password: String,
}

/// Test clusters need no durability, and tests open many connections.
fn settings() -> Vec<String> {
    vec!["fsync=off".into(), "max_connections=50".into()]
}

impl Postgres {
    /// Creates a cluster, starts it and creates the warehouse database and
    /// roles (`trellis-warehouse setup`).
    pub async fn start() -> Self {
        let pg = Self::start_bare();
        pg.setup().await;
        pg
    }

    /// A cluster with the database but without the warehouse's roles (a
    /// durable broker's storage).
    pub fn start_bare() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cluster = Cluster::new(&dir.path().join("pg"), port).unwrap_or_else(|e| panic!("{e}"));
        let pg = Self {
            dir,
            cluster,
            port,
            superuser_password: crate::test_secret("pg-superuser"),
            owner_password: crate::test_secret("pg-owner"),
            service_password: crate::test_secret("pg-service"),
        };
        // As ops/stack-up's cluster is made (`trellis stack postgres up`).
        pg.cluster
            .init(SUPERUSER, &pg.superuser_password)
            .and_then(|()| pg.cluster.start(&settings()))
            .and_then(|()| pg.cluster.create_database(SUPERUSER, DATABASE))
            .unwrap_or_else(|e| panic!("{e}"));
        pg
    }

    /// Stops the server at once (`immediate`: as if it crashed).
    pub fn stop(&self) {
        self.cluster.stop(true).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn restart(&self) {
        self.cluster
            .start(&settings())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `postgresql://user:password@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        self.cluster.url(user, password, db)
    }

    /// The administrator's URL (the warehouse database).
    pub fn admin_url(&self) -> String {
        self.url(SUPERUSER, &self.superuser_password, DATABASE)
    }

    /// The sink's URL.
    pub fn owner_url(&self) -> String {
        self.url(OWNER, &self.owner_password, DATABASE)
    }

    /// The multi-tenant service's URL.
    pub fn service_url(&self) -> String {
        self.url("trellis_service", &self.service_password, DATABASE)
    }

    /// A client logged in as `user`.
    pub async fn client(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(user, password, db), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A client from a URL (a reader's, as `grant` printed it).
    pub async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        tokio::spawn(connection);
        client
    }

    /// The superuser on the warehouse database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.client(SUPERUSER, &self.superuser_password, DATABASE)
            .await
    }

    /// Runs `trellis-warehouse <args>` with the admin URL; returns stdout.
    pub fn warehouse_cli(&self, args: &[&str]) -> String {
        let output = Command::new(crate::binary("trellis-warehouse"))
            .args(args)
            .env("TRELLIS_WAREHOUSE_ADMIN_URL", self.admin_url())
            .env("TRELLIS_WAREHOUSE_URL", self.owner_url())
            .output()
            .expect("trellis-warehouse runs");
        assert!(
            output.status.success(),
            "trellis-warehouse {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    }

    async fn setup(&self) {
        let owner = self.dir.path().join("owner-password");
        let service = self.dir.path().join("service-password");
        std::fs::write(&owner, &self.owner_password).expect("write");
        std::fs::write(&service, &self.service_password).expect("write");
        self.warehouse_cli(&[
            "setup",
            "--owner",
            OWNER,
            "--owner-password-file",
            &owner.display().to_string(),
            "--service-password-file",
            &service.display().to_string(),
        ]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.cluster.stop(true);
    }
}
