//! The agent loop of one task, as an explicit state machine. One file per
//! stage: `plan.rs` (Plan, Clarify), `code.rs` (WriteCode and DesignTests,
//! which sample a round of candidates; Critique), `design_tests.rs` (the
//! generated test cases of the first sampling round), `run.rs` (RunTests, Select), `checks.rs`
//! (Validate, SecurityCheck), `review.rs` (Review, Package, proposal files);
//! the pure choice among candidates is `select.rs`; the task's stored status
//! (derived from the stage, and how a task ends) is `status.rs`, its only
//! writer.
//!
//! ```text
//! Plan --clear--> WriteCode(greedy) -> RunTests -> Select
//! Plan --unclear--> Clarify -> Plan
//! Select --a candidate passes every docstring example--> Validate --ok--> SecurityCheck --ok--> Review --accept--> Package -> Done
//! Select --the greedy one alone fails--> DesignTests(test inputs + k-1 samples, one batch) -> RunTests(all x all) -> Select
//! Select --none passes--> Critique (repair budget left: facts of the closest candidate) -> WriteCode(k repairs)
//!                         Critique (budget spent) -> Review (the closest, marked failing)
//! Validate/SecurityCheck --findings--> next candidate in rank order, or as if none passed
//! Review --reject+feedback--> WriteCode(k candidates conditioned on the feedback)
//! (no docstring examples: the first round is DesignTests with the greedy candidate and k-1 samples)
//! ```
//!
//! Why this shape: on the dev set, asking a 1.5B model to critique and rewrite
//! its own code recovered 6 of 35 wrong first attempts, and a plan in the code
//! prompt lost 6 tasks (`bench/results/dev-both/`). Sampling several
//! candidates from one prompt and choosing by execution (CodeT, MBR-exec,
//! AlphaCode's clustering) is what works for small models; see `select.rs`.
//!
//! Owns: the stages, the budgets (`max_refinements` repair rounds, `candidates`
//! per round, `max_clarifications`), test trust (docstring examples are ground
//! truth; generated tests are votes), and recording everything in the store.
//! Progress goes out as [`Event`]s on a channel; questions and the review come
//! back as a [`Pause`] that the front end answers with a [`Reply`].
//! Must not know about LSP, terminals or how a front end renders anything.

mod checks;
mod code;
mod design_tests;
mod feedback;
mod memory;
mod plan;
mod review;
mod run;
pub mod select;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::llm::router::Routed;
use crate::llm::{Completion, CompletionRequest, LlmError, Router};
use crate::python::{self, AnalysisError, FunctionInfo};
use crate::rag::Guidelines;
use crate::roles::{self, Clarification, CodePrompt, ParseError, Plan, StubView};
use crate::sandbox::{Sandbox, SandboxError};
use crate::store::{LlmCallRecord, NewTask, Store, StoreError, TaskId, TaskKind, TaskStatus};
use crate::types::{Finding, Role, TestCase, TestResult, TestRun};

pub use memory::MEMORY_TOKENS;
pub use review::{render_report, render_test_module, unified_diff, write_proposal_files};
pub use select::Selection;
pub use status::{end_stored_task, interrupt_left_over, status_at, Ending};

/// A stage of the loop (the states of the machine above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Plan,
    Clarify,
    DesignTests,
    WriteCode,
    RunTests,
    Select,
    Validate,
    SecurityCheck,
    Critique,
    Review,
    Package,
    Done,
}

impl Stage {
    /// Name as stored and shown (`plan`, `design_tests`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Clarify => "clarify",
            Stage::DesignTests => "design_tests",
            Stage::WriteCode => "write_code",
            Stage::RunTests => "run_tests",
            Stage::Select => "select",
            Stage::Validate => "validate",
            Stage::SecurityCheck => "security_check",
            Stage::Critique => "critique",
            Stage::Review => "review",
            Stage::Package => "package",
            Stage::Done => "done",
        }
    }
}

/// Loop settings (built from a `config::Config` by `runtime::settings`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repair rounds allowed after the first round of candidates when no
    /// candidate passes the docstring's examples (default 1). A rejection
    /// with feedback starts a new round with a fresh budget.
    pub max_refinements: u32,
    /// Candidates per round, k (default 5): the greedy one plus k-1 sampled.
    pub candidates: u32,
    /// Temperature of the sampled candidates (default 0.8).
    pub sample_temperature: f32,
    /// Top-p of the sampled candidates (default 0.95).
    pub top_p: f32,
    /// The first round's developer prompt (default [`CodePrompt::Plain`]).
    pub code_prompt: CodePrompt,
    /// Try the greedy candidate alone first and accept it when it passes
    /// every docstring example (default true); false samples k candidates
    /// and designs test inputs in the first round, always.
    pub greedy_first: bool,
    /// Clarifying questions allowed before the planner must state assumptions (default 2).
    pub max_clarifications: u32,
    /// Cap on generated test cases (default 6).
    pub max_generated_tests: usize,
    /// Whether the front end can answer questions. When false no planner call
    /// is made (there is nobody to ask); the test designer states assumptions.
    pub interactive: bool,
    /// Python interpreter used by validation (`py_compile`).
    pub python: PathBuf,
    /// How long each external checker (py_compile, ruff, bandit) may run
    /// before it is killed and reported as a `timeout` finding (default
    /// [`crate::checks::TOOL_TIMEOUT`]).
    pub check_timeout: Duration,
    /// Write `.docsmith/proposals/<task>/` when a proposal is ready.
    pub write_proposal_files: bool,
    /// Budget of the context shown around the stub (outlines of the
    /// module's other names and of imported project names), in estimated
    /// tokens (`python::context::estimate_tokens`; default 1024).
    pub context_tokens: usize,
    /// Show each task what the workspace remembers (lessons, relevant past
    /// feedback and fixed failures, within [`MEMORY_TOKENS`]; default true).
    /// False shows nothing; feedback, lessons and failures are still recorded.
    pub memory: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_refinements: 1,
            candidates: 5,
            sample_temperature: 0.8,
            top_p: 0.95,
            code_prompt: CodePrompt::Plain,
            greedy_first: true,
            max_clarifications: 2,
            max_generated_tests: 6,
            interactive: false,
            python: PathBuf::from("python3"),
            check_timeout: crate::checks::TOOL_TIMEOUT,
            write_proposal_files: true,
            context_tokens: 1024,
            memory: true,
        }
    }
}

/// What a task needs from the rest of the crate. Cheap to clone (all `Arc`s).
/// Front ends build it with `Deps::from_config` (in `runtime`, the
/// composition root).
#[derive(Clone)]
pub struct Deps {
    pub router: Arc<Router>,
    pub sandbox: Arc<Sandbox>,
    pub store: Arc<Store>,
    pub guidelines: Arc<Guidelines>,
    pub settings: Settings,
}

/// Which function a task is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// By name (`f` or `Class.f`).
    Name(String),
    /// By 0-based line anywhere inside the definition.
    Line(usize),
}

/// The input of a task: the file as it was read, and the function in it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Workspace root (where `.docsmith/` lives).
    pub workspace: PathBuf,
    /// The Python file (absolute or relative to the current directory).
    pub file: PathBuf,
    /// The file's text at the moment the task began (never re-read by the pipeline).
    pub source: String,
    pub target: Target,
    /// Refine an existing function with this feedback instead of generating from the stub.
    pub feedback: Option<String>,
    /// What kind of task to record (`generate`, `refine`, `bench`).
    pub kind: TaskKind,
}

/// Progress of a task, sent on the events channel. Front ends render these;
/// the pipeline never waits on them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A stage began. `message` is what an editor shows (`writing code (attempt 2/4)`),
    /// `percent` an estimate of progress, 0-100.
    Stage {
        task: i64,
        stage: Stage,
        message: String,
        percent: u32,
    },
    /// The chosen candidate's test results, after a round's selection.
    Tests {
        task: i64,
        attempt: u32,
        passed: usize,
        total: usize,
    },
    /// A round of candidates was chosen from: `samples` sampled, `distinct`
    /// after deduplication, `reason` says why the chosen one won.
    Selected {
        task: i64,
        round: u32,
        samples: u32,
        distinct: u32,
        passes_gate: bool,
        reason: String,
    },
    /// A generated test was dropped because it contradicts the docstring.
    TestDropped {
        task: i64,
        test_id: String,
        reason: String,
    },
    /// An LLM call finished.
    LlmCall {
        task: i64,
        role: Role,
        prompt_tokens: u32,
        completion_tokens: u32,
        latency_ms: u64,
    },
    /// Something the user should know (skipped checker, reduced isolation, unparsable output).
    Note { task: i64, message: String },
}

/// A clarifying question from the planner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    pub text: String,
    /// Suggested answers (0-4).
    pub options: Vec<String>,
    /// What the planner assumes if the user does not answer.
    pub assumptions: Vec<String>,
    /// 1-based question number in this task.
    pub round: u32,
}

/// A test case with its result in the proposal's attempt.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    pub case: TestCase,
    pub result: Option<TestResult>,
}

/// What the user reviews.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    pub task: i64,
    pub function: String,
    pub file: PathBuf,
    /// The generated code as a standalone module (imports, helpers, the function with the user's docstring).
    pub code: String,
    /// The whole file with the new body spliced in.
    pub new_source: String,
    /// Unified diff of the file, original -> new.
    pub diff: String,
    /// True when every active test passed and no error finding remains.
    pub passing: bool,
    /// Why it is not passing (empty when passing).
    pub reasons: Vec<String>,
    pub tests: Vec<CaseOutcome>,
    /// (test id, reason) of generated tests dropped as contradicting the docstring.
    pub dropped: Vec<(String, String)>,
    pub findings: Vec<Finding>,
    /// Which attempt (distinct candidate) this is, and how many were made in all.
    pub attempt: u32,
    pub attempts: u32,
    /// Why this candidate was chosen ("3 of 5 candidates agree ...").
    pub chosen_because: String,
    /// Rounds of candidates made (1 + repair rounds + feedback rounds).
    pub rounds: u32,
    /// The planner's one-sentence understanding (empty when no planner ran).
    pub understanding: String,
    /// Assumptions taken where the docstring is silent (planner, test designer, answers).
    pub assumptions: Vec<String>,
    /// The clarifying questions the user answered, with the answers.
    pub answered: Vec<roles::Clarification>,
    pub llm_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Wall time of the task so far, ms.
    pub wall_ms: u64,
    /// Notes (skipped checkers, reduced isolation, assumptions taken).
    pub notes: Vec<String>,
    /// Where the proposal files were written, when they were.
    pub dir: Option<PathBuf>,
    /// The function's text when the task began (written as `original.py` beside the proposal).
    pub original: String,
    /// What the model was shown around the stub (also in the store, `tasks.context_json`).
    pub context: python::context::Context,
    /// What the workspace's memory showed the model, one label each
    /// (`lesson 3 (task 1): use pathlib`; `store::memory::MemoryItem::label`).
    pub memory: Vec<String>,
}

impl Proposal {
    /// Why the proposal is what it is, one line each, for a review: the
    /// planner's understanding, each question answered, each assumption,
    /// and the tests by source (`tests: 2 from the docstring, 1 from you,
    /// 5 generated (1 dropped)`). Shown by the CLI, the language server's
    /// review message and `report.md`.
    pub fn explanation(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.understanding.is_empty() {
            out.push(format!("understood: {}", self.understanding));
        }
        for c in &self.answered {
            out.push(format!("asked: {} answer: {}", c.question, c.answer));
        }
        for a in &self.assumptions {
            out.push(format!("assumed: {a}"));
        }
        for m in &self.memory {
            out.push(format!("remembered {m}"));
        }
        let count =
            |o: crate::types::TestOrigin| self.tests.iter().filter(|t| t.case.origin == o).count();
        let mut sources = vec![format!(
            "{} from the docstring",
            count(crate::types::TestOrigin::Docstring)
        )];
        let user = count(crate::types::TestOrigin::User);
        if user > 0 {
            sources.push(format!("{user} from you"));
        }
        let generated = count(crate::types::TestOrigin::Generated);
        sources.push(format!(
            "{generated} generated{}",
            if self.dropped.is_empty() {
                String::new()
            } else {
                format!(" ({} dropped)", self.dropped.len())
            }
        ));
        out.push(format!("tests: {}", sources.join(", ")));
        out
    }

    /// `(passed, total)` over the proposal's active tests.
    pub fn test_counts(&self) -> (usize, usize) {
        let passed = self
            .tests
            .iter()
            .filter(|t| t.result.as_ref().is_some_and(|r| r.passed))
            .count();
        (passed, self.tests.len())
    }

    /// One line: passing or not, tests, findings, attempts, time, LLM calls and tokens.
    pub fn summary(&self) -> String {
        let (passed, total) = self.test_counts();
        format!(
            "{}: {passed}/{total} tests passed, {} finding(s), candidate {} of {} in {} round(s), {:.1} s, {} LLM calls ({} prompt + {} completion tokens)",
            if self.passing { "PASSING" } else { "FAILING" },
            self.findings.len(),
            self.attempt,
            self.attempts,
            self.rounds,
            self.wall_ms as f64 / 1000.0,
            self.llm_calls,
            self.prompt_tokens,
            self.completion_tokens
        )
    }
}

/// How a task ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub task: i64,
    pub status: TaskStatus,
    pub reason: Option<String>,
    /// The proposal that was accepted, rejected or discarded (None when the task failed before one).
    pub proposal: Option<Box<Proposal>>,
}

/// Why the loop stopped and what it needs.
#[derive(Debug, Clone)]
pub enum Pause {
    /// Answer with [`Reply::Answer`] or [`Reply::Assume`].
    Question(Question),
    /// Answer with [`Reply::Accept`], [`Reply::Reject`] or [`Reply::Discard`].
    Review(Box<Proposal>),
    /// The task is over.
    Finished(Outcome),
}

/// The front end's answer to a [`Pause`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Free-text or chosen answer to the question.
    Answer(String),
    /// Skip the question: take the planner's assumptions.
    Assume,
    /// Accept the proposal.
    Accept,
    /// Reject the proposal with feedback: another round of candidates starts,
    /// conditioned on the feedback.
    Reject(String),
    /// Drop the proposal; the task ends.
    Discard,
}

/// Errors that end a task. Each message names the cause and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error("{0}")]
    Llm(#[from] LlmError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the task was cancelled")]
    Cancelled,
    #[error(
        "`{0}` has no docstring: write one describing what the function does (examples help most)"
    )]
    NoDocstring(String),
    #[error("reply {reply} does not answer the current pause ({stage})")]
    InvalidReply { reply: String, stage: &'static str },
    #[error("no candidate defined `{0}`: the model's replies had no usable Python (see `docsmith history` and the llm_calls table)")]
    NoCode(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A cancel during the checks ends the task as cancelled.
impl From<crate::checks::Cancelled> for PipelineError {
    fn from(_: crate::checks::Cancelled) -> PipelineError {
        PipelineError::Cancelled
    }
}

/// The project mount for a file at `here` whose `source` imports modules of
/// its own project, and a note when the project cannot be mounted. The
/// import root is mounted only when an import needs it, and never when it is
/// `/` or holds the home directory (a file directly in `~` with no project
/// around it): then the candidate runs without the project and the note says
/// why.
fn project_mount(
    here: &python::project::ModulePath,
    source: &str,
) -> (Option<crate::sandbox::ProjectMount>, Option<String>) {
    let needed = python::project::project_imports(source, here)
        .iter()
        .any(|i| i.file.is_some());
    if !needed {
        return (None, None);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .and_then(|h| h.canonicalize().ok());
    let too_wide =
        here.root.parent().is_none() || home.as_ref().is_some_and(|h| h.starts_with(&here.root));
    if too_wide {
        return (
            None,
            Some(format!(
                "the project's own imports were not made available to the tests: the import root `{}` is `/` or holds the home directory; put the code in a project folder (with `.git` or `docsmith.toml`)",
                here.root.display()
            )),
        );
    }
    (
        Some(crate::sandbox::ProjectMount {
            root: here.root.clone(),
            module: here.module.clone(),
        }),
        None,
    )
}

/// What a round of candidates is. The loop tries the cheapest thing first:
/// the greedy candidate alone, accepted when it passes every docstring
/// example; only when it does not (or there are no examples) are more
/// candidates sampled and test inputs designed, in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundKind {
    /// The greedy candidate of the plain prompt, alone.
    Greedy,
    /// k-1 sampled candidates of the same prompt, joining the greedy one.
    Widen,
    /// The greedy candidate and k-1 samples (no examples to try the greedy
    /// one against alone).
    Full,
    /// k candidates of a repair prompt: the closest candidate and its failing facts.
    Repair,
    /// k candidates conditioned on the user's feedback.
    Feedback,
}

/// One distinct candidate: code a round sampled (once or several times).
#[derive(Debug, Clone)]
struct Candidate {
    /// 1-based number within the task (the store's attempt `n`).
    n: u32,
    id: crate::store::AttemptId,
    /// The round that produced it (1 = first candidates).
    round: u32,
    /// The code as the developer wrote it, extracted from the reply.
    generated: String,
    /// Standalone module: file imports + helpers + function with the user's docstring.
    standalone: String,
    /// The whole file spliced.
    full_source: String,
    /// Samples that produced this code (after deduplication by normalised AST).
    weight: u32,
    /// Whether the greedy sample is among them.
    greedy: bool,
    run: Option<TestRun>,
    findings: Vec<Finding>,
    /// Validation and the security check ran on it.
    checked: bool,
    /// Set when the candidate could not be run at all (splice failure).
    failure: Option<String>,
    stage_times: BTreeMap<String, u64>,
}

/// One task's run of the loop. Create with [`TaskRun::start`], then call
/// [`TaskRun::advance`] until it returns [`Pause::Finished`], answering every other
/// pause with [`TaskRun::reply`].
pub struct TaskRun {
    deps: Deps,
    events: Option<UnboundedSender<Event>>,
    spec: TaskSpec,
    task: TaskId,
    stub: FunctionInfo,
    view: StubView,
    stub_module: String,
    /// The user's project folder, mounted read-only for candidates when the
    /// file imports the project's own modules.
    project: Option<crate::sandbox::ProjectMount>,
    /// What the model was shown around the stub.
    context: python::context::Context,
    /// What the workspace's memory showed the model (developer, planner).
    remembered: Vec<crate::store::memory::MemoryItem>,
    stage: Stage,
    /// The status last recorded in the store (see `status.rs`).
    status: TaskStatus,
    started: Instant,
    plan: Plan,
    answered: Vec<Clarification>,
    questions_asked: u32,
    pending_question: Option<Question>,
    /// Assumptions taken (planner, test designer, unanswered questions).
    assumptions: Vec<String>,
    tests: Vec<TestCase>,
    dropped: Vec<(String, String)>,
    /// Every distinct candidate of every round, in order.
    candidates: Vec<Candidate>,
    /// Rounds of candidates started (1 after the first WriteCode).
    round: u32,
    /// What the next round of candidates is.
    next_round: RoundKind,
    /// Generated test cases were designed (they are designed once, in the
    /// first round that samples).
    designed: bool,
    /// Repair rounds used since the task began or the last feedback.
    repairs: u32,
    /// Index into `candidates` where the current round starts.
    round_start: usize,
    /// The current round's selection (candidate indices are round-relative).
    selection: Option<Selection>,
    /// Index into `candidates` of the candidate the loop stands on: the
    /// chosen one, or the repair basis when none passes.
    chosen: Option<usize>,
    /// Where in the selection's ranking validation has got to.
    rank_pos: usize,
    /// The user's feedback not yet answered by a round of candidates.
    feedback: Option<String>,
    /// The code the next round repairs (closest candidate, or the rejected proposal).
    repair_basis: Option<usize>,
    proposal: Option<Box<Proposal>>,
    notes: Vec<String>,
    llm_calls: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    work: tempfile::TempDir,
}

impl TaskRun {
    /// Finds the function, checks it can be worked on, and records a new task.
    ///
    /// Errors: the function is not in the file ([`AnalysisError`], lists what is),
    /// it is nested in another function or defined twice at
    /// module level ([`AnalysisError::NestedFunction`],
    /// [`AnalysisError::DuplicateDefinition`]), it has no docstring (for
    /// generation), or the store fails. No model is called before these checks.
    pub fn start(
        spec: TaskSpec,
        deps: Deps,
        events: Option<UnboundedSender<Event>>,
    ) -> Result<TaskRun, PipelineError> {
        let stub = match &spec.target {
            Target::Name(n) => python::find_function(&spec.source, n)?,
            Target::Line(l) => python::find_function_at_line(&spec.source, *l)?,
        };
        // Before any model call: a nested or twice-defined function cannot be
        // spliced back alone, so every call spent on it would be lost.
        python::check_replaceable(&spec.source, &stub)?;
        if stub.docstring.is_none() && spec.feedback.is_none() {
            return Err(PipelineError::NoDocstring(stub.qualname()));
        }
        let imports = python::module_imports(&spec.source);
        let fn_src = python::function_source(&spec.source, &stub.qualname()).unwrap_or_default();
        // The module the candidate is checked as when the file itself does not
        // parse, and the code a proposal carries: imports, and for a method
        // its class header(s) around it.
        let stub_module = python::stub_module(&spec.source, &stub, &imports);
        // What the function may use: its class, the module's other names and
        // the project names it imports (outlines, within the token budget).
        let here = python::project::locate(&spec.file, &spec.workspace);
        let gathered = python::context::gather(
            &spec.source,
            &stub,
            Some(&here),
            deps.settings.context_tokens,
        );
        let project = project_mount(&here, &spec.source);
        let mut view = StubView {
            name: stub.name.clone(),
            source: fn_src,
            imports,
            context: gathered.context.text.clone(),
            enclosing: stub.class_name.clone().zip(gathered.enclosing.clone()),
            head: python::function_head(&spec.source, &stub),
            memory: String::new(),
        };
        // Recorded absolute (the CLI's path may be relative to its working
        // folder), so later tasks find this one's file from anywhere.
        let recorded_file = std::path::absolute(&spec.file).unwrap_or_else(|_| spec.file.clone());
        let task = deps.store.create_task(&NewTask {
            workspace: spec.workspace.display().to_string(),
            file: recorded_file.display().to_string(),
            function: stub.qualname(),
            kind: spec.kind,
            stub_source: view.source.clone(),
            docstring: stub.docstring.clone(),
        })?;
        deps.store
            .set_task_context(task, &serde_json::to_string(&gathered).unwrap_or_default())?;
        let mut notes = Vec::new();
        if let Some(n) = deps.sandbox.isolation_note() {
            notes.push(n);
        }
        for u in &gathered.unresolved {
            notes.push(format!(
                "import not found in the project: {u}; the model was not shown what it provides"
            ));
        }
        let (project, note) = project;
        notes.extend(note);
        // Before this task's own feedback is recorded (and left out anyway).
        let remembered = memory::recall(
            &deps.store,
            task,
            &stub.qualname(),
            stub.docstring.as_deref().unwrap_or(""),
            deps.settings.memory,
        )?;
        view.memory = memory::prompt_lines(&remembered);
        notes.extend(memory::recall_note(&remembered));
        let feedback = spec.feedback.clone();
        if let Some(fb) = &feedback {
            deps.store.add_feedback(task, None, fb)?;
            notes.extend(memory::keep_lesson(&deps.store, task, fb)?);
        }
        // `docsmith-task-<pid>-*`: removed by a later start if this process dies.
        let work = crate::sandbox::temp_work_dir("task")?;
        // The docstring's examples are ground truth from the start; generated
        // inputs join them when a round samples.
        let mut tests = python::extract_examples(&stub);
        // Cases the user stated in feedback on this function before, and in
        // this task's own feedback: ground truth too.
        let earlier = deps
            .store
            .user_test_cases(&recorded_file, &stub.qualname())?;
        if !earlier.is_empty() {
            notes.push(format!(
                "{} test case(s) from your earlier feedback on `{}` apply: {}",
                earlier.len(),
                stub.qualname(),
                feedback::calls(&earlier)
            ));
        }
        tests.extend(earlier);
        if let Some(fb) = &feedback {
            let stated = feedback::cases_from_feedback(fb, &stub, &tests);
            tests.extend(stated);
        }
        deps.store.add_test_cases(task, &tests)?;
        let next_round = if feedback.is_some() {
            RoundKind::Feedback
        } else if tests.is_empty() || !deps.settings.greedy_first {
            RoundKind::Full
        } else {
            RoundKind::Greedy
        };
        Ok(TaskRun {
            feedback,
            deps,
            events,
            spec,
            task,
            stub,
            view,
            stub_module,
            project,
            context: gathered.context,
            remembered,
            stage: Stage::Plan,
            status: TaskStatus::Running,
            started: Instant::now(),
            plan: Plan::default(),
            answered: Vec::new(),
            questions_asked: 0,
            pending_question: None,
            assumptions: Vec::new(),
            tests,
            dropped: Vec::new(),
            candidates: Vec::new(),
            round: 0,
            next_round,
            designed: false,
            repairs: 0,
            round_start: 0,
            selection: None,
            chosen: None,
            rank_pos: 0,
            repair_basis: None,
            proposal: None,
            notes,
            llm_calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            work,
        })
    }

    /// The task's id in the store.
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// The function being worked on, as found when the task started.
    pub fn function(&self) -> &FunctionInfo {
        &self.stub
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Rounds of candidates one feedback round may make: the first plus
    /// `max_refinements` repairs.
    pub fn max_rounds(&self) -> u32 {
        1 + self.deps.settings.max_refinements
    }

    /// Runs stages until the loop needs the user or ends. On an error the task is
    /// recorded as failed (or cancelled) with the reason, then the error is returned.
    pub async fn advance(&mut self, cancel: &CancellationToken) -> Result<Pause, PipelineError> {
        match self.advance_inner(cancel).await {
            Ok(p) => Ok(p),
            Err(e) => {
                let ending = if matches!(e, PipelineError::Cancelled) {
                    Ending::Cancelled
                } else {
                    Ending::Failed
                };
                let _ = self.end(ending, Some(&e.to_string()));
                Err(e)
            }
        }
    }

    /// Answers the current pause. Errors when the reply does not fit it (an
    /// `Accept` while a question is pending, for example); nothing changes then.
    /// The stored status follows at once: an answered question or a
    /// rejection sets the task running again.
    pub fn reply(&mut self, reply: Reply) -> Result<(), PipelineError> {
        match (self.stage, reply) {
            (Stage::Clarify, Reply::Answer(a)) => {
                self.answer(Some(a))?;
                self.record_status(None)?;
            }
            (Stage::Clarify, Reply::Assume) => {
                self.answer(None)?;
                self.record_status(None)?;
            }
            (Stage::Review, Reply::Accept) => self.stage = Stage::Package,
            (Stage::Review, Reply::Reject(fb)) => {
                let shown = self.proposal_candidate();
                let attempt = shown.map(|i| self.candidates[i].id);
                self.deps.store.add_feedback(self.task, attempt, &fb)?;
                if let Some(n) = memory::keep_lesson(&self.deps.store, self.task, &fb)? {
                    self.note(n);
                }
                let stated = feedback::cases_from_feedback(&fb, &self.stub, &self.tests);
                if !stated.is_empty() {
                    self.deps.store.add_test_cases(self.task, &stated)?;
                    self.note(format!(
                        "your feedback became {} test case(s) that every candidate must pass: {}",
                        stated.len(),
                        feedback::calls(&stated)
                    ));
                    self.tests.extend(stated);
                }
                self.feedback = Some(fb);
                self.repair_basis = shown;
                self.repairs = 0;
                self.next_round = RoundKind::Feedback;
                self.stage = self.sampling_stage();
                self.record_status(Some("refining with feedback"))?;
            }
            (Stage::Review, Reply::Discard) => {
                self.end(Ending::Discarded, Some("discarded by the user"))?;
            }
            (stage, r) => {
                return Err(PipelineError::InvalidReply {
                    reply: format!("{r:?}"),
                    stage: stage.as_str(),
                });
            }
        }
        Ok(())
    }

    async fn advance_inner(&mut self, cancel: &CancellationToken) -> Result<Pause, PipelineError> {
        loop {
            if cancel.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
            self.stage = match self.stage {
                Stage::Plan => self.step_plan(cancel).await?,
                Stage::Clarify => {
                    let q = self
                        .pending_question
                        .clone()
                        .expect("a question is pending in Clarify");
                    self.record_status(None)?;
                    return Ok(Pause::Question(q));
                }
                Stage::DesignTests => self.sample_round(cancel, true).await?,
                Stage::WriteCode => self.sample_round(cancel, false).await?,
                Stage::RunTests => self.step_run_tests(cancel).await?,
                Stage::Select => self.step_select()?,
                Stage::Validate => self.step_validate(cancel).await?,
                Stage::SecurityCheck => self.step_security(cancel).await?,
                Stage::Critique => self.step_critique(cancel).await?,
                Stage::Review => {
                    let p = self.step_review()?;
                    let reason = (!p.passing).then(|| p.reasons.join("; "));
                    self.record_status(reason.as_deref())?;
                    return Ok(Pause::Review(p));
                }
                Stage::Package => self.step_package()?,
                Stage::Done => return Ok(Pause::Finished(self.outcome()?)),
            };
        }
    }

    fn emit(&self, ev: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    fn note(&mut self, message: String) {
        tracing::info!(task = self.task.0, "{message}");
        self.emit(Event::Note {
            task: self.task.0,
            message: message.clone(),
        });
        self.notes.push(message);
    }

    /// Announces a stage with the message an editor shows.
    fn enter(&self, stage: Stage, message: String) {
        let max = self.max_rounds().max(1);
        let r = self.repairs.min(max - 1);
        let in_round = match stage {
            Stage::WriteCode => 10,
            Stage::RunTests => 60,
            Stage::Select => 70,
            Stage::Validate => 75,
            Stage::SecurityCheck => 80,
            Stage::Critique => 90,
            _ => 0,
        };
        let percent = match stage {
            Stage::Plan | Stage::Clarify => 3,
            Stage::DesignTests => 10,
            Stage::Review | Stage::Package | Stage::Done => 100,
            _ => 20 + (75 * r + 75 * in_round / 100) / max,
        };
        tracing::debug!(task = self.task.0, stage = stage.as_str(), "{message}");
        self.emit(Event::Stage {
            task: self.task.0,
            stage,
            message,
            percent: percent.min(99),
        });
    }

    /// One LLM call through the router, recorded in the store whatever happens.
    async fn call(
        &mut self,
        role: Role,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Completion, PipelineError> {
        let res = self.deps.router.complete(role, req, cancel).await;
        self.record_call(role, res)
    }

    /// Records one LLM call's result (tokens, reply text, or the error) in
    /// the store and as an event.
    fn record_call(
        &mut self,
        role: Role,
        res: Result<Routed, LlmError>,
    ) -> Result<Completion, PipelineError> {
        let attempt = self.candidates.last().map(|a| a.id);
        match res {
            Ok(Routed {
                completion: c,
                skipped,
                ..
            }) => {
                for s in skipped {
                    // Recorded as a call that was not made (no tokens, no
                    // time), so the history shows which provider was passed over.
                    self.deps.store.add_llm_call(&LlmCallRecord {
                        task: Some(self.task),
                        attempt,
                        role,
                        provider: s.provider.clone(),
                        model: String::new(),
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        latency_ms: 0,
                        ok: false,
                        error: Some(format!("skipped: {}", s.reason)),
                        response: None,
                    })?;
                    self.note(format!(
                        "{role}: skipped {} ({}); used {}:{}",
                        s.provider, s.reason, c.provider, c.model
                    ));
                }
                self.llm_calls += 1;
                self.prompt_tokens += c.prompt_tokens as u64;
                self.completion_tokens += c.completion_tokens as u64;
                let mut response = c.text.clone();
                for (i, alt) in c.alternatives.iter().enumerate() {
                    response.push_str(&format!("\n\n--- sample {} ---\n{}", i + 2, alt.text));
                }
                self.deps.store.add_llm_call(&LlmCallRecord {
                    task: Some(self.task),
                    attempt,
                    role,
                    provider: c.provider.clone(),
                    model: c.model.clone(),
                    prompt_tokens: c.prompt_tokens as u64,
                    completion_tokens: c.completion_tokens as u64,
                    latency_ms: c.latency_ms,
                    ok: true,
                    error: None,
                    response: Some(response),
                })?;
                self.emit(Event::LlmCall {
                    task: self.task.0,
                    role,
                    prompt_tokens: c.prompt_tokens,
                    completion_tokens: c.completion_tokens,
                    latency_ms: c.latency_ms,
                });
                Ok(c)
            }
            Err(LlmError::Cancelled) => Err(PipelineError::Cancelled),
            Err(e) => {
                self.deps.store.add_llm_call(&LlmCallRecord {
                    task: Some(self.task),
                    attempt,
                    role,
                    provider: self.deps.router.describe(role),
                    model: String::new(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    latency_ms: 0,
                    ok: false,
                    error: Some(e.to_string()),
                    response: None,
                })?;
                Err(e.into())
            }
        }
    }

    /// A structured call: parse the reply, and on failure ask once for a repaired reply.
    /// The inner `Err` is the parse error after the repair also failed (not fatal).
    async fn call_parsed<T>(
        &mut self,
        role: Role,
        req: CompletionRequest,
        parse: impl Fn(&str) -> Result<T, ParseError>,
        cancel: &CancellationToken,
    ) -> Result<Result<T, ParseError>, PipelineError> {
        let first = self.call(role, &req, cancel).await?;
        match parse(&first.text) {
            Ok(v) => Ok(Ok(v)),
            Err(e) => {
                tracing::warn!(task = self.task.0, %role, "unusable reply, asking once for a repair: {e}");
                let repair = roles::repair_messages(&req, &first.text, &e);
                let second = self.call(role, &repair, cancel).await?;
                Ok(parse(&second.text))
            }
        }
    }

    /// The stage that makes the next round of candidates: DesignTests when
    /// it also designs the test inputs (the first round that samples), else
    /// WriteCode.
    fn sampling_stage(&self) -> Stage {
        if !self.designed && self.next_round != RoundKind::Greedy {
            Stage::DesignTests
        } else {
            Stage::WriteCode
        }
    }

    /// Where to go when the current round has no acceptable candidate: a
    /// greedy-only round widens to sampled candidates (not a repair), any
    /// other goes to Critique.
    fn after_no_pass(&mut self) -> Stage {
        if self.next_round == RoundKind::Greedy {
            self.next_round = RoundKind::Widen;
            self.sampling_stage()
        } else {
            Stage::Critique
        }
    }

    /// The current round's candidates.
    fn round_candidates(&self) -> &[Candidate] {
        &self.candidates[self.round_start.min(self.candidates.len())..]
    }

    /// Whether a candidate loads, passes every docstring example (generated
    /// tests are votes, not gates) and has no error finding.
    fn candidate_passes(&self, c: &Candidate) -> bool {
        c.failure.is_none()
            && c.run.as_ref().is_some_and(|r| r.load_error.is_none())
            && failures_of(&self.tests, c.run.as_ref())
                .iter()
                .all(|(t, _)| !t.origin.is_ground_truth())
            && !c
                .findings
                .iter()
                .any(|f| f.severity == crate::types::Severity::Error)
            && !c.generated.is_empty()
    }

    fn outcome(&self) -> Result<Outcome, PipelineError> {
        let detail = self.deps.store.task(self.task)?;
        let (status, reason) = match detail {
            Some(d) => (d.task.status, d.task.status_reason),
            None => (
                TaskStatus::Failed,
                Some("task vanished from the store".into()),
            ),
        };
        Ok(Outcome {
            task: self.task.0,
            status,
            reason,
            proposal: self.proposal.clone(),
        })
    }
}

/// Whether `s` looks like an exception name (`ValueError`, `json.JSONDecodeError`).
fn is_identifier_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// Whitespace-insensitive key for comparing Python snippets (`add(2,3)` and
/// `add(2, 3)` are the same call, and so are `f("a")` and `f('a')`). Whitespace
/// inside string literals is kept.
fn normalize(s: &str) -> String {
    use crate::python::scan::{scan, At};
    scan(s)
        .filter_map(|(_, c, at)| match at {
            At::Quote => Some('\''),
            At::Str => Some(c),
            At::Code(_) if c.is_whitespace() => None,
            At::Code(_) => Some(c),
        })
        .collect()
}

/// The failing active test cases of a run, paired with their results.
fn failures_of<'a>(
    tests: &'a [TestCase],
    run: Option<&'a TestRun>,
) -> Vec<(&'a TestCase, &'a TestResult)> {
    let Some(run) = run else { return Vec::new() };
    tests
        .iter()
        .filter_map(|c| {
            run.results
                .iter()
                .find(|r| r.test_id == c.id)
                .map(|r| (c, r))
        })
        .filter(|(_, r)| !r.passed)
        .collect()
}

#[cfg(test)]
mod tests;
