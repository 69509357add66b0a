//! DesignTests: the docstring's examples (ground truth) plus generated test
//! cases, which are mostly *inputs*: every candidate runs on them and
//! candidates vote by behaviour; an expected value, when the designer gives
//! one, only breaks ties. A generated case with the same call as a docstring
//! example but another expected value contradicts the docstring: it is
//! dropped and the drop recorded.

use std::collections::{BTreeMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::{is_identifier_path, normalize, Event, PipelineError, Stage, TaskRun};
use crate::python;
use crate::roles;
use crate::types::{Role, TestCase, TestOrigin};

impl TaskRun {
    pub(super) async fn step_design_tests(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        self.enter(Stage::DesignTests, "designing test inputs".into());
        let examples = python::extract_examples(&self.stub);
        let max = self.deps.settings.max_generated_tests;
        let mut generated = Vec::new();
        if max > 0 {
            let guide = self.deps.guidelines.for_role(Role::TestDesigner, false);
            let req = roles::tests_request(&self.view, &guide, &examples, &self.answered, max);
            match self
                .call_parsed(Role::TestDesigner, req, roles::parse_tests, cancel)
                .await?
            {
                Ok(t) => {
                    for a in t.assumptions {
                        let a = a.trim().to_string();
                        if !a.is_empty() && !self.assumptions.contains(&a) {
                            self.assumptions.push(a);
                        }
                    }
                    generated = t.tests;
                }
                Err(e) => self.note(format!(
                    "test designer output unusable ({e}); going on with the docstring's examples only"
                )),
            }
        }
        let mut tests = examples;
        let doc_calls: BTreeMap<String, String> = tests
            .iter()
            .map(|t| (normalize(&t.call), normalize(&t.expected)))
            .collect();
        let mut seen: HashSet<String> = doc_calls.keys().cloned().collect();
        let mut contradictions = Vec::new();
        let mut n = 0;
        for g in generated.into_iter().take(max) {
            let call = g.call.trim().to_string();
            let raises = Some(g.raises.trim().to_string()).filter(|r| is_identifier_path(r));
            let mut expected = if raises.is_some() {
                String::new()
            } else {
                g.expected.trim().to_string()
            };
            if call.is_empty() || !call.contains(&self.stub.name) {
                continue;
            }
            if !python::syntax_errors(&call).is_empty() {
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
            };
            if let Some(doc_expected) = doc_calls.get(&key) {
                if !case.expected.is_empty() && *doc_expected != normalize(&case.expected) {
                    contradictions.push(case);
                }
                continue;
            }
            if seen.insert(key) {
                tests.push(case);
            }
        }
        self.deps.store.add_test_cases(self.task, &tests)?;
        self.deps.store.add_test_cases(self.task, &contradictions)?;
        for c in contradictions {
            let reason = format!(
                "same call as a docstring example but expects {} instead",
                c.expected
            );
            self.drop_test(&c.id, &reason, 0)?;
        }
        let doc = tests
            .iter()
            .filter(|t| t.origin == TestOrigin::Docstring)
            .count();
        if doc == 0 {
            self.note("the docstring has no examples: candidates are chosen by agreement on generated inputs only (add `>>>` examples for trustworthy results)".into());
        }
        self.tests = tests;
        self.enter(
            Stage::DesignTests,
            format!(
                "designed tests ({} from the docstring, {} generated inputs)",
                doc,
                self.tests.len() - doc
            ),
        );
        Ok(Stage::WriteCode)
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
