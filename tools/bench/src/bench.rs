//! `trellis bench`: a processor's throughput as a ratio of a raw rdkafka
//! passthrough over the same records on the same broker, run back to back.
//!
//! The passthrough is what any at-least-once Kafka copier does: consume,
//! produce the same key, value and headers, wait for the batch's deliveries,
//! commit. The processor under test reads the same input from offset 0 into
//! a fresh state store. Both are timed from their first record to the
//! moment every input record is consumed and its outputs acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::{consumer_config, producer_config, topic_partitions};

/// A timed run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Records consumed.
    pub records: u64,
    /// From first record to the last delivery.
    pub elapsed: Duration,
    /// The whole machine's CPU over the same span, where it can be read.
    pub cpu: Option<MachineCpu>,
    /// Where a processor's batches spent their time (not for passthroughs).
    pub phases: Option<BatchPhases>,
}

/// Seconds a processor's batches spent per phase, from its
/// `trellis_batch_seconds_total` metric at the end of the run.
#[derive(Debug, Clone, Copy)]
pub struct BatchPhases {
    /// Waiting for the next input record.
    pub input: f64,
    /// Processing records.
    pub process: f64,
    /// The processor's end-of-batch work (saving its state, its flush).
    pub flush: f64,
    /// Waiting for the broker to acknowledge outputs.
    pub deliver: f64,
    /// Committing state and offsets.
    pub commit: f64,
}

impl BatchPhases {
    fn from_metrics(text: &str) -> Option<Self> {
        let phase = |name: &str| {
            trellis_runtime::metrics::sample(
                text,
                &format!("trellis_batch_seconds_total{{phase=\"{name}\"}}"),
            )
        };
        Some(Self {
            input: phase("input")?,
            process: phase("process")?,
            flush: phase("flush")?,
            deliver: phase("deliver")?,
            commit: phase("commit")?,
        })
    }

    /// Each phase's share of the batches' time, in percent: input,
    /// process, flush, deliver, commit.
    pub fn shares(&self) -> [f64; 5] {
        let phases = [
            self.input,
            self.process,
            self.flush,
            self.deliver,
            self.commit,
        ];
        let total = phases.iter().sum::<f64>().max(1e-9);
        phases.map(|s| s / total * 100.0)
    }
}

impl Timing {
    /// Records per second.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The machine's busy CPU time per record, in microseconds.
    pub fn cpu_per_record(&self) -> Option<f64> {
        let cpu = self.cpu?;
        Some(cpu.busy.as_secs_f64() * 1e6 / self.records.max(1) as f64)
    }
}

/// What the whole machine's CPUs did over a timed span (`/proc/stat`): the
/// bench's process, librdkafka's threads and the broker alike, so a
/// processor's cost per record includes what it asks of the broker.
///
/// Wall-clock rates on these shared machines swing by a third between runs
/// of the same binary; busy CPU per record swings much less, and steal (time
/// the hypervisor gave to other guests) says when a run was starved.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// Time spent running anything: user, system and interrupt time.
    pub busy: Duration,
    /// Time taken by the hypervisor for other guests.
    pub steal: Duration,
    /// Every CPU's time over the span (busy, idle, waiting, stolen).
    pub total: Duration,
}

impl MachineCpu {
    /// Steal as a share of all CPU time over the span.
    pub fn steal_share(&self) -> f64 {
        self.steal.as_secs_f64() / self.total.as_secs_f64().max(1e-9)
    }
}

/// The machine's CPU counters since boot, to subtract ([`CpuClock::until`]).
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    busy: u64,
    steal: u64,
    total: u64,
}

impl CpuClock {
    /// Reads `/proc/stat`'s `cpu` line; `None` where there is none (not Linux).
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user and nice).
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq;
        Some(Self {
            busy,
            steal,
            total: busy + idle + iowait + steal,
        })
    }

    /// What the machine did from `self` to `later`.
    pub fn until(self, later: Self) -> MachineCpu {
        // `/proc/stat` counts in USER_HZ, 100 per second in Linux's ABI.
        let ticks = |n: u64| Duration::from_millis(n * 10);
        MachineCpu {
            busy: ticks(later.busy.saturating_sub(self.busy)),
            steal: ticks(later.steal.saturating_sub(self.steal)),
            total: ticks(later.total.saturating_sub(self.total)),
        }
    }
}

/// A run's clocks, wall time and the machine's CPU, started together at
/// the run's first record.
struct Stopwatch {
    started: Instant,
    cpu: Option<CpuClock>,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: CpuClock::read(),
        }
    }

    /// `records` timed from `watch`'s start to now (zero if it never started).
    fn timing(watch: Option<&Self>, records: u64) -> Timing {
        Timing {
            records,
            elapsed: watch.map_or(Duration::ZERO, |w| w.started.elapsed()),
            cpu: watch.and_then(|w| Some(w.cpu?.until(CpuClock::read()?))),
            phases: None,
        }
    }
}

/// Copies every record of `inputs` (from offset 0 up to `ends`) into
/// `output`, at-least-once, in batches of `batch` records.
///
/// # Errors
/// Broker failures, as text.
pub async fn passthrough(
    kafka: &KafkaConfig,
    inputs: &[&str],
    ends: &BTreeMap<String, i64>,
    output: &str,
    batch: usize,
) -> Result<Timing, String> {
    let group = format!("trellis-bench-passthrough-{}", std::process::id());
    let consumer: StreamConsumer = consumer_config(kafka, &group)
        .create()
        .map_err(|e| e.to_string())?;
    let producer: FutureProducer = producer_config(kafka, None)
        .create()
        .map_err(|e| e.to_string())?;
    let partitions = topic_partitions(kafka).map_err(|e| e.to_string())?;
    let mut assignment = TopicPartitionList::new();
    for topic in inputs {
        for p in 0..partitions.get(*topic).copied().unwrap_or(0) {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let total: i64 = ends.values().sum();
    let mut remaining = ends.clone();
    let mut records = 0u64;
    let mut watch = None;
    let mut pending = Vec::with_capacity(batch);
    // Next offset per partition; a TopicPartitionList appends on every add.
    let mut next: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    while remaining.values().any(|end| *end > 0) {
        let message = consumer.recv().await.map_err(|e| e.to_string())?;
        watch.get_or_insert_with(Stopwatch::start);
        let mut record =
            FutureRecord::to(output).timestamp(message.timestamp().to_millis().unwrap_or(0));
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(headers) = message.headers() {
            record = record.headers(headers.detach());
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e.to_string())?;
        pending.push(delivery);
        records += 1;
        let coordinates = format!("{}/{}", message.topic(), message.partition());
        if let Some(left) = remaining.get_mut(&coordinates)
            && message.offset() + 1 >= ends[&coordinates]
        {
            *left = 0;
        }
        match next.get_mut(message.topic()) {
            Some(partitions) => {
                partitions.insert(message.partition(), message.offset() + 1);
            }
            None => {
                next.insert(
                    message.topic().to_string(),
                    BTreeMap::from([(message.partition(), message.offset() + 1)]),
                );
            }
        }
        if pending.len() >= batch || records as i64 >= total {
            for delivery in pending.drain(..) {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.to_string()),
                    Err(_) => return Err("delivery cancelled".into()),
                }
            }
            let mut offsets = TopicPartitionList::new();
            for (topic, partitions) in &next {
                for (partition, offset) in partitions {
                    offsets
                        .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                        .map_err(|e| e.to_string())?;
                }
            }
            consumer
                .commit(&offsets, CommitMode::Async)
                .map_err(|e| e.to_string())?;
        }
    }
    for delivery in pending.drain(..) {
        delivery
            .await
            .map_err(|_| "delivery cancelled".to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(Stopwatch::timing(watch.as_ref(), records))
}

/// Which processor a bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Ingest topics → `collected`.
    Collector,
    /// `collected` → `protected`, with a fresh vault.
    Privacy,
    /// `protected` → `progress`, `completions`.
    Progress,
    /// `protected` → aggregates.
    Analytics,
}

/// Runs `stage`'s processor in-process over its inputs into a fresh state
/// store (and vault), timed from its first consumed record until its
/// positions reach `ends`.
///
/// # Errors
/// Start-up or run failures, as text.
pub async fn stage(
    stage: Stage,
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    ends: &BTreeMap<String, i64>,
) -> Result<Timing, String> {
    let result = match stage {
        // A throwaway key: the bench exercises the topic path only.
        Stage::Collector => {
            let secrets = throwaway_secrets(trellis_collector::SECRETS)?;
            timed(
                "collector",
                kafka,
                registry_url,
                topology,
                ends,
                |_| trellis_collector::Settings::default(),
                |config, stop| trellis_collector::run(config, secrets, stop),
            )
            .await
        }
        Stage::Privacy => {
            let secrets = throwaway_secrets(trellis_privacy::SECRETS)?;
            timed(
                "privacy",
                kafka,
                registry_url,
                topology,
                ends,
                |state| trellis_privacy::Settings {
                    vault_dir: state.join("vault"),
                    no_ip_tenants: Vec::new(),
                    reveal: None,
                    identity_links: Default::default(),
                    export_dir: None,
                },
                |config, stop| trellis_privacy::run(config, secrets, stop),
            )
            .await
        }
        Stage::Progress => {
            timed(
                "progress",
                kafka,
                registry_url,
                topology,
                ends,
                |_| trellis_progress::Settings::default(),
                |config, stop| trellis_progress::run(config, Default::default(), stop),
            )
            .await
        }
        Stage::Analytics => {
            timed(
                "analytics",
                kafka,
                registry_url,
                topology,
                ends,
                |_| analytics_settings(),
                |config, stop| trellis_analytics::run(config, Default::default(), stop),
            )
            .await
        }
    };
    result.map(|(timing, _)| timing)
}

/// The runtime's batch settings; `TRELLIS_BENCH_MAX_RECORDS` sets the
/// batch size (`batch.max_records`) of the live run and of the rebuild.
fn batch_config() -> trellis_runtime::config::BatchConfig {
    let mut batch = trellis_runtime::config::BatchConfig::default();
    if let Some(records) = std::env::var("TRELLIS_BENCH_MAX_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        batch.max_records = records;
    }
    batch
}

/// The aggregator's defaults; `TRELLIS_BENCH_HORIZON_SECS` sets both
/// revision horizons (what the horizon costs: compare with 600, none).
fn analytics_settings() -> trellis_analytics::Settings {
    let mut settings = trellis_analytics::Settings::default();
    if let Some(secs) = std::env::var("TRELLIS_BENCH_HORIZON_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.revision_horizon_secs = trellis_analytics::Horizons {
            hour: secs,
            day: secs,
        };
    }
    settings
}

/// Reads all of `protected` into memory, then times `name` (`progress` or
/// `analytics`) rebuilding a fresh store from it on this thread, `rounds`
/// times (each into a new store), dropping outputs as the runtime's replay
/// does: the rebuild speed per core, broker excluded.
///
/// # Errors
/// Broker, registry or processing failures, as text.
pub async fn rebuild(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    name: &str,
    rounds: usize,
) -> Result<Vec<Rebuild>, String> {
    use trellis_runtime::build::{Build, LocalSchemas, build_offline};
    use trellis_runtime::offline::OfflineRunner;
    use trellis_runtime::pipeline::{OwnedRecord, Processor};
    use trellis_runtime::schema::{AvroDecoder, registry_settings};
    use trellis_runtime::secret::Secrets;
    use trellis_runtime::state::StateStore;

    let topology =
        trellis_runtime::topology::Topology::load_checked(topology).map_err(|e| e.to_string())?;
    let registry = registry_settings(registry_url).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    trellis_runtime::kafka::scan_topic(
        kafka,
        "protected",
        Duration::from_secs(2),
        |m| records.push(OwnedRecord::from_message(m)),
        || false,
    )
    .map_err(|e| e.to_string())?;
    let decoder = AvroDecoder::new(registry.clone());
    // Warm the decoder's schema cache outside the timed part.
    if let Some(value) = records.first().and_then(|r| r.value.as_deref()) {
        decoder
            .decode_json(value)
            .await
            .map_err(|e| e.to_string())?;
    }
    let partitions = topic_partitions(kafka).map_err(|e| e.to_string())?;
    let assigned = BTreeMap::from([(
        "protected".to_string(),
        (0..partitions.get("protected").copied().unwrap_or(0)).collect(),
    )]);
    fn time<P: Processor>(
        runner: &OfflineRunner<'_>,
        mut processor: P,
        store: &StateStore,
        records: &[OwnedRecord],
    ) -> Result<Rebuild, String> {
        let (started, clock, thread) = (Instant::now(), CpuClock::read(), thread_cpu());
        runner
            .replay(&mut processor, store, records)
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        Ok(Rebuild {
            timing: Timing {
                records: records.len() as u64,
                elapsed,
                cpu: clock.zip(CpuClock::read()).map(|(a, b)| a.until(b)),
                phases: None,
            },
            thread_cpu: thread.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a)),
        })
    }
    // Built as the binaries build them, with local schema ids: a rebuild
    // drops what it emits, and decodes its input with the registry's.
    async fn built<B: Build>(
        topology: &trellis_runtime::topology::Topology,
        settings: &B::Settings,
        store: &StateStore,
    ) -> Result<B::Processor, String> {
        build_offline::<B>(
            topology,
            settings,
            &Secrets::default(),
            &LocalSchemas::new(),
            Some(store),
        )
        .await
        .map_err(|e| e.to_string())
    }
    let mut timings = Vec::new();
    for _ in 0..rounds.max(1) {
        let dir = tempfile_dir()?;
        let store = StateStore::open(&dir).map_err(|e| e.to_string())?;
        let resident_before = resident_bytes();
        let timing = if name == "progress" {
            let runner = OfflineRunner::declared_in(&topology, trellis_progress::NAME, &decoder)
                .map_err(|e| e.to_string())?
                .batch(batch_config().max_records);
            let progress = built::<trellis_progress::Progress>(
                &topology,
                &trellis_progress::Settings::default(),
                &store,
            )
            .await?;
            time(&runner, progress, &store, &records)
        } else {
            let runner = OfflineRunner::declared_in(&topology, trellis_analytics::NAME, &decoder)
                .map_err(|e| e.to_string())?
                .batch(batch_config().max_records);
            let mut analytics =
                built::<trellis_analytics::Analytics>(&topology, &analytics_settings(), &store)
                    .await?;
            analytics.assigned(&assigned).map_err(|e| e.to_string())?;
            time(&runner, analytics, &store, &records)
        }?;
        let mut line = format!(
            "rebuild {}: {name} {:.0} records/s ({} in {:.2}s",
            timings.len() + 1,
            timing.timing.rate(),
            timing.timing.records,
            timing.timing.elapsed.as_secs_f64(),
        );
        if let Some(rate) = timing.cpu_rate() {
            line += &format!("; {rate:.0} per second of the thread's CPU");
        }
        if let Some(cpu) = timing.timing.cpu {
            line += &format!(", steal {:.0}%", cpu.steal_share() * 100.0);
        }
        line += &format!("); state {} entries", store.len());
        // What holding the state in memory costs (the records were read
        // before; the growth is the state and the allocator's share). Later
        // rounds reuse the memory the first one freed.
        if let (0, Some(before), Some(after)) = (timings.len(), resident_before, resident_bytes()) {
            line += &format!(
                ", {:.0} MiB more resident",
                after.saturating_sub(before) as f64 / (1 << 20) as f64
            );
        }
        println!("{line}");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        timings.push(timing);
    }
    Ok(timings)
}

/// One rebuild's wall time and this thread's CPU time over it.
#[derive(Debug, Clone, Copy)]
pub struct Rebuild {
    /// Records and wall time (and the machine's CPU, for steal).
    pub timing: Timing,
    /// The rebuilding thread's CPU time (user and system), where readable.
    pub thread_cpu: Option<Duration>,
}

impl Rebuild {
    /// Records per second of the thread's CPU time: what the rebuild costs
    /// with the time the thread waited for a core (the machine's other
    /// guests, the broker) left out.
    pub fn cpu_rate(&self) -> Option<f64> {
        self.thread_cpu
            .filter(|cpu| !cpu.is_zero())
            .map(|cpu| self.timing.records as f64 / cpu.as_secs_f64())
    }
}

/// This thread's CPU time, user and system (`/proc/thread-self/stat`,
/// fields 14 and 15, in USER_HZ ticks of 10 ms).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// This process's resident memory (Linux `/proc/self/statm`, 4 KiB pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn throwaway_secrets(
    specs: &[trellis_runtime::secret::SecretSpec],
) -> Result<trellis_runtime::secret::Secrets, String> {
    let key = "00".repeat(32);
    trellis_runtime::secret::load_secrets_with(specs, |_| Some(key.clone()))
        .map_err(|e| e.to_string())
}

/// A processor running in-process for a benchmark ([`InProcess::start`]).
pub struct InProcess {
    name: String,
    task: tokio::task::JoinHandle<Result<trellis_runtime::Exit, trellis_runtime::Failure>>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Its `/metrics` URL.
    pub metrics_url: String,
    state: std::path::PathBuf,
}

impl InProcess {
    /// Starts a processor in-process with a fresh state directory and
    /// consumer group (a fresh processor, not a restart of the last round).
    ///
    /// # Errors
    /// A directory or port that cannot be had, as text.
    #[allow(clippy::too_many_arguments)]
    pub fn start<S, F>(
        name: &str,
        kafka: &KafkaConfig,
        registry_url: &str,
        topology: &std::path::Path,
        batch: trellis_runtime::config::BatchConfig,
        settings: impl FnOnce(&std::path::Path) -> S,
        run: impl FnOnce(trellis_runtime::Config<S>, futures::future::BoxFuture<'static, ()>) -> F,
    ) -> Result<Self, String>
    where
        F: std::future::Future<Output = Result<trellis_runtime::Exit, trellis_runtime::Failure>>
            + Send
            + 'static,
    {
        use futures::FutureExt;
        use trellis_runtime::Config;
        use trellis_runtime::config::{LogFormat, RegistryConfig};

        let state = tempfile_dir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut kafka = kafka.clone();
        kafka.group = Some(format!(
            "trellis-bench-{name}-{}",
            state
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        let config = Config {
            topology: topology.to_path_buf(),
            kafka,
            registry: RegistryConfig {
                url: registry_url.to_string(),
            },
            state_dir: state.join("state"),
            metrics_addr: ([127, 0, 0, 1], port).into(),
            batch,
            shutdown_deadline_ms: 10_000,
            log_format: LogFormat::Text,
            rebuild: false,
            settings: settings(&state),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let processor = run(
            config,
            async {
                let _ = stopped.await;
            }
            .boxed(),
        );
        // On its own runtime, as in production: on the caller's, a busy
        // processor starved the metrics poll that times it (its tasks ran
        // first), so the clock started late and the rate came out too high.
        let task = tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the processor")
                .block_on(processor)
        });
        Ok(Self {
            name: name.to_string(),
            task,
            stop,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            state,
        })
    }

    /// Its metrics now (empty while it is not serving), or why it stopped.
    ///
    /// # Errors
    /// The processor stopped early.
    pub async fn metrics(&mut self, client: &reqwest::Client) -> Result<String, String> {
        if self.task.is_finished() {
            let why = match (&mut self.task).await {
                Ok(Ok(exit)) => format!("{exit:?}"),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(format!("{} stopped early: {why}", self.name));
        }
        Ok(match client.get(&self.metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        })
    }

    /// Shuts it down and removes its state.
    ///
    /// # Errors
    /// It failed, as text.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&self.state);
        Ok(())
    }
}

/// Runs a processor in-process ([`InProcess::start`]), timed from its first
/// consumed record until its positions reach `ends`; also returns its last
/// metrics.
pub(crate) async fn timed<S, F>(
    name: &str,
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    ends: &BTreeMap<String, i64>,
    settings: impl FnOnce(&std::path::Path) -> S,
    run: impl FnOnce(trellis_runtime::Config<S>, futures::future::BoxFuture<'static, ()>) -> F,
) -> Result<(Timing, String), String>
where
    F: std::future::Future<Output = Result<trellis_runtime::Exit, trellis_runtime::Failure>>
        + Send
        + 'static,
{
    use trellis_runtime::metrics::sample;

    let mut processor = InProcess::start(
        name,
        kafka,
        registry_url,
        topology,
        batch_config(),
        settings,
        run,
    )?;
    let client = reqwest::Client::new();
    let total: i64 = ends.values().sum();
    let mut watch = None;
    let (timing, text) = loop {
        let text = processor.metrics(&client).await?;
        if watch.is_none() && sample(&text, "trellis_records_in_total").unwrap_or(0.0) > 0.0 {
            watch = Some(Stopwatch::start());
        }
        let position = sample(&text, "trellis_consumer_position").unwrap_or(0.0) as i64;
        if position >= total {
            break (Stopwatch::timing(watch.as_ref(), total as u64), text);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    processor.stop().await?;
    Ok((
        Timing {
            phases: BatchPhases::from_metrics(&text),
            ..timing
        },
        text,
    ))
}

/// A fresh directory per run: a unique name also names the run's consumer group.
fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "trellis-bench-{}-{run}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_counts_busy_and_steal_apart_from_idle() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let before = CpuClock::parse("cpu  100 0 50 1000 10 5 5 20 0 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuClock::parse("cpu  300 10 90 1200 10 5 15 60 7 0\n").unwrap();
        let cpu = before.until(after);
        // busy: (300-100) + 10 + (90-50) + 0 + (15-5) = 260 ticks of 10 ms
        assert_eq!(cpu.busy, Duration::from_millis(2_600));
        assert_eq!(cpu.steal, Duration::from_millis(400));
        // total: busy 260 + idle 200 + iowait 0 + steal 40
        assert_eq!(cpu.total, Duration::from_millis(5_000));
        assert!((cpu.steal_share() - 0.08).abs() < 1e-9);
        let timing = Timing {
            records: 1_000,
            elapsed: Duration::from_secs(1),
            cpu: Some(cpu),
            phases: None,
        };
        assert_eq!(timing.cpu_per_record(), Some(2_600.0));
    }

    #[test]
    fn batch_phases_come_from_the_processors_metrics() {
        let text = "# TYPE trellis_batch_seconds_total counter\n\
            trellis_batch_seconds_total{phase=\"commit\",processor=\"privacy\"} 0.5\n\
            trellis_batch_seconds_total{phase=\"deliver\",processor=\"privacy\"} 1.5\n\
            trellis_batch_seconds_total{phase=\"flush\",processor=\"privacy\"} 1\n\
            trellis_batch_seconds_total{phase=\"input\",processor=\"privacy\"} 0\n\
            trellis_batch_seconds_total{phase=\"process\",processor=\"privacy\"} 2\n";
        let phases = BatchPhases::from_metrics(text).unwrap();
        assert_eq!(phases.shares(), [0.0, 40.0, 20.0, 30.0, 10.0]);
        assert!(BatchPhases::from_metrics("trellis_records_in_total 3\n").is_none());
    }

    #[test]
    fn an_unreadable_cpu_line_reads_as_none() {
        assert!(CpuClock::parse("intr 1 2 3\n").is_none());
        assert!(CpuClock::parse("cpu  1 2 3\n").is_none());
        assert!(CpuClock::parse("cpu  1 2 x 4 5 6 7 8\n").is_none());
    }
}
