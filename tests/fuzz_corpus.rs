//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`), run through the
//! same entry points as ordinary tests, so every input that once mattered to a
//! fuzzer (seeds, crashes found and fixed) keeps being checked in CI.

use std::path::Path;

fn run_corpus(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        entry(&data);
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus in {}", dir.display());
}

#[test]
fn config_corpus() {
    run_corpus("config", stagegate::fuzzing::config);
}

#[test]
fn route_corpus() {
    run_corpus("route", stagegate::fuzzing::route);
}

#[test]
fn framing_corpus() {
    run_corpus("framing", stagegate::fuzzing::framing);
}

#[test]
fn compare_corpus() {
    run_corpus("compare", stagegate::fuzzing::compare);
}

#[test]
fn binary_answer_corpus() {
    run_corpus("binary_answer", stagegate::fuzzing::binary_answer);
}
