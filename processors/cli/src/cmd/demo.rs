//! `trellis demo produce|hours|wait`: the demo data set, what analytics
//! made of it, and waiting until a processor has read it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use rdkafka::producer::FutureProducer;
use trellis_kit::args::{Broker, RegistryUrl, TopologyFile};
use trellis_kit::demo::{self, DemoSpec, Manifest};
use trellis_runtime::kafka::producer_config;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::metrics::sample;
use trellis_runtime::topology::Topology;

#[derive(Subcommand)]
pub enum DemoCommand {
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
        /// The processor waited for: its metrics address comes from its
        /// config file and, without --manifest or --topic, it is waited for
        /// until it has read everything its inputs (topology.yaml) hold now.
        #[arg(long, required_unless_present = "metrics")]
        processor: Option<String>,
        /// Manifest written by `demo produce`: wait until the processor has
        /// read every ingest record it lists.
        #[arg(long, conflicts_with = "topic")]
        manifest: Option<PathBuf>,
        /// Or: wait until the processor has read everything `topic` holds now
        /// (repeatable), e.g. `collected` for the privacy processor.
        #[arg(long)]
        topic: Vec<String>,
        #[command(flatten)]
        file: TopologyFile,
        /// Where the processors' config files are.
        #[arg(long, default_value = "ops/config", env = "TRELLIS_CONFIG_DIR")]
        config_dir: PathBuf,
        #[command(flatten)]
        broker: Broker,
        /// The processor's metrics URL (default: from its config file).
        #[arg(long)]
        metrics: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

/// Runs a `demo` command.
///
/// # Errors
/// The broker, the registry, a manifest that cannot be read or written.
pub async fn run(command: DemoCommand) -> anyhow::Result<ExitStatus> {
    match command {
        DemoCommand::Produce {
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
        } => {
            let kafka = broker.kafka();
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
        DemoCommand::Hours {
            broker,
            registry,
            manifest,
            detail,
        } => {
            let manifests = manifest
                .iter()
                .map(|path| {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not a demo manifest", path.display()))
                })
                .collect::<anyhow::Result<Vec<Manifest>>>()?;
            let kafka = broker.kafka();
            let decoder = trellis_runtime::schema::AvroDecoder::new(
                trellis_runtime::schema::registry_settings(&registry.registry_url)?,
            );
            let records = tokio::task::spawn_blocking(move || {
                trellis_kit::audit::read_topic(&kafka, trellis_records::AGGREGATES_TOPIC)
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
        DemoCommand::Wait {
            processor,
            manifest,
            mut topic,
            file,
            config_dir,
            broker,
            metrics,
            timeout_secs,
        } => {
            let metrics = match (metrics, &processor) {
                (Some(url), _) => url,
                (None, Some(name)) => trellis_kit::processors::metrics_url(&config_dir, name)?,
                (None, None) => bail!("give --processor or --metrics"),
            };
            let ends = match manifest {
                Some(manifest) => {
                    let manifest: Manifest = serde_json::from_slice(
                        &std::fs::read(&manifest)
                            .with_context(|| format!("reading {}", manifest.display()))?,
                    )?;
                    manifest.end_offsets
                }
                None => {
                    if topic.is_empty()
                        && let Some(name) = &processor
                    {
                        let topology = Topology::load(&file.topology)?;
                        topic = topology
                            .processor(name)
                            .map_err(anyhow::Error::msg)?
                            .inputs
                            .clone();
                    }
                    if topic.is_empty() {
                        bail!("give --manifest, --topic or --processor");
                    }
                    let kafka = broker.kafka();
                    let mut ends = BTreeMap::new();
                    for topic in &topic {
                        ends.extend(trellis_runtime::kafka::end_offsets(&kafka, topic)?);
                    }
                    ends
                }
            };
            wait_for_positions(&ends, &metrics, Duration::from_secs(timeout_secs)).await
        }
    }
}

/// Polls `metrics` until `trellis_consumer_position` reaches every end
/// offset in `ends`.
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
