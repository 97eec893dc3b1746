//! Wiring: binds the listeners, builds the router, the data plane and the admin
//! listener from a validated [`Config`], and runs them until shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::admin::auth::{AuthError, Tokens};
use crate::cluster;
use crate::config::Config;
use crate::config::store::StoreConfig;
use crate::proxy::{self, Drained, Proxy};
use crate::registry::merge::merge;
use crate::registry::store::etcd::{self, EtcdClient, EtcdStore, Keys};
use crate::registry::store::{COMPACT_AFTER_RECORDS, FileStore, Loaded, Store, StoreError};
use crate::registry::{Catalog, Published, Registry, ReloadHook, Writer, WriterStop};
use crate::rollout::{Controller, RemoteStats, RolloutReadings};
use crate::routing::Router;
use crate::sync::{SyncHandle, Syncer};
use crate::telemetry::{Telemetry, UPKEEP_INTERVAL};
use crate::upstream::pool::PoolKind;

/// How often the rollout controller looks at running rollouts.
pub const CONTROLLER_TICK: Duration = Duration::from_millis(100);

/// How long a rollback waits for its target's health probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] io::Error),
    #[error("cannot start the shadow threads: {0}")]
    ShadowThreads(#[source] io::Error),
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// A gateway that is serving. Dropping it does not stop it; call
/// [`RunningGateway::shutdown`].
pub struct RunningGateway {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    router: Arc<Router>,
    published: Arc<Published>,
    registry: Registry,
    writer: WriterStop,
    controller: JoinHandle<()>,
    controller_stop: CancellationToken,
    sync: Option<(SyncHandle, JoinHandle<()>)>,
    sync_stop: CancellationToken,
    /// With a shared store: the watch on the other replicas and the catch-ups it asks for.
    following: Vec<JoinHandle<()>>,
    following_stop: CancellationToken,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    admin_shutdown: CancellationToken,
    data_plane: JoinHandle<Drained>,
    admin: JoinHandle<Drained>,
}

/// Binds the configured addresses and starts serving.
pub async fn start(config: &Config) -> Result<RunningGateway, GatewayError> {
    let data = bind("data plane", config.server.listen).await?;
    let admin = bind("admin", config.server.admin_listen).await?;
    start_on(config, data, admin).await
}

/// Starts serving on listeners the caller bound (tests bind port 0).
pub async fn start_on(
    config: &Config,
    data: TcpListener,
    admin: TcpListener,
) -> Result<RunningGateway, GatewayError> {
    let local = |listener: &TcpListener, what, fallback| {
        listener.local_addr().map_err(|source| GatewayError::Bind {
            what,
            addr: fallback,
            source,
        })
    };
    let data_addr = local(&data, "data plane", config.server.listen)?;
    let admin_addr = local(&admin, "admin", config.server.admin_listen)?;
    let tokens = Tokens::load(&config.admin)?;
    tokens.check_exposure(admin_addr)?;
    let tokens = Arc::new(ArcSwap::from_pointee(tokens));

    let opened = open_store(config).await?;
    let (store, loaded) = (opened.store, opened.loaded);
    let merged = merge(&config.models, &loaded.ledger);
    for warning in loaded.warnings.iter().chain(&merged.warnings) {
        tracing::warn!("{warning}");
    }
    let ledger = Arc::new(loaded.ledger);
    let telemetry = Telemetry::new();
    let catalog = Catalog {
        models: merged.models,
        ledger: Arc::clone(&ledger),
    };
    let published = Arc::new(Published::new(Arc::new(catalog), telemetry.clone()));
    let router = Arc::clone(published.router());
    let (registry, writer) = Registry::spawn(Writer {
        config: config.clone(),
        ledger,
        store,
        published: Arc::clone(&published),
        probe_timeout: PROBE_TIMEOUT,
        reload_hook: Some(reload_tokens(Arc::clone(&tokens), admin_addr)),
        compact_after: COMPACT_AFTER_RECORDS,
    });
    let following_stop = CancellationToken::new();
    let opened_follow = opened.follow.clone();
    let mut following = opened
        .follow
        .map(|follow| start_following(follow, registry.clone(), following_stop.clone()))
        .unwrap_or_default();
    let seeded = registry.seed().await?;
    if seeded > 0 {
        tracing::info!(seeded, "journaled the config's new versions");
    }
    let limits = config.server.limits.clone();
    let ready = Arc::new(AtomicBool::new(true));
    let shutdown = CancellationToken::new();

    let proxy = Proxy::start(
        Arc::clone(&router),
        limits.clone(),
        config.server.shadow_threads,
    )
    .map_err(GatewayError::ShadowThreads)?;
    let proxy = Arc::new(proxy);
    let data_plane = tokio::spawn({
        let (limits, shutdown) = (limits.clone(), shutdown.clone());
        async move { proxy::serve(data, proxy, &limits, shutdown).await }
    });
    // The admin listener outlives the data plane's drain so /readyz can say
    // "draining" while in-flight requests finish.
    let admin_shutdown = CancellationToken::new();
    let readings = RolloutReadings::default();
    let mut controller = Controller::new(
        Arc::clone(&published),
        registry.clone(),
        readings.clone(),
        CONTROLLER_TICK,
    );
    let mut store_up = None;
    let mut cluster_exchange = None;
    // The other replicas' measurements; none while alone.
    let remote = RemoteStats::default();
    // Alone, a replica always leads.
    let mut leading = tokio::sync::watch::channel(true).1;
    if let (Some((client, keys, _)), StoreConfig::Etcd(etcd)) = (&opened_follow, &config.store) {
        let name = replica_name(admin_addr);
        let campaign = etcd::election::campaign(
            Arc::clone(client),
            keys.clone(),
            etcd.lease_ttl,
            name.clone(),
            following_stop.clone(),
        );
        leading = campaign.leading.clone();
        let exchange = cluster::Exchange {
            client: Arc::clone(client),
            keys: keys.clone(),
            replica: name.clone(),
            lease: campaign.lease.clone(),
            published: Arc::clone(&published),
            remote: remote.clone(),
            leading: campaign.leading.clone(),
            readings: readings.clone(),
            sync: None,
        };
        cluster_exchange = Some(exchange);
        controller = controller
            .leading_while(campaign.leading)
            .with_remote(remote.clone());
        following.push(campaign.task);
        following.push(mirror_store_health(
            campaign.store_up.clone(),
            published.telemetry().clone(),
        ));
        store_up = Some(campaign.store_up);
    }
    let controller_stop = CancellationToken::new();
    let controller = tokio::spawn(controller.run(controller_stop.clone()));
    // Started after seeding, so the sync reads a journal that owns every stage.
    let sync_stop = CancellationToken::new();
    let sync = config.registry.clone().map(|source| {
        Syncer::spawn(
            source,
            Arc::clone(&published),
            registry.clone(),
            leading.clone(),
            sync_stop.clone(),
        )
    });
    // Started once the sync is, so polls asked of a follower can reach the leader.
    if let Some(mut exchange) = cluster_exchange {
        exchange.sync = sync.as_ref().map(|(handle, _)| handle.clone());
        following.push(cluster::spawn(exchange, following_stop.clone()));
    }
    let admin_handler = Arc::new(
        Admin::new(
            Arc::clone(&published),
            registry.clone(),
            readings,
            Arc::clone(&ready),
            tokens,
            sync.as_ref().map(|(handle, _)| handle.clone()),
        )
        .with_store_health(store_up)
        .with_remote(remote),
    );
    let admin = tokio::spawn({
        let admin_shutdown = admin_shutdown.clone();
        async move { proxy::serve(admin, admin_handler, &limits, admin_shutdown).await }
    });
    tokio::spawn(upkeep(
        telemetry,
        Arc::clone(&router),
        admin_shutdown.clone(),
    ));
    tracing::info!(%data_addr, %admin_addr, models = config.models.len(), "stagegate serving");
    Ok(RunningGateway {
        data_addr,
        admin_addr,
        router,
        published,
        registry,
        writer,
        controller,
        controller_stop,
        sync,
        sync_stop,
        following,
        following_stop,
        ready,
        shutdown,
        admin_shutdown,
        data_plane,
        admin,
    })
}

impl RunningGateway {
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The router holding the current routing table.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The served catalog and the table built from it.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// The control-plane writer (what the admin API and SIGHUP drive).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The external registry's sync, when `[registry]` is configured.
    pub fn sync(&self) -> Option<&SyncHandle> {
        self.sync.as_ref().map(|(handle, _)| handle)
    }

    /// Stops accepting, drains in-flight requests, and waits until both listeners
    /// are closed.
    pub async fn shutdown(self) -> Drained {
        self.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        let drained = self.data_plane.await.unwrap_or_else(|error| {
            tracing::error!(%error, "data plane task failed");
            Drained { abandoned: 0 }
        });
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        self.controller_stop.cancel();
        let _ = self.controller.await;
        self.sync_stop.cancel();
        if let Some((_, task)) = self.sync {
            let _ = task.await;
        }
        self.following_stop.cancel();
        for task in self.following {
            let _ = task.await;
        }
        // Last, so the state directory's lock is free once this returns.
        self.writer.stop().await;
        drained
    }
}

/// The store the config names, with the state read from it.
struct OpenedStore {
    store: Box<dyn Store>,
    loaded: Loaded,
    /// For a shared store: what to watch, from which etcd revision.
    follow: Option<(Arc<EtcdClient>, Keys, i64)>,
}

async fn open_store(config: &Config) -> Result<OpenedStore, GatewayError> {
    match &config.store {
        StoreConfig::File => {
            let state_dir = config.server.state_dir.clone();
            let (store, loaded) = tokio::task::spawn_blocking(move || FileStore::open(&state_dir))
                .await
                .map_err(|e| GatewayError::Task(e.to_string()))??;
            Ok(OpenedStore {
                store: Box::new(store),
                loaded,
                follow: None,
            })
        }
        StoreConfig::Etcd(etcd) => {
            let opened = EtcdStore::open(etcd).await?;
            let follow = (
                opened.store.client(),
                opened.store.keys(),
                opened.etcd_revision + 1,
            );
            Ok(OpenedStore {
                store: Box::new(opened.store),
                loaded: opened.loaded,
                follow: Some(follow),
            })
        }
    }
}

/// Watches the shared store and catches the writer up after every change
/// another replica makes.
fn start_following(
    (client, keys, from): (Arc<EtcdClient>, Keys, i64),
    registry: Registry,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let (changed, mut changes) = tokio::sync::mpsc::channel(1);
    let watch = etcd::follow::spawn(client, keys, from, changed, stop.clone());
    let catch_up = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            if let Err(error) = registry.catch_up().await {
                tracing::warn!(%error, "cannot catch up with the other replicas yet");
            }
        }
    });
    vec![watch, catch_up]
}

/// Keeps `stagegate_store_up` in step with what the lease renewals find.
fn mirror_store_health(
    mut store_up: tokio::sync::watch::Receiver<bool>,
    telemetry: Telemetry,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            telemetry.set_store_up(*store_up.borrow_and_update());
            if store_up.changed().await.is_err() {
                return;
            }
        }
    })
}

/// SIGTERM or SIGINT. Installed before the gateway starts, so a signal that comes
/// early still means "drain", not the default "die at once".
pub struct ShutdownSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Must be called inside a Tokio runtime.
    pub fn install() -> Result<ShutdownSignal, GatewayError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                terminate: signal(SignalKind::terminate()).map_err(GatewayError::Signal)?,
                interrupt: signal(SignalKind::interrupt()).map_err(GatewayError::Signal)?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignal {})
        }
    }

    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the config file on every SIGHUP (unix), logging the outcome.
pub fn reload_on_sighup(registry: Registry) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reload through the admin API instead");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config file");
                // The registry logs the outcome and counts it.
                let _ = registry.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(registry);
}

/// Re-reads admin tokens on a config reload; refuses a reload that would leave a
/// non-loopback admin listener without a token.
fn reload_tokens(tokens: Arc<ArcSwap<Tokens>>, admin_addr: SocketAddr) -> ReloadHook {
    Box::new(move |config: &Config| {
        let next = Tokens::load(&config.admin).map_err(|e| e.to_string())?;
        next.check_exposure(admin_addr).map_err(|e| e.to_string())?;
        tokens.store(Arc::new(next));
        Ok(())
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

/// Periodic housekeeping: metric upkeep, and idle production connections that
/// expired or that their model server closed (nothing polls an idle connection,
/// so without this an endpoint that stops getting traffic would keep them). The
/// shadow threads reap the shadow pools, whose sockets belong to them.
async fn upkeep(telemetry: Telemetry, router: Arc<Router>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                telemetry.run_upkeep();
                router.load().reap_idle_connections(PoolKind::Primary);
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// This replica's name among the others: host, admin address and process. The
/// host tells apart containers that all run as pid 1 on `0.0.0.0:8081`.
fn replica_name(admin_addr: SocketAddr) -> String {
    let mut host = [0u8; 256];
    // SAFETY: `host` is a writable buffer of the length passed.
    let status = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
    let host = match status {
        0 => String::from_utf8_lossy(&host[..end]).into_owned(),
        _ => "unknown-host".to_string(),
    };
    format!("{host}-{admin_addr}-{}", std::process::id())
}
