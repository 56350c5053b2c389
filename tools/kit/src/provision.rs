//! `trellis topology apply`: make the broker and the registry match topology.yaml.

use std::collections::BTreeMap;

use schema_registry_converter::async_impl::schema_registry::post_schema;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::{TopicOutcome, apply_topology};
use trellis_runtime::schema::{SchemaFile, registry_settings};
use trellis_runtime::topology::Topology;

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Per topic.
    pub topics: BTreeMap<String, TopicOutcome>,
    /// Per subject: the registered schema id.
    pub schemas: BTreeMap<String, u32>,
}

/// Creates missing topics and registers every topic's value schema under
/// `<topic>-value` with BACKWARD compatibility. Idempotent.
///
/// # Errors
/// The first broker or registry failure, as text naming the topic or subject.
pub async fn apply(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &Topology,
    replication: i32,
) -> Result<Applied, String> {
    let topics = apply_topology(kafka, topology, replication)
        .await
        .map_err(|e| e.to_string())?;
    let registry = registry_settings(registry_url).map_err(|e| e.to_string())?;
    let http = reqwest::Client::new();
    let mut schemas = BTreeMap::new();
    for (topic, spec) in &topology.topics {
        let Some(file) = &spec.schema else { continue };
        let schema = SchemaFile::load(&topology.schema_path(file)).map_err(|e| e.to_string())?;
        let subject = format!("{topic}-value");
        let url = format!("{}/config/{subject}", registry_url.trim_end_matches('/'));
        let response = http
            .put(&url)
            .json(&serde_json::json!({"compatibility": "BACKWARD"}))
            .send()
            .await
            .map_err(|e| format!("setting compatibility of {subject}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "setting compatibility of {subject}: HTTP {}",
                response.status()
            ));
        }
        let registered = post_schema(
            &registry,
            subject.clone(),
            SuppliedSchema::new(None, SchemaType::Avro, schema.text.clone()),
        )
        .await
        .map_err(|e| format!("registering {subject}: {e}"))?;
        schemas.insert(subject, registered.id);
    }
    Ok(Applied { topics, schemas })
}
