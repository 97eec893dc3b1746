//! Closed-loop traffic with random sticky user ids, for canaries and rollouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, StatusCode};

/// Sends requests with random user ids until dropped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<StatusCode>>,
}

impl Traffic {
    /// Eight clients in parallel, so a slow candidate does not starve stable.
    pub fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (flag, url) = (Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let client = super::client();
                    let mut statuses = Vec::new();
                    while !flag.load(Ordering::Acquire) {
                        let user = format!("user-{}", fastrand::u32(..));
                        let answer =
                            super::send(&client, Method::POST, &url, &[("x-user-id", &user)], "{}")
                                .await;
                        statuses.push(answer.status);
                    }
                    statuses
                })
            })
            .collect();
        let task = tokio::spawn(async move {
            let mut all = Vec::new();
            for client in clients {
                all.extend(client.await.unwrap());
            }
            all
        });
        Traffic { stop, task }
    }

    pub async fn stop(self) -> Vec<StatusCode> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap()
    }
}
