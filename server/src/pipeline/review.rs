//! Review and Package: the proposal the user reviews (the chosen candidate,
//! or when nothing passes the closest one, marked failing with its reasons),
//! the files written beside it (`.docsmith/proposals/<task>/`), and the
//! accepted result.

use std::path::{Path, PathBuf};

use super::{failures_of, CaseOutcome, Ending, PipelineError, Proposal, Stage, TaskRun};
use crate::types::{Severity, TestOrigin};

impl TaskRun {
    /// The candidate the review shows: the chosen one of the last round, else
    /// the best of all (most docstring examples passed, fewest error findings,
    /// most samples, greedy, earliest).
    pub(super) fn proposal_candidate(&self) -> Option<usize> {
        let usable = |i: &usize| {
            let c = &self.candidates[*i];
            c.failure.is_none() && c.run.is_some() && !c.generated.is_empty()
        };
        if let Some(i) = self.chosen.filter(usable) {
            return Some(i);
        }
        (0..self.candidates.len()).filter(usable).max_by_key(|&i| {
            let c = &self.candidates[i];
            let doc_passed = c.run.as_ref().map_or(0, |r| {
                self.tests
                    .iter()
                    .filter(|t| t.origin.is_ground_truth())
                    .filter(|t| r.results.iter().any(|x| x.test_id == t.id && x.passed))
                    .count()
            });
            let errors = c
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            (
                doc_passed,
                std::cmp::Reverse(errors),
                c.weight,
                c.greedy,
                std::cmp::Reverse(i),
            )
        })
    }

    pub(super) fn step_review(&mut self) -> Result<Box<Proposal>, PipelineError> {
        self.enter(Stage::Review, "ready for review".into());
        let Some(best_i) = self.proposal_candidate() else {
            return Err(PipelineError::NoCode(self.stub.name.clone()));
        };
        let best = self.candidates[best_i].clone();
        // Without docstring examples, passing needs the samples' agreement.
        let unconfirmed = match &self.selection {
            Some(sel) if best.round == self.round => sel.unconfirmed(),
            _ => None,
        };
        let passing = self.candidate_passes(&best) && unconfirmed.is_none();
        self.chosen = Some(best_i);
        self.close_round(if passing { "passing" } else { "failing" })?;
        let mut reasons = Vec::new();
        let run = best.run.clone().expect("a usable candidate has a run");
        if let Some(le) = &run.load_error {
            reasons.push(format!("the module fails to load: {le}"));
        }
        for (c, r) in failures_of(&self.tests, Some(&run))
            .into_iter()
            .filter(|(c, _)| c.origin.is_ground_truth())
        {
            let what = match c.origin {
                TestOrigin::User => "your test",
                _ => "docstring example",
            };
            reasons.push(format!(
                "{what} {} `{}` fails: {}",
                c.id,
                c.call.replace('\n', "; "),
                what_went_wrong(r)
            ));
        }
        for f in best
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
        {
            reasons.push(format!("{} finding {}: {}", f.tool, f.rule, f.message));
        }
        reasons.extend(unconfirmed);
        if !passing && reasons.is_empty() {
            reasons.push("no test ran".into());
        }
        let tests = self
            .tests
            .iter()
            .map(|c| CaseOutcome {
                case: c.clone(),
                result: run.results.iter().find(|r| r.test_id == c.id).cloned(),
            })
            .collect();
        let diff = unified_diff(&self.spec.source, &best.full_source, &self.spec.file);
        let chosen_because = match (&self.selection, Some(best_i) == self.chosen) {
            (Some(sel), _) if best.round == self.round => sel.reason.clone(),
            _ => format!(
                "the closest candidate of all {} round(s) (candidate {})",
                self.round, best.n
            ),
        };
        let mut proposal = Proposal {
            task: self.task.0,
            function: self.stub.qualname(),
            file: self.spec.file.clone(),
            code: best.standalone.clone(),
            new_source: best.full_source.clone(),
            diff,
            passing,
            reasons,
            tests,
            dropped: self.dropped.clone(),
            findings: best.findings.clone(),
            attempt: best.n,
            attempts: self.candidates.len() as u32,
            chosen_because,
            rounds: self.round,
            understanding: self.plan.understanding.clone(),
            assumptions: self.assumptions.clone(),
            answered: self.answered.clone(),
            llm_calls: self.llm_calls,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            wall_ms: self.started.elapsed().as_millis() as u64,
            notes: self.notes.clone(),
            dir: None,
            original: self.view.source.clone(),
            context: self.context.clone(),
            memory: self.remembered.iter().map(|m| m.label()).collect(),
        };
        if self.deps.settings.write_proposal_files {
            match write_proposal_files(&self.spec.workspace, &proposal) {
                Ok(dir) => {
                    self.deps
                        .store
                        .set_task_proposal_dir(self.task, &dir.display().to_string())?;
                    proposal.dir = Some(dir);
                }
                Err(e) => tracing::warn!("could not write the proposal files: {e}"),
            }
        }
        // Kept so a restarted server can still apply the proposal.
        self.deps
            .store
            .set_task_final(self.task, &proposal.code, proposal.wall_ms)?;
        let boxed = Box::new(proposal);
        self.proposal = Some(boxed.clone());
        Ok(boxed)
    }

    pub(super) fn step_package(&mut self) -> Result<Stage, PipelineError> {
        self.enter(Stage::Package, "packaging".into());
        self.remember_fix()?;
        let p = self.proposal.as_ref().expect("Package follows Review");
        let wall = self.started.elapsed().as_millis() as u64;
        self.deps.store.set_task_final(self.task, &p.code, wall)?;
        self.end(Ending::Accepted, None)?;
        Ok(Stage::Done)
    }
}

/// One line on a failed test case for the review's reasons: the message
/// (`expected 5, got 6`), prefixed by the exception's class when the call
/// raised (`ValueError: bad qty`), or the class alone when the exception had
/// no message (`raised NotImplementedError`, from a stub the function
/// calls); the harness's own `expected X, got Y: ...` stays as it is.
fn what_went_wrong(r: &crate::types::TestResult) -> String {
    let msg = r.message.as_deref().unwrap_or("").trim();
    match r.error_type.as_deref() {
        Some(t) if t != "AssertionError" && msg.is_empty() => format!("raised {t}"),
        Some(t)
            if t != "AssertionError" && !msg.starts_with(t) && !msg.starts_with("expected ") =>
        {
            format!("{t}: {msg}")
        }
        _ if msg.is_empty() => "failed".to_string(),
        _ => msg.to_string(),
    }
}

/// Unified diff (3 lines of context) with `a/` and `b/` headers.
pub fn unified_diff(old: &str, new: &str, file: &Path) -> String {
    let shown = file.display().to_string();
    let name = shown.trim_start_matches('/');
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// The test module written beside a proposal: one pytest function per test
/// case, `test_<function>_<case id>` (`test_Inventory_add_ex2`), importing
/// everything of `module`.
pub fn render_test_module(p: &Proposal, module: &str) -> String {
    let mut s = format!(
        "# Tests docsmith designed for `{}` (task {}).\n",
        p.function, p.task
    );
    s.push_str(&format!("from {module} import *  # noqa: F401,F403\n\n"));
    for t in &p.tests {
        let c = &t.case;
        // Named after the function too: the module may be appended to a
        // test file that holds other functions' tests (`test_ex1` twice
        // would leave pytest only the last).
        s.push_str(&format!(
            "\ndef test_{}_{}():\n",
            p.function.replace('.', "_"),
            c.id
        ));
        s.push_str(&format!(
            "    # {} test{}\n",
            c.origin.as_str(),
            if c.note.is_empty() {
                String::new()
            } else {
                format!(": {}", c.note.lines().next().unwrap_or(""))
            }
        ));
        let lines: Vec<&str> = c.call.lines().collect();
        let (setup, last) = lines.split_at(lines.len().saturating_sub(1));
        for l in setup {
            s.push_str(&format!("    {l}\n"));
        }
        let last = last.first().copied().unwrap_or("");
        match &c.raises {
            Some(exc) => {
                s.push_str(&format!(
                    "    import pytest\n    with pytest.raises({exc}):\n        {last}\n"
                ));
            }
            None if c.expected.is_empty() => s.push_str(&format!(
                "    {last}  # a generated input: must not raise\n"
            )),
            None => s.push_str(&format!("    assert {last} == {}\n", c.expected)),
        }
    }
    s
}

/// The "Context given to the model" section of the report: each name shown
/// around the stub (kind, where from, estimated tokens), what the budget
/// left out.
fn render_context(c: &crate::python::context::Context) -> String {
    let mut s = format!(
        "## Context given to the model\n\n{} name(s), about {} tokens of a {}-token budget (4 bytes per token estimate).\n\n",
        c.items.len(),
        c.tokens,
        c.budget_tokens
    );
    for i in &c.items {
        let from = if i.origin.is_empty() {
            "this module".to_string()
        } else {
            format!("`{}`", i.origin)
        };
        s.push_str(&format!(
            "- `{}` ({}, {from}, {} tokens{})\n",
            i.name,
            i.kind,
            i.tokens,
            if i.mentioned {
                ", named in the stub"
            } else {
                ""
            }
        ));
    }
    if !c.omitted.is_empty() {
        s.push_str(&format!(
            "- left out for the budget: {}\n",
            c.omitted.join(", ")
        ));
    }
    s.push('\n');
    s
}

/// The review report in Markdown: tests, dropped tests, findings, attempts, time, tokens.
pub fn render_report(p: &Proposal) -> String {
    let mut s = format!(
        "# docsmith proposal for `{}` (task {})\n\n**{}**\n\n",
        p.function,
        p.task,
        p.summary()
    );
    s.push_str(&format!("## How it was chosen\n\n{}\n\n", p.chosen_because));
    if !p.understanding.is_empty() || !p.assumptions.is_empty() || !p.answered.is_empty() {
        s.push_str("## Understanding and assumptions\n\n");
        if !p.understanding.is_empty() {
            s.push_str(&format!("{}\n\n", p.understanding));
        }
        for c in &p.answered {
            s.push_str(&format!("- asked: {} answer: {}\n", c.question, c.answer));
        }
        for a in &p.assumptions {
            s.push_str(&format!("- assumed: {a}\n"));
        }
        s.push('\n');
    }
    if !p.reasons.is_empty() {
        s.push_str("## Why it is not passing\n\n");
        for r in &p.reasons {
            s.push_str(&format!("- {r}\n"));
        }
        s.push('\n');
    }
    if !p.memory.is_empty() {
        s.push_str("## Remembered from this workspace\n\nShown to the model with the stub (`docsmith memory forget ID` removes one):\n\n");
        for m in &p.memory {
            s.push_str(&format!("- {m}\n"));
        }
        s.push('\n');
    }
    s.push_str(&render_context(&p.context));
    s.push_str("## Tests\n\nDocstring examples must pass; generated inputs are votes (their expected values, where given, only break ties).\n\n| id | origin | call | expected | result |\n|---|---|---|---|---|\n");
    for t in &p.tests {
        let input_only = t.case.expected.is_empty() && t.case.raises.is_none();
        let res = match &t.result {
            Some(r) if input_only && r.error_type.is_none() => {
                format!(
                    "returned {}",
                    r.actual.clone().unwrap_or_default().replace('|', "\\|")
                )
            }
            Some(r) if r.passed => "pass".to_string(),
            Some(r) => format!(
                "FAIL: {}",
                r.message
                    .clone()
                    .unwrap_or_default()
                    .replace('|', "\\|")
                    .replace('\n', " ")
            ),
            None => "not run".into(),
        };
        s.push_str(&format!(
            "| {} | {} | `{}` | `{}` | {} |\n",
            t.case.id,
            t.case.origin.as_str(),
            t.case.call.replace('\n', "; ").replace('|', "\\|"),
            t.case
                .raises
                .as_ref()
                .map_or(t.case.expected.clone(), |e| format!("raises {e}"))
                .replace('|', "\\|"),
            res
        ));
    }
    if !p.dropped.is_empty() {
        s.push_str("\n## Dropped generated tests\n\n");
        for (id, why) in &p.dropped {
            s.push_str(&format!("- {id}: {why}\n"));
        }
    }
    s.push_str("\n## Findings\n\n");
    if p.findings.is_empty() {
        s.push_str("none\n");
    }
    for f in &p.findings {
        s.push_str(&format!(
            "- {:?} {} ({}){}: {}\n",
            f.severity,
            f.rule,
            f.tool,
            f.line.map_or(String::new(), |l| format!(" line {l}")),
            f.message
        ));
    }
    if !p.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &p.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s.push_str(&format!("\n## Diff\n\n```diff\n{}```\n", p.diff));
    s
}

/// Writes `<workspace>/.docsmith/proposals/<task>/` with `<name>.py`, `test_<name>.py`,
/// `proposal.diff` and `report.md`; returns the directory.
pub fn write_proposal_files(workspace: &Path, p: &Proposal) -> std::io::Result<PathBuf> {
    let dir = workspace
        .join(".docsmith")
        .join("proposals")
        .join(p.task.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.py", p.function)), &p.code)?;
    std::fs::write(
        dir.join(format!("test_{}.py", p.function)),
        render_test_module(p, &p.function),
    )?;
    std::fs::write(dir.join("proposal.diff"), &p.diff)?;
    std::fs::write(dir.join("original.py"), &p.original)?;
    std::fs::write(dir.join("report.md"), render_report(p))?;
    Ok(dir)
}

#[cfg(test)]
mod what_went_wrong_tests {
    use super::what_went_wrong;
    use crate::types::TestResult;

    fn result(error_type: Option<&str>, message: &str) -> TestResult {
        TestResult {
            test_id: "ex1".into(),
            passed: false,
            error_type: error_type.map(str::to_string),
            message: Some(message.into()),
            traceback: None,
            actual: None,
            duration_ms: 1,
            outcome: None,
        }
    }

    #[test]
    fn a_failure_names_what_was_raised_even_without_a_message() {
        // The shop's from_pairs calling a still-stubbed add: the reason read
        // "fails: " with nothing after it.
        assert_eq!(
            what_went_wrong(&result(Some("NotImplementedError"), "")),
            "raised NotImplementedError"
        );
        assert_eq!(
            what_went_wrong(&result(Some("ValueError"), "bad qty")),
            "ValueError: bad qty"
        );
        assert_eq!(
            what_went_wrong(&result(Some("AssertionError"), "expected 5, got 6")),
            "expected 5, got 6"
        );
        let wrong_raise = "expected ValueError, got KeyError: 'a'";
        assert_eq!(
            what_went_wrong(&result(Some("KeyError"), wrong_raise)),
            wrong_raise
        );
        assert_eq!(what_went_wrong(&result(None, "")), "failed");
    }
}
