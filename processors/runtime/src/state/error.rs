//! What can go wrong with a state store.

use std::fmt;
use std::path::PathBuf;

use super::TopicPartition;

/// The store failed; the processor cannot continue safely.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the store's files failed.
    #[error("state store {path}: {source}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error(
        "state store {path} is in use by another process (stop it, or give this one another state_dir)"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The directory holds a store an older Trellis wrote (sled).
    #[error(
        "state store {path} was written by an older Trellis (sled); move it away or delete it, and the processor rebuilds its state by replaying its inputs"
    )]
    Legacy {
        /// The store directory.
        path: PathBuf,
    },
    /// An entry could not be decoded.
    #[error("state store {path}: corrupt entry: {what}")]
    Corrupt {
        /// The store directory, when known.
        path: PathBuf,
        /// Which entry, and why.
        what: String,
    },
    /// A commit tried to move an input position backwards: a bug, refused
    /// because it would apply inputs twice.
    #[error("state store {path}: refusing to move {partition} back from {from} to {to}")]
    PositionBackwards {
        /// The store directory.
        path: PathBuf,
        /// The input partition.
        partition: TopicPartition,
        /// The position the store holds.
        from: i64,
        /// The position the commit asked for.
        to: i64,
    },
}

impl StateError {
    /// A data entry the processor cannot decode.
    pub fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt {
            path: PathBuf::from("(processor data)"),
            what: what.to_string(),
        }
    }
}
