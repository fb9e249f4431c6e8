//! Bench members: signed up and logged in through the API before the measured phase.
//!
//! Login ids and the password follow from the seed, so a second run with the same seed against
//! the same node logs the existing members in (sign-up answers `DUPLICATE_LOGIN_ID`) instead of
//! failing or piling up new ones. Hashing a password costs the node tens of milliseconds of CPU,
//! so set-up runs a bounded number of members at a time and is timed apart from the run.

use crate::api::{Api, SignUp};
use crate::concurrent::bounded;
use crate::error::BenchError;
use crate::progress::Progress;

/// Members signed up and logged in at once. The node hashes each password (argon2, ~20 ms of
/// one core), so more than a few in flight only queues on its cores.
pub const SETUP_CONCURRENCY: usize = 8;

/// A logged-in bench member.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub access_token: String,
}

/// The login id of bench member `index` for `seed`: `bench<seed>_<index>` (at most 41 chars,
/// within the contract's 4–64 `[A-Za-z0-9_.-]`).
pub fn login_id(seed: u64, index: usize) -> String {
    format!("bench{seed}_{index}")
}

/// The password of every bench member of `seed`. Not a secret: bench members exist only for
/// rehearsals on a node made for them.
pub fn password(seed: u64) -> String {
    format!("bench-password-{seed}")
}

/// The members of a run.
#[derive(Debug)]
pub struct Members {
    /// In index order: `users[i]` has [`login_id`]`(seed, i)`.
    pub users: Vec<BenchUser>,
    /// How many were signed up now (the rest existed from an earlier run with the same seed).
    pub created: usize,
}

/// Signs up (or finds) and logs in `count` members, [`SETUP_CONCURRENCY`] at a time.
pub async fn provision(
    api: &Api,
    seed: u64,
    count: usize,
    progress: &Progress,
) -> Result<Members, BenchError> {
    let bar = progress.bar("members", count as u64);
    let outcomes = bounded(0..count, SETUP_CONCURRENCY, |index| {
        let api = api.clone();
        let bar = bar.clone();
        async move {
            let login_id = login_id(seed, index);
            let password = password(seed);
            let created = api.sign_up(&login_id, &password).await? == SignUp::Created;
            let access_token = api.login(&login_id, &password).await?;
            bar.inc(1);
            Ok::<_, BenchError>((created, BenchUser { access_token }))
        }
    })
    .await;
    bar.finish_and_clear();
    let mut members = Members {
        users: Vec::with_capacity(count),
        created: 0,
    };
    for outcome in outcomes {
        let (created, user) = outcome?;
        members.created += usize::from(created);
        members.users.push(user);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_ids_follow_from_the_seed_and_fit_the_contract() {
        assert_eq!(login_id(7, 3), login_id(7, 3));
        assert_ne!(login_id(7, 3), login_id(8, 3));
        let longest = login_id(u64::MAX, usize::MAX);
        assert!((4..=64).contains(&longest.len()), "{longest}");
        assert!(
            longest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
        assert!((8..=128).contains(&password(u64::MAX).len()));
    }
}
