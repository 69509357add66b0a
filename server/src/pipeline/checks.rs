//! Validate and SecurityCheck on the chosen candidate. A candidate with an
//! error finding gives way to the next one in the selection's rank order;
//! when the ranking is exhausted the round counts as having no passing
//! candidate (more samples after a greedy-only round, else Critique).

use std::time::Instant;

use super::{PipelineError, Stage, TaskRun};
use crate::types::{CheckReport, Severity};

impl TaskRun {
    pub(super) fn step_validate(&mut self) -> Result<Stage, PipelineError> {
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
        let report = crate::checks::validate(
            &self.stub,
            &self.candidates[i].standalone,
            &self.deps.settings.python,
        );
        self.finish_checks(i, report, "validate", t0)?;
        Ok(if self.has_errors(i) {
            self.candidates[i].checked = true;
            self.next_ranked()
        } else {
            Stage::SecurityCheck
        })
    }

    pub(super) fn step_security(&mut self) -> Result<Stage, PipelineError> {
        let Some(i) = self.chosen else {
            return Ok(Stage::Critique);
        };
        self.enter(Stage::SecurityCheck, "security check".into());
        let t0 = Instant::now();
        let report = crate::checks::security_check(&self.candidates[i].standalone);
        self.finish_checks(i, report, "security", t0)?;
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
