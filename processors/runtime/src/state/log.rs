//! Commits: a batch's changes and positions appended as one frame, synced
//! on a cadence, and compacted into a snapshot when the log has grown.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use super::frame::{FRAME_HEADER, Op, frame_finish, frame_start, frame_start_in};
use super::table::Maps;
use super::{Positions, StateError, StateStore, StateTxn};

pub(super) struct Log {
    pub(super) file: File,
    /// Bytes of whole frames in the file.
    pub(super) len: u64,
    /// Size of the snapshot the log continues.
    pub(super) snapshot_len: u64,
    /// The log is compacted past `max(compact_min, 2 × snapshot_len)`.
    pub(super) compact_min: u64,
    /// Tests: stop as a crash would, after a commit's frame and before its
    /// compaction.
    #[cfg(test)]
    pub(super) crash_before_compaction: bool,
    pub(super) synced: Instant,
    /// The buffer commits build their frames in, kept between commits: a
    /// batch's frame runs to megabytes, and a fresh allocation of that size
    /// is fresh pages from the kernel every time (their page faults were 1.7%
    /// of a progress run's loop).
    pub(super) frame: Vec<u8>,
    /// A write failed and could not be undone: the file's tail is unknown,
    /// so nothing more may be appended (a frame after a torn one would be
    /// dropped at open).
    pub(super) poisoned: bool,
}

/// The log is compacted into a snapshot once it is larger than this and
/// twice the snapshot.
pub const COMPACT_MIN: u64 = 64 << 20;

/// A commit syncs the log when the last sync is at least this old, and
/// closing the store syncs it (a process crash loses nothing unsynced; a
/// machine crash loses the commits since the last sync, which the store then
/// replays from its log positions).
const SYNC_EVERY: Duration = Duration::from_millis(500);

pub(super) const SNAPSHOT_MAGIC: &[u8] = b"trellis-state/1\n";
pub(super) const LOG_FILE: &str = "log";
pub(super) const SNAPSHOT_FILE: &str = "snapshot";
pub(super) const LOCK_FILE: &str = "lock";
/// A metadata key a commit sets when it asked for a snapshot
/// ([`StateTxn::compact_after_commit`]); the snapshot removes it, and open
/// compacts a store that still has it.
pub(super) const COMPACT_OWED: &[u8] = b"compact-owed";

impl StateStore {
    /// Applies `txn`'s changes and the positions they include as one log
    /// frame. Only the runtime commits: a processor sees the store through
    /// [`StateTxn`] and never decides what its state includes.
    ///
    /// # Errors
    /// [`StateError`]. Before the frame is written (a position that would
    /// move backwards, [`StateError::PositionBackwards`], or a failed write)
    /// nothing is applied. After it (a failed sync or snapshot) the commit
    /// stands in memory but may not be on disk, and the store refuses every
    /// later commit: the processor stops and reopens it.
    pub(crate) fn commit(
        &self,
        txn: StateTxn<'_>,
        positions: &Positions,
    ) -> Result<(), StateError> {
        // Held from the check to the write: no other commit can move a
        // position in between.
        let mut log = self.log();
        let position_keys: Vec<(Vec<u8>, [u8; 8])> = {
            let maps = self.maps();
            let mut keys = Vec::with_capacity(positions.len());
            for (tp, &to) in positions {
                let key = Self::position_key(tp);
                if let Some(old) = maps.meta.get(&key)
                    && let Ok(bytes) = <[u8; 8]>::try_from(old.as_slice())
                    && i64::from_be_bytes(bytes) > to
                {
                    return Err(StateError::PositionBackwards {
                        path: self.shared.path.clone(),
                        partition: tp.clone(),
                        from: i64::from_be_bytes(bytes),
                        to,
                    });
                }
                keys.push((key, to.to_be_bytes()));
            }
            keys
        };
        let mut body = std::mem::take(&mut log.frame);
        frame_start_in(
            &mut body,
            txn.changes
                .iter()
                .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
                + position_keys.len() * 64,
        );
        for (key, value) in &txn.changes {
            Op {
                meta: false,
                key,
                value: value.as_deref(),
            }
            .encode(&mut body);
        }
        for (key, offset) in &position_keys {
            Op {
                meta: true,
                key,
                value: Some(offset),
            }
            .encode(&mut body);
        }
        if txn.compact {
            // Noted in the frame itself, so a crash before the compaction
            // below leaves it owed, and open pays it.
            Op {
                meta: true,
                key: COMPACT_OWED,
                value: Some(&[]),
            }
            .encode(&mut body);
        }
        // The maps take the transaction's keys and values as they are.
        let appended = self.append(&mut log, &mut body, txn.compact, |maps| {
            for (key, value) in txn.changes {
                match value {
                    Some(value) => maps.data.insert(key, value),
                    None => maps.data.remove(&key),
                }
            }
            for (key, offset) in position_keys {
                maps.meta.insert(key, offset.to_vec());
            }
            if txn.compact {
                maps.meta.insert(COMPACT_OWED.to_vec(), Vec::new());
            }
        });
        log.frame = body;
        appended
    }

    /// Appends `framed` (a [`frame_start`] frame of encoded ops) as one
    /// frame, then applies the same changes in memory with `apply`;
    /// compacts when the log has grown enough or `compact` asks for it.
    ///
    /// An error before the frame is written leaves the store as it was. An
    /// error after it (a failed sync or compaction) leaves the commit made
    /// in memory but perhaps not on disk: the store refuses every later
    /// commit, and the processor stops and reopens it.
    pub(super) fn append(
        &self,
        log: &mut Log,
        framed: &mut [u8],
        compact: bool,
        apply: impl FnOnce(&mut Maps),
    ) -> Result<(), StateError> {
        if log.poisoned {
            return Err(self.io(std::io::Error::other(
                "an earlier write or sync failed; restart the processor",
            )));
        }
        // An empty frame is never written: a run of zeros on disk (what some
        // file systems show for blocks lost in a machine crash) would read
        // as empty frames, so open refuses them.
        if framed.len() > FRAME_HEADER {
            frame_finish(framed);
            self.write_frame(log, framed)?;
        }
        apply(
            &mut self
                .shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let due = compact || log.len > log.compact_min.max(2 * log.snapshot_len);
        #[cfg(test)]
        let due = due && !log.crash_before_compaction;
        let synced = if due {
            self.compact(log)
        } else if log.synced.elapsed() >= SYNC_EVERY {
            Self::sync(log)
        } else {
            Ok(())
        };
        synced.map_err(|e| {
            log.poisoned = true;
            self.io(e)
        })
    }

    pub(super) fn write_frame(&self, log: &mut Log, framed: &[u8]) -> Result<(), StateError> {
        if let Err(e) = log.file.write_all(framed) {
            // Undo a partial frame so the next one follows whole frames.
            let len = log.len;
            if log.file.set_len(len).is_err() {
                log.poisoned = true;
            }
            return Err(self.io(e));
        }
        log.len += framed.len() as u64;
        Ok(())
    }

    pub(super) fn sync(log: &mut Log) -> std::io::Result<()> {
        log.file.sync_data()?;
        log.synced = Instant::now();
        Ok(())
    }

    pub(super) fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every entry to a new snapshot, then empties the log.
    pub(super) fn compact(&self, log: &mut Log) -> std::io::Result<()> {
        // The whole log must be on disk before the new snapshot is: a crash
        // after the rename replays the log over the snapshot, and only the
        // whole log ends at the snapshot's state (a part would set keys
        // back to older values).
        log.file.sync_data()?;
        let body = {
            let mut maps = self
                .shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Paid by this snapshot; still owed in the log if it fails.
            maps.meta.remove(COMPACT_OWED);
            maps.order();
            let mut body = frame_start(0);
            for (meta, map) in [(true, &maps.meta), (false, &maps.data)] {
                for (key, value) in map.iter() {
                    Op {
                        meta,
                        key,
                        value: Some(value),
                    }
                    .encode(&mut body);
                }
            }
            frame_finish(&mut body);
            body
        };
        let tmp = self.shared.path.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(SNAPSHOT_MAGIC)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.shared.path.join(SNAPSHOT_FILE))?;
        File::open(&self.shared.path)?.sync_all()?;
        log.snapshot_len = (SNAPSHOT_MAGIC.len() + body.len()) as u64;
        // Replaying the old log over the new snapshot ends at the
        // snapshot's state (module docs), so a crash here loses nothing.
        log.file.set_len(0)?;
        log.file.sync_all()?;
        log.len = 0;
        log.synced = Instant::now();
        Ok(())
    }

    /// Empties the store: every data entry and input position goes (the
    /// cluster id stays), durably, as if the store were new; the processor
    /// then rebuilds it by replay.
    ///
    /// # Errors
    /// [`StateError`] on I/O failure (the store then refuses later commits).
    pub fn reset(&self) -> Result<(), StateError> {
        let mut log = self.log();
        {
            let mut maps = self
                .shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cluster = maps.meta.get(super::CLUSTER).cloned();
            *maps = Maps::default();
            if let Some(cluster) = cluster {
                maps.meta.insert(super::CLUSTER.to_vec(), cluster);
            }
        }
        self.compact(&mut log).map_err(|e| {
            log.poisoned = true;
            self.io(e)
        })
    }

    /// Forces committed batches to disk (a commit also does once the last
    /// sync is 500 ms old).
    ///
    /// # Errors
    /// [`StateError`] on I/O failure.
    pub fn flush(&self) -> Result<(), StateError> {
        Self::sync(&mut self.log()).map_err(|e| self.io(e))
    }
}
