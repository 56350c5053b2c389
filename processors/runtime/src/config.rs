//! Processor configuration: a YAML file plus `TRELLIS__`-prefixed
//! environment overrides (`TRELLIS__KAFKA__BOOTSTRAP_SERVERS=…`, `__`
//! separating levels). Unknown keys are errors, so a typo never silently
//! falls back to a default. Secrets are not configuration: they come from
//! their own variables (see [`crate::secret`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Configuration shared by every processor; `S` is the processor's own section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config<S> {
    /// Path of topology.yaml; relative paths are taken from the working directory.
    #[serde(default = "default_topology")]
    pub topology: PathBuf,
    /// Broker connection and delivery mode.
    pub kafka: KafkaConfig,
    /// Confluent-compatible schema registry.
    pub registry: RegistryConfig,
    /// Directory of this processor's sled state store.
    pub state_dir: PathBuf,
    /// Where `/metrics` and `/healthz` are served; port 0 picks a free port.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// How records are grouped into checkpointed batches.
    #[serde(default)]
    pub batch: BatchConfig,
    /// How long a graceful shutdown may take before it is forced.
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// Log output: `text` for people, `json` for collectors.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Replay inputs from offset 0 into a fresh state store before going live.
    #[serde(default)]
    pub rebuild: bool,
    /// The processor's own settings.
    pub settings: S,
}

fn default_topology() -> PathBuf {
    PathBuf::from("topology.yaml")
}

/// Loopback only: metrics reveal topic names and volumes.
fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Ten seconds: long enough to flush a full batch on a loaded broker, short
/// enough for an orchestrator's default termination grace period (30 s).
const fn default_shutdown_deadline_ms() -> u64 {
    10_000
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Broker connection and delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Wrap each batch's outputs and input offsets in a Kafka transaction.
    /// Off by default: effectively-once holds without it (see [`crate::pipeline`]),
    /// and brokers such as tansu do not enforce transaction isolation.
    #[serde(default)]
    pub transactions: bool,
    /// This instance's name in the consumer group (`group.instance.id`,
    /// static membership): unique per instance, stable across its
    /// restarts. Defaults to the processor's name, so a second copy
    /// started with the same settings fences the first instead of
    /// running beside it.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long the group waits for a silent instance before another takes
    /// over what it owned (`session.timeout.ms`).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// librdkafka's `fetch.min.bytes` for the input consumer: how much a
    /// fetch waits for. nisshi answers a fetch as soon as one record is
    /// ready, so it needs about 1,000,000 (INFRA.md; ops/ sets it for the
    /// durable broker).
    #[serde(default)]
    pub fetch_min_bytes: Option<u32>,
    /// librdkafka's `fetch.wait.max.ms` for the input consumer: the longest
    /// a fetch waits for `fetch_min_bytes`.
    #[serde(default)]
    pub fetch_wait_max_ms: Option<u32>,
    /// Gone: static assignment was replaced by the consumer group. Kept
    /// only to refuse it with the way forward.
    #[serde(default)]
    pub instance: Option<u32>,
    /// Gone, as `instance`.
    #[serde(default)]
    pub instances: Option<u32>,
    /// Consumer group instead of the one topology.yaml declares: a second,
    /// independent copy of the processor (benchmarks, blue/green rebuilds).
    #[serde(default)]
    pub group: Option<String>,
    /// Extra librdkafka properties (security, tuning), passed through verbatim.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// 10 s: failover within seconds, yet a garbage-collection-free process on a
/// busy 2-core machine never misses its heartbeats for that long.
const fn default_session_timeout_ms() -> u64 {
    10_000
}

impl KafkaConfig {
    /// Plain settings for `bootstrap_servers` (tools, tests): one instance,
    /// no transactions, no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            transactions: false,
            instance_id: None,
            fetch_min_bytes: None,
            fetch_wait_max_ms: None,
            session_timeout_ms: default_session_timeout_ms(),
            instance: None,
            instances: None,
            group: None,
            client: BTreeMap::new(),
        }
    }
}

/// Schema registry location.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
}

/// Batch boundaries: a batch is the unit of produce-then-checkpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records per batch.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Longest a batch stays open waiting for records, in milliseconds.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

/// 5,000 records: large enough that the per-batch delivery wait and sled
/// commit cost well under a microsecond per record, small enough that a
/// crash replays at most a fraction of a second of input.
const fn default_max_records() -> usize {
    5_000
}

/// 100 ms bounds the latency a quiet stream adds.
const fn default_max_wait_ms() -> u64 {
    100
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_wait_ms: default_max_wait_ms(),
        }
    }
}

impl BatchConfig {
    /// `max_wait_ms` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}

/// A configuration that could not be loaded; the message says which key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment did not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Values that parse but cannot work together.
    #[error("invalid configuration: {}", .0.join("; "))]
    Inconsistent(Vec<String>),
}

impl<S: DeserializeOwned> Config<S> {
    /// Loads `path` (if given) overlaid with `TRELLIS__*` environment variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, "TRELLIS__")
    }

    /// [`Config::load`] with another environment prefix, so tests do not see
    /// the ambient `TRELLIS__*` variables of the shell that runs them.
    fn load_with_env(path: Option<&Path>, env_prefix: &str) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file(path));
        }
        let config: Self = figment
            .merge(Env::prefixed(env_prefix).split("__"))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.kafka.instance.is_some() || self.kafka.instances.is_some() {
            problems.push(
                "kafka.instance and kafka.instances are gone: instances of a processor join its \
                 consumer group and take over from each other; give each its own \
                 kafka.instance_id (README, \"Running a fleet\")"
                    .to_string(),
            );
        }
        if self
            .kafka
            .instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty() || id.len() > 200)
        {
            problems.push("kafka.instance_id must be 1 to 200 characters".to_string());
        }
        if !(1_000..=300_000).contains(&self.kafka.session_timeout_ms) {
            problems.push(format!(
                "kafka.session_timeout_ms is {}; it must be between 1000 and 300000",
                self.kafka.session_timeout_ms
            ));
        }
        if self.batch.max_records == 0 {
            problems.push("batch.max_records must be at least 1".to_string());
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            problems.push("kafka.bootstrap_servers is empty".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Inconsistent(problems))
        }
    }
}

impl<S> Config<S> {
    /// The shutdown deadline as a duration.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        window_secs: u64,
    }

    fn load(path: &Path) -> Result<Config<Settings>, ConfigError> {
        Config::load_with_env(Some(path), "TRELLIS_CONFIG_TEST_NOTHING__")
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("c.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const BASE: &str = "kafka: {bootstrap_servers: '127.0.0.1:9092'}\nregistry: {url: 'http://127.0.0.1:8081'}\nstate_dir: /tmp/x\nsettings: {window_secs: 5}\n";

    #[test]
    fn loads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&write(dir.path(), BASE)).unwrap();
        assert_eq!(config.settings.window_secs, 5);
        assert_eq!(config.batch.max_records, 5_000);
        assert!(config.metrics_addr.ip().is_loopback());
        assert!(!config.kafka.transactions);
    }

    #[test]
    fn rejects_unknown_keys_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{BASE}bach: {{max_records: 3}}\n");
        let err = load(&write(dir.path(), &text)).unwrap_err();
        assert!(err.to_string().contains("bach"), "{err}");
    }

    #[test]
    fn reports_inconsistent_values_together() {
        let dir = tempfile::tempdir().unwrap();
        let text = BASE.replace(
            "bootstrap_servers: '127.0.0.1:9092'",
            "bootstrap_servers: '', instances: 2, session_timeout_ms: 10",
        );
        let err = load(&write(dir.path(), &text)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("kafka.instance and kafka.instances are gone")
                && text.contains("kafka.instance_id"),
            "{text}"
        );
        assert!(text.contains("session_timeout_ms is 10;"), "{text}");
        assert!(text.contains("bootstrap_servers is empty"), "{text}");
    }
}
