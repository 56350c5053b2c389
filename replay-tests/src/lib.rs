//! Harness for end-to-end tests on a real broker.
//!
//! Each test gets its own [`Stack`]: a tansu broker on a free loopback port
//! (the binary `ops/install-tansu` installs; `TRELLIS_TANSU` overrides), the
//! schema registry in-process, and the topology applied. Processors run as
//! real binaries ([`Process`]) so tests can SIGKILL them; build them first
//! with `cargo build --bins` (ops/test does).
//!
//! # Layout
//! - [`Stack`]: broker + registry + topology.
//! - [`Process`]: a processor binary under test.
//! - [`TopicContents`]: a topic read back, with ids counted.
//! - [`postgres`]: a throwaway Postgres cluster for the warehouse sink.

pub mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use trellis_runtime::config::KafkaConfig;
pub use trellis_runtime::kafka::end_offsets;
use trellis_runtime::kafka::{ID_HEADER, producer_config, scan_topic};
use trellis_runtime::metrics::sample;
use trellis_runtime::producer::Outgoing;
use trellis_runtime::schema::{AvroEncoder, SchemaFile, registry_settings};
use trellis_runtime::topology::Topology;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary built by `cargo build --bins`.
///
/// # Panics
/// If it is missing, with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (ops/test does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
///
/// # Panics
/// If nothing does within `timeout`.
pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The consumer group session timeout of fleet instances in tests: a
/// killed owner's lease moves after this long.
pub const FLEET_SESSION_TIMEOUT_MS: u64 = 3_000;

/// A broker on a free loopback port; killed on drop: tansu with memory
/// storage, or nisshi storing its log in a Postgres cluster of its own
/// ([`Broker::start_durable`]; `TRELLIS_TEST_BROKER=durable` runs every
/// test on it).
pub struct Broker {
    child: Child,
    /// `127.0.0.1:port`.
    pub bootstrap: String,
    port: u16,
    cluster: String,
    /// The durable broker's storage, and the command that starts it again.
    storage: Option<(postgres::Postgres, PathBuf)>,
}

impl Broker {
    /// Starts the broker `TRELLIS_TEST_BROKER` names (`durable`: nisshi;
    /// otherwise tansu) and waits until it answers.
    pub fn start() -> Self {
        Self::start_as(&format!("test-{}-{}", free_port(), std::process::id()))
    }

    /// Starts a broker reporting cluster id `cluster` (two brokers with one
    /// id look like one cluster that lost its log).
    pub fn start_as(cluster: &str) -> Self {
        if std::env::var("TRELLIS_TEST_BROKER").as_deref() == Ok("durable") {
            return Self::start_durable_as(cluster);
        }
        Self::start_memory_as(cluster)
    }

    /// tansu, whatever `TRELLIS_TEST_BROKER` says: for tests of records
    /// larger than a broker's default limit, which tansu takes and nisshi
    /// (like Kafka) refuses.
    pub fn start_memory() -> Self {
        Self::start_memory_as(&format!("test-{}-{}", free_port(), std::process::id()))
    }

    fn start_memory_as(cluster: &str) -> Self {
        let port = free_port();
        // ops/stack-up starts its broker with this same command line.
        let tansu = trellis_kit::stack::tansu(&repo_root().join(".trellis"))
            .unwrap_or_else(|e| panic!("{e}"));
        let child = trellis_kit::stack::broker_command(&tansu, port, cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tansu");
        Self::started(child, port, cluster, None)
    }

    /// True when nisshi is installed (`ops/install-nisshi`): tests that
    /// need a broker whose consumer groups reassign a dead member's
    /// partitions, or whose log survives a restart, run only then.
    pub fn durable_available() -> bool {
        trellis_kit::stack::nisshi(&repo_root().join(".trellis")).is_ok()
    }

    /// A durable broker, or `None` (and a line saying the test `what` was
    /// skipped, and how to run it) when nisshi is not installed. With
    /// `TRELLIS_TEST_BROKER=durable` a missing nisshi fails instead.
    pub fn durable_or_skip(what: &str) -> Option<Self> {
        if Self::durable_available()
            || std::env::var("TRELLIS_TEST_BROKER").as_deref() == Ok("durable")
        {
            return Some(Self::start_durable());
        }
        eprintln!(
            "SKIPPED {what}: it needs the durable broker; run ops/install-nisshi (or ops/test --durable)"
        );
        None
    }

    /// Starts nisshi with its log in a new Postgres cluster, retention and
    /// compaction swept every 2 s.
    pub fn start_durable() -> Self {
        Self::start_durable_as(&format!("test-{}-{}", free_port(), std::process::id()))
    }

    fn start_durable_as(cluster: &str) -> Self {
        let nisshi = trellis_kit::stack::nisshi(&repo_root().join(".trellis"))
            .unwrap_or_else(|e| panic!("{e}"));
        let pg = postgres::Postgres::start_bare();
        let port = free_port();
        let child = Self::durable_command(&nisshi, port, cluster, &pg)
            .spawn()
            .expect("cannot start nisshi");
        Self::started(child, port, cluster, Some((pg, nisshi)))
    }

    fn durable_command(
        nisshi: &Path,
        port: u16,
        cluster: &str,
        pg: &postgres::Postgres,
    ) -> Command {
        let mut command = trellis_kit::stack::durable_broker_command(
            nisshi,
            port,
            cluster,
            &pg.admin_url(),
            Duration::from_secs(2),
        );
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    fn started(
        child: Child,
        port: u16,
        cluster: &str,
        storage: Option<(postgres::Postgres, PathBuf)>,
    ) -> Self {
        let broker = Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            cluster: cluster.to_string(),
            storage,
        };
        trellis_kit::stack::wait_for_port(port, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the broker did not start: {e}"));
        broker
    }

    /// Whether this broker keeps its log across a restart.
    pub fn is_durable(&self) -> bool {
        self.storage.is_some()
    }

    /// Client settings for this broker (nisshi's consumers need larger
    /// fetches, [`trellis_kit::stack::DURABLE_BROKER_CLIENT`]).
    pub fn kafka(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig::new(self.bootstrap.clone());
        if self.is_durable() {
            for (key, value) in trellis_kit::stack::DURABLE_BROKER_CLIENT {
                kafka
                    .client
                    .insert((*key).to_string(), (*value).to_string());
            }
        }
        kafka
    }

    /// SIGKILL, then the same broker again on the same port (durable
    /// brokers only: a memory broker would come back empty).
    pub fn kill_and_restart(&mut self) {
        let (pg, nisshi) = self.storage.as_ref().expect("a durable broker");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::durable_command(nisshi, self.port, &self.cluster, pg)
            .spawn()
            .expect("cannot restart nisshi");
        trellis_kit::stack::wait_for_port(self.port, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the broker did not restart: {e}"));
    }
}

impl Broker {
    /// SIGSTOP: the broker stops answering, connections stay open.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`Broker::freeze`].
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal tansu");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Broker, registry and topology for one test.
pub struct Stack {
    /// The broker.
    pub broker: Broker,
    /// Registry base URL.
    pub registry_url: String,
    /// Client settings for the broker.
    pub kafka: KafkaConfig,
    /// The repository's topology.
    pub topology: Topology,
    /// Scratch space (state stores, configs, logs).
    pub dir: tempfile::TempDir,
    registry: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    registry_addr: SocketAddr,
}

/// Serves the registry from `dir` on `addr`; returns the bound address, a
/// stop trigger and the server task.
async fn serve_registry(
    dir: PathBuf,
    addr: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let task = tokio::spawn(async move {
        trellis_registry::serve(
            &dir,
            addr,
            |addr| {
                let _ = bound_tx.send(addr);
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
        .expect("registry");
    });
    (bound_rx.await.expect("registry address"), stop, task)
}

impl Stack {
    /// Starts broker and registry; applies the topology when `apply` is set.
    pub async fn start_with(apply: bool) -> Self {
        Self::start_on(Broker::start(), apply).await
    }

    /// Like [`Stack::start_with`], on a broker started by the caller.
    pub async fn start_on(broker: Broker, apply: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry_addr, stop, task) = serve_registry(
            dir.path().join("registry"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await;
        let registry_url = format!("http://{registry_addr}");
        let kafka = broker.kafka();
        let topology =
            Topology::load_checked(&repo_root().join("topology.yaml")).expect("topology");
        if apply {
            trellis_kit::provision::apply(&kafka, &registry_url, &topology, 1)
                .await
                .expect("topology apply");
        }
        Self {
            broker,
            registry_url,
            kafka,
            topology,
            dir,
            registry: Some((stop, task)),
            registry_addr,
        }
    }

    /// Stops the schema registry (clients get connection refused).
    pub async fn stop_registry(&mut self) {
        if let Some((stop, mut task)) = self.registry.take() {
            let _ = stop.send(());
            // Graceful shutdown waits for idle keep-alive connections: cut
            // them, as a crashed registry would.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Starts the registry again on the same address with the same data.
    pub async fn restart_registry(&mut self) {
        self.stop_registry().await;
        let (_, stop, task) =
            serve_registry(self.dir.path().join("registry"), self.registry_addr).await;
        self.registry = Some((stop, task));
    }

    /// Starts everything and applies the topology.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// A producer on this broker.
    pub fn producer(&self) -> FutureProducer {
        producer_config(&self.kafka, None)
            .create()
            .expect("producer")
    }

    /// Writes a config for `processor` (batches of at most
    /// [`BATCH_MAX_RECORDS`]) and returns its path. `settings` is
    /// the YAML of the processor's own section.
    pub fn config(&self, processor: &str, metrics_port: u16, settings: &str) -> PathBuf {
        self.write_config(processor, None, metrics_port, settings)
    }

    /// The config of instance `instance` of `processor` in a fleet: its
    /// own `kafka.instance_id` and state directory.
    fn write_config(
        &self,
        processor: &str,
        instance: Option<(&str, &str)>,
        metrics_port: u16,
        settings: &str,
    ) -> PathBuf {
        let (file, state, instance_id) = match instance {
            Some((i, dir)) => (
                format!("{processor}-{dir}"),
                self.state_dir(&format!("{processor}-{dir}")),
                format!(
                    "  instance_id: {processor}-{i}\n  session_timeout_ms: {FLEET_SESSION_TIMEOUT_MS}\n"
                ),
            ),
            None => (
                processor.to_string(),
                self.state_dir(processor),
                String::new(),
            ),
        };
        let path = self.dir.path().join(format!("{file}.yaml"));
        let client: String = self
            .kafka
            .client
            .iter()
            .map(|(k, v)| format!("    {k}: '{v}'\n"))
            .collect();
        let client = if client.is_empty() {
            client
        } else {
            format!("  client:\n{client}")
        };
        let text = format!(
            "topology: {topology}\nkafka:\n  bootstrap_servers: '{bootstrap}'\n{client}{instance_id}registry:\n  url: '{registry}'\nstate_dir: {state}\nmetrics_addr: 127.0.0.1:{metrics_port}\nbatch:\n  max_records: {BATCH_MAX_RECORDS}\n  max_wait_ms: 50\nsettings: {settings}\n",
            topology = repo_root().join("topology.yaml").display(),
            bootstrap = self.broker.bootstrap,
            registry = self.registry_url,
            state = state.display(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts instance `instance` of `processor` (its own instance id and
    /// state directory; the group decides what it owns).
    pub fn spawn_instance(
        &self,
        processor: &str,
        instance: &str,
        settings: &str,
        secrets: &[(&str, String)],
    ) -> Process {
        self.spawn_copy(processor, instance, instance, settings, secrets)
    }

    /// Like [`Stack::spawn_instance`], with the state directory `dir`
    /// (a copy of an instance on another machine).
    pub fn spawn_copy(
        &self,
        processor: &str,
        instance: &str,
        dir: &str,
        settings: &str,
        secrets: &[(&str, String)],
    ) -> Process {
        let port = free_port();
        let config = self.write_config(processor, Some((instance, dir)), port, settings);
        Process::spawn(processor, &config, port, secrets, self.dir.path(), &[])
    }

    /// Where `processor` keeps its state in this stack.
    pub fn state_dir(&self, processor: &str) -> PathBuf {
        self.dir.path().join("state").join(processor)
    }

    /// Starts `trellis-<processor>` with a fresh config and the given secrets.
    pub fn spawn(&self, processor: &str, settings: &str, secrets: &[(&str, String)]) -> Process {
        let port = free_port();
        let config = self.config(processor, port, settings);
        Process::spawn(processor, &config, port, secrets, self.dir.path(), &[])
    }

    /// The privacy processor with its test secrets and a vault in the stack's
    /// directory (`vault/`), with extra command-line `args`.
    pub fn spawn_privacy(&self, args: &[&str]) -> Process {
        let port = free_port();
        let settings = format!("{{vault_dir: '{}'}}", self.vault_dir().display());
        let config = self.config("privacy", port, &settings);
        Process::spawn(
            "privacy",
            &config,
            port,
            &privacy_secrets(),
            self.dir.path(),
            args,
        )
    }

    /// Where [`Stack::spawn_privacy`] keeps the vault.
    pub fn vault_dir(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    /// A collector config with HTTP ingest on a free port and an API key
    /// store in the stack's directory.
    pub fn http_collector(&self) -> HttpCollector {
        let http_port = free_port();
        let metrics_port = free_port();
        let settings = format!(
            "{{http: {{addr: '127.0.0.1:{http_port}', api_keys: '{}'}}}}",
            self.dir.path().join("api-keys.json").display()
        );
        HttpCollector {
            config: self.config("collector", metrics_port, &settings),
            http_port,
            metrics_port,
        }
    }

    /// Reads a whole topic back.
    pub fn read(&self, topic: &str) -> TopicContents {
        TopicContents::read(&self.kafka, topic)
    }

    /// Registers `topic`'s schema (from topology.yaml) and returns its encoder.
    pub async fn encoder(&self, topic: &str) -> AvroEncoder {
        let file = self
            .topology
            .topic(topic)
            .expect("declared topic")
            .schema
            .clone()
            .expect("an Avro topic");
        let schema = SchemaFile::load(&self.topology.schema_path(&file)).expect("schema");
        let registry = registry_settings(&self.registry_url).expect("registry");
        AvroEncoder::register(&registry, topic, &schema)
            .await
            .expect("register")
    }

    /// Produces `records` in order (with `trellis.id` and `tenant` headers)
    /// and waits until every one is acknowledged.
    pub async fn produce(&self, records: &[Produced]) {
        let producer = self.producer();
        let mut pending = std::collections::VecDeque::new();
        for r in records {
            let headers = Outgoing {
                topic: &r.topic,
                key: &r.key,
                value: r.value.as_deref(),
                id: Some(&r.id),
                tenant: r.tenant.as_deref(),
                request_id: None,
                timestamp_ms: None,
            }
            .headers();
            let mut record = FutureRecord::to(&r.topic).key(&r.key).headers(headers);
            if let Some(value) = &r.value {
                record = record.payload(value);
            }
            if let Some(partition) = r.partition {
                record = record.partition(partition);
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((_, returned)) => {
                        // Queue full: wait for the oldest delivery.
                        record = returned;
                        if let Some(oldest) = pending.pop_front() {
                            oldest.await.expect("delivery").expect("produced");
                        }
                    }
                }
            }
        }
        for delivery in pending {
            delivery.await.expect("delivery").expect("produced");
        }
    }
}

/// A record for [`Stack::produce`].
#[derive(Debug, Clone)]
pub struct Produced {
    /// Topic.
    pub topic: String,
    /// Partition (`None`: by key).
    pub partition: Option<i32>,
    /// Key.
    pub key: Vec<u8>,
    /// Value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// The `trellis.id` header.
    pub id: String,
    /// The `tenant` header.
    pub tenant: Option<String>,
}

/// A collector configured for HTTP ingest ([`Stack::http_collector`]).
pub struct HttpCollector {
    /// Its config file.
    pub config: PathBuf,
    /// Where HTTP ingest listens.
    pub http_port: u16,
    /// Where `/metrics` is served.
    pub metrics_port: u16,
}

impl HttpCollector {
    /// Runs `trellis-collector --config … <args>` (the key tool) and returns
    /// its standard output.
    ///
    /// # Panics
    /// If the command fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(binary("trellis-collector"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("TRELLIS__KAFKA__BOOTSTRAP_SERVERS")
            .output()
            .expect("trellis-collector runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Creates an API key for `tenant`: (key id, key).
    pub fn create_key(&self, tenant: &str) -> (String, String) {
        let created = self.cli(&["api-key", "create", "--tenant", tenant]);
        let key = created
            .split_whitespace()
            .find(|w| w.starts_with("trl_"))
            .expect("the key is printed once")
            .to_string();
        let id = created
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("the key id is printed")
            .to_string();
        (id, key)
    }

    /// Starts the collector with its test secrets.
    pub fn spawn(&self, stack: &Stack) -> Process {
        Process::spawn(
            "collector",
            &self.config,
            self.metrics_port,
            &collector_secrets(),
            stack.dir.path(),
            &[],
        )
    }
}

/// The collector's secrets for tests.
pub fn collector_secrets() -> Vec<(&'static str, String)> {
    vec![("TRELLIS_INGEST_SIGNING_KEY", test_secret("signing"))]
}

/// The privacy processor's secrets for tests.
pub fn privacy_secrets() -> Vec<(&'static str, String)> {
    vec![
        (trellis_privacy::MASTER_KEY, test_secret("master")),
        (trellis_privacy::INDEX_KEY, test_secret("index")),
        (trellis_privacy::IP_SALT, test_secret("ip-salt")),
    ]
}

/// A processor binary under test.
pub struct Process {
    child: Child,
    /// Processor name.
    pub name: String,
    /// Its `/metrics` URL.
    pub metrics_url: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// A dev secret for tests: 32 bytes of hex, derived from `label`.
pub fn test_secret(label: &str) -> String {
    let mut hex = String::new();
    for (i, b) in label.bytes().cycle().take(32).enumerate() {
        hex.push_str(&format!("{:02x}", b.wrapping_add(i as u8)));
    }
    hex
}

impl Process {
    /// Spawns `trellis-<name> --config <config> [extra args]` with only the
    /// given `TRELLIS_*` secrets in its environment.
    pub fn spawn(
        name: &str,
        config: &Path,
        metrics_port: u16,
        secrets: &[(&str, String)],
        log_dir: &Path,
        args: &[&str],
    ) -> Self {
        let log = log_dir.join(format!("{name}-{}.log", free_port()));
        let mut command = Command::new(binary(&format!("trellis-{name}")));
        command.arg("--config").arg(config).args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("TRELLIS") {
                command.env_remove(key);
            }
        }
        for (key, value) in secrets {
            command.env(key, value);
        }
        let child = command
            // Pipeline debug lines carry request ids: tests follow one
            // HTTP request through every processor.
            .env(
                "RUST_LOG",
                "info,rdkafka=warn,trellis_runtime::pipeline=debug",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn processor");
        Self {
            child,
            name: name.to_string(),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            log,
        }
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} ignored SIGTERM for 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The current `/metrics` text (empty if not yet serving).
    pub async fn metrics(&self) -> String {
        match reqwest::get(&self.metrics_url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sum of `trellis_consumer_position` over partitions of `topics`.
    pub async fn position(&self, topics: &[&str]) -> i64 {
        positions(&self.metrics().await)
            .into_iter()
            .filter(|((t, _), _)| topics.contains(&t.as_str()))
            .map(|(_, p)| p)
            .sum()
    }

    /// Waits until the positions reach `ends` (`topic/partition` → end offset).
    pub async fn wait_caught_up(&mut self, ends: &BTreeMap<String, i64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let at = positions(&self.metrics().await);
            let behind: Vec<String> = ends
                .iter()
                .filter_map(|(coordinates, end)| {
                    let (topic, partition) = coordinates.rsplit_once('/')?;
                    let key = (topic.to_string(), partition.parse().ok()?);
                    let position = at.get(&key).copied().unwrap_or(0);
                    (position < *end).then(|| format!("{coordinates}: {position}/{end}"))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) while catching up:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} still behind after {timeout:?}: {}\n{}",
                self.name,
                behind.join(", "),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this instance owns its processor's state (its group's
    /// lease): its HTTP endpoints answer only then.
    pub async fn wait_owner(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metric("trellis_state_owner").await != 1.0 {
            assert!(
                Instant::now() < deadline,
                "{} did not take the lease in {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One sample of its metrics (see [`sample`]).
    pub async fn metric(&self, selector: &str) -> f64 {
        sample(&self.metrics().await, selector).unwrap_or(0.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `trellis_consumer_position` by (topic, partition).
pub fn positions(metrics: &str) -> HashMap<(String, i32), i64> {
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
    metrics
        .lines()
        .filter(|l| l.starts_with("trellis_consumer_position{"))
        .filter_map(|l| {
            let topic = label(l, "topic")?;
            let partition = label(l, "partition")?.parse().ok()?;
            let value = l.rsplit_once(' ')?.1.parse::<f64>().ok()? as i64;
            Some(((topic, partition), value))
        })
        .collect()
}

/// How long a test's read of a topic waits without records before it gives
/// up on a partition it has not yet read to its high watermark. Reads end
/// at the watermarks (plus a short settle), so this bounds only a stalled
/// broker: under CI load tansu can go seconds without answering a fetch,
/// and a shorter wait once cut a read short there.
pub const READ_IDLE: Duration = Duration::from_secs(30);

/// `batch.max_records` of every config [`Stack::config`] writes: a kill
/// re-emits at most the one batch whose outputs were durable and whose
/// positions were not yet committed.
pub const BATCH_MAX_RECORDS: usize = 1000;

/// A topic read back from offset 0.
pub struct TopicContents {
    /// Every record's value, with its `trellis.id` header.
    pub records: Vec<(Option<String>, Option<Vec<u8>>)>,
    /// Every record's key and header bytes, in the same order.
    pub keys_and_headers: Vec<Vec<u8>>,
}

impl TopicContents {
    /// Reads `topic` up to where it ended when the read began (see
    /// [`READ_IDLE`]).
    pub fn read(kafka: &KafkaConfig, topic: &str) -> Self {
        let mut records = Vec::new();
        let mut keys_and_headers = Vec::new();
        scan_topic(
            kafka,
            topic,
            READ_IDLE,
            |m| {
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == ID_HEADER))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                records.push((id, m.payload().map(<[u8]>::to_vec)));
                let mut extra = m.key().map(<[u8]>::to_vec).unwrap_or_default();
                for header in m.headers().into_iter().flat_map(|h| h.iter()) {
                    extra.extend_from_slice(header.key.as_bytes());
                    extra.extend_from_slice(header.value.unwrap_or_default());
                }
                keys_and_headers.push(extra);
            },
            || false,
        )
        .expect("scan topic");
        Self {
            records,
            keys_and_headers,
        }
    }

    /// How many times each id occurs.
    pub fn id_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (id, _) in &self.records {
            *counts.entry(id.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        counts
    }
}

/// Copies the directory `from` into `to`, recursively (a backup of a vault
/// or a state store, taken while its processor is stopped).
///
/// # Panics
/// On any I/O error: a test's copy must be whole.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("read the directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("its type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}
