//! Who owns the processor's state: decided by a consumer group.
//!
//! Every instance of a processor joins the group `<group>.members` with the
//! `cooperative-sticky` assignor and static membership
//! (`group.instance.id` = `kafka.instance_id`), subscribed to
//! `trellis.leases`, a topic of one partition that is never written. The
//! instance assigned that partition (the *lease*) owns the processor's
//! state and reads every input partition; the others stand by (a sticky
//! assignor never moves a lone partition to balance the group), and one of them takes over when the owner dies (its session times
//! out) or leaves. Every processor's state spans partitions (DESIGN.md, the
//! ownership table in docs/architecture.md), so one owner at a time is what
//! keeps it correct; standbys give failover, not scale-out.
//!
//! The member is a separate consumer, polled on its own thread, so that a
//! revocation can wait for the loop: `pre_rebalance` hands the loop a
//! [`Event::Revoked`] and blocks until the loop has made its batch durable,
//! committed the group offsets and released the inputs (or
//! [`REVOKE_WAIT`] passed). Only then does the group hand the lease to
//! another instance, so two owners overlap only when an owner is too slow
//! to answer (a stopped process); their outputs then carry the same ids and
//! values (outputs are deterministic), and consumers drop them by id.
//!
//! The data consumer stays as it was: manual assignment, offsets committed
//! to `<group>` (the offsets mark how far outputs are durable).
//!
//! A second instance with the same `kafka.instance_id` fences the first: the
//! broker answers the first one's next heartbeat with `FENCED_INSTANCE_ID`,
//! librdkafka raises it as fatal, and the loop stops with
//! [`RunError::Fenced`](crate::error::RunError::Fenced) naming the id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::config::KafkaConfig;
use crate::kafka::{KafkaError, client_config};

/// Whether this instance holds the lease (owns the state): what side
/// services ask before answering from, or for, the state (HTTP ingest
/// remembers nonces and rate limits for the owner's loop; a standby
/// refuses, so a replay or a burst cannot be spread over instances).
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<AtomicBool>);

impl Lease {
    /// True while this instance owns the state.
    pub fn held(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Taken or given up: the runtime's loop sets it (tests too).
    pub fn set(&self, held: bool) {
        self.0.store(held, Ordering::Relaxed);
    }

    /// `router`, answering `503 STANDBY` (with `Retry-After: 1`) while this
    /// instance does not hold the lease: a side service that answers from
    /// the state (transcripts, the decrypt gate) must not answer from a
    /// standby's copy, which is as old as its last ownership.
    pub fn guard<S: Clone + Send + Sync + 'static>(
        &self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        router.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            refuse_on_standby,
        ))
    }
}

async fn refuse_on_standby(
    axum::extract::State(lease): axum::extract::State<Lease>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if lease.held() {
        return next.run(request).await;
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        axum::Json(serde_json::json!({
            "ok": false,
            "code": "STANDBY",
            "message": "this instance is standing by; another instance of its group owns the state",
        })),
    )
        .into_response()
}

/// How long a revocation waits for the loop to hand over (a batch that
/// must first be made durable). Beyond it the lease moves anyway.
pub const REVOKE_WAIT: Duration = Duration::from_secs(60);

/// What the group told this instance.
#[derive(Debug)]
pub enum Event {
    /// Partitions of the lease topic assigned to this instance.
    Assigned(Vec<i32>),
    /// Partitions taken away; the loop answers on the sender once it has
    /// released them (dropping it answers too).
    Revoked(Vec<i32>, SyncSender<()>),
    /// The broker fenced this member: another instance joined with the same
    /// `group.instance.id`.
    Fenced(String),
}

/// The rebalance callbacks of the member consumer: they forward what the
/// group decided to the loop.
struct Member {
    events: UnboundedSender<Event>,
}

impl ClientContext for Member {}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let (ack, answered) = sync_channel(1);
            if self
                .events
                .send(Event::Revoked(partitions(list), ack))
                .is_ok()
                && answered.recv_timeout(REVOKE_WAIT).is_err()
            {
                tracing::warn!(
                    wait = ?REVOKE_WAIT,
                    "the loop did not release revoked partitions in time; handing them over anyway"
                );
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // The member never reads records: its partitions only say
                // what it owns.
                if let Err(e) = consumer.pause(list) {
                    tracing::warn!(error = %e, "pausing the membership consumer");
                }
                let _ = self.events.send(Event::Assigned(partitions(list)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// This instance's membership in the group; dropping it leaves.
pub struct Membership {
    events: UnboundedReceiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The member consumer's settings.
pub fn member_config(kafka: &KafkaConfig, group: &str, instance_id: &str) -> rdkafka::ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", format!("{group}.members"))
        .set("group.instance.id", instance_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (kafka.session_timeout_ms / 5).max(100).to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest");
    // `kafka.client` has the last word (a broker that needs other timings).
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
    config
}

impl Membership {
    /// Joins `<group>.members` as `instance_id`, subscribed to `lease_topic`
    /// (partition 0 is the lease).
    ///
    /// # Errors
    /// [`KafkaError`] if the consumer cannot be created or subscribed.
    pub fn join(
        kafka: &KafkaConfig,
        group: &str,
        instance_id: &str,
        lease_topic: &str,
    ) -> Result<Self, KafkaError> {
        let (tx, events) = unbounded_channel();
        let consumer: BaseConsumer<Member> = member_config(kafka, group, instance_id)
            .create_with_context(Member { events: tx.clone() })
            .map_err(KafkaError::client("creating the group member"))?;
        consumer
            .subscribe(&[lease_topic])
            .map_err(KafkaError::client("joining the consumer group"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let instance = instance_id.to_string();
        let thread = std::thread::Builder::new()
            .name("trellis-member".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        let _ = tx.send(Event::Fenced(format!(
                            "{reason} ({code:?}): another instance joined as `{instance}`"
                        )));
                        return;
                    }
                    if !matches!(e, RdKafkaError::PartitionEOF(_)) {
                        tracing::debug!(error = %e, "group member");
                    }
                }
            })
            .map_err(|e| KafkaError::Client {
                context: "starting the group member",
                source: RdKafkaError::ClientCreation(e.to_string()),
            })?;
        Ok(Self {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The next event (waits until there is one).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Revocations during the member's close are answered at once: the
        // receiver is gone, so their `send` fails.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /x HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_guarded_router_answers_only_while_the_lease_is_held() {
        let lease = Lease::default();
        let router =
            lease.guard(axum::Router::new().route("/x", axum::routing::get(|| async { "state" })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        let standby = get(addr).await;
        assert!(standby.starts_with("HTTP/1.1 503"), "{standby}");
        assert!(standby.contains("retry-after: 1"), "{standby}");
        assert!(standby.contains("\"code\":\"STANDBY\""), "{standby}");
        assert!(
            !standby.contains("state\r\n") && !standby.ends_with("state"),
            "{standby}"
        );
        lease.set(true);
        let owner = get(addr).await;
        assert!(
            owner.starts_with("HTTP/1.1 200") && owner.ends_with("state"),
            "{owner}"
        );
        lease.set(false);
        assert!(get(addr).await.starts_with("HTTP/1.1 503"));
    }
}
