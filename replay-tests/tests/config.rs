//! `trellis config`, as ops/ uses it, against the real binaries: what the
//! local stack learns of each processor (that it exists, its secrets, its
//! paths) is what the processor itself then asks for.

use std::collections::BTreeSet;
use std::process::Command;

use trellis_replay_tests::{binary, repo_root};
use trellis_runtime::topology::Topology;

/// `trellis config ARGS` from the repository root, its lines.
fn config(args: &[&str]) -> Vec<String> {
    let output = Command::new(binary("trellis"))
        .arg("config")
        .args(args)
        .current_dir(repo_root())
        .env_remove("TRELLIS_TOPOLOGY")
        .env_remove("TRELLIS_BIN_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "trellis config {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `trellis-<processor>` as ops/lib.sh starts it (its config, its paths
/// under `home`), with nothing else in its environment (no secrets).
fn as_the_stack_starts(processor: &str, home: &std::path::Path) -> Command {
    let mut command = Command::new(binary(&format!("trellis-{processor}")));
    command
        .arg("--config")
        .arg(repo_root().join(format!("ops/config/{processor}.yaml")))
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for line in config(&["paths", processor]) {
        let (key, path) = line.split_once('=').unwrap();
        command.env(key, home.join(path));
    }
    command
}

#[test]
fn every_processor_the_stack_starts_asks_for_exactly_what_trellis_config_says() {
    let topology = Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let processors = config(&["processors"]);
    let declared: Vec<&str> = topology
        .processors
        .iter()
        .filter(|(_, p)| !p.external)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(processors, declared, "in topology.yaml's order");

    let state = tempfile::tempdir().unwrap();
    let mut refused = Vec::new();
    for processor in &processors {
        let secrets: BTreeSet<String> = config(&["secrets", processor]).into_iter().collect();
        if secrets.is_empty() {
            // Nothing to refuse: it would start and look for its broker.
            continue;
        }
        // Started as ops/lib.sh starts it (its config, its paths under
        // TRELLIS_HOME) but without a single secret: it must refuse,
        // naming every secret `trellis config secrets` named, and no other.
        let output = as_the_stack_starts(processor, state.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{processor}: {stderr}");
        let asked: BTreeSet<String> = stderr
            .match_indices("missing secret ")
            .filter_map(|(at, m)| stderr[at + m.len()..].split_whitespace().next())
            .map(str::to_string)
            .collect();
        assert_eq!(asked, secrets, "{processor}: {stderr}");
        refused.push(processor.as_str());
    }
    // Those that hold keys, credentials or signing material.
    assert_eq!(refused, ["collector", "privacy", "audit", "warehouse"]);
}

#[test]
fn a_processor_without_a_binary_is_named_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let topology = std::fs::read_to_string(repo_root().join("topology.yaml")).unwrap();
    let topology = topology.replace(
        "\n  collector:\n",
        "\n  scorer:\n    group: trellis-scorer\n    inputs: [protected]\n    outputs: [dlq]\n  collector:\n",
    );
    let file = dir.path().join("topology.yaml");
    std::fs::write(&file, topology).unwrap();
    let output = Command::new(binary("trellis"))
        .args(["config", "processors", "--topology"])
        .arg(&file)
        .current_dir(repo_root())
        .env_remove("TRELLIS_BIN_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("processor `scorer` has no binary"),
        "{stderr}"
    );
}

#[test]
fn every_processor_names_the_state_one_owner_holds_and_refuses_static_instances() {
    // Instances of a processor join its consumer group; the one that holds
    // the lease owns the state (pipeline::membership). Each processor says
    // which of its state spans partitions (docs/architecture.md, "Running
    // a fleet"), and the static `kafka.instances` it replaced is refused
    // with the way forward rather than silently ignored.
    let bin_dir = binary("trellis").parent().unwrap().to_path_buf();
    let state = tempfile::tempdir().unwrap();
    for processor in config(&["processors"]) {
        let owns = trellis_kit::processors::describe(&bin_dir, &processor)
            .unwrap()
            .owns;
        assert!(owns.len() > 10, "{processor}: {owns:?}");

        let output = as_the_stack_starts(&processor, state.path())
            .env("TRELLIS__KAFKA__INSTANCES", "3")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{processor}: {stderr}");
        assert!(
            stderr.contains("kafka.instance and kafka.instances are gone")
                && stderr.contains("kafka.instance_id"),
            "{processor}: {stderr}"
        );
    }
}
