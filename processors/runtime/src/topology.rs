//! topology.yaml: every topic and every processor, and the rules that keep
//! them consistent.
//!
//! [`Topology::check`] collects *all* problems and returns them together, so
//! one run of `trellis topology check` shows everything to fix. The rules:
//! every referenced topic is declared; every topic has a producer and a
//! consumer; every topic Trellis writes has an Avro schema that parses; data
//! classified `restricted` (plaintext personal data) only reaches a
//! non-restricted topic through a processor declared `declassifies`; a schema
//! field tagged as personal data reaches a non-restricted topic only if the
//! tag says how it is protected; restricted topics keep data for at most seven
//! days; audited topics are append-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use crate::schema::{PiiTreatment, SchemaFile};

/// Seven days: the longest a topic holding plaintext personal data may keep it.
pub const MAX_RESTRICTED_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The whole topology as declared in topology.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Directory of the `.avsc` files, relative to topology.yaml.
    #[serde(default = "default_schema_dir")]
    pub schema_dir: PathBuf,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Processors (and external parties) by name, in the file's order
    /// (the local stack starts them in it).
    pub processors: IndexMap<String, ProcessorSpec>,
    /// Directory topology.yaml was read from; schema paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_schema_dir() -> PathBuf {
    PathBuf::from("schemas")
}

/// One topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// What the topic carries, for people.
    #[serde(default)]
    pub description: String,
    /// Partition count; keys spread a tenant's learners across them.
    pub partitions: i32,
    /// `retention.ms`; -1 keeps records forever.
    pub retention_ms: i64,
    /// `cleanup.policy`.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// What kind of data the topic may hold.
    pub classification: Classification,
    /// Whether the audit processor covers the topic with Merkle roots.
    #[serde(default)]
    pub audited: bool,
    /// Avro schema file (in `schema_dir`) of the record values.
    #[serde(default)]
    pub schema: Option<String>,
    /// Set instead of `schema` for raw topics written by external producers.
    #[serde(default)]
    pub format: Option<RawFormat>,
}

/// `cleanup.policy` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Delete segments past retention.
    #[default]
    Delete,
    /// Keep the latest record per key.
    Compact,
}

impl CleanupPolicy {
    /// The broker config value.
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// Data classification, from most to least sensitive.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// May hold plaintext personal data: short retention, few readers.
    Restricted,
    /// Personal data only as pseudonyms, hashes or ciphertext.
    Protected,
    /// Operational data with no personal data (anchors, metrics-like records).
    Internal,
    /// Aggregates that cannot single out a learner.
    Anonymous,
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Classification::Restricted => "restricted",
            Classification::Protected => "protected",
            Classification::Internal => "internal",
            Classification::Anonymous => "anonymous",
        })
    }
}

/// Encodings of raw (schema-less) topics.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawFormat {
    /// UTF-8 JSON documents.
    Json,
}

/// A processor, or an external party (`external: true`) that produces into or
/// consumes from the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSpec {
    /// What it does, for people.
    #[serde(default)]
    pub description: String,
    /// Not a Trellis binary: upstream producers, warehouses, operators.
    #[serde(default)]
    pub external: bool,
    /// Consumer group id (Trellis processors with inputs).
    #[serde(default)]
    pub group: Option<String>,
    /// Topics read.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Topics written.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// This processor turns restricted data into protected data (the privacy
    /// processor); only such a processor may route restricted inputs to
    /// non-restricted outputs.
    #[serde(default)]
    pub declassifies: bool,
}

/// topology.yaml could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not fit the model (the message carries line and column).
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message with location.
        message: String,
    },
    /// The topology parsed but breaks rules.
    #[error("topology has {} problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Topology {
    /// Reads and parses topology.yaml (no rule checks; see [`Topology::check`]).
    ///
    /// # Errors
    /// [`TopologyError::Read`] or [`TopologyError::Parse`].
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut topology = Self::parse(&text).map_err(|message| TopologyError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        topology.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(topology)
    }

    /// Parses topology YAML text.
    ///
    /// # Errors
    /// The parser's message, with line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Loads and checks in one step: what a processor does at start-up.
    ///
    /// # Errors
    /// As [`Topology::load`], or [`TopologyError::Invalid`] with every problem.
    pub fn load_checked(path: &Path) -> Result<Self, TopologyError> {
        let topology = Self::load(path)?;
        topology.check().map_err(TopologyError::Invalid)?;
        Ok(topology)
    }

    /// Absolute-or-relative path of a schema file named in a topic.
    pub fn schema_path(&self, file: &str) -> PathBuf {
        self.base_dir.join(&self.schema_dir).join(file)
    }

    /// The declared processor `name`, or a message saying it is not declared.
    ///
    /// # Errors
    /// When topology.yaml has no such processor.
    pub fn processor(&self, name: &str) -> Result<&ProcessorSpec, String> {
        self.processors
            .get(name)
            .ok_or_else(|| format!("processor `{name}` is not declared in topology.yaml"))
    }

    /// The declared topic `name`.
    ///
    /// # Errors
    /// When topology.yaml has no such topic.
    pub fn topic(&self, name: &str) -> Result<&TopicSpec, String> {
        self.topics
            .get(name)
            .ok_or_else(|| format!("topic `{name}` is not declared in topology.yaml"))
    }

    /// Checks every rule and returns every problem found.
    ///
    /// # Errors
    /// One message per problem, each naming the topic or processor at fault.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut producers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut consumers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut groups: BTreeMap<&str, &str> = BTreeMap::new();

        for (name, processor) in &self.processors {
            for (verb, topics, index) in [
                ("reads", &processor.inputs, &mut consumers),
                ("writes", &processor.outputs, &mut producers),
            ] {
                for topic in topics {
                    if self.topics.contains_key(topic) {
                        index.entry(topic.as_str()).or_default().push(name);
                    } else {
                        problems.push(format!(
                            "processor `{name}` {verb} topic `{topic}`, which topology.yaml does not declare"
                        ));
                    }
                }
            }
            if processor.external {
                continue;
            }
            match (&processor.group, processor.inputs.is_empty()) {
                (None, false) => problems.push(format!(
                    "processor `{name}` has inputs but no consumer `group`"
                )),
                (Some(_), true) => problems.push(format!(
                    "processor `{name}` has a consumer `group` but no inputs"
                )),
                (Some(group), false) => {
                    if let Some(other) = groups.insert(group.as_str(), name.as_str()) {
                        problems.push(format!(
                            "processors `{other}` and `{name}` share consumer group `{group}`"
                        ));
                    }
                }
                (None, true) => {}
            }
            self.check_classification_flow(name, processor, &mut problems);
        }

        for (name, topic) in &self.topics {
            // Held, never written or read: the runtime's consumer groups
            // assign its partition as the lease (pipeline::membership).
            if name == trellis_records::LEASES_TOPIC {
                if topic.partitions != 1 {
                    problems.push(format!(
                        "topic `{name}` must have 1 partition (it is each processor's lease), not {}",
                        topic.partitions
                    ));
                }
                continue;
            }
            if !producers.contains_key(name.as_str()) {
                problems.push(format!("topic `{name}` has no producer"));
            }
            if !consumers.contains_key(name.as_str()) {
                problems.push(format!("topic `{name}` has no consumer"));
            }
            self.check_topic(name, topic, &producers, &mut problems);
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn check_classification_flow(
        &self,
        name: &str,
        processor: &ProcessorSpec,
        problems: &mut Vec<String>,
    ) {
        if processor.declassifies {
            return;
        }
        let restricted_inputs: Vec<&str> = processor
            .inputs
            .iter()
            .filter(|t| {
                self.topics
                    .get(*t)
                    .is_some_and(|t| t.classification == Classification::Restricted)
            })
            .map(String::as_str)
            .collect();
        if restricted_inputs.is_empty() {
            return;
        }
        for output in &processor.outputs {
            if let Some(topic) = self.topics.get(output)
                && topic.classification != Classification::Restricted
            {
                problems.push(format!(
                    "processor `{name}` routes restricted data (from `{}`) to `{output}`, which is classified {} (only a processor marked `declassifies` may do that)",
                    restricted_inputs.join("`, `"),
                    topic.classification
                ));
            }
        }
    }

    fn check_topic(
        &self,
        name: &str,
        topic: &TopicSpec,
        producers: &BTreeMap<&str, Vec<&str>>,
        problems: &mut Vec<String>,
    ) {
        if topic.partitions < 1 {
            problems.push(format!(
                "topic `{name}` has {} partitions; it needs at least 1",
                topic.partitions
            ));
        }
        if topic.retention_ms == 0 || topic.retention_ms < -1 {
            problems.push(format!(
                "topic `{name}` has retention_ms {}; use a positive value or -1 (forever)",
                topic.retention_ms
            ));
        }
        if topic.classification == Classification::Restricted
            && !(1..=MAX_RESTRICTED_RETENTION_MS).contains(&topic.retention_ms)
        {
            problems.push(format!(
                "topic `{name}` is restricted (plaintext personal data) but keeps data for {}; the limit is 7 days ({MAX_RESTRICTED_RETENTION_MS} ms)",
                if topic.retention_ms == -1 {
                    "ever".to_string()
                } else {
                    format!("{} ms", topic.retention_ms)
                }
            ));
        }
        if topic.audited && topic.cleanup_policy != CleanupPolicy::Delete {
            problems.push(format!(
                "topic `{name}` is audited but compacted; audited topics must be append-only (cleanup_policy: delete)"
            ));
        }
        let written_by_trellis = producers.get(name).is_some_and(|names| {
            names
                .iter()
                .any(|p| self.processors.get(*p).is_some_and(|p| !p.external))
        });
        match (&topic.schema, topic.format) {
            (Some(_), Some(_)) => problems.push(format!(
                "topic `{name}` declares both `schema` and `format`; pick one"
            )),
            (None, None) => problems.push(format!("topic `{name}` has no schema")),
            (None, Some(_)) if written_by_trellis => problems.push(format!(
                "topic `{name}` is written by a Trellis processor but has no Avro schema"
            )),
            (None, Some(_)) => {}
            (Some(file), None) => match SchemaFile::load(&self.schema_path(file)) {
                Err(e) => problems.push(format!("topic `{name}`: {e}")),
                Ok(schema) if topic.classification != Classification::Restricted => {
                    let plaintext: Vec<&str> = schema
                        .pii_fields()
                        .iter()
                        .filter(|f| f.treatment == PiiTreatment::Plaintext)
                        .map(|f| f.path.as_str())
                        .collect();
                    if !plaintext.is_empty() {
                        problems.push(format!(
                            "topic `{name}` is classified {} but its schema {file} carries personal data unprotected: `{}`",
                            topic.classification,
                            plaintext.join("`, `")
                        ));
                    }
                }
                Ok(_) => {}
            },
        }
    }

    /// Every topic a processor declares, inputs first.
    pub fn topics_of(&self, processor: &ProcessorSpec) -> BTreeSet<String> {
        processor
            .inputs
            .iter()
            .chain(&processor.outputs)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml: &str) -> Topology {
        let mut t = Topology::parse(yaml).unwrap();
        t.base_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        t
    }

    #[test]
    fn the_repository_topology_passes() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../topology.yaml");
        let topology = Topology::load(&path).unwrap();
        assert_eq!(topology.check(), Ok(()));
        // Every topic name the code uses is one topology.yaml declares.
        let undeclared: Vec<&str> = trellis_records::topics::ALL
            .iter()
            .copied()
            .filter(|t| !topology.topics.contains_key(*t))
            .collect();
        assert!(
            undeclared.is_empty(),
            "not in topology.yaml: {undeclared:?}"
        );
        assert!(trellis_records::topics::ALL.len() >= 16);
    }

    #[test]
    fn reports_every_injected_mistake_at_once() {
        let t = topology(
            r#"
topics:
  ingest.raw: {partitions: 2, retention_ms: 86400000, classification: restricted, format: json}
  collected: {partitions: 0, retention_ms: -1, classification: restricted, schema: collected.avsc}
  leaky: {partitions: 1, retention_ms: 1000, classification: protected, schema: collected.avsc}
  orphan: {partitions: 1, retention_ms: 1000, classification: internal, schema: nope.avsc, audited: true, cleanup_policy: compact}
processors:
  upstream: {external: true, outputs: [ingest.raw]}
  collector: {group: g1, inputs: [ingest.raw], outputs: [collected, leaky]}
  progress: {group: g1, inputs: [protectd, collected]}
"#,
        );
        let problems = t.check().unwrap_err();
        let expect = [
            "processor `progress` reads topic `protectd`, which topology.yaml does not declare",
            "processors `collector` and `progress` share consumer group `g1`",
            "processor `collector` routes restricted data (from `ingest.raw`) to `leaky`",
            "topic `collected` has 0 partitions",
            "topic `collected` is restricted (plaintext personal data) but keeps data for ever",
            "topic `leaky` has no consumer",
            "topic `leaky` is classified protected but its schema collected.avsc carries personal data unprotected: `actor.id`, `actor.name`, `actor.email`, `ip`, `result.response`, `payload`",
            "topic `orphan` has no producer",
            "topic `orphan` has no consumer",
            "topic `orphan` is audited but compacted",
            "topic `orphan`: cannot read schema",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.contains(e)),
                "missing problem {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }
}
