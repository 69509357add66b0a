use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

use super::*;
use crate::types::{
    Finding, Isolation, KillReason, Role, Severity, TestCase, TestOrigin, TestResult, TestRun,
};

fn new_task(function: &str) -> NewTask {
    NewTask {
        workspace: "/ws".into(),
        file: "/ws/m.py".into(),
        function: function.into(),
        kind: TaskKind::Generate,
        stub_source: format!("def {function}(a, b):\n    \"\"\"Add.\"\"\"\n    ...\n"),
        docstring: Some("Add.".into()),
    }
}

#[test]
fn checkpoint_empties_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let store = Store::open(&path).unwrap();
    store.create_task(&new_task("f")).unwrap();
    let wal = dir.path().join("d.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the write is in the WAL"
    );
    store.checkpoint().unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    let again = Store::open(&path).unwrap();
    assert_eq!(again.history(10).unwrap().len(), 1);
}

fn case(id: &str, origin: TestOrigin) -> TestCase {
    TestCase {
        id: id.into(),
        origin,
        call: "add(2, 3)".into(),
        expected: "5".into(),
        raises: None,
        note: "from docstring".into(),
        options: Vec::new(),
    }
}

fn sample_run() -> TestRun {
    TestRun {
        results: vec![
            TestResult {
                test_id: "ex1".into(),
                passed: true,
                error_type: None,
                message: None,
                traceback: None,
                actual: Some("5".into()),
                duration_ms: 3,
                outcome: None,
            },
            TestResult {
                test_id: "gen1".into(),
                passed: false,
                error_type: Some("AssertionError".into()),
                message: Some("expected 0, got -1".into()),
                traceback: Some("Traceback ...\nAssertionError".into()),
                actual: Some("-1".into()),
                duration_ms: 4,
                outcome: None,
            },
        ],
        wall_ms: 120,
        isolation: Isolation::Bwrap,
        killed: Some(KillReason::WallTimeout),
        load_error: None,
        stderr_tail: "warning: x\n".into(),
    }
}

fn call(
    task: Option<TaskId>,
    attempt: Option<AttemptId>,
    role: Role,
    p: u64,
    c: u64,
    ok: bool,
) -> LlmCallRecord {
    LlmCallRecord {
        task,
        attempt,
        role,
        provider: "local".into(),
        model: "qwen2.5-coder-0.5b".into(),
        prompt_tokens: p,
        completion_tokens: c,
        latency_ms: 250,
        ok,
        error: (!ok).then(|| "timeout".to_string()),
        response: ok.then(|| "é".repeat(MAX_RESPONSE_BYTES)),
    }
}

#[test]
fn llm_replies_are_kept_truncated_on_a_char_boundary() {
    let s = Store::open_in_memory().unwrap();
    s.add_llm_call(&call(None, None, Role::Developer, 10, 5, true))
        .unwrap();
    s.add_llm_call(&call(None, None, Role::Critic, 10, 0, false))
        .unwrap();
    let rows: Vec<Option<String>> = s
        .conn()
        .prepare("SELECT response FROM llm_calls ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let kept = rows[0].as_deref().unwrap();
    assert_eq!(
        kept.len(),
        MAX_RESPONSE_BYTES,
        "16 KiB of two-byte characters fits exactly"
    );
    assert!(kept.chars().all(|c| c == 'é'));
    assert_eq!(rows[1], None);
}

#[test]
fn status_and_kind_names_round_trip() {
    for s in TaskStatus::ALL {
        assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
    }
    for k in [TaskKind::Generate, TaskKind::Refine, TaskKind::Bench] {
        assert_eq!(TaskKind::parse(k.as_str()), Some(k));
    }
    assert_eq!(TaskStatus::parse("Running"), None);
    assert_eq!(TaskKind::parse("other"), None);
    assert!(TaskStatus::Accepted.is_terminal());
    assert!(!TaskStatus::AwaitingReview.is_terminal());
}

/// Writes each value through its `ToSql`, checks the text SQLite holds,
/// and reads it back through its `FromSql`.
fn pin<T>(conn: &Connection, pairs: &[(T, &str)])
where
    T: rusqlite::ToSql + rusqlite::types::FromSql + PartialEq + std::fmt::Debug,
{
    for (value, name) in pairs {
        let stored: String = conn.query_row("SELECT ?1", [value], |r| r.get(0)).unwrap();
        assert_eq!(stored, *name, "{value:?} is stored as {name:?}");
        let back: T = conn.query_row("SELECT ?1", [name], |r| r.get(0)).unwrap();
        assert_eq!(&back, value, "{name:?} reads back");
    }
}

#[test]
fn every_enum_is_stored_by_its_pinned_name() {
    // These strings are in existing databases and in the migrations: a
    // failure here means a rename that would make old rows unreadable.
    let conn = Connection::open_in_memory().unwrap();
    let statuses = [
        (TaskStatus::Running, "running"),
        (TaskStatus::AwaitingAnswer, "awaiting_answer"),
        (TaskStatus::AwaitingReview, "awaiting_review"),
        (TaskStatus::Accepted, "accepted"),
        (TaskStatus::Rejected, "rejected"),
        (TaskStatus::Discarded, "discarded"),
        (TaskStatus::Failed, "failed"),
        (TaskStatus::Cancelled, "cancelled"),
        (TaskStatus::Interrupted, "interrupted"),
    ];
    assert_eq!(statuses.len(), TaskStatus::ALL.len());
    pin(&conn, &statuses);
    for (s, name) in statuses {
        assert_eq!(s.as_str(), name);
    }
    let kinds = [
        (TaskKind::Generate, "generate"),
        (TaskKind::Refine, "refine"),
        (TaskKind::Bench, "bench"),
    ];
    pin(&conn, &kinds);
    for (k, name) in kinds {
        assert_eq!(k.as_str(), name);
    }
    let origins = [
        (TestOrigin::Docstring, "docstring"),
        (TestOrigin::Generated, "generated"),
        (TestOrigin::User, "user"),
    ];
    pin(&conn, &origins);
    for (o, name) in origins {
        assert_eq!(o.as_str(), name);
    }
    pin(
        &conn,
        &[
            (Isolation::Bwrap, "bwrap"),
            (Isolation::RlimitsOnly, "rlimits_only"),
        ],
    );
    pin(
        &conn,
        &[
            (KillReason::WallTimeout, "wall_timeout"),
            (KillReason::Cancelled, "cancelled"),
        ],
    );
    pin(
        &conn,
        &[
            (Severity::Info, "info"),
            (Severity::Warning, "warning"),
            (Severity::Error, "error"),
        ],
    );
    let roles = [
        (Role::Planner, "planner"),
        (Role::TestDesigner, "test_designer"),
        (Role::Developer, "developer"),
        (Role::Critic, "critic"),
    ];
    assert_eq!(roles.len(), Role::ALL.len());
    pin(&conn, &roles);
    for (r, name) in roles {
        assert_eq!(r.as_str(), name);
    }
    // A new variant must get a pinned name above before this compiles.
    let _every_variant_is_listed =
        |k: TaskKind, o: TestOrigin, i: Isolation, x: KillReason, s: Severity| {
            match k {
                TaskKind::Generate | TaskKind::Refine | TaskKind::Bench => {}
            }
            match o {
                TestOrigin::Docstring | TestOrigin::Generated | TestOrigin::User => {}
            }
            match i {
                Isolation::Bwrap | Isolation::RlimitsOnly => {}
            }
            match x {
                KillReason::WallTimeout | KillReason::Cancelled => {}
            }
            match s {
                Severity::Info | Severity::Warning | Severity::Error => {}
            }
        };
}

#[test]
fn an_unknown_stored_name_is_a_corrupt_value() {
    let store = Store::open_in_memory().unwrap();
    let t = store.create_task(&new_task("f")).unwrap();
    store
        .conn()
        .execute(
            "INSERT INTO llm_calls (task, role, provider, model, prompt_tokens, completion_tokens,
               latency_ms, ok, created_ms) VALUES (?1, 'oracle', 'p', 'm', 1, 1, 1, 1, 0)",
            [t.0],
        )
        .unwrap();
    let e = store.task(t).unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Corrupt {
                what: "llm call role",
                value
            } if value == "oracle"
        ),
        "{e}"
    );
    let t2 = store.create_task(&new_task("g")).unwrap();
    store
        .conn()
        .execute(
            "INSERT INTO clarifications (task, question, options_json, answer, assumed, created_ms)
             VALUES (?1, 'q', 'not json', 'a', 0, 0)",
            [t2.0],
        )
        .unwrap();
    let e = store.task(t2).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                what: "clarification options",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn every_table_round_trips_through_the_api() {
    let store = Store::open_in_memory().unwrap();
    let t = store.create_task(&new_task("add")).unwrap();
    store.set_task_plan(t, r#"{"steps":["add"]}"#).unwrap();
    store
        .add_clarification(
            t,
            "Negative inputs?",
            &["allowed".into(), "error".into()],
            "allowed",
            true,
        )
        .unwrap();
    let mut raising = case("gen2", TestOrigin::Generated);
    raising.expected = String::new();
    raising.raises = Some("TypeError".into());
    store
        .add_test_cases(
            t,
            &[
                case("ex1", TestOrigin::Docstring),
                case("gen1", TestOrigin::Generated),
                raising.clone(),
            ],
        )
        .unwrap();

    let a1 = store
        .start_attempt(t, 1, "def add(a, b):\n    return a - b\n")
        .unwrap();
    let run = sample_run();
    let run_id = store.add_test_run(a1, &run).unwrap();
    assert!(run_id > 0);
    let findings = [
        Finding {
            rule: "eval".into(),
            severity: Severity::Error,
            message: "eval is not allowed".into(),
            line: Some(2),
            tool: "tree-sitter".into(),
        },
        Finding {
            rule: "ruff:F401".into(),
            severity: Severity::Warning,
            message: "unused import".into(),
            line: None,
            tool: "ruff".into(),
        },
    ];
    store.add_findings(a1, "security", &findings[..1]).unwrap();
    store.add_findings(a1, "validate", &findings[1..]).unwrap();
    store
        .add_critique(
            a1,
            "subtracts instead of adding",
            Some(r#"{"cause":"sign"}"#),
        )
        .unwrap();
    let mut times = BTreeMap::new();
    times.insert("run_tests".to_string(), 120u64);
    times.insert("write_code".to_string(), 900u64);
    let summary1 = AttemptSummary {
        stage_reached: "run_tests".into(),
        passed: 1,
        failed: 1,
        findings_errors: 1,
        wall_ms: 1500,
        stage_times_ms: times,
        verdict: "tests_failed".into(),
    };
    store.finish_attempt(a1, &summary1).unwrap();
    store
        .drop_test_case(t, "gen1", "contradicts example ex1", 1)
        .unwrap();

    let a2 = store
        .start_attempt(t, 2, "def add(a, b):\n    return a + b\n")
        .unwrap();
    store.add_feedback(t, Some(a2), "use a + b").unwrap();
    store.add_feedback(t, None, "keep it short").unwrap();
    store
        .add_llm_call(&call(Some(t), Some(a1), Role::Developer, 300, 40, true))
        .unwrap();
    store
        .add_llm_call(&call(Some(t), None, Role::Planner, 200, 30, true))
        .unwrap();
    store
        .add_llm_call(&call(Some(t), Some(a2), Role::Developer, 350, 45, false))
        .unwrap();
    store
        .add_llm_call(&call(None, None, Role::Critic, 1, 1, true))
        .unwrap();
    store
        .set_task_final(t, "def add(a, b):\n    return a + b\n", 4200)
        .unwrap();
    store
        .set_task_proposal_dir(t, ".docsmith/proposals/1")
        .unwrap();
    store
        .set_task_status(t, TaskStatus::AwaitingReview, Some("3/3 tests"))
        .unwrap();

    let d = store.task(t).unwrap().expect("task exists");
    assert_eq!(d.task.id, t);
    assert_eq!(d.task.function, "add");
    assert_eq!(d.task.kind, TaskKind::Generate);
    assert_eq!(d.task.status, TaskStatus::AwaitingReview);
    assert_eq!(d.task.status_reason.as_deref(), Some("3/3 tests"));
    assert_eq!(d.task.docstring.as_deref(), Some("Add."));
    assert_eq!(d.task.plan_json.as_deref(), Some(r#"{"steps":["add"]}"#));
    assert_eq!(
        d.task.final_code.as_deref(),
        Some("def add(a, b):\n    return a + b\n")
    );
    assert_eq!(
        d.task.proposal_dir.as_deref(),
        Some(".docsmith/proposals/1")
    );
    assert_eq!(d.task.wall_ms, Some(4200));
    assert!(d.task.updated_ms >= d.task.created_ms);

    assert_eq!(d.clarifications.len(), 1);
    assert_eq!(
        d.clarifications[0].options,
        vec!["allowed".to_string(), "error".to_string()]
    );
    assert!(d.clarifications[0].assumed);

    assert_eq!(d.test_cases.len(), 3);
    assert_eq!(d.test_cases[0].case, case("ex1", TestOrigin::Docstring));
    assert_eq!(d.test_cases[2].case, raising);
    let dropped: Vec<_> = d.dropped().collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].0.id, "gen1");
    assert_eq!(
        dropped[0].1,
        &DropInfo {
            reason: "contradicts example ex1".into(),
            at_attempt: 1
        }
    );

    assert_eq!(d.attempts.len(), 2);
    let first = &d.attempts[0];
    assert_eq!((first.id, first.n), (a1, 1));
    assert_eq!(first.summary.as_ref(), Some(&summary1));
    assert_eq!(first.runs, vec![run]);
    assert_eq!(first.findings.len(), 2);
    assert_eq!(first.findings[0].phase, "security");
    assert_eq!(first.findings[0].finding, findings[0]);
    assert_eq!(first.findings[1].phase, "validate");
    assert_eq!(first.findings[1].finding, findings[1]);
    assert_eq!(first.critiques[0].text, "subtracts instead of adding");
    assert_eq!(
        first.critiques[0].json.as_deref(),
        Some(r#"{"cause":"sign"}"#)
    );
    let last = d.last_attempt().unwrap();
    assert_eq!((last.id, last.n, last.summary.clone()), (a2, 2, None));
    assert!(d.last_findings().is_empty());

    assert_eq!(d.feedback.len(), 2);
    assert_eq!(d.feedback[0].attempt, Some(a2));
    assert_eq!(d.feedback[1].attempt, None);

    // The task-less call is not counted for the task.
    assert_eq!(
        (d.llm_calls, d.prompt_tokens, d.completion_tokens),
        (3, 850, 115)
    );
    assert_eq!(d.llm_usage.len(), 2);
    assert_eq!(d.llm_usage[0].role, Role::Planner);
    let dev = &d.llm_usage[1];
    assert_eq!(
        (dev.role, dev.calls, dev.failed_calls, dev.prompt_tokens),
        (Role::Developer, 2, 1, 650)
    );
    assert_eq!(dev.latency_ms, 500);

    let h = store.history(10).unwrap();
    assert_eq!(h.len(), 1);
    let s = &h[0];
    assert_eq!(
        (s.id, s.status, s.kind),
        (t, TaskStatus::AwaitingReview, TaskKind::Generate)
    );
    assert_eq!(s.attempts, 2);
    // Attempt 2 is unfinished and has no run yet.
    assert_eq!((s.tests_passed, s.tests_total), (0, 0));
    assert_eq!(
        (s.llm_calls, s.prompt_tokens, s.completion_tokens),
        (3, 850, 115)
    );
    assert_eq!(s.wall_ms, Some(4200));
}

#[test]
fn history_counts_tests_of_the_last_attempt() {
    let store = Store::open_in_memory().unwrap();
    let t = store.create_task(&new_task("f")).unwrap();
    let a1 = store.start_attempt(t, 1, "x").unwrap();
    store
        .finish_attempt(
            a1,
            &AttemptSummary {
                passed: 4,
                failed: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(store.history(5).unwrap()[0].tests_passed, 4);
    assert_eq!(store.history(5).unwrap()[0].tests_total, 7);
    // Unfinished attempt with a run: counted from its latest run.
    let a2 = store.start_attempt(t, 2, "y").unwrap();
    store.add_test_run(a2, &sample_run()).unwrap();
    let s = &store.history(5).unwrap()[0];
    assert_eq!((s.attempts, s.tests_passed, s.tests_total), (2, 1, 2));

    let t2 = store.create_task(&new_task("g")).unwrap();
    let h = store.history(5).unwrap();
    assert_eq!(h.iter().map(|s| s.id).collect::<Vec<_>>(), vec![t2, t]);
    assert_eq!(store.history(1).unwrap().len(), 1);
    assert_eq!((h[0].attempts, h[0].tests_total, h[0].llm_calls), (0, 0, 0));
}

#[test]
fn unknown_ids_and_bad_arguments_are_clear_errors() {
    let store = Store::open_in_memory().unwrap();
    assert!(store.task(TaskId(42)).unwrap().is_none());
    let e = store
        .set_task_status(TaskId(42), TaskStatus::Failed, None)
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { what: "task", .. }),
        "{e}"
    );
    let e = store.start_attempt(TaskId(42), 1, "x").unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { what: "task", .. }),
        "{e}"
    );
    let e = store
        .finish_attempt(AttemptId(7), &AttemptSummary::default())
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotFound {
                what: "attempt",
                ..
            }
        ),
        "{e}"
    );
    let e = store.add_test_run(AttemptId(7), &sample_run()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotFound {
                what: "attempt",
                ..
            }
        ),
        "{e}"
    );

    let t = store.create_task(&new_task("f")).unwrap();
    let e = store.drop_test_case(t, "nope", "r", 1).unwrap_err();
    assert!(e.to_string().contains("test case nope of task"), "{e}");
    let a = store.start_attempt(t, 1, "x").unwrap();
    let e = store.add_findings(a, "lint", &[]).unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument { .. }), "{e}");
    // A failed run insert leaves nothing behind.
    assert!(store.task(t).unwrap().unwrap().attempts[0].runs.is_empty());
}

#[test]
fn re_adding_a_test_case_updates_it_and_keeps_the_drop() {
    let store = Store::open_in_memory().unwrap();
    let t = store.create_task(&new_task("f")).unwrap();
    store
        .add_test_cases(t, &[case("gen1", TestOrigin::Generated)])
        .unwrap();
    store.drop_test_case(t, "gen1", "wrong", 2).unwrap();
    let mut changed = case("gen1", TestOrigin::Generated);
    changed.expected = "6".into();
    store.add_test_cases(t, &[changed.clone()]).unwrap();
    let d = store.task(t).unwrap().unwrap();
    assert_eq!(d.test_cases.len(), 1);
    assert_eq!(d.test_cases[0].case, changed);
    assert_eq!(
        d.test_cases[0].dropped.as_ref().map(|x| x.at_attempt),
        Some(2)
    );
}

#[test]
fn file_db_uses_wal_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/docsmith.db");
    let t = {
        let store = Store::open(&path).unwrap();
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = store
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        store.create_task(&new_task("kept")).unwrap()
    };
    let store = Store::open(&path).unwrap();
    let version: i64 = store
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert_eq!(store.task(t).unwrap().unwrap().task.function, "kept");
}

#[test]
fn migrations_apply_once_and_in_order() {
    let mut conn = Connection::open_in_memory().unwrap();
    let m1 = "CREATE TABLE a (x INTEGER);";
    let m2 = "INSERT INTO a VALUES (1);";
    assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 1);
    assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 0);
    assert_eq!(migrate(&mut conn, &[m1, m2], "t").unwrap(), 1);
    assert_eq!(migrate(&mut conn, &[m1, m2], "t").unwrap(), 0);
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "m2 ran exactly once");
}

#[test]
fn failed_migration_rolls_back_to_previous_version() {
    let mut conn = Connection::open_in_memory().unwrap();
    let m1 = "CREATE TABLE a (x INTEGER);";
    let bad = "CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1);";
    assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 1);
    let e = migrate(&mut conn, &[m1, bad], "t").unwrap_err();
    assert!(matches!(e, StoreError::Migration { version: 2, .. }), "{e}");
    assert!(e.to_string().contains("left unchanged at version 1"), "{e}");
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 1);
    let b: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(b, 0, "table b rolled back");
}

#[test]
fn newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docsmith.db");
    drop(Store::open(&path).unwrap());
    let newer = MIGRATIONS.len() as i64 + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(
        matches!(e, StoreError::NewerSchema { found, .. } if found == newer),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade docsmith"), "{e}");
}

#[test]
fn store_is_send_sync_and_shared_by_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for j in 0..25 {
                    let t = store.create_task(&new_task(&format!("f{i}_{j}"))).unwrap();
                    let a = store.start_attempt(t, 1, "x").unwrap();
                    store.add_test_run(a, &sample_run()).unwrap();
                    store
                        .add_llm_call(&call(Some(t), Some(a), Role::Critic, 10, 1, true))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let h = store.history(1000).unwrap();
    assert_eq!(h.len(), 50);
    assert!(h.iter().all(|s| s.tests_total == 2 && s.llm_calls == 1));
}

#[test]
fn two_connections_to_one_file_write_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docsmith.db");
    drop(Store::open(&path).unwrap());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                for j in 0..20 {
                    let t = store.create_task(&new_task(&format!("p{i}_{j}"))).unwrap();
                    store
                        .add_test_cases(t, &[case("ex1", TestOrigin::Docstring)])
                        .unwrap();
                    store.history(5).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(Store::open(&path).unwrap().history(100).unwrap().len(), 40);
}

#[test]
fn live_tasks_become_interrupted() {
    let store = Store::open_in_memory().unwrap();
    let running = store.create_task(&new_task("a")).unwrap();
    let asking = store.create_task(&new_task("b")).unwrap();
    store
        .set_task_status(asking, TaskStatus::AwaitingAnswer, None)
        .unwrap();
    let review = store.create_task(&new_task("c")).unwrap();
    store
        .set_task_status(review, TaskStatus::AwaitingReview, None)
        .unwrap();
    let done = store.create_task(&new_task("d")).unwrap();
    store
        .set_task_status(done, TaskStatus::Accepted, None)
        .unwrap();

    assert_eq!(store.mark_running_as_interrupted().unwrap(), 2);
    let status = |t| store.task(t).unwrap().unwrap().task;
    assert_eq!(status(running).status, TaskStatus::Interrupted);
    assert_eq!(
        status(running).status_reason.as_deref(),
        Some("the server stopped while the task was running")
    );
    assert_eq!(status(asking).status, TaskStatus::Interrupted);
    assert_eq!(status(review).status, TaskStatus::AwaitingReview);
    assert_eq!(status(done).status, TaskStatus::Accepted);
    assert_eq!(store.mark_running_as_interrupted().unwrap(), 0);
}

#[test]
fn user_cases_follow_the_file_however_a_task_recorded_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join("pkg")).unwrap();
    let file = ws.join("pkg/m.py");
    std::fs::write(&file, "").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&ws, &link).unwrap();
    let store = Store::open_in_memory().unwrap();
    let user = |call: &str| TestCase {
        call: call.into(),
        ..case("x", TestOrigin::User)
    };
    // The same file as three tasks recorded it: relative to the workspace,
    // through a symlinked folder, and absolute; then another file.
    for (workspace, recorded, call) in [
        (ws.clone(), PathBuf::from("pkg/m.py"), "add(1, 1)"),
        (link.clone(), link.join("pkg/m.py"), "add(2, 2)"),
        (ws.clone(), file.clone(), "add(3, 3)"),
        (ws.clone(), ws.join("pkg/other.py"), "add(4, 4)"),
    ] {
        let t = store
            .create_task(&NewTask {
                workspace: workspace.display().to_string(),
                file: recorded.display().to_string(),
                ..new_task("add")
            })
            .unwrap();
        store.add_test_cases(t, &[user(call)]).unwrap();
    }
    let calls = |f: &Path, name: &str| {
        store
            .user_test_cases(f, name)
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.call))
            .collect::<Vec<_>>()
    };
    let want = vec![
        ("user1".to_string(), "add(1, 1)".to_string()),
        ("user2".into(), "add(2, 2)".into()),
        ("user3".into(), "add(3, 3)".into()),
    ];
    assert_eq!(calls(&file, "add"), want);
    assert_eq!(calls(&link.join("pkg/m.py"), "add"), want);
    assert!(calls(&file, "sub").is_empty());
}
