//! `trellis-bench`: each processor against a raw rdkafka passthrough on the
//! same broker, the warehouse sink against plain `COPY`, the audit and
//! xAPI costs per record, erasure latency. Linked against every
//! processor, which the `trellis` tool is not; `ops/bench` runs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use rdkafka::producer::FutureProducer;
use trellis_bench::bench::Stage;
use trellis_kit::args::StackArgs;
use trellis_kit::demo::{self, DemoSpec};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::producer_config;
use trellis_runtime::lifecycle::{ExitStatus, run_tool};

/// Measure a processor against a raw rdkafka passthrough on the same broker.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
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
    /// The table of the figures `--summary` collected in FILE.
    Table {
        /// The summary file.
        summary: PathBuf,
    },
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

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    stack: StackArgs,
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
    /// Also append the figures to this file as one JSON line (`ops/bench
    /// all` collects them, `trellis-bench table` prints them).
    #[arg(long, env = "TRELLIS_BENCH_SUMMARY")]
    summary: Option<PathBuf>,
}

/// One processor's figures, as `--summary` writes them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Summary {
    processor: String,
    /// Best rates over the rounds, records/s.
    passthrough: f64,
    rate: f64,
    /// The least machine CPU per record in any round, µs.
    cpu_passthrough_us: Option<f64>,
    cpu_processor_us: Option<f64>,
    /// Median rebuild rate from the fetched log, records/s.
    rebuild: Option<f64>,
}

impl Summary {
    fn append(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }

    /// The markdown table of the summaries in `path`, one row each.
    fn table(path: &Path) -> anyhow::Result<String> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut table = String::from(
            "| processor | passthrough | processor | ratio | machine CPU per record (ratio) | rebuild, one thread |\n\
             |---|---|---|---|---|---|\n",
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let s: Summary = serde_json::from_str(line)
                .with_context(|| format!("{} holds no bench summary: {line}", path.display()))?;
            let cpu = match (s.cpu_passthrough_us, s.cpu_processor_us) {
                (Some(p), Some(q)) => format!("{p:.1} → {q:.1} µs ({:.2})", p / q),
                _ => "-".into(),
            };
            let rebuild = s.rebuild.map_or("-".into(), |r| format!("{r:.0}/s"));
            table += &format!(
                "| {} | {:.0}/s | {:.0}/s | {:.2} | {cpu} | {rebuild} |\n",
                s.processor,
                s.passthrough,
                s.rate,
                s.rate / s.passthrough
            );
        }
        Ok(table)
    }
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_tool(execute(cli.command))
}

async fn execute(command: BenchCommand) -> anyhow::Result<ExitStatus> {
    match command {
        BenchCommand::Collector(args) => bench(args, Stage::Collector).await,
        BenchCommand::Privacy(args) => bench(args, Stage::Privacy).await,
        BenchCommand::Progress(args) => bench(args, Stage::Progress).await,
        BenchCommand::Analytics(args) => bench(args, Stage::Analytics).await,
        BenchCommand::Table { summary } => {
            print!("{}", Summary::table(&summary)?);
            Ok(ExitStatus::Success)
        }
        BenchCommand::Audit {
            records,
            partitions,
            value_bytes,
        } => {
            let figures = tokio::task::spawn_blocking(move || {
                trellis_bench::measure::audit(records, partitions, value_bytes)
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
        BenchCommand::Xapi { statements, rounds } => {
            let f = tokio::task::spawn_blocking(move || {
                trellis_bench::measure::xapi(statements, rounds)
            })
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
        BenchCommand::Warehouse {
            stack,
            rows,
            rounds,
            rate,
            lag_secs,
        } => {
            let secrets =
                trellis_runtime::secret::load_secrets(&[trellis_warehouse::WAREHOUSE_URL])?;
            let url =
                trellis_warehouse::connection::ConnectionString::parse(&String::from_utf8_lossy(
                    secrets.get(trellis_warehouse::WAREHOUSE_URL.env).expose(),
                ))
                .map_err(|e| anyhow::anyhow!("TRELLIS_WAREHOUSE_URL {e}"))?;
            let kafka = stack.broker.kafka();
            let registry = stack.registry.registry_url;
            let topology = stack.file.topology;
            println!("{rows} rows (60% progress, 20% completions, 20% aggregate cells) into {url}");
            let t = trellis_bench::warehouse_bench::throughput(
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
                let lag = trellis_bench::warehouse_bench::lag(
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
        BenchCommand::Erasure {
            stack,
            requests,
            rate,
            traffic,
            learners,
        } => {
            let (kafka, api) = stack.requests().await?;
            let producer: FutureProducer = producer_config(&kafka, None).create()?;
            println!(
                "live traffic at {traffic} events/s for 10 s, then {requests} erasures at {rate}/s"
            );
            let figures = trellis_bench::measure::erasure(
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
    }
}

async fn bench(args: BenchArgs, stage: Stage) -> anyhow::Result<ExitStatus> {
    use trellis_bench::bench;
    let BenchArgs {
        stack: StackArgs {
            file,
            broker,
            registry,
        },
        events,
        rounds,
        rebuilds,
        summary,
    } = args;
    let kafka = broker.kafka();
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
        bench::stage(
            Stage::Collector,
            &kafka,
            &registry_url,
            &file.topology,
            &manifest.end_offsets,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    if matches!(stage, Stage::Progress | Stage::Analytics) {
        println!("filling `protected` with the privacy processor (untimed)");
        let ends = trellis_runtime::kafka::end_offsets(&kafka, "collected")?;
        bench::stage(Stage::Privacy, &kafka, &registry_url, &file.topology, &ends)
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
        let timing = bench::stage(stage, &kafka, &registry_url, &file.topology, &ends)
            .await
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
    let mut figures = Summary {
        processor: name.to_string(),
        passthrough: best_pass.map_or(0.0, |t| t.rate()),
        rate: best_proc.map_or(0.0, |t| t.rate()),
        cpu_passthrough_us: least_cpu.0,
        cpu_processor_us: least_cpu.1,
        rebuild: None,
    };
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
        figures.rebuild = Some(median.rate());
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
    if let Some(path) = summary {
        figures.append(&path)?;
    }
    Ok(ExitStatus::Success)
}

/// `; machine CPU 21.3 µs/record, steal 2%; batches: process 80%, …` for a
/// round's line, each part where it was read.
fn cpu_note(timing: &trellis_bench::bench::Timing) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_appended_one_per_processor_make_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary");
        let collector = Summary {
            processor: "collector".into(),
            passthrough: 100_000.0,
            rate: 80_000.0,
            cpu_passthrough_us: Some(8.0),
            cpu_processor_us: Some(16.0),
            rebuild: None,
        };
        collector.append(&path).unwrap();
        Summary {
            processor: "progress".into(),
            rebuild: Some(250_000.4),
            cpu_passthrough_us: None,
            ..collector
        }
        .append(&path)
        .unwrap();
        let table = Summary::table(&path).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| collector | 100000/s | 80000/s | 0.80 | 8.0 → 16.0 µs (0.50) | - |",
                "| progress | 100000/s | 80000/s | 0.80 | - | 250000/s |",
            ]
        );
        std::fs::write(&path, "best: passthrough 1/s\n").unwrap();
        let err = Summary::table(&path).unwrap_err().to_string();
        assert!(err.contains("holds no bench summary"), "{err}");
    }
}
