//! Process lifecycle: logging set-up, shutdown signals, exit statuses.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::pipeline::Exit;

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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
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
pub fn block_on_processor(
    run: impl std::future::Future<Output = Result<Exit, crate::pipeline::Failure>>,
) -> ExitCode {
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
