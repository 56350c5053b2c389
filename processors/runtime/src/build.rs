//! How a processor is made: one constructor, [`Build::build`], that the
//! binary, the bench, the offline runner and the tests all call (Vector's
//! `SinkConfig::build`). What it needs from its surroundings it asks of the
//! [`Context`]: encoders for its declared outputs, its secrets, metrics, a
//! read handle on its store, side services. A live context is backed by the
//! [`Runtime`]; an offline one by schema files and an in-memory registry, so
//! a test builds exactly what the binary runs.

use std::future::Future;
use std::sync::Mutex;

use apache_avro::Schema;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::config::{Config, KafkaConfig};
use crate::error::{Exit, Failure, StartError};
use crate::lifecycle::Shutdown;
use crate::pipeline::Runtime;
use crate::processor::Processor;
use crate::schema::{AvroDecoder, AvroEncoder, SchemaFile};
use crate::secret::{SecretFormat, SecretSpec, Secrets};
use crate::state::StateStore;
use crate::ticker::Ticker;
use crate::topology::{ProcessorSpec, Topology};

/// A processor's `settings` section.
pub trait Settings: DeserializeOwned + Clone + Send + Sync + 'static {
    /// Every problem with these settings, at once; checked when the
    /// configuration is loaded, before anything starts.
    ///
    /// # Errors
    /// One line per problem.
    fn check(&self) -> Result<(), Vec<String>> {
        Ok(())
    }
}

/// What a processor binary says of itself (`trellis-<name> --describe`,
/// as JSON): how the local stack and `trellis config` learn a processor's
/// secrets and paths from the binary itself, so no tool keeps a list of
/// processors to update when one is added.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    /// Its name in topology.yaml.
    pub name: String,
    /// The secrets it refuses to start without.
    pub secrets: Vec<DescribedSecret>,
    /// Its settings that are paths, with where the local stack puts them
    /// under `TRELLIS_HOME` ([`Build::PATHS`]).
    pub paths: Vec<(String, String)>,
    /// The state that spans its input partitions, which is why one
    /// instance of its consumer group owns all of it at a time.
    pub owns: String,
}

/// A secret in a [`Description`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescribedSecret {
    /// Its environment variable.
    pub env: String,
    /// 32 random bytes in hex (the local stack generates these), or not.
    pub hex32: bool,
    /// What it protects.
    pub purpose: String,
}

impl Description {
    /// The description of processor `B`.
    pub fn of<B: Build>() -> Self {
        Self {
            name: B::NAME.to_string(),
            secrets: B::SECRETS
                .iter()
                .map(|s| DescribedSecret {
                    env: s.env.to_string(),
                    hex32: s.format == SecretFormat::Hex32,
                    purpose: s.purpose.to_string(),
                })
                .collect(),
            paths: B::PATHS
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            owns: B::OWNS.to_string(),
        }
    }
}

/// How a processor is made (see the module docs).
pub trait Build: 'static {
    /// Its name in topology.yaml.
    const NAME: &'static str;
    /// The secrets it refuses to start without.
    const SECRETS: &'static [SecretSpec] = &[];
    /// Its state that spans input partitions: one instance of the
    /// consumer group owns it at a time, the others stand by (see
    /// `pipeline::membership`; docs/architecture.md, "Running a fleet").
    const OWNS: &'static str;
    /// Its settings that are paths, each with where the local stack puts
    /// it under `TRELLIS_HOME` (`state_dir` is every processor's:
    /// `state/<name>`). `trellis config paths` prints them for ops/.
    const PATHS: &'static [(&'static str, &'static str)] = &[];
    /// How it lays out its state. Raise it when a new build reads the
    /// store differently: a store written in another format is refused at
    /// start with the way out (`--rebuild`), never misread.
    const STATE_FORMAT: u32 = 1;
    /// Its `settings` section.
    type Settings: Settings;
    /// What it builds.
    type Processor: Processor;

    /// Builds the processor.
    ///
    /// # Errors
    /// [`StartError`] naming what is wrong or unavailable.
    fn build(
        ctx: &mut Context<'_, Self::Settings>,
    ) -> impl Future<Output = Result<Self::Processor, StartError>> + Send;
}

/// What a processor is built from.
pub struct Context<'a, S> {
    /// The processor's name.
    pub name: &'static str,
    /// Its settings (already checked).
    pub settings: &'a S,
    /// Its secrets.
    pub secrets: &'a Secrets,
    /// The whole topology.
    pub topology: &'a Topology,
    /// Its entry in the topology.
    pub spec: &'a ProcessorSpec,
    env: Env<'a>,
}

enum Env<'a> {
    Live {
        runtime: &'a Runtime,
        kafka: &'a KafkaConfig,
        /// Told to stop when the processor stops.
        stop: watch::Receiver<bool>,
    },
    Offline {
        schemas: &'a LocalSchemas,
        store: Option<&'a StateStore>,
    },
}

impl<'a, S> Context<'a, S> {
    /// The encoder of declared output `topic` (its schema registered with
    /// the registry, live).
    ///
    /// # Errors
    /// [`StartError`] if the topic is not an output, has no schema, or the
    /// registry refuses it.
    pub async fn encoder(&self, topic: &str) -> Result<AvroEncoder, StartError> {
        if !self.spec.outputs.iter().any(|t| t == topic) {
            return Err(StartError::Misconfigured(format!(
                "processor `{}` writes `{topic}`, which topology.yaml does not list among its outputs",
                self.name
            )));
        }
        match &self.env {
            Env::Live { runtime, .. } => runtime.encoder(topic).await,
            Env::Offline { schemas, .. } => schemas.encoder(self.topology, topic),
        }
    }

    /// The decoder inputs are read with.
    pub fn decoder(&self) -> AvroDecoder {
        match &self.env {
            Env::Live { runtime, .. } => runtime.decoder.clone(),
            Env::Offline { schemas, .. } => schemas.decoder.clone(),
        }
    }

    /// Registers one of the processor's own metrics (offline: kept
    /// unregistered).
    ///
    /// # Errors
    /// [`StartError::Misconfigured`] for a metric registered twice.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), StartError> {
        match &self.env {
            Env::Live { runtime, .. } => runtime
                .metrics
                .register(collector)
                .map_err(|e| StartError::Misconfigured(e.to_string())),
            Env::Offline { .. } => Ok(()),
        }
    }

    /// The processor's state store, for read paths served beside the loop
    /// (offline, the one the build was given, if any).
    pub fn store(&self) -> Option<&StateStore> {
        match &self.env {
            Env::Live { runtime, .. } => Some(runtime.store()),
            Env::Offline { store, .. } => *store,
        }
    }

    /// Empties the processor's state store (data and input positions), so
    /// the inputs are replayed from the start: for a sink whose store holds
    /// less than the local positions say (a restored database).
    ///
    /// # Errors
    /// [`StartError::State`] if the store cannot be written.
    pub fn discard_state(&mut self) -> Result<(), StartError> {
        match self.store() {
            Some(store) => Ok(store.reset()?),
            None => Ok(()),
        }
    }

    /// Whether the processor is being built to run against a broker (side
    /// services such as HTTP endpoints start only then).
    pub fn live(&self) -> bool {
        matches!(self.env, Env::Live { .. })
    }

    /// The broker, for side paths that produce or read on their own (HTTP
    /// ingest, the decrypt gate's audit events); `None` offline.
    pub fn kafka(&self) -> Option<&KafkaConfig> {
        match &self.env {
            Env::Live { kafka, .. } => Some(kafka),
            Env::Offline { .. } => None,
        }
    }

    /// Whether this instance holds its group's lease (owns the state), for
    /// side services that must answer only from the owner; `None` offline.
    pub fn lease(&self) -> Option<crate::pipeline::membership::Lease> {
        match &self.env {
            Env::Live { runtime, .. } => Some(runtime.lease()),
            Env::Offline { .. } => None,
        }
    }

    /// The registry's URL, live.
    pub fn registry(
        &self,
    ) -> Option<&schema_registry_converter::async_impl::schema_registry::SrSettings> {
        match &self.env {
            Env::Live { runtime, .. } => Some(&runtime.registry),
            Env::Offline { .. } => None,
        }
    }

    /// A [`Ticker`] on `topic` (live only: offline, the records of the
    /// clock are part of the input).
    ///
    /// # Errors
    /// [`StartError`] if the topic is not both an input and an output.
    pub fn ticker(&self, topic: &str) -> Result<Option<Ticker>, StartError> {
        match &self.env {
            Env::Live { runtime, .. } => runtime.ticker(topic).map(Some),
            Env::Offline { .. } => Ok(None),
        }
    }

    /// Runs a side service (an HTTP endpoint) beside the loop until the
    /// processor stops; offline it is not started.
    pub fn serve<F>(&self, service: impl FnOnce(Stopping) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Env::Live { stop, .. } = &self.env {
            tokio::spawn(service(Stopping(stop.clone())));
        }
    }
}

/// Resolves when the processor stops: a side service's graceful shutdown.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Waits until the processor stops.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Starts the processor `B` with `config` and `secrets` and runs it until
/// `shutdown` resolves: the whole life of a processor binary.
///
/// # Errors
/// [`Failure`] at start or while running.
pub async fn run<B: Build>(
    config: Config<B::Settings>,
    secrets: Secrets,
    shutdown: Shutdown<'_>,
) -> Result<Exit, Failure> {
    if let Err(problems) = config.settings.check() {
        return Err(StartError::Misconfigured(problems.join("; ")).into());
    }
    let runtime = Runtime::start(B::NAME, B::STATE_FORMAT, &config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let processor = {
        let mut ctx = Context {
            name: B::NAME,
            settings: &config.settings,
            secrets: &secrets,
            topology: &runtime.topology,
            spec: &runtime.spec,
            env: Env::Live {
                runtime: &runtime,
                kafka: &config.kafka,
                stop: stop_rx,
            },
        };
        B::build(&mut ctx).await?
    };
    let shutdown = Box::pin(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    Ok(runtime.run(processor, shutdown).await?)
}

/// Schemas of a topology's topics under ids of their own, for building
/// and running processors with no registry: every encoder it hands out
/// is known to its decoder.
pub struct LocalSchemas {
    decoder: AvroDecoder,
    ids: Mutex<Vec<(String, u32)>>,
}

impl Default for LocalSchemas {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalSchemas {
    /// No schemas yet.
    pub fn new() -> Self {
        let registry =
            crate::schema::registry_settings("http://127.0.0.1:9").expect("a constant URL parses");
        Self {
            decoder: AvroDecoder::new(registry),
            ids: Mutex::new(Vec::new()),
        }
    }

    /// The decoder that knows every schema handed out (and those added).
    pub fn decoder(&self) -> &AvroDecoder {
        &self.decoder
    }

    /// The id of `topic`'s schema, registering it on first use.
    ///
    /// # Errors
    /// [`StartError`] if the topic has no schema or it does not parse.
    pub fn id(&self, topology: &Topology, topic: &str) -> Result<(u32, Schema), StartError> {
        let file = topology
            .topic(topic)
            .map_err(StartError::Misconfigured)?
            .schema
            .clone()
            .ok_or_else(|| {
                StartError::Misconfigured(format!("topic `{topic}` has no Avro schema"))
            })?;
        let schema = SchemaFile::load(&topology.schema_path(&file))?.schema;
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let id = match ids.iter().find(|(t, _)| t == topic) {
            Some((_, id)) => *id,
            None => {
                let id = 1 + ids.len() as u32;
                ids.push((topic.to_string(), id));
                self.decoder
                    .insert(id, schema.clone())
                    .map_err(|e| StartError::Misconfigured(e.to_string()))?;
                id
            }
        };
        Ok((id, schema))
    }

    /// An encoder for `topic` under its local id.
    ///
    /// # Errors
    /// As [`LocalSchemas::id`].
    pub fn encoder(&self, topology: &Topology, topic: &str) -> Result<AvroEncoder, StartError> {
        let (id, schema) = self.id(topology, topic)?;
        AvroEncoder::with_id(topic.to_string(), id, schema)
            .map_err(|e| StartError::Misconfigured(e.to_string()))
    }
}

/// Builds processor `B` with no broker and no registry: encoders from
/// `schemas`, read paths on `store` (if given), no side services. Tests and
/// benches build processors this way, with the same constructor the binary
/// uses.
///
/// # Errors
/// [`StartError`] as [`Build::build`].
pub async fn build_offline<B: Build>(
    topology: &Topology,
    settings: &B::Settings,
    secrets: &Secrets,
    schemas: &LocalSchemas,
    store: Option<&StateStore>,
) -> Result<B::Processor, StartError> {
    if let Err(problems) = settings.check() {
        return Err(StartError::Misconfigured(problems.join("; ")));
    }
    let spec = topology
        .processor(B::NAME)
        .map_err(StartError::Misconfigured)?;
    let mut ctx = Context {
        name: B::NAME,
        settings,
        secrets,
        topology,
        spec,
        env: Env::Offline { schemas, store },
    };
    B::build(&mut ctx).await
}
