//! State-machine tests of the pipeline with a scripted provider (routing and
//! transitions only; the real model is exercised by `tests/e2e_generate.rs`).
//! The sandbox, the store and the checks are real.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::llm::scripted::ScriptedProvider;
use crate::llm::{LlmError, Provider};
use crate::sandbox::SandboxConfig;
use crate::types::TestOrigin;

const STUB: &str = "import math\n\n\ndef add(a, b):\n    \"\"\"Add two numbers.\n\n    >>> add(2, 3)\n    5\n    >>> add(-1, 1)\n    0\n    \"\"\"\n    ...\n\n\ndef other():\n    return 1\n";

const GOOD: &str = "```python\ndef add(a, b):\n    return a + b\n```";
const WRONG: &str = "```python\ndef add(a, b):\n    return a - b\n```";
const EVIL: &str = "```python\ndef add(a, b):\n    return eval(f\"{a} + {b}\")\n```";
/// Same behaviour as GOOD, other code.
const GOOD2: &str = "```python\ndef add(a, b):\n    return b + a\n```";
/// Passes the docstring's examples, differs from GOOD on larger inputs.
const ODD: &str = "```python\ndef add(a, b):\n    return a + b if a < 5 else a * b\n```";

fn plan(question: &str) -> String {
    serde_json::json!({
        "understanding": "return a + b",
        "assumptions": ["numbers are ints"], "question": question, "options": if question.is_empty() { vec![] } else { vec!["ints", "floats"] }
    })
    .to_string()
}

fn tests_json(pairs: &[(&str, &str)]) -> String {
    let tests: Vec<_> = pairs
        .iter()
        .map(|(c, e)| serde_json::json!({"call": c, "expected": e}))
        .collect();
    serde_json::json!({ "assumptions": ["ints only"], "tests": tests }).to_string()
}

/// Which role a request is for.
fn role_of(req: &CompletionRequest) -> &'static str {
    crate::roles::request_kind(req)
}

/// A script: for each role, the replies in order (the last one repeats).
/// A developer request for k candidates takes k replies.
#[derive(Clone, Default)]
struct Script {
    planner: Vec<String>,
    tests: Vec<String>,
    developer: Vec<String>,
    critic: Vec<String>,
}

struct Harness {
    deps: Deps,
    /// One entry per request (a request for k candidates counts once).
    calls: Arc<Mutex<Vec<&'static str>>>,
    /// The user message of every developer request, in order.
    dev_prompts: Arc<Mutex<Vec<String>>>,
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
    let dev_prompts = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(Mutex::new(
        std::collections::HashMap::<&'static str, usize>::new(),
    ));
    let (log, prompts) = (calls.clone(), dev_prompts.clone());
    // The scripted provider calls the script once per choice; a request is
    // logged once (its first choice).
    let choice = Arc::new(Mutex::new(0u32));
    let provider = ScriptedProvider::new(move |req: &CompletionRequest| {
        let role = role_of(req);
        let mut k = choice.lock().unwrap();
        if *k == 0 {
            log.lock().unwrap().push(role);
            if role == "developer" {
                // Like an endpoint, the script ignores a prefill; it is logged.
                let mut p = req.messages.last().unwrap().content.clone();
                if !req.prefill.is_empty() {
                    p = format!("{p}\n<prefill>\n{}", req.prefill);
                }
                prompts.lock().unwrap().push(p);
            }
        }
        *k = (*k + 1) % req.n_choices();
        let mut c = counters.lock().unwrap();
        let i = c.entry(role).or_insert(0);
        let list = match role {
            "planner" => &script.planner,
            "tests" => &script.tests,
            "developer" => &script.developer,
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
        dev_prompts,
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
        tests: vec![tests_json(&[("add(10, 20)", "30"), ("add(7, 8)", "")])],
        developer: developer.iter().map(|s| s.to_string()).collect(),
        critic: vec![],
    }
}

/// Settings with `k` candidates per round.
fn k(candidates: u32) -> Settings {
    Settings {
        candidates,
        ..Settings::default()
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
async fn a_greedy_candidate_that_passes_the_docstring_is_accepted_alone() {
    let h = harness(script(&[GOOD]), k(3));
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert_eq!(
        stages,
        vec![
            Stage::WriteCode,
            Stage::RunTests,
            Stage::Select,
            Stage::Validate,
            Stage::SecurityCheck,
            Stage::Review
        ]
    );
    assert!(p.passing, "{:?}", p.reasons);
    assert_eq!(p.test_counts(), (2, 2), "the docstring's examples");
    assert_eq!((p.attempts, p.rounds), (1, 1));
    assert!(
        p.chosen_because.contains("1 of 1 candidates pass"),
        "{}",
        p.chosen_because
    );
    assert!(p.new_source.contains("    return a + b\n"));
    assert!(
        p.new_source.contains("def other():"),
        "the rest of the file is kept"
    );
    assert!(
        p.new_source.contains("    >>> add(2, 3)\n"),
        "the docstring is kept"
    );
    let dir = p.dir.clone().expect("proposal files written");
    for f in ["add.py", "test_add.py", "proposal.diff", "report.md"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("## How it was chosen"), "{report}");
    run.reply(Reply::Accept).unwrap();
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => assert_eq!(o.status, TaskStatus::Accepted),
        other => panic!("{other:?}"),
    }
    // Non-interactive, greedy passes: one call, no planner, no test designer.
    assert_eq!(*h.calls.lock().unwrap(), vec!["developer"]);
    let sels = h.deps.store.selections(run.task_id()).unwrap();
    assert_eq!(sels.len(), 1);
    assert!(sels[0].2, "passes the gate");
}

#[tokio::test]
async fn a_failing_greedy_candidate_widens_to_samples_and_test_inputs_in_one_batch() {
    let h = harness(script(&[WRONG, GOOD, GOOD2]), k(3));
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert_eq!(
        stages,
        vec![
            Stage::WriteCode,
            Stage::RunTests,
            Stage::Select,
            Stage::DesignTests,
            Stage::RunTests,
            Stage::Select,
            Stage::Validate,
            Stage::SecurityCheck,
            Stage::Review
        ]
    );
    assert!(p.passing, "{:?}", p.reasons);
    assert_eq!(p.test_counts(), (4, 4), "examples + two generated cases");
    assert_eq!(p.attempts, 3);
    assert!(
        p.chosen_because.contains("2 of 3 candidates pass") && p.chosen_because.contains("sampled"),
        "{}",
        p.chosen_because
    );
    assert_eq!(p.assumptions, vec!["ints only"]);
    let tests_py = std::fs::read_to_string(p.dir.clone().unwrap().join("test_add.py")).unwrap();
    assert!(
        tests_py.contains("add(7, 8)  # a generated input"),
        "{tests_py}"
    );
    // The greedy call, then the widening batch: code samples and test design.
    assert_eq!(
        *h.calls.lock().unwrap(),
        vec!["developer", "developer", "tests"]
    );
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.attempts.len(), 3);
    assert_eq!(h.deps.store.selections(run.task_id()).unwrap().len(), 2);
}

#[tokio::test]
async fn the_largest_cluster_on_generated_inputs_wins() {
    // After the greedy candidate fails, ODD passes the docstring but behaves
    // differently on the generated inputs from GOOD and GOOD2, which agree.
    let h = harness(script(&[WRONG, ODD, GOOD, GOOD2]), k(4));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert!(p.new_source.contains("return a + b\n"), "{}", p.new_source);
    assert!(
        p.chosen_because.contains("2 of them agree"),
        "{}",
        p.chosen_because
    );
}

#[tokio::test]
async fn without_a_passing_candidate_a_repair_round_gets_the_failing_facts() {
    let h = harness(script(&[WRONG, WRONG, GOOD, GOOD]), k(2));
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?}", p.reasons);
    assert_eq!(p.rounds, 3, "greedy, widened, repaired");
    assert!(stages.contains(&Stage::Critique));
    assert_eq!(h.calls_to("developer"), 3);
    let prompts = h.dev_prompts.lock().unwrap().clone();
    assert!(
        prompts.iter().all(|p| !p.contains("<prefill>")),
        "a function's reply is not prefilled"
    );
    assert!(
        !prompts[2].contains("return a - b")
            && prompts[2].contains("`add(2, 3)` expected 5 but got -1"),
        "{}",
        prompts[2]
    );
    assert_eq!(h.calls_to("critic"), 0, "repairs get facts, not a critique");
}

#[tokio::test]
async fn a_spent_budget_still_offers_the_closest_candidate_marked_failing() {
    let settings = Settings {
        max_refinements: 1,
        ..k(2)
    };
    let h = harness(script(&[WRONG]), settings);
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(!p.passing);
    assert_eq!(p.rounds, 3, "greedy, widened, one repair");
    assert!(
        p.reasons.iter().any(|r| r.contains("add(2, 3)")),
        "{:?}",
        p.reasons
    );
    assert!(
        p.notes.iter().any(|n| n.contains("repair budget spent")),
        "{:?}",
        p.notes
    );
}

#[tokio::test]
async fn a_generated_test_that_contradicts_the_docstring_is_dropped_and_recorded() {
    let mut s = script(&[WRONG, GOOD]);
    // Same call as the docstring's `add(2, 3)` but another answer.
    s.tests = vec![tests_json(&[("add(2,3)", "6"), ("add(1, 1)", "2")])];
    let h = harness(s, k(2));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?} {:?}", p.reasons, p.tests);
    assert_eq!(p.dropped.len(), 1);
    assert!(p.dropped[0].1.contains("docstring example"));
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert!(
        d.test_cases
            .iter()
            .any(|t| t.case.id == p.dropped[0].0 && t.dropped.is_some()),
        "drop recorded in the store"
    );
}

#[tokio::test]
async fn a_wrong_generated_expectation_never_fails_a_candidate_that_passes_the_docstring() {
    let mut s = script(&[WRONG, GOOD]);
    s.tests = vec![tests_json(&[("add(10, 20)", "31")])];
    let h = harness(s, k(2));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(
        p.passing,
        "generated expectations only break ties: {:?}",
        p.reasons
    );
    assert_eq!(p.rounds, 2);
}

#[tokio::test]
async fn security_findings_pass_the_choice_to_another_candidate() {
    // The greedy EVIL passes the docstring, then its `eval` finding widens
    // the round; GOOD behaves alike and takes over.
    let h = harness(script(&[EVIL, GOOD]), k(2));
    let (mut run, mut rx) = start(&h, None);
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?}", p.reasons);
    assert!(p.new_source.contains("return a + b"));
    assert!(
        !stages.contains(&Stage::Critique),
        "no repair round was needed"
    );
    assert!(
        p.notes.iter().any(|n| n.contains("next in rank order")),
        "{:?}",
        p.notes
    );
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    let evil = d.attempts.iter().find(|a| a.code.contains("eval")).unwrap();
    assert_eq!(
        evil.findings
            .iter()
            .filter(|f| f.finding.rule == "eval")
            .count(),
        1,
        "a carried candidate is not checked twice"
    );
}

/// An interactive task (k = 1, the developer writes GOOD) whose planner
/// replies `planner` in turn.
fn asking(planner: &[String]) -> Harness {
    let mut s = script(&[GOOD]);
    s.planner = planner.to_vec();
    harness(
        s,
        Settings {
            interactive: true,
            ..k(1)
        },
    )
}

#[tokio::test]
async fn a_question_pauses_the_loop_and_the_answer_goes_back_to_the_planner() {
    let h = asking(&[plan("ints or floats?"), plan("")]);
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    match run.advance(&cancel).await.unwrap() {
        Pause::Question(q) => {
            assert_eq!(q.text, "ints or floats?");
            assert_eq!(q.options, vec!["ints", "floats"]);
        }
        other => panic!("{other:?}"),
    }
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(d.task.status, TaskStatus::AwaitingAnswer);
    assert!(
        run.reply(Reply::Accept).is_err(),
        "an accept does not answer a question"
    );
    run.reply(Reply::Answer("ints".into())).unwrap();
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert_eq!(
        d.task.status,
        TaskStatus::Running,
        "an answered question puts the task back to running"
    );
    match run.advance(&cancel).await.unwrap() {
        Pause::Review(p) => {
            assert_eq!(p.understanding, "return a + b");
            assert!(p.assumptions.contains(&"numbers are ints".to_string()));
            // The review says what was asked and answered, and why.
            let why = p.explanation();
            assert!(
                why.contains(&"understood: return a + b".to_string()),
                "{why:?}"
            );
            assert!(
                why.contains(&"asked: ints or floats? answer: ints".to_string()),
                "{why:?}"
            );
            assert!(
                why.iter()
                    .any(|l| l.starts_with("tests: 2 from the docstring, ")),
                "{why:?}"
            );
            let report = render_report(&p);
            assert!(
                report.contains("- asked: ints or floats? answer: ints"),
                "{report}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.calls_to("planner"), 2);
}

#[tokio::test]
async fn the_stored_status_moves_on_as_soon_as_a_question_is_answered() {
    // Issue 14: the status used to stay `awaiting_answer` until review.
    let h = asking(&[plan("ints or floats?"), plan("ints or floats?")]);
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    let id = run.task_id();
    let status = |h: &Harness| {
        let d = h.deps.store.task(id).unwrap().unwrap();
        (d.task.status, d.task.status_reason)
    };
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Question(_)
    ));
    assert_eq!(status(&h), (TaskStatus::AwaitingAnswer, None));
    run.reply(Reply::Answer("ints".into())).unwrap();
    assert_eq!(status(&h), (TaskStatus::Running, None));
    // Asked again; this time the planner's assumptions are taken.
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Question(_)
    ));
    assert_eq!(status(&h), (TaskStatus::AwaitingAnswer, None));
    run.reply(Reply::Assume).unwrap();
    assert_eq!(status(&h), (TaskStatus::Running, None));
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Review(_)
    ));
    assert_eq!(status(&h), (TaskStatus::AwaitingReview, None));
}

#[tokio::test]
async fn a_front_end_ends_a_task_through_its_run() {
    let h = harness(script(&[GOOD]), k(1));
    let (mut run, mut rx) = start(&h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.end(Ending::Failed, Some("the file changed")).unwrap();
    assert_eq!(run.stage(), Stage::Done);
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => {
            assert_eq!(o.status, TaskStatus::Failed);
            assert_eq!(o.reason.as_deref(), Some("the file changed"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_stored_status_follows_the_stage() {
    assert_eq!(status_at(Stage::Clarify), Some(TaskStatus::AwaitingAnswer));
    assert_eq!(status_at(Stage::Review), Some(TaskStatus::AwaitingReview));
    assert_eq!(status_at(Stage::Package), Some(TaskStatus::AwaitingReview));
    assert_eq!(status_at(Stage::Done), None);
    for s in [
        Stage::Plan,
        Stage::DesignTests,
        Stage::WriteCode,
        Stage::RunTests,
        Stage::Select,
        Stage::Validate,
        Stage::SecurityCheck,
        Stage::Critique,
    ] {
        assert_eq!(status_at(s), Some(TaskStatus::Running), "{s:?}");
    }
}

#[tokio::test]
async fn the_clarification_budget_ends_questions() {
    let mut s = script(&[GOOD]);
    s.planner = vec![plan("ints or floats?")];
    let h = harness(
        s,
        Settings {
            interactive: true,
            max_clarifications: 1,
            ..k(1)
        },
    );
    let (mut run, _rx) = start(&h, None);
    let cancel = CancellationToken::new();
    assert!(matches!(
        run.advance(&cancel).await.unwrap(),
        Pause::Question(_)
    ));
    run.reply(Reply::Answer("ints".into())).unwrap();
    assert!(
        matches!(run.advance(&cancel).await.unwrap(), Pause::Review(_)),
        "the second question must not be asked"
    );
    assert_eq!(h.calls_to("planner"), 1);
}

#[tokio::test]
async fn reject_with_feedback_starts_a_round_conditioned_on_the_feedback() {
    let summed = "```python\ndef add(a, b):\n    return sum((a, b))\n```";
    let h = harness(script(&[GOOD, GOOD, summed]), k(2));
    let (mut run, mut rx) = start(&h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.reply(Reply::Reject("use sum()".into())).unwrap();
    let (p, stages) = to_review(&mut run, &mut rx).await;
    assert_eq!(stages.first(), Some(&Stage::DesignTests));
    assert_eq!(p.rounds, 2);
    assert!(
        p.new_source.contains("sum((a, b))"),
        "the rejected code is not proposed again: {}",
        p.new_source
    );
    let prompts = h.dev_prompts.lock().unwrap().clone();
    assert!(
        prompts[1].contains("use sum()") && prompts[1].contains("return a + b"),
        "{}",
        prompts[1]
    );
}

#[tokio::test]
async fn a_case_stated_in_feedback_becomes_ground_truth_for_later_rounds_and_tasks() {
    // ODD passes the docstring's examples; the user's case catches it.
    let h = harness(script(&[ODD, ODD, GOOD]), k(2));
    let (mut run, mut rx) = start(&h, None);
    let (first, _) = to_review(&mut run, &mut rx).await;
    assert!(first.new_source.contains("a * b"), "{}", first.new_source);
    run.reply(Reply::Reject("wrong: `add(6, 1)` must return `7`".into()))
        .unwrap();
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?}", p.reasons);
    assert!(p.new_source.contains("return a + b"), "{}", p.new_source);
    let user: Vec<_> = p
        .tests
        .iter()
        .filter(|t| t.case.origin == TestOrigin::User)
        .collect();
    assert_eq!(user.len(), 1, "{:?}", p.tests);
    assert_eq!(
        (user[0].case.call.as_str(), user[0].case.expected.as_str()),
        ("add(6, 1)", "7")
    );
    assert!(user[0].result.as_ref().is_some_and(|r| r.passed));
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("your feedback became 1 test case(s)")),
        "{:?}",
        p.notes
    );
    // A candidate that fails the user's case is not offered as passing:
    // the same task's store rows say where the case came from.
    let d = h.deps.store.task(run.task_id()).unwrap().unwrap();
    assert!(d
        .test_cases
        .iter()
        .any(|t| t.case.id == "user1" && t.case.origin == TestOrigin::User));

    // A later task on the same function starts with the user's case, and
    // fails a candidate that passes only the docstring.
    let h2 = Harness {
        deps: Deps {
            router: harness(script(&[ODD]), k(1)).deps.router.clone(),
            ..h.deps.clone()
        },
        ..h
    };
    let (mut again, mut rx2) = start(&h2, None);
    let (p2, _) = to_review(&mut again, &mut rx2).await;
    assert!(!p2.passing, "ODD fails the remembered case");
    assert!(
        p2.reasons
            .iter()
            .any(|r| r.contains("your test user1 `add(6, 1)` fails")),
        "{:?}",
        p2.reasons
    );
    assert!(
        p2.notes
            .iter()
            .any(|n| n.contains("from your earlier feedback on `add` apply: add(6, 1)")),
        "{:?}",
        p2.notes
    );
}

#[tokio::test]
async fn refine_with_feedback_starts_from_the_users_code() {
    let h = harness(script(&[GOOD]), k(1));
    let source = STUB.replace("    ...\n", "    return a - b\n");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = TaskRun::start(
        spec(&h, Some("it subtracts"), &source),
        h.deps.clone(),
        Some(tx),
    )
    .unwrap();
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert!(p.new_source.contains("return a + b"));
    let prompts = h.dev_prompts.lock().unwrap().clone();
    assert!(
        prompts[0].contains("it subtracts") && prompts[0].contains("return a - b"),
        "{}",
        prompts[0]
    );
}

#[tokio::test]
async fn discard_ends_the_task() {
    let h = harness(script(&[GOOD]), k(1));
    let (mut run, mut rx) = start(&h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.reply(Reply::Discard).unwrap();
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => assert_eq!(o.status, TaskStatus::Discarded),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn samples_without_code_are_skipped_and_counted() {
    let h = harness(script(&["I cannot do that.", "still no code", GOOD]), k(3));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.attempts, 1);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("1 of 2 sample(s) in round 2")),
        "{:?}",
        p.notes
    );
}

#[tokio::test]
async fn no_usable_code_in_any_round_fails_with_no_code() {
    let h = harness(script(&["no code at all"]), k(2));
    let (mut run, _rx) = start(&h, None);
    let err = run.advance(&CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, PipelineError::NoCode(_)), "{err}");
    assert_eq!(h.calls_to("developer"), 3, "greedy, widened, one repair");
}

#[tokio::test]
async fn unparsable_test_designer_output_degrades_to_the_docstring() {
    let mut s = script(&[WRONG, GOOD]);
    s.tests = vec!["{\"tests\": 5}".into()];
    let h = harness(s, k(2));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert_eq!(p.test_counts(), (2, 2), "the docstring's two examples only");
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("test designer output unusable")));
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

// ---------------------------------------------------------------- real code
//
// The fixture project `tests/fixtures/shop` (a package with a class, module
// constants, a dataclass, helpers, an async function, a generator and a
// cross-module relative import), copied to a temporary workspace.

/// Copies `tests/fixtures/shop` into `dst`.
fn copy_fixture(dst: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/shop");
    copy(&src, dst);
}

/// A harness whose workspace holds the shop fixture, and a started task on
/// `target` in `file` (relative to the workspace).
fn shop_task(
    developer: &[&str],
    file: &str,
    target: &str,
) -> (
    Harness,
    TaskRun,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    String,
) {
    let h = harness(script(developer), k(1));
    copy_fixture(&h.ws);
    let path = h.ws.join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = TaskSpec {
        workspace: h.ws.clone(),
        file: path,
        source: source.clone(),
        target: Target::Name(target.into()),
        feedback: None,
        kind: TaskKind::Generate,
    };
    let run = TaskRun::start(spec, h.deps.clone(), Some(tx)).unwrap();
    (h, run, rx, source)
}

const ADD_METHOD: &str = "```python\ndef add(self, name: str, qty: int) -> int:\n    key = _clean(name)\n    new = self.items.get(key, 0) + qty\n    if new > MAX_STOCK:\n        raise ValueError(\"too much stock\")\n    self.items[key] = new\n    return new\n```";

#[tokio::test]
async fn a_method_sees_its_class_and_module_and_is_edited_in_place() {
    let (h, mut run, mut rx, source) =
        shop_task(&[ADD_METHOD], "shop/inventory.py", "Inventory.add");
    assert_eq!(run.function().qualname(), "Inventory.add");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?} {:#?}", p.reasons, p.tests);
    // Five docstring examples, state carried from line to line, one raising.
    assert_eq!(p.test_counts(), (5, 5));
    let prompt = h.dev_prompts.lock().unwrap()[0].clone();
    for want in [
        "Complete the method `add` of class `Inventory`",
        "MAX_STOCK = 100",
        "def _clean(name: str) -> str:\n    \"\"\"Normalises a product name",
        "class Inventory:\n    \"\"\"Quantities in stock",
        "        self.items: Dict[str, int] = {}",
        "    def count(self, name: str) -> int:\n        \"\"\"How many of `name`",
        "        raise NotImplementedError",
    ] {
        assert!(
            prompt.contains(want),
            "{want:?} not in the prompt:\n{prompt}"
        );
    }
    assert!(
        !prompt.contains("return self.items.get"),
        "bodies are elided:\n{prompt}"
    );
    // The reply is begun at the method's `def`, its docstring included.
    let prefill = prompt.split_once("\n<prefill>\n").map(|(_, p)| p);
    assert!(
        prefill.is_some_and(|p| p.starts_with(
            "```python\ndef add(self, name: str, qty: int) -> int:\n    \"\"\"Adds qty"
        ) && p.ends_with(
            "    ValueError: too much stock\n    >>> inv.count(\"apple\")\n    5\n    \"\"\"\n"
        )),
        "{prefill:?}"
    );
    // In place: the body replaced with the class's indentation, everything
    // before the method's docstring end and after its body byte-for-byte.
    let new = &p.new_source;
    let doc_end = source.find("        raise NotImplementedError\n").unwrap();
    assert_eq!(&new[..doc_end], &source[..doc_end]);
    let after = &source[doc_end + "        raise NotImplementedError\n".len()..];
    assert!(
        new.ends_with(after),
        "the rest of the class and file are unchanged"
    );
    assert!(
        new.contains("        key = _clean(name)\n        new = self.items.get(key, 0) + qty\n"),
        "{new}"
    );
    // What the model saw is recorded and reported.
    let stored = h.deps.store.task_context(run.task_id()).unwrap().unwrap();
    assert!(stored.contains("\"name\":\"MAX_STOCK\""), "{stored}");
    let report = std::fs::read_to_string(p.dir.unwrap().join("report.md")).unwrap();
    assert!(report.contains("## Context given to the model"), "{report}");
    assert!(
        report.contains("`_clean` (function, this module"),
        "{report}"
    );
}

#[tokio::test]
async fn a_method_that_forgets_the_state_fails_the_later_doctest_lines() {
    let forgetful = "```python\ndef add(self, name: str, qty: int) -> int:\n    return qty\n```";
    let (_h, mut run, mut rx, _) = shop_task(&[forgetful], "shop/inventory.py", "Inventory.add");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(!p.passing);
    let failed: Vec<&str> = p
        .tests
        .iter()
        .filter(|t| t.case.origin == crate::types::TestOrigin::Docstring)
        .filter(|t| !t.result.as_ref().is_some_and(|r| r.passed))
        .map(|t| t.case.id.as_str())
        .collect();
    // `add` returns 2 (not 5), the count stays 0 and nothing is raised.
    assert_eq!(failed, ["ex2", "ex3", "ex4", "ex5"], "{:#?}", p.tests);
}

#[tokio::test]
async fn property_staticmethod_and_classmethod_keep_their_decorators() {
    let cases = [
        (
            "Inventory.total",
            "```python\n@property\ndef total(self) -> int:\n    return sum(self.items.values())\n```",
            "    @property\n    def total(self) -> int:\n",
        ),
        (
            "Inventory.parse_line",
            "```python\n@staticmethod\ndef parse_line(line: str) -> tuple:\n    name, qty = line.split(\":\")\n    return _clean(name), int(qty)\n```",
            "    @staticmethod\n    def parse_line(line: str) -> tuple:\n",
        ),
        (
            "Inventory.from_pairs",
            "```python\nclass Inventory:\n    @classmethod\n    def from_pairs(cls, pairs):\n        inv = cls()\n        for name, qty in pairs:\n            inv.items[_clean(name)] = inv.count(name) + qty\n        return inv\n```",
            "    @classmethod\n    def from_pairs(cls, pairs: List[tuple]) -> \"Inventory\":\n",
        ),
    ];
    for (target, reply, kept) in cases {
        let (_h, mut run, mut rx, _) = shop_task(&[reply], "shop/inventory.py", target);
        let (p, _) = to_review(&mut run, &mut rx).await;
        assert!(p.passing, "{target}: {:?} {:#?}", p.reasons, p.tests);
        assert!(p.new_source.contains(kept), "{target}: {}", p.new_source);
        // The generated signature never replaces the user's.
        assert_eq!(p.new_source.matches("def from_pairs(").count(), 1);
    }
}

#[tokio::test]
async fn a_function_uses_a_helper_imported_from_another_module_of_the_project() {
    let reply = "```python\ndef order_total(items):\n    return round_money(sum(i.subtotal() for i in items) * (1 + TAX_RATE))\n```";
    let (h, mut run, mut rx, _) = shop_task(&[reply], "shop/pricing.py", "order_total");
    let (p, _) = to_review(&mut run, &mut rx).await;
    // The relative import resolved in the sandbox: the project is mounted
    // read-only and the candidate is imported as `shop.pricing`.
    assert!(p.passing, "{:?} {:#?}", p.reasons, p.tests);
    let prompt = h.dev_prompts.lock().unwrap()[0].clone();
    for want in [
        "# from .models import TAX_RATE, Item, round_money:",
        "TAX_RATE = 0.25",
        "def round_money(amount: float) -> float:\n    \"\"\"Rounds an amount to whole cents",
        "@dataclass\nclass Item:",
        "    name: str\n    price: float\n    qty: int = 1",
        "    def subtotal(self) -> float:\n        \"\"\"Price times quantity, before tax.\"\"\"\n        ...",
    ] {
        assert!(prompt.contains(want), "{want:?} not in the prompt:\n{prompt}");
    }
    assert!(!prompt.contains("return self.price * self.qty"), "{prompt}");
    let report = std::fs::read_to_string(p.dir.unwrap().join("report.md")).unwrap();
    assert!(
        report.contains("`round_money` (function, `from .models import"),
        "{report}"
    );
}

#[tokio::test]
async fn async_functions_and_generators_run_as_their_docstrings_write_them() {
    let fetch = "```python\nasync def fetch_count(inv, name):\n    return inv.count(name)\n```";
    let (_h, mut run, mut rx, _) = shop_task(&[fetch], "shop/inventory.py", "fetch_count");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?} {:#?}", p.reasons, p.tests);
    // A reply written as a plain `def` keeps the user's `async def`
    // signature when spliced, so it is awaited too; a wrong value fails.
    let sync = "```python\ndef fetch_count(inv, name):\n    return inv.count(name)\n```";
    let (_h, mut run, mut rx, _) = shop_task(&[sync], "shop/inventory.py", "fetch_count");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:#?}", p.tests);
    assert!(p
        .new_source
        .contains("async def fetch_count(inv: Inventory, name: str) -> int:"));
    let wrong =
        "```python\nasync def fetch_count(inv, name):\n    return inv.items.get(name, 0)\n```";
    let (_h, mut run, mut rx, _) = shop_task(&[wrong], "shop/inventory.py", "fetch_count");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(!p.passing, "case matters: {:#?}", p.tests);
    let gen = "```python\ndef chunked(xs, size):\n    for i in range(0, len(xs), size):\n        yield xs[i:i + size]\n```";
    let (_h, mut run, mut rx, _) = shop_task(&[gen], "shop/inventory.py", "chunked");
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing, "{:?} {:#?}", p.reasons, p.tests);
}

#[test]
fn snippets_compare_without_spacing_or_quote_style() {
    assert_eq!(normalize("add( 2,\t3 )"), normalize("add(2, 3)"));
    assert_eq!(normalize("f(\"a\")"), "f('a')");
    // Spacing inside a literal, and an escaped quote, are kept.
    assert_eq!(normalize("f('a  b')"), "f('a  b')");
    assert_eq!(normalize(r#"f("say \"hi\"")"#), r#"f('say \"hi\"')"#);
    assert_ne!(normalize("f('a b')"), normalize("f('ab')"));
}

// ---------------------------------------------------------------- memory

const LESSON: &str = "always use type hints";
const HINTED: &str = "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```";

/// Runs a task on `add` in `h` that is rejected once with [`LESSON`], then
/// accepted; returns its id.
async fn task_taught_a_lesson(h: &Harness) -> TaskId {
    let (mut run, mut rx) = start(h, None);
    let _ = to_review(&mut run, &mut rx).await;
    run.reply(Reply::Reject(LESSON.into())).unwrap();
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("kept as a workspace lesson") && n.contains(LESSON)),
        "{:?}",
        p.notes
    );
    assert!(
        p.tests.iter().all(|t| t.case.origin != TestOrigin::User),
        "a preference is no test case"
    );
    run.reply(Reply::Accept).unwrap();
    match run.advance(&CancellationToken::new()).await.unwrap() {
        Pause::Finished(o) => assert_eq!(o.status, TaskStatus::Accepted),
        other => panic!("{other:?}"),
    }
    run.task_id()
}

#[tokio::test]
async fn a_lesson_from_an_earlier_task_reaches_a_later_prompt_and_its_review() {
    let h = harness(script(&[GOOD, HINTED]), k(1));
    let first = task_taught_a_lesson(&h).await;
    let lessons = h.deps.store.memory().unwrap();
    assert_eq!(lessons.len(), 1, "{lessons:?}");
    let id = lessons[0].id;
    // A later task: its developer prompt carries the lesson in its own block.
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    let prompt = h.dev_prompts.lock().unwrap().last().unwrap().clone();
    assert!(
        prompt.contains(&format!("{}\n- {LESSON}\n\n", crate::roles::MEMORY_LINE)),
        "{prompt}"
    );
    let label = format!("lesson {id} (task {first}): {LESSON}");
    assert_eq!(p.memory, vec![label.clone()]);
    assert!(
        p.explanation().contains(&format!("remembered {label}")),
        "{:?}",
        p.explanation()
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("remembered from this workspace: 1 lesson(s)")));
    let report = std::fs::read_to_string(p.dir.unwrap().join("report.md")).unwrap();
    assert!(
        report.contains(&format!("## Remembered from this workspace\n\nShown to the model with the stub (`docsmith memory forget ID` removes one):\n\n- {label}\n")),
        "{report}"
    );
    // Forgotten, it is shown no more.
    h.deps.store.forget(id).unwrap();
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    let prompt = h.dev_prompts.lock().unwrap().last().unwrap().clone();
    assert!(!prompt.contains(crate::roles::MEMORY_LINE), "{prompt}");
    assert!(p.memory.is_empty());
}

#[tokio::test]
async fn with_memory_off_nothing_is_shown_but_the_lesson_is_kept() {
    let h = harness(
        script(&[GOOD, HINTED]),
        Settings {
            memory: false,
            ..k(1)
        },
    );
    task_taught_a_lesson(&h).await;
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    let prompt = h.dev_prompts.lock().unwrap().last().unwrap().clone();
    assert!(!prompt.contains(crate::roles::MEMORY_LINE), "{prompt}");
    assert!(!prompt.contains(LESSON), "{prompt}");
    assert!(p.memory.is_empty());
    assert!(
        p.explanation().iter().all(|l| !l.starts_with("remembered")),
        "{:?}",
        p.explanation()
    );
    let kept = h.deps.store.memory().unwrap();
    assert_eq!(kept.len(), 1, "still recorded: {kept:?}");
    assert_eq!(kept[0].text, LESSON);
}

#[tokio::test]
async fn a_fixed_failure_is_remembered_on_accept_and_shown_to_the_next_task() {
    let h = harness(script(&[WRONG, GOOD, GOOD2]), k(3));
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    assert!(p.passing);
    assert!(
        h.deps.store.memory().unwrap().is_empty(),
        "nothing before the accept"
    );
    run.reply(Reply::Accept).unwrap();
    run.advance(&CancellationToken::new()).await.unwrap();
    let kept = h.deps.store.memory().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].kind, crate::store::memory::MemoryKind::Failure);
    let fix = if p.new_source.contains("return a + b") {
        "`return a + b`"
    } else {
        "`return b + a`"
    };
    let want = format!("`add(2, 3)` expected 5 but got -1; the fix: {fix}");
    assert_eq!(kept[0].text, want);
    let (mut run, mut rx) = start(&h, None);
    let (p, _) = to_review(&mut run, &mut rx).await;
    let prompt = h.dev_prompts.lock().unwrap().last().unwrap().clone();
    assert!(
        prompt.contains(&format!("- earlier failure of `add`: {want}\n")),
        "{prompt}"
    );
    assert_eq!(p.memory.len(), 1);
}
