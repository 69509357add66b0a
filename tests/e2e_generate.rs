//! End to end: the `docsmith` binary with the real embedded local model on a
//! stub from the HumanEval dev set. Checks the file afterwards with Python's own
//! `doctest` (the stub's examples, run outside docsmith), and the bad-input paths
//! that must leave the user's file untouched.
//!
//! Needs the default model installed (`docsmith model install`, done by
//! `scripts/test.sh`); fails with that fix when it is missing.

mod support;

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
    let _turn = support::one_model_at_a_time();
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

/// A copy of `tests/fixtures/shop` (a package: a class with state, module
/// constants, a dataclass, helpers, a cross-module relative import) in a
/// fresh workspace with `.git`.
fn shop_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    support::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/shop"),
        dir.path(),
    );
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    dir
}

/// Runs `docsmith generate --yes --apply --json` on `function` of `file` in
/// `ws`; returns the JSON outcome after asserting exit 0.
fn generate_in(ws: &Path, file: &str, function: &str) -> serde_json::Value {
    let started = std::time::Instant::now();
    let out = docsmith()
        .current_dir(ws)
        .args([
            "generate",
            file,
            "--function",
            function,
            "--yes",
            "--apply",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "docsmith {function} took {:.1} s\nstderr:\n{}\nstdout:\n{stdout}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "generate {function} failed");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Runs `check` with python3 in `ws` (the package importable as `shop`).
fn python_check(ws: &Path, check: &str) {
    let out = Command::new("python3")
        .current_dir(ws)
        .args(["-c", check])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the generated code does not do what its docstring says:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_method_with_doctest_setup_lines_is_generated_in_place_with_the_real_model() {
    let _turn = support::one_model_at_a_time();
    require_model();
    let ws = shop_workspace();
    let file = ws.path().join("shop/inventory.py");
    let before = std::fs::read_to_string(&file).unwrap();
    let v = generate_in(ws.path(), "shop/inventory.py", "Inventory.add");
    assert_eq!(v["status"], "accepted");
    let after = std::fs::read_to_string(&file).unwrap();
    // Only the method's body changed: everything up to its docstring's end
    // and everything after its stub line is byte-for-byte the same.
    let stub = "        raise NotImplementedError\n";
    let at = before.find(stub).unwrap();
    assert_eq!(&after[..at], &before[..at], "{after}");
    assert!(after.ends_with(&before[at + stub.len()..]), "{after}");
    // Hidden-test style: other inputs than the docstring's.
    python_check(
        ws.path(),
        "from shop.inventory import Inventory, MAX_STOCK\n\
         inv = Inventory()\n\
         assert inv.add('  Pen', 7) == 7\n\
         assert inv.add('PEN ', 1) == 8\n\
         assert inv.count('pen') == 8 and inv.items == {'pen': 8}\n\
         try:\n    inv.add('pen', MAX_STOCK)\n    raise SystemExit('no ValueError past MAX_STOCK')\n\
         except ValueError:\n    pass\n\
         assert inv.count('pen') == 8\n\
         assert inv.add('ink', MAX_STOCK) == MAX_STOCK\n",
    );
    let report = std::fs::read_dir(ws.path().join(".docsmith/proposals"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_to_string(d.path().join("report.md")).unwrap_or_default())
        .collect::<String>();
    assert!(report.contains("## Context given to the model"), "{report}");
    assert!(report.contains("`MAX_STOCK`"), "{report}");
}

#[test]
fn a_function_using_a_helper_from_another_module_is_generated_with_the_real_model() {
    let _turn = support::one_model_at_a_time();
    require_model();
    let ws = shop_workspace();
    let v = generate_in(ws.path(), "shop/pricing.py", "order_total");
    assert_eq!(v["status"], "accepted");
    python_check(
        ws.path(),
        "from shop.pricing import order_total\n\
         from shop.models import Item\n\
         assert order_total([Item('a', 2.0, 2)]) == 5.0\n\
         assert order_total([Item('a', 1.0), Item('b', 3.0, 2)]) == 8.75\n\
         assert abs(order_total([Item('a', 1.1, 3)]) - 4.13) < 0.011\n",
    );
    let after = std::fs::read_to_string(ws.path().join("shop/pricing.py")).unwrap();
    assert!(
        after.contains("from .models import TAX_RATE, Item, round_money"),
        "{after}"
    );
}
