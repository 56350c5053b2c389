//! Checking logs against their anchors, and proofs about single records.
//!
//! [`PartitionCheck`] takes one partition's anchors, checks their chain
//! (sequence, previous hash, signature, contiguous ranges), then is fed the
//! partition's records in log order and recomputes the tree; the first
//! disagreement is its [`Finding`]. Records come from the broker
//! ([`read_partitions`]) or from a log file written by [`write_log`] — a
//! copy of the logs, which is also how the tests model a storage-level
//! change.
//!
//! A record's exact offset is reported when the log skips or reorders
//! offsets. A changed record keeps its offset, so it shows as a root that
//! no longer matches: the finding names the anchor's range, the smallest
//! unit the signed roots can vouch for (`anchor_every` bounds it).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_records::Anchor;
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::{KafkaError, TopicScan};
use trellis_runtime::pipeline::OwnedRecord;

use crate::canonical::{GENESIS, anchor_hash, record_bytes};
use crate::merkle::{self, Frontier, Hash, leaf_hash};
use crate::signing::Keys;

/// The RFC 6962 leaf hash of each record's canonical bytes, in order.
fn leaves(records: &[OwnedRecord]) -> Vec<Hash> {
    let mut buf = Vec::new();
    records
        .iter()
        .map(|r| {
            canonical(r, &mut buf);
            leaf_hash(&buf)
        })
        .collect()
}

/// The canonical bytes of a record read back.
pub fn canonical(record: &OwnedRecord, buf: &mut Vec<u8>) {
    record_bytes(
        buf,
        &record.topic,
        record.partition,
        record.offset,
        record.timestamp_ms,
        record.key.as_deref(),
        record.value.as_deref(),
        |sink| {
            for (k, v) in &record.headers {
                sink(k, v);
            }
        },
    );
}

/// What disagrees, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The anchor's signature does not verify under the key given.
    BadSignature {
        /// Anchor sequence.
        sequence: i64,
    },
    /// An anchor is missing, repeated, reordered or unlinked.
    BrokenChain {
        /// Anchor sequence where the chain breaks.
        sequence: i64,
        /// What is wrong.
        detail: String,
    },
    /// The log skips an offset the anchors cover.
    Missing {
        /// The offset that should be there.
        offset: i64,
    },
    /// An offset appears after a later one.
    OutOfOrder {
        /// The offset out of place.
        offset: i64,
        /// The offset it follows.
        after: i64,
    },
    /// A record in this range changed: the recomputed root differs.
    RootMismatch {
        /// Anchor sequence.
        sequence: i64,
        /// Its range.
        first_offset: i64,
        /// Its range.
        last_offset: i64,
    },
    /// The log ends before the anchors do.
    Truncated {
        /// Anchor sequence whose range is cut short.
        sequence: i64,
        /// The first offset missing.
        offset: i64,
    },
}

/// A problem in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// What.
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("{}/{}", self.topic, self.partition);
        match &self.problem {
            Problem::BadSignature { sequence } => {
                write!(f, "{at}: anchor {sequence} has an invalid signature")
            }
            Problem::BrokenChain { sequence, detail } => {
                write!(
                    f,
                    "{at}: anchor chain broken at anchor {sequence}: {detail}"
                )
            }
            Problem::Missing { offset } => write!(f, "{at} offset {offset}: record missing"),
            Problem::OutOfOrder { offset, after } => {
                write!(
                    f,
                    "{at} offset {offset}: out of order (comes after offset {after})"
                )
            }
            Problem::RootMismatch {
                sequence,
                first_offset,
                last_offset,
            } => write!(
                f,
                "{at} offsets {first_offset}..={last_offset}: a record was changed (root differs from anchor {sequence})"
            ),
            Problem::Truncated { sequence, offset } => write!(
                f,
                "{at} offset {offset}: log ends inside anchor {sequence}'s range"
            ),
        }
    }
}

/// One partition's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records read.
    pub records: u64,
    /// Anchors checked.
    pub anchors: usize,
    /// Records after the last anchor (not yet covered).
    pub unanchored: u64,
    /// The first disagreement, if any.
    pub finding: Option<Finding>,
}

/// Checks one partition; see the module docs.
pub struct PartitionCheck {
    topic: String,
    partition: i32,
    anchors: Vec<Anchor>,
    next: usize,
    frontier: Frontier,
    expected: Option<i64>,
    last: Option<i64>,
    records: u64,
    finding: Option<Finding>,
    buf: Vec<u8>,
}

impl PartitionCheck {
    /// Checks the chain of `anchors` (this partition's, any order) now; the
    /// records follow through [`Self::feed`].
    pub fn new(topic: &str, partition: i32, mut anchors: Vec<Anchor>, keys: &Keys) -> Self {
        anchors.sort_by_key(|a| a.sequence);
        let mut check = Self {
            topic: topic.to_string(),
            partition,
            expected: anchors.first().map(|a| a.first_offset),
            anchors,
            next: 0,
            frontier: Frontier::default(),
            last: None,
            records: 0,
            finding: None,
            buf: Vec::with_capacity(2048),
        };
        check.finding = check.check_chain(keys).map(|problem| check.found(problem));
        check
    }

    fn found(&self, problem: Problem) -> Finding {
        Finding {
            topic: self.topic.clone(),
            partition: self.partition,
            problem,
        }
    }

    fn check_chain(&self, keys: &Keys) -> Option<Problem> {
        let mut previous: Option<&Anchor> = None;
        for (i, anchor) in self.anchors.iter().enumerate() {
            let sequence = anchor.sequence;
            let broken = |detail: String| Some(Problem::BrokenChain { sequence, detail });
            if sequence != i as i64 {
                return broken(format!(
                    "expected anchor {i} here (missing or repeated anchor)"
                ));
            }
            if !keys.verify(anchor) {
                return Some(Problem::BadSignature { sequence });
            }
            let (link, next_offset, size) = match previous {
                None => (GENESIS.to_string(), anchor.first_offset, 0),
                Some(p) => (hex::encode(anchor_hash(p)), p.last_offset + 1, p.tree_size),
            };
            if anchor.previous_hash != link {
                return broken("previous_hash does not match the previous anchor".into());
            }
            if anchor.first_offset != next_offset
                || anchor.last_offset < anchor.first_offset
                || anchor.tree_size - size != anchor.last_offset - anchor.first_offset + 1
            {
                return broken("range does not continue the previous anchor's".into());
            }
            previous = Some(anchor);
        }
        None
    }

    /// The next record of the partition, in log order.
    pub fn feed(&mut self, record: &OwnedRecord) {
        self.records += 1;
        if self.finding.is_some() {
            return;
        }
        let expected = *self.expected.get_or_insert(record.offset);
        if record.offset != expected {
            let problem = match self.last {
                Some(last) if record.offset <= last => Problem::OutOfOrder {
                    offset: record.offset,
                    after: last,
                },
                _ => Problem::Missing { offset: expected },
            };
            self.finding = Some(self.found(problem));
            return;
        }
        self.last = Some(record.offset);
        self.expected = Some(record.offset + 1);
        canonical(record, &mut self.buf);
        self.frontier.push(leaf_hash(&self.buf));
        if let Some(anchor) = self.anchors.get(self.next)
            && self.frontier.size() as i64 == anchor.tree_size
        {
            if hex::encode(self.frontier.root()) != anchor.root {
                self.finding = Some(self.found(Problem::RootMismatch {
                    sequence: anchor.sequence,
                    first_offset: anchor.first_offset,
                    last_offset: anchor.last_offset,
                }));
            }
            self.next += 1;
        }
    }

    /// The result once every record was fed.
    pub fn finish(mut self) -> PartitionReport {
        if self.finding.is_none()
            && let Some(anchor) = self.anchors.get(self.next)
        {
            let offset = self.expected.unwrap_or(anchor.first_offset);
            self.finding = Some(self.found(Problem::Truncated {
                sequence: anchor.sequence,
                offset,
            }));
        }
        let anchored = self.anchors.last().map_or(0, |a| a.tree_size as u64);
        PartitionReport {
            topic: self.topic,
            partition: self.partition,
            records: self.records,
            anchors: self.anchors.len(),
            unanchored: self.frontier.size().saturating_sub(anchored),
            finding: self.finding,
        }
    }
}

/// Anchors grouped by (topic, partition).
pub fn by_partition(anchors: Vec<Anchor>) -> BTreeMap<(String, i32), Vec<Anchor>> {
    let mut grouped: BTreeMap<(String, i32), Vec<Anchor>> = BTreeMap::new();
    for anchor in anchors {
        grouped
            .entry((anchor.topic.clone(), anchor.partition))
            .or_default()
            .push(anchor);
    }
    grouped
}

/// Checks `records` (any interleaving of partitions, each in log order)
/// against `anchors`, for the `audited` topics. Partitions with anchors but
/// no records are checked too (as truncated).
pub fn verify_records<'a>(
    audited: &[String],
    anchors: Vec<Anchor>,
    keys: &Keys,
    records: impl IntoIterator<Item = &'a OwnedRecord>,
) -> Vec<PartitionReport> {
    let mut checks: HashMap<(String, i32), PartitionCheck> = by_partition(anchors)
        .into_iter()
        .map(|((topic, partition), anchors)| {
            let check = PartitionCheck::new(&topic, partition, anchors, keys);
            ((topic, partition), check)
        })
        .collect();
    for record in records {
        if !audited.contains(&record.topic) {
            continue;
        }
        checks
            .entry((record.topic.clone(), record.partition))
            .or_insert_with(|| {
                PartitionCheck::new(&record.topic, record.partition, Vec::new(), keys)
            })
            .feed(record);
    }
    let mut reports: Vec<PartitionReport> =
        checks.into_values().map(PartitionCheck::finish).collect();
    reports.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    reports
}

/// Reads every partition of `topic` from its start, calling `visit` with
/// each record in log order per partition; `total` is told the broker's
/// estimate of the record count first.
///
/// Where the log ends, and what `idle` bounds: [`TopicScan::run`].
///
/// # Errors
/// [`KafkaError`] if the topic cannot be read.
pub fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    idle: Duration,
    mut total: impl FnMut(u64),
    mut visit: impl FnMut(OwnedRecord),
) -> Result<(), KafkaError> {
    let scan = TopicScan::open(kafka, topic)?;
    total(scan.estimate());
    scan.run(idle, |m| visit(OwnedRecord::from_message(m)), || false)?;
    Ok(())
}

/// A record as stored in a log file.
#[derive(Serialize, Deserialize)]
struct FileRecord {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

const LOG_MAGIC: &[u8] = b"trellis-log/v1\n";

/// Writes records to a log file (length-prefixed postcard).
///
/// # Errors
/// I/O errors.
pub fn write_log<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a OwnedRecord>,
) -> std::io::Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    out.write_all(LOG_MAGIC)?;
    let mut n = 0;
    for r in records {
        let bytes = postcard::to_allocvec(&FileRecord {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .map_err(std::io::Error::other)?;
        out.write_all(&(bytes.len() as u32).to_be_bytes())?;
        out.write_all(&bytes)?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Reads a log file written by [`write_log`].
///
/// # Errors
/// I/O errors, or a file that is not a Trellis log.
pub fn read_log(path: &Path) -> std::io::Result<Vec<OwnedRecord>> {
    let mut input = BufReader::new(std::fs::File::open(path)?);
    let mut magic = vec![0; LOG_MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != LOG_MAGIC {
        return Err(std::io::Error::other(format!(
            "{} is not a Trellis log file",
            path.display()
        )));
    }
    let mut records = Vec::new();
    let mut len = [0u8; 4];
    let mut bytes = Vec::new();
    loop {
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        bytes.resize(u32::from_be_bytes(len) as usize, 0);
        input.read_exact(&mut bytes)?;
        let r: FileRecord = postcard::from_bytes(&bytes).map_err(std::io::Error::other)?;
        records.push(OwnedRecord {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        });
    }
    Ok(records)
}

/// A proof, as `trellis audit prove` writes it and `verify-proof` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Proof {
    /// One record is in the tree an anchor signs.
    Inclusion {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The anchor.
        sequence: i64,
        /// The record's offset.
        offset: i64,
        /// Its position among the partition's leaves.
        leaf_index: u64,
        /// Hex canonical bytes of the record (the leaf's preimage).
        record: String,
        /// Hex sibling hashes, bottom up.
        path: Vec<String>,
    },
    /// The later anchor's tree extends the earlier one's.
    Consistency {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Earlier anchor.
        from_sequence: i64,
        /// Later anchor.
        to_sequence: i64,
        /// Hex proof hashes.
        path: Vec<String>,
    },
}

/// Why a proof could not be made or does not hold.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProofError(pub String);

fn find<'a>(
    anchors: &'a [Anchor],
    topic: &str,
    partition: i32,
    sequence: i64,
) -> Result<&'a Anchor, ProofError> {
    anchors
        .iter()
        .find(|a| a.topic == topic && a.partition == partition && a.sequence == sequence)
        .ok_or_else(|| ProofError(format!("no anchor {sequence} for {topic}/{partition}")))
}

fn hashes(path: &[String]) -> Result<Vec<Hash>, ProofError> {
    path.iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <Hash>::try_from(b).ok())
                .ok_or_else(|| ProofError(format!("`{h}` is not a hex SHA-256")))
        })
        .collect()
}

/// Proves that the record at `offset` is covered by anchor `sequence` (by
/// default the first anchor covering it), given the partition's records.
///
/// # Errors
/// [`ProofError`] if no anchor covers the offset or the records are short.
pub fn prove_inclusion(
    anchors: &[Anchor],
    records: &[OwnedRecord],
    offset: i64,
    sequence: Option<i64>,
) -> Result<Proof, ProofError> {
    let first = records
        .first()
        .ok_or_else(|| ProofError("no records".into()))?;
    let (topic, partition) = (first.topic.clone(), first.partition);
    let anchor = match sequence {
        Some(s) => find(anchors, &topic, partition, s)?,
        None => anchors
            .iter()
            .filter(|a| a.topic == topic && a.partition == partition && a.last_offset >= offset)
            .min_by_key(|a| a.sequence)
            .ok_or_else(|| {
                ProofError(format!(
                    "no anchor of {topic}/{partition} covers offset {offset} yet"
                ))
            })?,
    };
    let size = anchor.tree_size as usize;
    if records.len() < size {
        return Err(ProofError(format!(
            "the log holds {} records, anchor {} covers {size}",
            records.len(),
            anchor.sequence
        )));
    }
    let leaves = leaves(&records[..size]);
    let mut buf = Vec::new();
    let index = records[..size]
        .iter()
        .position(|r| r.offset == offset)
        .ok_or_else(|| {
            ProofError(format!(
                "offset {offset} is not in anchor {}'s tree",
                anchor.sequence
            ))
        })?;
    canonical(&records[index], &mut buf);
    Ok(Proof::Inclusion {
        topic,
        partition,
        sequence: anchor.sequence,
        offset,
        leaf_index: index as u64,
        record: hex::encode(&buf),
        path: merkle::inclusion_path(&leaves, index)
            .iter()
            .map(hex::encode)
            .collect(),
    })
}

/// Proves that anchor `to`'s tree extends anchor `from`'s.
///
/// # Errors
/// [`ProofError`] if the anchors are missing or the records are short.
pub fn prove_consistency(
    anchors: &[Anchor],
    records: &[OwnedRecord],
    from: i64,
    to: i64,
) -> Result<Proof, ProofError> {
    let first = records
        .first()
        .ok_or_else(|| ProofError("no records".into()))?;
    let (topic, partition) = (first.topic.clone(), first.partition);
    let (old, new) = (
        find(anchors, &topic, partition, from)?,
        find(anchors, &topic, partition, to)?,
    );
    if old.tree_size > new.tree_size {
        return Err(ProofError(format!(
            "anchor {from} is not earlier than anchor {to}"
        )));
    }
    let size = new.tree_size as usize;
    if records.len() < size {
        return Err(ProofError(format!(
            "the log holds {} records, anchor {to} covers {size}",
            records.len()
        )));
    }
    let leaves = leaves(&records[..size]);
    Ok(Proof::Consistency {
        topic,
        partition,
        from_sequence: from,
        to_sequence: to,
        path: merkle::consistency_proof(&leaves, old.tree_size as usize)
            .iter()
            .map(hex::encode)
            .collect(),
    })
}

/// Checks `proof` against `anchors` alone. The anchors it relies on must
/// carry valid signatures under `keys`, when one is given.
///
/// # Errors
/// [`ProofError`] saying why the proof does not hold.
pub fn verify_proof(
    proof: &Proof,
    anchors: &[Anchor],
    keys: Option<&Keys>,
) -> Result<String, ProofError> {
    let signed = |a: &Anchor| match keys {
        Some(s) if !s.verify(a) => Err(ProofError(format!(
            "anchor {} of {}/{} has an invalid signature",
            a.sequence, a.topic, a.partition
        ))),
        _ => Ok(()),
    };
    let root =
        |a: &Anchor| -> Result<Hash, ProofError> { Ok(hashes(std::slice::from_ref(&a.root))?[0]) };
    match proof {
        Proof::Inclusion {
            topic,
            partition,
            sequence,
            offset,
            leaf_index,
            record,
            path,
        } => {
            let anchor = find(anchors, topic, *partition, *sequence)?;
            signed(anchor)?;
            let bytes = hex::decode(record).map_err(|_| ProofError("record is not hex".into()))?;
            if !merkle::verify_inclusion(
                *leaf_index,
                anchor.tree_size as u64,
                &leaf_hash(&bytes),
                &hashes(path)?,
                &root(anchor)?,
            ) {
                return Err(ProofError(format!(
                    "{topic}/{partition} offset {offset} is NOT in anchor {sequence}'s tree"
                )));
            }
            Ok(format!(
                "{topic}/{partition} offset {offset} is leaf {leaf_index} of anchor {sequence} (tree size {}, root {})",
                anchor.tree_size, anchor.root
            ))
        }
        Proof::Consistency {
            topic,
            partition,
            from_sequence,
            to_sequence,
            path,
        } => {
            let old = find(anchors, topic, *partition, *from_sequence)?;
            let new = find(anchors, topic, *partition, *to_sequence)?;
            signed(old)?;
            signed(new)?;
            if !merkle::verify_consistency(
                old.tree_size as u64,
                new.tree_size as u64,
                &root(old)?,
                &root(new)?,
                &hashes(path)?,
            ) {
                return Err(ProofError(format!(
                    "{topic}/{partition}: anchor {to_sequence}'s tree does NOT extend anchor {from_sequence}'s"
                )));
            }
            Ok(format!(
                "{topic}/{partition}: anchor {to_sequence} (size {}) extends anchor {from_sequence} (size {})",
                new.tree_size, old.tree_size
            ))
        }
    }
}
