//! The processors the local stack runs, as ops/ needs to know them: which
//! ones (topology.yaml's processors that are not `external`), what each
//! needs (asked of its binary, `trellis-<name> --describe`), its config
//! file and metrics address. Nothing here lists processors: adding one is
//! its crate, its topology entry and its config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use trellis_runtime::build::Description;
use trellis_runtime::topology::Topology;

/// Where the processor binaries are: `TRELLIS_BIN_DIR`, else beside the
/// running executable (cargo and the local stack put them together).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRELLIS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// The processors `topology` runs as Trellis binaries, in the file's
/// order (the order the local stack starts them in).
pub fn in_topology(topology: &Topology) -> Vec<&str> {
    topology
        .processors
        .iter()
        .filter(|(_, p)| !p.external)
        .map(|(name, _)| name.as_str())
        .collect()
}

/// What processor `name` needs, from `trellis-<name> --describe` in `bin_dir`.
///
/// # Errors
/// No such binary (with what to do about it), the binary fails, or it
/// describes another processor.
pub fn describe(bin_dir: &Path, name: &str) -> anyhow::Result<Description> {
    let binary = bin_dir.join(format!("trellis-{name}"));
    if !binary.exists() {
        bail!(
            "processor `{name}` has no binary: {} does not exist (build it, or mark a \
             processor run by someone else `external: true` in topology.yaml)",
            binary.display()
        );
    }
    let output = Command::new(&binary)
        .arg("--describe")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} --describe failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let description: Description = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} --describe printed no description", binary.display()))?;
    if description.name != name {
        bail!(
            "{} describes processor `{}`, not `{name}`",
            binary.display(),
            description.name
        );
    }
    Ok(description)
}

/// [`describe`] for every processor [`in_topology`].
///
/// # Errors
/// As [`describe`], for the first processor that fails.
pub fn describe_all(bin_dir: &Path, topology: &Topology) -> anyhow::Result<Vec<Description>> {
    in_topology(topology)
        .into_iter()
        .map(|name| describe(bin_dir, name))
        .collect()
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn topology() -> Topology {
        Topology::load(&workspace().join("topology.yaml")).unwrap()
    }

    #[test]
    fn external_parties_are_not_processors_to_run() {
        let mut topology = topology();
        let running: Vec<String> = in_topology(&topology)
            .into_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(
            running.first().map(String::as_str),
            Some("collector"),
            "{running:?}"
        );
        assert!(!running.iter().any(|p| p == "upstream"), "{running:?}");
        let mut scorer = topology.processors["progress"].clone();
        scorer.external = false;
        topology.processors.insert("scorer".into(), scorer.clone());
        assert_eq!(in_topology(&topology).last(), Some(&"scorer"));
        scorer.external = true;
        topology.processors.insert("scorer".into(), scorer);
        assert_eq!(in_topology(&topology), running);
    }

    /// A stand-in binary: a shell script printing `stdout`, exiting `code`.
    fn fake_binary(dir: &Path, name: &str, stdout: &str, code: i32) {
        let path = dir.join(format!("trellis-{name}"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\necho oops >&2\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_processor_describes_itself_or_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let scorer = r#"{"name":"scorer","secrets":[{"env":"SCORER_KEY","hex32":true,"purpose":"p"}],"paths":[["cache_dir","state/scorer-cache"]],"owns":"its cache"}"#;
        fake_binary(dir.path(), "scorer", scorer, 0);
        let description = describe(dir.path(), "scorer").unwrap();
        assert_eq!(description.secrets[0].env, "SCORER_KEY");
        assert_eq!(description.paths[0].1, "state/scorer-cache");

        let err = describe(dir.path(), "grader").unwrap_err().to_string();
        assert!(err.contains("processor `grader` has no binary"), "{err}");
        assert!(err.contains("external: true"), "{err}");

        fake_binary(dir.path(), "broken", "", 2);
        let err = describe(dir.path(), "broken").unwrap_err().to_string();
        assert!(
            err.contains("--describe failed") && err.contains("oops"),
            "{err}"
        );

        fake_binary(dir.path(), "impostor", scorer, 0);
        let err = describe(dir.path(), "impostor").unwrap_err().to_string();
        assert!(
            err.contains("describes processor `scorer`, not `impostor`"),
            "{err}"
        );
    }

    #[test]
    fn every_processor_has_a_config_with_its_own_metrics_port() {
        let dir = workspace().join("ops/config");
        let topology = topology();
        let names = in_topology(&topology);
        let urls: BTreeSet<String> = names
            .iter()
            .map(|name| metrics_url(&dir, name).unwrap())
            .collect();
        assert_eq!(
            urls.len(),
            names.len(),
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
