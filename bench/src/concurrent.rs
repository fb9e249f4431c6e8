//! Bounded fan-out for set-up and read-back work (not the measured phase: see `driver`).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `work` on every input, at most `limit` at a time, and returns the outputs in input
/// order. A panic in one task is resumed here.
pub async fn bounded<T, R, F, Fut>(
    inputs: impl IntoIterator<Item = T>,
    limit: usize,
    work: F,
) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut tasks = JoinSet::new();
    for (position, input) in inputs.into_iter().enumerate() {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = Arc::clone(&permits).acquire_owned().await.ok();
        let task = work(input);
        tasks.spawn(async move {
            let output = task.await;
            drop(permit);
            (position, output)
        });
    }
    let mut outputs = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(done) => outputs.push(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a cancelled task ends otherwise, and nothing here cancels them.
            Err(_) => {}
        }
    }
    outputs.sort_by_key(|(position, _)| *position);
    outputs.into_iter().map(|(_, output)| output).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn outputs_keep_input_order_and_the_limit_holds() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let out = bounded(0..20u64, 3, |n| {
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20 - n)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                n * 2
            }
        })
        .await;
        assert_eq!(out, (0..20).map(|n| n * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }
}
