//! A throwaway Postgres cluster on a free loopback port, for the warehouse
//! tests: `initdb` + `pg_ctl` from the machine's Postgres (ops/install-postgres
//! puts it there; `TRELLIS_PG_BIN` names its `bin` directory), run as the
//! `postgres` user when the tests run as root (Postgres refuses root).
//! Password authentication over TCP, as in production, so role tests mean
//! something; stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;

/// The superuser's name in test clusters.
pub const SUPERUSER: &str = "trellis";
/// The database the warehouse lives in.
pub const DATABASE: &str = "trellis";
/// The sink's owner role.
pub const OWNER: &str = "trellis_sink";

/// A running test cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password.
    pub superuser_password: String,
    /// The owner's password.
    pub owner_password: String,
    /// `trellis_service`'s password.
    pub service_password: String,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRELLIS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "no Postgres found (TRELLIS_PG_BIN or /usr/lib/postgresql/*/bin): run ops/install-postgres",
    )
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Postgres {
    /// Creates a cluster, starts it and creates the warehouse database and
    /// roles (`trellis-warehouse setup`).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = bin_dir();
        let port = free_port();
        let pg = Self {
            dir,
            bin,
            port,
            superuser_password: crate::test_secret("pg-superuser"),
            owner_password: crate::test_secret("pg-owner"),
            service_password: crate::test_secret("pg-service"),
        };
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, &pg.superuser_password).expect("pwfile");
        if running_as_root() {
            pg.chown(pg.dir.path());
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                SUPERUSER,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start_server();
        let admin = pg
            .client(SUPERUSER, &pg.superuser_password, "postgres")
            .await;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .expect("create database");
        pg.setup().await;
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn chown(&self, path: &Path) {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success());
    }

    /// Runs a Postgres program (as `postgres` when root).
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let output = if running_as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        }
        .expect("run a Postgres program");
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start_server(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &options,
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "start",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "Postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (`immediate`: as if it crashed).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn restart(&self) {
        self.start_server();
    }

    /// `postgresql://user:password@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
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
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D"])
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
