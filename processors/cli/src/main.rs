//! `trellis`: operate a Trellis topology. See `trellis --help`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use rdkafka::producer::FutureProducer;
use trellis_cli::demo::{DemoSpec, Manifest};
use trellis_cli::{demo, inspect, provision};
use trellis_records::SubjectId;
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::producer_config;
use trellis_runtime::lifecycle::{ExitStatus, init_tracing, shutdown_signal};
use trellis_runtime::metrics::sample;
use trellis_runtime::state::StateStore;
use trellis_runtime::topology::Topology;

/// Operate a Trellis topology: validate and provision it, serve the local
/// schema registry, generate demo data, inspect topics and state.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate or provision topology.yaml.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// The local Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Demo data: produce it, wait for the topology to take it in.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Summarise what every declared topic holds.
    Inspect(InspectArgs),
    /// Measure a processor against a raw rdkafka passthrough on the same broker.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect a processor's state store (stop the processor first).
    #[command(subcommand)]
    State(StateCommand),
    /// Check the audited logs against their signed anchors; make and check
    /// proofs. Anchors are checked with `TRELLIS_AUDIT_SIGNING_KEY`.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// File data-subject requests (erasure, access) and read the answers.
    #[command(subcommand)]
    Gdpr(GdprCommand),
    /// Verify a completed erasure by replaying every retained log, and
    /// sign the evidence for an auditor.
    #[command(subcommand)]
    Erasure(ErasureCommand),
}

#[derive(Subcommand)]
enum ErasureCommand {
    /// Replay every retained topic from offset 0, open the vault (and the
    /// progress state, the warehouse when given), check that nothing of the
    /// subject can be read or linked any more, and write a signed report
    /// (report.json, report.json.sig, report.txt). Exit 0 only if every
    /// check passes. Needs TRELLIS_VAULT_MASTER_KEY, TRELLIS_SUBJECT_INDEX_KEY,
    /// the audit log's public key (--public-key) and
    /// TRELLIS_EVIDENCE_SIGNING_KEY (or its _FILE); the privacy and progress
    /// processors stopped (or copies of their directories).
    Verify {
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        key: AnchorKeys,
        /// The erasure request to verify.
        #[arg(long)]
        request: String,
        /// An identifier of the subject, `kind:id` (repeatable; needed once
        /// the request record has expired from its topic).
        #[arg(long = "identifier", value_parser = identifier)]
        identifiers: Vec<SubjectId>,
        /// The privacy processor's vault directory.
        #[arg(long)]
        vault_dir: PathBuf,
        /// The progress projector's state directory.
        #[arg(long)]
        progress_state: Option<PathBuf>,
        /// Check the warehouse too (TRELLIS_WAREHOUSE_URL[_FILE]).
        #[arg(long)]
        warehouse: bool,
        /// Check the audit chain against this exported log (`trellis audit
        /// export-log`) instead of the broker.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Where the report goes.
        #[arg(long, default_value = "erasure-report")]
        out: PathBuf,
    },
    /// Check a report against its signature with the signer's public key
    /// alone: what an auditor runs.
    VerifyReport {
        /// The report (report.json).
        #[arg(long)]
        report: PathBuf,
        /// Its signature (default: the report's path + `.sig`).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The signer's Ed25519 public key, hex.
        #[arg(long, env = "TRELLIS_EVIDENCE_PUBLIC_KEY")]
        public_key: String,
    },
    /// Print the public key of TRELLIS_EVIDENCE_SIGNING_KEY (give it to auditors).
    PublicKey,
}

/// The topology, its broker and its registry.
#[derive(Args)]
struct StackArgs {
    #[command(flatten)]
    file: TopologyFile,
    #[command(flatten)]
    broker: Broker,
    #[command(flatten)]
    registry: RegistryUrl,
}

impl StackArgs {
    /// A connection for filing requests and reading their answers.
    async fn requests(self) -> anyhow::Result<(KafkaConfig, trellis_cli::gdpr::Requests)> {
        let topology = Topology::load_checked(&self.file.topology)?;
        let kafka = KafkaConfig::new(self.broker.bootstrap_servers);
        let requests =
            trellis_cli::gdpr::Requests::connect(&kafka, &self.registry.registry_url, &topology)
                .await?;
        Ok((kafka, requests))
    }
}

#[derive(Args)]
struct AnchorKeys {
    /// The audit log's public verifier key (`name+hexid+base64`, printed by
    /// `trellis audit public-key`); give it again for every key a rotated
    /// log was signed with. Only public keys are needed.
    #[arg(
        long = "public-key",
        env = "TRELLIS_AUDIT_PUBLIC_KEY",
        value_delimiter = ','
    )]
    public_keys: Vec<String>,
    /// HMAC deployments only (`settings.signature: hmac`): the key id; the
    /// secret is read from TRELLIS_AUDIT_SIGNING_KEY[_FILE].
    #[arg(long)]
    hmac_key_id: Option<String>,
}

impl AnchorKeys {
    fn keys(&self) -> anyhow::Result<trellis_audit::signing::Keys> {
        trellis_cli::audit::keys(&self.public_keys, self.hmac_key_id.as_deref())
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Re-read every audited topic, recompute every root, check every
    /// anchor chain; report the first disagreement per partition and exit 1
    /// if there is any.
    Verify {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        key: AnchorKeys,
        /// Check a log file written by `export-log` instead of the broker.
        #[arg(long)]
        log: Option<PathBuf>,
        /// A witness's cosigned checkpoint (its state file, or an http://
        /// URL): detects a log cut short or rewritten after the witness saw it.
        #[arg(long, requires = "witness_key")]
        witness: Option<String>,
        /// The witness's verifier key (cosignature type, `trellis audit
        /// witness-key` prints it).
        #[arg(long, requires = "witness")]
        witness_key: Option<String>,
    },
    /// Print the audit log's public verifier key, from the signing key in
    /// TRELLIS_AUDIT_SIGNING_KEY[_FILE]: give it to verifiers and witnesses.
    PublicKey {
        /// The key's name (the audit processor's `settings.key_id`).
        #[arg(long, default_value = "anchors-local-1", env = "TRELLIS_AUDIT_KEY_ID")]
        key_name: String,
    },
    /// Print a witness's public verifier key, from its signing key in
    /// TRELLIS_WITNESS_SIGNING_KEY[_FILE].
    WitnessKey {
        /// The witness's name (a schema-less URL naming it).
        #[arg(long, default_value = "witness.localhost/trellis")]
        name: String,
    },
    /// Run a witness: fetch the log's checkpoint, check it extends the last
    /// one cosigned (consistency proof), cosign it (C2SP tlog-cosignature)
    /// and keep it in the state file. Signs with TRELLIS_WITNESS_SIGNING_KEY.
    Witness {
        /// The audit processor's checkpoint endpoint (serves /checkpoint).
        #[arg(long, default_value = "http://127.0.0.1:9115")]
        log: String,
        /// The log's public verifier key.
        #[arg(
            long = "log-key",
            env = "TRELLIS_AUDIT_PUBLIC_KEY",
            value_delimiter = ',',
            required = true
        )]
        log_keys: Vec<String>,
        /// The witness's name.
        #[arg(long, default_value = "witness.localhost/trellis")]
        name: String,
        /// Where the last cosigned checkpoint is kept (and read at start).
        #[arg(long)]
        state: PathBuf,
        /// How often to fetch.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Fetch once and exit (status 1 if the checkpoint was refused).
        #[arg(long)]
        once: bool,
    },
    /// Copy every audited topic and the anchors into one log file.
    ExportLog {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        broker: Broker,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prove that a record is covered by an anchor (`--offset`), or that a
    /// later anchor extends an earlier one (`--from`, `--to`).
    Prove {
        #[command(flatten)]
        broker: Broker,
        /// Audited topic.
        #[arg(long)]
        topic: String,
        /// Partition.
        #[arg(long)]
        partition: i32,
        /// The record's offset (inclusion proof).
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        offset: Option<i64>,
        /// The anchor to prove against (default: the first covering it).
        #[arg(long, requires = "offset")]
        anchor: Option<i64>,
        /// Earlier anchor's sequence (consistency proof).
        #[arg(long, requires = "to")]
        from: Option<i64>,
        /// Later anchor's sequence.
        #[arg(long, requires = "from")]
        to: Option<i64>,
        /// Write the proof here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof using only the proof and the anchors (from the broker
    /// or a log file); signatures too when the signing key is set.
    VerifyProof {
        /// The proof (JSON from `prove`).
        #[arg(long)]
        proof: PathBuf,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        key: AnchorKeys,
        /// Read the anchors from a log file instead of the broker.
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GdprCommand {
    /// File a request and print the saga's answer.
    Request {
        #[command(flatten)]
        stack: StackArgs,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// `erasure` or `access`.
        #[arg(long, default_value = "erasure")]
        kind: String,
        /// `user_id`, `mbox`, `account`, …
        #[arg(long, default_value = "user_id")]
        subject_kind: String,
        /// The identifier as the source system knows it.
        #[arg(long)]
        subject_id: String,
        /// Another identifier of the same person, `kind:id` (repeatable),
        /// e.g. `account:https://moodle.example|1014`,
        /// `mbox:mailto:ann@example.org`: one request covers them all.
        #[arg(long = "also", value_parser = identifier)]
        also: Vec<SubjectId>,
        /// Request id (default: a new UUID).
        #[arg(long)]
        request_id: Option<String>,
        /// Give up waiting for the answer after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

/// `kind:id` as an identifier (the id may hold colons: `mbox:mailto:…`).
fn identifier(text: &str) -> Result<SubjectId, String> {
    text.split_once(':')
        .filter(|(kind, id)| !kind.is_empty() && !id.is_empty())
        .map(|(kind, id)| SubjectId {
            kind: kind.into(),
            id: id.into(),
        })
        .ok_or_else(|| {
            format!("`{text}` is not kind:id (e.g. user_id:1014, account:https://lms.example|1014)")
        })
}

#[derive(Args)]
struct TopologyFile {
    /// Path of topology.yaml.
    #[arg(long, default_value = "topology.yaml", env = "TRELLIS_TOPOLOGY")]
    topology: PathBuf,
}

#[derive(Args)]
struct Broker {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        default_value = "127.0.0.1:9092",
        env = "TRELLIS_BOOTSTRAP_SERVERS"
    )]
    bootstrap_servers: String,
}

#[derive(Args)]
struct RegistryUrl {
    /// Schema registry base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8081",
        env = "TRELLIS_REGISTRY_URL"
    )]
    registry_url: String,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Print every problem in topology.yaml and its schemas; exit 1 if any.
    Check(TopologyFile),
    /// Create missing topics and register schemas (BACKWARD). Idempotent.
    Apply {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        registry: RegistryUrl,
        /// Replication factor for new topics.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve the registry until SIGTERM/SIGINT.
    Serve {
        /// Where schemas and ids persist.
        #[arg(long)]
        data_dir: PathBuf,
        /// Listen address (loopback by default).
        #[arg(long, default_value = "127.0.0.1:8081")]
        addr: SocketAddr,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Produce the demo data set and write its manifest.
    Produce {
        #[command(flatten)]
        broker: Broker,
        /// Records to send (malformed and duplicates included).
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// Records per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<u32>,
        /// Tenants (up to 5 have names; more are numbered).
        #[arg(long, default_value_t = 3)]
        tenants: usize,
        /// Learners per tenant.
        #[arg(long, default_value_t = 60)]
        learners: usize,
        /// Share of malformed records.
        #[arg(long, default_value_t = 0.02)]
        malformed: f64,
        /// Share of re-sent (duplicate) records.
        #[arg(long, default_value_t = 0.01)]
        duplicates: f64,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Spread event times over this many hours before now (a backfill,
        /// so analytics windows close during the run); 0: the last 10 minutes.
        #[arg(long, default_value_t = 0)]
        span_hours: u32,
        /// Shift the span this many hours into the past: a backfill of older
        /// statements by the same learners (another seed's events).
        #[arg(long, default_value_t = 0)]
        ago_hours: u32,
        /// Where to write the manifest (JSON).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Compare the hour cells the aggregator published (newest revision of
    /// each tenant's hour cell, and its late cell) with what `demo produce`
    /// sent for each hour of event time.
    Hours {
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        registry: RegistryUrl,
        /// Manifests written by `demo produce` (repeatable: live traffic and
        /// a backfill).
        #[arg(long, required = true)]
        manifest: Vec<PathBuf>,
        /// Print every hour of this tenant.
        #[arg(long)]
        detail: Option<String>,
    },
    /// Wait until a processor has consumed every record of a manifest.
    Wait {
        /// Manifest written by `demo produce`: wait until the processor has
        /// read every ingest record it lists.
        #[arg(long, required_unless_present = "topic", conflicts_with = "topic")]
        manifest: Option<PathBuf>,
        /// Or: wait until the processor has read everything `topic` holds now
        /// (repeatable), e.g. `collected` for the privacy processor.
        #[arg(long)]
        topic: Vec<String>,
        #[command(flatten)]
        broker: Broker,
        /// The processor's metrics URL, e.g. http://127.0.0.1:9101/metrics.
        #[arg(long)]
        metrics: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    file: TopologyFile,
    #[command(flatten)]
    broker: Broker,
    #[command(flatten)]
    registry: RegistryUrl,
    /// A topic is read until no record arrives for this long.
    #[arg(long, default_value_t = 1500)]
    idle_ms: u64,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The collector vs a passthrough of the same ingest records.
    Collector(BenchArgs),
    /// The privacy processor vs a passthrough of the same `collected`
    /// records (the collector fills `collected` first, untimed).
    Privacy(BenchArgs),
    /// The progress projector vs a passthrough of the same `protected`
    /// records (collector and privacy fill it first, untimed), then its
    /// rebuild speed from the already-fetched log on one thread.
    Progress(BenchArgs),
    /// The analytics aggregator, measured like `progress`.
    Analytics(BenchArgs),
    /// Merkle leaves hashed per second per core, and a full verify of a
    /// generated log (no broker).
    Audit {
        /// Records in the verified log.
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// Partitions they are spread over (verified in parallel).
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Value size, bytes (a demo `protected` record is ~600).
        #[arg(long, default_value_t = 600)]
        value_bytes: usize,
    },
    /// xAPI statement validation cost on one core, over the demo data set's
    /// statements (no broker): JSON parse, parse + rules, the whole validate.
    Xapi {
        /// Distinct statements.
        #[arg(long, default_value_t = 20_000)]
        statements: usize,
        /// Times each is validated.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// The warehouse sink vs a plain COPY of the same rows into the same
    /// Postgres (rows/s, ratio), then its lag from a record's send to its
    /// row being visible at a steady rate. Needs a running stack with
    /// Postgres (`ops/bench warehouse`) and TRELLIS_WAREHOUSE_URL[_FILE].
    Warehouse {
        #[command(flatten)]
        stack: StackArgs,
        /// Rows (records) to write.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Alternating COPY/sink rounds; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Records per second for the lag measurement.
        #[arg(long, default_value_t = 5_000)]
        rate: u32,
        /// How long the lag measurement sends, seconds (0: skip it).
        #[arg(long, default_value_t = 20)]
        lag_secs: u64,
    },
    /// Erasure latency, request to answer, against a running stack
    /// (`ops/stack-up`) under live demo traffic.
    Erasure {
        #[command(flatten)]
        stack: StackArgs,
        /// Erasure requests.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Requests filed per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Live demo events per second meanwhile.
        #[arg(long, default_value_t = 1000)]
        traffic: u32,
        /// Learners per tenant in the live traffic (requests cycle through them).
        #[arg(long, default_value_t = 400)]
        learners: usize,
    },
}

/// Which processor a bench measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Collector,
    Privacy,
    Progress,
    Analytics,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    file: TopologyFile,
    #[command(flatten)]
    broker: Broker,
    #[command(flatten)]
    registry: RegistryUrl,
    /// Demo records to produce first (the input of both runs).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Alternating passthrough/processor rounds; the best of each is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Rebuilds of `progress` or `analytics` from the fetched log, each into
    /// a fresh store; the median is reported.
    #[arg(long, default_value_t = 3)]
    rebuilds: usize,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print a state store's digest, entry count and input positions.
    Digest {
        /// The processor's state_dir.
        #[arg(long)]
        dir: PathBuf,
    },
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    trellis_runtime::lifecycle::no_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing(trellis_runtime::config::LogFormat::Text);
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
    match runtime.block_on(execute(cli.command)) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitStatus::Failure.into()
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Topology(TopologyCommand::Check(file)) => {
            let topology = Topology::load(&file.topology)?;
            match topology.check() {
                Ok(()) => {
                    println!(
                        "{}: {} topics, {} processors, no problems",
                        file.topology.display(),
                        topology.topics.len(),
                        topology.processors.len()
                    );
                    Ok(ExitStatus::Success)
                }
                Err(problems) => {
                    println!("{}: {} problem(s)", file.topology.display(), problems.len());
                    for problem in problems {
                        println!("  - {problem}");
                    }
                    Ok(ExitStatus::Failure)
                }
            }
        }
        Command::Topology(TopologyCommand::Apply {
            file,
            broker,
            registry,
            replication,
        }) => {
            let topology = Topology::load_checked(&file.topology)?;
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let applied = provision::apply(&kafka, &registry.registry_url, &topology, replication)
                .await
                .map_err(anyhow::Error::msg)?;
            for (topic, outcome) in &applied.topics {
                println!("topic   {topic:<40} {outcome:?}");
            }
            for (subject, id) in &applied.schemas {
                println!("schema  {subject:<40} id {id}");
            }
            let drifted = applied
                .topics
                .values()
                .any(|o| matches!(o, trellis_runtime::kafka::TopicOutcome::Drifted { .. }));
            Ok(if drifted {
                ExitStatus::Failure
            } else {
                ExitStatus::Success
            })
        }
        Command::Registry(RegistryCommand::Serve { data_dir, addr }) => {
            trellis_registry::serve(
                &data_dir,
                addr,
                |bound| tracing::info!(%bound, "schema registry listening"),
                shutdown_signal(),
            )
            .await
            .with_context(|| format!("serving the registry from {}", data_dir.display()))?;
            Ok(ExitStatus::Success)
        }
        Command::Demo(DemoCommand::Produce {
            broker,
            events,
            rate,
            tenants,
            learners,
            malformed,
            duplicates,
            seed,
            span_hours,
            ago_hours,
            manifest,
        }) => {
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let producer: FutureProducer = producer_config(&kafka, None).create()?;
            let started = Instant::now();
            let spec = DemoSpec {
                events,
                tenants,
                learners,
                courses: 4,
                malformed,
                duplicates,
                rate,
                seed,
                span_hours,
                ago_hours,
            };
            let result = demo::produce(&producer, spec)
                .await
                .map_err(anyhow::Error::msg)?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "produced {} records in {secs:.1}s ({:.0}/s): {} valid events, {} malformed, {} duplicates",
                result.sent,
                result.sent as f64 / secs.max(1e-9),
                result.valid.len(),
                result.rejected.len(),
                result.duplicates
            );
            if let Some(path) = manifest {
                std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitStatus::Success)
        }
        Command::Demo(DemoCommand::Hours {
            broker,
            registry,
            manifest,
            detail,
        }) => {
            let manifests = manifest
                .iter()
                .map(|path| {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not a demo manifest", path.display()))
                })
                .collect::<anyhow::Result<Vec<Manifest>>>()?;
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let decoder = trellis_runtime::schema::AvroDecoder::new(
                trellis_runtime::schema::registry_settings(&registry.registry_url)?,
            );
            let records = tokio::task::spawn_blocking(move || {
                trellis_cli::audit::read_topic(&kafka, trellis_records::AGGREGATES_TOPIC)
            })
            .await??;
            let mut cells = Vec::with_capacity(records.len());
            for value in records.iter().filter_map(|r| r.value.as_deref()) {
                cells.push(decoder.decode::<trellis_records::Aggregate>(value).await?);
            }
            let lines = demo::hour_lines(&manifests, cells);
            print!("{}", demo::render_hours(&lines, detail.as_deref()));
            Ok(ExitStatus::Success)
        }
        Command::Demo(DemoCommand::Wait {
            manifest,
            topic,
            broker,
            metrics,
            timeout_secs,
        }) => {
            let ends = match manifest {
                Some(manifest) => {
                    let manifest: Manifest = serde_json::from_slice(
                        &std::fs::read(&manifest)
                            .with_context(|| format!("reading {}", manifest.display()))?,
                    )?;
                    manifest.end_offsets
                }
                None => {
                    let kafka = KafkaConfig::new(broker.bootstrap_servers);
                    let mut ends = BTreeMap::new();
                    for topic in &topic {
                        ends.extend(trellis_runtime::kafka::end_offsets(&kafka, topic)?);
                    }
                    ends
                }
            };
            wait_for_positions(&ends, &metrics, Duration::from_secs(timeout_secs)).await
        }
        Command::Inspect(args) => {
            let topology = Topology::load(&args.file.topology)?;
            let kafka = KafkaConfig::new(args.broker.bootstrap_servers);
            let reports = inspect::inspect(
                &kafka,
                &args.registry.registry_url,
                &topology,
                Duration::from_millis(args.idle_ms),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            print!("{}", inspect::render(&reports));
            Ok(ExitStatus::Success)
        }
        Command::Bench(BenchCommand::Collector(args)) => bench(args, Stage::Collector).await,
        Command::Bench(BenchCommand::Privacy(args)) => bench(args, Stage::Privacy).await,
        Command::Bench(BenchCommand::Progress(args)) => bench(args, Stage::Progress).await,
        Command::Bench(BenchCommand::Analytics(args)) => bench(args, Stage::Analytics).await,
        Command::Bench(BenchCommand::Audit {
            records,
            partitions,
            value_bytes,
        }) => {
            let figures = tokio::task::spawn_blocking(move || {
                trellis_cli::measure::audit(records, partitions, value_bytes)
            })
            .await?;
            println!(
                "merkle leaves: {:.0}/s on one core ({value_bytes}-byte values: canonical bytes + SHA-256 + frontier)",
                figures.leaves_per_sec_core
            );
            println!(
                "verify: {} records in {} partitions, anchors every 1000, {:.2}s on {} threads ({:.0} records/s)",
                figures.records,
                partitions,
                figures.verify.as_secs_f64(),
                figures.threads,
                figures.records as f64 / figures.verify.as_secs_f64()
            );
            println!(
                "anchor log: {} checkpoints signed at {:.0}/s; checked with a witness's checkpoint in {:.2}s; total verify {:.2}s",
                figures.anchors,
                figures.checkpoints_per_sec,
                figures.log_check.as_secs_f64(),
                (figures.verify + figures.log_check).as_secs_f64()
            );
            println!(
                "witness: {:.0} checkpoints/s checked (signature, consistency proof) and cosigned",
                figures.witness_checks_per_sec
            );
            Ok(ExitStatus::Success)
        }
        Command::Bench(BenchCommand::Xapi { statements, rounds }) => {
            let f =
                tokio::task::spawn_blocking(move || trellis_cli::measure::xapi(statements, rounds))
                    .await?;
            println!(
                "xapi validation over {} demo statements x {rounds}, one core, ns/statement:",
                f.statements
            );
            println!("  json parse only        {:>8.0}", f.parse_ns);
            println!(
                "  parse + xAPI rules     {:>8.0}  (rules alone ~{:.0})",
                f.rules_ns,
                f.rules_ns - f.parse_ns
            );
            println!("  whole validate         {:>8.0}", f.validate_ns);
            Ok(ExitStatus::Success)
        }
        Command::Bench(BenchCommand::Warehouse {
            stack,
            rows,
            rounds,
            rate,
            lag_secs,
        }) => {
            let secrets =
                trellis_runtime::secret::load_secrets(&[trellis_warehouse::WAREHOUSE_URL])?;
            let url =
                trellis_warehouse::connection::ConnectionString::parse(&String::from_utf8_lossy(
                    secrets.get(trellis_warehouse::WAREHOUSE_URL.env).expose(),
                ))
                .map_err(|e| anyhow::anyhow!("TRELLIS_WAREHOUSE_URL {e}"))?;
            let kafka = KafkaConfig::new(stack.broker.bootstrap_servers);
            let registry = stack.registry.registry_url;
            let topology = stack.file.topology;
            println!("{rows} rows (60% progress, 20% completions, 20% aggregate cells) into {url}");
            let t = trellis_cli::warehouse_bench::throughput(
                &kafka, &registry, &topology, &url, rows, rounds,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            println!(
                "best: plain COPY {:.0} rows/s, warehouse {:.0} rows/s, ratio {:.2}",
                t.copy.rate(),
                t.sink.rate(),
                t.sink.rate() / t.copy.rate()
            );
            if lag_secs > 0 {
                let lag = trellis_cli::warehouse_bench::lag(
                    &kafka, &registry, &topology, &url, rate, lag_secs,
                )
                .await
                .map_err(anyhow::Error::msg)?;
                println!(
                    "lag at {rate} records/s for {lag_secs} s, send to visible in Postgres: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} records)",
                    lag.p50, lag.p99, lag.max, lag.records
                );
            }
            Ok(ExitStatus::Success)
        }
        Command::Bench(BenchCommand::Erasure {
            stack,
            requests,
            rate,
            traffic,
            learners,
        }) => {
            let (kafka, api) = stack.requests().await?;
            let producer: FutureProducer = producer_config(&kafka, None).create()?;
            println!(
                "live traffic at {traffic} events/s for 10 s, then {requests} erasures at {rate}/s"
            );
            let figures = trellis_cli::measure::erasure(
                producer,
                api,
                requests,
                rate,
                traffic,
                3,
                learners,
                Duration::from_secs(600),
            )
            .await?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "answered {} of {requests}: median {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                figures.latencies.len(),
                ms(figures.quantile(0.5)),
                ms(figures.quantile(0.9)),
                ms(figures.quantile(0.99)),
                ms(figures.quantile(1.0))
            );
            let mut outcomes: Vec<_> = figures.outcomes.iter().collect();
            outcomes.sort();
            for (outcome, n) in outcomes {
                println!("  {n:>5} {outcome}");
            }
            Ok(if figures.unanswered == 0 {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        Command::Audit(command) => audit(command).await,
        Command::Erasure(command) => erasure(command).await,
        Command::Gdpr(GdprCommand::Request {
            stack,
            tenant,
            kind,
            subject_kind,
            subject_id,
            also,
            request_id,
            timeout_secs,
        }) => {
            let (_, requests) = stack.requests().await?;
            let request = trellis_records::SubjectRequest {
                request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                tenant_id: tenant,
                kind,
                subject_id_kind: subject_kind,
                subject_id,
                requested_at: trellis_runtime::ticker::now_ms(),
                other_subject_ids: also,
            };
            let filed = Instant::now();
            requests.file(&request).await?;
            let answer = requests
                .wait_for(&request.request_id, Duration::from_secs(timeout_secs))
                .await?;
            print!(
                "{}",
                trellis_cli::gdpr::render(&answer, Some(filed.elapsed()))
            );
            Ok(if answer.status == "completed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        Command::State(StateCommand::Digest { dir }) => {
            if !dir.exists() {
                bail!("no state store at {}", dir.display());
            }
            let store = StateStore::open(&dir)?;
            println!("digest    {}", store.digest()?);
            println!("entries   {}", store.len());
            for (tp, offset) in store.positions()? {
                println!("position  {tp} {offset}");
            }
            Ok(ExitStatus::Success)
        }
    }
}

/// Polls `metrics` until `trellis_consumer_position` reaches every end
/// offset in `manifest`.
async fn audit(command: AuditCommand) -> anyhow::Result<ExitStatus> {
    use trellis_cli::audit::{self as a, ProofRequest, Source};
    let mut command = command;
    match &mut command {
        AuditCommand::Witness {
            log,
            log_keys,
            name,
            state,
            interval_ms,
            once,
        } => {
            let clean = a::witness(a::WitnessOptions {
                log_url: log.trim_end_matches('/').to_string(),
                log_keys: a::keys(log_keys, None)?,
                cosigner: a::witness_signer(name)?,
                state: state.clone(),
                interval: Duration::from_millis(*interval_ms),
                once: *once,
            })
            .await?;
            return Ok(if clean {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            });
        }
        // Read before the blocking section: the witness's note may be a URL.
        AuditCommand::Verify {
            witness: Some(at), ..
        } => {
            let note = a::read_witness_checkpoint(at).await?;
            *at = String::from_utf8(note).context("the witness's checkpoint is not text")?;
        }
        _ => {}
    }
    // The audit commands read whole logs with blocking clients.
    tokio::task::spawn_blocking(move || match command {
        AuditCommand::Verify {
            file,
            broker,
            key,
            log,
            witness,
            witness_key,
        } => {
            let topology = Topology::load_checked(&file.topology)?;
            let keys = key.keys()?;
            let witness = match (witness, witness_key) {
                (Some(note), Some(key)) => Some((
                    note,
                    trellis_audit::signing::CosignatureVerifier::new(&key)
                        .context("--witness-key")?,
                )),
                _ => None,
            };
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let source = match &log {
                Some(path) => Source::File(path),
                None => Source::Broker(&kafka),
            };
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let view = witness.as_ref().map(|(note, key)| a::WitnessView {
                note: note.as_bytes(),
                key,
            });
            let (reports, log) = a::verify(source, &topology, &keys, view, progress)?;
            Ok(
                if reports.iter().any(|r| r.finding.is_some()) || log.problem.is_some() {
                    ExitStatus::Failure
                } else {
                    ExitStatus::Success
                },
            )
        }
        AuditCommand::PublicKey { key_name } => {
            println!("{}", a::public_key(&key_name)?);
            Ok(ExitStatus::Success)
        }
        AuditCommand::WitnessKey { name } => {
            println!("{}", a::witness_signer(&name)?.vkey());
            Ok(ExitStatus::Success)
        }
        AuditCommand::Witness { .. } => unreachable!("run before the blocking section"),
        AuditCommand::ExportLog { file, broker, out } => {
            let topology = Topology::load_checked(&file.topology)?;
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let n = a::export_log(&kafka, &topology, &out)?;
            println!("{n} records written to {}", out.display());
            Ok(ExitStatus::Success)
        }
        AuditCommand::Prove {
            broker,
            topic,
            partition,
            offset,
            anchor,
            from,
            to,
            out,
        } => {
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let request = match (offset, from, to) {
                (Some(offset), _, _) => ProofRequest::Inclusion { offset, anchor },
                (None, Some(from), Some(to)) => ProofRequest::Consistency { from, to },
                _ => bail!("give --offset, or --from and --to"),
            };
            let proof = a::prove(&kafka, &topic, partition, request)?;
            a::write_proof(&proof, out.as_ref())?;
            Ok(ExitStatus::Success)
        }
        AuditCommand::VerifyProof {
            proof,
            broker,
            key,
            log,
        } => {
            let kafka = KafkaConfig::new(broker.bootstrap_servers);
            let keys = key.keys()?;
            let source = match &log {
                Some(path) => Source::File(path),
                None => Source::Broker(&kafka),
            };
            match a::check_proof(&proof, source, Some(&keys)) {
                Ok(message) => {
                    println!("valid: {message}");
                    Ok(ExitStatus::Success)
                }
                Err(e) => {
                    println!("INVALID: {e:#}");
                    Ok(ExitStatus::Failure)
                }
            }
        }
    })
    .await?
}

async fn wait_for_positions(
    ends: &BTreeMap<String, i64>,
    metrics: &str,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let text = match client.get(metrics).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let behind: Vec<String> = ends
            .iter()
            .filter_map(|(coordinates, end)| {
                let (topic, partition) = coordinates.rsplit_once('/')?;
                let position = text
                    .lines()
                    .find(|l| {
                        l.starts_with("trellis_consumer_position{")
                            && l.contains(&format!("topic=\"{topic}\""))
                            && l.contains(&format!("partition=\"{partition}\""))
                    })
                    .and_then(|l| sample(l, l.rsplit_once(' ')?.0))
                    .unwrap_or(0.0) as i64;
                (position < *end).then(|| format!("{coordinates} at {position}/{end}"))
            })
            .collect();
        if behind.is_empty() {
            println!("caught up after {:.1}s", started.elapsed().as_secs_f64());
            return Ok(ExitStatus::Success);
        }
        if started.elapsed() > timeout {
            bail!("still behind after {timeout:?}: {}", behind.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn erasure(command: ErasureCommand) -> anyhow::Result<ExitStatus> {
    use trellis_cli::erasure as e;
    match command {
        ErasureCommand::Verify {
            stack,
            key,
            request,
            identifiers,
            vault_dir,
            progress_state,
            warehouse,
            audit_log,
            out,
        } => {
            // Every secret first: a missing one must not cost a replay.
            let signing = e::signing_key()?;
            let anchor_keys = key.keys()?;
            let warehouse = if warehouse {
                let secrets =
                    trellis_runtime::secret::load_secrets(&[trellis_warehouse::WAREHOUSE_URL])?;
                let text = String::from_utf8_lossy(
                    secrets.get(trellis_warehouse::WAREHOUSE_URL.env).expose(),
                )
                .into_owned();
                Some(
                    trellis_warehouse::connection::ConnectionString::parse(&text)
                        .map_err(|e| anyhow::anyhow!("TRELLIS_WAREHOUSE_URL {e}"))?,
                )
            } else {
                None
            };
            let identifiers = identifiers.into_iter().map(|i| (i.kind, i.id)).collect();
            let topology = Topology::load_checked(&stack.file.topology)?;
            let kafka = KafkaConfig::new(stack.broker.bootstrap_servers);
            let started = Instant::now();
            let report = e::verify(e::Inputs {
                kafka: &kafka,
                registry_url: &stack.registry.registry_url,
                topology: &topology,
                request_id: &request,
                identifiers,
                vault_dir: &vault_dir,
                progress_state: progress_state.as_deref(),
                warehouse,
                audit: &anchor_keys,
                audit_log: audit_log.as_deref(),
                progress_bars: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await?;
            let path = e::write_signed(&report, &signing, &out)?;
            print!("{}", e::summary(&report));
            println!(
                "verified in {:.1}s; signed report: {} (public key {})",
                started.elapsed().as_secs_f64(),
                path.display(),
                hex::encode(signing.verifying_key().as_bytes())
            );
            Ok(if report.verdict == "passed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        ErasureCommand::VerifyReport {
            report,
            signature,
            public_key,
        } => {
            let signature = signature.unwrap_or_else(|| {
                let mut s = report.clone().into_os_string();
                s.push(".sig");
                PathBuf::from(s)
            });
            let checked = e::verify_signed(&report, &signature, &public_key)?;
            println!("signature valid: the report is as its signer wrote it");
            print!("{}", e::summary(&checked));
            Ok(if checked.verdict == "passed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        ErasureCommand::PublicKey => {
            println!(
                "{}",
                hex::encode(e::signing_key()?.verifying_key().as_bytes())
            );
            Ok(ExitStatus::Success)
        }
    }
}

async fn bench(args: BenchArgs, stage: Stage) -> anyhow::Result<ExitStatus> {
    use trellis_cli::bench;
    let BenchArgs {
        file,
        broker,
        registry,
        events,
        rounds,
        rebuilds,
    } = args;
    let kafka = KafkaConfig::new(broker.bootstrap_servers);
    let producer: FutureProducer = producer_config(&kafka, None).create()?;
    println!("producing {events} demo records (2% malformed, 1% duplicates)");
    let manifest = demo::produce(
        &producer,
        DemoSpec {
            events,
            span_hours: 48,
            ..DemoSpec::default()
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let registry_url = registry.registry_url;
    if stage != Stage::Collector {
        println!("filling `collected` with the collector (untimed)");
        bench::collector(&kafka, &registry_url, &file.topology, &manifest.end_offsets)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    if matches!(stage, Stage::Progress | Stage::Analytics) {
        println!("filling `protected` with the privacy processor (untimed)");
        let ends = trellis_runtime::kafka::end_offsets(&kafka, "collected")?;
        bench::privacy(&kafka, &registry_url, &file.topology, &ends)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let (name, inputs, ends) = match stage {
        Stage::Collector => (
            "collector",
            vec![
                trellis_records::INGEST_EVENTS_TOPIC,
                trellis_records::INGEST_XAPI_TOPIC,
            ],
            manifest.end_offsets,
        ),
        Stage::Privacy => (
            "privacy",
            vec!["collected"],
            trellis_runtime::kafka::end_offsets(&kafka, "collected")?,
        ),
        Stage::Progress | Stage::Analytics => (
            if stage == Stage::Progress {
                "progress"
            } else {
                "analytics"
            },
            vec!["protected"],
            trellis_runtime::kafka::end_offsets(&kafka, "protected")?,
        ),
    };
    let mut best_pass: Option<bench::Timing> = None;
    let mut best_proc: Option<bench::Timing> = None;
    // The least machine CPU per record each side took in any round.
    let mut least_cpu: (Option<f64>, Option<f64>) = (None, None);
    for round in 1..=rounds.max(1) {
        let output = format!("bench.passthrough.{round}.{}", std::process::id());
        create_scratch_topic(&kafka, &output).await?;
        let pass = bench::passthrough(&kafka, &inputs, &ends, &output, 5_000)
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "round {round}: passthrough {:>9.0} records/s ({} in {:.2}s{})",
            pass.rate(),
            pass.records,
            pass.elapsed.as_secs_f64(),
            cpu_note(&pass)
        );
        let timing = match stage {
            Stage::Collector => {
                bench::collector(&kafka, &registry_url, &file.topology, &ends).await
            }
            Stage::Privacy => bench::privacy(&kafka, &registry_url, &file.topology, &ends).await,
            Stage::Progress => bench::progress(&kafka, &registry_url, &file.topology, &ends).await,
            Stage::Analytics => {
                bench::analytics(&kafka, &registry_url, &file.topology, &ends).await
            }
        }
        .map_err(anyhow::Error::msg)?;
        println!(
            "round {round}: {name:<11} {:>9.0} records/s ({} in {:.2}s{})",
            timing.rate(),
            timing.records,
            timing.elapsed.as_secs_f64(),
            cpu_note(&timing)
        );
        if best_pass.is_none_or(|b| pass.rate() > b.rate()) {
            best_pass = Some(pass);
        }
        if best_proc.is_none_or(|b| timing.rate() > b.rate()) {
            best_proc = Some(timing);
        }
        let least = |a: Option<f64>, b: Option<f64>| a.into_iter().chain(b).reduce(f64::min);
        least_cpu.0 = least(least_cpu.0, pass.cpu_per_record());
        least_cpu.1 = least(least_cpu.1, timing.cpu_per_record());
    }
    if let (Some(pass), Some(timing)) = (best_pass, best_proc) {
        println!(
            "best: passthrough {:.0}/s, {name} {:.0}/s, ratio {:.2}",
            pass.rate(),
            timing.rate(),
            timing.rate() / pass.rate()
        );
    }
    if let (Some(pass), Some(processor)) = least_cpu {
        println!(
            "cpu: passthrough {pass:.1} µs/record, {name} {processor:.1} µs/record, \
             ratio {:.2} (the whole machine's busy CPU: processes and broker)",
            pass / processor
        );
    }
    if matches!(stage, Stage::Progress | Stage::Analytics) {
        let mut rebuilds = bench::rebuild(&kafka, &registry_url, &file.topology, name, rebuilds)
            .await
            .map_err(anyhow::Error::msg)?;
        // Medians: one rebuild's rate moves by a fifth between runs on these
        // machines, per second of wall clock and of CPU alike.
        rebuilds.sort_by(|a, b| a.timing.rate().total_cmp(&b.timing.rate()));
        let median = &rebuilds[rebuilds.len() / 2].timing;
        let mut cpu_rates: Vec<f64> = rebuilds
            .iter()
            .filter_map(bench::Rebuild::cpu_rate)
            .collect();
        cpu_rates.sort_by(f64::total_cmp);
        println!(
            "rebuild from the fetched log, one thread: {name} {:.0} records/s ({} in {:.2}s; median of {}{})",
            median.rate(),
            median.records,
            median.elapsed.as_secs_f64(),
            rebuilds.len(),
            cpu_rates
                .get(cpu_rates.len() / 2)
                .map(|r| format!("; {r:.0} per second of CPU"))
                .unwrap_or_default()
        );
    }
    Ok(ExitStatus::Success)
}

/// `; machine CPU 21.3 µs/record, steal 2%; batches: process 80%, …` for a
/// round's line, each part where it was read.
fn cpu_note(timing: &trellis_cli::bench::Timing) -> String {
    let mut note = String::new();
    if let (Some(cpu), Some(per_record)) = (timing.cpu, timing.cpu_per_record()) {
        note += &format!(
            "; machine CPU {per_record:.1} µs/record, steal {:.0}%",
            cpu.steal_share() * 100.0
        );
    }
    if let Some(phases) = timing.phases {
        let [input, process, flush, deliver, commit] = phases.shares();
        note += &format!(
            "; batches: input {input:.0}%, process {process:.0}%, flush {flush:.0}%, \
             deliver {deliver:.0}%, commit {commit:.0}%"
        );
    }
    note
}

async fn create_scratch_topic(kafka: &KafkaConfig, name: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        trellis_runtime::kafka::client_config(kafka).create()?;
    let topic = NewTopic::new(name, 6, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    for result in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}
