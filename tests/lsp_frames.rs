//! The framing layer from outside: drives the real `docsmith serve` over stdio
//! with every malformed frame the adversarial run sent and a few hundred
//! seeded random mutations of valid frames (byte flips, truncations,
//! duplicated headers, wrong lengths, garbage), and after each one checks that
//! a valid request is still answered within a few seconds. The seed is fixed
//! and printed, so a failure can be replayed.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docsmith::lsp::frames::{Frame, FrameParser};
use serde_json::{json, Value};
use support::{LspClient, MockLlm};

/// Fixed: every run sends the same mutations.
const SEED: u64 = 0x5EED_D0C5_2024_0613;
/// Mutations sent to the binary.
const MUTATIONS: usize = 1000;
/// Mutations fed to the parser in-process (fast, so many more).
const PARSER_MUTATIONS: usize = 20_000;
/// How long a probe may wait for its answer after a bad frame.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
}

fn workspace() -> (Ws, MockLlm) {
    let mock = MockLlm::start(Arc::new(|_, _, _| "{}".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("docsmith.toml"), mock.config_toml("")).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    (
        Ws {
            _dir: dir,
            root,
            home,
        },
        mock,
    )
}

fn server(ws: &Ws) -> LspClient {
    let mut c = LspClient::spawn(
        Path::new(env!("CARGO_BIN_EXE_docsmith")),
        &ws.root,
        &[
            ("HOME", ws.home.display().to_string()),
            (
                "XDG_STATE_HOME",
                ws.home.join("state").display().to_string(),
            ),
            // The dropped frames are logged at warn; keep the test output short.
            ("DOCSMITH_LOG", "error".into()),
            // The workspace's docsmith.toml points at the scripted endpoint.
            ("DOCSMITH_TRUST_WORKSPACE", "1".into()),
        ],
    );
    c.initialize(&ws.root, json!({}), Value::Null);
    c
}

/// A valid request that must fail with "unknown command": the server is listening.
fn probe(c: &mut LspClient, after: &str) {
    let start = Instant::now();
    let r = c.request_within(
        "workspace/executeCommand",
        json!({"command": "docsmith.probe", "arguments": []}),
        ANSWER_WITHIN,
    );
    match r {
        Some(Err(e)) => assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("unknown command"),
            "after {after}: {e}"
        ),
        other => panic!(
            "after {after}: no answer to a valid request within {ANSWER_WITHIN:?} (got {other:?}); the server went deaf ({:?} elapsed)",
            start.elapsed()
        ),
    }
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "after {after}: the server exited"
    );
}

fn frame(body: &str) -> Vec<u8> {
    let mut f = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    f.extend(body.as_bytes());
    f
}

/// Error responses (no `method`) with this id received from index `since` on.
fn errors_for(c: &LspClient, since: usize, id: &Value) -> Vec<Value> {
    c.log[since..]
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.get("method").is_none() && &m["id"] == id && m.get("error").is_some())
        .cloned()
        .collect()
}

/// A malformed input: its name, its bytes, and the error it is answered with
/// (code and id; `None`: only logged).
type Case = (&'static str, Vec<u8>, Option<(i64, Value)>);

#[test]
fn every_malformed_frame_is_answered_and_the_server_keeps_listening() {
    let (ws, _mock) = workspace();
    let mut c = server(&ws);
    let lens = r#"{"jsonrpc":"2.0","id":"bad-1","method":"textDocument/codeLens","params":{"textDocument":{"uri":"file:///nowhere.py"}}}"#;
    let cases: Vec<Case> = vec![
        (
            "missing Content-Length",
            format!("Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n{lens}")
                .into_bytes(),
            Some((-32700, Value::Null)),
        ),
        (
            "non-numeric Content-Length",
            b"Content-Length: twelve\r\n\r\n{}".to_vec(),
            Some((-32700, Value::Null)),
        ),
        (
            "negative Content-Length",
            b"Content-Length: -1\r\n\r\n{}".to_vec(),
            Some((-32700, Value::Null)),
        ),
        (
            "Content-Length over the 64 MiB cap",
            b"Content-Length: 999999999\r\n\r\n{}".to_vec(),
            Some((-32700, Value::Null)),
        ),
        (
            "Content-Length too small",
            format!("Content-Length: 20\r\n\r\n{lens}").into_bytes(),
            Some((-32700, Value::Null)),
        ),
        (
            "Content-Length zero",
            format!("Content-Length: 0\r\n\r\n{lens}").into_bytes(),
            Some((-32700, Value::Null)),
        ),
        (
            "Content-Length too large",
            format!("Content-Length: {}\r\n\r\n{lens}", lens.len() + 100).into_bytes(),
            Some((-32600, json!("bad-1"))),
        ),
        (
            "invalid UTF-8 in a header",
            b"Content-Le\xc3\x28ngth: 2\r\n\r\n{}".to_vec(),
            Some((-32700, Value::Null)),
        ),
        (
            "invalid UTF-8 in a string",
            {
                let mut b =
                    br#"{"jsonrpc":"2.0","id":"bad-2","method":"x","params":{"s":""#.to_vec();
                b.extend(b"\xff\xfe\"}}");
                let mut f = format!("Content-Length: {}\r\n\r\n", b.len()).into_bytes();
                f.extend(b);
                f
            },
            Some((-32700, Value::Null)),
        ),
        (
            "garbage",
            b"\x00\x01\x02 GET / HTTP/1.1\r\n\r\n".to_vec(),
            Some((-32700, Value::Null)),
        ),
        ("not JSON", frame("{oops"), Some((-32700, Value::Null))),
        ("{}", frame("{}"), Some((-32600, Value::Null))),
        ("[]", frame("[]"), Some((-32600, Value::Null))),
        ("42", frame("42"), Some((-32600, Value::Null))),
        (
            "a batch",
            frame(&format!("[{lens}]")),
            Some((-32600, json!("bad-1"))),
        ),
        (
            "jsonrpc 1.0",
            frame(r#"{"jsonrpc":"1.0","id":"bad-3","method":"textDocument/codeLens"}"#),
            Some((-32600, json!("bad-3"))),
        ),
        (
            "method not a string",
            frame(r#"{"jsonrpc":"2.0","id":"bad-4","method":7}"#),
            Some((-32600, json!("bad-4"))),
        ),
        (
            "duplicate keys",
            frame(r#"{"jsonrpc":"2.0","id":"bad-5","id":"bad-5","method":"x"}"#),
            Some((-32600, json!("bad-5"))),
        ),
        (
            "a malformed response",
            frame(r#"{"jsonrpc":"2.0","id":99,"error":{"code":"no"}}"#),
            None,
        ),
    ];
    for (name, bytes, answer) in &cases {
        let since = c.log.len();
        c.send_raw(bytes);
        probe(&mut c, name);
        if let Some((code, id)) = answer {
            let errs = errors_for(&c, since, id);
            assert!(
                errs.iter().any(|e| e["error"]["code"] == json!(code)),
                "{name}: want error {code} with id {id}; got {errs:?}"
            );
        } else {
            assert!(
                errors_for(&c, since, &json!(99)).is_empty(),
                "{name}: a response is never answered"
            );
        }
    }
    // A frame over the cap whose bytes really arrive is skipped too (64 MiB + 1).
    let big = 64 * 1024 * 1024 + 1;
    let mut bytes = format!("Content-Length: {big}\r\n\r\n").into_bytes();
    bytes.resize(bytes.len() + big, b'a');
    let since = c.log.len();
    c.send_raw(&bytes);
    probe(&mut c, "a 64 MiB + 1 frame");
    assert_eq!(errors_for(&c, since, &Value::Null).len(), 1);
    assert!(c.stop().success());
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid frames to mutate: requests the server answers and notifications it
/// ignores, none of which stops it.
fn seeds() -> Vec<String> {
    vec![
        r#"{"jsonrpc":"2.0","id":"fz","method":"textDocument/codeLens","params":{"textDocument":{"uri":"file:///nowhere.py"}}}"#.into(),
        r#"{"jsonrpc":"2.0","id":"fz","method":"textDocument/codeAction","params":{"textDocument":{"uri":"file:///nowhere.py"},"range":{"start":{"line":0,"character":0},"end":{"line":0,"character":0}},"context":{"diagnostics":[]}}}"#.into(),
        r#"{"jsonrpc":"2.0","id":"fz","method":"workspace/executeCommand","params":{"command":"docsmith.fuzz","arguments":[{"task":1}]}}"#.into(),
        r#"{"jsonrpc":"2.0","method":"textDocument/didChange","params":{"textDocument":{"uri":"file:///nowhere.py","version":2},"contentChanges":[{"text":"é😀 Content-Length: 3"}]}}"#.into(),
        r#"{"jsonrpc":"2.0","method":"$/setTrace","params":{"value":"off"}}"#.into(),
        r#"{"jsonrpc":"2.0","id":"fz","result":null}"#.into(),
    ]
}

/// One random mutation of a valid frame, and what it was.
fn mutate(rng: &mut Rng, body: &str) -> (String, Vec<u8>) {
    let header = format!("Content-Length: {}\r\n\r\n", body.len());
    let mut f = header.clone().into_bytes();
    f.extend(body.as_bytes());
    match rng.below(8) {
        0 => {
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            (format!("{n} bit flip(s)"), f)
        }
        1 => {
            let at = rng.below(f.len());
            f.truncate(at);
            (format!("truncated at byte {at}"), f)
        }
        2 => {
            let line = format!("Content-Length: {}\r\n", body.len());
            let mut g = line.clone().into_bytes();
            g.extend(&f);
            ("duplicated Content-Length header".into(), g)
        }
        3 => {
            let wrong = match rng.below(4) {
                0 => body.len() + 1 + rng.below(200),
                1 => body.len().saturating_sub(1 + rng.below(body.len())),
                2 => 0,
                _ => usize::MAX / 2 + rng.below(1000),
            };
            let mut g = format!("Content-Length: {wrong}\r\n\r\n").into_bytes();
            g.extend(body.as_bytes());
            (
                format!("Content-Length {wrong} for {} bytes", body.len()),
                g,
            )
        }
        4 => {
            let n = 1 + rng.below(40);
            let mut g: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            g.extend(&f);
            (format!("{n} garbage bytes before"), g)
        }
        5 => {
            let i = header.len() + rng.below(body.len());
            let n = 1 + rng.below(8);
            for k in i..(i + n).min(f.len()) {
                f[k] = rng.next() as u8;
            }
            (format!("{n} random body bytes at {i}"), f)
        }
        6 => {
            let line = format!("Content-Length: {}\r\n", body.len() + 1 + rng.below(9));
            let mut g = line.into_bytes();
            g.extend(&f);
            ("conflicting Content-Length headers".into(), g)
        }
        _ => {
            let i = rng.below(f.len());
            let n = 1 + rng.below(20);
            let end = (i + n).min(f.len());
            f.drain(i..end);
            (format!("{} bytes cut at {i}", end - i), f)
        }
    }
}

#[test]
fn a_valid_request_is_answered_after_every_random_mutation() {
    println!("frame fuzzer: seed {SEED:#x}, {MUTATIONS} mutations");
    let (ws, _mock) = workspace();
    let mut c = server(&ws);
    let mut rng = Rng(SEED);
    let seeds = seeds();
    let start = Instant::now();
    for i in 0..MUTATIONS {
        let body = &seeds[rng.below(seeds.len())];
        let (what, bytes) = mutate(&mut rng, body);
        c.send_raw(&bytes);
        let name = format!(
            "mutation {i} (seed {SEED:#x}): {what}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        probe(&mut c, &name);
    }
    let code_count = |code: i64| {
        c.log
            .iter()
            .filter(|(_, m)| m["error"]["code"] == json!(code))
            .count()
    };
    let (parse, invalid) = (code_count(-32700), code_count(-32600));
    println!(
        "frame fuzzer: {MUTATIONS} mutations, every probe answered, {:.1} s; answered {parse} parse errors and {invalid} invalid requests",
        start.elapsed().as_secs_f64()
    );
    assert!(
        parse > MUTATIONS / 4,
        "most mutations are malformed ({parse} parse errors)"
    );
    assert!(c.stop().success());
}

#[test]
fn the_parser_recovers_after_every_random_mutation() {
    println!("parser fuzzer: seed {SEED:#x}, {PARSER_MUTATIONS} mutations");
    let probe = r#"{"jsonrpc":"2.0","id":1,"method":"workspace/executeCommand","params":{"command":"docsmith.probe","arguments":[]}}"#;
    let mut rng = Rng(SEED);
    let seeds = seeds();
    // One parser for the whole run, as in the server; input in random pieces.
    let mut p = FrameParser::default();
    for i in 0..PARSER_MUTATIONS {
        let body = &seeds[rng.below(seeds.len())];
        let (what, mut bytes) = mutate(&mut rng, body);
        bytes.extend(frame(probe));
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            p.push(&rest[..n]);
            rest = &rest[n..];
            out.extend(std::iter::from_fn(|| p.next_frame()));
        }
        assert_eq!(
            out.last(),
            Some(&Frame::Message(probe.as_bytes().to_vec())),
            "mutation {i} (seed {SEED:#x}): {what}: {:?} gave {out:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
