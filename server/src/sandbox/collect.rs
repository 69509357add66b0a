//! The two channels of a test run, read on the host: the candidate process's
//! outcomes (untrusted data: the candidate shares that process and may write
//! anything there) and the referee's verdicts; and the one place that turns
//! them into [`TestResult`]s.
//!
//! Owns: parsing channel lines and the failure results the host itself decides
//! (load errors, timeouts, tests never reached). Knows nothing about processes
//! or mounts, and never decides a pass: only a referee verdict can.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Deserialize;

use super::process::End;
use crate::types::{TestCase, TestResult};

/// Largest outcome line accepted from a candidate's process, bytes. The
/// harness stays below it; a bigger one is a failure, not referee input.
const MAX_OUTCOME_LINE: usize = 1 << 20;

/// The outcome key of a test that timed out.
pub(crate) const TIMEOUT_KEY: &str = r#"{"timeout":true}"#;

#[derive(Deserialize)]
struct Line {
    event: String,
    #[serde(default)]
    test_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    outcome: Option<serde_json::Value>,
}

/// One outcome a candidate's process reported.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The outcome object as sent (`kind` = `value`, `raised` or `timeout`).
    pub value: serde_json::Value,
    pub duration_ms: u64,
}

impl Outcome {
    /// `value`, `raised`, `timeout`, or `oversized` (set by the host).
    fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(|k| k.as_str())
    }
}

/// Collects a candidate process's channel lines as they arrive.
pub(crate) struct CandidateLines {
    nonce: String,
    known: HashSet<String>,
    pub ready: bool,
    pub loaded: bool,
    pub load_error: Option<String>,
    in_progress: Option<(String, Instant)>,
    outcomes: HashMap<String, Outcome>,
}

impl CandidateLines {
    pub fn new(nonce: &str, tests: &[TestCase]) -> Self {
        CandidateLines {
            nonce: nonce.to_string(),
            known: tests.iter().map(|t| t.id.clone()).collect(),
            ready: false,
            loaded: false,
            load_error: None,
            in_progress: None,
            outcomes: HashMap::new(),
        }
    }

    /// Reads one channel line. Lines without the nonce, unparsable ones and
    /// outcomes for unknown tests are dropped; the first outcome of a test wins.
    pub fn line(&mut self, line: &str) {
        let Some(json) = line.strip_prefix(&self.nonce) else {
            tracing::debug!(target: "docsmith::sandbox", "ignoring a channel line without the nonce");
            return;
        };
        let Ok(ev) = serde_json::from_str::<Line>(json) else {
            tracing::warn!(target: "docsmith::sandbox", "unparsable harness line: {json:.200}");
            return;
        };
        match ev.event.as_str() {
            "ready" => self.ready = true,
            "loaded" => self.loaded = true,
            "load_error" if self.load_error.is_none() && !self.loaded => self.load_error = ev.error,
            "start" => {
                self.in_progress = ev
                    .test_id
                    .filter(|id| self.known.contains(id))
                    .map(|id| (id, Instant::now()))
            }
            "outcome" => {
                let (Some(id), Some(mut value)) = (ev.test_id, ev.outcome) else {
                    return;
                };
                if line.len() > MAX_OUTCOME_LINE {
                    value = serde_json::json!({"kind": "oversized", "bytes": line.len()});
                }
                if self.known.contains(&id) && !self.outcomes.contains_key(&id) {
                    if self.in_progress.as_ref().is_some_and(|(p, _)| *p == id) {
                        self.in_progress = None;
                    }
                    self.outcomes.insert(
                        id,
                        Outcome {
                            value,
                            duration_ms: ev.duration_ms.unwrap_or(0),
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// The outcome of `test_id`, when one arrived.
    pub fn outcome(&self, test_id: &str) -> Option<&Outcome> {
        self.outcomes.get(test_id)
    }

    /// What the host decides for `test` without a referee: a load error, a
    /// timeout, a test the process never finished. `None` when the test has an
    /// outcome the referee must judge.
    pub fn host_result(
        &self,
        test: &TestCase,
        load_error: Option<&str>,
        killed: bool,
        end: &End,
        per_test_timeout_ms: u64,
    ) -> Option<TestResult> {
        let mut r = failed(
            &test.id,
            "NotRun",
            "not run: the sandboxed process ended before this test",
        );
        if let Some(err) = load_error {
            r.error_type = Some("LoadError".into());
            r.message = Some(format!(
                "the candidate module failed to load: {}",
                first_line(err)
            ));
            return Some(r);
        }
        if let Some(o) = self.outcomes.get(&test.id) {
            if o.kind() == Some("oversized") {
                r.error_type = Some("BadOutcome".into());
                r.message = Some(format!(
                    "the outcome is larger than {MAX_OUTCOME_LINE} bytes; not judged"
                ));
                r.duration_ms = o.duration_ms;
                return Some(r);
            }
            if o.kind() != Some("timeout") {
                return None;
            }
            r.error_type = Some("Timeout".into());
            r.message = Some(format!(
                "test exceeded its timeout of {per_test_timeout_ms} ms"
            ));
            r.duration_ms = o.duration_ms;
            r.outcome = Some(TIMEOUT_KEY.into());
            return Some(r);
        }
        if let Some((id, started)) = &self.in_progress {
            if *id == test.id {
                r.duration_ms = started.elapsed().as_millis() as u64;
                if killed {
                    r.error_type = Some("Timeout".into());
                    r.message = Some(
                        "killed by the wall timeout of the run while this test ran (it ignored its own timeout)"
                            .into(),
                    );
                    r.outcome = Some(TIMEOUT_KEY.into());
                } else {
                    r.error_type = Some("ProcessExited".into());
                    r.message = Some(format!(
                        "the sandboxed process ended during this test ({})",
                        super::describe_end(end)
                    ));
                }
            }
        }
        Some(r)
    }
}

/// A failed result with an error type and message and nothing else.
pub(crate) fn failed(test_id: &str, error_type: &str, message: &str) -> TestResult {
    TestResult {
        test_id: test_id.to_string(),
        passed: false,
        error_type: Some(error_type.into()),
        message: Some(message.into()),
        traceback: None,
        actual: None,
        duration_ms: 0,
        outcome: None,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// One referee verdict line.
#[derive(Debug, Deserialize)]
pub(crate) struct Verdict {
    pub item: usize,
    pub passed: bool,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
    #[serde(default)]
    pub actual: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// Collects the referee's channel lines: one verdict per item.
pub(crate) struct RefereeLines {
    nonce: String,
    pub ready: bool,
    pub done: bool,
    pub verdicts: HashMap<usize, Verdict>,
}

impl RefereeLines {
    pub fn new(nonce: &str) -> Self {
        RefereeLines {
            nonce: nonce.to_string(),
            ready: false,
            done: false,
            verdicts: HashMap::new(),
        }
    }

    pub fn line(&mut self, line: &str) {
        let Some(json) = line.strip_prefix(&self.nonce) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            tracing::warn!(target: "docsmith::sandbox", "unparsable referee line: {json:.200}");
            return;
        };
        match v.get("event").and_then(|e| e.as_str()) {
            Some("ready") => self.ready = true,
            Some("done") => self.done = true,
            Some("verdict") => match serde_json::from_value::<Verdict>(v) {
                Ok(verdict) => {
                    self.verdicts.entry(verdict.item).or_insert(verdict);
                }
                Err(e) => tracing::warn!(target: "docsmith::sandbox", "bad verdict line: {e}"),
            },
            _ => {}
        }
    }
}

impl Verdict {
    /// The result of `test_id` from this verdict and the candidate's duration.
    pub fn into_result(self, test_id: &str, duration_ms: u64) -> TestResult {
        TestResult {
            test_id: test_id.to_string(),
            passed: self.passed,
            error_type: if self.passed { None } else { self.error_type },
            message: self.message,
            traceback: self.traceback,
            actual: self.actual,
            duration_ms,
            outcome: self.key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TestOrigin;

    fn tc(id: &str) -> TestCase {
        TestCase {
            id: id.into(),
            origin: TestOrigin::Docstring,
            call: "f()".into(),
            expected: "1".into(),
            raises: None,
            note: String::new(),
            options: Vec::new(),
        }
    }

    #[test]
    fn only_nonce_lines_for_known_tests_count_and_the_first_outcome_wins() {
        let tests = [tc("a"), tc("b")];
        let mut c = CandidateLines::new("N", &tests);
        c.line(r#"{"event":"ready"}"#);
        assert!(!c.ready);
        c.line(r#"N{"event":"ready"}"#);
        c.line(r#"N{"event":"outcome","test_id":"zz","outcome":{"kind":"value"}}"#);
        c.line(
            r#"N{"event":"outcome","test_id":"a","duration_ms":3,"outcome":{"kind":"timeout"}}"#,
        );
        c.line(r#"N{"event":"outcome","test_id":"a","outcome":{"kind":"value"}}"#);
        c.line("N{not json");
        assert!(c.ready);
        assert!(c.outcome("zz").is_none());
        assert_eq!(c.outcome("a").unwrap().kind(), Some("timeout"));
        let end = End::Exited {
            code: Some(0),
            signal: None,
        };
        let r = c.host_result(&tests[0], None, false, &end, 100).unwrap();
        assert_eq!(r.error_type.as_deref(), Some("Timeout"));
        assert_eq!(r.outcome.as_deref(), Some(TIMEOUT_KEY));
        let r = c.host_result(&tests[1], None, false, &end, 100).unwrap();
        assert_eq!(r.error_type.as_deref(), Some("NotRun"));
        assert!(!r.passed);
    }

    #[test]
    fn a_forged_verdict_on_the_candidate_channel_is_not_a_pass() {
        let tests = [tc("a")];
        let mut c = CandidateLines::new("N", &tests);
        c.line(r#"N{"event":"verdict","item":0,"passed":true}"#);
        c.line(r#"N{"event":"result","test_id":"a","passed":true,"duration_ms":0}"#);
        let end = End::Exited {
            code: Some(0),
            signal: None,
        };
        let r = c.host_result(&tests[0], None, false, &end, 100).unwrap();
        assert!(!r.passed);
    }
}
