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

/// Completion-token caps per role (tokens). A 1.5B model at about 18 tokens/s
/// on one core (`bench/results/inference/`) writes 500 tokens in about 28 s;
/// larger caps mostly buy rambling.
pub const PLAN_MAX_TOKENS: u32 = 250;
/// See [`PLAN_MAX_TOKENS`].
pub const TESTS_MAX_TOKENS: u32 = 500;
/// See [`PLAN_MAX_TOKENS`]. Also bounds a runaway sample in a batch of candidates.
pub const CODE_MAX_TOKENS: u32 = 768;
/// See [`PLAN_MAX_TOKENS`].
pub const CRITIQUE_MAX_TOKENS: u32 = 300;

/// What the stub looks like to every role: the function as the user wrote it.
#[derive(Debug, Clone)]
pub struct StubView {
    /// Function name (the entry point tests call).
    pub name: String,
    /// The stub's source text: decorators, signature, docstring, stub body.
    pub source: String,
    /// Top-level imports of the user's file, for context.
    pub imports: Vec<String>,
    /// Outlines of what the function may use (this module's other names, the
    /// project names it imports), shown in a block of their own before the
    /// stub's block ([`CONTEXT_LINE`]); empty for none (`python::context`).
    pub context: String,
    /// For a method: its class's outline with the method whole, shown
    /// instead of `source`; and the class's name.
    pub enclosing: Option<(String, String)>,
    /// The function without its body (`python::function_head`: decorators,
    /// signature, docstring, at column 0); a method's developer reply is
    /// prefilled with it ([`code_request`]). Empty: unknown.
    pub head: String,
    /// What the workspace remembers for this task (lessons, past feedback,
    /// fixed failures; one `- ` line each, `store::memory`), shown to the
    /// developer and the planner in a block of its own after the stub
    /// ([`MEMORY_LINE`]); empty for none.
    pub memory: String,
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

/// The test designer's reply: test cases and the assumptions behind them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DesignedTests {
    /// What the designer assumed where the docstring is silent (shown in review).
    #[serde(default)]
    pub assumptions: Vec<String>,
    /// The calls, with expected values where the designer was sure.
    #[serde(default)]
    pub tests: Vec<DesignedTest>,
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

/// Why a model reply could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the model's reply is not valid JSON for the {what} schema: {detail}")]
    Json { what: &'static str, detail: String },
    #[error("the model's reply has no Python code defining `{name}`")]
    NoCode { name: String },
}

/// The stub in a code block (the file's imports, then the function, or for
/// a method its class's outline), preceded, when there is context, by a
/// block of what it may use. In one block with the stub, the 1.5B model
/// copied the whole context (other stubs included) into its reply and ran
/// out of tokens before the method (shop fixture, `Inventory.add`).
fn stub_block(stub: &StubView) -> String {
    let mut out = String::new();
    if !stub.context.trim().is_empty() {
        out.push_str(&format!(
            "{CONTEXT_LINE}\n```python\n{}\n```\n\n",
            stub.context.trim_end()
        ));
    }
    let mut s = String::new();
    if !stub.imports.is_empty() {
        s.push_str(&stub.imports.join("\n"));
        s.push_str("\n\n");
    }
    match &stub.enclosing {
        Some((_, class)) => s.push_str(class.trim_end()),
        None => s.push_str(stub.source.trim_end()),
    }
    out.push_str(&format!("```python\n{s}\n```"));
    out
}

/// Opens the memory block: what this workspace's past says about the task.
/// Holds none of the phrases [`prompt_kind`] routes on.
pub const MEMORY_LINE: &str =
    "Remembered from this workspace (the user's standing preferences first, then earlier feedback and fixes on similar functions; follow the preferences):";

/// The memory block and a blank line, or nothing when there is no memory.
fn memory_block(stub: &StubView) -> String {
    if stub.memory.trim().is_empty() {
        return String::new();
    }
    format!("{MEMORY_LINE}\n{}\n\n", stub.memory.trim_end())
}

/// Opens the context block: what the stub may use, not code to rewrite.
pub const CONTEXT_LINE: &str =
    "Already defined in the module and the project (bodies elided; use them, do not repeat them):";

/// The one system message every role shares, so that the chat-templated
/// prefix (system message + the stub, which opens every user message) is the
/// same for a task's calls and the local provider reuses its KV cache.
pub const SYSTEM_LINE: &str = "You are an expert Python programmer.";

/// Phrases that open each role's instructions; [`prompt_kind`] finds them.
const PLAN_MARK: &str = "Read the specification of `";
const TESTS_MARK: &str = "Design test inputs for `";
const CODE_MARK: &str = "Complete the function `";
/// [`CODE_MARK`] for a method (`Complete the method `add` of class ...`).
const METHOD_CODE_MARK: &str = "Complete the method `";
const REPAIR_MARK: &str = "An earlier implementation of `";
const CRITIC_MARK: &str = "Explain why this implementation of `";

/// Which role a request is for, from its text (all messages concatenated, or
/// only the user message): `planner`, `tests` (test designer), `developer`
/// (first candidates and repairs) or `critic`; `unknown` otherwise. Scripted
/// providers in tests route on it.
pub fn prompt_kind(text: &str) -> &'static str {
    [
        (PLAN_MARK, "planner"),
        (TESTS_MARK, "tests"),
        (CODE_MARK, "developer"),
        (METHOD_CODE_MARK, "developer"),
        (REPAIR_MARK, "developer"),
        (CRITIC_MARK, "critic"),
    ]
    .into_iter()
    .find(|(mark, _)| text.contains(mark))
    .map_or("unknown", |(_, kind)| kind)
}

/// The kind of a whole request (see [`prompt_kind`]).
pub fn request_kind(req: &CompletionRequest) -> &'static str {
    let all: String = req
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    prompt_kind(&all)
}

/// System message plus a user message that starts with the stub. Role
/// guidelines, when given, follow the stub (so the shared prefix stays shared).
fn messages(stub: &StubView, guidelines: &str, instructions: String) -> Vec<ChatMessage> {
    let g = guidelines.trim();
    let mut user = stub_block(stub);
    user.push_str("\n\n");
    if !g.is_empty() {
        user.push_str(g);
        user.push_str("\n\n");
    }
    user.push_str(&instructions);
    vec![ChatMessage::system(SYSTEM_LINE), ChatMessage::user(user)]
}

fn request(
    messages: Vec<ChatMessage>,
    max_tokens: u32,
    schema: Option<Value>,
) -> CompletionRequest {
    CompletionRequest {
        max_tokens,
        json_schema: schema,
        ..CompletionRequest::new(messages)
    }
}

/// JSON schema of [`Plan`] (bounded strings and arrays keep grammar-constrained output short).
pub fn plan_schema() -> Value {
    // Bounded strings and arrays: under grammar-constrained sampling a small model
    // otherwise fills the token budget with one endless string (seen with 1.5B).
    let text = |n: u32| json!({"type": "string", "maxLength": n});
    let strings = |n: u32, len: u32| json!({"type": "array", "items": text(len), "maxItems": n});
    json!({
        "type": "object",
        "properties": {
            "understanding": text(200),
            "assumptions": strings(3, 120),
            "question": text(160),
            "options": strings(4, 60)
        },
        "required": ["understanding", "assumptions", "question", "options"]
    })
}

/// Planner prompt (interactive tasks): restate the task, state assumptions,
/// and ask one question only when the docstring allows two reasonable
/// readings with different results. Its text never reaches the code prompt
/// (the dev set showed a plan in the developer prompt costs tasks).
pub fn plan_request(
    stub: &StubView,
    guidelines: &str,
    answered: &[Clarification],
    may_ask: bool,
) -> CompletionRequest {
    let mut ins = memory_block(stub);
    ins.push_str(&format!(
        "{PLAN_MARK}{}` above and say in one sentence what it must return.\n",
        stub.name
    ));
    for c in answered {
        ins.push_str(&format!(
            "Question asked: {}\nUser's answer: {}\n",
            c.question, c.answer
        ));
    }
    if may_ask {
        ins.push_str(
            "If and only if the docstring allows two reasonable readings that give different results, \
             put ONE short question in `question` with 2-4 suggested answers in `options`; otherwise leave \
             `question` empty. List what you assume where the docstring is silent in `assumptions`.\n",
        );
    } else {
        ins.push_str(
            "Do not ask questions: leave `question` empty and state assumptions instead.\n",
        );
    }
    ins.push_str("Reply with JSON only.");
    request(
        messages(stub, guidelines, ins),
        PLAN_MAX_TOKENS,
        Some(plan_schema()),
    )
}

/// JSON schema of the test designer's reply:
/// `{"assumptions": [..], "tests": [{"call", "expected"}]}`.
pub fn tests_schema(max_tests: usize) -> Value {
    json!({
        "type": "object",
        "properties": {
            "assumptions": {
                "type": "array",
                "maxItems": 2,
                "items": {"type": "string", "maxLength": 100}
            },
            "tests": {
                "type": "array",
                "maxItems": max_tests,
                "items": {
                    "type": "object",
                    "properties": {
                        "call": {"type": "string", "maxLength": 120},
                        "expected": {"type": "string", "maxLength": 80}
                    },
                    "required": ["call", "expected"]
                }
            }
        },
        "required": ["assumptions", "tests"]
    })
}

/// Test designer prompt: mostly *inputs*. Calls that exercise typical and
/// edge cases within the docstring's preconditions, each with the expected
/// value only where it can be worked out with certainty (else empty). The
/// inputs let candidates vote by behaviour; the expected values only break
/// ties. The docstring's examples are listed so they are not repeated.
pub fn tests_request(
    stub: &StubView,
    guidelines: &str,
    examples: &[TestCase],
    answered: &[Clarification],
    max_tests: usize,
) -> CompletionRequest {
    let mut ins = format!("{TESTS_MARK}{}`.\n", stub.name);
    for c in answered {
        ins.push_str(&format!(
            "The user answered \"{}\" with: {}\n",
            c.question, c.answer
        ));
    }
    if !examples.is_empty() {
        ins.push_str("Already covered by the docstring (do not repeat):\n");
        for e in examples.iter().take(8) {
            ins.push_str(&format!("- {}\n", e.call.replace('\n', "; ")));
        }
    }
    // A method's call needs its object: generated calls of `inv.add(...)`
    // with no `inv` raised NameError in every candidate (shop fixture).
    let call_form = match &stub.enclosing {
        Some((class, _)) => format!(
            "`call` is one line that creates what it needs and ends with the call of `{}`: Python statements \
             separated by `; `, e.g. `obj = {class}(); obj.{}(...)`",
            stub.name, stub.name
        ),
        None => format!("`call` is one Python expression calling `{}`", stub.name),
    };
    ins.push_str(&format!(
        "Write {max_tests} NEW calls of `{}` with valid, varied arguments: typical inputs, boundaries, empty \
         or single-element inputs where the docstring allows them. Never break a precondition the docstring \
         states. {call_form}. `expected` is the exact return value as a \
         Python literal ONLY when you are certain of it; otherwise an empty string. List what you assume \
         where the docstring is silent in `assumptions`. Reply with JSON only.",
        stub.name
    ));
    request(
        messages(stub, guidelines, ins),
        TESTS_MAX_TOKENS,
        Some(tests_schema(max_tests)),
    )
}

/// How the first candidates are asked for: prompt variants measured on the
/// dev set (`bench/results/`); [`CodePrompt::Plain`] is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePrompt {
    /// The stub in a code block, then one instruction: complete the function.
    Plain,
    /// The stub, then "write a function that satisfies this specification;
    /// the docstring's examples must hold".
    Spec,
    /// The loop's earlier developer prompt: the developer's guidelines
    /// (`rag_contexts/coding.md` and `security.md`, see
    /// `rag::Concern::for_role`) in the prompt.
    Guided,
}

impl CodePrompt {
    /// `plain`, `spec` or `guided`.
    pub fn parse(s: &str) -> Option<CodePrompt> {
        match s {
            "plain" => Some(CodePrompt::Plain),
            "spec" => Some(CodePrompt::Spec),
            "guided" => Some(CodePrompt::Guided),
            _ => None,
        }
    }
}

/// What the developer sees in a repair round: facts, not prose.
#[derive(Debug, Clone)]
pub struct Repair<'a> {
    /// The candidate being repaired (the closest one, or the rejected proposal).
    pub code: &'a str,
    /// Its failing ground-truth test cases with their results (a few are shown).
    pub failures: Vec<(&'a TestCase, &'a TestResult)>,
    /// Error findings from validation or the security check.
    pub findings: &'a [Finding],
    /// The user's feedback, when the round was started by a rejection.
    pub feedback: Option<&'a str>,
    /// The critic's diagnosis, when one was asked for.
    pub diagnosis: Option<&'a str>,
}

/// Ends a developer reply at the code block's closing fence: what follows is
/// prose the loop never reads (on the dev set replies ran to 384 tokens, of
/// which the code was about half). An opening fence (```` ```python ````)
/// does not match.
pub const CODE_STOP: &str = "\n```\n";

/// Developer prompt for one round of candidates: the stub and a plain
/// instruction (no guidelines, no plan: the strongest single shot measured
/// on the dev set), or in a repair round the closest candidate with the
/// failing examples' input, expected and actual value, and the user's
/// feedback. The caller sets [`CompletionRequest::samples`] for k candidates.
pub fn code_request(
    stub: &StubView,
    style: CodePrompt,
    guidelines: &str,
    repair: Option<&Repair<'_>>,
) -> CompletionRequest {
    let (mark, target, reply) = match &stub.enclosing {
        Some((class, _)) => (
            METHOD_CODE_MARK,
            format!("{}` of class `{class}", stub.name),
            format!(
                "Reply with the complete method `{}` (same signature and decorators, with the imports it needs; not the rest of the class) in one ```python block.",
                stub.name
            ),
        ),
        None => (
            CODE_MARK,
            stub.name.clone(),
            format!(
                "Reply with the complete function `{}` (same signature, with the imports it needs) in one ```python block.",
                stub.name
            ),
        ),
    };
    let Some(rp) = repair else {
        let (guide, ins) = match style {
            CodePrompt::Plain => ("", format!("{mark}{target}`. {reply}")),
            CodePrompt::Spec => (
                "",
                format!(
                    "{mark}{target}` so that it satisfies this specification; every example in the docstring must hold. {reply}"
                ),
            ),
            CodePrompt::Guided => (
                guidelines,
                format!("{mark}{target}`. {reply} No explanations, no usage examples."),
            ),
        };
        let ins = memory_block(stub) + &ins;
        return code_reply(
            stub,
            request(messages(stub, guide, ins), CODE_MAX_TOKENS, None),
        );
    };
    // With feedback the user speaks about that code, so it is shown. Without,
    // only the facts: shown the wrong code, the 1.5B model copied it back in
    // every sample of a repair round (HumanEval/10: 5 of 5 samples identical),
    // so a repair restarts from the stub with the failures as warnings.
    let mut ins = memory_block(stub);
    ins.push_str(&match rp.feedback {
        Some(fb) => format!(
            "{REPAIR_MARK}{}` was reviewed:\n```python\n{}\n```\nThe user says: {fb}\n",
            stub.name,
            rp.code.trim_end()
        ),
        None => format!("{REPAIR_MARK}{}` (not shown) was wrong.\n", stub.name),
    });
    ins.push_str(&describe_failures(&rp.failures, 3));
    for f in rp.findings.iter().take(5) {
        ins.push_str(&format!("- finding {}: {}\n", f.rule, f.message));
    }
    if let Some(d) = rp.diagnosis.filter(|d| !d.trim().is_empty()) {
        ins.push_str(&format!("Reviewer's diagnosis: {}\n", d.trim()));
    }
    ins.push_str(&format!(
        "\n{mark}{target}` correctly, following the docstring. {reply}"
    ));
    code_reply(
        stub,
        request(messages(stub, "", ins), CODE_MAX_TOKENS, None),
    )
}

/// A developer request's reply shape: it ends at the code block's closing
/// fence ([`CODE_STOP`]), and for a method it starts prefilled with the
/// method's head (`StubView::head`) in a ```` ```python ```` block. Asked for
/// the method alone, the 1.5B model still rewrote the whole class in all 5
/// method calls recorded here (298 to 510 tokens, 56 to 71 s each: other
/// methods' docstrings copied back); begun at the method's `def`, it writes
/// the body. On the shop fixture's four methods (2026-12-08, 2 cores) the
/// developer's completion tokens per task went from 298-4722 to 9-327 and
/// the wall time from 20-145 s to 10-37 s, with the same outcomes. The same
/// head is kept by `python::splice` anyway. Plain functions are not
/// prefilled: on the dev set it was 21% faster but passed 70/82 against
/// 72/82 (`bench/results/dev-loop-function-prefill`).
fn code_reply(stub: &StubView, mut req: CompletionRequest) -> CompletionRequest {
    req.stop = vec![CODE_STOP.to_string()];
    if stub.enclosing.is_some() && !stub.head.is_empty() {
        req.prefill = format!("```python\n{}\n", stub.head);
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

/// Critic prompt: diagnose why a candidate fails (its failing examples,
/// findings, or the user's feedback). The loop asks it only to explain a
/// result it could not fix (shown in the review); repairs get facts.
pub fn critique_request(
    stub: &StubView,
    guidelines: &str,
    code: &str,
    failures: &[(&TestCase, &TestResult)],
    findings: &[Finding],
    feedback: Option<&str>,
) -> CompletionRequest {
    let mut ins = format!(
        "{CRITIC_MARK}{}` fails:\n```python\n{}\n```\n",
        stub.name,
        code.trim_end()
    );
    ins.push_str(&describe_failures(failures, 4));
    for f in findings.iter().take(5) {
        ins.push_str(&format!(
            "- finding {} (line {:?}): {}\n",
            f.rule, f.line, f.message
        ));
    }
    if let Some(fb) = feedback {
        ins.push_str(&format!("The user's feedback on it: {fb}\n"));
    }
    ins.push_str(
        "Find the root cause (not the symptom) and say precisely what to change. Never suggest special-casing test inputs. Reply with JSON only.",
    );
    request(
        messages(stub, guidelines, ins),
        CRITIQUE_MAX_TOKENS,
        Some(critique_schema()),
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

/// Parses the test designer's reply: raw (call, expected) pairs and assumptions.
pub fn parse_tests(text: &str) -> Result<DesignedTests, ParseError> {
    parse_as::<DesignedTests>(text, "tests")
}

/// Parses the critic's diagnosis.
pub fn parse_critique(text: &str) -> Result<Critique, ParseError> {
    parse_as(text, "critique")
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
            context: String::new(),
            enclosing: None,
            head: "def add(a, b):\n    \"\"\"Add.\n    >>> add(1, 2)\n    3\n    \"\"\"".into(),
            memory: String::new(),
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
            options: Vec::new(),
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
        let rp = Repair {
            code: "def add(a, b):\n    return a + b + 1\n",
            failures: vec![(&tc, &res)],
            findings: &[],
            feedback: Some("use plain addition"),
            diagnosis: Some("off by one"),
        };
        let req = code_request(&stub(), CodePrompt::Plain, "GUIDE", Some(&rp));
        let user = &req.messages[1].content;
        assert!(
            !user.contains("GUIDE"),
            "repairs carry facts, not guidelines"
        );
        assert!(user.starts_with("```python\ndef add(a, b):"), "{user}");
        assert!(user.contains("`add(1, 2)` expected 3 but got 4"));
        assert!(user.contains("off by one"));
        assert!(user.contains("use plain addition"));
        assert!(
            user.contains("a + b + 1"),
            "feedback is about the shown code"
        );
        let facts_only = Repair {
            feedback: None,
            ..rp.clone()
        };
        let req = code_request(&stub(), CodePrompt::Plain, "", Some(&facts_only));
        let user = &req.messages[1].content;
        assert!(
            !user.contains("a + b + 1"),
            "a repair is not shown the wrong code: {user}"
        );
        assert!(user.contains("`add(1, 2)` expected 3 but got 4"));
        assert!(req.json_schema.is_none());
        assert_eq!(request_kind(&req), "developer");
        let plain = code_request(&stub(), CodePrompt::Plain, "GUIDE", None);
        assert!(!plain.messages[1].content.contains("GUIDE"));
        assert_eq!(plain.stop, vec![CODE_STOP.to_string()]);
        assert!(
            !"```python\n".contains(CODE_STOP),
            "an opening fence does not stop"
        );
        let guided = code_request(&stub(), CodePrompt::Guided, "GUIDE", None);
        assert!(guided.messages[1].content.contains("GUIDE"));
        let preq = plan_request(&stub(), "", &[], false);
        assert!(preq.json_schema.is_some());
        assert!(preq.messages[1].content.contains("Do not ask questions"));
        assert_eq!(request_kind(&preq), "planner");
        let treq = tests_request(&stub(), "", std::slice::from_ref(&tc), &[], 6);
        assert_eq!(request_kind(&treq), "tests");
        assert!(treq.messages[1].content.contains("- add(1, 2)"));
    }

    #[test]
    fn every_role_shares_the_system_message_and_the_stub_prefix() {
        let a = code_request(&stub(), CodePrompt::Plain, "", None);
        let b = tests_request(&stub(), "", &[], &[], 6);
        let c = plan_request(&stub(), "", &[], true);
        assert_eq!(a.messages[0], b.messages[0]);
        assert_eq!(a.messages[0], c.messages[0]);
        let prefix = stub_block(&stub());
        for r in [&a, &b, &c] {
            assert!(r.messages[1].content.starts_with(&prefix));
        }
    }

    #[test]
    fn memory_is_a_block_of_its_own_for_the_developer_and_the_planner() {
        let mut with = stub();
        with.memory = "- use pathlib, not os.path\n".into();
        let block = format!("{MEMORY_LINE}\n- use pathlib, not os.path\n\n");
        let plain = code_request(&with, CodePrompt::Plain, "", None);
        let user = &plain.messages[1].content;
        assert!(
            user.starts_with(&stub_block(&with)),
            "the shared prefix stays"
        );
        assert!(
            user.contains(&format!("```\n\n{block}Complete the function `add`")),
            "{user}"
        );
        assert_eq!(request_kind(&plain), "developer");
        let rp = Repair {
            code: "def add(a, b):\n    return 0\n",
            failures: vec![],
            findings: &[],
            feedback: Some("wrong"),
            diagnosis: None,
        };
        let repair = code_request(&with, CodePrompt::Plain, "", Some(&rp));
        assert!(repair.messages[1].content.contains(&block));
        assert_eq!(request_kind(&repair), "developer");
        let plan = plan_request(&with, "", &[], true);
        assert!(plan.messages[1].content.contains(&block));
        assert_eq!(request_kind(&plan), "planner");
        // The test designer is not shown it, and no memory means no block.
        assert!(!tests_request(&with, "", &[], &[], 6).messages[1]
            .content
            .contains(MEMORY_LINE));
        assert!(
            !code_request(&stub(), CodePrompt::Plain, "", None).messages[1]
                .content
                .contains(MEMORY_LINE)
        );
        assert_eq!(prompt_kind(MEMORY_LINE), "unknown");
    }

    #[test]
    fn code_must_define_the_function() {
        assert!(parse_code("```python\ndef add(a, b):\n    return a + b\n```", "add").is_ok());
        // A reply cut at CODE_STOP has no closing fence.
        assert_eq!(
            parse_code("Sure:\n```python\ndef add(a, b):\n    return a + b", "add").unwrap(),
            "def add(a, b):\n    return a + b"
        );
        assert!(matches!(
            parse_code("```python\ndef sub(a, b):\n    return a - b\n```", "add"),
            Err(ParseError::NoCode { .. })
        ));
    }
}
