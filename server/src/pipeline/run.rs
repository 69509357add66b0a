//! RunTests and Select: every distinct candidate of the round runs on every
//! test case (each candidate in its own sandboxed process), then
//! `select::select` picks one: the docstring gates, the generated inputs vote.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::select::{self, Scored, TestInfo};
use super::{Event, PipelineError, Stage, TaskRun};
use crate::python;
use crate::sandbox::SandboxError;

impl TaskRun {
    pub(super) async fn step_run_tests(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        let range = self.round_start..self.candidates.len();
        let runnable: Vec<usize> = range
            .clone()
            .filter(|&i| self.candidates[i].failure.is_none())
            .collect();
        self.enter(
            Stage::RunTests,
            format!(
                "running {} candidate(s) on {} test(s)",
                runnable.len(),
                self.tests.len()
            ),
        );
        let t0 = Instant::now();
        // The whole file with the candidate spliced in, so module-level
        // helpers and constants resolve; the standalone module when the file
        // itself does not parse.
        let file_parses = python::syntax_errors(&self.spec.source).is_empty();
        let modules: Vec<String> = runnable
            .iter()
            .map(|&i| {
                let c = &self.candidates[i];
                if file_parses && !c.full_source.is_empty() {
                    c.full_source.clone()
                } else {
                    c.standalone.clone()
                }
            })
            .collect();
        let dir = self.work.path().join(format!("round-{}", self.round));
        std::fs::create_dir_all(&dir)?;
        let runs = self
            .deps
            .sandbox
            .run_many(&dir, &modules, &self.tests, self.project.as_ref(), cancel)
            .await;
        let runs = match runs {
            Ok(r) => r,
            Err(SandboxError::Cancelled) => return Err(PipelineError::Cancelled),
            Err(e) => return Err(e.into()),
        };
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let ms = t0.elapsed().as_millis() as u64;
        for (&i, run) in runnable.iter().zip(runs) {
            self.deps.store.add_test_run(self.candidates[i].id, &run)?;
            let c = &mut self.candidates[i];
            c.run = Some(run);
            c.stage_times.insert("run_tests".into(), ms);
        }
        Ok(Stage::Select)
    }

    pub(super) fn step_select(&mut self) -> Result<Stage, PipelineError> {
        let infos: Vec<TestInfo> = self
            .tests
            .iter()
            .map(|t| TestInfo {
                id: t.id.clone(),
                origin: t.origin,
                has_expectation: !t.expected.is_empty() || t.raises.is_some(),
            })
            .collect();
        let scored: Vec<Scored> = self
            .round_candidates()
            .iter()
            .map(|c| Scored {
                weight: c.weight,
                greedy: c.greedy,
                load_failed: c.failure.is_some()
                    || c.run.as_ref().is_none_or(|r| r.load_error.is_some()),
                results: c
                    .run
                    .as_ref()
                    .map(|r| r.results.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let sel = select::select(&scored, &infos);
        self.enter(Stage::Select, format!("choosing: {}", sel.reason));
        let base = self.round_start;
        let attempt_of = |i: usize| self.candidates[base + i].id;
        let detail = serde_json::json!({
            "selection": &sel,
            "attempts": (0..scored.len()).map(|i| attempt_of(i).0).collect::<Vec<_>>(),
        });
        self.deps.store.add_selection(
            self.task,
            self.round,
            sel.chosen.map(attempt_of),
            sel.passes_gate,
            &sel.reason,
            &detail.to_string(),
        )?;
        self.emit(Event::Selected {
            task: self.task.0,
            round: self.round,
            samples: sel.samples,
            distinct: scored.len() as u32,
            passes_gate: sel.passes_gate,
            reason: sel.reason.clone(),
        });
        self.chosen = sel.chosen.map(|i| base + i);
        self.rank_pos = 0;
        let passes = sel.passes_gate;
        self.selection = Some(sel);
        if let Some(i) = self.chosen {
            let c = &self.candidates[i];
            if let Some(run) = &c.run {
                self.emit(Event::Tests {
                    task: self.task.0,
                    attempt: c.n,
                    passed: run.passed(),
                    total: run.results.len(),
                });
            }
        }
        let docstring_tests = self.tests.iter().any(|t| t.origin.is_ground_truth());
        if !docstring_tests && self.tests.is_empty() {
            self.note("no test case ran: the docstring has no examples and no inputs were generated; the greedy candidate is offered unverified".into());
        }
        Ok(if passes {
            Stage::Validate
        } else {
            self.after_no_pass()
        })
    }
}
