//! A witness: a separate party that keeps the log honest.
//!
//! It fetches the log's latest checkpoint, checks the log's signature, and
//! accepts it only if it extends the last checkpoint it accepted — same
//! origin, at least as many anchors, and a valid RFC 9162 consistency proof
//! between the two (same size: same root). It then cosigns it (C2SP
//! `tlog-cosignature` v1) and keeps it. A verifier holding that cosigned
//! checkpoint detects a log that was cut short after the witness saw it,
//! and a log rewritten and re-signed under the same key: the tree the
//! witness saw is no longer a prefix of what the verifier is shown.
//!
//! This module is the decision; `trellis audit witness` fetches over HTTP
//! and keeps the state file.

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, verify_consistency};
use crate::signing::{Cosigner, Keys};

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not signed by the log's key, or not a checkpoint.
    #[error("not a valid checkpoint of this log: {0}")]
    Invalid(String),
    /// Another origin than the one the witness follows.
    #[error("checkpoint of {found:?}, this witness follows {expected:?}")]
    Origin {
        /// Followed.
        expected: String,
        /// Shown.
        found: String,
    },
    /// Fewer anchors than already cosigned.
    #[error("the log went back from {cosigned} to {shown} anchors")]
    Rollback {
        /// Last cosigned size.
        cosigned: u64,
        /// Shown now.
        shown: u64,
    },
    /// Not an extension of what was cosigned: a fork.
    #[error("FORK: {0}")]
    Fork(String),
    /// The proof could not be fetched.
    #[error("fetching the consistency proof: {0}")]
    Proof(String),
}

/// What the witness did with a checkpoint.
#[derive(Debug)]
pub enum Outcome {
    /// Same tree as last time: nothing to cosign.
    Unchanged,
    /// Accepted and cosigned: the new state.
    Cosigned {
        /// The note with the witness's cosignature added.
        note: String,
        /// What it says.
        checkpoint: Checkpoint,
    },
}

/// Opens a signed checkpoint with the log's keys.
fn open(note: &[u8], log_keys: &Keys) -> Result<Checkpoint, Refusal> {
    let body = log_keys
        .open_note(note)
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    Checkpoint::parse(&body).map_err(|e| Refusal::Invalid(e.to_string()))
}

/// The checkpoint in a witness's own state (its last cosigned note),
/// trusted as is: the log's key may have rotated since.
///
/// # Errors
/// The state is not a checkpoint note.
pub fn cosigned_checkpoint(state: &str) -> Result<Checkpoint, Refusal> {
    signed_note::Note::from_bytes(state.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|note| Checkpoint::parse(note.text()).map_err(|e| e.to_string()))
        .map_err(|e| Refusal::Invalid(format!("the witness's state: {e}")))
}

/// Decides on `shown` given the last cosigned note (none: the first one
/// is trusted on first use). `proof(old, new)` fetches a consistency proof.
///
/// # Errors
/// [`Refusal`]: the checkpoint is not cosigned and the state is unchanged.
pub fn observe(
    last: Option<&str>,
    shown: &[u8],
    log_keys: &Keys,
    cosigner: &Cosigner,
    proof: impl FnOnce(u64, u64) -> Result<Vec<Hash>, String>,
) -> Result<Outcome, Refusal> {
    let new = open(shown, log_keys)?;
    if let Some(last) = last {
        let old = cosigned_checkpoint(last)?;
        if old.origin != new.origin {
            return Err(Refusal::Origin {
                expected: old.origin,
                found: new.origin,
            });
        }
        if new.size < old.size {
            return Err(Refusal::Rollback {
                cosigned: old.size,
                shown: new.size,
            });
        }
        if new.size == old.size {
            return if new.root == old.root {
                Ok(Outcome::Unchanged)
            } else {
                Err(Refusal::Fork(format!(
                    "two roots for size {}: {old} and {new}",
                    new.size
                )))
            };
        }
        if old.size > 0 {
            let path = proof(old.size, new.size).map_err(Refusal::Proof)?;
            if !verify_consistency(old.size, new.size, &old.root, &new.root, &path) {
                return Err(Refusal::Fork(format!(
                    "{new} does not extend the cosigned {old} (consistency proof fails)"
                )));
            }
        }
    }
    let note = cosigner
        .cosign(shown)
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    Ok(Outcome::Cosigned {
        note,
        checkpoint: new,
    })
}
