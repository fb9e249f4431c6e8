//! Password hashing on a few dedicated threads.
//!
//! argon2id needs 19 MiB of working memory per hash. Allocated and freed per hash, it drives
//! glibc's adaptive mmap threshold up until those blocks come from the heap, which then
//! fragments: 400 hashes left a node at ~290 MiB (measured; with the threshold pinned it stayed
//! at 19 MiB). So each of a fixed set of long-lived workers allocates its blocks once and hashes
//! into them every time: memory is bounded at one block set per worker. The queue in front of
//! the workers is bounded too: a full queue answers 503 instead of letting logins pile up.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Hashing threads. Two match the machines Surge is sized for; each holds one 19 MiB block.
const WORKERS: usize = 2;
/// Hashes that may wait for a worker; beyond it sign-ups and logins get 503 with Retry-After.
const MAX_QUEUED: usize = 512;
/// Largest memory cost a stored hash may ask for (64 MiB); anything larger does not verify.
const MAX_BLOCKS: usize = 64 * 1024;

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
    let mut memory = Memory::default();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(Job::Hash(password, reply)) => {
                let _ = reply.send(memory.hash(&password));
            }
            Ok(Job::Verify(password, hash, reply)) => {
                let _ = reply.send(memory.verify(&password, &hash));
            }
            Err(_) => return,
        }
    }
}

/// One worker's argon2 working memory, allocated once and reused by every hash.
#[derive(Default)]
struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    /// The raw hash of `password` with `argon`'s parameters.
    fn compute(
        &mut self,
        argon: &Argon2<'_>,
        password: &[u8],
        salt: Salt<'_>,
        output_len: usize,
    ) -> argon2::password_hash::Result<Output> {
        let needed = argon.params().block_count();
        if needed > MAX_BLOCKS {
            return Err(argon2::password_hash::Error::ParamValueInvalid(
                argon2::password_hash::errors::InvalidValue::TooLong,
            ));
        }
        if self.blocks.len() < needed {
            self.blocks.resize(needed, Block::default());
        }
        let mut salt_buf = [0u8; 64];
        let salt = salt.decode_b64(&mut salt_buf)?;
        let blocks = &mut self.blocks[..needed];
        Output::init_with(output_len, |out| {
            Ok(argon.hash_password_into_with_memory(password, salt, out, &mut *blocks)?)
        })
    }

    /// A new argon2id hash in PHC string form, with the default parameters.
    fn hash(&mut self, password: &str) -> Result<String, String> {
        let argon = Argon2::default();
        let salt = SaltString::generate(&mut OsRng);
        let output = self
            .compute(
                &argon,
                password.as_bytes(),
                salt.as_salt(),
                Params::DEFAULT_OUTPUT_LEN,
            )
            .map_err(|e| e.to_string())?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon.params()).map_err(|e| e.to_string())?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches a PHC string, with the parameters the string names. The
    /// comparison of outputs is constant-time.
    fn verify(&mut self, password: &str, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let (Ok(params), Ok(algorithm), Some(expected), Some(salt)) = (
            Params::try_from(&parsed),
            Algorithm::try_from(parsed.algorithm),
            parsed.hash,
            parsed.salt,
        ) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let argon = Argon2::new(algorithm, version, params);
        self.compute(&argon, password.as_bytes(), salt, expected.len())
            .is_ok_and(|output| output == expected)
    }
}

/// Hashes on the calling thread (the dummy hash at start-up).
pub fn hash_now(password: &str) -> Result<String, String> {
    Memory::default().hash(password)
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
        Self::start_with_queue(MAX_QUEUED)
    }

    /// Starts the workers with room for `max_queued` waiting jobs.
    fn start_with_queue(max_queued: usize) -> Result<Self, String> {
        let (jobs, rx) = sync_channel(max_queued);
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

    #[test]
    fn hashes_are_standard_phc_strings_that_the_argon2_crate_verifies() {
        use argon2::password_hash::PasswordVerifier;
        let hash = hash_now("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // And hashes made the usual way verify here (hashes stored before this change).
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::generate(&mut OsRng);
        let old = Argon2::default()
            .hash_password(b"older", &salt)
            .unwrap()
            .to_string();
        let mut memory = Memory::default();
        assert!(memory.verify("older", &old));
        assert!(!memory.verify("Older", &old));
    }

    #[tokio::test]
    async fn a_full_queue_answers_overloaded_at_once_instead_of_waiting() {
        let workers = PasswordWorkers::start_with_queue(1).unwrap();
        // Ten hashes asked for at once: each takes milliseconds, so the two workers and the one
        // queue slot take three, and the rest are refused without waiting.
        let receivers: Vec<_> = (0..10)
            .map(|n| {
                let (reply, rx) = oneshot::channel();
                (
                    workers.submit(Job::Hash(format!("password {n}"), reply)),
                    rx,
                )
            })
            .collect();
        let refused = receivers
            .iter()
            .filter(|(submitted, _)| {
                matches!(
                    submitted,
                    Err(ApiError::Overloaded {
                        retry_after_secs: 1,
                        ..
                    })
                )
            })
            .count();
        let accepted = receivers.len() - refused;
        assert!(
            (1..=WORKERS + 1 + 1).contains(&accepted),
            "{accepted} accepted"
        );
        assert!(refused >= 10 - (WORKERS + 2), "{refused} refused");
        for (submitted, rx) in receivers {
            if submitted.is_ok() {
                assert!(rx.await.unwrap().is_ok(), "an accepted hash is done");
            }
        }
    }

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
