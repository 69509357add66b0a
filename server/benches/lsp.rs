//! Latency of the language server, driven over stdio like an editor
//! (`cargo bench --bench lsp`). Prints medians and p99s; asserts nothing.
//!
//! 1. executeCommand `docsmith.generate` -> first `$/progress` (begin), 10 runs
//!    (a scripted endpoint stands in for the model; only the server's own work is timed).
//! 2. `textDocument/codeAction` and `didChange` + codeAction round trips on
//!    generated 500-, 5,000- and 50,000-line files, with no task and while a
//!    task runs on the real local model (when it is installed), 200 samples
//!    each; `textDocument/codeLens` after an edit, 50 samples each.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docsmith::lsp::protocol::CANCEL;
use serde_json::{json, Value};
use support::{file_uri, LspClient, MockLlm};

fn bin() -> PathBuf {
    // target/<profile>/deps/lsp-<hash> -> target/<profile>/docsmith
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let b = dir.join("docsmith");
    assert!(
        b.exists(),
        "build the binary first: cargo build (looked for {})",
        b.display()
    );
    b
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} median={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        v[v.len() - 1]
    )
}

/// A Python file of about `lines` lines: many small functions, a stub at the end.
fn python_file(lines: usize) -> String {
    let mut s = String::from("import math\n\n\n");
    let mut i = 0;
    while s.lines().count() + 12 < lines {
        s.push_str(&format!(
            "def helper_{i}(x, y=2):\n    \"\"\"Helper {i}: scale x — ü.\"\"\"\n    total = 0\n    for k in range(y):\n        total += math.sqrt(abs(x)) * k\n    return total\n\n\n"
        ));
        i += 1;
    }
    s.push_str("def target(n):\n    \"\"\"Return the n-th triangular number.\n\n    >>> target(3)\n    6\n    \"\"\"\n    ...\n");
    s
}

fn workspace(toml: &str, text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("docsmith.toml"), toml).unwrap();
    let file = root.join("big.py");
    std::fs::write(&file, text).unwrap();
    (d, root, file)
}

fn server(root: &Path, home: &Path) -> LspClient {
    let mut c = LspClient::spawn(
        &bin(),
        root,
        &[
            ("XDG_STATE_HOME", home.join("state").display().to_string()),
            ("DOCSMITH_LOG", "warn,llama-cpp-2=error".into()),
            // The workspace's docsmith.toml points at the scripted endpoint.
            ("DOCSMITH_TRUST_WORKSPACE", "1".into()),
        ],
    );
    c.initialize(root, json!({}), Value::Null);
    c
}

fn code_action_ms(c: &mut LspClient, file: &Path, line: u32) -> f64 {
    let t = Instant::now();
    let r = c.code_actions(file, line);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(!r.is_empty(), "actions at line {line}");
    ms
}

fn main() {
    let mock = MockLlm::start(Arc::new(|role, _, _| {
        match role {
        "planner" => json!({"understanding": "u", "steps": [], "edge_cases": [], "assumptions": [], "question": "", "options": []}).to_string(),
        "tests" => json!({"tests": []}).to_string(),
        "developer" => "```python\ndef target(n):\n    return n * (n + 1) // 2\n```".into(),
        _ => json!({"root_cause": "", "instructions": ""}).to_string(),
    }
    }));
    println!(
        "command: cargo bench --bench lsp   (binary: {})",
        bin().display()
    );

    // 1. Time to first progress.
    {
        let text = python_file(500);
        let (_d, root, file) = workspace(&mock.config_toml(""), &text);
        mock.delay_ms
            .store(2_000, std::sync::atomic::Ordering::SeqCst);
        let mut c = server(&root, _d.path());
        c.open(&file, &text);
        let rss = std::fs::read_to_string(format!("/proc/{}/status", c.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS"))
                    .map(|l| l.to_string())
            });
        println!(
            "server without a model loaded (500-line file open): {}",
            rss.unwrap_or_default()
        );
        let line = text
            .lines()
            .position(|l| l.starts_with("def target"))
            .unwrap() as u32;
        let mut samples = Vec::new();
        for _ in 0..10 {
            let since = c.log.len();
            let t = Instant::now();
            let r = c.run_action(&file, line, "Generate").unwrap();
            let task = r["task"].as_i64().unwrap();
            let m = c.wait_for(since, Duration::from_secs(30), "begin", |m| {
                m["method"] == "$/progress" && m["params"]["value"]["kind"] == "begin"
            });
            let at = c.log.iter().find(|(_, x)| x == &m).unwrap().0;
            samples.push(at.duration_since(t).as_secs_f64() * 1e3);
            c.request(
                "workspace/executeCommand",
                json!({"command": CANCEL, "arguments": [{"task": task}]}),
            )
            .unwrap();
            c.wait_for(since, Duration::from_secs(30), "end", |m| {
                m["params"]["value"]["kind"] == "end"
            });
            // wait for the function to be free again
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "code action (executeCommand docsmith.generate) -> first $/progress: {}",
            stats(samples)
        );
        mock.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    // 2. codeAction / didChange latency by file size, idle and while a task runs.
    let model_ok = docsmith::models::resolve(docsmith::models::DEFAULT_MODEL).exists();
    for lines in [500usize, 5_000, 50_000] {
        let text = python_file(lines);
        let n_lines = text.lines().count();
        let (_d, root, file) = workspace("", &text);
        let mut c = server(&root, _d.path());
        c.open(&file, &text);
        let target = text
            .lines()
            .position(|l| l.starts_with("def target"))
            .unwrap() as u32;
        let mid = (text
            .lines()
            .enumerate()
            .skip(n_lines / 2)
            .find(|(_, l)| l.starts_with("    total = 0"))
            .unwrap()
            .0) as u32;
        let run = |c: &mut LspClient, label: &str| {
            let mut ca = Vec::new();
            for i in 0..200 {
                ca.push(code_action_ms(
                    c,
                    &file,
                    if i % 2 == 0 { mid } else { target },
                ));
            }
            let mut dc = Vec::new();
            for i in 0..200 {
                let t = Instant::now();
                c.notify(
                    "textDocument/didChange",
                    json!({"textDocument": {"uri": file_uri(&file), "version": 1000 + i},
                           "contentChanges": [{"range": {"start": {"line": mid, "character": 4}, "end": {"line": mid, "character": 4}}, "text": if i % 2 == 0 { "#" } else { "" }}]}),
                );
                let _ = code_action_ms(c, &file, target);
                dc.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let mut cl = Vec::new();
            for i in 0..50 {
                // An edit first, so that no listing can be reused from the last request.
                c.notify(
                    "textDocument/didChange",
                    json!({"textDocument": {"uri": file_uri(&file), "version": 2000 + i},
                           "contentChanges": [{"range": {"start": {"line": mid, "character": 4}, "end": {"line": mid, "character": 4}}, "text": if i % 2 == 0 { "#" } else { "" }}]}),
                );
                let t = Instant::now();
                let lenses = c
                    .request(
                        "textDocument/codeLens",
                        json!({"textDocument": {"uri": file_uri(&file)}}),
                    )
                    .unwrap();
                cl.push(t.elapsed().as_secs_f64() * 1e3);
                assert!(
                    lenses.as_array().is_some_and(|a| !a.is_empty()),
                    "a lens on the stub"
                );
            }
            println!("{n_lines:>6} lines, {label}: codeAction {}", stats(ca));
            println!(
                "{n_lines:>6} lines, {label}: didChange, then codeLens {}",
                stats(cl)
            );
            println!(
                "{n_lines:>6} lines, {label}: didChange + codeAction {}",
                stats(dc)
            );
        };
        run(&mut c, "no task");
        if model_ok {
            let since = c.log.len();
            c.run_action(&file, target, "Generate").unwrap();
            c.wait_for(since, Duration::from_secs(60), "begin", |m| {
                m["params"]["value"]["kind"] == "begin"
            });
            // Let the model load and start generating.
            std::thread::sleep(Duration::from_secs(8));
            run(&mut c, "task running (real local model)");
        } else {
            println!("(the local model is not installed: no 'task running' numbers; run `docsmith model install`)");
        }
        let rss = std::fs::read_to_string(format!("/proc/{}/status", c.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS"))
                    .map(|l| l.to_string())
            });
        println!("{n_lines:>6} lines: server {}", rss.unwrap_or_default());
        drop(c);
    }
}
