//! End to end: the `docsmith` binary with the real embedded local model on a
//! stub from the HumanEval dev set. Checks the file afterwards with Python's own
//! `doctest` (the stub's examples, run outside docsmith), and the bad-input paths
//! that must leave the user's file untouched.
//!
//! Needs the default model installed (`docsmith model install`, done by
//! `scripts/test.sh`); fails with that fix when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn docsmith() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_docsmith"));
    c.env("DOCSMITH_LOG", "docsmith=info");
    c
}

fn dev_set() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/humaneval-dev.jsonl")
}

/// The `prompt` of one dev task (never its `test` field).
fn dev_prompt(task_id: &str) -> String {
    let text = std::fs::read_to_string(dev_set()).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (../shared must sit beside the repo)",
            dev_set().display()
        )
    });
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["task_id"] == task_id {
            return v["prompt"].as_str().unwrap().to_string();
        }
    }
    panic!("{task_id} not in the dev set");
}

fn workspace_with(file: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    let f = dir.path().join(file);
    std::fs::write(&f, text).unwrap();
    (dir, f)
}

fn require_model() {
    let out = docsmith().args(["model", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.lines().any(|l| l.starts_with("qwen2.5-coder-1.5b ") && l.contains(" verified ")),
        "the default model is not installed: run `docsmith model install` (scripts/test.sh does); `model list` said:\n{listing}"
    );
}

#[test]
fn generate_with_the_real_model_passes_the_stubs_own_doctests() {
    require_model();
    let prompt = dev_prompt("HumanEval/0");
    let (ws, file) = workspace_with("close.py", &prompt);
    let started = std::time::Instant::now();
    let out = docsmith()
        .args([
            "generate",
            file.to_str().unwrap(),
            "--function",
            "has_close_elements",
            "--yes",
            "--apply",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "docsmith took {:.1} s\nstderr:\n{stderr}\nstdout:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "generate failed");
    let new = std::fs::read_to_string(&file).unwrap();
    assert_ne!(new, prompt, "the file was not written");
    // The user's signature and docstring are kept verbatim.
    let docstring_start = prompt.find("def has_close_elements").unwrap();
    assert!(
        new.contains(prompt[docstring_start..].trim_end()),
        "signature or docstring changed:\n{new}"
    );
    // The stub's own examples, run by Python's doctest, outside docsmith.
    let doctest = Command::new("python3")
        .args(["-m", "doctest", "-v", file.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctest.stdout);
    assert!(doctest.status.success(), "doctest failed:\n{report}\n{new}");
    assert!(report.contains("2 passed and 0 failed"), "{report}");
    // The JSON outcome and the store agree that it was accepted with tests and LLM calls.
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["status"], "accepted");
    assert!(v["proposal"]["llm_calls"].as_u64().unwrap() >= 1);
    let hist = docsmith()
        .args(["history", "--workspace", ws.path().to_str().unwrap()])
        .output()
        .unwrap();
    let hist = String::from_utf8_lossy(&hist.stdout);
    assert!(
        hist.contains("close.py:has_close_elements") && hist.contains("accepted"),
        "{hist}"
    );
    assert!(ws.path().join(".docsmith/docsmith.db").exists());
}

#[test]
fn a_missing_function_is_named_and_nothing_is_written() {
    let (_ws, file) = workspace_with("m.py", "def present(x):\n    \"\"\"Doc.\"\"\"\n    pass\n");
    let out = docsmith()
        .args([
            "generate",
            file.to_str().unwrap(),
            "--function",
            "absent",
            "--yes",
            "--apply",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("absent") && stderr.contains("present"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "def present(x):\n    \"\"\"Doc.\"\"\"\n    pass\n"
    );
}

#[test]
fn a_missing_model_fails_the_task_with_the_fix_and_writes_nothing() {
    let text = "def double(x):\n    \"\"\"Double x.\n\n    >>> double(2)\n    4\n    \"\"\"\n";
    let (ws, file) = workspace_with("d.py", text);
    let out = docsmith()
        .env("DOCSMITH_MODEL_PATH", "/nonexistent/model.gguf")
        .args([
            "generate",
            file.to_str().unwrap(),
            "--function",
            "double",
            "--yes",
            "--apply",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/model.gguf"),
        "the message names the path: {stderr}"
    );
    assert!(
        stderr.contains("docsmith model install"),
        "the message gives the fix: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let hist = docsmith()
        .args(["history", "--workspace", ws.path().to_str().unwrap()])
        .output()
        .unwrap();
    let hist = String::from_utf8_lossy(&hist.stdout);
    assert!(
        hist.contains("failed"),
        "the task is recorded as failed: {hist}"
    );
}
