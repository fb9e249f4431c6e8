//! Moves coupon issues from the Redis stream into the database (Redis mode).
//!
//! One writer per node, a member of the consumer group under the node's id. Each round it
//! writes a batch of entries in one group-committed transaction (idempotent on coupon +
//! member, so an entry delivered twice is written once) and only then acknowledges and deletes
//! them: a writer killed between the two leaves the entries pending, and they are written
//! again, harmlessly, by whoever picks them up. Picking up happens two ways: a node restarted
//! under the same id first re-reads its own pending entries; any node claims entries another
//! consumer left pending for longer than `claim_idle` (`XAUTOCLAIM`).

use std::sync::Arc;
use std::time::Duration;

use surge_persistence::committer::GroupCommitter;
use surge_persistence::redis_coupons::{IssueStream, RedisCoupons, RedisError, StreamIssue};
use surge_supervisors::{CallError, CircuitBreaker};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Entries written per round.
const BATCH: usize = 512;
/// How long one read waits for new entries; also how quickly the writer notices a stop.
const BLOCK: Duration = Duration::from_millis(200);
/// Pause after a failed round, doubled up to [`MAX_BACKOFF`] while failures go on.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts while Redis or the database is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the writer looks for entries a dead consumer left behind.
const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct IssueWriterConfig {
    /// Consumer name in the group: the node id, so a restarted node finds its own pending
    /// entries.
    pub consumer: String,
    /// An entry another consumer read and did not acknowledge for this long is taken over.
    /// Long enough that a live consumer's batch (one transaction) is never stolen mid-write.
    pub claim_idle: Duration,
}

/// Handle to the running writer.
#[derive(Debug)]
pub struct IssueWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl IssueWriter {
    /// Starts the writer.
    pub fn start(
        redis: RedisCoupons,
        committer: GroupCommitter,
        breaker: Arc<CircuitBreaker>,
        config: IssueWriterConfig,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(redis, committer, breaker, config, stopped));
        Self { stop, task }
    }

    /// Stops after the round in progress and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    redis: RedisCoupons,
    committer: GroupCommitter,
    breaker: Arc<CircuitBreaker>,
    config: IssueWriterConfig,
    stopped: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut stream: Option<IssueStream> = None;
    // Own pending entries first: this consumer may have died mid-batch in an earlier life.
    let mut read_pending = true;
    let mut last_claim = tokio::time::Instant::now();
    while !*stopped.borrow() {
        let round = async {
            if stream.is_none() {
                stream = Some(redis.consumer(BLOCK).await.map_err(RoundError::redis)?);
            }
            let Some(s) = stream.as_ref() else {
                return Err(RoundError::Redis("no stream connection".to_owned()));
            };
            let entries = if last_claim.elapsed() >= CLAIM_EVERY {
                last_claim = tokio::time::Instant::now();
                s.claim_idle(&config.consumer, config.claim_idle, BATCH)
                    .await
                    .map_err(RoundError::redis)?
            } else {
                let entries = s
                    .read(&config.consumer, read_pending, BATCH)
                    .await
                    .map_err(RoundError::redis)?;
                if read_pending && entries.is_empty() {
                    read_pending = false;
                }
                entries
            };
            write_batch(s, &committer, entries).await
        };
        // Only Redis's own failures count against its breaker; a database that refuses the
        // batch is the database breaker's business. While the breaker is open the writer
        // waits instead of probing Redis on every round.
        let counted = breaker
            .call_classified(|| round, |e| matches!(e, RoundError::Redis(_)))
            .await;
        match counted {
            Ok(_) => backoff = MIN_BACKOFF,
            Err(CallError::Open { retry_after }) => {
                tokio::time::sleep(retry_after.max(MIN_BACKOFF)).await;
            }
            Err(CallError::Inner(e)) => {
                tracing::warn!(error = %e, "coupon issue writer round failed; retrying");
                stream = None;
                read_pending = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What failed in a round.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("database: {0}")]
    Database(String),
}

impl RoundError {
    fn redis(e: RedisError) -> Self {
        Self::Redis(e.to_string())
    }
}

/// Writes one batch and acknowledges it. Returns how many entries were handled.
async fn write_batch(
    stream: &IssueStream,
    committer: &GroupCommitter,
    entries: Vec<StreamIssue>,
) -> Result<usize, RoundError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = entries.iter().map(|e| e.entry_id.clone()).collect();
    let issues: Vec<_> = entries
        .into_iter()
        .filter_map(|e| {
            if e.issue.is_none() {
                // Not something the issue script wrote; acknowledging it keeps the stream
                // moving, and the log keeps it visible.
                tracing::error!(entry = %e.entry_id, "malformed coupon issue entry dropped");
            }
            e.issue
        })
        .collect();
    if !issues.is_empty() {
        committer
            .issue_coupons(issues)
            .await
            .map_err(|e| RoundError::Database(e.to_string()))?;
    }
    stream.ack(&ids).await.map_err(RoundError::redis)?;
    Ok(ids.len())
}
