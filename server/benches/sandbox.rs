//! Wall time of sandboxed test runs (`cargo bench --bench sandbox`). Prints
//! medians, minima and maxima; asserts only that the runs pass as expected.
//!
//! 1. `run_tests`: one candidate on 10 docstring tests, 20 runs in each
//!    mode (`bwrap`, then `rlimits_only`): what one greedy candidate costs.
//! 2. `run_many`: 5 candidates on 10 tests (one process each, then the
//!    referee), 5 runs under bwrap: what a sampled round costs.
//!
//! Each run starts its own processes in a fresh work dir, as the loop does.
//! These were `timing_*` tests (one ignored pair in
//! `tests/sandbox_adversarial.rs`, one unit test in `sandbox::tests`); a
//! benchmark runs them on demand instead of in every `cargo test`.

use std::time::Instant;

use docsmith::bench::stats::quantile;
use docsmith::sandbox::{Sandbox, SandboxConfig, SandboxMode};
use docsmith::types::{TestCase, TestOrigin};
use tokio_util::sync::CancellationToken;

/// Runs of `run_tests` per mode.
const SINGLE_RUNS: usize = 20;
/// Runs of `run_many`.
const MANY_RUNS: usize = 5;

fn tc(i: usize) -> TestCase {
    TestCase {
        id: format!("t{i}"),
        origin: TestOrigin::Docstring,
        call: format!("f({i})"),
        expected: format!("{}", i * 2),
        raises: None,
        note: String::new(),
        options: Vec::new(),
    }
}

fn sandbox(mode: SandboxMode) -> Sandbox {
    Sandbox::new(SandboxConfig {
        mode,
        per_test_timeout_ms: 2000,
        wall_timeout_ms: 15_000,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("the {mode:?} sandbox does not work here: {e}"))
}

/// `median ... (min ..., max ...) over N`, in milliseconds.
fn summary(ms: &[f64]) -> String {
    let q = |p| quantile(ms, p).unwrap_or(f64::NAN);
    format!(
        "median {:.0} ms (min {:.0}, max {:.0}) over {}",
        q(0.5),
        q(0.0),
        q(1.0),
        ms.len()
    )
}

async fn single(mode: SandboxMode) {
    let sb = sandbox(mode);
    let code = "def f(x):\n    return x * 2\n";
    let tests: Vec<TestCase> = (0..10).map(tc).collect();
    let mut ms = Vec::new();
    for _ in 0..SINGLE_RUNS {
        let dir = sb.new_work_dir().expect("work dir");
        let t0 = Instant::now();
        let run = sb
            .run_tests(dir.path(), code, &tests, &CancellationToken::new())
            .await
            .expect("run_tests");
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(run.all_passed(), "{run:?}");
    }
    println!(
        "run_tests, 1 candidate x 10 tests, {mode:?}: {}",
        summary(&ms)
    );
}

async fn many() {
    let sb = sandbox(SandboxMode::Bwrap);
    let candidates: Vec<String> = (0..5)
        .map(|i| format!("def f(x):\n    return x * 2 + {}\n", i % 2))
        .collect();
    let tests: Vec<TestCase> = (0..10).map(tc).collect();
    let mut ms = Vec::new();
    for _ in 0..MANY_RUNS {
        let dir = sb.new_work_dir().expect("work dir");
        let t0 = Instant::now();
        let runs = sb
            .run_many(
                dir.path(),
                &candidates,
                &tests,
                None,
                &CancellationToken::new(),
            )
            .await
            .expect("run_many");
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(runs[0].all_passed() && !runs[1].all_passed());
    }
    println!(
        "run_many, 5 candidates x 10 tests, Bwrap, {} cores: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        summary(&ms)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are not used.
    println!("command: cargo bench --bench sandbox");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        single(SandboxMode::Bwrap).await;
        single(SandboxMode::RlimitsOnly).await;
        many().await;
    });
}
