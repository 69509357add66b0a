//! `docsmith history --task N` (one task in full) and `docsmith stats` (a
//! workspace summarised), as text or JSON. Read-only views of the store.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use super::truncate;
use crate::store::{LlmCallRow, Store, TaskDetail, WorkspaceStats};

/// Prices per million tokens (prompt, completion) by provider name, from the
/// providers' `prompt_price_per_mtok` / `completion_price_per_mtok`.
pub type Prices = BTreeMap<String, (Option<f64>, Option<f64>)>;

/// The prices configured for each OpenAI-compatible provider of `cfg`
/// (a provider without prices is left out).
pub fn prices(cfg: &crate::config::Config) -> Prices {
    cfg.providers
        .iter()
        .filter_map(|(name, p)| match p {
            crate::config::ProviderConfig::Openai(o)
                if o.prompt_price_per_mtok.is_some() || o.completion_price_per_mtok.is_some() =>
            {
                Some((
                    name.clone(),
                    (o.prompt_price_per_mtok, o.completion_price_per_mtok),
                ))
            }
            _ => None,
        })
        .collect()
}

/// The cost of `prompt` + `completion` tokens at `provider`'s prices, when
/// it has some (a missing price counts as 0 when the other is set).
pub fn cost(prices: &Prices, provider: &str, prompt: u64, completion: u64) -> Option<f64> {
    let (p, c) = prices.get(provider)?;
    Some(p.unwrap_or(0.0) * prompt as f64 / 1e6 + c.unwrap_or(0.0) * completion as f64 / 1e6)
}

/// One task in full as text: status, plan, questions, tests, attempts with
/// stage times and results, every LLM call, feedback.
pub fn render_task(d: &TaskDetail, calls: &[LlmCallRow]) -> String {
    let t = &d.task;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "task {}  `{}` in {}  ({})",
        t.id.0,
        t.function,
        t.file,
        t.kind.as_str()
    );
    let _ = writeln!(
        s,
        "status: {}{}",
        t.status.as_str(),
        t.status_reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map_or(String::new(), |r| format!(" ({r})"))
    );
    let _ = writeln!(
        s,
        "time: {:.1} s; {} LLM calls, {} prompt + {} completion tokens",
        t.wall_ms.unwrap_or(0) as f64 / 1000.0,
        d.llm_calls,
        d.prompt_tokens,
        d.completion_tokens
    );
    if let Some(plan) = t
        .plan_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
    {
        if let Some(u) = plan["understanding"].as_str().filter(|u| !u.is_empty()) {
            let _ = writeln!(s, "understood: {u}");
        }
        for a in plan["assumptions"].as_array().into_iter().flatten() {
            if let Some(a) = a.as_str() {
                let _ = writeln!(s, "assumed: {a}");
            }
        }
    }
    for c in &d.clarifications {
        let _ = writeln!(
            s,
            "asked: {}  {}: {}",
            c.question,
            if c.assumed { "assumed" } else { "answer" },
            c.answer
        );
    }
    let _ = writeln!(s, "\ntests ({}):", d.test_cases.len());
    let last_run = d.attempts.iter().rev().find_map(|a| a.runs.last());
    for tc in &d.test_cases {
        let c = &tc.case;
        let expected = c
            .raises
            .as_ref()
            .map_or(c.expected.clone(), |e| format!("raises {e}"));
        let result = match (&tc.dropped, last_run) {
            (Some(drop), _) => format!("dropped at attempt {}: {}", drop.at_attempt, drop.reason),
            (None, Some(run)) => match run.results.iter().find(|r| r.test_id == c.id) {
                Some(r) if r.passed => "pass".into(),
                Some(r) => format!("FAIL: {}", r.message.clone().unwrap_or_default()),
                None => "not in the last run".into(),
            },
            (None, None) => "not run".into(),
        };
        let _ = writeln!(
            s,
            "  [{}] {:<9} {}{}  {result}",
            c.id,
            c.origin.as_str(),
            c.call.replace('\n', "; "),
            if expected.is_empty() {
                String::new()
            } else {
                format!(" == {expected}")
            }
        );
    }
    let _ = writeln!(s, "\nattempts ({}):", d.attempts.len());
    for a in &d.attempts {
        match &a.summary {
            Some(sm) => {
                let stages: Vec<String> = sm
                    .stage_times_ms
                    .iter()
                    .map(|(k, v)| format!("{k} {:.1} s", *v as f64 / 1000.0))
                    .collect();
                let _ = writeln!(
                    s,
                    "  #{}  {}  {} passed, {} failed, {} error finding(s), {:.1} s; reached {}",
                    a.n,
                    sm.verdict,
                    sm.passed,
                    sm.failed,
                    sm.findings_errors,
                    sm.wall_ms as f64 / 1000.0,
                    sm.stage_reached
                );
                if !stages.is_empty() {
                    let _ = writeln!(s, "      stages: {}", stages.join(", "));
                }
            }
            None => {
                let _ = writeln!(s, "  #{}  (not finished)", a.n);
            }
        }
        for f in &a.findings {
            let x = &f.finding;
            let _ = writeln!(
                s,
                "      finding ({}): {:?} {}{}: {}",
                f.phase,
                x.severity,
                x.rule,
                x.line.map_or(String::new(), |l| format!(" line {l}")),
                x.message
            );
        }
    }
    let _ = writeln!(s, "\nLLM calls ({}):", calls.len());
    let _ = writeln!(
        s,
        "  {:>3}  {:<13}  {:<32}  {:>7}  {:>10}  {:>9}  outcome",
        "#", "role", "provider:model", "prompt", "completion", "latency"
    );
    for (i, c) in calls.iter().enumerate() {
        let outcome = if c.ok {
            "ok".to_string()
        } else {
            c.error.clone().unwrap_or_else(|| "failed".into())
        };
        let _ = writeln!(
            s,
            "  {:>3}  {:<13}  {:<32}  {:>7}  {:>10}  {:>7.1} s  {}",
            i + 1,
            c.role,
            truncate(&format!("{}:{}", c.provider, c.model), 32),
            c.prompt_tokens,
            c.completion_tokens,
            c.latency_ms as f64 / 1000.0,
            truncate(&outcome, 100)
        );
    }
    if !d.feedback.is_empty() {
        let _ = writeln!(s, "\nfeedback:");
        for f in &d.feedback {
            let _ = writeln!(s, "  - {}", f.text);
        }
    }
    s
}

/// One task as JSON: `{"task": <TaskDetail>, "llm_calls": [...]}`.
pub fn task_json(d: &TaskDetail, calls: &[LlmCallRow]) -> serde_json::Value {
    json!({ "task": d, "llm_calls": calls })
}

/// The workspace summary as text; costs where `prices` has the provider.
pub fn render_stats(st: &WorkspaceStats, prices: &Prices) -> String {
    let mut s = String::new();
    let total: u64 = st.tasks_by_kind.iter().map(|c| c.n).sum();
    let list = |cs: &[crate::store::Count]| {
        cs.iter()
            .map(|c| format!("{} {}", c.name, c.n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "tasks: {total} ({})", list(&st.tasks_by_kind));
    let _ = writeln!(s, "  by outcome: {}", list(&st.tasks_by_status));
    let pct = |n: u64, of: u64| {
        if of == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", 100.0 * n as f64 / of as f64)
        }
    };
    let _ = writeln!(
        s,
        "proposals: {}, passing {} ({}); accepted {}, rejected {} ({} feedback given)",
        st.proposals,
        st.passing_proposals,
        pct(st.passing_proposals, st.proposals),
        st.accepted,
        st.rejected,
        st.feedback
    );
    let _ = writeln!(s, "time: {:.1} s in all", st.wall_ms as f64 / 1000.0);
    let _ = writeln!(s, "\nLLM usage by role and provider:");
    let _ = writeln!(
        s,
        "  {:<13}  {:<32}  {:>6}  {:>6}  {:>10}  {:>10}  {:>9}  {:>9}",
        "role", "provider:model", "calls", "failed", "prompt", "completion", "time", "cost"
    );
    let mut total_cost = None::<f64>;
    for u in &st.usage {
        let c = cost(prices, &u.provider, u.prompt_tokens, u.completion_tokens);
        if let Some(c) = c {
            total_cost = Some(total_cost.unwrap_or(0.0) + c);
        }
        let _ = writeln!(
            s,
            "  {:<13}  {:<32}  {:>6}  {:>6}  {:>10}  {:>10}  {:>7.1} s  {:>9}",
            u.role,
            truncate(&format!("{}:{}", u.provider, u.model), 32),
            u.calls,
            u.failed_calls,
            u.prompt_tokens,
            u.completion_tokens,
            u.latency_ms as f64 / 1000.0,
            c.map_or("-".to_string(), |c| format!("{c:.4}"))
        );
    }
    if let Some(c) = total_cost {
        let _ = writeln!(s, "cost of priced providers: {c:.4}");
    }
    if st.skipped_calls > 0 {
        let _ = writeln!(
            s,
            "calls skipped by an open circuit breaker: {}",
            st.skipped_calls
        );
    }
    s
}

/// The workspace summary as JSON, with a `cost` per usage row where priced.
pub fn stats_json(st: &WorkspaceStats, prices: &Prices) -> serde_json::Value {
    let mut v = json!(st);
    if let Some(rows) = v["usage"].as_array_mut() {
        for (row, u) in rows.iter_mut().zip(&st.usage) {
            row["cost"] = json!(cost(
                prices,
                &u.provider,
                u.prompt_tokens,
                u.completion_tokens
            ));
        }
    }
    v
}

/// Opens the workspace's store for reading; `None` with a message on stderr
/// when it has none.
pub fn open(workspace: &std::path::Path) -> Option<Result<Store, String>> {
    let db = crate::runtime::store_path(workspace);
    if !db.exists() {
        eprintln!(
            "docsmith: no history in {} (no .docsmith/docsmith.db yet)",
            workspace.display()
        );
        return None;
    }
    Some(Store::open(&db).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptSummary, LlmCallRecord, NewTask, TaskKind, TaskStatus};
    use crate::types::{Isolation, Role, TestCase, TestOrigin, TestResult, TestRun};

    /// A store with one task: a question, two test cases (one failed in the
    /// first attempt), two attempts, three LLM calls (one skipped), feedback.
    fn store() -> (Store, crate::store::TaskId) {
        let store = Store::open_in_memory().unwrap();
        let t = store
            .create_task(&NewTask {
                workspace: "/ws".into(),
                file: "m.py".into(),
                function: "add".into(),
                kind: TaskKind::Generate,
                stub_source: "def add(a, b): ...".into(),
                docstring: Some("Add.".into()),
            })
            .unwrap();
        store
            .set_task_plan(
                t,
                r#"{"understanding":"adds two numbers","assumptions":["ints"]}"#,
            )
            .unwrap();
        store
            .add_clarification(t, "Floats too?", &["yes".into()], "yes", false)
            .unwrap();
        let case = |id: &str, origin, call: &str, expected: &str| TestCase {
            id: id.into(),
            origin,
            call: call.into(),
            expected: expected.into(),
            raises: None,
            note: String::new(),
            options: Vec::new(),
        };
        store
            .add_test_cases(
                t,
                &[
                    case("ex1", TestOrigin::Docstring, "add(1, 2)", "3"),
                    case("user1", TestOrigin::User, "add(0, 0)", "0"),
                ],
            )
            .unwrap();
        let result = |id: &str, passed: bool| TestResult {
            test_id: id.into(),
            passed,
            error_type: (!passed).then(|| "AssertionError".into()),
            message: (!passed).then(|| "expected 3, got -1".into()),
            traceback: None,
            actual: None,
            duration_ms: 1,
            outcome: None,
        };
        for (n, ok) in [(1u32, false), (2, true)] {
            let a = store.start_attempt(t, n, "def add(a, b): ...").unwrap();
            let run = TestRun {
                results: vec![result("ex1", ok), result("user1", true)],
                wall_ms: 50,
                isolation: Isolation::Bwrap,
                killed: None,
                load_error: None,
                stderr_tail: String::new(),
            };
            store.add_test_run(a, &run).unwrap();
            store
                .finish_attempt(
                    a,
                    &AttemptSummary {
                        stage_reached: "security_check".into(),
                        passed: 1 + u32::from(ok),
                        failed: u32::from(!ok),
                        findings_errors: 0,
                        wall_ms: 1500,
                        stage_times_ms: [
                            ("run_tests".to_string(), 500u64),
                            ("write_code".into(), 1000),
                        ]
                        .into_iter()
                        .collect(),
                        verdict: if ok { "passing" } else { "failing" }.into(),
                    },
                )
                .unwrap();
            if n == 1 {
                store
                    .add_feedback(t, Some(a), "add, do not subtract")
                    .unwrap();
            }
        }
        let call =
            |role, provider: &str, p: u64, c: u64, ms: u64, error: Option<&str>| LlmCallRecord {
                task: Some(t),
                attempt: None,
                role,
                provider: provider.into(),
                model: "m".into(),
                prompt_tokens: p,
                completion_tokens: c,
                latency_ms: ms,
                ok: error.is_none(),
                error: error.map(str::to_string),
                response: None,
            };
        store
            .add_llm_call(&call(Role::Planner, "hosted", 1000, 100, 2000, None))
            .unwrap();
        store
            .add_llm_call(&call(
                Role::Developer,
                "dead:m",
                0,
                0,
                0,
                Some("skipped: failed 3 calls in a row"),
            ))
            .unwrap();
        store
            .add_llm_call(&call(Role::Developer, "local", 500, 50, 4000, None))
            .unwrap();
        store
            .set_task_final(t, "def add(a, b):\n    return a + b\n", 7500)
            .unwrap();
        store
            .set_task_status(t, TaskStatus::Accepted, None)
            .unwrap();
        (store, t)
    }

    #[test]
    fn history_of_one_task_shows_plan_questions_tests_attempts_calls_and_feedback() {
        let (store, t) = store();
        let d = store.task(t).unwrap().unwrap();
        let calls = store.llm_calls_of(t).unwrap();
        let text = render_task(&d, &calls);
        let want = "\
task 1  `add` in m.py  (generate)
status: accepted
time: 7.5 s; 3 LLM calls, 1500 prompt + 150 completion tokens
understood: adds two numbers
assumed: ints
asked: Floats too?  answer: yes

tests (2):
  [ex1] docstring add(1, 2) == 3  pass
  [user1] user      add(0, 0) == 0  pass

attempts (2):
  #1  failing  1 passed, 1 failed, 0 error finding(s), 1.5 s; reached security_check
      stages: run_tests 0.5 s, write_code 1.0 s
  #2  passing  2 passed, 0 failed, 0 error finding(s), 1.5 s; reached security_check
      stages: run_tests 0.5 s, write_code 1.0 s

LLM calls (3):
    #  role           provider:model                     prompt  completion    latency  outcome
    1  planner        hosted:m                             1000         100      2.0 s  ok
    2  developer      dead:m:m                                0           0      0.0 s  skipped: failed 3 calls in a row
    3  developer      local:m                               500          50      4.0 s  ok

feedback:
  - add, do not subtract
";
        assert_eq!(text, want, "\n{text}");
        let v = task_json(&d, &calls);
        assert_eq!(v["llm_calls"].as_array().unwrap().len(), 3);
        assert_eq!(v["llm_calls"][1]["ok"], false);
        assert_eq!(v["task"]["task"]["status"], "accepted");
    }

    #[test]
    fn stats_count_outcomes_proposals_and_usage_with_costs_where_priced() {
        let (store, _) = store();
        let st = store.workspace_stats().unwrap();
        assert_eq!((st.proposals, st.passing_proposals, st.accepted), (1, 1, 1));
        assert_eq!(st.skipped_calls, 1);
        let mut prices = Prices::new();
        prices.insert("hosted".into(), (Some(1.0), Some(2.0)));
        let text = render_stats(&st, &prices);
        let want = "\
tasks: 1 (generate 1)
  by outcome: accepted 1
proposals: 1, passing 1 (100%); accepted 1, rejected 0 (1 feedback given)
time: 7.5 s in all

LLM usage by role and provider:
  role           provider:model                     calls  failed      prompt  completion       time       cost
  planner        hosted:m                               1       0        1000         100      2.0 s     0.0012
  developer      local:m                                1       0         500          50      4.0 s          -
cost of priced providers: 0.0012
calls skipped by an open circuit breaker: 1
";
        assert_eq!(text, want, "\n{text}");
        let v = stats_json(&st, &prices);
        assert!((v["usage"][0]["cost"].as_f64().unwrap() - 0.0012).abs() < 1e-12);
        assert!(v["usage"][1]["cost"].is_null());
    }
}
