//! Endpoint faults against the scripted OpenAI-compatible endpoint
//! (`support::MockLlm`): `Retry-After` on 429 and 503 (seconds and HTTP
//! dates) is waited, a hung endpoint times out with a message that says what
//! timed out and how to raise it, retry warnings count attempts, and logs
//! carry no colour codes when stderr is not a terminal.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use docsmith::llm::openai::{OpenAiOptions, OpenAiProvider};
use docsmith::llm::{ChatMessage, CompletionRequest, LlmError, Provider};
use support::{http_date, Fault, MockLlm};
use tokio_util::sync::CancellationToken;

fn mock() -> MockLlm {
    MockLlm::start(Arc::new(|_, _, _| "hello".to_string()))
}

fn provider(mock: &MockLlm, timeout_ms: u64) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiOptions {
        base_url: mock.base_url.clone(),
        model: "mock".into(),
        api_key_env: None,
        timeout_ms,
        name: "mock".into(),
        ..OpenAiOptions::default()
    })
    .unwrap()
}

/// Queues `n` answers of 429 with `Retry-After: 0`.
fn rate_limit(m: &MockLlm, n: usize) {
    for _ in 0..n {
        m.fault(Fault::Status {
            code: 429,
            retry_after: Some("0".into()),
        });
    }
}

fn req() -> CompletionRequest {
    CompletionRequest::new(vec![ChatMessage::system("s"), ChatMessage::user("u")])
}

/// Time between the first and the second request the endpoint received.
fn gap(mock: &MockLlm) -> Duration {
    let a = mock.arrivals.lock().unwrap();
    assert_eq!(a.len(), 2, "one retry");
    a[1] - a[0]
}

/// Log lines written while `f` runs (on this thread).
fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || w.clone())
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_429_retry_after_in_seconds_is_waited() {
    let m = mock();
    // 2 s: longer than the first backoff delay could be (0.5 s, at most doubled by jitter).
    m.fault(Fault::Status {
        code: 429,
        retry_after: Some("2".into()),
    });
    let start = Instant::now();
    let c = block_on(provider(&m, 10_000).complete(&req(), &CancellationToken::new())).unwrap();
    assert_eq!(c.text, "hello");
    let g = gap(&m);
    println!("429 Retry-After: 2 -> retried after {g:?}");
    assert!(g >= Duration::from_millis(1950), "waited {g:?}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_503_retry_after_as_an_http_date_is_waited() {
    let m = mock();
    // Dates have whole seconds: 4 s from now is a wait of 3 to 4 s (less the
    // time the reply takes to arrive).
    let at = SystemTime::now() + Duration::from_secs(4);
    m.fault(Fault::Status {
        code: 503,
        retry_after: Some(http_date(at)),
    });
    let c = block_on(provider(&m, 10_000).complete(&req(), &CancellationToken::new())).unwrap();
    assert_eq!(c.text, "hello");
    let g = gap(&m);
    println!("503 Retry-After: {} -> retried after {g:?}", http_date(at));
    assert!(
        g >= Duration::from_millis(2500) && g < Duration::from_secs(6),
        "waited {g:?}"
    );
}

#[test]
fn retry_warnings_count_attempts_and_only_the_final_error_counts_retries() {
    let m = mock();
    rate_limit(&m, 4);
    let p = provider(&m, 10_000);
    let (r, logs) = logs_of(|| block_on(p.complete(&req(), &CancellationToken::new())));
    let err = r.unwrap_err();
    println!("{logs}\nfinal: {err}");
    assert!(
        matches!(err, LlmError::RateLimited { retries: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("(429) after 3 retries"), "{err}");
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 3, "{logs}");
    for (w, n) in warnings.iter().zip(2..) {
        assert!(
            w.contains(&format!("retrying (attempt {n} of 4) after 0.0 s")),
            "{w}"
        );
        assert!(w.contains("HTTP 429"), "{w}");
        assert!(
            !w.contains("after 3 retries") && !w.contains("after retries"),
            "{w}"
        );
    }
    assert_eq!(m.arrivals.lock().unwrap().len(), 4);
}

#[test]
fn a_hung_endpoint_times_out_saying_what_timed_out() {
    let m = mock();
    m.fault(Fault::Hang);
    let start = Instant::now();
    let err =
        block_on(provider(&m, 1_000).complete(&req(), &CancellationToken::new())).unwrap_err();
    let took = start.elapsed();
    println!("hung endpoint: {took:?}: {err}");
    let msg = err.to_string();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
    for want in [
        format!("no reply from {}/chat/completions within 1 s", m.base_url),
        "raise `timeout_ms` under [providers.mock]".to_string(),
        "(now 1000)".to_string(),
    ] {
        assert!(msg.contains(&want), "{want:?} in {msg}");
    }
    assert!(!msg.contains("is the server running"), "{msg}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        m.arrivals.lock().unwrap().len(),
        1,
        "a timeout is not retried"
    );
}

#[test]
fn cli_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let m = mock();
    // Every call fails: the planner gives up after its retries and the run ends.
    rate_limit(&m, 40);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docsmith.toml"), m.config_toml("")).unwrap();
    std::fs::write(
        dir.path().join("calc.py"),
        "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n",
    )
    .unwrap();
    let out = Command::new(Path::new(env!("CARGO_BIN_EXE_docsmith")))
        .args(["generate", "calc.py", "-f", "add", "--yes"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        // The workspace's docsmith.toml points at the scripted endpoint.
        .env("DOCSMITH_TRUST_WORKSPACE", "1")
        .env_remove("DOCSMITH_LOG")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("retrying (attempt 2 of 4)"),
        "a retry warning was logged: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escape codes in a piped stderr: {stderr:?}"
    );
}

#[test]
fn a_dead_endpoint_is_skipped_for_its_fallback_after_failing_calls_in_a_row() {
    // Every role: first a provider whose port refuses connections, then the
    // scripted endpoint. Every candidate is wrong, so the task makes calls
    // until its budget is spent: enough for the breaker to open.
    let good = MockLlm::start(Arc::new(|role, n, _| match role {
        "developer" => format!("```python\ndef add(a, b):\n    return a - b - {n}\n```"),
        "planner" => serde_json::json!({"understanding": "adds", "steps": [], "edge_cases": [],
                                        "assumptions": [], "question": "", "options": []})
        .to_string(),
        "tests" => serde_json::json!({"tests": []}).to_string(),
        _ => serde_json::json!({"root_cause": "subtracts", "instructions": "add"}).to_string(),
    }));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let mut toml = format!(
        "[providers.dead]\nkind = \"openai\"\nbase_url = \"{dead_url}\"\nmodel = \"down\"\n\
         [providers.good]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"mock\"\nsupports_json_schema = false\n",
        good.base_url
    );
    for role in ["planner", "test_designer", "developer", "critic"] {
        toml.push_str(&format!(
            "[roles.{role}]\nprovider = \"dead\"\nfallback = [\"good\"]\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    std::fs::write(ws.join("docsmith.toml"), toml).unwrap();
    let file = ws.join("calc.py");
    std::fs::write(
        &file,
        "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n",
    )
    .unwrap();
    let out = support::generate_command(&file, "add", &ws, &home)
        .args(["--trust-workspace", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // No candidate passes: the budget is spent (exit 5), not a model error.
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    // Shown in progress, with the reason.
    assert!(
        // (3 or more: the round-2 calls run concurrently and may fail together)
        stderr.contains("developer: skipped dead:down (failed ")
            && stderr.contains("calls in a row (last: cannot reach"),
        "{stderr}"
    );
    // Recorded: the skipped calls are in the store as calls not made.
    let db = rusqlite::Connection::open(ws.join(".docsmith/docsmith.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let skipped = count(
        "SELECT count(*) FROM llm_calls WHERE provider = 'dead:down' AND NOT ok \
         AND error LIKE 'skipped: failed % calls in a row%' AND latency_ms = 0",
    );
    let made = count("SELECT count(*) FROM llm_calls WHERE ok AND provider = 'good'");
    assert!(skipped >= 1, "skipped rows: {skipped}\n{stderr}");
    assert!(
        made >= 4,
        "the fallback served every call: {made}\n{stderr}"
    );
}
