//! Journal append: one record serialized, written and `fdatasync`ed, which is what
//! every acknowledged change waits for. Dominated by the disk's sync latency.
//!
//! Run: `cargo bench --bench journal`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stagegate::registry::Stage;
use stagegate::registry::record::{Action, Record};
use stagegate::registry::store::{FileStore, Store};

fn record(revision: u64) -> Record {
    Record {
        revision,
        time: "2026-11-27T09:00:00.000Z".into(),
        actor: "bench".into(),
        action: Action::Transition,
        model: "fraud".into(),
        version: "3".into(),
        from: Some(Stage::Staging),
        to: Some(Stage::Archived),
        reason: "journal append benchmark".into(),
        endpoints: vec![],
        grpc_endpoints: vec![],
        upstream_model: None,
        also: vec![],
        shadow: None,
        canary: None,
        rollout: None,
        observed: None,
    }
}

fn append(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("temp dir: {error}"),
    };
    let (mut store, _) = match FileStore::open(dir.path()) {
        Ok(opened) => opened,
        Err(error) => panic!("store: {error}"),
    };
    let mut revision = 0;
    let mut group = c.benchmark_group("journal");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("append_fsync", |b| {
        b.iter(|| {
            revision += 1;
            if let Err(error) = store.append(&record(revision)) {
                panic!("append: {error}");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
