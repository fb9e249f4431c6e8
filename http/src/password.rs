//! Password hashing on a few dedicated threads.
//!
//! argon2id needs 19 MiB per hash. Run on tokio's blocking pool, every new pool thread got its
//! own allocator arena holding such a block, and a burst of logins left the process at
//! gigabytes that were never given back. A fixed set of long-lived workers keeps the memory
//! bounded (one block per worker, reused) and the queue in front of them is bounded too: a
//! full queue answers 503 instead of letting logins pile up.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Hashing threads. Two match the machines Surge is sized for; each holds one 19 MiB block.
const WORKERS: usize = 2;
/// Hashes that may wait for a worker; beyond it sign-ups and logins get 503 with Retry-After.
const MAX_QUEUED: usize = 512;

enum Job {
    Hash(String, oneshot::Sender<Result<String, String>>),
    Verify(String, String, oneshot::Sender<bool>),
}

/// Handle to the hashing workers. Cheap to clone; the workers end when every handle is gone.
#[derive(Clone)]
pub struct PasswordWorkers {
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for PasswordWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordWorkers")
            .field("workers", &WORKERS)
            .finish()
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(Job::Hash(password, reply)) => {
                let _ = reply.send(hash_now(&password));
            }
            Ok(Job::Verify(password, hash, reply)) => {
                let _ = reply.send(verify_now(&password, &hash));
            }
            Err(_) => return,
        }
    }
}

/// Hashes on the calling thread (start-up and tests only).
pub fn hash_now(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn busy() -> ApiError {
    ApiError::Overloaded {
        message: "too many logins and sign-ups at once; try again shortly".into(),
        retry_after_secs: 1,
    }
}

impl PasswordWorkers {
    /// Starts the workers.
    pub fn start() -> Result<Self, String> {
        let (jobs, rx) = sync_channel(MAX_QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..WORKERS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("surge-argon2-{n}"))
                .spawn(move || work(&rx))
                .map_err(|e| e.to_string())?;
        }
        Ok(Self { jobs })
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => busy(),
            TrySendError::Disconnected(_) => ApiError::internal("password workers stopped"),
        })
    }

    /// A new argon2id hash of `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash(password, reply))?;
        rx.await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify(password, hash, reply))?;
        rx.await.map_err(ApiError::internal)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let workers = PasswordWorkers::start().unwrap();
        let hash = workers.hash("correct horse".into()).await.unwrap();
        assert!(
            workers
                .verify("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!workers.verify("wrong horse".into(), hash).await.unwrap());
        assert!(
            !workers
                .verify("x".into(), "not a hash".into())
                .await
                .unwrap()
        );
    }
}
