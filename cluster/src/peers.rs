//! [`Peers`]: this node's client of the other nodes' internal listeners.
//!
//! Operations to one destination go through that destination's queue; a sender task takes
//! everything queued as one batch (one HTTP request on a pooled keep-alive connection), with
//! at most [`BATCHES_IN_FLIGHT`] batches on the wire per peer, so batches grow exactly when the
//! peer is busy. Each peer has its own circuit breaker (`peer:<node id>@<addr>` in
//! `/admin/circuits`): a dead peer costs microseconds per operation, not a timeout each.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use surge_supervisors::{CallError, CircuitBreaker, CircuitConfig, CircuitRegistry};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::rpc::{
    Answers, Batch, MAX_OPS_PER_BATCH, OpAnswer, Refusal, SECRET_HEADER, SHARD_OPS_ROUTE, ShardOp,
};

/// Batches on the wire at once per peer. More lets a slow hold not delay the next batch;
/// fewer makes bigger batches. Four keeps both cores busy without a connection per request.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// Operations that may wait for one peer before senders are refused (503): the queue is
/// bounded so that a slow peer cannot grow this node's memory.
pub const MAX_QUEUED_PER_PEER: usize = 8_192;
/// Added to a batch's longest hold wait for its HTTP deadline.
const TRANSPORT_SLACK: Duration = Duration::from_millis(500);
/// Longest a coupon's actor on its owner takes to answer an issue (the actor's own answer
/// deadline is 5 s by default).
const COUPON_OP_WAIT: Duration = Duration::from_secs(6);
/// Deadline of a batch without holds.
const PLAIN_BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A destination: node id and address (a node that comes back elsewhere gets a new queue).
type PeerKey = (String, String);

/// One queued operation and where its answer goes.
#[derive(Debug)]
struct Pending {
    op: ShardOp,
    reply: oneshot::Sender<OpAnswer>,
}

/// Counters of forwarding.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Operations sent to peers.
    pub ops_sent: AtomicU64,
    /// Batches sent (ops / batches is the batching factor).
    pub batches_sent: AtomicU64,
    /// Batches that failed on the wire.
    pub batches_failed: AtomicU64,
}

/// The client of every peer.
#[derive(Debug, Clone)]
pub struct Peers {
    http: reqwest::Client,
    secret: Arc<SecretString>,
    circuits: CircuitRegistry,
    /// Concurrency decision: a std lock for a map lookup, never held across an await.
    queues: Arc<Mutex<HashMap<PeerKey, mpsc::Sender<Pending>>>>,
    stats: Arc<PeerStats>,
}

/// A breaker's name for a peer at an address (`peer:<node>@<addr>`): a node that comes back
/// at a new address starts with a closed breaker, while one that keeps its address (compose)
/// keeps its history. Breaker names are `&'static str`; each name is leaked once (a cluster
/// has a handful of nodes and addresses), never once per call.
fn breaker_name(node_id: &str, addr: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let name = format!("peer:{node_id}@{addr}");
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

impl Peers {
    /// A client that authenticates with `secret`.
    pub fn new(secret: SecretString, circuits: CircuitRegistry) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(BATCHES_IN_FLIGHT * 2)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            secret: Arc::new(secret),
            circuits,
            queues: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// Forwarding counters.
    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }

    /// Sends `op` to `node_id` at `addr` and waits for its answer.
    pub async fn send(&self, node_id: &str, addr: &str, op: ShardOp) -> OpAnswer {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(node_id, addr);
        if queue.try_send(Pending { op, reply }).is_err() {
            return OpAnswer::Refused(Refusal::Overloaded);
        }
        answer.await.unwrap_or_else(|_| {
            OpAnswer::Refused(Refusal::Undetermined {
                message: "the forwarding task stopped".into(),
            })
        })
    }

    /// Sends `op` without waiting for its answer (releases, notices).
    pub fn tell(&self, node_id: &str, addr: &str, op: ShardOp) {
        let (reply, _) = oneshot::channel();
        let _ = self.queue(node_id, addr).try_send(Pending { op, reply });
    }

    fn queue(&self, node_id: &str, addr: &str) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (node_id.to_owned(), addr.to_owned());
        if let Some(queue) = queues.get(&key).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (tx, rx) = mpsc::channel(MAX_QUEUED_PER_PEER);
        let breaker = self
            .circuits
            .get_or_create(breaker_name(node_id, addr), CircuitConfig::default());
        tokio::spawn(
            PeerSender {
                http: self.http.clone(),
                url: format!("http://{addr}{SHARD_OPS_ROUTE}"),
                secret: self.secret.clone(),
                breaker,
                stats: self.stats.clone(),
            }
            .run(rx),
        );
        queues.insert(key, tx.clone());
        tx
    }
}

/// The sender task of one peer.
#[derive(Debug)]
struct PeerSender {
    http: reqwest::Client,
    url: String,
    secret: Arc<SecretString>,
    breaker: Arc<CircuitBreaker>,
    stats: Arc<PeerStats>,
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let this = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_OPS_PER_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.send(batch).await;
                drop(permit);
            });
        }
    }

    async fn send(&self, batch: Vec<Pending>) {
        let ops: Vec<ShardOp> = batch.iter().map(|p| p.op.clone()).collect();
        let longest_wait = ops
            .iter()
            .filter_map(|op| match op {
                ShardOp::Hold { within_ms, .. } => Some(Duration::from_millis(*within_ms)),
                ShardOp::IssueCoupon { .. } | ShardOp::CouponStatus { .. } => Some(COUPON_OP_WAIT),
                _ => None,
            })
            .max();
        let timeout = longest_wait.map_or(PLAIN_BATCH_TIMEOUT, |w| w + TRANSPORT_SLACK);
        self.stats
            .ops_sent
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
        let result = self
            .breaker
            .call(|| async {
                let response = self
                    .http
                    .post(&self.url)
                    .header(SECRET_HEADER, self.secret.expose_secret())
                    .timeout(timeout)
                    .json(&Batch { ops: ops.clone() })
                    .send()
                    .await
                    .map_err(Failure::from)?;
                if !response.status().is_success() {
                    return Err(Failure::Status(response.status().as_u16()));
                }
                let answers: Answers = response.json().await.map_err(Failure::from)?;
                if answers.answers.len() == ops.len() {
                    Ok(answers.answers)
                } else {
                    Err(Failure::Status(0))
                }
            })
            .await;
        match result {
            Ok(answers) => {
                for (pending, answer) in batch.into_iter().zip(answers) {
                    let _ = pending.reply.send(answer);
                }
            }
            Err(e) => {
                self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %self.url, error = %e, "forwarded batch failed");
                // Nothing was held unless the request may have reached the peer.
                let reached = match &e {
                    CallError::Open { .. } => false,
                    CallError::Inner(f) => f.may_have_reached(),
                };
                for pending in batch {
                    let refusal = match pending.op {
                        ShardOp::Hold { .. } | ShardOp::IssueCoupon { .. } if reached => {
                            Refusal::Undetermined {
                                message: format!("the owner did not answer: {e}"),
                            }
                        }
                        _ => Refusal::Unavailable {
                            message: format!("the owner could not be reached: {e}"),
                        },
                    };
                    let _ = pending.reply.send(OpAnswer::Refused(refusal));
                }
            }
        }
    }
}

/// Why a batch failed on the wire.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The request could not be sent or answered.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The peer answered with an error status (0: a malformed answer).
    #[error("status {0}")]
    Status(u16),
}

impl Failure {
    /// Whether the batch's holds must count as undetermined: only when the peer may still be
    /// working on them (no answer in time). A connection that was refused, reset or closed
    /// (a peer that stopped, or a pooled connection it closed on its way out) is retried as
    /// "unavailable": if a hold did land on the peer after all, its units stay in the owner's
    /// allotment row, unsold, until the owner gives the allotment back (drain, passivation or
    /// a take-over): an undersell for a while, never an oversell.
    fn may_have_reached(&self) -> bool {
        match self {
            Self::Http(e) => e.is_timeout(),
            Self::Status(status) => *status == 0,
        }
    }
}
