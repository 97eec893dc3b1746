//! `loadtest rollouts` end to end, briefly: the stagegate binary in front of the
//! Python model servers, one rollout of the failing candidate, which the error
//! gate must stop at the first step. (The full run, with its table in the
//! README, is `loadtest rollouts` with its defaults.)

use std::path::PathBuf;

use clap::Parser;
use loadtest::rollouts::{RolloutsArgs, measure};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    rollouts: RolloutsArgs,
}

/// `target/<profile>/stagegate`, built by `cargo test --workspace` for the
/// gateway's own integration tests.
fn stagegate() -> PathBuf {
    let exe = std::env::current_exe().expect("this test's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("stagegate"))
        .expect("a target directory");
    assert!(
        binary.is_file(),
        "no stagegate binary at {}: run `cargo test --workspace` (or `cargo build -p stagegate`) first",
        binary.display()
    );
    binary
}

#[test]
fn a_failing_candidate_behind_the_real_binary_is_stopped_at_the_first_step() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let binary = stagegate();
    let args = Cli::parse_from([
        "rollouts",
        "--stagegate",
        binary.to_str().expect("a UTF-8 path"),
        "--python",
        &python,
        "--identical",
        "0",
        "--slow",
        "0",
        "--failing",
        "1",
        "--clients",
        "8",
        "--median-ms",
        "2",
        "--max-step-duration-s",
        "60",
        "--between-s",
        "1",
    ])
    .rollouts;
    let measured = match measure(&args) {
        Ok(measured) => measured,
        Err(error) => {
            panic!("{error} (the model servers need Python 3 as `{python}`, or set PYTHON to one)")
        }
    };
    assert_eq!(
        measured.outcomes(),
        [("+5% errors", "rolled_back", 1, Some("error_rate"))]
    );
}
