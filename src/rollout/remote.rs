//! [`RemoteStats`]: what the other replicas of a cluster measured on each
//! route, added to this replica's own counts when the controller judges a
//! step, so a candidate failing on another replica's traffic is seen.
//!
//! Replicas publish cumulative counts since they started; this keeps, per
//! replica and start (its incarnation), the last counts seen, and adds only
//! what grew. The totals therefore never go down: a replica that restarts
//! starts again from zero without taking back what it reported, and one that
//! dies keeps what it reported.
//!
//! It also keeps the other replicas' latest shadow report shares, which are
//! absolute snapshots: a replica that stops publishing drops out of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::routing::stats::StatsSnapshot;
use crate::shadow::report::ReportShare;

/// A route: model, version, and the stage it is served in (`production`, `canary`).
pub type RouteKey = (String, String, String);

/// A shadow report: model, version, and whether it is production's replay.
pub type ShadowKey = (String, String, bool);

/// One replica's report: who, which start of it, and its counts per route.
pub struct Report {
    pub replica: String,
    pub incarnation: String,
    pub routes: Vec<(RouteKey, StatsSnapshot)>,
}

#[derive(Clone, Default)]
pub struct RemoteStats(Arc<Mutex<Totals>>);

#[derive(Default)]
struct Totals {
    /// What each (replica, incarnation) last reported per route.
    last: HashMap<(String, String), HashMap<RouteKey, StatsSnapshot>>,
    totals: HashMap<RouteKey, StatsSnapshot>,
    /// The other replicas' latest shadow report shares.
    shadow: HashMap<ShadowKey, Vec<ReportShare>>,
    /// The leader's latest rollout readings per model, when another replica leads.
    leader_readings: serde_json::Map<String, serde_json::Value>,
}

impl RemoteStats {
    /// Takes in the other replicas' latest reports.
    pub fn observe(&self, reports: Vec<Report>) {
        let mut state = self.lock();
        let Totals { last, totals, .. } = &mut *state;
        for report in reports {
            let seen = last
                .entry((report.replica, report.incarnation))
                .or_default();
            for (route, now) in report.routes {
                let before = seen.get(&route).cloned().unwrap_or_default();
                let grown = now.since(&before);
                let total = totals.entry(route.clone()).or_default();
                *total = total.plus(&grown);
                seen.insert(route, now);
            }
        }
    }

    /// `local` with what the other replicas added on the same route.
    pub fn merged(&self, route: &RouteKey, local: StatsSnapshot) -> StatsSnapshot {
        let state = self.lock();
        match state.totals.get(route) {
            Some(remote) => local.plus(remote),
            None => local,
        }
    }

    /// Replaces the other replicas' shadow shares with the ones read now.
    pub fn observe_shadow(&self, shares: Vec<(ShadowKey, ReportShare)>) {
        let mut grouped: HashMap<ShadowKey, Vec<ReportShare>> = HashMap::new();
        for (key, share) in shares {
            grouped.entry(key).or_default().push(share);
        }
        self.lock().shadow = grouped;
    }

    /// The other replicas' shares of one shadow report.
    pub fn shadow_shares(&self, model: &str, version: &str, replay: bool) -> Vec<ReportShare> {
        let key = (model.to_string(), version.to_string(), replay);
        self.lock().shadow.get(&key).cloned().unwrap_or_default()
    }

    /// Replaces the leader's readings with the ones read now (none while this
    /// replica leads, or no leader published any).
    pub fn observe_leader_readings(&self, readings: serde_json::Map<String, serde_json::Value>) {
        self.lock().leader_readings = readings;
    }

    /// What the leader last measured for `model`'s rollout.
    pub fn leader_readings(&self, model: &str) -> Option<serde_json::Value> {
        self.lock().leader_readings.get(model).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counts(requests: usize, errors: usize) -> StatsSnapshot {
        let mut snapshot = StatsSnapshot::default();
        for i in 0..requests {
            snapshot.record(i < errors, Duration::from_millis(2));
        }
        snapshot
    }

    fn report(replica: &str, incarnation: &str, snapshot: StatsSnapshot) -> Report {
        let route = ("m".into(), "3".into(), "canary".into());
        Report {
            replica: replica.into(),
            incarnation: incarnation.into(),
            routes: vec![(route, snapshot)],
        }
    }

    #[test]
    fn only_growth_is_added_and_a_restart_takes_nothing_back() {
        let remote = RemoteStats::default();
        let route = ("m".to_string(), "3".to_string(), "canary".to_string());
        remote.observe(vec![
            report("b", "1", counts(10, 2)),
            report("c", "1", counts(5, 0)),
        ]);
        remote.observe(vec![report("b", "1", counts(12, 3))]);
        let merged = remote.merged(&route, counts(1, 0));
        assert_eq!((merged.requests, merged.errors), (18, 3));
        // b restarts: its counts begin again at zero and are added from there.
        remote.observe(vec![report("b", "2", counts(4, 4))]);
        let merged = remote.merged(&route, StatsSnapshot::default());
        assert_eq!((merged.requests, merged.errors), (21, 7));
        let other = ("m".to_string(), "2".to_string(), "production".to_string());
        assert_eq!(remote.merged(&other, counts(3, 0)).requests, 3);
    }
}
