//! Test support shared by the protocol tests and the LSP benchmarks: a
//! blocking LSP client that drives `docsmith serve` over stdio, and an
//! OpenAI-compatible HTTP endpoint answering with scripted replies (it stands
//! in for the model only in protocol tests; end-to-end tests use the real one).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How the fake editor answers a request from the server: (method, params) -> result.
pub type Responder = Box<dyn FnMut(&str, &Value) -> Value + Send>;

/// A blocking LSP client over a child's stdio.
pub struct LspClient {
    pub child: Child,
    /// `None` once [`LspClient::close_stdin`] ran.
    stdin: Option<ChildStdin>,
    /// Sent as `processId` in `initialize` (default `None`: `null`).
    pub process_id: Option<u32>,
    rx: Receiver<Value>,
    next_id: i64,
    /// Every message received from the server, with its arrival time.
    pub log: Vec<(Instant, Value)>,
    pub responder: Responder,
    /// False: requests from the server are logged but never answered (an
    /// editor that stopped responding).
    pub answer_requests: bool,
}

/// The stock responder: accepts progress tokens and edits, answers
/// configuration with `null`, dismisses message requests.
pub fn default_responder() -> Responder {
    Box::new(|method, _params| match method {
        "workspace/applyEdit" => json!({"applied": true}),
        "workspace/configuration" => json!([null]),
        "window/showDocument" => json!({"success": true}),
        _ => Value::Null,
    })
}

impl LspClient {
    /// Starts `bin serve` in `cwd` with extra environment variables.
    pub fn spawn(bin: &Path, cwd: &Path, env: &[(&str, String)]) -> LspClient {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--stdio")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start docsmith serve");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse::<usize>().ok();
                    }
                }
                let mut buf = vec![0; len.expect("Content-Length header")];
                if r.read_exact(&mut buf).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&buf).expect("server sent valid JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        LspClient {
            child,
            stdin: Some(stdin),
            process_id: None,
            rx,
            next_id: 1,
            log: Vec::new(),
            responder: default_responder(),
            answer_requests: true,
        }
    }

    /// Writes one framed message.
    pub fn send(&mut self, msg: &Value) {
        let body = serde_json::to_vec(msg).unwrap();
        let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        frame.extend(body);
        self.send_raw(&frame);
    }

    /// Writes raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the server's stdin, as an editor that went away does.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            // Keep reading: a server blocked writing to a full pipe cannot exit.
            self.pump(Duration::from_millis(10));
        }
    }

    /// Sends a request and waits up to `timeout` for its response (answering
    /// the server's own requests meanwhile); `None` when none came.
    pub fn request_within(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Option<Result<Value, Value>> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + timeout;
        let mut scanned = self.log.len();
        loop {
            while scanned < self.log.len() {
                let m = &self.log[scanned].1;
                scanned += 1;
                if m.get("method").is_none() && m["id"] == json!(id) {
                    return Some(match m.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(m["result"].clone()),
                    });
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump(Duration::from_millis(20));
        }
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and waits for its response (answering the server's own
    /// requests meanwhile). `Ok(result)` or `Err(error object)`.
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.request_within(method, params, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no response to {method} within 60 s"))
    }

    /// Receives at most one message (waiting up to `timeout`), answering it if
    /// it is a request from the server, and logs it. False on timeout.
    pub fn pump(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                if m.get("method").is_some() && m.get("id").is_some() && self.answer_requests {
                    let method = m["method"].as_str().unwrap().to_string();
                    let result = (self.responder)(&method, &m["params"]);
                    let id = m["id"].clone();
                    self.log.push((Instant::now(), m));
                    self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
                } else {
                    self.log.push((Instant::now(), m));
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout.min(Duration::from_millis(50)));
                false
            }
        }
    }

    /// Waits until a message from index `since` on matches `pred`; returns it.
    pub fn wait_for(
        &mut self,
        since: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut scanned = since;
        loop {
            while scanned < self.log.len() {
                if pred(&self.log[scanned].1) {
                    return self.log[scanned].1.clone();
                }
                scanned += 1;
            }
            if Instant::now() >= deadline {
                let methods: Vec<String> = self.log[since..]
                    .iter()
                    .map(|(_, m)| {
                        m.get("method")
                            .map_or("<response>".into(), |v| v.to_string())
                    })
                    .collect();
                panic!("timed out waiting for {what}; received since: {methods:?}");
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// Messages with this method, from index `since` on.
    pub fn messages(&self, since: usize, method: &str) -> Vec<Value> {
        self.log[since..]
            .iter()
            .filter(|(_, m)| m["method"] == json!(method))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// `initialize` + `initialized` with typical capabilities; `extra` is merged
    /// into the capabilities object. Returns the initialize result.
    pub fn initialize(&mut self, root: &Path, extra_caps: Value, init_options: Value) -> Value {
        let mut caps = json!({
            "window": {"workDoneProgress": true, "showMessage": {}, "showDocument": {"support": true}},
            "workspace": {
                "applyEdit": true,
                "workspaceEdit": {"documentChanges": true, "resourceOperations": ["create"]},
                "codeLens": {"refreshSupport": true},
                "configuration": false
            },
            "textDocument": {"codeAction": {}, "codeLens": {}}
        });
        merge(&mut caps, &extra_caps);
        let root_uri = file_uri(root);
        let r = self
            .request(
                "initialize",
                json!({
                    "processId": self.process_id,
                    "rootUri": root_uri,
                    "workspaceFolders": [{"uri": root_uri, "name": "ws"}],
                    "capabilities": caps,
                    "initializationOptions": init_options,
                }),
            )
            .expect("initialize succeeds");
        self.notify("initialized", json!({}));
        r
    }

    pub fn open(&mut self, path: &Path, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": file_uri(path), "languageId": "python", "version": 1, "text": text}}),
        );
    }

    /// Code action titles and their commands at a line.
    pub fn code_actions(&mut self, path: &Path, line: u32) -> Vec<Value> {
        let r = self
            .request(
                "textDocument/codeAction",
                json!({
                    "textDocument": {"uri": file_uri(path)},
                    "range": {"start": {"line": line, "character": 0}, "end": {"line": line, "character": 0}},
                    "context": {"diagnostics": []}
                }),
            )
            .expect("codeAction succeeds");
        r.as_array().cloned().unwrap_or_default()
    }

    /// Runs the command of the action whose title starts with `prefix`.
    pub fn run_action(&mut self, path: &Path, line: u32, prefix: &str) -> Result<Value, Value> {
        let actions = self.code_actions(path, line);
        let a = actions
            .iter()
            .find(|a| a["title"].as_str().unwrap_or("").starts_with(prefix))
            .unwrap_or_else(|| panic!("no action starting with {prefix:?} in {actions:#?}"))
            .clone();
        self.request("workspace/executeCommand", a["command"].clone())
    }

    /// `shutdown` + `exit`, then waits for the process (up to 10 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        match self.wait_exit(Duration::from_secs(10)) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                panic!("server did not exit within 10 s of `exit`");
            }
        }
    }
}

impl Drop for LspClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// Applies LSP text edits (UTF-16 positions) to `text`.
pub fn apply_edits(text: &str, edits: &[Value]) -> String {
    let offset = |pos: &Value| -> usize {
        let line = pos["line"].as_u64().unwrap() as usize;
        let ch = pos["character"].as_u64().unwrap() as usize;
        let mut at = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i == line {
                let mut units = 0;
                for (b, c) in l.char_indices() {
                    if units >= ch || c == '\n' {
                        return at + b;
                    }
                    units += c.len_utf16();
                }
                return at + l.len();
            }
            at += l.len();
        }
        text.len()
    };
    let mut spans: Vec<(usize, usize, String)> = edits
        .iter()
        .map(|e| {
            (
                offset(&e["range"]["start"]),
                offset(&e["range"]["end"]),
                e["newText"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = text.to_string();
    for (a, b, t) in spans {
        out.replace_range(a..b, &t);
    }
    out
}

/// The role a chat request is for, from all its messages (every role shares
/// one system message; the user message names the task), as
/// `roles::request_kind` reads a request.
pub fn role_of(body: &Value) -> &'static str {
    let all: Vec<&str> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_str())
        .collect();
    docsmith::roles::prompt_kind(&all.join("\n"))
}

/// Scripted replies: (role, n-th call for that role from 0, request body) -> reply text.
pub type Script = Arc<dyn Fn(&str, usize, &Value) -> String + Send + Sync>;

/// What the endpoint does with a request instead of answering it from the script.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, a `Retry-After` header when given, and a JSON error body.
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// Read the request, then say nothing until the client gives up.
    Hang,
}

/// An OpenAI-compatible `POST /v1/chat/completions` endpoint on 127.0.0.1.
pub struct MockLlm {
    pub base_url: String,
    /// Request bodies received, with their role.
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
    /// Delay before each reply, ms (to keep a task running).
    pub delay_ms: Arc<AtomicU64>,
    /// Faults served to the next requests, one each, in order (then the script answers).
    pub faults: Arc<Mutex<VecDeque<Fault>>>,
    /// When each request (faulted or not) was read, in order.
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
    /// The header lines of each request (faulted or not), as sent, in order.
    pub headers: Arc<Mutex<Vec<Vec<String>>>>,
}

impl MockLlm {
    pub fn start(script: Script) -> MockLlm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Mutex::new(VecDeque::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let (reqs, delay) = (requests.clone(), delay_ms.clone());
        let (faults2, arrivals2, headers2) = (faults.clone(), arrivals.clone(), headers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (reqs, delay, counts, script) =
                    (reqs.clone(), delay.clone(), counts.clone(), script.clone());
                let (faults, arrivals, headers) =
                    (faults2.clone(), arrivals2.clone(), headers2.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut len = 0;
                    let mut lines = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        lines.push(line.trim_end().to_string());
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    arrivals.lock().unwrap().push(Instant::now());
                    headers.lock().unwrap().push(lines);
                    let fault = faults.lock().unwrap().pop_front();
                    match fault {
                        Some(Fault::Status { code, retry_after }) => {
                            let body = json!({"error": {"message": format!("mock fault {code}")}})
                                .to_string();
                            let extra = retry_after
                                .map(|v| format!("Retry-After: {v}\r\n"))
                                .unwrap_or_default();
                            let _ = write!(
                                s,
                                "HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            return;
                        }
                        Some(Fault::Hang) => {
                            // Until the client closes the connection.
                            let _ = r.read(&mut [0u8; 1]);
                            return;
                        }
                        None => {}
                    }
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let role = role_of(&body);
                    let n = {
                        let mut c = counts.lock().unwrap();
                        let e = c.entry(role.to_string()).or_insert(0);
                        *e += 1;
                        *e - 1
                    };
                    reqs.lock().unwrap().push((role.to_string(), body.clone()));
                    std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
                    let content = script(role, n, &body);
                    let reply = json!({
                        "id": "mock", "object": "chat.completion", "model": "mock",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20}
                    })
                    .to_string();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        reply.len(),
                        reply
                    );
                });
            }
        });
        MockLlm {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            requests,
            delay_ms,
            faults,
            arrivals,
            headers,
        }
    }

    /// `docsmith.toml` routing every role to this endpoint.
    pub fn config_toml(&self, extra: &str) -> String {
        format!(
            "{extra}\n[providers.mock]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"mock\"\nsupports_json_schema = false\n\n\
             [roles.planner]\nprovider = \"mock\"\n[roles.test_designer]\nprovider = \"mock\"\n\
             [roles.developer]\nprovider = \"mock\"\n[roles.critic]\nprovider = \"mock\"\n",
            self.base_url
        )
    }

    /// Queues `fault` for the next request.
    pub fn fault(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    pub fn roles(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }
}

/// `t` as an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`), whole
/// seconds, from `date(1)`: a second opinion next to docsmith's own parser.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let out = Command::new("date")
        .env("LC_ALL", "C")
        .args([
            "-u",
            "-d",
            &format!("@{secs}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .output()
        .expect("run date(1)");
    assert!(out.status.success(), "date(1) failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A script whose developer always answers `code` in a fenced block; the
/// planner plans without a question, the test designer adds no tests.
pub fn code_script(code: &str) -> Script {
    let code = code.to_string();
    Arc::new(move |role, _n, _body| match role {
        "developer" => format!("```python\n{code}\n```"),
        "planner" => json!({"understanding": "as documented", "steps": [], "edge_cases": [],
                            "assumptions": [], "question": "", "options": []})
        .to_string(),
        "tests" => json!({"tests": []}).to_string(),
        _ => json!({"root_cause": "", "instructions": ""}).to_string(),
    })
}

/// `docsmith generate FILE --function NAME --yes` run in `cwd`, isolated from
/// the caller's configuration: `HOME` and the XDG folders under `home` (the
/// user-level file is `home/config/docsmith/config.toml`; no model is
/// installed there), and every `DOCSMITH_*` variable removed but
/// `DOCSMITH_LOG=warn`.
pub fn generate_command(file: &Path, function: &str, cwd: &Path, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_docsmith"));
    c.args([
        "generate",
        &file.display().to_string(),
        "--function",
        function,
        "--yes",
    ])
    .current_dir(cwd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DOCSMITH_") {
            c.env_remove(k);
        }
    }
    c.env("DOCSMITH_LOG", "warn")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_STATE_HOME", home.join("state"));
    c
}

/// Routes every role to `mock` through the environment (a provider named
/// `openai`, user-level).
pub fn route_env(cmd: &mut Command, mock: &MockLlm) {
    cmd.env("DOCSMITH_OPENAI_BASE_URL", &mock.base_url)
        .env("DOCSMITH_OPENAI_MODEL", "mock");
    for role in ["PLANNER", "TEST_DESIGNER", "DEVELOPER", "CRITIC"] {
        cmd.env(format!("DOCSMITH_{role}_PROVIDER"), "openai");
    }
}

/// A folder holding a `bwrap` that fails every run, to put first on `PATH`:
/// only `sandbox.mode = "rlimits_only"` can run code then. The folder is
/// 0755, so a sandbox user can traverse it.
pub fn fake_bwrap_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::Builder::new()
        .prefix("docsmith-adv-bin-")
        .tempdir()
        .unwrap();
    let p = d.path().join("bwrap");
    std::fs::write(
        &p,
        "#!/bin/sh\necho 'bwrap: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `PATH` with `first` in front.
pub fn path_with(first: &Path) -> String {
    format!(
        "{}:{}",
        first.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Copies the folder `from` (recursively) to `to`: the fixture project
/// `tests/fixtures/shop` into a test's workspace.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Serialises the tests of one test binary that run a real model (in-process
/// or behind a server): two at once would share the 2 cores of a CI machine,
/// and on 2 cores two generating processes each run several times slower
/// (FACTS.md: 2-thread generation falls from ~31 to ~6 tokens/s beside
/// another busy process), so together they finish later than one after the
/// other. Hold the guard for the whole test; a panicking holder does not
/// poison it for the others.
pub fn one_model_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}
