//! Validate and SecurityCheck on the chosen candidate. A candidate with an
//! error finding gives way to the next one in the selection's rank order;
//! when the ranking is exhausted the round counts as having no passing
//! candidate (more samples after a greedy-only round, else Critique).

use std::collections::HashSet;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{PipelineError, Stage, TaskRun};
use crate::checks::{self, ToolRun};
use crate::python;
use crate::types::{CheckReport, Severity};

impl TaskRun {
    /// How the checkers run their tools for this task: its timeout, `cancel`.
    fn tool_run<'a>(&self, cancel: &'a CancellationToken) -> ToolRun<'a> {
        ToolRun {
            timeout: self.deps.settings.check_timeout,
            cancel,
        }
    }

    pub(super) async fn step_validate(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        let Some(i) = self.chosen else {
            return Ok(Stage::Critique);
        };
        // A candidate carried over from an earlier round was checked already.
        if self.candidates[i].checked {
            return Ok(if self.has_errors(i) {
                self.next_ranked()
            } else {
                Stage::Review
            });
        }
        self.enter(
            Stage::Validate,
            format!("validating candidate {}", self.candidates[i].n),
        );
        let t0 = Instant::now();
        let (module, changed) = self.checked_module(i);
        let python = &self.deps.settings.python;
        let report = checks::validate(&self.stub, &module, python, self.tool_run(cancel)).await?;
        self.finish_checks(i, only_on(report, changed.as_ref()), "validate", t0)?;
        Ok(if self.has_errors(i) {
            self.candidates[i].checked = true;
            self.next_ranked()
        } else {
            Stage::SecurityCheck
        })
    }

    pub(super) async fn step_security(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        let Some(i) = self.chosen else {
            return Ok(Stage::Critique);
        };
        self.enter(Stage::SecurityCheck, "security check".into());
        let t0 = Instant::now();
        let (module, changed) = self.checked_module(i);
        let report = checks::security_check(&module, self.tool_run(cancel)).await?;
        self.finish_checks(i, only_on(report, changed.as_ref()), "security", t0)?;
        self.candidates[i].checked = true;
        Ok(if self.has_errors(i) {
            self.next_ranked()
        } else {
            Stage::Review
        })
    }

    /// Moves to the next gated candidate in rank order, or to Critique.
    fn next_ranked(&mut self) -> Stage {
        let ranking = self
            .selection
            .as_ref()
            .map(|s| s.ranking.clone())
            .unwrap_or_default();
        self.rank_pos += 1;
        match ranking.get(self.rank_pos) {
            Some(&r) => {
                let next = self.round_start + r;
                let n = self.candidates[next].n;
                if let Some(prev) = self.chosen {
                    let p = self.candidates[prev].n;
                    self.note(format!(
                        "candidate {p} has error findings; trying candidate {n}, next in rank order"
                    ));
                }
                self.chosen = Some(next);
                Stage::Validate
            }
            None => {
                // Keep the first-ranked candidate as the repair basis.
                if let Some(&r) = ranking.first() {
                    self.chosen = Some(self.round_start + r);
                }
                self.after_no_pass()
            }
        }
    }

    /// The module candidate `i` is checked as: the whole file with it spliced
    /// in (so the module's own helpers, constants and classes resolve), with
    /// the 1-based lines the candidate added or changed; or, when the file
    /// itself does not parse, the standalone module and `None` (every line
    /// counts).
    fn checked_module(&self, i: usize) -> (String, Option<HashSet<usize>>) {
        let c = &self.candidates[i];
        if c.full_source.is_empty() || !python::syntax_errors(&self.spec.source).is_empty() {
            return (c.standalone.clone(), None);
        }
        (
            c.full_source.clone(),
            Some(changed_lines(&self.spec.source, &c.full_source)),
        )
    }

    fn has_errors(&self, i: usize) -> bool {
        self.candidates[i]
            .findings
            .iter()
            .any(|f| f.severity == Severity::Error)
    }

    fn finish_checks(
        &mut self,
        i: usize,
        report: CheckReport,
        phase: &str,
        t0: Instant,
    ) -> Result<(), PipelineError> {
        let id = self.candidates[i].id;
        self.deps.store.add_findings(id, phase, &report.findings)?;
        for n in report.notes {
            if !self.notes.contains(&n) {
                self.note(n);
            }
        }
        let c = &mut self.candidates[i];
        c.findings.extend(report.findings);
        c.stage_times
            .insert(phase.to_string(), t0.elapsed().as_millis() as u64);
        Ok(())
    }
}

/// 1-based lines of `new` that are not in `old` (inserted or replaced), by
/// a line diff.
pub(super) fn changed_lines(old: &str, new: &str) -> HashSet<usize> {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = HashSet::new();
    for op in diff.ops() {
        for change in diff.iter_changes(op) {
            if change.tag() == similar::ChangeTag::Insert {
                if let Some(n) = change.new_index() {
                    out.insert(n + 1);
                }
            }
        }
    }
    out
}

/// `report` without the findings on lines outside `changed` (the user's own
/// code elsewhere in the file is not the candidate's to answer for);
/// findings without a line are kept. `None` keeps everything.
fn only_on(mut report: CheckReport, changed: Option<&HashSet<usize>>) -> CheckReport {
    if let Some(lines) = changed {
        report
            .findings
            .retain(|f| f.line.is_none_or(|l| lines.contains(&l)));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_lines_a_candidate_touched_count() {
        let old = "import os\n\ndef f():\n    ...\n\ndef g():\n    eval('1')\n";
        let new = "import os\nimport re\n\ndef f():\n    return re.escape('x')\n\ndef g():\n    eval('1')\n";
        let changed = changed_lines(old, new);
        assert_eq!(changed, HashSet::from([2, 5]));
        let cancel = CancellationToken::new();
        let run = ToolRun {
            timeout: checks::TOOL_TIMEOUT,
            cancel: &cancel,
        };
        let report = checks::security_check(new, run).await.unwrap();
        assert!(
            report.findings.iter().any(|f| f.line == Some(8)),
            "{report:?}"
        );
        let kept = only_on(report, Some(&changed));
        assert!(kept.findings.iter().all(|f| f.line != Some(8)), "{kept:?}");
    }
}
