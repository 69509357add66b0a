//! Protocol tests: drive the `docsmith serve` binary over stdio as an editor
//! would. The model is replaced by a scripted OpenAI-compatible endpoint
//! (`support::MockLlm`); the sandbox, the store and the checks are real. The
//! real model in a real editor is tested by `tests/e2e_neovim.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docsmith::lsp::protocol::{ACCEPT, CANCEL, GENERATE, REFINE, REJECT};
use serde_json::{json, Value};
use support::{apply_edits, file_uri, LspClient, MockLlm, Script};

const STUB: &str = "\"\"\"Module — é.\"\"\"\n\n\ndef add(a, b):\n    \"\"\"Add two numbers — é😀.\n\n    >>> add(2, 3)\n    5\n    >>> add(-1, 1)\n    0\n    \"\"\"\n    ...\n\n\ndef other():\n    return 1\n";
const DEF_LINE: u32 = 3;
const LONG: Duration = Duration::from_secs(60);

fn plan(question: &str, options: &[&str]) -> String {
    json!({"understanding": "return a + b", "steps": ["add"], "edge_cases": [],
           "assumptions": ["ints"], "question": question, "options": options})
    .to_string()
}

/// Planner without a question, no generated tests, `good` from the developer
/// (after `wrong_first` wrong replies), a critique for any critic call.
fn script(wrong_first: usize, question: bool) -> Script {
    Arc::new(move |role, n, _body| match role {
        "planner" if question && n == 0 => {
            plan("Should floats be accepted?", &["ints only", "floats too"])
        }
        "planner" => plan("", &[]),
        "tests" => json!({"tests": []}).to_string(),
        "developer" if n < wrong_first => "```python\ndef add(a, b):\n    return a - b\n```".into(),
        "developer" => "```python\ndef add(a, b):\n    return a + b\n```".into(),
        _ => json!({"root_cause": "wrong operator", "instructions": "use +"}).to_string(),
    })
}

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
    file: PathBuf,
    home: PathBuf,
}

fn workspace(mock: &MockLlm, extra_toml: &str) -> Ws {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("docsmith.toml"), mock.config_toml(extra_toml)).unwrap();
    let file = root.join("calc.py");
    std::fs::write(&file, STUB).unwrap();
    let home = dir.path().join("home");
    // The user trusts this workspace, so its docsmith.toml may name the
    // scripted endpoint (an untrusted one could not set `base_url`).
    let user_config = home.join("config").join("docsmith");
    std::fs::create_dir_all(&user_config).unwrap();
    std::fs::write(
        user_config.join("config.toml"),
        format!("trusted_workspaces = [{:?}]\n", root.display().to_string()),
    )
    .unwrap();
    Ws {
        _dir: dir,
        root,
        file,
        home,
    }
}

fn server(ws: &Ws) -> LspClient {
    LspClient::spawn(
        Path::new(env!("CARGO_BIN_EXE_docsmith")),
        &ws.root,
        &[
            ("HOME", ws.home.display().to_string()),
            (
                "XDG_STATE_HOME",
                ws.home.join("state").display().to_string(),
            ),
            (
                "XDG_CONFIG_HOME",
                ws.home.join("config").display().to_string(),
            ),
            ("DOCSMITH_LOG", "warn,llama-cpp-2=error".into()),
        ],
    )
}

fn progress_kinds(c: &LspClient, since: usize, task: i64) -> Vec<(String, String)> {
    c.messages(since, "$/progress")
        .iter()
        .filter(|m| {
            m["params"]["token"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("docsmith/{task}/")))
        })
        .map(|m| {
            let v = &m["params"]["value"];
            (
                v["kind"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn task_status(ws: &Ws, task: i64) -> String {
    let store = docsmith::store::Store::open(&ws.root.join(".docsmith/docsmith.db")).unwrap();
    store
        .task(docsmith::store::TaskId(task))
        .unwrap()
        .unwrap()
        .task
        .status
        .as_str()
        .to_string()
}

/// Makes the fake editor answer review prompts with `choice` and apply edits
/// to its copy of the text; returns the shared copy and the edits seen.
fn editor(
    c: &mut LspClient,
    text: &str,
    choice: Option<&'static str>,
) -> (Arc<Mutex<String>>, Arc<Mutex<Vec<Value>>>) {
    let doc = Arc::new(Mutex::new(text.to_string()));
    let edits = Arc::new(Mutex::new(Vec::new()));
    let (d, e) = (doc.clone(), edits.clone());
    c.responder = Box::new(move |method, params| match method {
        "workspace/applyEdit" => {
            e.lock().unwrap().push(params.clone());
            let changes = &params["edit"]["documentChanges"][0];
            if let Some(edits) = changes["edits"].as_array() {
                if changes["textDocument"]["uri"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("calc.py")
                {
                    let mut t = d.lock().unwrap();
                    *t = apply_edits(&t, edits);
                }
            }
            json!({"applied": true})
        }
        "window/showMessageRequest" => {
            let actions = params["actions"].as_array().cloned().unwrap_or_default();
            match choice {
                Some(want) => actions
                    .iter()
                    .find(|a| a["title"] == json!(want))
                    .cloned()
                    .or_else(|| actions.first().cloned())
                    .unwrap_or(Value::Null),
                None => Value::Null,
            }
        }
        _ => Value::Null,
    });
    (doc, edits)
}

#[test]
fn generate_progress_review_accept_applies_a_versioned_edit() {
    let mock = MockLlm::start(script(1, false));
    let ws = workspace(&mock, "max_refinements = 2");
    let mut c = server(&ws);
    let init = c.initialize(&ws.root, json!({}), Value::Null);
    assert_eq!(
        init["capabilities"]["positionEncoding"], "utf-16",
        "UTF-16 unless the client offers UTF-8"
    );
    assert!(init["capabilities"]["executeCommandProvider"]["commands"]
        .as_array()
        .unwrap()
        .contains(&json!(GENERATE)));
    let (doc, edits) = editor(&mut c, STUB, Some("Accept"));
    c.open(&ws.file, STUB);

    // Code actions: on a stub, Generate and Refine; none on a line outside functions.
    let titles: Vec<String> = c
        .code_actions(&ws.file, DEF_LINE + 4)
        .iter()
        .map(|a| a["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        titles,
        vec![
            "Generate `add` from docstring",
            "Refine `add` with feedback…"
        ]
    );
    assert!(c.code_actions(&ws.file, 1).is_empty());
    let lenses = c
        .request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": file_uri(&ws.file)}}),
        )
        .unwrap();
    assert_eq!(
        lenses.as_array().unwrap().len(),
        1,
        "one Generate lens, above `add` only: {lenses}"
    );

    let since = c.log.len();
    let started = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap();
    let task = started["task"].as_i64().unwrap();
    assert_eq!(started["queuedBehind"], 0);

    // Progress: create, begin, reports, end "ready for review"; then the review prompt and the edit.
    c.wait_for(since, LONG, "progress end", |m| {
        m["method"] == "$/progress" && m["params"]["value"]["kind"] == "end"
    });
    c.wait_for(since, LONG, "taskChanged accepted", |m| {
        m["method"] == "docsmith/taskChanged" && m["params"]["phase"] == "accepted"
    });
    let creates = c.messages(since, "window/workDoneProgress/create");
    assert_eq!(
        creates[0]["params"]["token"],
        json!(format!("docsmith/{task}/0"))
    );
    let kinds = progress_kinds(&c, since, task);
    assert_eq!(kinds.first().unwrap().0, "begin");
    assert!(
        kinds
            .iter()
            .any(|(k, m)| k == "report" && m.contains("writing code")),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "end").count(),
        1,
        "{kinds:?}"
    );
    let (_, end_msg) = kinds.iter().find(|(k, _)| k == "end").unwrap();
    assert!(
        end_msg.starts_with("ready for review: PASSING: 2/2 tests passed"),
        "{end_msg}"
    );
    let review = c.messages(since, "window/showMessageRequest");
    let actions: Vec<&str> = review[0]["params"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["Accept", "Reject with feedback", "Show diff", "Discard"]
    );

    let edits = edits.lock().unwrap();
    assert_eq!(edits.len(), 1);
    let td = &edits[0]["edit"]["documentChanges"][0]["textDocument"];
    assert_eq!(
        td["version"], 1,
        "the edit names the document version it was computed on"
    );
    let new_text = doc.lock().unwrap().clone();
    assert!(
        new_text.contains("    \"\"\"Add two numbers — é😀.\n"),
        "docstring kept:\n{new_text}"
    );
    assert!(
        new_text.contains("    return a + b\n") && !new_text.contains("    ...\n"),
        "{new_text}"
    );
    assert!(
        new_text.ends_with("def other():\n    return 1\n"),
        "{new_text}"
    );
    assert_eq!(task_status(&ws, task), "accepted");
    let proposal = ws.root.join(format!(".docsmith/proposals/{task}"));
    for f in ["add.py", "test_add.py", "proposal.diff", "report.md"] {
        assert!(proposal.join(f).exists(), "{f} written");
    }
    assert!(c.stop().success());
}

const CLASS_STUB: &str = "class Calc:\n    \"\"\"A calculator.\"\"\"\n\n    def __init__(self):\n        self.memory = 0\n\n    @staticmethod\n    def add(a, b):\n        \"\"\"Add two numbers.\n\n        >>> Calc.add(2, 3)\n        5\n        \"\"\"\n        ...\n\n    def other(self):\n        return 1\n";

#[test]
fn a_method_gets_actions_and_a_lens_and_is_edited_in_place() {
    // The developer answers well only when asked for the method inside its class.
    let mock = MockLlm::start(Arc::new(|role, _n, body: &Value| {
        let text = body.to_string();
        match role {
            "developer"
                if text.contains("Complete the method `add` of class `Calc`")
                    && text.contains("self.memory = 0") =>
            {
                "```python\ndef add(a, b):\n    return a + b\n```".into()
            }
            "developer" => "```python\ndef add(a, b):\n    return a - b\n```".into(),
            "tests" => json!({"tests": []}).to_string(),
            _ => plan("", &[]),
        }
    }));
    let ws = workspace(&mock, "");
    std::fs::write(&ws.file, CLASS_STUB).unwrap();
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    let (doc, _edits) = editor(&mut c, CLASS_STUB, Some("Accept"));
    c.open(&ws.file, CLASS_STUB);
    let titles: Vec<String> = c
        .code_actions(&ws.file, 7)
        .iter()
        .map(|a| a["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        titles,
        vec![
            "Generate `Calc.add` from docstring",
            "Refine `Calc.add` with feedback…"
        ]
    );
    let lenses = lens_titles(&mut c, &ws);
    assert_eq!(lenses, vec!["Generate `Calc.add` from docstring"]);
    let since = c.log.len();
    let started = c.run_action(&ws.file, 7, "Generate").unwrap();
    let task = started["task"].as_i64().unwrap();
    c.wait_for(since, LONG, "taskChanged accepted", |m| {
        m["method"] == "docsmith/taskChanged" && m["params"]["phase"] == "accepted"
    });
    let new_text = doc.lock().unwrap().clone();
    let body_at = CLASS_STUB.find("        ...\n").unwrap();
    assert_eq!(&new_text[..body_at], &CLASS_STUB[..body_at], "{new_text}");
    assert_eq!(
        &new_text[body_at..],
        "        return a + b\n\n    def other(self):\n        return 1\n"
    );
    assert_eq!(task_status(&ws, task), "accepted");
    assert!(c.stop().success());
}

#[test]
fn a_function_changed_since_the_task_began_is_not_applied() {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    let (_doc, edits) = editor(&mut c, STUB, None); // dismiss the review prompt
    c.open(&ws.file, STUB);
    let since = c.log.len();
    let task = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap()["task"]
        .as_i64()
        .unwrap();
    c.wait_for(since, LONG, "review", |m| {
        m["method"] == "docsmith/taskChanged" && m["params"]["phase"] == "review"
    });
    // The user edits the docstring meanwhile: "two" -> "2" on line 4 (UTF-16 columns 12..15).
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": file_uri(&ws.file), "version": 2},
               "contentChanges": [{"range": {"start": {"line": 4, "character": 12}, "end": {"line": 4, "character": 15}}, "text": "2"}]}),
    );
    // While a proposal is ready, the actions are the review's.
    let titles: Vec<String> = c
        .code_actions(&ws.file, DEF_LINE)
        .iter()
        .map(|a| a["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles[0], "Accept proposal for `add`");
    let r = c
        .request(
            "workspace/executeCommand",
            json!({"command": ACCEPT, "arguments": [{"task": task}]}),
        )
        .unwrap();
    assert_eq!(r["applied"], false);
    assert!(
        r["reason"].as_str().unwrap().contains("docstring changed"),
        "{r}"
    );
    assert!(
        edits.lock().unwrap().is_empty(),
        "no workspace/applyEdit was sent"
    );
    c.wait_for(since, LONG, "re-run offer", |m| {
        m["method"] == "window/showMessageRequest" && m["params"]["actions"][0]["title"] == "Re-run"
    });
    assert_eq!(task_status(&ws, task), "awaiting_review");
    assert!(c.stop().success());
}

#[test]
fn reject_with_feedback_runs_another_round_and_the_developer_reads_it() {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    let (doc, _edits) = editor(&mut c, STUB, None);
    c.open(&ws.file, STUB);
    let since = c.log.len();
    let task = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap()["task"]
        .as_i64()
        .unwrap();
    c.wait_for(since, LONG, "review", |m| m["params"]["phase"] == "review");
    // Reject without feedback and without a `# docsmith:` comment: refused, says how.
    let e = c
        .request(
            "workspace/executeCommand",
            json!({"command": REJECT, "arguments": [{"task": task}]}),
        )
        .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("# docsmith:"),
        "{e}"
    );
    let mid = c.log.len();
    c.request(
        "workspace/executeCommand",
        json!({"command": REJECT, "arguments": [{"task": task, "feedback": "also accept strings and concatenate them"}]}),
    )
    .unwrap();
    let round1 = json!(format!("docsmith/{task}/1"));
    c.wait_for(mid, LONG, "second review", |m| {
        m["params"]["token"] == round1 && m["params"]["value"]["kind"] == "end"
    });
    let developer_saw_feedback = mock.requests.lock().unwrap().iter().any(|(role, body)| {
        role == "developer"
            && body
                .to_string()
                .contains("also accept strings and concatenate them")
    });
    assert!(
        developer_saw_feedback,
        "the feedback reached the developer: {:?}",
        mock.roles()
    );
    let tokens: Vec<String> = c
        .messages(mid, "window/workDoneProgress/create")
        .iter()
        .map(|m| m["params"]["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        tokens,
        vec![format!("docsmith/{task}/1")],
        "a new progress round"
    );
    let store = docsmith::store::Store::open(&ws.root.join(".docsmith/docsmith.db")).unwrap();
    let detail = store.task(docsmith::store::TaskId(task)).unwrap().unwrap();
    assert_eq!(detail.feedback.len(), 1);
    assert!(
        detail.attempts.len() >= 2,
        "each round is a new attempt of the same task"
    );
    let r = c
        .request(
            "workspace/executeCommand",
            json!({"command": ACCEPT, "arguments": [{"task": task}]}),
        )
        .unwrap();
    assert_eq!(r["applied"], true);
    assert!(doc.lock().unwrap().contains("return a + b"));
    assert!(c.stop().success());
}

#[test]
fn the_code_lens_follows_the_tasks_stage() {
    let mock = MockLlm::start(script(0, false));
    // Each model call takes 1.5 s: long enough to read the lens mid-stage.
    mock.delay_ms
        .store(1_500, std::sync::atomic::Ordering::SeqCst);
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    c.open(&ws.file, STUB);
    let since = c.log.len();
    c.run_action(&ws.file, DEF_LINE, "Generate").unwrap();
    // The stage is announced, then the editor is asked to re-read the lens,
    // which then names that stage.
    let changed = c.wait_for(since, LONG, "taskChanged writing code", |m| {
        m["method"] == "docsmith/taskChanged"
            && m["params"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("writing code"))
    });
    let at = c.log.iter().position(|(_, m)| m == &changed).unwrap();
    c.wait_for(at, LONG, "lens refresh after the stage", |m| {
        m["method"] == "workspace/codeLens/refresh"
    });
    let titles = lens_titles(&mut c, &ws);
    assert!(
        titles
            .iter()
            .any(|t| t.contains("writing code") && t.ends_with("· Cancel")),
        "{titles:?}"
    );
    mock.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    c.wait_for(at, LONG, "review", |m| {
        m["method"] == "docsmith/taskChanged" && m["params"]["phase"] == "review"
    });
    let titles = lens_titles(&mut c, &ws);
    assert!(titles.iter().any(|t| t == "Accept"), "{titles:?}");
    assert!(!titles.iter().any(|t| t.contains("Cancel")), "{titles:?}");
    assert!(c.stop().success());
}

#[test]
fn cancel_from_the_progress_ui_stops_the_task() {
    let mock = MockLlm::start(script(0, false));
    mock.delay_ms
        .store(3_000, std::sync::atomic::Ordering::SeqCst);
    let ws = workspace(&mock, "max_concurrent_tasks = 1");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    c.open(&ws.file, STUB);
    let since = c.log.len();
    let task = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap()["task"]
        .as_i64()
        .unwrap();
    // A second request for the same function is refused with a clear message.
    let e = c
        .request(
            "workspace/executeCommand",
            json!({"command": GENERATE, "arguments": [{"uri": file_uri(&ws.file), "name": "add"}]}),
        )
        .unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("already has a docsmith task"),
        "{e}"
    );
    // A task for another function waits in the queue (limit 1).
    let other = c
        .request("workspace/executeCommand", json!({"command": REFINE, "arguments": [{"uri": file_uri(&ws.file), "name": "other", "feedback": "return 2"}]}))
        .unwrap();
    assert_eq!(other["queuedBehind"], 1, "{other}");
    c.wait_for(since, LONG, "begin", |m| {
        m["params"]["value"]["kind"] == "begin"
    });
    let titles: Vec<String> = c
        .code_actions(&ws.file, DEF_LINE)
        .iter()
        .map(|a| a["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, vec!["Cancel docsmith task"]);
    c.notify(
        "window/workDoneProgress/cancel",
        json!({"token": format!("docsmith/{task}/0")}),
    );
    c.wait_for(since, Duration::from_secs(20), "end after cancel", |m| {
        m["params"]["token"] == json!(format!("docsmith/{task}/0"))
            && m["params"]["value"]["kind"] == "end"
    });
    assert_eq!(task_status(&ws, task), "cancelled");
    let other_id = other["task"].as_i64().unwrap();
    c.request(
        "workspace/executeCommand",
        json!({"command": CANCEL, "arguments": [{"task": other_id}]}),
    )
    .unwrap();
    c.wait_for(since, Duration::from_secs(20), "other ends", |m| {
        m["params"]["token"] == json!(format!("docsmith/{other_id}/0"))
            && m["params"]["value"]["kind"] == "end"
    });
    assert_eq!(task_status(&ws, other_id), "cancelled");
    assert!(c.stop().success());
}

#[test]
fn a_clarifying_question_is_asked_with_the_planners_options() {
    let mock = MockLlm::start(script(0, true));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    // Answer the question with its second option; dismiss the review.
    c.responder = Box::new(|method, params| match method {
        "window/showMessageRequest" if params["message"].as_str().unwrap().contains("floats") => {
            params["actions"][1].clone()
        }
        _ => Value::Null,
    });
    c.open(&ws.file, STUB);
    let since = c.log.len();
    let task = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap()["task"]
        .as_i64()
        .unwrap();
    c.wait_for(since, LONG, "review", |m| m["params"]["phase"] == "review");
    let q = &c.messages(since, "window/showMessageRequest")[0];
    let titles: Vec<&str> = q["params"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["ints only", "floats too", "Answer…", "Cancel"]);
    let store = docsmith::store::Store::open(&ws.root.join(".docsmith/docsmith.db")).unwrap();
    let d = store.task(docsmith::store::TaskId(task)).unwrap().unwrap();
    assert_eq!(d.clarifications[0].answer, "floats too");
    assert!(c.stop().success());
}

#[test]
fn proposals_and_interrupted_tasks_survive_a_restart() {
    // A proposal in review, and a second task left running when the server dies.
    let Busy {
        mock,
        ws,
        mut c,
        review: task,
        running: other,
    } = busy_server();
    c.child.kill().unwrap(); // no shutdown: a crash or a closed editor
    drop(c);
    mock.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        task_status(&ws, other),
        "running",
        "killed: nothing recorded"
    );
    accept_after_restart(&ws, task, |titles| {
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("Re-run docsmith on `other`")),
            "{titles:?}"
        );
        assert_eq!(
            task_status(&ws, other),
            "interrupted",
            "marked by the restarted server"
        );
    });
}

#[test]
fn utf8_is_negotiated_and_incremental_edits_keep_positions_right() {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    let init = c.initialize(
        &ws.root,
        json!({"general": {"positionEncodings": ["utf-8", "utf-16"]}}),
        Value::Null,
    );
    assert_eq!(init["capabilities"]["positionEncoding"], "utf-8");
    c.open(&ws.file, STUB);
    // Insert a line with emoji before `add` (UTF-8 columns), then a new stub at the end.
    let uri = file_uri(&ws.file);
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 0}}, "text": "X = '😀😀'\n"},
            {"range": {"start": {"line": 17, "character": 0}, "end": {"line": 17, "character": 0}}, "text": "\n\ndef neg(x):\n    \"\"\"Negate x ✓.\"\"\"\n    pass\n"}
        ]}),
    );
    let titles = |c: &mut LspClient, line| -> Vec<String> {
        c.code_actions(&ws.file, line)
            .iter()
            .map(|a| a["title"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        titles(&mut c, DEF_LINE + 1)[0],
        "Generate `add` from docstring"
    );
    assert_eq!(titles(&mut c, 21)[0], "Generate `neg` from docstring");
    assert!(titles(&mut c, 16).iter().all(|t| t.contains("`other`")));
    // Malformed arguments get a clear error, and the server keeps serving.
    let e = c
        .request(
            "workspace/executeCommand",
            json!({"command": GENERATE, "arguments": [{"uri": uri}]}),
        )
        .unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("missing field `name`"),
        "{e}"
    );
    let e = c
        .request(
            "workspace/executeCommand",
            // Deliberately none of `protocol::Command::NAMES`.
            json!({"command": "docsmith.nope", "arguments": []}),
        )
        .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("unknown command"),
        "{e}"
    );
    let e = c
        .request(
            "workspace/executeCommand",
            json!({"command": GENERATE, "arguments": [{"uri": uri, "name": "missing"}]}),
        )
        .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("add"),
        "names the functions that exist: {e}"
    );
    c.send_raw(b"Content-Length: 5\r\n\r\n{oops");
    assert_eq!(
        titles(&mut c, DEF_LINE + 1)[0],
        "Generate `add` from docstring"
    );
    assert!(c.stop().success());
}

#[test]
fn accept_with_change_annotations_and_tests_written_to_a_new_file() {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    let caps = json!({"workspace": {"workspaceEdit": {"changeAnnotationSupport": {"groupsOnLabel": true}}}});
    c.initialize(&ws.root, caps, json!({"docsmith": {"write_tests": true}}));
    let (doc, edits) = editor(&mut c, STUB, Some("Accept"));
    c.open(&ws.file, STUB);
    let since = c.log.len();
    c.run_action(&ws.file, DEF_LINE, "Generate").unwrap();
    c.wait_for(since, LONG, "accepted", |m| {
        m["params"]["phase"] == "accepted"
    });
    c.wait_for(since, LONG, "tests edit", |m| {
        m["method"] == "workspace/applyEdit"
            && m["params"]["edit"]["documentChanges"][0]["kind"] == "create"
    });
    let edits = edits.lock().unwrap();
    let accept = &edits[0]["edit"];
    let ann = accept["changeAnnotations"].as_object().unwrap();
    assert_eq!(ann.len(), 1);
    let (id, a) = ann.iter().next().unwrap();
    assert_eq!(a["needsConfirmation"], true);
    let e0 = &accept["documentChanges"][0]["edits"][0];
    assert_eq!(
        e0["annotationId"],
        json!(id),
        "every edit carries the annotation"
    );
    assert!(doc.lock().unwrap().contains("return a + b"));
    let tests = &edits[1]["edit"]["documentChanges"];
    assert!(
        tests[0]["uri"]
            .as_str()
            .unwrap()
            .ends_with("/tests/test_calc.py"),
        "{tests}"
    );
    let body = tests[1]["edits"][0]["newText"].as_str().unwrap();
    assert!(
        body.contains("from calc import *") && body.contains("def test_"),
        "{body}"
    );
    assert!(c.stop().success());
}

#[test]
fn bad_settings_are_reported_and_the_last_good_ones_stay() {
    let mock = MockLlm::start(script(0, false));
    // A typo in initializationOptions: shown at start, and commands say why they cannot run.
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), json!({"max_refinement": 2}));
    let err = c.wait_for(0, LONG, "config error", |m| {
        m["method"] == "window/showMessage"
    });
    let msg = err["params"]["message"].as_str().unwrap();
    assert!(
        msg.contains("max_refinement") && err["params"]["type"] == 1,
        "{msg}"
    );
    c.open(&ws.file, STUB);
    let e = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("max_refinement"),
        "{e}"
    );
    assert!(c.stop().success());

    // A typo pushed later through didChangeConfiguration: reported, and the last good settings stay.
    let mut c = server(&ws);
    c.initialize(
        &ws.root,
        json!({}),
        json!({"docsmith": {"max_refinements": 2}}),
    );
    editor(&mut c, STUB, None);
    let since = c.log.len();
    c.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"docsmith": {"sandbox": {"cpu_secs": 3}}}}),
    );
    let err = c.wait_for(since, LONG, "config error", |m| {
        m["method"] == "window/showMessage"
    });
    assert!(
        err["params"]["message"]
            .as_str()
            .unwrap()
            .contains("cpu_secs"),
        "{err}"
    );
    c.open(&ws.file, STUB);
    let r = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap();
    assert!(r["task"].as_i64().is_some());
    assert!(c.stop().success());
}

/// A server with a proposal for `add` waiting for review (its prompt
/// dismissed) and a task on `other` running (the endpoint made slow).
struct Busy {
    mock: MockLlm,
    ws: Ws,
    c: LspClient,
    review: i64,
    running: i64,
}

fn busy_server() -> Busy {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    let mut c = server(&ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    editor(&mut c, STUB, None);
    c.open(&ws.file, STUB);
    let review = task_in_review(&mut c, &ws);
    let running = task_running(&mut c, &ws, &mock);
    Busy {
        mock,
        ws,
        c,
        review,
        running,
    }
}

/// Starts a task that reaches review (the prompt dismissed) and returns its id.
fn task_in_review(c: &mut LspClient, ws: &Ws) -> i64 {
    let since = c.log.len();
    let task = c.run_action(&ws.file, DEF_LINE, "Generate").unwrap()["task"]
        .as_i64()
        .unwrap();
    c.wait_for(since, LONG, "review", |m| {
        m["method"] == "docsmith/taskChanged"
            && m["params"]["task"] == json!(task)
            && m["params"]["phase"] == "review"
    });
    task
}

/// Starts a refine task on `other` that stays running (the endpoint is slow).
fn task_running(c: &mut LspClient, ws: &Ws, mock: &MockLlm) -> i64 {
    mock.delay_ms
        .store(30_000, std::sync::atomic::Ordering::SeqCst);
    let since = c.log.len();
    let task = c
        .request("workspace/executeCommand", json!({"command": REFINE, "arguments": [{"uri": file_uri(&ws.file), "name": "other", "feedback": "return 2"}]}))
        .unwrap()["task"]
        .as_i64()
        .unwrap();
    c.wait_for(since, LONG, "running", |m| {
        m["params"]["token"] == json!(format!("docsmith/{task}/0"))
            && m["params"]["value"]["kind"] == "begin"
    });
    task
}

/// The titles of the code lenses in the test file.
fn lens_titles(c: &mut LspClient, ws: &Ws) -> Vec<String> {
    let lenses = c
        .request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": file_uri(&ws.file)}}),
        )
        .unwrap();
    lenses
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["command"]["title"].as_str().unwrap().to_string())
        .collect()
}

/// After a restart: the lens above `add` offers Accept (`check` looks at the
/// other lens titles), and Accept applies the proposal.
fn accept_after_restart(ws: &Ws, task: i64, check: impl Fn(&[String])) {
    let mut c = server(ws);
    c.initialize(&ws.root, json!({}), Value::Null);
    let (doc, _) = editor(&mut c, STUB, None);
    c.open(&ws.file, STUB);
    let titles = lens_titles(&mut c, ws);
    assert!(titles.iter().any(|t| t == "Accept"), "{titles:?}");
    check(&titles);
    let r = c
        .run_action(&ws.file, DEF_LINE, "Accept proposal for `add`")
        .unwrap();
    assert_eq!(r["applied"], true, "{r}");
    assert!(doc.lock().unwrap().contains("    return a + b\n"));
    assert_eq!(task_status(ws, task), "accepted");
    assert!(c.stop().success());
}

#[test]
fn a_proposal_waiting_for_review_survives_shutdown_and_exit() {
    let Busy {
        mock,
        ws,
        c,
        review: task,
        running,
    } = busy_server();
    assert!(c.stop().success());
    assert_eq!(
        task_status(&ws, task),
        "awaiting_review",
        "shutdown keeps the proposal"
    );
    assert_eq!(
        task_status(&ws, running),
        "interrupted",
        "a running task is recorded as interrupted"
    );
    mock.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    accept_after_restart(&ws, task, |_| {});
}

#[test]
fn the_server_exits_promptly_when_stdin_closes() {
    let Busy {
        mock,
        ws,
        mut c,
        review: task,
        running,
    } = busy_server();
    // A request in flight that waits on the editor: accept's workspace/applyEdit,
    // never answered because the editor is gone.
    c.answer_requests = false;
    let since = c.log.len();
    c.send(
        &json!({"jsonrpc": "2.0", "id": 9999, "method": "workspace/executeCommand",
                   "params": {"command": ACCEPT, "arguments": [{"task": task}]}}),
    );
    c.wait_for(since, LONG, "applyEdit", |m| {
        m["method"] == "workspace/applyEdit"
    });
    let start = std::time::Instant::now();
    c.close_stdin();
    let status = c.wait_exit(Duration::from_secs(10));
    let took = start.elapsed();
    println!("exit after stdin closed: {took:?} ({status:?})");
    assert!(status.is_some(), "still running 10 s after stdin closed");
    assert!(took < Duration::from_secs(2), "exited after {took:?}");
    assert_eq!(task_status(&ws, running), "interrupted");
    assert_eq!(task_status(&ws, task), "awaiting_review");
    mock.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    accept_after_restart(&ws, task, |_| {});
}

#[test]
fn the_server_exits_when_the_editors_process_is_gone() {
    let mock = MockLlm::start(script(0, false));
    let ws = workspace(&mock, "");
    // The "editor": a process the test can end.
    let mut editor_process = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let mut c = server(&ws);
    c.process_id = Some(editor_process.id());
    c.initialize(&ws.root, json!({}), Value::Null);
    // While the editor lives, the server stays (two polls).
    assert!(
        c.wait_exit(Duration::from_secs(5)).is_none(),
        "exited while the editor was alive"
    );
    editor_process.kill().unwrap();
    editor_process.wait().unwrap(); // reaped: kill(pid, 0) now says ESRCH
    let start = std::time::Instant::now();
    let status = c.wait_exit(Duration::from_secs(15));
    let took = start.elapsed();
    println!("exit after the editor's process ended: {took:?} ({status:?})");
    assert!(
        status.is_some(),
        "still running 15 s after the editor ended"
    );
    // One poll interval (2 s) plus the 2 s exit budget.
    assert!(took < Duration::from_secs(4), "exited after {took:?}");
}
