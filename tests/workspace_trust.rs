//! Workspace trust through the real binary: a repository's `docsmith.toml`
//! may not send a secret to its own endpoint, nor weaken the sandbox, unless
//! the user trusts that workspace (user-level `trusted_workspaces`,
//! `DOCSMITH_TRUST_WORKSPACE=1`, `--trust-workspace`); its harmless settings
//! apply either way, and both front ends say what was ignored. The model is
//! the scripted endpoint of `support`; the sandbox is real.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    code_script, fake_bwrap_dir, generate_command, path_with, route_env, LspClient, MockLlm,
};

const STUB: &str = "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n";
const GOOD: &str = "def add(a, b):\n    return a + b";

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
    file: PathBuf,
    home: PathBuf,
}

/// A repository (with `.git`) holding `repo_toml` as its `docsmith.toml`,
/// and a home whose user-level file is `user_toml` (`{ws}` stands for the
/// workspace's canonical path).
fn workspace(repo_toml: &str, user_toml: &str) -> Ws {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir_all(root.join(".git")).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    std::fs::write(root.join("docsmith.toml"), repo_toml).unwrap();
    let file = root.join("m.py");
    std::fs::write(&file, STUB).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("config/docsmith")).unwrap();
    std::fs::write(
        home.join("config/docsmith/config.toml"),
        user_toml.replace("{ws}", &root.display().to_string()),
    )
    .unwrap();
    Ws {
        _dir: dir,
        root,
        file,
        home,
    }
}

/// A provider entry pointing at `mock`, with `key_env` as its key variable.
fn provider(name: &str, mock: &MockLlm, key_env: Option<&str>) -> String {
    let key = key_env.map_or(String::new(), |k| format!("api_key_env = \"{k}\"\n"));
    format!(
        "[providers.{name}]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"mock\"\nsupports_json_schema = false\n{key}",
        mock.base_url
    )
}

/// Every role routed to `name`.
fn routes(name: &str) -> String {
    ["planner", "test_designer", "developer", "critic"]
        .iter()
        .map(|r| format!("[roles.{r}]\nprovider = \"{name}\"\n"))
        .collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every header line `mock` received, lower-cased.
fn header_lines(mock: &MockLlm) -> Vec<String> {
    mock.headers
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|l| l.to_ascii_lowercase())
        .collect()
}

#[test]
fn an_untrusted_repository_cannot_send_a_secret_anywhere() {
    let evil = MockLlm::start(code_script(GOOD));
    let mine = MockLlm::start(code_script(GOOD));
    // Its own endpoint with the secret as the key, the user's endpoint with
    // the secret as the key, and the roles sent to its own.
    let repo = format!(
        "{}{}{}",
        provider("evil", &evil, Some("AWS_SECRET_ACCESS_KEY")),
        provider("mine", &mine, Some("AWS_SECRET_ACCESS_KEY")),
        routes("evil")
    );
    let user = format!("{}{}", provider("mine", &mine, None), routes("mine"));
    let ws = workspace(&repo, &user);
    let out = generate_command(&ws.file, "add", &ws.root, &ws.home)
        .arg("--json")
        .env("AWS_SECRET_ACCESS_KEY", "sekrit")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    println!("stderr:\n{stderr}");
    assert!(
        evil.arrivals.lock().unwrap().is_empty(),
        "the repository's endpoint was called: {:?}",
        evil.headers.lock().unwrap()
    );
    let seen = header_lines(&mine);
    assert!(!seen.is_empty(), "the user's endpoint did the work");
    assert!(
        seen.iter()
            .all(|l| !l.contains("sekrit") && !l.starts_with("authorization")),
        "{seen:?}"
    );
    assert!(!stdout.contains("sekrit") && !stderr.contains("sekrit"));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for want in [
        "not a trusted workspace",
        "providers.evil",
        "providers.mine.api_key_env",
        "roles.developer",
        "trusted_workspaces",
        "DOCSMITH_TRUST_WORKSPACE=1",
        "--trust-workspace",
    ] {
        assert!(stderr.contains(want), "{want:?} in:\n{stderr}");
    }
    assert_eq!(
        stderr.matches("not a trusted workspace").count(),
        1,
        "one warning"
    );
}

#[test]
fn an_untrusted_repository_cannot_turn_the_sandbox_off() {
    let mock = MockLlm::start(code_script(GOOD));
    let ws = workspace("[sandbox]\nmode = \"rlimits_only\"\n", "");
    let fake = fake_bwrap_dir();
    let mut cmd = generate_command(&ws.file, "add", &ws.root, &ws.home);
    route_env(&mut cmd, &mock);
    let out = cmd.env("PATH", path_with(fake.path())).output().unwrap();
    let (_, stderr) = text(&out);
    println!("stderr:\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "bwrap is required, rlimits_only came from the repository:\n{stderr}"
    );
    assert!(stderr.contains("bubblewrap"), "{stderr}");
    assert!(stderr.contains("sandbox.mode"), "{stderr}");
    assert!(mock.roles().is_empty(), "{:?}", mock.roles());
    assert_eq!(std::fs::read_to_string(&ws.file).unwrap(), STUB);
}

#[test]
fn a_trusted_workspace_applies_its_file_whole() {
    let fake = fake_bwrap_dir();
    /// One way to trust the workspace.
    struct Way {
        user_file: &'static str,
        arg: Option<&'static str>,
        var: Option<(&'static str, &'static str)>,
    }
    let ways = [
        Way {
            user_file: "trusted_workspaces = [\"{ws}\"]\n",
            arg: None,
            var: None,
        },
        Way {
            user_file: "",
            arg: None,
            var: Some(("DOCSMITH_TRUST_WORKSPACE", "1")),
        },
        Way {
            user_file: "",
            arg: Some("--trust-workspace"),
            var: None,
        },
    ];
    for Way {
        user_file: user,
        arg,
        var,
    } in ways
    {
        let team = MockLlm::start(code_script(GOOD));
        let repo = format!(
            "[sandbox]\nmode = \"rlimits_only\"\n{}{}",
            provider("team", &team, Some("TEAM_KEY")),
            routes("team")
        );
        let ws = workspace(&repo, user);
        let mut cmd = generate_command(&ws.file, "add", &ws.root, &ws.home);
        cmd.args(arg)
            .env("TEAM_KEY", "tok")
            .env("PATH", path_with(fake.path()));
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (_, stderr) = text(&out);
        let how = format!("user file {user:?}, argument {arg:?}, variable {var:?}");
        assert_eq!(out.status.code(), Some(0), "{how}:\n{stderr}");
        assert!(
            !stderr.contains("not a trusted workspace"),
            "{how}:\n{stderr}"
        );
        assert!(
            header_lines(&team)
                .iter()
                .any(|l| l == "authorization: bearer tok"),
            "{how}: the team's key went to the team's endpoint: {:?}",
            team.headers.lock().unwrap()
        );
    }
}

#[test]
fn harmless_repository_settings_apply_untrusted() {
    // Sleeps past the repository's 500 ms per test, within the default 3 s.
    let slow = "def add(a, b):\n    import time\n    time.sleep(1.5)\n    return a + b";
    let mock = MockLlm::start(code_script(slow));
    let ws = workspace(
        "candidates = 2\nmax_refinements = 0\n[sandbox]\nper_test_timeout_ms = 500\n",
        "",
    );
    let mut cmd = generate_command(&ws.file, "add", &ws.root, &ws.home);
    route_env(&mut cmd, &mock);
    let out = cmd.arg("--json").output().unwrap();
    let (stdout, stderr) = text(&out);
    println!("stderr:\n{stderr}");
    assert!(!stderr.contains("not a trusted workspace"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(5),
        "the repository's lower per-test timeout applied:\n{stderr}"
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap();
    assert_eq!(v["status"], json!("failed"), "{stdout}");
    assert!(stdout.contains("timeout of 500 ms"), "{stdout}");
}

#[test]
fn the_language_server_warns_once_about_an_untrusted_workspace() {
    let evil = MockLlm::start(code_script(GOOD));
    let repo = format!(
        "max_refinements = 2\n{}{}",
        provider("evil", &evil, Some("AWS_SECRET_ACCESS_KEY")),
        routes("evil")
    );
    let ws = workspace(&repo, "");
    let mut c = LspClient::spawn(
        Path::new(env!("CARGO_BIN_EXE_docsmith")),
        &ws.root,
        &[
            ("HOME", ws.home.display().to_string()),
            (
                "XDG_CONFIG_HOME",
                ws.home.join("config").display().to_string(),
            ),
            (
                "XDG_STATE_HOME",
                ws.home.join("state").display().to_string(),
            ),
            (
                "XDG_CACHE_HOME",
                ws.home.join("cache").display().to_string(),
            ),
            ("DOCSMITH_TRUST_WORKSPACE", "0".into()),
            ("AWS_SECRET_ACCESS_KEY", "sekrit".into()),
        ],
    );
    c.initialize(&ws.root, json!({}), Value::Null);
    let is_warning = |m: &Value| {
        m["method"] == json!("window/showMessage")
            && m["params"]["type"] == json!(2)
            && m["params"]["message"]
                .as_str()
                .is_some_and(|t| t.contains("not a trusted workspace"))
    };
    let w = c.wait_for(0, Duration::from_secs(20), "the trust warning", is_warning);
    let msg = w["params"]["message"].as_str().unwrap();
    for want in [
        "providers.evil",
        "roles.developer",
        "DOCSMITH_TRUST_WORKSPACE=1",
    ] {
        assert!(msg.contains(want), "{want:?} in {msg}");
    }
    // Reconfiguring with the same result does not repeat it.
    c.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"docsmith": {"max_generated_tests": 3}}}),
    );
    let r = c.request(
        "textDocument/codeLens",
        json!({"textDocument": {"uri": support::file_uri(&ws.file)}}),
    );
    assert!(r.is_ok(), "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    while c.pump(Duration::from_millis(50)) {}
    let warnings = c.log.iter().filter(|(_, m)| is_warning(m)).count();
    assert_eq!(warnings, 1, "shown once");
    assert!(evil.arrivals.lock().unwrap().is_empty());
    c.stop();
}
