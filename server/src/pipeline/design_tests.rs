//! The generated test cases: mostly *inputs*. They are designed once, in the
//! first round that samples several candidates (the same llama.cpp batch as
//! those candidates, see `code.rs`); every candidate then runs on them and
//! candidates vote by behaviour. An expected value, when the designer gives
//! one, only breaks ties. A generated case with the same call as a docstring
//! example but another expected value contradicts the docstring: it is
//! dropped and the drop recorded.

use std::collections::{BTreeMap, HashSet};

use super::{is_identifier_path, normalize, Event, PipelineError, TaskRun};
use crate::llm::CompletionRequest;
use crate::python;
use crate::roles::{self, DesignedTests, ParseError};
use crate::types::{Role, TestCase, TestOrigin};

impl TaskRun {
    /// The test designer's request (examples listed so they are not repeated).
    pub(super) fn tests_request(&self) -> CompletionRequest {
        let guide = self.deps.guidelines.for_role(Role::TestDesigner, false);
        let examples: Vec<TestCase> = self
            .tests
            .iter()
            .filter(|t| t.origin == TestOrigin::Docstring)
            .cloned()
            .collect();
        roles::tests_request(
            &self.view,
            &guide,
            &examples,
            &self.answered,
            self.deps.settings.max_generated_tests,
        )
    }

    /// Adds the test designer's cases (and assumptions) to the task's tests.
    pub(super) fn apply_designed_tests(
        &mut self,
        reply: Result<DesignedTests, ParseError>,
    ) -> Result<(), PipelineError> {
        self.designed = true;
        let designed = match reply {
            Ok(t) => t,
            Err(e) => {
                self.note(format!(
                    "test designer output unusable ({e}); going on with the docstring's examples only"
                ));
                return Ok(());
            }
        };
        for a in designed.assumptions {
            let a = a.trim().to_string();
            if !a.is_empty() && !self.assumptions.contains(&a) {
                self.assumptions.push(a);
            }
        }
        let max = self.deps.settings.max_generated_tests;
        let doc_calls: BTreeMap<String, String> = self
            .tests
            .iter()
            .map(|t| (normalize(&t.call), normalize(&t.expected)))
            .collect();
        let mut seen: HashSet<String> = doc_calls.keys().cloned().collect();
        let mut contradictions = Vec::new();
        let mut added = Vec::new();
        let mut n = 0;
        for g in designed.tests.into_iter().take(max) {
            let call = g.call.trim().to_string();
            let raises = Some(g.raises.trim().to_string()).filter(|r| is_identifier_path(r));
            let mut expected = if raises.is_some() {
                String::new()
            } else {
                g.expected.trim().to_string()
            };
            if call.is_empty()
                || !call.contains(&self.stub.name)
                || !python::syntax_errors(&call).is_empty()
            {
                continue;
            }
            // Prose instead of a literal is no expectation: the input still votes.
            if !expected.is_empty() && !python::is_literal(&expected) {
                expected.clear();
            }
            let key = normalize(&call);
            n += 1;
            let case = TestCase {
                id: format!("gen{n}"),
                origin: TestOrigin::Generated,
                call,
                expected,
                raises,
                note: g.why,
                options: Vec::new(),
            };
            if let Some(doc_expected) = doc_calls.get(&key) {
                if !case.expected.is_empty() && *doc_expected != normalize(&case.expected) {
                    contradictions.push(case);
                }
                continue;
            }
            if seen.insert(key) {
                added.push(case);
            }
        }
        self.deps.store.add_test_cases(self.task, &added)?;
        self.deps.store.add_test_cases(self.task, &contradictions)?;
        let generated = added.len();
        self.tests.extend(added);
        for c in contradictions {
            let reason = format!(
                "same call as a docstring example but expects {} instead",
                c.expected
            );
            self.drop_test(&c.id, &reason, 0)?;
        }
        if !self.tests.iter().any(|t| t.origin.is_ground_truth()) {
            self.note("the docstring has no examples: candidates are chosen by agreement on generated inputs only (add `>>>` examples for trustworthy results)".into());
        }
        tracing::debug!(task = self.task.0, generated, "designed test inputs");
        Ok(())
    }

    /// Drops a generated test case (recorded with its reason).
    pub(super) fn drop_test(
        &mut self,
        id: &str,
        reason: &str,
        attempt_n: u32,
    ) -> Result<(), PipelineError> {
        self.deps
            .store
            .drop_test_case(self.task, id, reason, attempt_n)?;
        self.tests.retain(|t| t.id != id);
        self.dropped.push((id.to_string(), reason.to_string()));
        self.emit(Event::TestDropped {
            task: self.task.0,
            test_id: id.to_string(),
            reason: reason.to_string(),
        });
        Ok(())
    }
}
