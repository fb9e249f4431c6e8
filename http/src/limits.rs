//! Rate limits on the flows a script would abuse: guessing passwords (per IP and per account,
//! with an exponential back-off per account after repeated failures), making accounts (per
//! IP), and placing orders or taking coupons (per member).
//!
//! Each limit is a GCRA limiter from `governor`, shared by every connection of the node (one
//! instance in the state, not one per connection: see tower's `RateLimitLayer` trap in
//! `../shared/notes.md`). Limits count per node: a cluster of N nodes behind a load balancer
//! lets a client up to N times a limit, which the README states. A refusal is 429
//! `RATE_LIMITED` with `Retry-After` and happens before any work or write.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderName;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;
use crate::state::AppState;

/// A rate as configured: `count` requests per `period`, as a burst of `count` that refills
/// evenly over the period (`30/min` allows 30 at once, then one every 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period (and the burst).
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// The `governor` quota of this rate.
    fn quota(self) -> Quota {
        let each = self.per / self.count.get();
        Quota::with_period(each.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `<count>/<s|min|h>`, e.g. `10/s`, `30/min`, `100/h`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let wrong = || format!("'{raw}' is not a rate like 10/s, 30/min or 100/h");
        let (count, unit) = raw.trim().split_once('/').ok_or_else(wrong)?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_RATE_COUNT).contains(n))
            .and_then(NonZeroU32::new)
            .ok_or_else(wrong)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3_600),
            _ => return Err(wrong()),
        };
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The largest count a rate may name.
const MAX_RATE_COUNT: u32 = 1_000_000;

/// What `SURGE_RATE_LIMITS` and the `SURGE_LIMIT_*` settings say.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// `SURGE_RATE_LIMITS`: `false` turns every limit off (load tests from one machine).
    pub enabled: bool,
    /// Login attempts per client IP (credential stuffing over many accounts).
    pub login_per_ip: Rate,
    /// Login attempts per login id, whoever sends them (guessing one account's password).
    pub login_per_account: Rate,
    /// Failed logins in a row after which an account's logins back off exponentially.
    pub failures_before_backoff: u32,
    /// Sign-ups per client IP.
    pub signups_per_ip: Rate,
    /// Order placements per member.
    pub orders_per_member: Rate,
    /// Coupon issue requests per member.
    pub issues_per_member: Rate,
    /// A header naming the client's address, set by a trusted load balancer in front of the
    /// node (e.g. `x-forwarded-for`; its last entry is used, the one the balancer appended).
    /// `None`: the connection's peer address.
    pub client_ip_header: Option<HeaderName>,
}

/// The first back-off after `failures_before_backoff` failures; it doubles with each further
/// failure up to [`MAX_LOGIN_BACKOFF`].
const FIRST_LOGIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest an account's logins are held back after failures.
const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Accounts whose failures are tracked at once; beyond it, new accounts are not tracked until
/// the next prune (their per-account and per-IP limits still apply). Bounds the memory an
/// attacker can make the node spend on made-up login ids (~100 bytes each).
const MAX_TRACKED_ACCOUNTS: usize = 100_000;
/// A failure streak older than this is forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(30 * 60);

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// The node's limiters; `None` inside when limits are off.
#[derive(Debug, Default)]
pub struct RateLimits {
    limiters: Option<Limiters>,
    client_ip_header: Option<HeaderName>,
}

struct Limiters {
    clock: DefaultClock,
    login_per_ip: Keyed<IpAddr>,
    login_per_account: Keyed<String>,
    signups_per_ip: Keyed<IpAddr>,
    orders_per_member: Keyed<i64>,
    issues_per_member: Keyed<i64>,
    failures_before_backoff: u32,
    /// Failed-login streaks by login id (lower case). A plain mutex: it is held for one map
    /// operation, never across an await.
    failures: Mutex<HashMap<String, FailureStreak>>,
}

impl fmt::Debug for Limiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct FailureStreak {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl RateLimits {
    /// Limiters for these settings.
    pub fn new(settings: &RateLimitSettings) -> Self {
        let limiters = settings.enabled.then(|| Limiters {
            clock: DefaultClock::default(),
            login_per_ip: RateLimiter::keyed(settings.login_per_ip.quota()),
            login_per_account: RateLimiter::keyed(settings.login_per_account.quota()),
            signups_per_ip: RateLimiter::keyed(settings.signups_per_ip.quota()),
            orders_per_member: RateLimiter::keyed(settings.orders_per_member.quota()),
            issues_per_member: RateLimiter::keyed(settings.issues_per_member.quota()),
            failures_before_backoff: settings.failures_before_backoff,
            failures: Mutex::default(),
        });
        Self {
            limiters,
            client_ip_header: settings.client_ip_header.clone(),
        }
    }

    /// No limit at all (`SURGE_RATE_LIMITS=off`).
    pub fn off() -> Self {
        Self::default()
    }

    /// A login attempt for `login_id` from `ip`: refused while the IP or the account is over
    /// its rate, or while the account backs off after failures.
    pub fn check_login(&self, ip: IpAddr, login_id: &str) -> Result<(), ApiError> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        let account = account_key(login_id);
        let now = Instant::now();
        if let Some(until) = l
            .lock_failures()
            .get(&account)
            .and_then(|s| s.blocked_until)
            .filter(|until| *until > now)
        {
            return Err(limited(
                "too many failed logins for this account; wait before trying again",
                until - now,
            ));
        }
        l.check(
            &l.login_per_ip,
            &network(ip),
            "too many login attempts from this address",
        )?;
        l.check(
            &l.login_per_account,
            &account,
            "too many login attempts for this account",
        )?;
        l.count_attempt(account, now);
        Ok(())
    }
}

impl Limiters {
    /// Counts a login attempt against the account's streak *before* the password is checked,
    /// as a failure until [`RateLimits::login_succeeded`] ends the streak: attempts sent in
    /// parallel cannot slip past the back-off while their hashes run. After
    /// `failures_before_backoff` in a row, the account's next login waits 1 s, then 2 s, 4 s …
    /// up to 15 min. Unknown login ids count the same (the limiter is no oracle).
    fn count_attempt(&self, account: String, now: Instant) {
        let mut failures = self.lock_failures();
        if failures.len() >= MAX_TRACKED_ACCOUNTS && !failures.contains_key(&account) {
            // Full until the next prune (once a minute): new accounts are not tracked, their
            // per-address and per-account rates still apply.
            tracing::warn!("failed-login tracking is full; this account is not tracked");
            return;
        }
        let streak = failures.entry(account).or_insert(FailureStreak {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if !is_remembered(streak, now) {
            streak.failures = 0;
        }
        streak.failures = streak.failures.saturating_add(1);
        streak.last = now;
        if let Some(over) = streak.failures.checked_sub(self.failures_before_backoff) {
            let backoff = FIRST_LOGIN_BACKOFF
                .saturating_mul(2u32.saturating_pow(over.min(20)))
                .min(MAX_LOGIN_BACKOFF);
            streak.blocked_until = Some(now + backoff);
        }
    }
}

impl RateLimits {
    /// A successful login ends the account's failure streak.
    pub fn login_succeeded(&self, login_id: &str) {
        if let Some(l) = &self.limiters {
            l.lock_failures().remove(&account_key(login_id));
        }
    }

    /// A sign-up from `ip`.
    pub fn check_signup(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        l.check(
            &l.signups_per_ip,
            &network(ip),
            "too many sign-ups from this address",
        )
    }

    /// An order placement by member `user_id`.
    pub fn check_order(&self, user_id: i64) -> Result<(), ApiError> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        l.check(
            &l.orders_per_member,
            &user_id,
            "too many orders in a short time",
        )
    }

    /// A coupon issue request by member `user_id`.
    pub fn check_issue(&self, user_id: i64) -> Result<(), ApiError> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        l.check(
            &l.issues_per_member,
            &user_id,
            "too many coupon requests in a short time",
        )
    }

    /// Forgets keys whose limits are full again and failure streaks that are over, so memory
    /// follows the recent clients only. Called by a background task.
    pub fn prune(&self) {
        let Some(l) = &self.limiters else { return };
        l.login_per_ip.retain_recent();
        l.login_per_account.retain_recent();
        l.signups_per_ip.retain_recent();
        l.orders_per_member.retain_recent();
        l.issues_per_member.retain_recent();
        let now = Instant::now();
        l.lock_failures().retain(|_, s| is_remembered(s, now));
    }

    /// The client address of a request: the last entry of the configured header when a load
    /// balancer sets it, else the connection's peer.
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        if let Some(name) = &self.client_ip_header {
            let from_header = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|last| last.trim().parse::<IpAddr>().ok());
            if from_header.is_some() {
                return from_header;
            }
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    }
}

impl Limiters {
    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Keyed<K>,
        key: &K,
        message: &'static str,
    ) -> Result<(), ApiError> {
        limiter
            .check_key(key)
            .map_err(|not_until| limited(message, not_until.wait_time_from(self.clock.now())))
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailureStreak>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn is_remembered(streak: &FailureStreak, now: Instant) -> bool {
    streak.blocked_until.is_some_and(|until| until > now)
        || now.duration_since(streak.last) < FAILURE_MEMORY
}

/// Login ids are unique regardless of case, so their limits are too; a login id longer than
/// any valid one is cut (it cannot match an account, and must not grow the key).
fn account_key(login_id: &str) -> String {
    login_id
        .chars()
        .take(64)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The key of a client address (rate limits and the per-address connection cap): an IPv6
/// client counts by its /64, since one host is usually handed a whole /64 and could otherwise
/// rotate addresses for free.
pub(crate) fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

fn limited(message: &'static str, wait: Duration) -> ApiError {
    ApiError::RateLimited {
        message,
        retry_after_secs: u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

/// The client's address, as the rate limits see it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(
            state
                .limits
                .client_ip(parts)
                .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            enabled: true,
            login_per_ip: "100/min".parse().unwrap(),
            login_per_account: "100/min".parse().unwrap(),
            failures_before_backoff: 3,
            signups_per_ip: "2/min".parse().unwrap(),
            orders_per_member: "3/s".parse().unwrap(),
            issues_per_member: "1/h".parse().unwrap(),
            client_ip_header: None,
        }
    }

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "30/min".parse().unwrap();
        assert_eq!(rate.count.get(), 30);
        assert_eq!(rate.per, Duration::from_secs(60));
        assert_eq!(rate.to_string(), "30/min");
        for bad in ["", "30", "0/s", "-1/s", "10/day", "x/min", "2000000/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_burst_passes_then_the_next_waits() {
        let limits = RateLimits::new(&settings());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(limits.check_signup(ip).is_ok());
        assert!(limits.check_signup(ip).is_ok());
        let Err(ApiError::RateLimited {
            retry_after_secs, ..
        }) = limits.check_signup(ip)
        else {
            panic!("the third sign-up in a minute passed");
        };
        // 2/min refills one every 30 s.
        assert!((1..=31).contains(&retry_after_secs), "{retry_after_secs}");
        // Another address has its own allowance.
        assert!(limits.check_signup("203.0.113.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let limits = RateLimits::new(&settings());
        assert!(
            limits
                .check_signup("2001:db8:1:2::1".parse().unwrap())
                .is_ok()
        );
        assert!(
            limits
                .check_signup("2001:db8:1:2::2".parse().unwrap())
                .is_ok()
        );
        assert!(
            limits
                .check_signup("2001:db8:1:2:ffff::3".parse().unwrap())
                .is_err()
        );
        assert!(
            limits
                .check_signup("2001:db8:1:3::1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn failures_back_off_exponentially_and_a_success_ends_the_streak() {
        let limits = RateLimits::new(&settings());
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        // Three attempts in a row without a success (they count before their password is
        // checked, so attempts sent at once cannot slip past the back-off).
        assert!(limits.check_login(ip, "Alice").is_ok());
        assert!(limits.check_login(ip, "alice").is_ok());
        assert!(limits.check_login(ip, "ALICE").is_ok());
        // The account now waits, whatever the case of the id.
        assert!(matches!(
            limits.check_login(ip, "aLiCe"),
            Err(ApiError::RateLimited { .. })
        ));
        // Another account is not held back.
        assert!(limits.check_login(ip, "bob").is_ok());
        limits.login_succeeded("alice");
        assert!(limits.check_login(ip, "alice").is_ok());
    }

    #[test]
    fn each_further_failure_doubles_the_wait_up_to_the_cap() {
        let limits = RateLimits::new(&settings());
        let l = limits.limiters.as_ref().unwrap();
        let blocked = || {
            let until = l
                .lock_failures()
                .get("carol")
                .unwrap()
                .blocked_until
                .unwrap();
            until.duration_since(Instant::now())
        };
        for _ in 0..3 {
            l.count_attempt("carol".into(), Instant::now());
        }
        assert!(blocked() <= Duration::from_secs(1));
        l.count_attempt("carol".into(), Instant::now());
        assert!(blocked() > Duration::from_secs(1));
        assert!(blocked() <= Duration::from_secs(2));
        for _ in 0..30 {
            l.count_attempt("carol".into(), Instant::now());
        }
        assert!(blocked() <= MAX_LOGIN_BACKOFF);
        assert!(blocked() > MAX_LOGIN_BACKOFF - Duration::from_secs(5));
    }

    #[test]
    fn members_are_limited_separately_and_off_means_off() {
        let limits = RateLimits::new(&settings());
        for _ in 0..3 {
            assert!(limits.check_order(1).is_ok());
        }
        assert!(limits.check_order(1).is_err());
        assert!(limits.check_order(2).is_ok());
        assert!(limits.check_issue(1).is_ok());
        assert!(limits.check_issue(1).is_err());
        let off = RateLimits::off();
        for _ in 0..1_000 {
            assert!(off.check_order(1).is_ok());
            assert!(
                off.check_login("127.0.0.1".parse().unwrap(), "dave")
                    .is_ok()
            );
        }
        assert!(
            off.check_login("127.0.0.1".parse().unwrap(), "dave")
                .is_ok()
        );
    }
}
