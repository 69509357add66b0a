//! WriteCode, DesignTests and Critique: rounds of candidates from one
//! prompt, and the facts a repair round starts from.
//!
//! The first round is the greedy candidate alone (accepted when it passes
//! every docstring example: on this CPU one sequence costs a third of four).
//! When it does not, DesignTests asks for k-1 samples of the same prompt and
//! the test designer's inputs in one batch ([`crate::llm::Router::complete_batch`];
//! the local provider decodes every sequence in the same llama.cpp batch,
//! sharing the prompt's KV cells). Samples are deduplicated by normalised
//! code (duplicates add weight to the vote) and each distinct one is
//! recorded as an attempt. The first round's prompt is
//! the plain stub (the strongest single shot measured on the dev set); a
//! repair round shows the closest candidate with its failing examples' input,
//! expected and actual value; a feedback round shows the rejected proposal
//! with the user's words.
//!
//! Critique decides what happens when no candidate passes: another round
//! while the repair budget lasts, else the review of the closest candidate
//! (marked failing). It states facts; the critic model is not asked (on the
//! dev set critique-and-rewrite recovered 6 of 35 wrong first attempts while
//! costing 36 s a task).

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{failures_of, Candidate, PipelineError, RoundKind, Stage, TaskRun};
use crate::llm::Samples;
use crate::python;
use crate::roles::{self, Repair};
use crate::types::{Role, Severity};

impl TaskRun {
    /// WriteCode (`with_tests` false) and DesignTests (true): one round of
    /// candidates, and with `with_tests` the test designer's request in the
    /// same batch.
    pub(super) async fn sample_round(
        &mut self,
        cancel: &CancellationToken,
        with_tests: bool,
    ) -> Result<Stage, PipelineError> {
        let kind = self.next_round;
        self.round += 1;
        if kind != RoundKind::Widen {
            self.round_start = self.candidates.len();
        }
        self.selection = None;
        self.chosen = None;
        self.rank_pos = 0;
        let k = self.deps.settings.candidates.max(1);
        // (greedy candidate included, sampled candidates)
        let (greedy, sampled) = match kind {
            RoundKind::Greedy => (true, 0),
            RoundKind::Widen => (false, k.saturating_sub(1).max(1)),
            RoundKind::Full | RoundKind::Repair | RoundKind::Feedback => (true, k - 1),
        };
        let n = u32::from(greedy) + sampled;
        let what = match kind {
            RoundKind::Greedy => "writing code".to_string(),
            RoundKind::Widen => format!("sampling {n} more candidate(s)"),
            RoundKind::Full => format!("sampling {n} candidate(s)"),
            RoundKind::Repair => format!("repairing: sampling {n} candidate(s)"),
            RoundKind::Feedback => {
                format!("refining with your feedback: sampling {n} candidate(s)")
            }
        };
        let stage = if with_tests {
            Stage::DesignTests
        } else {
            Stage::WriteCode
        };
        let message = if with_tests {
            format!("designing test inputs and {what} (round {})", self.round)
        } else {
            format!("{what} (round {})", self.round)
        };
        self.enter(stage, message);
        let t0 = Instant::now();
        let req = self.code_request(greedy, sampled);
        let c = if with_tests {
            let tests = self.tests_request();
            let items = [(Role::Developer, req.clone()), (Role::TestDesigner, tests)];
            let mut res = match self.deps.router.complete_batch(&items, cancel).await {
                Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            };
            let code = self.record_call(Role::Developer, res.remove(0))?;
            let tests = self.record_call(Role::TestDesigner, res.remove(0))?;
            self.apply_designed_tests(roles::parse_tests(&tests.text))?;
            code
        } else {
            self.call(Role::Developer, &req, cancel).await?
        };
        let name = self.stub.name.clone();
        let mut texts = vec![(c.text.clone(), greedy)];
        texts.extend(c.alternatives.iter().map(|a| (a.text.clone(), false)));
        let feedback_given = self.feedback.take();
        let rejected = match (&feedback_given, self.repair_basis) {
            (Some(_), Some(i)) => Some(python::normalized_code(&self.candidates[i].generated)),
            _ => None,
        };
        let ms = t0.elapsed().as_millis() as u64;
        let mut unusable = 0;
        for (text, is_greedy) in &texts {
            let Ok(code) = roles::parse_code(text, &name) else {
                unusable += 1;
                continue;
            };
            let key = python::normalized_code(&code);
            // A feedback round must not hand back the proposal the user rejected.
            if rejected.as_ref() == Some(&key) {
                continue;
            }
            self.add_sample(code, key, *is_greedy, ms)?;
        }
        if unusable > 0 {
            self.note(format!(
                "{unusable} of {} sample(s) in round {} had no usable code defining `{name}`",
                texts.len(),
                self.round
            ));
        }
        if self.round_candidates().is_empty() {
            return Ok(self.after_no_pass());
        }
        Ok(Stage::RunTests)
    }

    /// The developer request of this round: the greedy candidate (when
    /// `greedy`) and `sampled` samples.
    fn code_request(&self, greedy: bool, sampled: u32) -> crate::llm::CompletionRequest {
        let s = &self.deps.settings;
        let guide = self.deps.guidelines.for_role(Role::Developer, false);
        let basis = match self.next_round {
            RoundKind::Repair | RoundKind::Feedback => {
                self.repair_basis.map(|i| &self.candidates[i])
            }
            _ => None,
        };
        let failures;
        let repair = match basis {
            Some(b) => {
                failures = failures_of(&self.tests, b.run.as_ref())
                    .into_iter()
                    .filter(|(t, _)| t.origin.is_ground_truth())
                    .collect::<Vec<_>>();
                Some(Repair {
                    code: if b.generated.is_empty() {
                        &self.view.source
                    } else {
                        &b.generated
                    },
                    failures: failures.clone(),
                    findings: &b.findings,
                    feedback: self.feedback.as_deref(),
                    diagnosis: None,
                })
            }
            // Refining an existing function: its code and the user's feedback.
            None if self.feedback.is_some() => Some(Repair {
                code: &self.view.source,
                failures: Vec::new(),
                findings: &[],
                feedback: self.feedback.as_deref(),
                diagnosis: None,
            }),
            None => None,
        };
        let mut req = roles::code_request(&self.view, s.code_prompt, &guide, repair.as_ref());
        // Every round samples other candidates.
        req.seed = 1000 * self.round;
        let extra = if greedy {
            sampled
        } else {
            sampled.saturating_sub(1)
        };
        if !greedy {
            req.temperature = s.sample_temperature;
        }
        if extra > 0 {
            req.samples = Some(Samples {
                n: extra,
                temperature: s.sample_temperature,
                top_p: s.top_p,
            });
        }
        req
    }

    /// Adds one parsed sample to the round: more weight to an equal
    /// candidate already in it, else a new candidate.
    fn add_sample(
        &mut self,
        code: String,
        key: String,
        greedy: bool,
        write_ms: u64,
    ) -> Result<(), PipelineError> {
        let existing = (self.round_start..self.candidates.len())
            .find(|&i| python::normalized_code(&self.candidates[i].generated) == key);
        match existing {
            Some(i) => {
                let c = &mut self.candidates[i];
                c.weight += 1;
                c.greedy |= greedy;
                let (id, round, weight, greedy) = (c.id, c.round, c.weight, c.greedy);
                self.deps
                    .store
                    .set_attempt_candidate(id, round, weight, greedy)?;
                Ok(())
            }
            None => self.add_candidate(code, 1, greedy, write_ms),
        }
    }

    /// Records a distinct candidate of the current round as an attempt,
    /// spliced into the stub module and into the file.
    fn add_candidate(
        &mut self,
        generated: String,
        weight: u32,
        greedy: bool,
        write_ms: u64,
    ) -> Result<(), PipelineError> {
        let n = self.candidates.len() as u32 + 1;
        let id = self.deps.store.start_attempt(self.task, n, &generated)?;
        self.deps
            .store
            .set_attempt_candidate(id, self.round, weight, greedy)?;
        let mut c = Candidate {
            n,
            id,
            round: self.round,
            generated: generated.clone(),
            standalone: String::new(),
            full_source: String::new(),
            weight,
            greedy,
            run: None,
            findings: Vec::new(),
            checked: false,
            failure: None,
            stage_times: BTreeMap::from([("write_code".to_string(), write_ms)]),
        };
        let spliced = python::find_function(&self.stub_module, &self.stub.qualname())
            .and_then(|f| python::splice(&self.stub_module, &f, &generated))
            .and_then(|s| {
                python::splice(&self.spec.source, &self.stub, &generated).map(|full| (s, full))
            });
        match spliced {
            Ok((standalone, full)) => {
                c.standalone = standalone.source;
                c.full_source = full.source;
            }
            Err(e) => c.failure = Some(e.to_string()),
        }
        self.candidates.push(c);
        Ok(())
    }

    /// No candidate of this round passes: repair while the budget lasts,
    /// else offer the closest one for review, marked failing.
    pub(super) async fn step_critique(
        &mut self,
        _cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        self.close_round("no candidate passes")?;
        if self.repairs >= self.deps.settings.max_refinements {
            if self.candidates.is_empty() {
                return Err(PipelineError::NoCode(self.stub.name.clone()));
            }
            self.note(format!(
                "repair budget spent ({} round(s) of candidates): offering the closest candidate",
                self.round
            ));
            return Ok(Stage::Review);
        }
        self.enter(Stage::Critique, "collecting the failing examples".into());
        self.repairs += 1;
        self.next_round = RoundKind::Repair;
        // The repair starts from the closest candidate (or, with no usable
        // candidate this round, from the last one that had code).
        self.repair_basis = self.chosen.or(self.repair_basis);
        if let Some(i) = self.repair_basis {
            let c = &self.candidates[i];
            let errors = c
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            let failing = failures_of(&self.tests, c.run.as_ref()).len();
            let text = format!(
                "repair round from candidate {}: {failing} failing test(s), {errors} error finding(s)",
                c.n
            );
            self.deps.store.add_critique(c.id, &text, None)?;
        }
        Ok(self.sampling_stage())
    }

    /// Finishes the attempts of the current round in the store.
    pub(super) fn close_round(&mut self, verdict: &str) -> Result<(), PipelineError> {
        let chosen = self.chosen;
        for i in self.round_start..self.candidates.len() {
            let c = &self.candidates[i];
            let (passed, failed) = c.run.as_ref().map_or((0, 0), |r| {
                (r.passed() as u32, (r.results.len() - r.passed()) as u32)
            });
            let errors = c
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count() as u32;
            let stage_reached = if c.failure.is_some() {
                "write_code"
            } else if c.checked {
                "security_check"
            } else if c.run.is_some() {
                "run_tests"
            } else {
                "write_code"
            };
            let verdict = match (&c.failure, Some(i) == chosen) {
                (Some(f), _) => f.clone(),
                (None, true) => verdict.to_string(),
                (None, false) => "not chosen".to_string(),
            };
            self.deps.store.finish_attempt(
                c.id,
                &crate::store::AttemptSummary {
                    stage_reached: stage_reached.to_string(),
                    passed,
                    failed,
                    findings_errors: errors,
                    wall_ms: c.stage_times.values().sum(),
                    stage_times_ms: c.stage_times.clone(),
                    verdict,
                },
            )?;
        }
        Ok(())
    }
}
