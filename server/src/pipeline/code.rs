//! WriteCode and Critique: a round of k candidates from one prompt, and the
//! facts a repair round starts from.
//!
//! WriteCode asks for the greedy completion plus k-1 samples of the same
//! prompt in one call ([`CompletionRequest::samples`]; the local provider
//! decodes them as sequences of one batch sharing the prompt's KV cache),
//! deduplicates them by normalised code (duplicates add weight to the vote),
//! and records each distinct one as an attempt. The first round's prompt is
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

use super::{failures_of, Candidate, PipelineError, Stage, TaskRun};
use crate::llm::Samples;
use crate::python;
use crate::roles::{self, Repair};
use crate::types::{Role, Severity, TestOrigin};

impl TaskRun {
    pub(super) async fn step_write_code(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        self.round += 1;
        self.round_start = self.candidates.len();
        self.selection = None;
        self.chosen = None;
        self.rank_pos = 0;
        let k = self.deps.settings.candidates.max(1);
        let what = match (&self.feedback, self.repair_basis) {
            (Some(_), _) => "refining with your feedback",
            (None, Some(_)) => "repairing",
            (None, None) => "writing code",
        };
        self.enter(
            Stage::WriteCode,
            format!("{what}: sampling {k} candidate(s) (round {})", self.round),
        );
        let t0 = Instant::now();
        let req = self.code_request(k);
        let name = self.stub.name.clone();
        let c = self.call(Role::Developer, &req, cancel).await?;
        let mut texts = vec![c.text.clone()];
        texts.extend(c.alternatives.iter().map(|a| a.text.clone()));
        let feedback_given = self.feedback.take();
        // Distinct candidates in sample order; the greedy sample is first.
        let mut distinct: Vec<(String, u32, bool)> = Vec::new();
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        let mut unusable = 0;
        for (i, text) in texts.iter().enumerate() {
            let Ok(code) = roles::parse_code(text, &name) else {
                unusable += 1;
                continue;
            };
            let key = python::normalized_code(&code);
            match keys.get(&key) {
                Some(&j) => distinct[j].1 += 1,
                None => {
                    keys.insert(key, distinct.len());
                    distinct.push((code, 1, i == 0 && req.temperature <= 0.0));
                }
            }
        }
        if unusable > 0 {
            self.note(format!(
                "{unusable} of {} sample(s) in round {} had no usable code defining `{name}`",
                texts.len(),
                self.round
            ));
        }
        // A feedback round should not hand back the proposal the user rejected.
        if feedback_given.is_some() {
            if let Some(basis) = self
                .repair_basis
                .map(|i| self.candidates[i].generated.clone())
            {
                let rejected = python::normalized_code(&basis);
                distinct.retain(|(code, _, _)| python::normalized_code(code) != rejected);
            }
        }
        let ms = t0.elapsed().as_millis() as u64;
        for (code, weight, greedy) in distinct {
            self.add_candidate(code, weight, greedy, ms)?;
        }
        if self.round_candidates().is_empty() {
            return Ok(Stage::Critique);
        }
        Ok(Stage::RunTests)
    }

    /// The developer request of this round, asking for `k` candidates.
    fn code_request(&self, k: u32) -> crate::llm::CompletionRequest {
        let s = &self.deps.settings;
        let guide = self.deps.guidelines.for_role(Role::Developer, false);
        let basis = self.repair_basis.map(|i| &self.candidates[i]);
        let failures;
        let repair = match basis {
            Some(b) => {
                failures = failures_of(&self.tests, b.run.as_ref())
                    .into_iter()
                    .filter(|(t, _)| t.origin == TestOrigin::Docstring)
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
        if k > 1 {
            req.samples = Some(Samples {
                n: k - 1,
                temperature: s.sample_temperature,
                top_p: s.top_p,
            });
            // Another round samples other candidates.
            req.seed = 1000 * self.round;
        }
        req
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
        let spliced = python::find_function(&self.stub_module, &self.stub.name)
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
        Ok(Stage::WriteCode)
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
