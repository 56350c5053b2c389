//! `trellis-warehouse`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use trellis_runtime::lifecycle::{ExitStatus, ProcessorCli, report, serve_processor};
use trellis_runtime::secret::{SecretFormat, SecretSpec};
use trellis_warehouse::connection::connection;
use trellis_warehouse::{Settings, WAREHOUSE_URL, Warehouse, roles, run};

const ABOUT: &str = "Writes `progress`, `completions` and `analytics.aggregates` into Postgres tables with row-level security per tenant, exactly once, and erases a learner's rows when the GDPR saga asks. Without a subcommand it runs the sink (`TRELLIS_WAREHOUSE_URL`: the owner role's connection URL).";

/// The administrator's connection (a superuser, or a role with CREATEROLE
/// that may write `trellis_sink.reader_roles`).
const ADMIN_URL: SecretSpec = SecretSpec {
    env: "TRELLIS_WAREHOUSE_ADMIN_URL",
    format: SecretFormat::PostgresUrl,
    purpose: "an administrator's Postgres connection URL, for role management",
};

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations (the sink also does at start). Uses
    /// TRELLIS_WAREHOUSE_URL.
    Migrate,
    #[command(flatten)]
    Admin(Admin),
}

/// Commands an administrator runs (TRELLIS_WAREHOUSE_ADMIN_URL).
#[derive(Subcommand)]
enum Admin {
    /// Create the roles the warehouse needs (once, as an administrator;
    /// idempotent): the owner the sink logs in as, `trellis_readers`,
    /// `trellis_service`. Uses TRELLIS_WAREHOUSE_ADMIN_URL.
    Setup {
        /// The sink's owner role.
        #[arg(long, default_value = "trellis_sink")]
        owner: String,
        /// File holding the owner's password (set or changed).
        #[arg(long)]
        owner_password_file: Option<PathBuf>,
        /// File holding `trellis_service`'s password (set or changed).
        #[arg(long)]
        service_password_file: Option<PathBuf>,
    },
    /// Create a tenant's reader role and print its connection URL, once.
    /// Uses TRELLIS_WAREHOUSE_ADMIN_URL.
    Grant {
        /// The tenant the role reads.
        #[arg(long)]
        tenant: String,
    },
    /// Remove a tenant's reader role (its sessions end at once).
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// List reader roles and their tenants.
    Readers,
}

fn read_password(path: &Option<PathBuf>) -> Result<Option<String>, String> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .transpose()
}

async fn admin(command: Admin) -> Result<(), String> {
    let secrets = trellis_runtime::secret::load_secrets(&[ADMIN_URL]).map_err(|e| e.to_string())?;
    let url = connection(&secrets, &ADMIN_URL)?;
    let mut client = url
        .connect()
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    match command {
        Admin::Setup {
            owner,
            owner_password_file,
            service_password_file,
        } => {
            let owner_password = read_password(&owner_password_file)?;
            let service_password = read_password(&service_password_file)?;
            let done = roles::setup(
                &client,
                &owner,
                owner_password.as_deref(),
                service_password.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            for line in &done {
                println!("{line}");
            }
            println!(
                "warehouse roles ready in {} (owner {owner}, {}, {})",
                url.dbname(),
                roles::READERS,
                roles::SERVICE
            );
        }
        Admin::Grant { tenant } => {
            let granted = roles::grant(&mut client, &url, &tenant)
                .await
                .map_err(|e| e.to_string())?;
            println!("role:       {}", granted.role);
            println!("tenant:     {tenant}");
            println!("connection: {}    (shown once)", granted.url);
        }
        Admin::Revoke { tenant } => {
            match roles::revoke(&mut client, &tenant)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(role) => println!("revoked {role} (tenant {tenant})"),
                None => println!("tenant {tenant} has no reader role"),
            }
        }
        Admin::Readers => {
            for (role, tenant) in roles::readers(&client).await.map_err(|e| e.to_string())? {
                println!("{role}\t{tenant}");
            }
        }
    }
    Ok(())
}

async fn migrate() -> Result<(), String> {
    let secrets =
        trellis_runtime::secret::load_secrets(&[WAREHOUSE_URL]).map_err(|e| e.to_string())?;
    let url = connection(&secrets, &WAREHOUSE_URL)?;
    trellis_warehouse::open(&url, &Settings::default(), None)
        .await
        .map_err(|e| e.to_string())?;
    println!("warehouse schema at {url} is up to date");
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = ProcessorCli::<Command>::parse_with_about(ABOUT);
    if let Some(command) = cli.command {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return report(&e, ExitStatus::Failure),
        };
        let done = match command {
            Command::Migrate => runtime.block_on(migrate()),
            Command::Admin(command) => runtime.block_on(admin(command)),
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitStatus::Failure.into()
            }
        };
    }
    serve_processor::<Warehouse, _>(&cli.processor, run)
}
