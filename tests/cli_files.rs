//! The user's file through `docsmith generate --apply`: a symlink is written
//! through (and the configuration read beside the link), CRLF files keep
//! CRLF, nested and twice-defined functions are refused before any model
//! call, and PEP 263 encodings are read and written back. The model is the
//! scripted endpoint of `support`; the sandbox is real.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{code_script, generate_command, route_env, MockLlm};

const STUB: &str = "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n";

/// A repository folder (with `.git`) and a home, under one temp dir.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir_all(root.join(".git")).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    (dir, root, home)
}

/// `generate FILE --function NAME --yes [extra]` against `mock`.
fn generate(
    file: &Path,
    name: &str,
    root: &Path,
    home: &Path,
    mock: &MockLlm,
    extra: &[&str],
) -> Output {
    let mut cmd: Command = generate_command(file, name, root, home);
    route_env(&mut cmd, mock);
    let out = cmd.args(extra).output().unwrap();
    println!("stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether every `\n` in `bytes` ends a CRLF pair (and there is one).
fn all_crlf(bytes: &[u8]) -> bool {
    let lf: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
    !lf.is_empty() && lf.iter().all(|&i| i > 0 && bytes[i - 1] == b'\r')
}

#[test]
fn apply_writes_through_a_symlink_and_reads_the_config_beside_the_link() {
    let (dir, root, home) = dirs();
    // The link's target lives in a folder whose docsmith.toml does not parse:
    // reading it there would fail the run with exit 4.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("docsmith.toml"), "this is = not [toml\n").unwrap();
    let target = elsewhere.join("real.py");
    std::fs::write(&target, STUB).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(root.join("docsmith.toml"), "max_refinements = 0\n").unwrap();
    let link = root.join("m.py");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mock = MockLlm::start(code_script("def add(a, b):\n    return a + b"));
    let out = generate(&link, "add", &root, &home, &mock, &["--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link"
    );
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(written.contains("    return a + b\n"), "{written}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o640,
        "the target's mode is kept"
    );
    assert!(
        root.join(".docsmith").is_dir(),
        "the store is in the named workspace"
    );
    let mut left: Vec<String> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["docsmith.toml", "real.py"],
        "no temp file, no store beside the target"
    );
}

#[test]
fn a_crlf_file_keeps_crlf_lines() {
    let (_dir, root, home) = dirs();
    let file = root.join("m.py");
    let original = format!("import os\n\n\n{STUB}\n\nX = 1\n").replace('\n', "\r\n");
    std::fs::write(&file, &original).unwrap();
    let mock = MockLlm::start(code_script(
        "import math\n\ndef add(a, b):\n    total = math.fsum([a, b])\n    return int(total)",
    ));
    let out = generate(&file, "add", &root, &home, &mock, &["--apply", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(all_crlf(&bytes), "{text:?}");
    assert!(
        text.contains("    total = math.fsum([a, b])\r\n    return int(total)\r\n"),
        "{text:?}"
    );
    assert!(text.contains("import os\r\nimport math\r\n"), "{text:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let proposed = v["proposal"]["new_source"].as_str().unwrap();
    assert!(all_crlf(proposed.as_bytes()), "{proposed:?}");
}

#[test]
fn nested_and_twice_defined_functions_are_refused_before_any_model_call() {
    let (_dir, root, home) = dirs();
    let nested = "def outer(xs):\n    def helper(x):\n        \"\"\"Double.\n\n        >>> helper(2)\n        4\n        \"\"\"\n    return [helper(x) for x in xs]\n";
    let twice = format!("{STUB}\n\ndef add(a, b):\n    return 0\n");
    let cases = [
        ("nested.py", nested.to_string(), "helper", "inside `outer`"),
        (
            "twice.py",
            twice,
            "add",
            "defined 2 times at module level (lines 1, 9)",
        ),
    ];
    for (name, text, function, why) in cases {
        let file = root.join(name);
        std::fs::write(&file, &text).unwrap();
        let mock = MockLlm::start(code_script("def add(a, b):\n    return a + b"));
        let out = generate(&file, function, &root, &home, &mock, &["--apply"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(why), "{name}: {why:?} in {err}");
        assert!(mock.roles().is_empty(), "{name}: {:?}", mock.roles());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "{name}");
    }
    // By line, too: line 3 is inside `helper`.
    let file = root.join("nested.py");
    let mock = MockLlm::start(code_script("def helper(x):\n    return 2 * x"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docsmith"));
    cmd.args(["generate", &format!("{}:3", file.display()), "--yes"])
        .current_dir(&root)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"));
    route_env(&mut cmd, &mock);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(mock.roles().is_empty());
}

const LATIN1_STUB: &[u8] = b"# -*- coding: latin-1 -*-\ndef greet(name):\n    \"\"\"Say hello, en fran\xe7ais.\n\n    >>> greet('Zo\xe9')\n    '\xc7a va, Zo\xe9'\n    \"\"\"\n";

#[test]
fn a_latin1_file_is_read_run_and_written_in_latin1() {
    let (_dir, root, home) = dirs();
    let file = root.join("m.py");
    std::fs::write(&file, LATIN1_STUB).unwrap();
    let mock = MockLlm::start(code_script(
        "def greet(name):\n    return '\u{c7}a va, ' + name",
    ));
    let out = generate(&file, "greet", &root, &home, &mock, &["--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.windows(7).any(|w| w == b"'\xc7a va,"),
        "latin-1 bytes: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        !bytes.windows(2).any(|w| w == b"\xc3\x87"),
        "no UTF-8 for \u{c7}"
    );
    assert!(bytes.starts_with(b"# -*- coding: latin-1 -*-\n"));
    // Python itself reads the written file (its coding line) and runs its examples.
    let doctest = Command::new("python3")
        .args(["-m", "doctest", "-v"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        doctest.status.success(),
        "{}",
        String::from_utf8_lossy(&doctest.stdout)
    );
}

#[test]
fn a_text_the_files_encoding_cannot_hold_is_refused_and_nothing_written() {
    let (_dir, root, home) = dirs();
    let file = root.join("m.py");
    std::fs::write(&file, LATIN1_STUB).unwrap();
    let mock = MockLlm::start(code_script(
        "def greet(name):\n    return ('\u{c7}a va, ' + name + '\u{2603}')[:-1]",
    ));
    let out = generate(&file, "greet", &root, &home, &mock, &["--apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("latin-1") && err.contains('\u{2603}'), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        LATIN1_STUB,
        "nothing written"
    );
    // An encoding docsmith cannot write is refused before any model call.
    std::fs::write(&file, b"# coding: klingon\ndef f():\n    \"\"\"F.\"\"\"\n").unwrap();
    let mock = MockLlm::start(code_script("def f():\n    return 1"));
    let out = generate(&file, "f", &root, &home, &mock, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("klingon"), "{err}");
    assert!(mock.roles().is_empty());
}

#[test]
fn write_tests_puts_a_pytest_module_where_the_project_keeps_its_tests() {
    let (_dir, root, home) = dirs();
    let pkg = root.join("src/pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    let file = pkg.join("calc.py");
    std::fs::write(&file, STUB).unwrap();
    // The project's tests live in test/, named *_test.py.
    std::fs::create_dir_all(root.join("test")).unwrap();
    std::fs::write(
        root.join("test/other_test.py"),
        "def test_other():\n    pass\n",
    )
    .unwrap();
    let mock = MockLlm::start(code_script("def add(a, b):\n    return a + b"));
    let args = ["--apply", "--write-tests"];
    let out = generate(&file, "add", &root, &home, &mock, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let tests = root.join("test/calc_test.py");
    let text = std::fs::read_to_string(&tests).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(text.contains("from pkg.calc import *"), "{text}");
    assert!(text.contains("def test_add_ex1():"), "{text}");
    assert!(
        stderr(&out).contains("tests written to"),
        "{}",
        stderr(&out)
    );
    // The written tests pass against the written function, run as pytest
    // would with the import root on the path (pytest itself is not needed).
    let run = |path: &Path| {
        Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import runpy, sys; sys.path.insert(0, {src:?}); ns = runpy.run_path({t:?}); \
                 names = [n for n in ns if n.startswith('test_')]; [ns[n]() for n in names]; print(len(names))",
                src = root.join("src").display().to_string(),
                t = path.display().to_string()
            ))
            .output()
            .unwrap()
    };
    let ran = run(&tests);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "1");
    // A second function's tests are appended, not written over.
    std::fs::write(
        &file,
        format!(
            "{}\n\ndef mul(a, b):\n    \"\"\"Multiply.\n\n    >>> mul(2, 3)\n    6\n    \"\"\"\n",
            std::fs::read_to_string(&file).unwrap()
        ),
    )
    .unwrap();
    let mock = MockLlm::start(code_script("def mul(a, b):\n    return a * b"));
    let out = generate(&file, "mul", &root, &home, &mock, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&tests).unwrap();
    assert!(
        text.contains("def test_add_ex1():") && text.contains("def test_mul_ex1():"),
        "{text}"
    );
    let ran = run(&tests);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "2");
}

#[test]
fn history_of_one_task_and_stats_read_what_a_run_recorded() {
    let (_dir, root, home) = dirs();
    let file = root.join("calc.py");
    std::fs::write(&file, STUB).unwrap();
    let mock = MockLlm::start(code_script("def add(a, b):\n    return a + b"));
    let out = generate(&file, "add", &root, &home, &mock, &["--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let docsmith = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_docsmith"))
            .args(args)
            .arg("--workspace")
            .arg(&root)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, json) = docsmith(&["history", "--task", "1", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["task"]["task"]["function"], "add");
    assert_eq!(v["task"]["task"]["status"], "accepted");
    let calls = v["llm_calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    assert!(
        calls
            .iter()
            .all(|c| c["provider"] == "openai" && c["ok"] == true),
        "{calls:?}"
    );
    let (code, text) = docsmith(&["history", "--task", "1"]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("task 1  `add` in "), "{text}");
    assert!(
        text.contains("[ex1] docstring add(1, 2) == 3  pass"),
        "{text}"
    );
    let (code, json) = docsmith(&["stats", "--json"]);
    assert_eq!(code, Some(0));
    let st: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (st["proposals"].as_u64(), st["accepted"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(st["usage"][0]["role"], "developer");
    let (code, _) = docsmith(&["history", "--task", "99"]);
    assert_eq!(code, Some(3), "an unknown task is named, exit 3");
}
