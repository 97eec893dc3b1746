//! Following the other replicas: a watch on the cluster's keys that says "there
//! is something new" each time another replica journals or compacts. The
//! writer then reads what it lacks ([`super::EtcdStore`]'s catch-up), so the
//! watch never has to carry records in order, and a watch cancelled because
//! etcd compacted its own history (or a dropped connection) costs one re-read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Keys;
use super::client::{EtcdClient, number};

/// The first wait before re-opening a failed watch; it doubles up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MOST: Duration = Duration::from_secs(2);

/// Watches the cluster's keys from etcd revision `from` on; each change is told
/// on `changed` (coalesced: a full channel already says it).
pub fn spawn(
    client: Arc<EtcdClient>,
    keys: Keys,
    from: i64,
    changed: mpsc::Sender<()>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = follow(&client, &keys, from, &changed) => {}
        }
    })
}

async fn follow(client: &EtcdClient, keys: &Keys, mut next: i64, changed: &mpsc::Sender<()>) {
    let (start, end) = keys.range();
    let mut wait = RETRY_FIRST;
    loop {
        match client.watch(&start, &end, next).await {
            Ok(mut watch) => loop {
                match watch.next().await {
                    Ok(Some(answer)) => {
                        let result = &answer["result"];
                        if let Some(revision) = number(&result["header"]["revision"]) {
                            next = next.max(revision + 1);
                        }
                        let compacted = number(&result["compact_revision"]).unwrap_or(0) > 0;
                        // Measurements and the leader key change all the time; only
                        // the journal and the snapshot are the state.
                        let events = result["events"].as_array().is_some_and(|events| {
                            events.iter().any(|e| keys.is_state(&event_key(e)))
                        });
                        if events || compacted || result["canceled"] == serde_json::json!(true) {
                            let _ = changed.try_send(());
                        }
                        if compacted || result["canceled"] == serde_json::json!(true) {
                            break;
                        }
                        wait = RETRY_FIRST;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "etcd watch failed; re-reading and watching again");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot watch etcd; retrying"),
        }
        // Whatever was missed while not watching is read by the catch-up.
        let _ = changed.try_send(());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MOST);
    }
}

/// The key an event is about (empty if unreadable).
fn event_key(event: &serde_json::Value) -> Vec<u8> {
    let key = event["kv"]["key"].as_str().unwrap_or_default();
    STANDARD.decode(key).unwrap_or_default()
}
