//! [`Published`]: what the control plane serves, as one snapshot: the catalog
//! (models and the journal-owned state) and the routing table built from it.
//! The data plane reads only its [`Router`]; readers above it (the admin API,
//! the rollout controller, the MLflow sync) read [`Served`], so they always see
//! the catalog together with the very table that routes by it.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};

use super::Catalog;
use crate::routing::{Router, RoutingTable};
use crate::telemetry::Telemetry;

pub struct Published {
    router: Arc<Router>,
    current: ArcSwap<Served>,
    /// One publisher at a time, so the snapshot and the router's table agree.
    publishing: Mutex<()>,
}

/// One published state: a catalog and the table built from it.
pub struct Served {
    pub catalog: Arc<Catalog>,
    pub table: Arc<RoutingTable>,
}

impl Published {
    /// Serves `catalog` at revision 1.
    pub fn new(catalog: Arc<Catalog>, telemetry: Telemetry) -> Published {
        let router = Arc::new(Router::new(&catalog.models, telemetry));
        let table = router.load_full();
        Published {
            router,
            current: ArcSwap::from_pointee(Served { catalog, table }),
            publishing: Mutex::new(()),
        }
    }

    /// Builds the next table from `catalog`, swaps it into the router (one
    /// atomic store: the data plane's switch), then publishes the pair.
    pub fn publish(&self, catalog: Arc<Catalog>) -> Arc<Served> {
        let _publisher = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let table = self.router.publish(&catalog.models);
        let served = Arc::new(Served { catalog, table });
        self.current.store(Arc::clone(&served));
        served
    }

    /// The current state. Lock-free; hold the guard only briefly.
    pub fn load(&self) -> Guard<Arc<Served>> {
        self.current.load()
    }

    /// The data plane's router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn telemetry(&self) -> &Telemetry {
        self.router.telemetry()
    }
}

impl Served {
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
}

/// A served state reads as its routing table.
impl Deref for Served {
    type Target = RoutingTable;
    fn deref(&self) -> &RoutingTable {
        &self.table
    }
}
