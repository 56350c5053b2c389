//! Trellis's checkpoints and cosignatures against an implementation no one
//! here wrote the cryptography of: Python's `cryptography` (PyPI) behind a
//! signed-note / tlog-checkpoint / tlog-cosignature reader and signer
//! written from the C2SP specifications (ops/note-verifier/note.py). Both
//! directions: what Trellis signs verifies there, what it signs verifies
//! here, and a changed byte fails in both.

use std::io::Write;
use std::process::{Command, Stdio};

use trellis_audit::checkpoint::{AnchorLog, Checkpoint};
use trellis_audit::signing::{CosignatureVerifier, Cosigner, Keys, NoteKey, Signer};
use trellis_records::Anchor;
use trellis_replay_tests::repo_root;
use trellis_runtime::secret::Secret;

struct NotePy {
    python: String,
}

impl NotePy {
    fn install() -> Self {
        let install = Command::new(repo_root().join("ops/install-note-verifier"))
            .output()
            .expect("ops/install-note-verifier runs");
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        Self {
            python: String::from_utf8(install.stdout)
                .unwrap()
                .trim()
                .to_string(),
        }
    }

    /// Runs note.py with `args` and `stdin`: the JSON it prints, or its error.
    fn run(&self, args: &[&str], stdin: &str) -> Result<serde_json::Value, String> {
        let mut child = Command::new(&self.python)
            .arg(repo_root().join("ops/note-verifier/note.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

fn anchor(sequence: i64, partition: i32) -> Anchor {
    Anchor {
        sequence,
        topic: "protected".into(),
        partition,
        first_offset: sequence * 10,
        last_offset: sequence * 10 + 9,
        tree_size: sequence * 10 + 10,
        root: format!("{:064x}", sequence * 7 + i64::from(partition)),
        previous_hash: "00".repeat(32),
        request_ids: Vec::new(),
        anchored_at: 1_700_000_000_000 + sequence,
        key_id: String::new(),
        signature: String::new(),
        checkpoint: String::new(),
    }
}

/// Checkpoints of an anchor log signed by Trellis: (log key, notes).
fn trellis_checkpoints() -> (NoteKey, Vec<String>) {
    let seed = Secret::from_bytes((0..32).collect());
    let signer = Signer::ed25519("audit.example.org/trellis", &seed).unwrap();
    let mut log = AnchorLog::new(
        "audit.example.org/trellis",
        signer.note_key().cloned(),
        None,
    );
    let mut notes = Vec::new();
    for sequence in 0..5 {
        for partition in 0..3 {
            let mut a = anchor(sequence, partition);
            signer.sign(&mut a);
            notes.push(log.append(&a).unwrap());
        }
    }
    (signer.note_key().unwrap().clone(), notes)
}

fn flip_root_bit(note: &str) -> String {
    let root = note.lines().nth(2).unwrap();
    let mut raw = base64_decode(root);
    raw[0] ^= 1;
    note.replacen(root, &base64_encode(&raw), 1)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn trellis_checkpoints_and_cosignatures_verify_with_an_independent_implementation() {
    let py = NotePy::install();
    let (key, notes) = trellis_checkpoints();
    let vkey = key.vkey();
    let mut keys = Keys::default();
    keys.trust_vkey(&vkey).unwrap();
    for note in &notes {
        let ours = Checkpoint::parse(&keys.open_note(note.as_bytes()).unwrap()).unwrap();
        let theirs = py.run(&["verify", &vkey], note).unwrap();
        assert_eq!(theirs["origin"], ours.origin);
        assert_eq!(theirs["size"], ours.size);
        assert_eq!(theirs["root"], base64_encode(&ours.root));
    }
    assert_eq!(notes.len(), 15);
    // One changed bit of the root: refused there too.
    let forged = flip_root_bit(&notes[7]);
    let refusal = py.run(&["verify", &vkey], &forged).unwrap_err();
    assert!(
        refusal.contains("does not verify") && !refusal.contains("Traceback"),
        "refused for its signature, not by a crash: {refusal}"
    );

    // A Trellis witness's cosignature.
    let mut witness_seed = vec![0x42; 32];
    witness_seed[0] = 1;
    let witness =
        Cosigner::new("witness.example.org/w1", &Secret::from_bytes(witness_seed)).unwrap();
    let cosigned = witness.cosign(notes[14].as_bytes()).unwrap();
    let theirs = py
        .run(&["verify-cosigned", &vkey, &witness.vkey()], &cosigned)
        .unwrap();
    assert_eq!(theirs["size"], 15);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(theirs["time"].as_u64().unwrap().abs_diff(now) < 60);
    // The witness's signature moved onto another checkpoint: refused.
    let moved = format!(
        "{}{}",
        notes[13],
        cosigned.lines().last().unwrap().to_string() + "\n"
    );
    let refusal = py
        .run(&["verify-cosigned", &vkey, &witness.vkey()], &moved)
        .unwrap_err();
    assert!(
        refusal.contains("the cosignature by") && refusal.contains("does not verify"),
        "refused for the cosignature, not by a crash: {refusal}"
    );
}

#[test]
fn notes_signed_by_the_independent_implementation_are_accepted_by_trellis() {
    let py = NotePy::install();
    let root = base64_encode(&[7u8; 32]);
    let signed = py
        .run(
            &[
                "sign",
                "log.example.net/other",
                "log.example.net/other",
                "42",
                &root,
            ],
            "",
        )
        .unwrap();
    let (vkey, note) = (
        signed["vkey"].as_str().unwrap(),
        signed["note"].as_str().unwrap(),
    );
    let mut keys = Keys::default();
    keys.trust_vkey(vkey).unwrap();
    let checkpoint = Checkpoint::parse(&keys.open_note(note.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        (checkpoint.origin.as_str(), checkpoint.size, checkpoint.root),
        ("log.example.net/other", 42, [7u8; 32])
    );
    assert!(keys.open_note(flip_root_bit(note).as_bytes()).is_err());

    // Their witness cosigning a Trellis checkpoint: Trellis's verifier
    // accepts it and reads its time.
    let (key, notes) = trellis_checkpoints();
    let cosigned = py
        .run(
            &["cosign", "witness.example.net/py", "1700000123"],
            &notes[4],
        )
        .unwrap();
    let mut log_keys = Keys::default();
    log_keys.trust_vkey(&key.vkey()).unwrap();
    let verifier = CosignatureVerifier::new(cosigned["vkey"].as_str().unwrap()).unwrap();
    let note = cosigned["note"].as_str().unwrap();
    let (body, time) = verifier.open(note.as_bytes(), &log_keys).unwrap();
    assert_eq!(time, 1_700_000_123);
    assert_eq!(Checkpoint::parse(&body).unwrap().size, 5);
    assert!(
        verifier
            .open(flip_root_bit(note).as_bytes(), &log_keys)
            .is_err()
    );
}
