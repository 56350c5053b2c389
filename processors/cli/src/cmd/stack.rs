//! `trellis stack …`: the local stack's infrastructure, as ops/ starts it
//! (the broker-backed tests start the same through `trellis_kit::stack`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use trellis_kit::stack::{self, Postgres};
use trellis_runtime::lifecycle::ExitStatus;

#[derive(Subcommand)]
pub enum StackCommand {
    /// Become the broker on 127.0.0.1:PORT, in the foreground: this process
    /// is replaced by the broker, so its pid is the broker's. tansu with
    /// memory storage, or with --storage-url-file nisshi storing its log in
    /// Postgres (durable, with retention and compaction).
    Broker {
        /// Port on 127.0.0.1 (listening and advertised).
        #[arg(long)]
        port: u16,
        /// The cluster id it reports (a fresh one per start: memory
        /// storage starts empty).
        #[arg(long)]
        cluster_id: String,
        /// TRELLIS_HOME (tansu is `<home>/bin/tansu` unless TRELLIS_TANSU;
        /// nisshi `<home>/nisshi-<version>/bin/nisshi` unless TRELLIS_NISSHI).
        #[arg(long, env = "TRELLIS_HOME")]
        home: PathBuf,
        /// File holding the `postgres://` URL of the durable broker's
        /// storage (a file: the URL carries a password).
        #[arg(long)]
        storage_url_file: Option<PathBuf>,
        /// How often the durable broker applies retention and compaction.
        #[arg(long, default_value = "30", value_name = "SECONDS")]
        maintenance_secs: u64,
    },
    /// A throwaway Postgres cluster.
    #[command(subcommand)]
    Postgres(PostgresCommand),
}

#[derive(Subcommand)]
pub enum PostgresCommand {
    /// Create a cluster in DIR (which must not hold one), start it on
    /// 127.0.0.1:PORT and create a database; the superuser's password is
    /// read from a file (never an argument).
    Up {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// The superuser's name.
        #[arg(long, default_value = "trellis")]
        superuser: String,
        /// File holding the superuser's password.
        #[arg(long)]
        password_file: PathBuf,
        /// The database to create.
        #[arg(long, default_value = "trellis")]
        database: String,
        /// Server settings, `name=value` (repeatable).
        #[arg(long = "set")]
        settings: Vec<String>,
    },
    /// Start the cluster DIR already holds (the durable broker's storage
    /// across stack restarts) on 127.0.0.1:PORT.
    Start {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
    /// Stop the cluster in DIR (fast shutdown); nothing if it is not running.
    Down {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs a `stack` command.
///
/// # Errors
/// tansu or Postgres missing, or a Postgres program failing.
pub fn run(command: StackCommand) -> anyhow::Result<ExitStatus> {
    match command {
        StackCommand::Broker {
            port,
            cluster_id,
            home,
            storage_url_file: None,
            ..
        } => {
            let tansu = stack::tansu(&home)?;
            let error = stack::broker_command(&tansu, port, &cluster_id).exec();
            Err(error).with_context(|| format!("starting {}", tansu.display()))
        }
        StackCommand::Broker {
            port,
            cluster_id,
            home,
            storage_url_file: Some(file),
            maintenance_secs,
        } => {
            let nisshi = stack::nisshi(&home)?;
            let storage = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let error = stack::durable_broker_command(
                &nisshi,
                port,
                &cluster_id,
                storage.trim(),
                std::time::Duration::from_secs(maintenance_secs),
            )
            .exec();
            Err(error).with_context(|| format!("starting {}", nisshi.display()))
        }
        StackCommand::Postgres(PostgresCommand::Up {
            dir,
            port,
            superuser,
            password_file,
            database,
            settings,
        }) => {
            let password = std::fs::read_to_string(&password_file)
                .with_context(|| format!("reading {}", password_file.display()))?;
            let pg = Postgres::new(&dir, port)?;
            pg.init(&superuser, password.trim())?;
            pg.start(&settings)?;
            pg.create_database(&superuser, &database)?;
            Ok(ExitStatus::Success)
        }
        StackCommand::Postgres(PostgresCommand::Start { dir, port }) => {
            Postgres::new(&dir, port)?.start(&[])?;
            Ok(ExitStatus::Success)
        }
        StackCommand::Postgres(PostgresCommand::Down { dir }) => {
            // The port does not matter for stopping.
            Postgres::new(&dir, 0)?.stop(false)?;
            Ok(ExitStatus::Success)
        }
    }
}
