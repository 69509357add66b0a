//! State-machine tests of the pipeline with a scripted provider (routing and
//! transitions only; the real model is exercised by `tests/e2e_generate.rs`).
//! The sandbox, the store and the checks are real.

use std::sync::{Arc, Mutex};

use super::*;
use crate::llm::scripted::ScriptedProvider;
use crate::llm::{LlmError, Provider};
use crate::sandbox::SandboxConfig;

const STUB: &str = "import math\n\n\ndef add(a, b):\n    \"\"\"Add two numbers.\n\n    >>> add(2, 3)\n    5\n    >>> add(-1, 1)\n    0\n    \"\"\"\n    ...\n\n\ndef other():\n    return 1\n";

const GOOD: &str = "```python\ndef add(a, b):\n    return a + b\n```";
const WRONG: &str = "```python\ndef add(a, b):\n    return a - b\n```";
const EVIL: &str = "```python\ndef add(a, b):\n    return eval(f\"{a} + {b}\")\n```";

fn plan(question: &str) -> String {
    serde_json::json!({
        "understanding": "return a + b", "steps": ["add"], "edge_cases": ["negatives"],
        "assumptions": ["numbers are ints"], "question": question, "options": if question.is_empty() { vec![] } else { vec!["ints", "floats"] }
    })
    .to_string()
}

fn tests_json(pairs: &[(&str, &str)]) -> String {
    let tests: Vec<_> = pairs
        .iter()
        .map(|(c, e)| serde_json::json!({"call": c, "expected": e, "why": "edge"}))
        .collect();
    serde_json::json!({ "tests": tests }).to_string()
}

fn critique() -> String {
    serde_json::json!({"root_cause": "wrong operator", "instructions": "use +"}).to_string()
}

/// Which role a request is for, from its system prompt.
fn role_of(req: &CompletionRequest) -> &'static str {
    crate::roles::prompt_kind(&req.messages[0].content)
}

/// A script: for each role, the replies in order (the last one repeats).
#[derive(Clone, Default)]
struct Script {
    planner: Vec<String>,
    tests: Vec<String>,
    developer: Vec<String>,
    critic: Vec<String>,
    judge: Vec<String>,
}

struct Harness {
    deps: Deps,
    calls: Arc<Mutex<Vec<&'static str>>>,
    _ws: tempfile::TempDir,
    ws: PathBuf,
}

impl Harness {
    /// How many requests went to `role` so far.
    fn calls_to(&self, role: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|r| **r == role)
            .count()
    }
}

fn harness(script: Script, settings: Settings) -> Harness {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(Mutex::new(
        std::collections::HashMap::<&'static str, usize>::new(),
    ));
    let log = calls.clone();
    let provider = ScriptedProvider::new(move |req: &CompletionRequest| {
        let role = role_of(req);
        log.lock().unwrap().push(role);
        let mut c = counters.lock().unwrap();
        let i = c.entry(role).or_insert(0);
        let list = match role {
            "planner" => &script.planner,
            "tests" => &script.tests,
            "developer" => &script.developer,
            "judge" => &script.judge,
            _ => &script.critic,
        };
        let reply = list.get(*i).or(list.last()).cloned().unwrap_or_default();
        *i += 1;
        Ok(reply)
    });
    let provider: Arc<dyn Provider> = Arc::new(provider);
    let ws = tempfile::tempdir().unwrap();
    let deps = Deps {
        router: Arc::new(Router::uniform(provider)),
        sandbox: Arc::new(Sandbox::new(SandboxConfig::default()).unwrap()),
        store: Arc::new(Store::open_in_memory().unwrap()),
        guidelines: Arc::new(Guidelines::builtin()),
        settings,
    };
    let path = ws.path().to_path_buf();
    Harness {
        deps,
        calls,
        _ws: ws,
        ws: path,
    }
}

fn spec(h: &Harness, feedback: Option<&str>, source: &str) -> TaskSpec {
    TaskSpec {
        workspace: h.ws.clone(),
        file: h.ws.join("m.py"),
        source: source.to_string(),
        target: Target::Name("add".into()),
        feedback: feedback.map(str::to_string),
        kind: if feedback.is_some() {
            TaskKind::Refine
        } else {
            TaskKind::Generate
        },
    }
}

fn script(developer: &[&str]) -> Script {
    Script {
        planner: vec![plan("")],
        tests: vec![tests_json(&[("add(10, 20)", "30")])],
        developer: developer.iter().map(|s| s.to_string()).collect(),
        critic: vec![critique()],
        judge: vec![serde_json::json!({"verdicts": []}).to_string()],
    }
}

/// Runs to the review pause, collecting the stages entered.
async fn to_review(
    run: &mut TaskRun,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (Box<Proposal>, Vec<Stage>) {
    let cancel = CancellationToken::new();
    let pause = run.advance(&cancel).await.expect("advance");
    let mut stages = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Stage { stage, .. } = ev {
            if stages.last() != Some(&stage) {
                stages.push(stage);
            }
        }
    }
    match pause {
        Pause::Review(p) => (p, stages),
        other => panic!("expected a review, got {other:?}"),
    }
}

fn start(
    h: &Harness,
    feedback: Option<&str>,
) -> (TaskRun, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        TaskRun::start(spec(h, feedback, STUB), h.deps.clone(), Some(tx)).unwrap(),
        rx,
    )
}

#[tokio::test]
async fn happy_path_runs_every_stage_once_and_is_accepted() {
    let h = harness(script(&[GOOD]), Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert_eq!(
        stages,
        vec![
            Stage::Plan,
            Stage::DesignTests,
            Stage::WriteCode,
            Stage::RunTests,
            Stage::Validate,
            Stage::SecurityCheck,
            Stage::Review
        ]
    );
    assert!(p.passing, "{:?}", p.reasons);
    assert_eq!(p.test_counts(), (3, 3));
    assert!(p.new_source.contains("    return a + b\n"));
    assert!(
        p.new_source.contains("def other():"),
        "the rest of the file is kept"
    );
    assert!(
        p.new_source.contains("    >>> add(2, 3)\n"),
        "the user's docstring is kept"
    );
    assert!(p.diff.contains("-    ...") && p.diff.contains("+    return a + b"));
    let dir = p.dir.clone().expect("proposal files written");
    for f in ["add.py", "test_add.py", "proposal.diff", "report.md"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    run.reply(Reply::Accept).unwrap();
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => assert_eq!(o.status, TaskStatus::Accepted),
        other => panic!("{other:?}"),
    }
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.task.status, TaskStatus::Accepted);
    assert_eq!(
        *h.calls.lock().unwrap(),
        vec!["planner", "tests", "developer"]
    );
}

#[tokio::test]
async fn failing_tests_go_to_the_critic_and_a_rewrite_fixes_them() {
    let h = harness(script(&[WRONG, GOOD]), Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.attempts, 2);
    assert_eq!(p.attempt, 2);
    assert!(stages.contains(&Stage::Critique));
    assert_eq!(
        *h.calls.lock().unwrap(),
        vec!["planner", "tests", "developer", "critic", "developer"]
    );
}

#[tokio::test]
async fn a_spent_budget_still_offers_the_best_attempt_marked_failing() {
    let settings = Settings {
        max_refinements: 2,
        ..Settings::default()
    };
    let h = harness(script(&[WRONG]), settings);
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(!p.passing);
    assert_eq!(p.attempts, 3, "1 + max_refinements attempts");
    assert!(
        p.reasons.iter().any(|r| r.contains("add(2, 3)")),
        "{:?}",
        p.reasons
    );
    let devs = h.calls_to("developer");
    // Attempts 2 and 3 repeat attempt 1's code, so each is sampled once more, hotter.
    assert_eq!(devs, 5);
    assert!(
        p.notes.iter().any(|n| n.contains("repeated earlier code")),
        "{:?}",
        p.notes
    );
}

#[tokio::test]
async fn a_generated_test_that_contradicts_the_docstring_is_dropped_and_recorded() {
    let mut s = script(&[GOOD]);
    s.tests = vec![tests_json(&[("add(10, 20)", "31"), ("add(1, 1)", "2")])];
    s.judge = vec![serde_json::json!({"verdicts": [{"id": "gen1", "test_is_wrong": true, "reason": "10 + 20 is 30"}]}).to_string()];
    let h = harness(s, Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.dropped.len(), 1);
    assert_eq!(p.dropped[0].0, "gen1");
    assert_eq!(
        p.attempts, 1,
        "no rewrite was needed once the wrong test was dropped"
    );
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert!(
        d.test_cases
            .iter()
            .any(|t| t.case.id == "gen1" && t.dropped.is_some()),
        "drop recorded in the store"
    );
}

#[tokio::test]
async fn a_generated_test_the_critic_upholds_sends_the_code_back() {
    let mut s = script(&[GOOD, GOOD]);
    s.tests = vec![tests_json(&[("add(10, 20)", "31")])];
    s.judge = vec![
        serde_json::json!({"verdicts": [{"id": "gen1", "test_is_wrong": false, "reason": "ok"}]})
            .to_string(),
    ];
    let h = harness(
        s,
        Settings {
            max_refinements: 1,
            ..Settings::default()
        },
    );
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(!p.passing, "the upheld test keeps failing");
    assert!(stages.contains(&Stage::Critique));
    assert_eq!(h.calls_to("judge"), 1, "each suspect is judged once");
}

#[tokio::test]
async fn docstring_examples_are_never_outvoted_by_a_generated_test() {
    let mut s = script(&[GOOD]);
    // Same call as the docstring's `add(2, 3)` but a different answer: dropped at design time.
    s.tests = vec![tests_json(&[("add(2,3)", "6")])];
    let h = harness(s, Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?} {:?}", p.reasons, p.tests);
    assert_eq!(p.dropped.len(), 1);
    assert!(p.dropped[0].1.contains("docstring example"));
}

#[tokio::test]
async fn security_findings_go_to_the_critic() {
    let h = harness(script(&[EVIL, GOOD]), Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.attempts, 2);
    let i = stages
        .iter()
        .position(|s| *s == Stage::SecurityCheck)
        .unwrap();
    assert_eq!(stages[i + 1], Stage::Critique);
}

#[tokio::test]
async fn a_question_pauses_the_loop_and_the_answer_goes_back_to_the_planner() {
    let mut s = script(&[GOOD]);
    s.planner = vec![plan("ints or floats?"), plan("")];
    let h = harness(
        s,
        Settings {
            interactive: true,
            ..Settings::default()
        },
    );
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    match run.advance(&cancel).await.unwrap() {
        Pause::Question(q) => {
            assert_eq!(q.text, "ints or floats?");
            assert_eq!(q.options, vec!["ints", "floats"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        run.reply(Reply::Accept).is_err(),
        "an accept does not answer a question"
    );
    run.reply(Reply::Answer("ints".into())).unwrap();
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Review(_)
    ));
    assert_eq!(h.calls_to("planner"), 2);
}

#[tokio::test]
async fn the_clarification_budget_ends_questions_with_assumptions() {
    let mut s = script(&[GOOD]);
    s.planner = vec![plan("ints or floats?")];
    let h = harness(
        s,
        Settings {
            interactive: true,
            max_clarifications: 1,
            ..Settings::default()
        },
    );
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Question(_)
    ));
    run.reply(Reply::Answer("ints".into())).unwrap();
    match run.advance(&cancel).await.unwrap() {
        Pause::Review(p) => assert!(
            p.notes.iter().any(|n| n.contains("assumptions taken")),
            "{:?}",
            p.notes
        ),
        other => panic!("the second question must not be asked: {other:?}"),
    }
}

#[tokio::test]
async fn reject_with_feedback_resumes_at_the_critic_with_a_fresh_attempt() {
    let h = harness(script(&[GOOD]), Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.reply(Reply::Reject("add type hints".into())).unwrap();
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert_eq!(stages.first(), Some(&Stage::Critique));
    assert_eq!(p.attempts, 2);
    assert_eq!(p.attempt, 2, "the new round's attempt is proposed");
    let calls = h.calls.lock().unwrap().clone();
    // The scripted developer repeats its code, which is sampled once more.
    assert_eq!(&calls[3..], &["critic", "developer", "developer"]);
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.attempts.len(), 2);
}

#[tokio::test]
async fn refine_with_feedback_starts_from_the_users_code() {
    let h = harness(script(&[GOOD]), Settings::default());
    let source = STUB.replace("    ...\n", "    return a - b\n");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = TaskRun::start(
        spec(&h, Some("it subtracts"), &source),
        h.deps.clone(),
        Some(tx),
    )
    .unwrap();
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert!(stages.contains(&Stage::Critique));
    assert!(p.new_source.contains("return a + b"));
}

#[tokio::test]
async fn discard_ends_the_task() {
    let h = harness(script(&[GOOD]), Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.reply(Reply::Discard).unwrap();
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => assert_eq!(o.status, TaskStatus::Discarded),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unusable_developer_output_is_repaired_once_then_counts_as_a_failed_attempt() {
    let h = harness(
        script(&["I cannot do that.", "still no code", GOOD]),
        Settings::default(),
    );
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.attempts, 2);
    let devs = h.calls_to("developer");
    assert_eq!(devs, 3, "first reply, one repair, then the rewrite");
}

#[tokio::test]
async fn unparsable_planner_and_test_designer_output_degrades_to_the_docstring() {
    let mut s = script(&[GOOD]);
    s.planner = vec!["not json".into()];
    s.tests = vec!["{\"tests\": 5}".into()];
    let h = harness(s, Settings::default());
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.test_counts(), (2, 2), "the docstring's two examples only");
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("planner output unusable")));
}

#[tokio::test]
async fn a_dead_provider_fails_the_task_with_the_reason_recorded() {
    let provider: Arc<dyn Provider> =
        Arc::new(ScriptedProvider::new(|_req: &CompletionRequest| {
            Err(LlmError::Unreachable {
                url: "http://127.0.0.1:9".into(),
                message: "connection refused".into(),
            })
        }));
    let mut h = harness(Script::default(), Settings::default());
    h.deps.router = Arc::new(Router::uniform(provider));
    let (mut run, _rx) = start(&h, None);
    let err = run.advance(&CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.task.status, TaskStatus::Failed);
    assert!(d
        .task
        .status_reason
        .unwrap_or_default()
        .contains("127.0.0.1:9"));
}

#[tokio::test]
async fn cancel_stops_the_task_and_records_it() {
    let h = harness(script(&[GOOD]), Settings::default());
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    cancel.cancel();
    assert!(matches!(
        run.advance(&cancel).await,
        Err(PipelineError::Cancelled)
    ));
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.task.status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_missing_function_lists_the_ones_there() {
    let h = harness(script(&[GOOD]), Settings::default());
    let mut sp = spec(&h, None, STUB);
    sp.target = Target::Name("nope".into());
    let err = TaskRun::start(sp, h.deps.clone(), None)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("nope") && msg.contains("add"), "{msg}");
}
