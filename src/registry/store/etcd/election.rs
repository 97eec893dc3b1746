//! One rollout controller per cluster: the replica whose lease holds the
//! `leader` key runs it. The key is created only if absent and dies with its
//! lease, so when the leader dies (or loses etcd) another replica takes it
//! within `lease_ttl_s`. A leader that cannot renew its lease steps down before
//! the lease can expire, so two replicas never both think they lead; and every
//! decision is a compare-and-set on the journal, so even a stale leader could
//! not apply one on a state it did not see.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Keys;
use super::client::EtcdClient;

/// What a campaign tells: whether this replica leads, and whether etcd
/// answered its last lease renewal.
pub struct Campaign {
    pub leading: watch::Receiver<bool>,
    pub store_up: watch::Receiver<bool>,
    /// The replica's lease while it has one (its published keys are bound to it).
    pub lease: watch::Receiver<Option<i64>>,
    pub task: JoinHandle<()>,
}

/// Campaigns for leadership until `stop`. `name` identifies the replica in the key.
pub fn campaign(
    client: Arc<EtcdClient>,
    keys: Keys,
    ttl: Duration,
    name: String,
    stop: CancellationToken,
) -> Campaign {
    let (leading, leading_rx) = watch::channel(false);
    let (store_up, store_up_rx) = watch::channel(true);
    let (lease_tx, lease_rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut lease = None;
        let signals = Signals {
            leading: &leading,
            store_up: &store_up,
            lease: &lease_tx,
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = run(&client, &keys, ttl, &name, &signals, &mut lease) => {}
        }
        let _ = leading.send(false);
        // Hand over at once instead of after the lease's time.
        if let Some(lease) = lease {
            let _ = client.revoke(lease).await;
        }
    });
    Campaign {
        leading: leading_rx,
        store_up: store_up_rx,
        lease: lease_rx,
        task,
    }
}

struct Signals<'a> {
    leading: &'a watch::Sender<bool>,
    store_up: &'a watch::Sender<bool>,
    lease: &'a watch::Sender<Option<i64>>,
}

async fn run(
    client: &EtcdClient,
    keys: &Keys,
    ttl: Duration,
    name: &str,
    signals: &Signals<'_>,
    held: &mut Option<i64>,
) {
    let leading = signals.leading;
    let up = |value: bool| {
        signals
            .store_up
            .send_if_modified(|v| std::mem::replace(v, value) != value);
    };
    // Renewed three times per lease; a leader steps down once two thirds of
    // the lease passed without a renewal.
    let every = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        let lease = match *held {
            Some(lease) => lease,
            None => match client.grant(ttl).await {
                Ok(lease) => {
                    up(true);
                    renewed = Instant::now();
                    *held = Some(lease);
                    let _ = signals.lease.send(Some(lease));
                    lease
                }
                Err(error) => {
                    up(false);
                    tracing::warn!(%error, "cannot get an etcd lease; not leading");
                    let _ = leading.send(false);
                    tokio::time::sleep(every).await;
                    continue;
                }
            },
        };
        match client.keep_alive(lease).await {
            Ok(left) if left > 0 => {
                up(true);
                renewed = Instant::now();
            }
            Ok(_) => {
                // Expired: whatever it held is gone; start again.
                *held = None;
                let _ = signals.lease.send(None);
                let _ = leading.send(false);
                continue;
            }
            Err(error) => {
                up(false);
                tracing::warn!(%error, "cannot renew the etcd lease");
            }
        }
        if renewed.elapsed() > ttl * 2 / 3 {
            // Step down, and let the lease (and the leader key bound to it) go,
            // so that this replica or another can campaign afresh.
            if leading.send_replace(false) {
                tracing::warn!(
                    replica = name,
                    "stepping down: the lease was not renewed in time"
                );
            }
            if let Some(lease) = held.take() {
                let _ = signals.lease.send(None);
                let _ = client.revoke(lease).await;
            }
            continue;
        } else if !*leading.borrow() {
            match client
                .create_leased(&keys.leader(), name.as_bytes(), lease)
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        replica = name,
                        "leading: this replica runs the rollout controller"
                    );
                    let _ = leading.send(true);
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot campaign for leadership"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
