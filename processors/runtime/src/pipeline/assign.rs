//! Which partitions this instance reads and from where, and reports of
//! positions the log cannot satisfy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::Runtime;
use crate::error::RunError;
use crate::kafka::{ADMIN_TIMEOUT, KafkaError};
use crate::replay::{Cursor, Cursors};
use crate::state::TopicPartition;

impl Runtime {
    /// Assigns every partition of every input to the owner, starting from
    /// the store's positions, and plans what must be replayed.
    pub(super) fn assign(&self) -> Result<Cursors, RunError> {
        let positions = self.store.positions()?;
        let mut committed_query = TopicPartitionList::new();
        for topic in &self.spec.inputs {
            for p in 0..self.partitions[topic] {
                committed_query.add_partition(topic, p);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(committed_query, ADMIN_TIMEOUT)
            .map_err(KafkaError::client("reading committed offsets"))?;

        let mut assignment = TopicPartitionList::new();
        let mut plans = Vec::new();
        for topic in &self.spec.inputs {
            let count = self.partitions[topic];
            let mut cursors = vec![None; count as usize];
            for p in 0..count {
                let stored = positions
                    .get(&TopicPartition::new(topic.as_str(), p))
                    .copied();
                let durable = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                let cursor = Cursor::plan(stored, durable);
                // Reported from the start, not from the first checkpoint: a
                // partition with nothing left to read is caught up too.
                self.metrics
                    .position
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set(cursor.next);
                cursors[p as usize] = Some(cursor);
                assignment
                    .add_partition_offset(
                        topic,
                        p,
                        stored.map_or(Offset::Beginning, Offset::Offset),
                    )
                    .map_err(KafkaError::client("assigning partitions"))?;
            }
            plans.push((Arc::from(topic.as_str()), cursors));
        }
        self.consumer
            .assign(&assignment)
            .map_err(KafkaError::client("assigning partitions"))?;
        let cursors = Cursors::new(plans, Instant::now());
        self.check_positions_within_log(&cursors);
        Ok(cursors)
    }

    pub(super) fn stuck_gauge(
        &self,
        topic: &str,
        partition: i32,
        reason: &str,
    ) -> prometheus::IntGauge {
        self.metrics
            .stuck
            .with_label_values(&[topic, &partition.to_string(), reason])
    }

    /// A replay whose partition stopped short of its target cannot lift the
    /// hold on new input by itself: say so, once per partition, and set the
    /// metric.
    pub(super) fn report_stalls(
        &self,
        cursors: &mut Cursors,
        reported: &mut HashSet<(Arc<str>, i32)>,
    ) {
        for (topic, partition, cursor) in cursors.stalled(Instant::now()) {
            if reported.insert((topic.clone(), partition)) {
                self.stuck_gauge(&topic, partition, "replay_target_beyond_log_end")
                    .set(1);
                tracing::error!(
                    processor = self.name,
                    topic = %topic,
                    partition,
                    position = cursor.next,
                    committed = cursor.replay_until,
                    "replay cannot finish: the group's committed offset lies beyond what the log holds (topic re-created, or a broker that lost its log?); new input waits. Reset the group's offsets or use another kafka.group"
                );
            }
        }
    }

    /// A store whose positions lie beyond the end of the log waits forever
    /// for records that will never come: report it loudly at start (Kafka
    /// also answers such a fetch with an out-of-range error, see
    /// [`Runtime::consume_error`]; tansu answers nothing).
    fn check_positions_within_log(&self, cursors: &Cursors) {
        let delete_policy = |topic: &str| {
            self.topology
                .topic(topic)
                .is_ok_and(|t| t.cleanup_policy.as_kafka() == "delete")
        };
        let positions: Vec<(String, i32, i64)> = cursors
            .iter()
            .filter(|(topic, _, _)| delete_policy(topic))
            .map(|(topic, partition, cursor)| (topic.to_string(), partition, cursor.next))
            .collect();
        let beyond = match crate::kafka::positions_beyond_log(
            &self.kafka,
            &positions,
            Duration::from_secs(3),
        ) {
            Ok(beyond) => beyond,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the store's positions against the log");
                return;
            }
        };
        for (topic, partition, next) in beyond {
            self.position_beyond_log(&topic, partition, next, None);
        }
    }

    /// A consume error: transient ones are waited out by the caller; a
    /// position the broker says is out of range is examined here.
    pub(super) fn consume_error(&self, error: &RdKafkaError, cursors: &Cursors) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AutoOffsetReset) {
            return;
        }
        // `auto.offset.reset` is `error`: a stored position outside the log.
        for (topic, partition, cursor) in cursors.iter() {
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(5))
            else {
                continue;
            };
            if cursor.next < low {
                // Expired by retention while the processor was away: what
                // is gone cannot be processed; go on from the log start.
                tracing::warn!(
                    processor = self.name,
                    topic = %topic,
                    partition,
                    position = cursor.next,
                    log_start = low,
                    "records expired by retention before they were processed; continuing from the log start"
                );
                let _ = self
                    .consumer
                    .seek(topic, partition, Offset::Offset(low), ADMIN_TIMEOUT);
            } else if cursor.next > high {
                self.position_beyond_log(topic, partition, cursor.next, Some(high));
            }
        }
    }

    /// Reports (log and metric) a store position beyond the end of the log.
    fn position_beyond_log(
        &self,
        topic: &str,
        partition: i32,
        position: i64,
        log_end: Option<i64>,
    ) {
        self.stuck_gauge(topic, partition, "position_beyond_log_end")
            .set(1);
        tracing::error!(
            processor = self.name,
            topic,
            partition,
            position,
            log_end,
            "the state store's position lies beyond the end of the log: this store was built from another log (a broker that lost its data, a re-created topic). Delete the state directory (or start with --rebuild) to rebuild it by replay"
        );
    }
}
