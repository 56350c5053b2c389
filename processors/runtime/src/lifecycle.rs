//! Process lifecycle: the flags every processor binary takes, logging
//! set-up, shutdown signals, exit statuses.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use tracing_subscriber::EnvFilter;

use crate::build::{Build, Description};
use crate::config::{Config, LogFormat};
use crate::pipeline::{Exit, Failure};
use crate::secret::{SecretSpec, Secrets, load_secrets};

/// The flags every processor binary takes (flattened into its clap `Cli`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProcessorArgs {
    /// Configuration file (YAML); `TRELLIS__*` variables override it.
    #[arg(long, env = "TRELLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Delete the state store and rebuild it by replaying the inputs.
    #[arg(long)]
    pub rebuild: bool,
    /// Print what this processor needs (name, secrets, path settings) as
    /// JSON and exit, reading no configuration: `trellis config` and the
    /// local stack ask every binary this instead of keeping a list.
    #[arg(long, conflicts_with = "rebuild")]
    pub describe: bool,
}

impl ProcessorArgs {
    /// The configuration with `--rebuild` applied; on error, the exit code
    /// after reporting it.
    pub fn load<S: DeserializeOwned>(&self) -> Result<Config<S>, ExitCode> {
        let mut config = Config::<S>::load(self.config.as_deref())
            .map_err(|e| report(&e, ExitStatus::Misconfigured))?;
        config.rebuild |= self.rebuild;
        Ok(config)
    }
}

/// The command line of a processor binary with commands of its own
/// (`C`, e.g. `vault …`, `api-key …`): no command runs the processor.
#[derive(clap::Parser, Debug)]
#[command(version)]
pub struct ProcessorCli<C: clap::Subcommand> {
    /// The flags every processor binary takes.
    #[command(flatten)]
    pub processor: ProcessorArgs,
    /// A command of the binary's own.
    #[command(subcommand)]
    pub command: Option<C>,
}

impl<C: clap::Subcommand> ProcessorCli<C> {
    /// Parses the process's arguments; `about` is the binary's `--help` line.
    pub fn parse_with_about(about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().about(about).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// No commands of its own: `ProcessorCli<NoCommand>` for a binary that only
/// runs its processor.
#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum NoCommand {}

/// Defines `main` for a processor binary without commands of its own:
/// its `--help` line, the [`crate::build::Build`] type, and its `run`.
#[macro_export]
macro_rules! processor_main {
    ($about:literal, $processor:ty, $run:path) => {
        #[global_allocator]
        static ALLOCATOR: ::mimalloc::MiMalloc = ::mimalloc::MiMalloc;

        fn main() -> ::std::process::ExitCode {
            let cli =
                $crate::lifecycle::ProcessorCli::<$crate::lifecycle::NoCommand>::parse_with_about(
                    $about,
                );
            $crate::lifecycle::serve_processor::<$processor, _>(&cli.processor, $run)
        }
    };
}

/// Defines a processor crate's `run`: [`crate::build::run`] for the
/// processor, instantiated once in the processor's own crate (its binary,
/// the bench and the tests call this rather than compiling the loop again).
#[macro_export]
macro_rules! processor_run {
    ($processor:ty) => {
        /// Runs the processor until `shutdown` resolves (see
        /// `trellis_runtime::build::run`).
        ///
        /// # Errors
        /// `Failure` at start or while running.
        pub async fn run(
            config: $crate::Config<<$processor as $crate::build::Build>::Settings>,
            secrets: $crate::secret::Secrets,
            shutdown: $crate::Shutdown<'_>,
        ) -> ::std::result::Result<$crate::Exit, $crate::Failure> {
            $crate::build::run::<$processor>(config, secrets, shutdown).await
        }
    };
}

/// The whole `main` of a tool (`trellis`, `trellis-bench`): `run` on a
/// multi-threaded Tokio runtime, its outcome as the exit code, an error
/// printed with its causes.
pub fn run_tool<E: std::fmt::Display>(
    run: impl Future<Output = Result<ExitStatus, E>>,
) -> ExitCode {
    no_transparent_huge_pages();
    init_tracing(LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Failure.into();
        }
    };
    match runtime.block_on(run) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitStatus::Failure.into()
        }
    }
}

/// The processor's secrets; a missing or malformed one is reported (by name,
/// never by value) and becomes the exit code.
pub fn secrets_or_exit(specs: &[SecretSpec]) -> Result<Secrets, ExitCode> {
    load_secrets(specs).map_err(|e| report(&e, ExitStatus::Misconfigured))
}

/// Turns transparent huge pages off for this process; every binary does it
/// first. mimalloc advises its arenas as huge pages, and each fresh 2 MB page
/// is then zeroed whole on first touch: `clear_page_erms` under mimalloc's
/// page faults was a fifth of a progress rebuild and of the collector's time,
/// and turning it off made both 20–30% faster. This is what mimalloc itself
/// does for `MIMALLOC_ALLOW_THP=0`, without relying on the environment.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and sets a flag of the
    // calling process; no memory is passed.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

/// The whole `main` of a processor: load the configuration, start logging,
/// load `secrets` (none for processors without any), then run the future
/// `run` makes until it ends (on SIGTERM/SIGINT for processors).
pub fn serve<S, Fut>(
    args: &ProcessorArgs,
    secrets: &[SecretSpec],
    run: impl FnOnce(Config<S>, Secrets) -> Fut,
) -> ExitCode
where
    S: DeserializeOwned,
    Fut: Future<Output = Result<Exit, Failure>>,
{
    no_transparent_huge_pages();
    let config = match args.load::<S>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(config.log_format);
    match secrets_or_exit(secrets) {
        Ok(secrets) => block_on_processor(run(config, secrets)),
        Err(code) => code,
    }
}

/// [`serve`] for a processor built with [`crate::build::Build`] `B`: its
/// `run` takes the configuration, the secrets and a shutdown on
/// SIGTERM/SIGINT. `--describe` prints `B`'s [`Description`] instead.
pub fn serve_processor<B, Fut>(
    args: &ProcessorArgs,
    run: impl FnOnce(Config<B::Settings>, Secrets, Shutdown<'static>) -> Fut,
) -> ExitCode
where
    B: Build,
    Fut: Future<Output = Result<Exit, Failure>>,
{
    if args.describe {
        return match serde_json::to_string_pretty(&Description::of::<B>()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => report(&e, ExitStatus::Failure),
        };
    }
    serve(args, B::SECRETS, |config, secrets| {
        run(config, secrets, shutdown_signal())
    })
}

/// Installs the tracing subscriber. `RUST_LOG` overrides the default filter
/// (`info`, with librdkafka's chatter at `warn`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What a processor's `run` stops on. Boxed rather than generic so that
/// `run`, and the processor's whole loop under it, is compiled once in the
/// processor's own crate, not again in its binary, in `trellis` and in
/// every test that starts it (that was a fifth of a CI build).
pub type Shutdown<'a> = futures::future::BoxFuture<'a, ()>;

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> Shutdown<'static> {
    use tokio::signal::unix::{SignalKind, signal};
    Box::pin(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the current batch"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the current batch"),
        }
    })
}

/// Exit statuses of Trellis binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Clean shutdown.
    Success,
    /// A runtime failure; restart resumes from the last checkpoint.
    Failure,
    /// Shutdown deadline passed; the last batch will be replayed.
    Killed,
    /// Configuration, secret or topology problem: fix before restarting (EX_CONFIG).
    Misconfigured,
    /// A required service (broker, registry) is unreachable (EX_UNAVAILABLE).
    Unavailable,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Killed => 3,
            Self::Unavailable => 69,
            Self::Misconfigured => 78,
        }
    }
}

impl From<Exit> for ExitStatus {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Success => Self::Success,
            Exit::ForcedShutdown => Self::Killed,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

/// Prints `error` as the binary's last word and picks its exit status.
pub fn report(error: &dyn std::fmt::Display, status: ExitStatus) -> ExitCode {
    tracing::error!("{error}");
    eprintln!("error: {error}");
    status.into()
}

/// Runs a processor's `run` future on a multi-threaded Tokio runtime and
/// turns its outcome into the process exit code (the tail of every
/// processor's `main`).
pub fn block_on_processor(run: impl Future<Output = Result<Exit, Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&e, ExitStatus::Failure),
    };
    match runtime.block_on(run) {
        Ok(exit) => ExitStatus::from(exit).into(),
        Err(e) => {
            let status = e.status();
            report(&e, status)
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_off_for_the_process() {
        super::no_transparent_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE reads a flag of the calling process.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }
}
