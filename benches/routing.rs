//! Routing micro-benchmarks: what the request path pays to pick a version route.
//!
//! - `resolve/*`: path parsing + model lookup + pins + endpoint pick, per path style,
//!   on a table of 50 models with 3 versions each;
//! - `canary/*`: the same with a 10% sticky canary, keyed by header or random;
//!   and the sticky hash alone;
//! - `router/load*`: `ArcSwap::load` of the current table, alone and while another
//!   thread publishes a new table in a loop.
//!
//! Run: `cargo bench --bench routing`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use stagegate::config::Config;
use stagegate::registry::{Canary, ModelSpec};
use stagegate::routing::canary::bucket;
use stagegate::routing::{self, Router};
use stagegate::telemetry::Telemetry;

const MODELS: usize = 50;

fn catalog() -> Vec<ModelSpec> {
    let mut text = String::new();
    for m in 0..MODELS {
        text.push_str(&format!("[[models]]\nname = \"model-{m}\"\n"));
        for (v, stage) in [(1, "archived"), (2, "production"), (3, "staging")] {
            text.push_str(&format!(
                "[[models.versions]]\nversion = \"{v}\"\nstage = \"{stage}\"\n\
                 endpoints = [\"http://10.0.{m}.{v}:8080\", \"http://10.1.{m}.{v}:8080\"]\n"
            ));
        }
    }
    match Config::parse(&text, "bench") {
        Ok(config) => config.models,
        Err(error) => panic!("bench config: {error}"),
    }
}

fn resolve(c: &mut Criterion) {
    let router = Router::new(&catalog(), Telemetry::new());
    let none = HeaderMap::new();
    let mut staging_pin = HeaderMap::new();
    staging_pin.insert("x-stagegate-stage", HeaderValue::from_static("staging"));
    let cases = [
        ("kserve_v1", "/v1/models/model-42:predict", &none),
        ("oip_v2", "/v2/models/model-42/infer", &none),
        (
            "oip_v2_version_pin",
            "/v2/models/model-42/versions/3/infer",
            &none,
        ),
        ("generic", "/models/model-42/invocations", &none),
        (
            "stage_pin_header",
            "/v2/models/model-42/infer",
            &staging_pin,
        ),
    ];
    let mut group = c.benchmark_group("resolve");
    for (name, path, headers) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let table = router.load();
                let resolved = routing::resolve(&table, black_box(path), headers);
                let route = resolved.map(|r| r.route.pick_endpoint().map(Arc::clone));
                black_box(route.is_ok())
            })
        });
    }
    group.finish();
}

fn canary(c: &mut Criterion) {
    let mut models = catalog();
    for model in &mut models {
        model.sticky.header = match stagegate::vocab::HeaderNameText::parse("x-user-id") {
            Ok(name) => Some(name),
            Err(error) => panic!("bench header: {error}"),
        };
        model.canary = Some(Canary {
            version: "3".into(),
            weight: 10.0,
            salt: 42,
        });
    }
    let router = Router::new(&models, Telemetry::new());
    let mut keyed = HeaderMap::new();
    keyed.insert("x-user-id", HeaderValue::from_static("user-123456"));
    let keyless = HeaderMap::new();
    let mut group = c.benchmark_group("canary");
    for (name, headers) in [("sticky_header", &keyed), ("no_key_random", &keyless)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let table = router.load();
                let resolved =
                    routing::resolve(&table, black_box("/v2/models/model-42/infer"), headers);
                black_box(resolved.map(|r| r.route.version().len()).unwrap_or(0))
            })
        });
    }
    group.bench_function("bucket_hash", |b| {
        b.iter(|| black_box(bucket(42, black_box(b"user-123456"))))
    });
    group.finish();
}

fn load(c: &mut Criterion) {
    let catalog = catalog();
    let router = Arc::new(Router::new(&catalog, Telemetry::new()));
    let mut group = c.benchmark_group("router");
    group.bench_function("load", |b| b.iter(|| black_box(router.load().revision())));

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (router, stop) = (Arc::clone(&router), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                router.publish(&catalog);
                swaps += 1;
            }
            swaps
        })
    };
    group.bench_function("load_under_swap_loop", |b| {
        b.iter(|| black_box(router.load().revision()))
    });
    stop.store(true, Ordering::Relaxed);
    let swaps = publisher.join().unwrap_or(0);
    group.finish();
    eprintln!("router/load_under_swap_loop: {swaps} tables published meanwhile");
}

criterion_group!(benches, resolve, canary, load);
criterion_main!(benches);
