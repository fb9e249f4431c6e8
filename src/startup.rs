//! Building and running a node: connect, migrate, load keys, bind, serve, stop gracefully.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use surge_actors::events::{EventSink, InProcessSink, MyPageProjection, OutboxRelay, RelayConfig};
use surge_actors::orders::{recovery, sweeper};
use surge_actors::{
    BaselineStock, CouponActors, CouponConfig, CouponStore, IssueWriter, IssueWriterConfig,
    OrderSagas, SagaDeps, StockActors, StockConfig, StockPath, StockStrategy,
};
use surge_domain::{Role, UserName};
use surge_http::auth::denylist_horizon_millis;
use surge_http::connections::ConnectionLimits;
use surge_http::slots::Slots;
use surge_http::{
    AppState, AuthService, AuthSettings, Metrics, NodeInfo, OrderServices, OrderStreams, RateLimits,
};
use surge_persistence::committer::{CommitterConfig, GroupCommitter, WriterGuard};
use surge_persistence::comparison::RedisStock;
use surge_persistence::redis_coupons::RedisCoupons;
use surge_persistence::{Database, DatabaseOptions, PersistenceError, now_millis, sqlite_file};
use surge_supervisors::{CircuitConfig, CircuitRegistry};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{BootstrapAdmin, Config, KafkaSettings};
use surge_actors::ShardOwnership;
use surge_cluster::{ClusterError, ClusterNode};

/// Name of the generated signing key kept next to the embedded database.
const JWT_KEY_FILE: &str = "jwt-secret";
/// How often a cluster node reads revocations made on other nodes. A revoked login is
/// refused on every node within this (plus a database round trip).
const REVOCATION_POLL: Duration = Duration::from_millis(250);
/// How far back each revocation read looks: node clocks stamp `revoked_at`, so a read looks
/// past the last one by more than any plausible skew between nodes.
const REVOCATION_LOOKBACK_MS: i64 = 10_000;
/// How often expired login sessions are deleted.
const SESSION_PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] PersistenceError),
    /// A listener could not be bound, or the key file could not be read or written.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The token service could not be built.
    #[error("auth: {0}")]
    Auth(String),
    /// The bootstrap admin could not be created.
    #[error("bootstrap admin: {0}")]
    Bootstrap(String),
    /// An actor system could not start.
    #[error("actors: {0}")]
    Actors(String),
    /// Redis (the coupon store) did not answer.
    #[error("redis: {0}")]
    Redis(String),
    /// The Kafka client could not be configured.
    #[error("kafka: {0}")]
    Kafka(String),
    /// MongoDB (the read model's store) did not answer.
    #[error("mongodb: {0}")]
    Mongo(String),
    /// The node could not join its cluster.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The Redis key prefix holds another database's coupons.
    #[error(
        "redis: SURGE_REDIS_KEY_PREFIX '{prefix}' holds the coupons of another database \
         ({owner}); use another prefix, or set SURGE_REDIS_TAKE_OVER=true to delete them and \
         take the prefix over"
    )]
    ForeignRedisPrefix {
        /// The prefix.
        prefix: String,
        /// The identity of the database that owns it.
        owner: String,
    },
}

impl StartupError {
    /// Whether the node was refused by its settings (exit 2: a shard count other than the
    /// cluster's, a node id a live node uses) rather than by a failure.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Cluster(e) if e.is_refusal())
            || matches!(self, Self::ForeignRedisPrefix { .. })
    }
}

/// Stops a running node as SIGTERM would. Cloneable; used by tests and embedders.
#[derive(Debug, Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Asks the node to stop: it stops accepting, finishes in-flight requests and returns.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A node that is built (database open, listeners bound) and ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    connections: ConnectionLimits,
    admin_listener: Option<TcpListener>,
    state: AppState,
    stop: watch::Sender<bool>,
    writers: Writers,
}

/// What writes on its own, ended in order at shutdown.
#[derive(Debug)]
struct Writers {
    /// The group-commit writer; finished last, after everything that writes through it.
    commits: WriterGuard,
    /// Redis mode: the stream-to-database writer of coupon issues.
    issues: Option<IssueWriter>,
    /// The outbox relay; finished after the writer, so the last commits' events go out.
    relay: OutboxRelay,
    /// Consumer loops fed by the broker (none in-process).
    consumers: ConsumerTasks,
    /// Lifetime of an unconfirmed reservation, for the sweeper.
    reservation_ttl: Duration,
}

impl Application {
    /// Opens the database, applies migrations, prepares auth and binds the listeners.
    pub async fn build(mut config: Config) -> Result<Self, StartupError> {
        let db = Database::connect(
            &config.database_url,
            &DatabaseOptions::for_backend(config.backend),
        )
        .await?;
        // A cluster node joins first: a refused join (shard count, a live duplicate id)
        // must stop it before it touches any stock.
        let joined = match config.cluster.take() {
            Some(settings) => Some(surge_cluster::join(&db, settings).await?),
            None => None,
        };
        let jwt_secret = match config.jwt_secret {
            Some(secret) => secret,
            None => embedded_jwt_secret(&config.database_url)?,
        };
        let revoked = db
            .sessions_revoked_since(now_millis() - denylist_horizon_millis())
            .await?;
        let auth =
            AuthService::new(&AuthSettings { jwt_secret }, revoked).map_err(StartupError::Auth)?;
        let (committer, commit_stats, writer) = GroupCommitter::start(
            db.clone(),
            CommitterConfig {
                linger: config.flush_tick,
                ..CommitterConfig::default()
            },
        );
        let circuits = CircuitRegistry::new();
        let db_breaker = circuits.get_or_create("database", CircuitConfig::default());
        let stock = StockActors::start(
            db.clone(),
            StockConfig {
                owner: config.node_id.clone(),
                passivate_after: config.stock_passivate_after,
                max_waiting_per_item: config.max_waiting_per_item,
                ownership: joined
                    .as_ref()
                    .map(|j| Arc::new(j.view.clone()) as Arc<dyn ShardOwnership>),
                ..StockConfig::default()
            },
        )
        .await
        .map_err(|e| StartupError::Actors(e.to_string()))?;
        let baseline_redis = match (&config.redis, config.stock_strategy) {
            (Some(settings), StockStrategy::RedisDecr) => Some(
                RedisStock::connect(
                    settings.url.expose_secret(),
                    &settings.key_prefix,
                    settings.timeout,
                )
                .await
                .map_err(|e| StartupError::Redis(e.to_string()))?,
            ),
            _ => None,
        };
        let baseline = BaselineStock::new(
            config.stock_strategy,
            db.clone(),
            baseline_redis,
            config.reservation_ttl,
        );
        if baseline.is_some() {
            tracing::warn!(
                strategy = config.stock_strategy.as_str(),
                "stock strategy for comparison only: every order line takes its own transaction"
            );
        }
        let (coupon_store, issue_writer) = match &config.redis {
            None => (CouponStore::Embedded, None),
            Some(settings) => {
                let redis = RedisCoupons::connect(
                    settings.url.expose_secret(),
                    &settings.key_prefix,
                    settings.timeout,
                )
                .await
                .map_err(|e| StartupError::Redis(e.to_string()))?;
                claim_redis_prefix(&db, &redis, &settings.key_prefix, settings.take_over).await?;
                let breaker = circuits.get_or_create("redis", CircuitConfig::default());
                let writer = IssueWriter::start(
                    redis.clone(),
                    committer.clone(),
                    breaker.clone(),
                    IssueWriterConfig {
                        consumer: config.node_id.clone(),
                        claim_idle: settings.claim_idle,
                    },
                );
                (
                    CouponStore::Redis {
                        redis: Box::new(redis),
                        breaker,
                    },
                    Some(writer),
                )
            }
        };
        let coupons = CouponActors::start(
            db.clone(),
            committer.clone(),
            coupon_store,
            CouponConfig {
                answer_timeout: config.coupon_answer_timeout,
                ..CouponConfig::default()
            },
        )
        .await
        .map_err(|e| StartupError::Actors(e.to_string()))?;
        let cluster = joined
            .map(|j| {
                ClusterNode::start(
                    db.clone(),
                    j,
                    stock.clone(),
                    coupons.clone(),
                    circuits.clone(),
                )
            })
            .transpose()?;
        let stock_path: Arc<dyn StockPath> = match (baseline, &cluster) {
            (Some(baseline), _) => Arc::new(baseline),
            (None, Some(cluster)) => Arc::new(cluster.routed()),
            (None, None) => Arc::new(stock.clone()),
        };
        let sagas = OrderSagas::start(SagaDeps {
            db: db.clone(),
            ledger: Arc::new(committer.clone()),
            stock: stock_path.clone(),
            coupons: coupons.clone(),
            breaker: db_breaker.clone(),
            // A saga holds and writes within the client's answer deadline; past it the client
            // has its answer (503 "outcome pending") and nothing should still be running.
            reserve_deadline: config.order_answer_timeout,
        })
        .await
        .map_err(|e| StartupError::Actors(e.to_string()))?;
        // Before serving: give back what a previous process of this node had checked out, and
        // compensate the orders it left half done.
        let reclaimed = db.reclaim_allotments(&config.node_id).await?;
        let compensated = recovery::recover(&db, &committer).await?;
        if reclaimed > 0 || compensated > 0 {
            tracing::info!(reclaimed, compensated, "recovered from the previous run");
        }
        let mut my_page = read_model(&db, config.mongo_url.as_ref()).await?;
        if db.backend() == surge_persistence::Backend::Sqlite {
            // SQLite has one writer at a time: the projection writes inside the order writer's
            // batches instead of waiting for the lock beside it. PostgreSQL takes both writers
            // side by side, and there the projection keeps transactions of its own.
            my_page = my_page.through(committer.clone());
        }
        let my_page_store = my_page.clone();
        let events = EventRoute::start(config.kafka.as_ref(), &config.node_id, my_page)?;
        let relay = OutboxRelay::start(
            db.clone(),
            events.sink,
            circuits.get_or_create(events.breaker_name, CircuitConfig::default()),
            RelayConfig {
                node_id: config.node_id.clone(),
                retention: config.outbox_retention,
            },
        );
        let state = AppState {
            relay: relay.stats(),
            my_page: my_page_store,
            db,
            auth: Arc::new(auth),
            metrics: Arc::new(Metrics::new()),
            node: NodeInfo {
                node_id: config.node_id.as_str().into(),
                shards: config.shards,
                started_at: surge_domain::time_fmt::rfc3339(now_millis()).into(),
                cluster,
            },
            orders: OrderServices {
                sagas,
                stock,
                stock_path,
                committer,
                commit_stats,
                circuits,
                db_breaker,
                admission: Arc::new(tokio::sync::Semaphore::new(config.max_inflight_orders)),
                answer_deadline: config.order_answer_timeout,
            },
            coupons,
            items: Arc::default(),
            cors_origins: config.cors_origins.clone().into(),
            limits: Arc::new(RateLimits::new(&config.rate_limits)),
            body_timeout: config.connections.body_timeout,
            streams: Arc::new(OrderStreams {
                slots: Arc::new(Slots::new(
                    config.max_streams_per_member,
                    config.max_streams,
                )),
                idle_timeout: config.stream_idle_timeout,
            }),
        };
        if let Some(admin) = &config.bootstrap_admin {
            ensure_bootstrap_admin(&state, admin).await?;
        }
        let listener = TcpListener::bind(config.http_addr).await?;
        let admin_listener = match config.admin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let (stop, _) = watch::channel(false);
        let writers = Writers {
            commits: writer,
            issues: issue_writer,
            relay,
            consumers: events.consumers,
            reservation_ttl: config.reservation_ttl,
        };
        let connections = within_file_limit(config.connections);
        Ok(Self {
            listener,
            connections,
            admin_listener,
            state,
            stop,
            writers,
        })
    }

    /// The API listener's address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// A handle that stops the node.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Serves until SIGTERM, SIGINT or [`StopHandle::stop`]; then stops accepting, lets
    /// in-flight requests finish, flushes the stock actors and the writer, and closes the
    /// database pool.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            listener,
            connections,
            admin_listener,
            state,
            stop,
            writers,
        } = self;
        let reservation_ttl = writers.reservation_ttl;
        let signal_stop = stop.clone();
        tokio::spawn(async move {
            surge_supervisors::shutdown::stop_signal().await;
            tracing::info!("stop signal received; finishing in-flight requests");
            signal_stop.send_replace(true);
        });
        // Every background task ends on the one stop signal; the guard also signals them if
        // this future is dropped.
        let mut background = Background::new(stop.clone());
        background.spawn(purge_sessions(state.db.clone(), stop.subscribe()));
        background.spawn(prune_rate_limits(
            Arc::clone(&state.limits),
            stop.subscribe(),
        ));
        // The cluster's lease loop and internal listener run until the node has handed its
        // shards over, after the public listener and the sagas are done.
        let (cluster_stop, _) = watch::channel(false);
        let cluster_tasks = match &state.node.cluster {
            Some(cluster) => {
                background.spawn(follow_revocations(
                    state.db.clone(),
                    state.auth.clone(),
                    stop.subscribe(),
                ));
                let evict = stop.clone();
                cluster.run(
                    cluster_stop.subscribe(),
                    cluster_stop.subscribe(),
                    move || {
                        evict.send_replace(true);
                    },
                )
            }
            None => Vec::new(),
        };
        for consumer in writers.consumers.0 {
            background.spawn(consumer(stop.subscribe()));
        }
        background.spawn(sweeper::run(
            state.orders.committer.clone(),
            reservation_ttl,
            stop.subscribe(),
        ));
        if let Some(admin) = admin_listener {
            let router = surge_http::admin_router(state.clone());
            let stopped = stopped(&stop);
            background.spawn(async move {
                if let Err(e) = axum::serve(admin, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::warn!(error = %e, "the admin listener failed");
                }
            });
        }
        let answer_deadline = state.orders.answer_deadline;
        let router = surge_http::router(state.clone());
        tracing::info!(
            addr = %listener.local_addr()?,
            database = state.db.backend().as_str(),
            "surge ready"
        );
        let served =
            surge_http::connections::serve(listener, router, connections, stop.subscribe()).await;
        background.finish().await;
        // In-flight requests are done. In order: sagas still running (they may outlive their
        // requests) finish, within their own deadline; the stock actors give their unsold
        // allotments back; sagas and coupon actors stop; the Redis issue writer finishes its
        // round; then the writer commits everything queued and ends.
        let still_running = state.orders.sagas.wait_idle(answer_deadline).await;
        if still_running > 0 {
            tracing::warn!(still_running, "stopping with order sagas still running");
        }
        if let Some(cluster) = &state.node.cluster {
            cluster.leave().await;
            cluster_stop.send_replace(true);
            for task in cluster_tasks {
                let _ = task.await;
            }
        }
        state.orders.stock.drain().await;
        state.orders.sagas.stop();
        state.coupons.stop();
        if let Some(issues) = writers.issues {
            issues.stop().await;
        }
        writers.commits.finish().await;
        // Last: what the final commits wrote is delivered before the pool closes.
        writers.relay.finish().await;
        state.db.close().await;
        tracing::info!("surge stopped");
        served
    }
}

/// A consumer loop that runs until its stop signal (the Kafka projection).
type ConsumerTask = Box<
    dyn FnOnce(
            watch::Receiver<bool>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// The my-page projection: into MongoDB when `SURGE_MONGO_URL` is set, else the main database.
#[cfg_attr(not(feature = "mongo"), allow(clippy::unused_async))]
async fn read_model(
    db: &Database,
    mongo_url: Option<&SecretString>,
) -> Result<MyPageProjection, StartupError> {
    match mongo_url {
        None => Ok(MyPageProjection::new(db.clone())),
        #[cfg(feature = "mongo")]
        Some(url) => {
            let pages = surge_persistence::mongo_pages::MongoPages::connect(url.expose_secret())
                .await
                .map_err(|e| StartupError::Mongo(e.to_string()))?;
            Ok(MyPageProjection::in_mongo(db.clone(), pages))
        }
        #[cfg(not(feature = "mongo"))]
        Some(_) => Err(StartupError::Mongo(
            "this build has no MongoDB client (build with --features mongo)".into(),
        )),
    }
}

/// The consumer loops a node runs.
struct ConsumerTasks(Vec<ConsumerTask>);

impl std::fmt::Debug for ConsumerTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsumerTasks({})", self.0.len())
    }
}

/// Where this node's events go: the relay's sink, the breaker it is guarded by, and the
/// consumer loops to run (none in-process: the sink itself calls the consumers).
struct EventRoute {
    sink: Arc<dyn EventSink>,
    breaker_name: &'static str,
    consumers: ConsumerTasks,
}

impl EventRoute {
    /// `node_id` names this node's static membership in the consumer group (Kafka only).
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    fn start(
        kafka: Option<&KafkaSettings>,
        node_id: &str,
        my_page: MyPageProjection,
    ) -> Result<Self, StartupError> {
        match kafka {
            None => Ok(Self {
                sink: Arc::new(InProcessSink::new(my_page)),
                breaker_name: "read-model",
                consumers: ConsumerTasks(Vec::new()),
            }),
            #[cfg(feature = "kafka")]
            Some(kafka) => {
                use surge_actors::events::kafka::{ConsumerPlace, KafkaSink, run_projection};
                use surge_persistence::kafka::KafkaPublisher;
                let publisher = KafkaPublisher::connect(&kafka.brokers, &kafka.topic_prefix)
                    .map_err(|e| StartupError::Kafka(e.to_string()))?;
                let place = ConsumerPlace {
                    brokers: kafka.brokers.clone(),
                    prefix: kafka.topic_prefix.clone(),
                    group: format!("{}{MY_PAGE_GROUP}", kafka.topic_prefix),
                    member: node_id.to_owned(),
                };
                let consumer: ConsumerTask =
                    Box::new(move |stop| Box::pin(run_projection(place, my_page, stop)));
                Ok(Self {
                    sink: Arc::new(KafkaSink::new(
                        publisher,
                        &kafka.brokers,
                        &kafka.topic_prefix,
                    )),
                    breaker_name: "kafka",
                    consumers: ConsumerTasks(vec![consumer]),
                })
            }
            #[cfg(not(feature = "kafka"))]
            Some(_) => Err(StartupError::Kafka(
                "this build has no Kafka client (build with --features kafka)".into(),
            )),
        }
    }
}

/// The consumer group of the my-page projection (after the topic prefix): one group across the
/// nodes of a deployment, so each event is applied by one of them.
#[cfg(feature = "kafka")]
const MY_PAGE_GROUP: &str = "my-page";

/// Resolves once `stop` turns true.
fn stopped(stop: &watch::Sender<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// The node's background tasks (session purge, reservation sweeper, admin listener): each ends
/// on the stop signal. Dropping the guard signals them too, so none outlives its node.
#[derive(Debug)]
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn new(stop: watch::Sender<bool>) -> Self {
        Self {
            stop,
            tasks: Vec::new(),
        }
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Signals stop and waits for every task to end.
    async fn finish(mut self) {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Ties the Redis key prefix to this database (see [`RedisCoupons::claim_prefix`]): a prefix
/// another database owns stops the node, unless it was told to take the prefix over.
async fn claim_redis_prefix(
    db: &Database,
    redis: &RedisCoupons,
    prefix: &str,
    take_over: bool,
) -> Result<(), StartupError> {
    use surge_persistence::redis_coupons::PrefixClaim;
    let identity = db.identity(&surge_http::auth::random_token()).await?;
    match redis
        .claim_prefix(&identity, take_over)
        .await
        .map_err(|e| StartupError::Redis(e.to_string()))?
    {
        PrefixClaim::Claimed | PrefixClaim::Ours => Ok(()),
        PrefixClaim::TakenOver { deleted } => {
            tracing::warn!(
                prefix,
                deleted,
                "took the Redis key prefix over from another database"
            );
            Ok(())
        }
        PrefixClaim::Foreign { owner } => Err(StartupError::ForeignRedisPrefix {
            prefix: prefix.to_owned(),
            owner,
        }),
    }
}

/// A cluster node: revocations made on other nodes (logout, refresh-token reuse) join this
/// node's denylist within [`REVOCATION_POLL`].
async fn follow_revocations(db: Database, auth: Arc<AuthService>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match db
            .sessions_revoked_since(now_millis() - REVOCATION_LOOKBACK_MS)
            .await
        {
            Ok(revoked) => {
                for (session, at) in revoked {
                    auth.deny_session(&session, at);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read revocations"),
        }
    }
}

/// File descriptors kept free of connections: database and Redis pools, the SQLite files,
/// peers, logs.
const RESERVED_FILES: u64 = 256;

/// Raises the soft open-file limit to the hard one (containers often start with 1,024 soft)
/// and keeps the connection cap below it, so a full node still opens its own files.
fn within_file_limit(mut limits: ConnectionLimits) -> ConnectionLimits {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => {
            let room =
                usize::try_from(files.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
            if limits.max_connections > room {
                tracing::warn!(
                    configured = limits.max_connections,
                    open_file_limit = files,
                    used = room,
                    "SURGE_MAX_CONNECTIONS is above what the open-file limit allows; using less"
                );
                limits.max_connections = room;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
    limits
}

/// How often the rate limiters forget clients whose allowance is full again.
const RATE_LIMIT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the rate limiters' memory to the recent clients.
async fn prune_rate_limits(limits: Arc<RateLimits>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RATE_LIMIT_PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.prune(),
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

async fn purge_sessions(db: Database, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SESSION_PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match db.purge_expired_sessions(now_millis()).await {
            Ok(n) if n > 0 => tracing::info!(sessions = n, "purged expired login sessions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
        }
    }
}

async fn ensure_bootstrap_admin(
    state: &AppState,
    admin: &BootstrapAdmin,
) -> Result<(), StartupError> {
    let exists = state
        .db
        .user_by_login_id(admin.login_id.as_str())
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let name = UserName::parse("Administrator").map_err(|e| StartupError::Bootstrap(e.message))?;
    match surge_http::create_member(state, &admin.login_id, &admin.password, &name, Role::Admin)
        .await
    {
        Ok(_) => {
            tracing::info!(
                login_id = admin.login_id.as_str(),
                "bootstrap admin created"
            );
            Ok(())
        }
        // Another node created it first.
        Err(surge_http::ApiError::DuplicateLoginId) => Ok(()),
        Err(e) => Err(StartupError::Bootstrap(e.to_string())),
    }
}

/// The signing key of an embedded node: read from the data directory, or generated once and
/// written there with mode 0600 so tokens survive a restart.
fn embedded_jwt_secret(database_url: &str) -> Result<SecretString, StartupError> {
    let Some(dir) = sqlite_file(database_url).and_then(|f| f.parent().map(Path::to_path_buf))
    else {
        tracing::warn!("in-memory database: using a signing key that lasts only this process");
        return Ok(SecretString::from(surge_http::auth::random_token()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".").to_path_buf()
    } else {
        dir
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(JWT_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().len() >= surge_http::auth::MIN_JWT_SECRET_BYTES => {
            return Ok(SecretString::from(key.trim().to_owned()));
        }
        Ok(_) => {
            return Err(StartupError::Auth(format!(
                "{} is too short; delete it to generate a new key",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let key = surge_http::auth::random_token();
    write_private_file(&path, &key)?;
    tracing::info!(path = %path.display(), "generated a JWT signing key");
    Ok(SecretString::from(key))
}

fn write_private_file(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
