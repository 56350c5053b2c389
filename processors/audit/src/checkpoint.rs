//! The anchor log: one public transparency log over every anchor.
//!
//! Each partition's anchors form a chain, but a verifier outside the
//! operator needs one thing to hold on to: a *checkpoint* of a single log
//! that grows append-only and covers them all. The anchor log is that log:
//! its leaves are the anchors in the order they stand on `audit.anchors`
//! (one partition, one writer), leaf `i` = `SHA-256(0x00 ‖ anchor_hash)`,
//! hashed as an RFC 6962 tree. Every anchor carries the signed checkpoint
//! of the log once it is in it, in the C2SP `tlog-checkpoint` format:
//!
//! ```text
//! <origin>
//! <number of anchors>
//! <base64 root>
//!
//! — <key name> <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The log is a function of `audit.anchors`, not of the processor's store:
//! at start the processor reads the topic and appends every anchor in it,
//! then appends each new anchor as it writes it. An anchor a replay makes
//! again (same chain position, same bytes) is not appended twice. Because
//! outputs and positions commit together, a batch that is abandoned takes
//! its anchors out of the log again ([`AnchorLog::rollback`]); only
//! committed anchors are served.
//!
//! The latest committed checkpoint is served read-only (`GET /checkpoint`)
//! with consistency proofs between any two sizes (`GET /proof/consistency`)
//! for witnesses, and written to a file another system can copy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use trellis_records::Anchor;

use crate::canonical::anchor_hash;
use crate::merkle::{Frontier, Hash, consistency_proof, empty_root, leaf_hash};
use crate::signing::{KeyError, NoteKey};

/// The leaf of an anchor in the anchor log.
pub fn anchor_leaf(anchor: &Anchor) -> Hash {
    leaf_hash(&anchor_hash(anchor))
}

/// A checkpoint's body (`origin`, `size`, base64 `root`).
pub fn checkpoint_text(origin: &str, size: u64, root: Hash) -> Result<Vec<u8>, KeyError> {
    tlog_tiles::Checkpoint::new(origin, size, tlog_tiles::Hash(root), "")
        .map(|c| c.to_bytes())
        .map_err(|e| KeyError::from(format!("checkpoint for origin {origin:?}: {e}")))
}

/// A checkpoint read back from a note body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Anchors in the log.
    pub size: u64,
    /// The log's root.
    pub root: Hash,
}

impl Checkpoint {
    /// Parses a checkpoint body.
    ///
    /// # Errors
    /// Not a C2SP tlog-checkpoint.
    pub fn parse(body: &[u8]) -> Result<Self, KeyError> {
        let c =
            tlog_tiles::Checkpoint::from_bytes(body).map_err(|e| KeyError::from(format!("{e}")))?;
        Ok(Self {
            origin: c.origin().to_string(),
            size: c.size(),
            root: c.hash().0,
        })
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} size {} root {}",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }
}

/// What the HTTP endpoint and the checkpoint file show: committed only.
#[derive(Default)]
struct Published {
    leaves: Vec<Hash>,
    note: Option<String>,
}

/// A handle on what is published (the HTTP server's state).
#[derive(Clone, Default)]
pub struct Shared(Arc<RwLock<Published>>);

impl Shared {
    /// The latest committed checkpoint note.
    pub fn note(&self) -> Option<String> {
        self.0.read().expect("not poisoned").note.clone()
    }

    /// A consistency proof between two committed sizes.
    ///
    /// # Errors
    /// A size beyond the log, or `old > new`.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, String> {
        let published = self.0.read().expect("not poisoned");
        let size = published.leaves.len() as u64;
        if old > new || new > size {
            return Err(format!(
                "no proof from {old} to {new}: the log has {size} anchors"
            ));
        }
        if old == 0 || old == new {
            return Ok(Vec::new());
        }
        Ok(consistency_proof(
            &published.leaves[..new as usize],
            old as usize,
        ))
    }
}

/// The anchor log (see the module docs).
pub struct AnchorLog {
    origin: String,
    key: Option<NoteKey>,
    leaves: Vec<Hash>,
    frontier: Frontier,
    /// Position, leaf and signed checkpoint of every anchor, by chain
    /// position.
    index: HashMap<(String, i32, i64), (u64, Hash, String)>,
    committed: usize,
    shared: Shared,
    file: Option<PathBuf>,
}

impl AnchorLog {
    /// An empty log named `origin`, signed by `key` (no checkpoints under
    /// HMAC), published to `file` when given.
    pub fn new(origin: &str, key: Option<NoteKey>, file: Option<PathBuf>) -> Self {
        Self {
            origin: origin.to_string(),
            key,
            leaves: Vec::new(),
            frontier: Frontier::default(),
            index: HashMap::new(),
            committed: 0,
            shared: Shared::default(),
            file,
        }
    }

    /// What is published.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Anchors in the log (committed or not).
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The signed checkpoint at `size` with `root`.
    fn note(&self, size: u64, root: Hash) -> Result<String, KeyError> {
        match &self.key {
            Some(key) => key.sign_note(&checkpoint_text(&self.origin, size, root)?),
            None => Ok(String::new()),
        }
    }

    /// Appends `anchor` unless the log already holds it; returns the signed
    /// checkpoint of the log with the anchor in it (empty under HMAC).
    ///
    /// # Errors
    /// The same chain position already holds a different anchor (the
    /// recorded anchors and the ones made now disagree), or signing failed.
    pub fn append(&mut self, anchor: &Anchor) -> Result<String, KeyError> {
        if let Some(note) = self.recorded(anchor)? {
            return Ok(note);
        }
        let leaf = anchor_leaf(anchor);
        self.leaves.push(leaf);
        self.frontier.push(leaf);
        let note = self.note(self.size(), self.frontier.root())?;
        self.index.insert(
            (anchor.topic.clone(), anchor.partition, anchor.sequence),
            (self.size() - 1, leaf, note.clone()),
        );
        Ok(note)
    }

    /// Appends an anchor read back from `audit.anchors`, with the
    /// checkpoint it carries (nothing is signed again).
    ///
    /// # Errors
    /// As [`Self::append`].
    pub fn load(&mut self, anchor: &Anchor) -> Result<(), KeyError> {
        if self.recorded(anchor)?.is_none() {
            let leaf = anchor_leaf(anchor);
            self.index.insert(
                (anchor.topic.clone(), anchor.partition, anchor.sequence),
                (self.size(), leaf, anchor.checkpoint.clone()),
            );
            self.leaves.push(leaf);
            self.frontier.push(leaf);
        }
        Ok(())
    }

    /// The checkpoint of `anchor` if the log holds it already.
    fn recorded(&self, anchor: &Anchor) -> Result<Option<String>, KeyError> {
        let at = (anchor.topic.clone(), anchor.partition, anchor.sequence);
        match self.index.get(&at) {
            None => Ok(None),
            Some((_, leaf, note)) if *leaf == anchor_leaf(anchor) => Ok(Some(note.clone())),
            Some(_) => Err(KeyError::from(format!(
                "anchor {} of {}/{} differs from the one on audit.anchors (another key, or a changed log)",
                anchor.sequence, anchor.topic, anchor.partition
            ))),
        }
    }

    /// Whether the log holds anchor `sequence` of a partition with this
    /// hash (start-up: the store's anchors must all be on the topic).
    pub fn holds(&self, topic: &str, partition: i32, sequence: i64, hash: &Hash) -> bool {
        self.index
            .get(&(topic.to_string(), partition, sequence))
            .is_some_and(|(_, leaf, _)| *leaf == leaf_hash(hash))
    }

    /// Everything appended so far is committed: publish it.
    ///
    /// # Errors
    /// Signing, or writing the checkpoint file.
    pub fn commit(&mut self) -> Result<(), KeyError> {
        let first_publication = self.shared.note().is_none();
        if self.committed == self.leaves.len() && !first_publication {
            return Ok(());
        }
        let root = if self.leaves.is_empty() {
            empty_root()
        } else {
            self.frontier.root()
        };
        let note = self.note(self.size(), root)?;
        {
            let mut published = self.shared.0.write().expect("not poisoned");
            published
                .leaves
                .extend_from_slice(&self.leaves[self.committed..]);
            published.note = (!note.is_empty()).then(|| note.clone());
        }
        self.committed = self.leaves.len();
        if let (Some(path), false) = (&self.file, note.is_empty()) {
            write_atomically(path, note.as_bytes())
                .map_err(|e| KeyError::from(format!("writing {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Drops what was appended since the last commit.
    pub fn rollback(&mut self) {
        if self.committed == self.leaves.len() {
            return;
        }
        let committed = self.committed as u64;
        self.index
            .retain(|_, (position, _, _)| *position < committed);
        self.leaves.truncate(self.committed);
        self.frontier = Frontier::default();
        for leaf in &self.leaves {
            self.frontier.push(*leaf);
        }
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[derive(Deserialize)]
struct Sizes {
    old: u64,
    new: u64,
}

/// Serves `GET /checkpoint` (the latest signed checkpoint, text) and
/// `GET /proof/consistency?old=M&new=N` (base64 hashes, one per line) on
/// `addr`; returns the bound address.
///
/// # Errors
/// The bind error.
pub async fn serve(shared: Shared, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/checkpoint", get(checkpoint))
        .route("/proof/consistency", get(consistency))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "checkpoint endpoint stopped");
        }
    });
    Ok(bound)
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn checkpoint(State(shared): State<Shared>) -> Response {
    match shared.note() {
        Some(note) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], note).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, TEXT)],
            "no checkpoint: this audit processor signs with HMAC (settings.signature: hmac)\n",
        )
            .into_response(),
    }
}

async fn consistency(State(shared): State<Shared>, Query(sizes): Query<Sizes>) -> Response {
    match shared.consistency(sizes.old, sizes.new) {
        Ok(proof) => {
            let body: String = proof
                .iter()
                .map(|h| format!("{}\n", BASE64.encode(h)))
                .collect();
            (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], body).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, TEXT)],
            format!("{e}\n"),
        )
            .into_response(),
    }
}

/// Parses a consistency proof as served.
///
/// # Errors
/// A line that is not a base64 SHA-256 hash.
pub fn parse_proof(text: &str) -> Result<Vec<Hash>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            BASE64
                .decode(line.trim())
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| format!("not a base64 SHA-256 hash: {line:?}"))
        })
        .collect()
}

/// A checkpoint a witness cosigned, as a verifier reads it.
#[derive(Debug, Clone)]
pub struct Witnessed {
    /// The witness's name.
    pub witness: String,
    /// What it cosigned.
    pub checkpoint: Checkpoint,
    /// When, seconds since the epoch.
    pub time: u64,
}

/// What [`check_log`] found.
#[derive(Debug, Clone, Default)]
pub struct LogReport {
    /// The log's origin (from its checkpoints).
    pub origin: Option<String>,
    /// Distinct anchors on `audit.anchors`.
    pub size: u64,
    /// Anchors carrying a checkpoint, each checked.
    pub checkpoints: u64,
    /// The keys that signed, in log order, with the position each began
    /// at (a key rotation shows as a second entry).
    pub keys: Vec<(String, u64)>,
    /// The witness's checkpoint, when one was given and it checked out.
    pub witnessed: Option<Witnessed>,
    /// The first disagreement.
    pub problem: Option<String>,
}

/// Checks the anchor log: every anchor's checkpoint is signed by a
/// trusted key and matches the log up to that anchor; with a witness's
/// cosigned checkpoint, the log must contain the tree the witness saw —
/// fewer anchors is a truncation, another root a fork.
pub fn check_log(
    anchors: &[Anchor],
    keys: &crate::signing::Keys,
    witness: Option<(&[u8], &crate::signing::CosignatureVerifier)>,
) -> LogReport {
    let mut report = LogReport::default();
    let mut leaves: Vec<Hash> = Vec::new();
    let mut frontier = Frontier::default();
    let mut seen: HashMap<(&str, i32, i64), Hash> = HashMap::new();
    for anchor in anchors {
        let leaf = anchor_leaf(anchor);
        let at = (anchor.topic.as_str(), anchor.partition, anchor.sequence);
        if anchor.checkpoint.is_empty() && keys.is_ed25519(&anchor.key_id) {
            // The checkpoint is outside the signed bytes: removing it must
            // not remove the check.
            report.problem = Some(format!(
                "anchor {} of {}/{} is Ed25519-signed but carries no checkpoint",
                anchor.sequence, anchor.topic, anchor.partition
            ));
            return report;
        }
        match seen.get(&at) {
            Some(first) if *first == leaf => continue, // written again by a replay
            Some(_) => {
                report.problem = Some(format!(
                    "anchor {} of {}/{} appears twice with different contents",
                    anchor.sequence, anchor.topic, anchor.partition
                ));
                return report;
            }
            None => {}
        }
        seen.insert(at, leaf);
        leaves.push(leaf);
        frontier.push(leaf);
        let position = leaves.len() as u64;
        if report.keys.last().is_none_or(|(k, _)| *k != anchor.key_id) {
            report.keys.push((anchor.key_id.clone(), position - 1));
        }
        if anchor.checkpoint.is_empty() {
            continue;
        }
        let opened = keys
            .open_note(anchor.checkpoint.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|body| Checkpoint::parse(&body).map_err(|e| e.to_string()));
        let problem = match opened {
            Err(e) => Some(format!(
                "anchor {} of {}/{}: its checkpoint does not verify: {e}",
                anchor.sequence, anchor.topic, anchor.partition
            )),
            Ok(c) if report.origin.as_ref().is_some_and(|o| *o != c.origin) => Some(format!(
                "anchor {} of {}/{}: checkpoint of another log ({:?})",
                anchor.sequence, anchor.topic, anchor.partition, c.origin
            )),
            Ok(c) if c.size != position || c.root != frontier.root() => Some(format!(
                "anchor {} of {}/{}: its checkpoint ({c}) does not match the log at that anchor (size {position})",
                anchor.sequence, anchor.topic, anchor.partition
            )),
            Ok(c) => {
                report.origin.get_or_insert(c.origin);
                report.checkpoints += 1;
                None
            }
        };
        if problem.is_some() {
            report.problem = problem;
            return report;
        }
    }
    report.size = leaves.len() as u64;
    if let Some((note, verifier)) = witness {
        match verifier
            .open(note, keys)
            .map_err(|e| e.to_string())
            .and_then(|(body, time)| {
                Ok((Checkpoint::parse(&body).map_err(|e| e.to_string())?, time))
            }) {
            Err(e) => report.problem = Some(format!("the witness's checkpoint: {e}")),
            Ok((seen, time)) => {
                let when = format!("cosigned by {} at {time}", verifier.name());
                report.problem = if report.origin.as_ref().is_some_and(|o| *o != seen.origin) {
                    Some(format!(
                        "the witness's checkpoint is of another log ({:?})",
                        seen.origin
                    ))
                } else if seen.size > report.size {
                    Some(format!(
                        "TRUNCATED: the witness saw {} anchors ({when}); this log has {}: the newest anchors were removed",
                        seen.size, report.size
                    ))
                } else if crate::merkle::root_of(&leaves[..seen.size as usize]) != seen.root {
                    Some(format!(
                        "FORK: the first {} anchors of this log have another root than the witness saw ({when}): the log was rewritten",
                        seen.size
                    ))
                } else {
                    None
                };
                if report.problem.is_none() {
                    report.witnessed = Some(Witnessed {
                        witness: verifier.name().to_string(),
                        checkpoint: seen,
                        time,
                    });
                }
            }
        }
    }
    report
}
