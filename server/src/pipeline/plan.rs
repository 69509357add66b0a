//! Plan and Clarify: the planner reads the stub, states its understanding and
//! assumptions, and (only when a front end can answer) asks one clarifying
//! question when the docstring allows two readings with different results.
//!
//! The plan is shown in the review; it never enters the code prompt (on the
//! dev set a plan in the developer prompt lost 6 tasks net,
//! `bench/results/dev-loop-r0/`). Non-interactive runs (`--yes`, the bench)
//! make no planner call at all: there is nobody to ask, and the test
//! designer states the assumptions.

use tokio_util::sync::CancellationToken;

use super::{PipelineError, Question, Stage, TaskRun};
use crate::roles::{self, Clarification, Plan};
use crate::types::Role;

impl TaskRun {
    pub(super) async fn step_plan(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        let s = &self.deps.settings;
        let may_ask = s.interactive && self.questions_asked < s.max_clarifications;
        if !may_ask || self.feedback.is_some() {
            return Ok(self.sampling_stage());
        }
        self.enter(Stage::Plan, "planning".into());
        let guide = self.deps.guidelines.for_role(Role::Planner, false);
        let req = roles::plan_request(&self.view, &guide, &self.answered, may_ask);
        match self
            .call_parsed(Role::Planner, req, roles::parse_plan, cancel)
            .await?
        {
            Ok(plan) => self.plan = plan,
            Err(e) => {
                self.note(format!(
                    "planner output unusable ({e}); going on from the docstring alone"
                ));
                self.plan = Plan::default();
            }
        }
        self.deps.store.set_task_plan(
            self.task,
            &serde_json::to_string(&self.plan).unwrap_or_default(),
        )?;
        for a in &self.plan.assumptions {
            if !self.assumptions.contains(a) {
                self.assumptions.push(a.clone());
            }
        }
        if self.plan.question.is_empty() {
            return Ok(self.sampling_stage());
        }
        self.questions_asked += 1;
        self.pending_question = Some(Question {
            text: self.plan.question.clone(),
            options: self.plan.options.clone(),
            assumptions: self.plan.assumptions.clone(),
            round: self.questions_asked,
        });
        Ok(Stage::Clarify)
    }

    /// Takes the user's answer (`None`: take the planner's assumptions) to the
    /// pending question: an answer goes back to the planner, which may ask
    /// again within the budget; assumptions go on to test design.
    pub(super) fn answer(&mut self, answer: Option<String>) -> Result<(), PipelineError> {
        let q = self
            .pending_question
            .take()
            .expect("a question is pending in Clarify");
        match answer {
            Some(a) => {
                self.deps
                    .store
                    .add_clarification(self.task, &q.text, &q.options, &a, false)?;
                self.answered.push(Clarification {
                    question: q.text,
                    answer: a,
                });
                self.stage = Stage::Plan;
            }
            None => {
                let assumed = self.plan.assumptions.join("; ");
                self.deps
                    .store
                    .add_clarification(self.task, &q.text, &q.options, &assumed, true)?;
                self.note(format!(
                    "question not answered, assumed: {}",
                    if assumed.is_empty() {
                        "nothing stated"
                    } else {
                        &assumed
                    }
                ));
                self.stage = self.sampling_stage();
            }
        }
        Ok(())
    }
}
