//! The local stack's infrastructure, started one way for ops/ (through
//! `trellis stack …`) and for the broker-backed tests (which call this
//! module): a tansu broker, and a throwaway Postgres cluster with password
//! authentication over TCP. Everything listens on 127.0.0.1 only.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where tansu is: `TRELLIS_TANSU`, else `<home>/bin/tansu` (where
/// `ops/install-tansu` puts it).
///
/// # Errors
/// It is not there, with what installs it.
pub fn tansu(home: &Path) -> anyhow::Result<PathBuf> {
    let path =
        std::env::var_os("TRELLIS_TANSU").map_or_else(|| home.join("bin/tansu"), PathBuf::from);
    if !path.exists() {
        bail!(
            "tansu not found at {}: run ops/install-tansu (or set TRELLIS_TANSU)",
            path.display()
        );
    }
    Ok(path)
}

/// The broker's one command line: tansu on 127.0.0.1:`port` (listening and
/// advertised), memory storage, reporting cluster id `cluster` (a state
/// store built from another cluster's log is refused, so each fresh
/// broker gets its own id).
pub fn broker_command(tansu: &Path, port: u16, cluster: &str) -> Command {
    let mut command = broker(tansu, port, cluster);
    command.args(["--storage-engine", "memory://tansu/"]);
    command
}

/// `<binary> broker` on 127.0.0.1:`port` (listening and advertised),
/// reporting cluster id `cluster`: what tansu and nisshi share.
fn broker(binary: &Path, port: u16, cluster: &str) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
        .arg("broker")
        .args(["--cluster-id", cluster])
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url]);
    command
}

/// The nisshi release `ops/install-nisshi` builds and the stack runs.
pub const NISSHI_VERSION: &str = "0.8.1";

/// Where nisshi is: `TRELLIS_NISSHI`, else
/// `<home>/nisshi-<version>/bin/nisshi` (where `ops/install-nisshi` caches
/// its build).
///
/// # Errors
/// It is not there, with what installs it.
pub fn nisshi(home: &Path) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("TRELLIS_NISSHI").map_or_else(
        || home.join(format!("nisshi-{NISSHI_VERSION}/bin/nisshi")),
        PathBuf::from,
    );
    if !path.exists() {
        bail!(
            "nisshi not found at {}: run ops/install-nisshi (about 17 minutes the first time), or set TRELLIS_NISSHI",
            path.display()
        );
    }
    Ok(path)
}

/// The durable broker's command line: nisshi on 127.0.0.1:`port` storing
/// its log in the Postgres database at `storage` (a `postgres://` URL; its
/// tables are created on first start), reporting cluster id `cluster`.
/// Retention and compaction run in a maintenance sweep every
/// `maintenance` (nisshi's default is 10 minutes: a record would outlive
/// its `retention.ms` by up to that). A new group's first rebalance does
/// not wait for more members (Kafka's `group.initial.rebalance.delay.ms`,
/// 3 s by default), so a processor holds its lease as soon as it joins.
pub fn durable_broker_command(
    nisshi: &Path,
    port: u16,
    cluster: &str,
    storage: &str,
    maintenance: Duration,
) -> Command {
    let separator = if storage.contains('?') { '&' } else { '?' };
    let storage = format!(
        "{storage}{separator}maintenance_interval={}s",
        maintenance.as_secs().max(1)
    );
    let mut command = broker(nisshi, port, cluster);
    command
        .args(["--storage-engine", &storage])
        .args(["--group-initial-rebalance-delay", "0s"])
        .arg("--silent");
    command
}

/// Consumer settings a processor needs on nisshi: its fetch answers as
/// soon as one record is ready, so librdkafka's defaults read about one
/// record per round trip (33 records/s measured, INFRA.md); waiting for a
/// full fetch (or 200 ms) reads 120k records/s.
pub const DURABLE_BROKER_CLIENT: &[(&str, &str)] =
    &[("fetch.min.bytes", "1000000"), ("fetch.wait.max.ms", "200")];

/// Writes `bytes` to a new file only its owner can read.
fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
///
/// # Errors
/// Nothing does within `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A throwaway Postgres cluster in `dir` (data in `dir/data`, its log
/// `dir/postgres.log`, its socket in `dir`) on 127.0.0.1:`port`. Run as
/// the `postgres` user when we are root (Postgres refuses root).
#[derive(Debug, Clone)]
pub struct Postgres {
    /// The `bin` directory of the Postgres installation.
    pub bin: PathBuf,
    /// The cluster's directory.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// The cluster in `dir` on `port`, with the newest Postgres installed.
    ///
    /// # Errors
    /// No Postgres installed.
    pub fn new(dir: &Path, port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            bin: Self::bin_dir()?,
            dir: dir.to_path_buf(),
            port,
        })
    }

    /// `TRELLIS_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
    ///
    /// # Errors
    /// Neither has `initdb`, with what installs it.
    pub fn bin_dir() -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os("TRELLIS_PG_BIN") {
            let dir = PathBuf::from(dir);
            if dir.join("initdb").exists() {
                return Ok(dir);
            }
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        // Version directories: 9.6 < 15 needs a numeric sort.
        found.sort_by_key(|p| {
            p.parent()
                .and_then(Path::file_name)
                .and_then(|v| v.to_str())
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        });
        found.pop().context(
            "no Postgres found (TRELLIS_PG_BIN or /usr/lib/postgresql/*/bin): \
             run ops/install-postgres",
        )
    }

    /// Where its data is.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    /// Runs Postgres program `program` (as `postgres` when root).
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.bin.join(program);
        let mut command = if Self::as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// Creates the cluster (an empty or missing `dir`): superuser
    /// `superuser` with `password`, trust over the socket, SCRAM over TCP,
    /// UTF-8.
    ///
    /// # Errors
    /// The directory cannot be prepared, or `initdb` fails.
    pub fn init(&self, superuser: &str, password: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // initdb reads the password from a file: owner-only, and gone
        // whatever happens next.
        let pwfile = self.dir.join("pwfile");
        let result = write_owner_only(&pwfile, password.as_bytes())
            .with_context(|| format!("writing {}", pwfile.display()))
            .and_then(|()| self.initdb(superuser, &pwfile));
        let _ = std::fs::remove_file(&pwfile);
        result
    }

    fn initdb(&self, superuser: &str, pwfile: &Path) -> anyhow::Result<()> {
        if Self::as_root() {
            // The postgres user must reach its directory through the
            // parent (TRELLIS_HOME): traversal only, no listing.
            if let Some(parent) = self.dir.parent() {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(parent)
                    .with_context(|| format!("reading {}", parent.display()))?
                    .permissions()
                    .mode();
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o001))
                    .with_context(|| format!("letting postgres through {}", parent.display()))?;
            }
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown postgres {} failed", self.dir.display());
            }
        }
        self.run(
            "initdb",
            &[
                "-D",
                &self.data().display().to_string(),
                "-U",
                superuser,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .map(drop)
    }

    /// Starts the server (`settings`: extra `-c name=value`) and waits
    /// until it accepts connections.
    ///
    /// # Errors
    /// `pg_ctl` fails, or the port does not open within 30 s.
    pub fn start(&self, settings: &[String]) -> anyhow::Result<()> {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.display()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &options,
                "-l",
                &self.dir.join("postgres.log").display().to_string(),
                "-w",
                "start",
            ],
        )?;
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// Creates database `name` as `superuser` (over the socket).
    ///
    /// # Errors
    /// `psql` fails.
    pub fn create_database(&self, superuser: &str, name: &str) -> anyhow::Result<()> {
        self.run(
            "psql",
            &[
                "-h",
                &self.dir.display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                superuser,
                "-d",
                "postgres",
                "-qAt",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ],
        )
        .map(drop)
    }

    /// Stops the server: `fast` (clients disconnected, a clean shutdown)
    /// or `immediate` (as if it crashed).
    ///
    /// # Errors
    /// `pg_ctl` fails (a server already stopped is not an error).
    pub fn stop(&self, immediate: bool) -> anyhow::Result<()> {
        let data = self.data();
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        let mode = if immediate { "immediate" } else { "fast" };
        self.run(
            "pg_ctl",
            &["-D", &data.display().to_string(), "-m", mode, "-w", "stop"],
        )
        .map(drop)
    }

    /// `postgresql://user:password@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }
}
