//! Command-line arguments the `trellis` tool and the bench share: where
//! topology.yaml, the broker and the registry are, and the audit log's keys.

use std::path::PathBuf;

use clap::Args;
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::topology::Topology;

#[derive(Args)]
pub struct TopologyFile {
    /// Path of topology.yaml.
    #[arg(long, default_value = "topology.yaml", env = "TRELLIS_TOPOLOGY")]
    pub topology: PathBuf,
}

#[derive(Args)]
pub struct Broker {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        default_value = "127.0.0.1:9092",
        env = "TRELLIS_BOOTSTRAP_SERVERS"
    )]
    pub bootstrap_servers: String,
    /// The consumers' `fetch.min.bytes` (the durable broker needs about
    /// 1000000; ops/ sets it).
    #[arg(long, env = "TRELLIS_FETCH_MIN_BYTES")]
    pub fetch_min_bytes: Option<u32>,
    /// The consumers' `fetch.wait.max.ms`.
    #[arg(long, env = "TRELLIS_FETCH_WAIT_MAX_MS")]
    pub fetch_wait_max_ms: Option<u32>,
}

impl Broker {
    /// Client settings for this broker.
    pub fn kafka(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig::new(self.bootstrap_servers.clone());
        kafka.fetch_min_bytes = self.fetch_min_bytes;
        kafka.fetch_wait_max_ms = self.fetch_wait_max_ms;
        kafka
    }
}

#[derive(Args)]
pub struct RegistryUrl {
    /// Schema registry base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8081",
        env = "TRELLIS_REGISTRY_URL"
    )]
    pub registry_url: String,
}

/// The topology, its broker and its registry.
#[derive(Args)]
pub struct StackArgs {
    /// topology.yaml.
    #[command(flatten)]
    pub file: TopologyFile,
    /// The broker.
    #[command(flatten)]
    pub broker: Broker,
    /// The registry.
    #[command(flatten)]
    pub registry: RegistryUrl,
}

impl StackArgs {
    /// A connection for filing requests and reading their answers.
    ///
    /// # Errors
    /// topology.yaml, the broker or the registry.
    pub async fn requests(self) -> anyhow::Result<(KafkaConfig, crate::gdpr::Requests)> {
        let topology = Topology::load_checked(&self.file.topology)?;
        let kafka = self.broker.kafka();
        let requests =
            crate::gdpr::Requests::connect(&kafka, &self.registry.registry_url, &topology).await?;
        Ok((kafka, requests))
    }
}

#[derive(Args)]
pub struct AnchorKeys {
    /// The audit log's public verifier key (`name+hexid+base64`, printed by
    /// `trellis audit public-key`); give it again for every key a rotated
    /// log was signed with. Only public keys are needed.
    #[arg(
        long = "public-key",
        env = "TRELLIS_AUDIT_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub public_keys: Vec<String>,
    /// HMAC deployments only (`settings.signature: hmac`): the key id; the
    /// secret is read from TRELLIS_AUDIT_SIGNING_KEY[_FILE].
    #[arg(long)]
    pub hmac_key_id: Option<String>,
}

impl AnchorKeys {
    /// The verifier keys.
    ///
    /// # Errors
    /// A key that does not parse; an HMAC secret that is missing.
    pub fn keys(&self) -> anyhow::Result<trellis_audit::signing::Keys> {
        crate::audit::keys(&self.public_keys, self.hmac_key_id.as_deref())
    }
}
