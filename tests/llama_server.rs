//! docsmith against a real OpenAI-compatible server: llama.cpp's own
//! `llama-server` (built from the llama.cpp sources that the pinned
//! `llama-cpp-python` sdist vendors, by `scripts/build_llama_server.sh`)
//! serving the 0.5B model on 127.0.0.1. This is the path a team takes when it
//! moves the roles onto a shared llama.cpp or vLLM server; the scripted
//! endpoint of the other tests stands in for the model only there.
//!
//! Covered: JSON-schema output through `response_format` and several choices
//! through `n` (provider level); `docsmith generate` end to end with every role
//! on the server (candidates, test design and selection); a server killed in
//! the middle of a task (the task fails with the URL, the file is untouched);
//! a server restarted while docsmith retries (the task finishes).
//!
//! Needs `scripts/build_llama_server.sh` (run by `scripts/test.sh`; the test
//! runs it too, which is instant once built) and the 0.5B model (`docsmith
//! model install qwen2.5-coder-0.5b`). Fails with the fix when either is
//! missing. The tests take the server one at a time (2 cores).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use docsmith::llm::openai::{OpenAiOptions, OpenAiProvider};
use docsmith::llm::{ChatMessage, CompletionRequest, Provider, Samples};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn docsmith() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_docsmith"));
    c.env("DOCSMITH_LOG", "docsmith=info");
    c
}

/// The path of the built `llama-server` (builds it when missing).
fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DOCSMITH_LLAMA_SERVER") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build_llama_server.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (it needs cmake, g++ and PyPI):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The installed 0.5B GGUF, from `docsmith model list`.
fn small_model() -> PathBuf {
    let out = docsmith().args(["model", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    listing
        .lines()
        .find(|l| l.starts_with("qwen2.5-coder-0.5b ") && l.contains(" verified "))
        .and_then(|l| l.split_whitespace().last())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("the 0.5B model is not installed: run `docsmith model install qwen2.5-coder-0.5b` (scripts/test.sh does); `model list` said:\n{listing}")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: the status code, or `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// A running `llama-server`; killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts the server on `port` with the 0.5B model, 4 slots (so `n` up to
    /// 4 is accepted), and waits until `/health` says 200 (at most 120 s).
    /// Its log goes to a file in `log_dir`, shown when a test fails.
    fn start(port: u16, log_dir: &Path) -> Server {
        let log = log_dir.join(format!("llama-server-{port}-{}.log", now_ms()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(server_binary())
            .arg("-m")
            .arg(small_model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "8192", "-np", "4", "-t", "2"])
            // No repacked (extra) weight buffers: on these VMs the CPU
            // reports AMX, and llama.cpp's AMX matmul then crashes (SIGSEGV
            // in `ggml_backend_amx_mul_mat`) on the first decode.
            .arg("--no-repack")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        let mut s = Server { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if http_status(port, "/health") == Some(200) {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("llama-server exited ({status}):\n{}", s.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not ready in 120 s:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A workspace with `stub` in `m.py` and a user-level config (in its own
/// XDG config folder, so it counts as the user's) that routes every role to
/// `base_url`.
struct Workspace {
    dir: tempfile::TempDir,
    file: PathBuf,
}

const STUB: &str = r#"def count_vowels(text: str) -> int:
    """Return how many vowels (a, e, i, o, u, in either case) text contains.

    >>> count_vowels("Hello")
    2
    >>> count_vowels("xyz")
    0
    >>> count_vowels("AEIOU aeiou")
    10
    """
"#;

fn workspace(base_url: &str) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    let file = dir.path().join("m.py");
    std::fs::write(&file, STUB).unwrap();
    let conf = dir.path().join("home/config/docsmith");
    std::fs::create_dir_all(&conf).unwrap();
    let routes: String = ["planner", "test_designer", "developer", "critic"]
        .iter()
        .map(|r| format!("[roles.{r}]\nprovider = \"srv\"\n"))
        .collect();
    // Greedy-first off: the first round is the whole batch (greedy + sampled
    // candidates through `n`, and the test designer's JSON-schema call).
    std::fs::write(
        conf.join("config.toml"),
        format!(
            "candidates = 3\ngreedy_first = false\nmax_refinements = 1\n\
             [providers.srv]\nkind = \"openai\"\nbase_url = \"{base_url}\"\n\
             model = \"qwen2.5-coder-0.5b\"\ntimeout_ms = 600000\n{routes}"
        ),
    )
    .unwrap();
    Workspace { dir, file }
}

impl Workspace {
    fn generate(&self) -> Command {
        let mut c = docsmith();
        let home = self.dir.path().join("home");
        c.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env_remove("DOCSMITH_TRUST_WORKSPACE")
            .args([
                "generate",
                self.file.to_str().unwrap(),
                "--function",
                "count_vowels",
            ])
            .args(["--yes", "--apply", "--json"]);
        c
    }

    /// [`Workspace::generate`] started in the background, output captured.
    fn spawn_generate(&self) -> Child {
        self.generate()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// (role, provider, ok) of every stored LLM call.
    fn llm_calls(&self) -> Vec<(String, String, bool)> {
        let db = rusqlite::Connection::open(self.dir.path().join(".docsmith/docsmith.db")).unwrap();
        let mut st = db
            .prepare("SELECT role, provider, ok FROM llm_calls ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 1)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn provider(base_url: String) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiOptions {
        base_url,
        model: "qwen2.5-coder-0.5b".into(),
        api_key_env: None,
        timeout_ms: 120_000,
        name: "srv".into(),
        ..OpenAiOptions::default()
    })
    .unwrap()
}

#[test]
fn json_schema_output_and_n_choices_through_a_real_server() {
    let _one = support::one_model_at_a_time();
    let logs = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), logs.path());
    let p = provider(server.base_url());
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A schema the free-form answer would not follow: the server must enforce it.
    let schema = json!({
        "type": "object",
        "properties": {
            "tests": {
                "type": "array",
                "minItems": 2,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"call": {"type": "string"}, "expected": {"type": "string"}},
                    "required": ["call", "expected"]
                }
            }
        },
        "required": ["tests"]
    });
    let mut req = CompletionRequest::new(vec![
        ChatMessage::system("You write test cases for Python functions."),
        ChatMessage::user("Test cases for `def double(x: int) -> int` (returns 2 * x)."),
    ]);
    req.json_schema = Some(schema);
    req.max_tokens = 300;
    let c = rt
        .block_on(p.complete(&req, &CancellationToken::new()))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let v: Value =
        serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", c.text));
    let tests = v["tests"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!((2..=3).contains(&tests.len()), "{v}");
    assert!(
        tests
            .iter()
            .all(|t| t["call"].is_string() && t["expected"].is_string()),
        "{v}"
    );
    assert!(
        c.prompt_tokens > 0 && c.completion_tokens > 0,
        "usage is read"
    );

    // Three sampled choices from one request with `n`.
    let mut req = CompletionRequest::new(vec![ChatMessage::user("Name a colour. One word.")]);
    req.max_tokens = 8;
    req.samples = Some(Samples {
        n: 3,
        temperature: 1.0,
        top_p: 0.95,
    });
    let c = rt
        .block_on(p.complete(&req, &CancellationToken::new()))
        .unwrap();
    assert_eq!(
        c.alternatives.len(),
        3,
        "llama-server honours n: {:?}",
        c.alternatives
    );
    assert!(c.alternatives.iter().all(|a| !a.text.trim().is_empty()));
}

#[test]
fn generate_end_to_end_with_every_role_on_a_real_server() {
    let _one = support::one_model_at_a_time();
    let server = Server::start(free_port(), &std::env::temp_dir());
    let ws = workspace(&server.base_url());
    let started = Instant::now();
    let out = ws.generate().output().unwrap();
    let (stdout, stderr) = texts(&out);
    eprintln!(
        "generate took {:.1} s\nstderr:\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stderr}\n{stdout}\n{}",
        server.log_text()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["status"], "accepted", "{v}");
    // The file now passes its own examples under Python's doctest.
    let doctest = Command::new("python3")
        .args(["-m", "doctest", ws.file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        doctest.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&doctest.stdout),
        std::fs::read_to_string(&ws.file).unwrap()
    );
    // Every call went to the server, and the first round included the test designer's JSON call.
    let calls = ws.llm_calls();
    assert!(!calls.is_empty());
    assert!(
        calls.iter().all(|(_, p, ok)| p == "srv" && *ok),
        "{calls:?}"
    );
    assert!(calls.iter().any(|(r, _, _)| r == "developer"), "{calls:?}");
    assert!(
        calls.iter().any(|(r, _, _)| r == "test_designer"),
        "{calls:?}"
    );
}

#[test]
fn a_server_killed_mid_task_fails_the_task_naming_the_url_and_writes_nothing() {
    let _one = support::one_model_at_a_time();
    let mut server = Server::start(free_port(), &std::env::temp_dir());
    let ws = workspace(&server.base_url());
    let child = ws.spawn_generate();
    // Requests are in flight well within 1.5 s; generating three candidates on
    // 2 cores takes several seconds more.
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = texts(&out);
    assert_ne!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", server.port)),
        "the error names the endpoint:\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&ws.file).unwrap(),
        STUB,
        "file untouched"
    );
    let calls = ws.llm_calls();
    assert!(
        calls.iter().any(|(_, _, ok)| !ok),
        "the failed call is recorded: {calls:?}"
    );
}

#[test]
fn a_server_restarted_while_docsmith_retries_finishes_the_task() {
    let _one = support::one_model_at_a_time();
    let port = free_port();
    let ws = workspace(&format!("http://127.0.0.1:{port}/v1"));
    // A server that was up and went down: docsmith's first attempts are
    // refused and retried (0.5 s, then about 1 s, 2 s, with jitter) while it
    // comes back on the same port.
    drop(Server::start(port, &std::env::temp_dir()));
    let child = ws.spawn_generate();
    std::thread::sleep(Duration::from_millis(300));
    let server = Server::start(port, &std::env::temp_dir());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(
        stderr.contains("retrying"),
        "the refused attempts were retried and said so:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stderr}\n{stdout}\n{}",
        server.log_text()
    );
    assert_ne!(
        std::fs::read_to_string(&ws.file).unwrap(),
        STUB,
        "the result was written"
    );
}
