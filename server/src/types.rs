//! Domain types shared by the pipeline, the sandbox, the checks, the store
//! and the front ends.
//!
//! Owns: plain data (test cases, test results, findings, roles, what a task
//! is and where it stands: [`TaskKind`], [`TaskStatus`]). Must not know
//! about LSP, the CLI, SQLite or any LLM provider: every other module may depend
//! on this one, and this one depends on nothing in the crate.

use serde::{Deserialize, Serialize};

/// A role in the loop that talks to an LLM. Each role is routed to its own
/// provider and model (see `config` and `llm::Router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the stub, states a plan and assumptions, or asks a clarifying question.
    Planner,
    /// Designs extra test cases beyond the docstring's own examples.
    TestDesigner,
    /// Writes and rewrites the function.
    Developer,
    /// Explains failures and findings, judges suspect generated tests, reads feedback.
    Critic,
}

impl Role {
    /// All roles, in loop order.
    pub const ALL: [Role; 4] = [
        Role::Planner,
        Role::TestDesigner,
        Role::Developer,
        Role::Critic,
    ];

    /// The snake_case name used in config files, environment variables and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Planner => "planner",
            Role::TestDesigner => "test_designer",
            Role::Developer => "developer",
            Role::Critic => "critic",
        }
    }

    /// Parses the snake_case name (`planner`, `test_designer`, `developer`, `critic`);
    /// `architect` is accepted as an alias of `planner` (the seed's name).
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "planner" | "architect" => Some(Role::Planner),
            "test_designer" | "tester" | "test-designer" => Some(Role::TestDesigner),
            "developer" => Some(Role::Developer),
            "critic" => Some(Role::Critic),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a test case came from, which decides how much it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOrigin {
    /// Extracted deterministically from the user's docstring: ground truth, never dropped.
    Docstring,
    /// Written by the test designer: a suspect that only votes and may be dropped.
    Generated,
    /// Stated by the user in feedback on a proposal (`slugify('')` must
    /// return `''`): ground truth like a docstring example, for every later
    /// round and task of that function.
    User,
}

impl TestOrigin {
    /// `docstring`, `generated` or `user`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TestOrigin::Docstring => "docstring",
            TestOrigin::Generated => "generated",
            TestOrigin::User => "user",
        }
    }

    /// Whether a candidate must pass this case (a gate, never dropped), as
    /// opposed to a generated case that only votes.
    pub fn is_ground_truth(self) -> bool {
        matches!(self, TestOrigin::Docstring | TestOrigin::User)
    }
}

/// One test case: a call expression and the value it must produce (or the
/// exception it must raise). Both are Python source text, evaluated by the
/// sandbox harness in the candidate's module namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    /// Stable id within a task: `ex1`, `ex2`... for docstring examples, `gen1`... for generated ones.
    pub id: String,
    pub origin: TestOrigin,
    /// A Python expression, e.g. `add(2, 3)`. May also be a short statement
    /// sequence whose last line is an expression (doctest set-up lines joined with newlines).
    pub call: String,
    /// The expected value as a Python expression (`5`, `[1, 2]`, `'abc'`), or for a
    /// doctest whose output is not an expression, the exact printed text.
    /// Empty when `raises` is set.
    pub expected: String,
    /// When set, the call must raise this exception type (e.g. `ValueError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raises: Option<String>,
    /// Why this case exists (for generated tests) or the docstring line it came from.
    #[serde(default)]
    pub note: String,
    /// Doctest option flags the docstring asks for on this example
    /// (`ELLIPSIS`, `NORMALIZE_WHITESPACE`): the expected text is then
    /// compared as doctest's `OutputChecker` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The outcome of one test case in the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub test_id: String,
    pub passed: bool,
    /// Exception class name when the call raised unexpectedly, or `AssertionError`
    /// for a wrong value, or `Timeout` when the per-test timeout fired.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Human-readable message: `expected 5, got 6`, the exception message, ...
    #[serde(default)]
    pub message: Option<String>,
    /// The last lines of the traceback (at most about 1,500 bytes).
    #[serde(default)]
    pub traceback: Option<String>,
    /// `repr()` of the value the call produced, when it returned (at most about 500 bytes).
    #[serde(default)]
    pub actual: Option<String>,
    /// Time the test case took inside the sandbox, milliseconds.
    pub duration_ms: u64,
    /// What the call produced, as a canonical JSON string, equal for equal
    /// outputs (to cluster candidates by behaviour on the same inputs): the
    /// exact-type value tree (`{"t":"int","v":5}`, `{"t":"list","v":[...]}`;
    /// floats rounded to 12 significant digits, sets and dict pairs sorted),
    /// wrapped as `{"printed":TEXT,"value":TREE}` when the call also printed;
    /// `{"raised":"ValueError"}`; `{"timeout":true}`. `None` when the test did
    /// not run to an outcome (load error, process ended) or for older records.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// How strongly the sandbox isolated a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// bubblewrap: only system and interpreter dirs mounted (read-only), no
    /// network, a size-limited private /tmp as the only writable place, plus rlimits.
    Bwrap,
    /// rlimits and a process group only, chosen explicitly (`sandbox.mode =
    /// "rlimits_only"`): no filesystem or network isolation.
    RlimitsOnly,
}

/// Why the sandbox killed a run before it finished by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// The wall-clock timeout of the whole run fired.
    WallTimeout,
    /// The caller cancelled (the user cancelled the task).
    Cancelled,
}

/// The outcome of running one candidate against a list of test cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRun {
    /// One result per test case, in input order. Test cases the run never reached
    /// (because it was killed) are reported as failed with `error_type` `NotRun`.
    pub results: Vec<TestResult>,
    /// Wall time of the whole sandboxed process, milliseconds.
    pub wall_ms: u64,
    pub isolation: Isolation,
    /// Set when the sandbox killed the process group.
    pub killed: Option<KillReason>,
    /// Error raised while importing the candidate module itself (syntax error,
    /// top-level exception), if any: then every test fails.
    pub load_error: Option<String>,
    /// The last lines of the process's stderr (at most about 2,000 bytes).
    pub stderr_tail: String,
}

impl TestRun {
    /// Number of passed test cases.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }
    /// Whether every test case passed (false for an empty run).
    pub fn all_passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.passed)
    }
}

/// Severity of a validation or security finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    /// Blocks acceptance: the candidate goes back to the critic.
    Error,
}

/// One finding from validation or the security check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Rule id, e.g. `syntax`, `signature-changed`, `docstring-changed`, `eval`,
    /// `shell-true`, `ruff:F401`, `bandit:B307`.
    pub rule: String,
    pub severity: Severity,
    pub message: String,
    /// 1-based line in the candidate code, when known.
    pub line: Option<usize>,
    /// Which checker produced it: `tree-sitter`, `py_compile`, `ruff`, `bandit`.
    pub tool: String,
}

/// The result of a validation or security pass: findings plus notes about
/// checkers that were skipped (e.g. `ruff not on PATH: skipped`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl CheckReport {
    /// Findings of severity `Error`.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
}

/// What started a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Generate a function body from a stub.
    Generate,
    /// Refine an existing function with user feedback.
    Refine,
    /// Run by the benchmark harness.
    Bench,
}

impl TaskKind {
    /// `generate`, `refine` or `bench`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Generate => "generate",
            TaskKind::Refine => "refine",
            TaskKind::Bench => "bench",
        }
    }

    /// Inverse of [`TaskKind::as_str`]; `None` for any other string.
    pub fn parse(s: &str) -> Option<TaskKind> {
        match s {
            "generate" => Some(TaskKind::Generate),
            "refine" => Some(TaskKind::Refine),
            "bench" => Some(TaskKind::Bench),
            _ => None,
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// The loop is working on it.
    Running,
    /// The planner asked a question and waits for the user.
    AwaitingAnswer,
    /// A proposal is ready and waits for accept/reject.
    AwaitingReview,
    /// The user accepted the proposal and it was applied.
    Accepted,
    /// The user rejected the proposal without asking for a rewrite.
    Rejected,
    /// The proposal was dropped without a decision (document changed, superseded).
    Discarded,
    /// The loop gave up with an error.
    Failed,
    /// The user cancelled.
    Cancelled,
    /// The server stopped while the task was live (`store::Store::mark_running_as_interrupted`).
    Interrupted,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 9] = [
        TaskStatus::Running,
        TaskStatus::AwaitingAnswer,
        TaskStatus::AwaitingReview,
        TaskStatus::Accepted,
        TaskStatus::Rejected,
        TaskStatus::Discarded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];

    /// The snake_case name stored in `tasks.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::AwaitingAnswer => "awaiting_answer",
            TaskStatus::AwaitingReview => "awaiting_review",
            TaskStatus::Accepted => "accepted",
            TaskStatus::Rejected => "rejected",
            TaskStatus::Discarded => "discarded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
        }
    }

    /// Inverse of [`TaskStatus::as_str`]; `None` for any other string.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the task is finished for good (no loop will touch it again
    /// unless the user starts a refinement).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TaskStatus::Running | TaskStatus::AwaitingAnswer | TaskStatus::AwaitingReview
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
