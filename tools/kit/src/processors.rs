//! Every processor the workspace builds, as ops/ needs to know it: its
//! secrets and its path settings, read from each one's `Build` (so ops/
//! restates none of them), plus its config file and metrics address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use trellis_runtime::build::Build;
use trellis_runtime::secret::SecretSpec;
use trellis_runtime::topology::Topology;

/// One processor binary.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// Its name in topology.yaml (the binary is `trellis-<name>`).
    pub name: &'static str,
    /// The secrets it refuses to start without.
    pub secrets: &'static [SecretSpec],
    /// Its settings that are paths, with where the local stack puts them
    /// under `TRELLIS_HOME`.
    pub paths: &'static [(&'static str, &'static str)],
}

impl Binary {
    fn of<B: Build>() -> Self {
        Self {
            name: B::NAME,
            secrets: B::SECRETS,
            paths: B::PATHS,
        }
    }
}

/// Every processor binary, in pipeline order.
pub fn binaries() -> [Binary; 7] {
    [
        Binary::of::<trellis_collector::Collector>(),
        Binary::of::<trellis_privacy::Privacy>(),
        Binary::of::<trellis_progress::Progress>(),
        Binary::of::<trellis_analytics::Analytics>(),
        Binary::of::<trellis_gdpr::Gdpr>(),
        Binary::of::<trellis_audit::Audit>(),
        Binary::of::<trellis_warehouse::Warehouse>(),
    ]
}

/// The binary of processor `name`.
///
/// # Errors
/// No processor of that name is built here.
pub fn binary(name: &str) -> anyhow::Result<Binary> {
    binaries()
        .into_iter()
        .find(|b| b.name == name)
        .with_context(|| format!("no processor binary named `{name}`"))
}

/// The processors `topology` runs as Trellis binaries, in pipeline order.
///
/// # Errors
/// `topology` declares a processor (not `external`) that no binary here
/// implements: the local stack could not start it.
pub fn in_topology(topology: &Topology) -> anyhow::Result<Vec<&'static str>> {
    let missing: Vec<&str> = topology
        .processors
        .iter()
        .filter(|(name, p)| !p.external && binary(name).is_err())
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "topology.yaml declares processor(s) no trellis binary implements: {} \
             (mark a processor run by someone else `external: true`)",
            missing.join(", ")
        );
    }
    Ok(binaries()
        .iter()
        .filter(|b| topology.processors.contains_key(b.name))
        .map(|b| b.name)
        .collect())
}

/// Where a processor's config lives in `dir` (ops/config: `<name>.yaml`).
pub fn config_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.yaml"))
}

/// The `/metrics` URL of processor `name`, from its config in `dir`.
///
/// # Errors
/// The config cannot be read, or sets no fixed `metrics_addr`.
pub fn metrics_url(dir: &Path, name: &str) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Addr {
        metrics_addr: Option<SocketAddr>,
    }
    let path = config_file(dir, name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let addr = serde_yaml_ng::from_str::<Addr>(&text)
        .with_context(|| format!("{} is not a processor config", path.display()))?
        .metrics_addr
        .filter(|a| a.port() != 0)
        .with_context(|| format!("{} sets no fixed metrics_addr", path.display()))?;
    Ok(format!("http://{addr}/metrics"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn every_processor_in_topology_yaml_has_a_binary_and_every_binary_runs() {
        let topology = Topology::load(&workspace().join("topology.yaml")).unwrap();
        let running = in_topology(&topology).unwrap();
        let built: Vec<&str> = binaries().iter().map(|b| b.name).collect();
        assert_eq!(
            running, built,
            "topology.yaml and the built binaries differ"
        );
    }

    #[test]
    fn a_processor_without_a_binary_is_named() {
        let mut topology = Topology::load(&workspace().join("topology.yaml")).unwrap();
        let mut extra = topology.processors["progress"].clone();
        extra.external = false;
        topology.processors.insert("scorer".into(), extra.clone());
        let err = in_topology(&topology).unwrap_err().to_string();
        assert!(err.contains(": scorer (mark"), "{err}");
        extra.external = true;
        topology.processors.insert("scorer".into(), extra);
        assert_eq!(in_topology(&topology).unwrap().len(), binaries().len());
    }

    #[test]
    fn every_processor_has_a_config_with_its_own_metrics_port() {
        let dir = workspace().join("ops/config");
        let urls: BTreeSet<String> = binaries()
            .iter()
            .map(|b| metrics_url(&dir, b.name).unwrap())
            .collect();
        assert_eq!(
            urls.len(),
            binaries().len(),
            "two processors share a port: {urls:?}"
        );
    }

    #[test]
    fn a_config_without_a_fixed_metrics_port_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            config_file(dir.path(), "audit"),
            "metrics_addr: 127.0.0.1:0\n",
        )
        .unwrap();
        let err = metrics_url(dir.path(), "audit").unwrap_err().to_string();
        assert!(err.contains("sets no fixed metrics_addr"), "{err}");
        std::fs::write(
            config_file(dir.path(), "audit"),
            "metrics_addr: 127.0.0.1:9200\n",
        )
        .unwrap();
        assert_eq!(
            metrics_url(dir.path(), "audit").unwrap(),
            "http://127.0.0.1:9200/metrics"
        );
    }
}
