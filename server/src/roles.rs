//! Prompt building and output parsing for each LLM role (planner, test designer,
//! developer, critic).
//!
//! Owns: the prompt templates, the JSON schemas of structured outputs, and the
//! defensive parsing of what a model replies. Must not know about the pipeline's
//! state machine, the store, the sandbox or any front end: each function takes
//! plain inputs and returns `CompletionRequest`s or parsed values.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::llm::{ChatMessage, CompletionRequest};
use crate::types::{Finding, TestCase, TestResult};

/// Completion-token caps per role (tokens). A 1.5B model at about 30 tokens/s
/// (FACTS.md) writes 600 tokens in about 20 s; larger caps mostly buy rambling.
pub const PLAN_MAX_TOKENS: u32 = 350;
/// See [`PLAN_MAX_TOKENS`].
pub const TESTS_MAX_TOKENS: u32 = 700;
/// See [`PLAN_MAX_TOKENS`].
pub const CODE_MAX_TOKENS: u32 = 900;
/// See [`PLAN_MAX_TOKENS`].
pub const CRITIQUE_MAX_TOKENS: u32 = 400;

/// What the stub looks like to every role: the function as the user wrote it.
#[derive(Debug, Clone)]
pub struct StubView {
    /// Function name (the entry point tests call).
    pub name: String,
    /// The stub's source text: decorators, signature, docstring, stub body.
    pub source: String,
    /// Top-level imports of the user's file, for context.
    pub imports: Vec<String>,
}

/// The planner's structured output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// One or two sentences: what the function must return for which input.
    #[serde(default)]
    pub understanding: String,
    /// Ordered implementation steps.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Edge cases the code and tests must cover.
    #[serde(default)]
    pub edge_cases: Vec<String>,
    /// Assumptions taken where the docstring is silent.
    #[serde(default)]
    pub assumptions: Vec<String>,
    /// A clarifying question, empty when the docstring is clear enough.
    #[serde(default)]
    pub question: String,
    /// Suggested answers to `question` (at most 4).
    #[serde(default)]
    pub options: Vec<String>,
}

impl Plan {
    /// The plan as short Markdown bullets for later prompts (about 50-200 tokens).
    pub fn brief(&self) -> String {
        let mut out = String::new();
        if !self.understanding.is_empty() {
            out.push_str(&format!("Goal: {}\n", self.understanding.trim()));
        }
        for (i, s) in self.steps.iter().enumerate() {
            out.push_str(&format!("{}. {}\n", i + 1, s.trim()));
        }
        if !self.edge_cases.is_empty() {
            out.push_str(&format!("Edge cases: {}\n", self.edge_cases.join("; ")));
        }
        if !self.assumptions.is_empty() {
            out.push_str(&format!("Assumptions: {}\n", self.assumptions.join("; ")));
        }
        out
    }
}

/// One answered (or assumed) clarifying question, fed back to the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clarification {
    pub question: String,
    pub answer: String,
}

/// A test case as the test designer writes it (before ids are assigned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesignedTest {
    pub call: String,
    #[serde(default)]
    pub expected: String,
    /// Exception type the call must raise (then `expected` is empty).
    #[serde(default)]
    pub raises: String,
    #[serde(default)]
    pub why: String,
}

#[derive(Debug, Deserialize)]
struct DesignedTests {
    #[serde(default)]
    tests: Vec<DesignedTest>,
}

/// The critic's diagnosis of a failing attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Critique {
    /// Why the code fails, in one or two sentences.
    #[serde(default)]
    pub root_cause: String,
    /// What the developer must change.
    #[serde(default)]
    pub instructions: String,
}

impl Critique {
    /// Critique text as stored and shown (one paragraph).
    pub fn text(&self) -> String {
        format!("{}\n{}", self.root_cause.trim(), self.instructions.trim())
            .trim()
            .to_string()
    }
}

/// The critic's verdict on one suspect generated test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestVerdict {
    pub id: String,
    /// True when the test contradicts the docstring (its expected value is wrong).
    pub test_is_wrong: bool,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct TestVerdicts {
    #[serde(default)]
    verdicts: Vec<TestVerdict>,
}

/// Why a model reply could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the model's reply is not valid JSON for the {what} schema: {detail}")]
    Json { what: &'static str, detail: String },
    #[error("the model's reply has no Python code defining `{name}`")]
    NoCode { name: String },
}

fn stub_block(stub: &StubView) -> String {
    let mut s = String::new();
    if !stub.imports.is_empty() {
        s.push_str(&stub.imports.join("\n"));
        s.push_str("\n\n");
    }
    s.push_str(stub.source.trim_end());
    format!("```python\n{s}\n```")
}

const PLANNER_LINE: &str = "You are the planner of a careful Python developer team.";
const TEST_DESIGNER_LINE: &str = "You are the test designer of a careful Python developer team.";
const DEVELOPER_LINE: &str =
    "You are an expert Python developer. You write correct, simple, standard-library-only code.";
const CRITIC_LINE: &str = "You are a senior Python reviewer.";
const JUDGE_LINE: &str = "You are a strict reviewer of test cases.";

/// Which prompt a system message opens: `planner`, `tests` (test designer),
/// `developer`, `judge` (suspect-test review) or `critic`; `unknown` otherwise.
/// Scripted providers in tests route on it.
pub fn prompt_kind(system_prompt: &str) -> &'static str {
    [
        (PLANNER_LINE, "planner"),
        (TEST_DESIGNER_LINE, "tests"),
        (DEVELOPER_LINE, "developer"),
        (JUDGE_LINE, "judge"),
        (CRITIC_LINE, "critic"),
    ]
    .into_iter()
    .find(|(line, _)| system_prompt.starts_with(line))
    .map_or("unknown", |(_, kind)| kind)
}

fn system(guidelines: &str, role_line: &str) -> ChatMessage {
    let g = guidelines.trim();
    if g.is_empty() {
        ChatMessage::system(role_line.to_string())
    } else {
        ChatMessage::system(format!("{role_line}\n\n{g}"))
    }
}

fn request(
    messages: Vec<ChatMessage>,
    max_tokens: u32,
    schema: Option<Value>,
) -> CompletionRequest {
    CompletionRequest {
        messages,
        temperature: 0.0,
        max_tokens,
        stop: Vec::new(),
        json_schema: schema,
        seed: 0,
    }
}

/// JSON schema of [`Plan`] (bounded arrays keep grammar-constrained output short).
pub fn plan_schema() -> Value {
    // Bounded strings and arrays: under grammar-constrained sampling a small model
    // otherwise fills the token budget with one endless string (seen with 1.5B).
    let text = |n: u32| json!({"type": "string", "maxLength": n});
    let strings = |n: u32, len: u32| json!({"type": "array", "items": text(len), "maxItems": n});
    json!({
        "type": "object",
        "properties": {
            "understanding": text(240),
            "steps": strings(5, 120),
            "edge_cases": strings(4, 100),
            "assumptions": strings(3, 120),
            "question": text(160),
            "options": strings(4, 60)
        },
        "required": ["understanding", "steps", "edge_cases", "assumptions", "question", "options"]
    })
}

/// Planner prompt: restate the task, list steps and edge cases, and ask a question
/// only when the docstring allows two reasonable readings with different results.
pub fn plan_request(
    stub: &StubView,
    guidelines: &str,
    answered: &[Clarification],
    may_ask: bool,
) -> CompletionRequest {
    let mut user = format!(
        "Plan the implementation of `{}`.\n\n{}\n",
        stub.name,
        stub_block(stub)
    );
    for c in answered {
        user.push_str(&format!(
            "\nQuestion asked: {}\nUser's answer: {}\n",
            c.question, c.answer
        ));
    }
    if may_ask {
        user.push_str(
            "\nIf and only if the docstring allows two reasonable readings that give different results, \
             put ONE short question in `question` with 2-4 suggested answers in `options`; otherwise leave \
             `question` empty and list what you assume in `assumptions`.\n",
        );
    } else {
        user.push_str(
            "\nDo not ask questions: leave `question` empty and state assumptions instead.\n",
        );
    }
    user.push_str("Reply with JSON only.");
    request(
        vec![system(guidelines, PLANNER_LINE), ChatMessage::user(user)],
        PLAN_MAX_TOKENS,
        Some(plan_schema()),
    )
}

/// JSON schema of the test designer's reply: `{"tests": [{"call", "expected", "why"}]}`.
pub fn tests_schema(max_tests: usize) -> Value {
    json!({
        "type": "object",
        "properties": {
            "tests": {
                "type": "array",
                "maxItems": max_tests,
                "items": {
                    "type": "object",
                    "properties": {
                        "call": {"type": "string", "maxLength": 200},
                        "expected": {"type": "string", "maxLength": 200},
                        "raises": {"type": "string", "maxLength": 40},
                        "why": {"type": "string", "maxLength": 80}
                    },
                    "required": ["call", "expected", "why"]
                }
            }
        },
        "required": ["tests"]
    })
}

/// Test designer prompt: new test cases as call/expected pairs, never contradicting
/// the docstring's own examples (which are listed so they are not repeated).
pub fn tests_request(
    stub: &StubView,
    guidelines: &str,
    plan: &Plan,
    examples: &[TestCase],
    max_tests: usize,
) -> CompletionRequest {
    let mut user = format!("Function under test:\n\n{}\n\n", stub_block(stub));
    let brief = plan.brief();
    if !brief.is_empty() {
        user.push_str(&format!("Plan:\n{brief}\n"));
    }
    if !examples.is_empty() {
        user.push_str("The docstring's own examples (already tests; do not repeat them):\n");
        for e in examples {
            user.push_str(&format!(
                "- {} == {}\n",
                e.call.replace('\n', "; "),
                e.expected
            ));
        }
        user.push('\n');
    }
    user.push_str(&format!(
        "Write up to {max_tests} NEW test cases covering edge cases and typical inputs. Each has `call` \
         (a Python expression calling `{}`), `expected` (a Python literal: the exact value it must return; \
         work it out step by step from the docstring before writing it), `raises` (an exception type the call must raise, \
         else empty) and `why`. Reply with JSON only.",
        stub.name
    ));
    request(
        vec![
            system(guidelines, TEST_DESIGNER_LINE),
            ChatMessage::user(user),
        ],
        TESTS_MAX_TOKENS,
        Some(tests_schema(max_tests)),
    )
}

/// What the developer sees on a rewrite.
#[derive(Debug, Clone)]
pub struct RewriteContext<'a> {
    /// The previous attempt's code.
    pub previous_code: &'a str,
    /// Failing test cases with their results (at most a few are shown).
    pub failures: Vec<(&'a TestCase, &'a TestResult)>,
    /// Error findings from validation or the security check.
    pub findings: &'a [Finding],
    /// The critic's diagnosis.
    pub critique: &'a str,
    /// The user's feedback, when this round was started by it.
    pub feedback: Option<&'a str>,
    /// 1-based number of the attempt being written (2 for the first rewrite).
    pub attempt: u32,
}

/// Sampling temperature of a developer attempt: greedy for the first, then rising
/// (0.3, 0.45, ... at most 0.8). Greedy rewrites of a near-identical prompt tend to
/// repeat the same wrong code; a little randomness buys a different attempt.
pub fn rewrite_temperature(attempt: u32) -> f32 {
    if attempt <= 1 {
        0.0
    } else {
        (0.3 + 0.15 * (attempt - 2) as f32).min(0.8)
    }
}

/// Developer prompt: the whole function in one ```python block; on a rewrite, the
/// previous code, what failed, and the critic's instructions.
pub fn code_request(
    stub: &StubView,
    guidelines: &str,
    plan: &Plan,
    rewrite: Option<&RewriteContext<'_>>,
) -> CompletionRequest {
    let mut user = format!(
        "Implement this Python function:\n\n{}\n\n",
        stub_block(stub)
    );
    let brief = plan.brief();
    if !brief.is_empty() {
        user.push_str(&format!("Plan:\n{brief}\n"));
    }
    if let Some(rw) = rewrite {
        user.push_str(&format!(
            "Your previous version:\n```python\n{}\n```\n\n",
            rw.previous_code.trim_end()
        ));
        if let Some(fb) = rw.feedback {
            user.push_str(&format!("The user reviewed it and asks: {fb}\n\n"));
        }
        user.push_str(&describe_failures(&rw.failures, 4));
        for f in rw.findings.iter().take(5) {
            user.push_str(&format!("- finding {}: {}\n", f.rule, f.message));
        }
        if !rw.critique.trim().is_empty() {
            user.push_str(&format!("\nReviewer's diagnosis: {}\n", rw.critique.trim()));
        }
        user.push_str("\nFix the code. ");
    }
    user.push_str(&format!(
        "Reply with the complete function `{}` (same signature, imports it needs above it) in one ```python block, no explanations, no usage examples.",
        stub.name
    ));
    let mut req = request(
        vec![system(guidelines, DEVELOPER_LINE), ChatMessage::user(user)],
        CODE_MAX_TOKENS,
        None,
    );
    if let Some(rw) = rewrite {
        req.temperature = rewrite_temperature(rw.attempt);
        req.seed = rw.attempt;
    }
    req
}

/// Bullet lines describing failing test cases: call, expected, and what happened.
pub fn describe_failures(failures: &[(&TestCase, &TestResult)], max: usize) -> String {
    let mut s = String::new();
    if failures.is_empty() {
        return s;
    }
    s.push_str("Failing tests:\n");
    for (case, res) in failures.iter().take(max) {
        let expected = match &case.raises {
            Some(e) => format!("raises {e}"),
            None => case.expected.clone(),
        };
        let got = match (&res.error_type, &res.actual) {
            (Some(t), _) if t != "AssertionError" => {
                format!("{t}: {}", res.message.clone().unwrap_or_default())
            }
            (_, Some(a)) => a.clone(),
            _ => res.message.clone().unwrap_or_default(),
        };
        s.push_str(&format!(
            "- `{}` expected {} but got {}\n",
            case.call.replace('\n', "; "),
            truncate(&expected, 200),
            truncate(&got, 300)
        ));
    }
    if failures.len() > max {
        s.push_str(&format!("- ... and {} more\n", failures.len() - max));
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// JSON schema of [`Critique`].
pub fn critique_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"root_cause": {"type": "string", "maxLength": 300}, "instructions": {"type": "string", "maxLength": 400}},
        "required": ["root_cause", "instructions"]
    })
}

/// Critic prompt: diagnose why the attempt fails (tests, findings or the user's feedback).
pub fn critique_request(
    stub: &StubView,
    guidelines: &str,
    code: &str,
    failures: &[(&TestCase, &TestResult)],
    findings: &[Finding],
    feedback: Option<&str>,
) -> CompletionRequest {
    let mut user = format!(
        "Specification:\n\n{}\n\nCandidate:\n```python\n{}\n```\n\n",
        stub_block(stub),
        code.trim_end()
    );
    user.push_str(&describe_failures(failures, 4));
    for f in findings.iter().take(5) {
        user.push_str(&format!(
            "- finding {} (line {:?}): {}\n",
            f.rule, f.line, f.message
        ));
    }
    if let Some(fb) = feedback {
        user.push_str(&format!("\nThe user's feedback on this candidate: {fb}\n"));
    }
    user.push_str(
        "\nFind the root cause (not the symptom) and say precisely what to change. Never suggest special-casing test inputs. Reply with JSON only.",
    );
    request(
        vec![system(guidelines, CRITIC_LINE), ChatMessage::user(user)],
        CRITIQUE_MAX_TOKENS,
        Some(critique_schema()),
    )
}

/// JSON schema of the critic's verdicts on suspect generated tests.
pub fn verdicts_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "verdicts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "maxLength": 20},
                        "test_is_wrong": {"type": "boolean"},
                        "reason": {"type": "string", "maxLength": 160}
                    },
                    "required": ["id", "test_is_wrong", "reason"]
                }
            }
        },
        "required": ["verdicts"]
    })
}

/// Critic prompt for suspect tests: the candidate passes every docstring example
/// but fails these generated tests; for each, is the test's expected value wrong?
pub fn judge_tests_request(
    stub: &StubView,
    guidelines: &str,
    suspects: &[(&TestCase, &TestResult)],
) -> CompletionRequest {
    let mut user = format!(
        "Specification:\n\n{}\n\nA candidate implementation passes every example in the docstring but fails these generated tests:\n",
        stub_block(stub)
    );
    for (case, res) in suspects {
        user.push_str(&format!(
            "- id {}: `{}` expects {}, candidate returned {}\n",
            case.id,
            case.call.replace('\n', "; "),
            truncate(&case.expected, 200),
            truncate(
                res.actual
                    .as_deref()
                    .or(res.message.as_deref())
                    .unwrap_or("an error"),
                200
            )
        ));
    }
    user.push_str(
        "\nFor each test, work out from the docstring alone what the call must return. Set `test_is_wrong` to true \
         only if the test's expected value contradicts the docstring. Reply with JSON only.",
    );
    request(
        vec![system(guidelines, JUDGE_LINE), ChatMessage::user(user)],
        CRITIQUE_MAX_TOKENS,
        Some(verdicts_schema()),
    )
}

/// The message asking for a corrected reply after a parse failure (one repair retry).
pub fn repair_messages(
    original: &CompletionRequest,
    reply: &str,
    error: &ParseError,
) -> CompletionRequest {
    let mut req = original.clone();
    req.messages.push(ChatMessage::assistant(reply.to_string()));
    req.messages.push(ChatMessage::user(format!(
        "That reply could not be used ({error}). Reply again with only the corrected output."
    )));
    req
}

/// Extracts the first balanced JSON object from a reply (models sometimes wrap
/// JSON in prose or code fences) and parses it.
pub fn parse_json_object(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Ok(v);
    }
    let start = t
        .find('{')
        .ok_or_else(|| "no JSON object found".to_string())?;
    let mut depth = 0i32;
    let mut in_str = false;
    let mut esc = false;
    for (i, ch) in t[start..].char_indices() {
        if in_str {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let slice = &t[start..start + i + 1];
                    return serde_json::from_str(slice).map_err(|e| e.to_string());
                }
            }
            _ => {}
        }
    }
    Err("unterminated JSON object".to_string())
}

fn parse_as<T: for<'de> Deserialize<'de>>(text: &str, what: &'static str) -> Result<T, ParseError> {
    let v = parse_json_object(text).map_err(|detail| ParseError::Json { what, detail })?;
    serde_json::from_value(v).map_err(|e| ParseError::Json {
        what,
        detail: e.to_string(),
    })
}

/// Parses the planner's reply. Options beyond 4 are cut; a question with no text is cleared.
pub fn parse_plan(text: &str) -> Result<Plan, ParseError> {
    let mut p: Plan = parse_as(text, "plan")?;
    p.question = p.question.trim().to_string();
    p.options.retain(|o| !o.trim().is_empty());
    p.options.truncate(4);
    Ok(p)
}

/// Parses the test designer's reply into raw (call, expected) pairs.
pub fn parse_tests(text: &str) -> Result<Vec<DesignedTest>, ParseError> {
    Ok(parse_as::<DesignedTests>(text, "tests")?.tests)
}

/// Parses the critic's diagnosis.
pub fn parse_critique(text: &str) -> Result<Critique, ParseError> {
    parse_as(text, "critique")
}

/// Parses the critic's verdicts on suspect tests.
pub fn parse_verdicts(text: &str) -> Result<Vec<TestVerdict>, ParseError> {
    Ok(parse_as::<TestVerdicts>(text, "verdicts")?.verdicts)
}

/// Extracts the developer's code: the fenced block, which must define `def name(`.
pub fn parse_code(text: &str, name: &str) -> Result<String, ParseError> {
    let code = crate::python::extract_code_block(text);
    let needle = format!("def {name}(");
    if code.contains(&needle) {
        Ok(code)
    } else {
        Err(ParseError::NoCode {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> StubView {
        StubView {
            name: "add".into(),
            source: "def add(a, b):\n    \"\"\"Add.\n    >>> add(1, 2)\n    3\n    \"\"\"\n".into(),
            imports: vec![],
        }
    }

    #[test]
    fn json_is_found_inside_prose_and_fences() {
        let v = parse_json_object("Sure!\n```json\n{\"a\": \"}\", \"b\": {\"c\": 1}}\n```\nDone")
            .unwrap();
        assert_eq!(v["a"], "}");
        assert_eq!(v["b"]["c"], 1);
        assert!(parse_json_object("no json here").is_err());
        assert!(parse_json_object("{\"a\": 1").is_err());
    }

    #[test]
    fn plan_parsing_is_lenient_about_missing_fields_and_strict_about_types() {
        let p = parse_plan(
            r#"{"understanding": "sum", "question": "  ", "options": ["", "x","a","b","c","d"]}"#,
        )
        .unwrap();
        assert_eq!(p.understanding, "sum");
        assert!(p.question.is_empty());
        assert_eq!(p.options, vec!["x", "a", "b", "c"]);
        assert!(parse_plan(r#"{"steps": "not a list"}"#).is_err());
    }

    #[test]
    fn prompts_carry_the_stub_and_the_failures() {
        let tc = TestCase {
            id: "ex1".into(),
            origin: crate::types::TestOrigin::Docstring,
            call: "add(1, 2)".into(),
            expected: "3".into(),
            raises: None,
            note: String::new(),
        };
        let res = TestResult {
            test_id: "ex1".into(),
            passed: false,
            error_type: Some("AssertionError".into()),
            message: Some("expected 3, got 4".into()),
            traceback: None,
            actual: Some("4".into()),
            duration_ms: 1,
            outcome: None,
        };
        let rw = RewriteContext {
            previous_code: "def add(a, b):\n    return a + b + 1\n",
            failures: vec![(&tc, &res)],
            findings: &[],
            critique: "off by one",
            feedback: Some("use plain addition"),
            attempt: 2,
        };
        let req = code_request(&stub(), "GUIDE", &Plan::default(), Some(&rw));
        let user = &req.messages[1].content;
        assert!(req.messages[0].content.contains("GUIDE"));
        assert!(user.contains("def add(a, b):"));
        assert!(user.contains("`add(1, 2)` expected 3 but got 4"));
        assert!(user.contains("off by one"));
        assert!(user.contains("use plain addition"));
        assert!(req.json_schema.is_none());
        let preq = plan_request(&stub(), "", &[], false);
        assert!(preq.json_schema.is_some());
        assert!(preq.messages[1].content.contains("Do not ask questions"));
    }

    #[test]
    fn code_must_define_the_function() {
        assert!(parse_code("```python\ndef add(a, b):\n    return a + b\n```", "add").is_ok());
        assert!(matches!(
            parse_code("```python\ndef sub(a, b):\n    return a - b\n```", "add"),
            Err(ParseError::NoCode { .. })
        ));
    }
}
