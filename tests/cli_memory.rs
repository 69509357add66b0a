//! `docsmith memory list | forget ID`: feedback stating a preference, given
//! with `generate --feedback`, is kept as a workspace lesson, listed, shown
//! to the next task's developer prompt and in its review, and once
//! forgotten is neither listed nor shown. The model is the scripted
//! endpoint of `support`; the sandbox and the store are real.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{code_script, generate_command, route_env, MockLlm};

const STUB: &str = "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n";
const LESSON: &str = "always use type hints";

/// `docsmith memory ARGS --workspace ROOT` (it reads no configuration).
fn memory(root: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_docsmith"))
        .arg("memory")
        .args(args)
        .arg("--workspace")
        .arg(root)
        .current_dir(root)
        .env("DOCSMITH_LOG", "warn")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The developer requests' user messages the endpoint received, in order.
fn developer_prompts(mock: &MockLlm) -> Vec<String> {
    mock.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(role, _)| role == "developer")
        .map(|(_, body)| {
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn a_lesson_is_listed_shown_to_the_next_task_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir_all(root.join(".git")).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let file = root.join("m.py");
    std::fs::write(&file, STUB).unwrap();

    // Before any task: nothing to list, and nothing to forget.
    let out = memory(&root, &home, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing remembered"));

    let mock = MockLlm::start(code_script(
        "def add(a: int, b: int) -> int:\n    return a + b",
    ));
    let run = |extra: &[&str]| {
        let mut cmd = generate_command(&file, "add", &root, &home);
        route_env(&mut cmd, &mock);
        let out = cmd.args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        out
    };
    let first = run(&["--feedback", LESSON]);
    assert!(
        text(&first.stderr).contains("kept as a workspace lesson")
            || text(&first.stdout).contains("kept as a workspace lesson"),
        "stdout:\n{}\nstderr:\n{}",
        text(&first.stdout),
        text(&first.stderr)
    );

    let out = memory(&root, &home, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let row = listed
        .lines()
        .find(|l| l.contains(LESSON))
        .unwrap_or_else(|| panic!("no lesson listed:\n{listed}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["lesson", "1"], "id, kind, task, text: {row}");
    let id = cols[0].to_string();
    assert_eq!(
        listed.lines().count(),
        2,
        "a header and one item:\n{listed}"
    );

    // The next task's developer is shown it, and its review says so.
    let before = developer_prompts(&mock).len();
    let second = run(&[]);
    let prompts = developer_prompts(&mock);
    assert!(prompts.len() > before);
    assert!(
        prompts[before..]
            .iter()
            .all(|p| p.contains(&format!("- {LESSON}\n"))),
        "{:?}",
        &prompts[before..]
    );
    let review = text(&second.stdout);
    assert!(
        review.contains(&format!("remembered lesson {id} (task 1): {LESSON}")),
        "{review}"
    );

    // Forgotten: gone from the list and from the next prompt.
    let out = memory(&root, &home, &["forget", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("forgot lesson {id} (task 1): {LESSON}")
    );
    let out = memory(&root, &home, &["list"]);
    assert!(!text(&out.stdout).contains(LESSON), "{}", text(&out.stdout));
    let before = developer_prompts(&mock).len();
    let third = run(&[]);
    let prompts = developer_prompts(&mock);
    assert!(
        prompts[before..].iter().all(|p| !p.contains(LESSON)),
        "{:?}",
        &prompts[before..]
    );
    assert!(!text(&third.stdout).contains("remembered lesson"));
    let out = memory(&root, &home, &["forget", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}
