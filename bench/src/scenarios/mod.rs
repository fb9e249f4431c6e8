//! The scenarios: what each one creates through the API before the run, what one attempt
//! sends, and what is checked afterwards.

mod browse;
mod coupons;
mod orders;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub use browse::{BrowseWorkload, HealthWorkload, MyPageWorkload, NAME_WORDS};
pub use coupons::CouponWorkload;
pub use orders::{OrderShape, OrderWorkload, StockedItem};

use crate::api::Api;
use crate::concurrent::bounded;
use crate::driver::Workload;
use crate::error::BenchError;
use crate::invariants::InvariantCheck;
use crate::progress::Progress;
use crate::stats::Reply;
use crate::users::{BenchUser, SETUP_CONCURRENCY, provision};

/// Units of each `orders` item: enough that no order runs out, so the run measures placing
/// orders rather than refusing them.
pub const AMPLE_STOCK: u64 = 1_000_000_000;
/// Price of every bench item, in the smallest currency unit.
const ITEM_PRICE: u64 = 10_000;
/// Discount of the bench coupon, in percent.
const COUPON_DISCOUNT_PERCENT: u32 = 10;
/// Shape of an `orders` order: up to 5 lines of up to 3 units.
const MULTI_LINE_ORDER: OrderShape = OrderShape {
    max_lines: 5,
    max_quantity: 3,
};
/// Stock of each `browse` item (nobody buys them).
const BROWSE_STOCK: u64 = 100;

/// What `mixed` sends, with relative weights: mostly reads, some orders, some coupon rushes.
const MIX: [(Part, u32); 5] = [
    (Part::Browse, 50),
    (Part::MyPage, 10),
    (Part::Orders, 20),
    (Part::FlashSale, 10),
    (Part::CouponRush, 10),
];

/// The scenario names of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One item with `--units`, bought one unit at a time by random members.
    FlashSale,
    /// Multi-line orders over `--items` items with ample stock.
    Orders,
    /// One coupon of `--quantity`, issued first come first served to random members.
    CouponRush,
    /// Item reads and name searches, without a token.
    Browse,
    /// A weighted mix: 60% browse, 20% orders, 10% flash sale, 10% coupon rush.
    Mixed,
    /// `GET /health/live`: the HTTP ceiling of the machine.
    Health,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::FlashSale => "flash-sale",
            Self::Orders => "orders",
            Self::CouponRush => "coupon-rush",
            Self::Browse => "browse",
            Self::Mixed => "mixed",
            Self::Health => "health",
        }
    }

    fn needs_members(self) -> bool {
        matches!(
            self,
            Self::FlashSale | Self::Orders | Self::CouponRush | Self::Mixed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Browse,
    MyPage,
    Orders,
    FlashSale,
    CouponRush,
}

/// The random choices of attempt `index` in a run seeded with `seed`. They depend on the two
/// numbers alone, not on timing or on which worker sends the attempt, so the same seed sends
/// the same requests in the same roles.
pub fn attempt_rng(seed: u64, index: u64) -> SmallRng {
    let stream: u64 = SmallRng::seed_from_u64(seed).r#gen();
    SmallRng::seed_from_u64(stream ^ index)
}

/// The sizes a scenario is set up with.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioSize {
    pub members: usize,
    /// Units of the flash-sale item.
    pub units: u64,
    /// Coupons of the coupon rush.
    pub quantity: u64,
    /// Items of `orders` and `browse`.
    pub items: usize,
    pub seed: u64,
}

/// What set-up made, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupSummary {
    pub members: usize,
    /// Members signed up by this run (the others existed from a run with the same seed).
    pub members_created: usize,
    pub items: usize,
    pub coupons: usize,
}

/// An ADMIN login.
#[derive(Debug, Clone)]
pub struct AdminCredentials {
    pub login_id: String,
    pub password: String,
}

/// The members and the admin token a scenario works with; made once, reused by the load
/// steps of `--plot`.
#[derive(Debug, Clone)]
pub struct Cast {
    users: Arc<[BenchUser]>,
    admin_token: Option<String>,
    pub summary: SetupSummary,
    /// How long logging the admin in and provisioning the members took.
    pub assembled_in: Duration,
}

impl Cast {
    /// Logs the admin in (when the scenario creates anything) and provisions the members.
    pub async fn assemble(
        api: &Api,
        scenario: Scenario,
        size: &ScenarioSize,
        admin: Option<&AdminCredentials>,
        progress: &Progress,
    ) -> Result<Self, BenchError> {
        let started = Instant::now();
        let admin_token = if scenario == Scenario::Health {
            None
        } else {
            let admin = admin.ok_or(BenchError::NoAdminCredentials)?;
            Some(api.login(&admin.login_id, &admin.password).await?)
        };
        let mut summary = SetupSummary::default();
        let users: Arc<[BenchUser]> = if scenario.needs_members() {
            let members = provision(api, size.seed, size.members, progress).await?;
            summary.members = members.users.len();
            summary.members_created = members.created;
            members.users.into()
        } else {
            Arc::from(Vec::new())
        };
        Ok(Self {
            users,
            admin_token,
            summary,
            assembled_in: started.elapsed(),
        })
    }

    fn admin_token(&self) -> Result<&str, BenchError> {
        self.admin_token
            .as_deref()
            .ok_or(BenchError::NoAdminCredentials)
    }
}

/// A scenario ready to run: its items and coupons exist, its members are logged in.
#[derive(Debug)]
pub enum Prepared {
    Orders(Arc<OrderWorkload>),
    CouponRush(Arc<CouponWorkload>),
    Browse(BrowseWorkload),
    Mixed(Box<MixedWorkload>),
    Health(HealthWorkload),
}

impl Prepared {
    /// Creates what `scenario` needs (items, a coupon) for one run; `run_tag` makes names and
    /// idempotency keys unique to it. Adds what it made to `cast.summary`.
    pub async fn create(
        api: &Api,
        scenario: Scenario,
        size: &ScenarioSize,
        cast: &mut Cast,
        run_tag: &str,
    ) -> Result<Self, BenchError> {
        let users = Arc::clone(&cast.users);
        let seed = size.seed;
        Ok(match scenario {
            Scenario::Health => Self::Health(HealthWorkload::new(api.clone())),
            Scenario::FlashSale => Self::Orders(Arc::new(
                flash_sale(api, cast, size, users, seed, run_tag).await?,
            )),
            Scenario::Orders => Self::Orders(Arc::new(
                multi_line(api, cast, size, users, seed, run_tag).await?,
            )),
            Scenario::CouponRush => Self::CouponRush(Arc::new(
                coupon_rush(api, cast, size, users, seed, run_tag).await?,
            )),
            Scenario::Browse => Self::Browse(browse(api, cast, size, seed, run_tag).await?),
            Scenario::Mixed => {
                // Each part draws from its own stream, so the choice of part does not steer
                // the choices inside it.
                let part_seed = |part: u64| seed.wrapping_add(part + 1);
                let mixed = MixedWorkload {
                    browse: browse(api, cast, size, part_seed(0), run_tag).await?,
                    my_page: MyPageWorkload::new(api.clone(), Arc::clone(&users), part_seed(4)),
                    orders: Arc::new(
                        multi_line(api, cast, size, Arc::clone(&users), part_seed(1), run_tag)
                            .await?,
                    ),
                    flash_sale: Arc::new(
                        flash_sale(api, cast, size, Arc::clone(&users), part_seed(2), run_tag)
                            .await?,
                    ),
                    coupons: Arc::new(
                        coupon_rush(api, cast, size, users, part_seed(3), run_tag).await?,
                    ),
                    seed,
                };
                Self::Mixed(Box::new(mixed))
            }
        })
    }

    /// Settles every open outcome and checks the scenario's invariants (none for `browse`
    /// and `health`).
    pub async fn settle_and_check(&self) -> Result<Vec<InvariantCheck>, BenchError> {
        match self {
            Self::Orders(w) => w.settle_and_check().await,
            Self::CouponRush(w) => w.settle_and_check().await,
            Self::Browse(_) | Self::Health(_) => Ok(Vec::new()),
            Self::Mixed(m) => {
                let mut checks = Vec::new();
                for (part, found) in [
                    ("orders", m.orders.settle_and_check().await?),
                    ("flash-sale", m.flash_sale.settle_and_check().await?),
                    ("coupon-rush", m.coupons.settle_and_check().await?),
                ] {
                    checks.extend(found.into_iter().map(|mut c| {
                        c.detail = format!("{part}: {}", c.detail);
                        c
                    }));
                }
                Ok(checks)
            }
        }
    }
}

impl Workload for Prepared {
    async fn attempt(&self, index: u64) -> Reply {
        match self {
            Self::Orders(w) => w.attempt(index).await,
            Self::CouponRush(w) => w.attempt(index).await,
            Self::Browse(w) => w.attempt(index).await,
            Self::Health(w) => w.attempt(index).await,
            Self::Mixed(m) => m.attempt(index).await,
        }
    }
}

/// `mixed`: one workload of each kind, chosen per attempt by [`MIX`].
#[derive(Debug)]
pub struct MixedWorkload {
    browse: BrowseWorkload,
    my_page: MyPageWorkload,
    orders: Arc<OrderWorkload>,
    flash_sale: Arc<OrderWorkload>,
    coupons: Arc<CouponWorkload>,
    seed: u64,
}

/// The part of `mixed` that attempt `index` sends.
fn choose_part(seed: u64, index: u64) -> Part {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut pick = attempt_rng(seed, index).gen_range(0..total);
    for (part, weight) in MIX {
        if pick < weight {
            return part;
        }
        pick -= weight;
    }
    Part::Browse
}

impl Workload for MixedWorkload {
    async fn attempt(&self, index: u64) -> Reply {
        match choose_part(self.seed, index) {
            Part::Browse => self.browse.attempt(index).await,
            Part::MyPage => self.my_page.attempt(index).await,
            Part::Orders => self.orders.attempt(index).await,
            Part::FlashSale => self.flash_sale.attempt(index).await,
            Part::CouponRush => self.coupons.attempt(index).await,
        }
    }
}

/// Creates `count` items named `bench <tag> <word> <n>` with `stock` units each.
async fn create_items(
    api: &Api,
    cast: &mut Cast,
    run_tag: &str,
    count: usize,
    stock: u64,
) -> Result<Vec<i64>, BenchError> {
    let token = cast.admin_token()?.to_owned();
    let ids = bounded(0..count, SETUP_CONCURRENCY, |n| {
        let api = api.clone();
        let token = token.clone();
        let name = format!("bench {run_tag} {} {n}", NAME_WORDS[n % NAME_WORDS.len()]);
        async move { api.create_item(&token, &name, ITEM_PRICE, stock).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    cast.summary.items += ids.len();
    Ok(ids)
}

/// What an order workload sells: how many items, with how many units each, in which shape.
struct Stock<'a> {
    name: &'a str,
    items: usize,
    units: u64,
    shape: OrderShape,
}

/// Creates the items of `stock` and a workload of orders over them.
async fn order_workload(
    api: &Api,
    cast: &mut Cast,
    stock: Stock<'_>,
    users: Arc<[BenchUser]>,
    seed: u64,
    run_tag: &str,
) -> Result<OrderWorkload, BenchError> {
    let ids = create_items(api, cast, stock.name, stock.items, stock.units).await?;
    let items = ids
        .into_iter()
        .map(|item_id| StockedItem {
            item_id,
            initial: stock.units,
        })
        .collect();
    Ok(OrderWorkload::new(
        api.clone(),
        users,
        items,
        stock.shape,
        seed,
        run_tag.to_owned(),
    ))
}

async fn flash_sale(
    api: &Api,
    cast: &mut Cast,
    size: &ScenarioSize,
    users: Arc<[BenchUser]>,
    seed: u64,
    run_tag: &str,
) -> Result<OrderWorkload, BenchError> {
    let name = format!("{run_tag} flash");
    let stock = Stock {
        name: &name,
        items: 1,
        units: size.units,
        shape: OrderShape::SINGLE_UNIT,
    };
    order_workload(api, cast, stock, users, seed, &format!("{run_tag}-flash")).await
}

async fn multi_line(
    api: &Api,
    cast: &mut Cast,
    size: &ScenarioSize,
    users: Arc<[BenchUser]>,
    seed: u64,
    run_tag: &str,
) -> Result<OrderWorkload, BenchError> {
    let stock = Stock {
        name: run_tag,
        items: size.items,
        units: AMPLE_STOCK,
        shape: MULTI_LINE_ORDER,
    };
    order_workload(api, cast, stock, users, seed, &format!("{run_tag}-orders")).await
}

async fn coupon_rush(
    api: &Api,
    cast: &mut Cast,
    size: &ScenarioSize,
    users: Arc<[BenchUser]>,
    seed: u64,
    run_tag: &str,
) -> Result<CouponWorkload, BenchError> {
    let coupon_id = api
        .create_coupon(
            cast.admin_token()?,
            &format!("bench {run_tag} coupon"),
            size.quantity,
            COUPON_DISCOUNT_PERCENT,
        )
        .await?;
    cast.summary.coupons += 1;
    Ok(CouponWorkload::new(
        api.clone(),
        users,
        coupon_id,
        size.quantity,
        seed,
        format!("{run_tag}-coupon"),
    ))
}

async fn browse(
    api: &Api,
    cast: &mut Cast,
    size: &ScenarioSize,
    seed: u64,
    run_tag: &str,
) -> Result<BrowseWorkload, BenchError> {
    let ids = create_items(api, cast, run_tag, size.items, BROWSE_STOCK).await?;
    Ok(BrowseWorkload::new(api.clone(), ids, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_draw_the_same_choices_for_the_same_seed_and_index() {
        let draw = |seed, index| attempt_rng(seed, index).gen_range(0..1_000_000u32);
        assert_eq!(draw(42, 7), draw(42, 7));
        let by_index: std::collections::HashSet<u32> = (0..100).map(|i| draw(42, i)).collect();
        assert!(by_index.len() > 90, "attempts of one run should differ");
        let by_seed: std::collections::HashSet<u32> = (0..100).map(|s| draw(s, 7)).collect();
        assert!(by_seed.len() > 90, "seeds should differ");
    }

    #[test]
    fn the_mix_follows_its_weights() {
        let share = |part: Part| {
            (0..10_000u64)
                .filter(|i| choose_part(9, *i) == part)
                .count()
        };
        for (part, weight) in MIX {
            let expected = weight as usize * 100;
            let got = share(part);
            assert!(got.abs_diff(expected) < 300, "{part:?}: {got} of 10000");
        }
    }
}
