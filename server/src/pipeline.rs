//! The agent loop of one task, as an explicit state machine.
//!
//! ```text
//! Plan --clear--> DesignTests -> WriteCode -> RunTests --all pass--> Validate --ok--> SecurityCheck --ok--> Review --accept--> Package -> Done
//! Plan --unclear--> Clarify -> Plan                     RunTests --fail--> Critique -> WriteCode
//!                               Validate/SecurityCheck --findings--> Critique -> WriteCode
//!                                                       Review --reject+feedback--> Critique -> WriteCode
//! ```
//!
//! Owns: the stages, the budgets (`max_refinements`, `max_clarifications`), test
//! trust (docstring examples are ground truth; generated tests are suspects the
//! critic may drop), choosing the best attempt, and recording everything in the
//! store. Progress goes out as [`Event`]s on a channel; questions and the review
//! come back as a [`Pause`] that the front end answers with a [`Reply`].
//! Must not know about LSP, terminals or how a front end renders anything.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::llm::{Completion, CompletionRequest, LlmError, Router};
use crate::python::{self, AnalysisError, FunctionInfo};
use crate::rag::Guidelines;
use crate::roles::{self, Clarification, ParseError, Plan, RewriteContext, StubView};
use crate::sandbox::{Sandbox, SandboxError};
use crate::store::{
    AttemptId, AttemptSummary, LlmCallRecord, NewTask, Store, StoreError, TaskId, TaskKind,
    TaskStatus,
};
use crate::types::{Finding, Role, Severity, TestCase, TestOrigin, TestResult, TestRun};

/// A stage of the loop (the states of the machine above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Plan,
    Clarify,
    DesignTests,
    WriteCode,
    RunTests,
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
            Stage::Validate => "validate",
            Stage::SecurityCheck => "security_check",
            Stage::Critique => "critique",
            Stage::Review => "review",
            Stage::Package => "package",
            Stage::Done => "done",
        }
    }
}

/// Loop settings (from `config::Config` in the front ends).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rewrites allowed after the first attempt in one round (default 3: at most 4 attempts).
    pub max_refinements: u32,
    /// Clarifying questions allowed before the planner must state assumptions (default 2).
    pub max_clarifications: u32,
    /// Cap on generated test cases (default 8).
    pub max_generated_tests: usize,
    /// Whether the front end can answer questions. When false the planner is told
    /// not to ask and its assumptions are taken.
    pub interactive: bool,
    /// Python interpreter used by validation (`py_compile`).
    pub python: PathBuf,
    /// Write `.docsmith/proposals/<task>/` when a proposal is ready.
    pub write_proposal_files: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_refinements: 3,
            max_clarifications: 2,
            max_generated_tests: 8,
            interactive: false,
            python: PathBuf::from("python3"),
            write_proposal_files: true,
        }
    }
}

/// What a task needs from the rest of the crate. Cheap to clone (all `Arc`s).
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
    /// A test run finished.
    Tests {
        task: i64,
        attempt: u32,
        passed: usize,
        total: usize,
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
    /// Which attempt this is, and how many were made in all.
    pub attempt: u32,
    pub attempts: u32,
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
}

impl Proposal {
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
            "{}: {passed}/{total} tests passed, {} finding(s), attempt {} of {}, {:.1} s, {} LLM calls ({} prompt + {} completion tokens)",
            if self.passing { "PASSING" } else { "FAILING" },
            self.findings.len(),
            self.attempt,
            self.attempts,
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
    /// Reject the proposal with feedback: another round starts at Critique.
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
    #[error("`{0}` is a method; docsmith generates module-level functions only (move it out of the class, or wait for method support)")]
    MethodUnsupported(String),
    #[error(
        "`{0}` has no docstring: write one describing what the function does (examples help most)"
    )]
    NoDocstring(String),
    #[error("reply {reply} does not answer the current pause ({stage})")]
    InvalidReply { reply: String, stage: &'static str },
    #[error("no attempt produced code defining `{0}`: the model's replies had no usable Python (see `docsmith history` and the llm_calls table)")]
    NoCode(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// One attempt's state.
#[derive(Debug, Clone)]
struct Attempt {
    n: u32,
    id: AttemptId,
    /// The generated module code (as the developer wrote it, extracted from the reply).
    generated: String,
    /// Standalone module: file imports + helpers + function with the user's docstring.
    standalone: String,
    /// The whole file spliced.
    full_source: String,
    run: Option<TestRun>,
    findings: Vec<Finding>,
    /// Set when the attempt could not be run at all (no code, splice failure).
    failure: Option<String>,
    started: Instant,
    stage_times: BTreeMap<String, u64>,
    /// The test ids that were active when it ran.
    active: Vec<String>,
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
    stage: Stage,
    started: Instant,
    plan: Plan,
    answered: Vec<Clarification>,
    questions_asked: u32,
    pending_question: Option<Question>,
    tests: Vec<TestCase>,
    dropped: Vec<(String, String)>,
    judged: HashSet<String>,
    attempts: Vec<Attempt>,
    /// Attempts written in the current round (rounds restart on feedback).
    round_attempts: u32,
    /// Index into `attempts` where the current round starts.
    round_start: usize,
    feedback: Option<String>,
    feedback_unaddressed: bool,
    critique: String,
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
    /// it is a method, it has no docstring (for generation), or the store fails.
    pub fn start(
        spec: TaskSpec,
        deps: Deps,
        events: Option<UnboundedSender<Event>>,
    ) -> Result<TaskRun, PipelineError> {
        let stub = match &spec.target {
            Target::Name(n) => python::find_function(&spec.source, n)?,
            Target::Line(l) => python::find_function_at_line(&spec.source, *l)?,
        };
        if stub.class_name.is_some() {
            return Err(PipelineError::MethodUnsupported(stub.name.clone()));
        }
        if stub.docstring.is_none() && spec.feedback.is_none() {
            return Err(PipelineError::NoDocstring(stub.name.clone()));
        }
        let imports = python::module_imports(&spec.source);
        let fn_src = python::function_source(&spec.source, &stub.name).unwrap_or_default();
        let stub_module = if imports.is_empty() {
            fn_src.clone()
        } else {
            format!("{}\n\n\n{}", imports.join("\n"), fn_src)
        };
        let view = StubView {
            name: stub.name.clone(),
            source: fn_src,
            imports,
        };
        let task = deps.store.create_task(&NewTask {
            workspace: spec.workspace.display().to_string(),
            file: spec.file.display().to_string(),
            function: stub.name.clone(),
            kind: spec.kind,
            stub_source: view.source.clone(),
            docstring: stub.docstring.clone(),
        })?;
        let mut notes = Vec::new();
        if let Some(n) = deps.sandbox.isolation_note() {
            notes.push(n);
        }
        let feedback = spec.feedback.clone();
        if let Some(fb) = &feedback {
            deps.store.add_feedback(task, None, fb)?;
        }
        // `docsmith-task-<pid>-*`: removed by a later start if this process dies.
        let work = crate::sandbox::temp_work_dir("task")?;
        Ok(TaskRun {
            feedback_unaddressed: feedback.is_some(),
            feedback,
            deps,
            events,
            spec,
            task,
            stub,
            view,
            stub_module,
            stage: Stage::Plan,
            started: Instant::now(),
            plan: Plan::default(),
            answered: Vec::new(),
            questions_asked: 0,
            pending_question: None,
            tests: Vec::new(),
            dropped: Vec::new(),
            judged: HashSet::new(),
            attempts: Vec::new(),
            round_attempts: 0,
            round_start: 0,
            critique: String::new(),
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

    /// Maximum attempts in one round: the first plus `max_refinements` rewrites.
    pub fn max_attempts(&self) -> u32 {
        1 + self.deps.settings.max_refinements
    }

    /// Runs stages until the loop needs the user or ends. On an error the task is
    /// recorded as failed (or cancelled) with the reason, then the error is returned.
    pub async fn advance(&mut self, cancel: &CancellationToken) -> Result<Pause, PipelineError> {
        match self.advance_inner(cancel).await {
            Ok(p) => Ok(p),
            Err(e) => {
                let status = if matches!(e, PipelineError::Cancelled) {
                    TaskStatus::Cancelled
                } else {
                    TaskStatus::Failed
                };
                let _ = self
                    .deps
                    .store
                    .set_task_status(self.task, status, Some(&e.to_string()));
                self.stage = Stage::Done;
                Err(e)
            }
        }
    }

    /// Answers the current pause. Errors when the reply does not fit it (an
    /// `Accept` while a question is pending, for example); nothing changes then.
    pub fn reply(&mut self, reply: Reply) -> Result<(), PipelineError> {
        match (self.stage, reply) {
            (Stage::Clarify, Reply::Answer(a)) => {
                let q = self
                    .pending_question
                    .take()
                    .expect("a question is pending in Clarify");
                self.deps
                    .store
                    .add_clarification(self.task, &q.text, &q.options, &a, false)?;
                self.answered.push(Clarification {
                    question: q.text,
                    answer: a,
                });
                self.stage = Stage::Plan;
            }
            (Stage::Clarify, Reply::Assume) => {
                let q = self
                    .pending_question
                    .take()
                    .expect("a question is pending in Clarify");
                let assumed = self.plan.assumptions.join("; ");
                self.deps
                    .store
                    .add_clarification(self.task, &q.text, &q.options, &assumed, true)?;
                self.notes.push(format!(
                    "question not answered, assumed: {}",
                    if assumed.is_empty() {
                        "nothing stated"
                    } else {
                        &assumed
                    }
                ));
                self.stage = Stage::DesignTests;
            }
            (Stage::Review, Reply::Accept) => self.stage = Stage::Package,
            (Stage::Review, Reply::Reject(fb)) => {
                let last = self.attempts.last().map(|a| a.id);
                self.deps.store.add_feedback(self.task, last, &fb)?;
                self.deps.store.set_task_status(
                    self.task,
                    TaskStatus::Running,
                    Some("refining with feedback"),
                )?;
                self.feedback = Some(fb);
                self.feedback_unaddressed = true;
                self.round_attempts = 0;
                self.round_start = self.attempts.len();
                self.stage = Stage::Critique;
            }
            (Stage::Review, Reply::Discard) => {
                self.deps.store.set_task_status(
                    self.task,
                    TaskStatus::Discarded,
                    Some("discarded by the user"),
                )?;
                self.stage = Stage::Done;
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
                    self.deps
                        .store
                        .set_task_status(self.task, TaskStatus::AwaitingAnswer, None)?;
                    return Ok(Pause::Question(q));
                }
                Stage::DesignTests => self.step_design_tests(cancel).await?,
                Stage::WriteCode => self.step_write_code(cancel).await?,
                Stage::RunTests => self.step_run_tests(cancel).await?,
                Stage::Validate => self.step_validate()?,
                Stage::SecurityCheck => self.step_security()?,
                Stage::Critique => self.step_critique(cancel).await?,
                Stage::Review => {
                    let p = self.step_review()?;
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

    fn enter(&self, stage: Stage, message: String) {
        let max = self.max_attempts().max(1);
        let k = self.round_attempts.min(max);
        let percent = match stage {
            Stage::Plan | Stage::Clarify => 3,
            Stage::DesignTests => 10,
            Stage::Review | Stage::Package | Stage::Done => 100,
            _ => 20 + (75 * k.saturating_sub(1) + 75 * stage_fraction(stage) / 100) / max,
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
        let attempt = self.attempts.last().map(|a| a.id);
        let res = self.deps.router.complete(role, req, cancel).await;
        match res {
            Ok((c, _)) => {
                self.llm_calls += 1;
                self.prompt_tokens += c.prompt_tokens as u64;
                self.completion_tokens += c.completion_tokens as u64;
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
                    response: Some(c.text.clone()),
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

    async fn step_plan(&mut self, cancel: &CancellationToken) -> Result<Stage, PipelineError> {
        self.enter(Stage::Plan, "planning".into());
        let s = &self.deps.settings;
        let may_ask = s.interactive && self.questions_asked < s.max_clarifications;
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
        if !self.plan.question.is_empty() {
            if may_ask {
                self.questions_asked += 1;
                self.pending_question = Some(Question {
                    text: self.plan.question.clone(),
                    options: self.plan.options.clone(),
                    assumptions: self.plan.assumptions.clone(),
                    round: self.questions_asked,
                });
                return Ok(Stage::Clarify);
            }
            let assumed = self.plan.assumptions.join("; ");
            self.deps.store.add_clarification(
                self.task,
                &self.plan.question,
                &self.plan.options,
                &assumed,
                true,
            )?;
            let q = self.plan.question.clone();
            self.note(format!("planner asked \"{q}\"; not asked (non-interactive or budget spent), assumptions taken"));
            self.plan.question.clear();
        }
        Ok(Stage::DesignTests)
    }

    async fn step_design_tests(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        self.enter(Stage::DesignTests, "designing tests".into());
        let examples = python::extract_examples(&self.stub);
        let max = self.deps.settings.max_generated_tests;
        let mut generated = Vec::new();
        if max > 0 {
            let guide = self.deps.guidelines.for_role(Role::TestDesigner, false);
            let req = roles::tests_request(&self.view, &guide, &self.plan, &examples, max);
            match self.call_parsed(Role::TestDesigner, req, roles::parse_tests, cancel).await? {
                Ok(t) => generated = t,
                Err(e) => self.note(format!("test designer output unusable ({e}); going on with the docstring's examples only")),
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
            let expected = if raises.is_some() {
                String::new()
            } else {
                g.expected.trim().to_string()
            };
            if call.is_empty()
                || (expected.is_empty() && raises.is_none())
                || !call.contains(&self.stub.name)
            {
                continue;
            }
            if !python::syntax_errors(&call).is_empty()
                || (raises.is_none() && !python::is_literal(&expected))
            {
                continue;
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
                if *doc_expected != normalize(&case.expected) {
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
            self.note("the docstring has no examples: only generated tests check the code (add `>>>` examples for trustworthy results)".into());
        }
        self.tests = tests;
        self.enter(
            Stage::DesignTests,
            format!(
                "designed tests ({} from the docstring, {} generated)",
                doc,
                self.tests.len() - doc
            ),
        );
        if self.feedback_unaddressed {
            // Refining an existing function: its current code is attempt 0, the baseline the critic reads.
            let code = self.view.source.clone();
            self.new_attempt(0, code)?;
            return Ok(Stage::RunTests);
        }
        Ok(Stage::WriteCode)
    }

    fn drop_test(&mut self, id: &str, reason: &str, attempt_n: u32) -> Result<(), PipelineError> {
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

    /// Records a new attempt with `generated` code, splicing it into the stub module and the file.
    fn new_attempt(&mut self, n: u32, generated: String) -> Result<(), PipelineError> {
        let id = self.deps.store.start_attempt(self.task, n, &generated)?;
        let mut attempt = Attempt {
            n,
            id,
            generated: generated.clone(),
            standalone: String::new(),
            full_source: String::new(),
            run: None,
            findings: Vec::new(),
            failure: None,
            started: Instant::now(),
            stage_times: BTreeMap::new(),
            active: Vec::new(),
        };
        let spliced = python::find_function(&self.stub_module, &self.stub.name)
            .and_then(|f| python::splice(&self.stub_module, &f, &generated))
            .and_then(|s| {
                python::splice(&self.spec.source, &self.stub, &generated).map(|full| (s, full))
            });
        match spliced {
            Ok((standalone, full)) => {
                attempt.standalone = standalone.source;
                attempt.full_source = full.source;
            }
            Err(e) => attempt.failure = Some(e.to_string()),
        }
        self.attempts.push(attempt);
        Ok(())
    }

    async fn step_write_code(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Stage, PipelineError> {
        self.round_attempts += 1;
        let n = self.attempts.iter().map(|a| a.n).max().map_or(1, |m| m + 1);
        self.enter(
            Stage::WriteCode,
            format!(
                "writing code (attempt {}/{})",
                self.round_attempts,
                self.max_attempts()
            ),
        );
        let t0 = Instant::now();
        let rewriting = self.attempts.last().is_some();
        let guide = self.deps.guidelines.for_role(Role::Developer, rewriting);
        let req = match self.attempts.last() {
            Some(prev) => {
                let run = prev.run.as_ref();
                let failures = failures_of(&self.tests, run);
                let code = if prev.generated.is_empty() {
                    &self.view.source
                } else {
                    &prev.generated
                };
                let rw = RewriteContext {
                    previous_code: code,
                    failures,
                    findings: &prev.findings,
                    critique: &self.critique,
                    feedback: self.feedback.as_deref(),
                    attempt: self.round_attempts.max(2),
                };
                roles::code_request(&self.view, &guide, &self.plan, Some(&rw))
            }
            None => roles::code_request(&self.view, &guide, &self.plan, None),
        };
        let name = self.stub.name.clone();
        let mut parsed = self
            .call_parsed(
                Role::Developer,
                req.clone(),
                |t| roles::parse_code(t, &name),
                cancel,
            )
            .await?;
        // The same code again teaches nothing: ask once more, hotter.
        let repeats = |code: &str| {
            self.attempts
                .iter()
                .any(|a| normalize(&a.generated) == normalize(code))
        };
        if parsed.as_ref().is_ok_and(|c| repeats(c)) {
            self.note(format!(
                "attempt {} repeated earlier code; sampling again at a higher temperature",
                self.round_attempts
            ));
            let mut hot = req;
            hot.temperature = 0.9;
            hot.seed = hot.seed.wrapping_add(1000);
            parsed = self
                .call_parsed(
                    Role::Developer,
                    hot,
                    |t| roles::parse_code(t, &name),
                    cancel,
                )
                .await?;
        }
        self.feedback_unaddressed = false;
        let next = match parsed {
            Ok(code) => {
                self.new_attempt(n, code)?;
                if self.attempts.last().is_some_and(|a| a.failure.is_some()) {
                    Stage::Critique
                } else {
                    Stage::RunTests
                }
            }
            Err(e) => {
                self.new_attempt(n, String::new())?;
                if let Some(a) = self.attempts.last_mut() {
                    a.failure = Some(e.to_string());
                }
                Stage::Critique
            }
        };
        if let Some(a) = self.attempts.last_mut() {
            a.stage_times
                .insert("write_code".into(), t0.elapsed().as_millis() as u64);
        }
        Ok(next)
    }

    async fn step_run_tests(&mut self, cancel: &CancellationToken) -> Result<Stage, PipelineError> {
        let total = self.tests.len();
        self.enter(Stage::RunTests, format!("running tests ({total})"));
        let t0 = Instant::now();
        let a = self.attempts.last().expect("RunTests follows an attempt");
        let module =
            if python::syntax_errors(&self.spec.source).is_empty() && !a.full_source.is_empty() {
                a.full_source.clone()
            } else {
                a.standalone.clone()
            };
        let n = a.n;
        let dir = self.work.path().join(format!("attempt-{n}"));
        std::fs::create_dir_all(&dir)?;
        let run = self
            .deps
            .sandbox
            .run_tests(&dir, &module, &self.stub.name, &self.tests, cancel)
            .await;
        let run = match run {
            Ok(r) => r,
            Err(SandboxError::Cancelled) => return Err(PipelineError::Cancelled),
            Err(e) => return Err(e.into()),
        };
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let attempt_id = a.id;
        self.deps.store.add_test_run(attempt_id, &run)?;
        self.emit(Event::Tests {
            task: self.task.0,
            attempt: n,
            passed: run.passed(),
            total: run.results.len(),
        });
        let active: Vec<String> = self.tests.iter().map(|t| t.id.clone()).collect();
        {
            let a = self.attempts.last_mut().expect("attempt");
            a.run = Some(run.clone());
            a.active = active;
            a.stage_times
                .insert("run_tests".into(), t0.elapsed().as_millis() as u64);
        }
        // Test trust: only when every docstring example passes may generated tests be judged.
        let failures = failures_of(&self.tests, Some(&run));
        let doc_failing = failures
            .iter()
            .any(|(c, _)| c.origin == TestOrigin::Docstring);
        let suspects: Vec<(TestCase, TestResult)> = failures
            .iter()
            .filter(|(c, _)| c.origin == TestOrigin::Generated && !self.judged.contains(&c.id))
            .map(|(c, r)| ((*c).clone(), (*r).clone()))
            .collect();
        if run.load_error.is_none() && !doc_failing && !suspects.is_empty() {
            self.judge_suspects(&suspects, n, cancel).await?;
        }
        let remaining = failures_of(&self.tests, Some(&run)).len();
        // Every active test passes, or there are none and the module loaded.
        let tests_pass = remaining == 0 && !self.tests.is_empty();
        let nothing_to_run = self.tests.is_empty() && run.load_error.is_none();
        if tests_pass || nothing_to_run {
            Ok(Stage::Validate)
        } else {
            Ok(Stage::Critique)
        }
    }

    async fn judge_suspects(
        &mut self,
        suspects: &[(TestCase, TestResult)],
        n: u32,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.enter(
            Stage::RunTests,
            format!("judging {} suspect generated test(s)", suspects.len()),
        );
        let guide = self.deps.guidelines.for_role(Role::Critic, false);
        let pairs: Vec<(&TestCase, &TestResult)> = suspects.iter().map(|(c, r)| (c, r)).collect();
        let req = roles::judge_tests_request(&self.view, &guide, &pairs);
        for (c, _) in suspects {
            self.judged.insert(c.id.clone());
        }
        match self
            .call_parsed(Role::Critic, req, roles::parse_verdicts, cancel)
            .await?
        {
            Ok(verdicts) => {
                for v in verdicts.into_iter().filter(|v| v.test_is_wrong) {
                    if suspects.iter().any(|(c, _)| c.id == v.id) {
                        let reason =
                            format!("contradicts the docstring (critic): {}", v.reason.trim());
                        self.drop_test(&v.id, &reason, n)?;
                    }
                }
            }
            Err(e) => self.note(format!(
                "critic's verdicts on suspect tests unusable ({e}); keeping the tests"
            )),
        }
        Ok(())
    }

    fn step_validate(&mut self) -> Result<Stage, PipelineError> {
        self.enter(Stage::Validate, "validating".into());
        let t0 = Instant::now();
        let a = self.attempts.last().expect("attempt");
        let report = crate::checks::validate(&self.stub, &a.standalone, &self.deps.settings.python);
        self.finish_checks(report, "validate", t0)?;
        Ok(if self.last_has_errors() {
            Stage::Critique
        } else {
            Stage::SecurityCheck
        })
    }

    fn step_security(&mut self) -> Result<Stage, PipelineError> {
        self.enter(Stage::SecurityCheck, "security check".into());
        let t0 = Instant::now();
        let a = self.attempts.last().expect("attempt");
        let report = crate::checks::security_check(&a.standalone);
        self.finish_checks(report, "security", t0)?;
        if self.last_has_errors() || self.feedback_unaddressed {
            Ok(Stage::Critique)
        } else {
            Ok(Stage::Review)
        }
    }

    fn finish_checks(
        &mut self,
        report: crate::types::CheckReport,
        phase: &str,
        t0: Instant,
    ) -> Result<(), PipelineError> {
        let a = self.attempts.last().expect("attempt");
        self.deps
            .store
            .add_findings(a.id, phase, &report.findings)?;
        for n in report.notes {
            if !self.notes.contains(&n) {
                self.note(n);
            }
        }
        let a = self.attempts.last_mut().expect("attempt");
        a.findings.extend(report.findings);
        a.stage_times
            .insert(phase.to_string(), t0.elapsed().as_millis() as u64);
        Ok(())
    }

    fn last_has_errors(&self) -> bool {
        self.attempts
            .last()
            .is_some_and(|a| a.findings.iter().any(|f| f.severity == Severity::Error))
    }

    async fn step_critique(&mut self, cancel: &CancellationToken) -> Result<Stage, PipelineError> {
        self.close_last_attempt("needs work")?;
        if !self.feedback_unaddressed && self.round_attempts >= self.max_attempts() {
            self.note(format!(
                "refinement budget spent ({} attempts): offering the best attempt",
                self.round_attempts
            ));
            return Ok(Stage::Review);
        }
        self.enter(Stage::Critique, "critique".into());
        let a = self
            .attempts
            .last()
            .expect("Critique follows an attempt")
            .clone();
        let feedback = if self.feedback_unaddressed {
            self.feedback.clone()
        } else {
            None
        };
        if let Some(f) = &a.failure {
            // Nothing ran: the developer's reply itself was unusable; that is the critique.
            self.critique = format!("The previous reply was unusable: {f}. Reply with one ```python block defining the function.");
            self.deps.store.add_critique(a.id, &self.critique, None)?;
            return Ok(Stage::WriteCode);
        }
        let failures = failures_of(&self.tests, a.run.as_ref());
        let errors: Vec<Finding> = a
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .cloned()
            .collect();
        let code = if a.generated.is_empty() {
            self.view.source.clone()
        } else {
            a.generated.clone()
        };
        let guide = self.deps.guidelines.for_role(Role::Critic, true);
        let load_note;
        let mut failures = failures;
        let load_case;
        let load_result;
        if let Some(le) = a.run.as_ref().and_then(|r| r.load_error.clone()) {
            load_note = le;
            load_case = TestCase {
                id: "import".into(),
                origin: TestOrigin::Docstring,
                call: "import candidate".into(),
                expected: "no error".into(),
                raises: None,
                note: String::new(),
            };
            load_result = TestResult {
                test_id: "import".into(),
                passed: false,
                error_type: Some("ImportError".into()),
                message: Some(load_note.clone()),
                traceback: None,
                actual: None,
                duration_ms: 0,
                outcome: None,
            };
            failures.insert(0, (&load_case, &load_result));
        }
        let req = roles::critique_request(
            &self.view,
            &guide,
            &code,
            &failures,
            &errors,
            feedback.as_deref(),
        );
        let fallback = roles::describe_failures(&failures, 4);
        match self
            .call_parsed(Role::Critic, req, roles::parse_critique, cancel)
            .await?
        {
            Ok(c) => {
                self.critique = c.text();
                self.deps.store.add_critique(
                    a.id,
                    &self.critique,
                    Some(&serde_json::to_string(&c).unwrap_or_default()),
                )?;
            }
            Err(e) => {
                self.note(format!(
                    "critic output unusable ({e}); passing the raw failures to the developer"
                ));
                self.critique = fallback;
                self.deps.store.add_critique(a.id, &self.critique, None)?;
            }
        }
        Ok(Stage::WriteCode)
    }

    /// Score for choosing the best attempt: docstring passes, generated passes, fewer error findings.
    fn score(&self, a: &Attempt) -> (usize, usize, i64, u32) {
        let Some(run) = &a.run else {
            return (0, 0, i64::MIN, a.n);
        };
        let active: HashSet<&str> = self.tests.iter().map(|t| t.id.as_str()).collect();
        let origin = |id: &str| self.tests.iter().find(|t| t.id == id).map(|t| t.origin);
        let mut doc = 0;
        let mut gen = 0;
        for r in run
            .results
            .iter()
            .filter(|r| r.passed && active.contains(r.test_id.as_str()))
        {
            match origin(&r.test_id) {
                Some(TestOrigin::Docstring) => doc += 1,
                Some(TestOrigin::Generated) => gen += 1,
                None => {}
            }
        }
        let errors = a
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count() as i64;
        (doc, gen, -errors, a.n)
    }

    fn close_last_attempt(&mut self, verdict: &str) -> Result<(), PipelineError> {
        let Some(a) = self.attempts.last() else {
            return Ok(());
        };
        let (passed, failed) = a.run.as_ref().map_or((0, 0), |r| {
            (r.passed() as u32, (r.results.len() - r.passed()) as u32)
        });
        let errors = a
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count() as u32;
        let stage_reached = if a.failure.is_some() {
            "write_code"
        } else if !a.findings.is_empty() || a.stage_times.contains_key("validate") {
            if a.stage_times.contains_key("security") {
                "security_check"
            } else {
                "validate"
            }
        } else {
            "run_tests"
        };
        self.deps.store.finish_attempt(
            a.id,
            &AttemptSummary {
                stage_reached: stage_reached.to_string(),
                passed,
                failed,
                findings_errors: errors,
                wall_ms: a.started.elapsed().as_millis() as u64,
                stage_times_ms: a.stage_times.clone(),
                verdict: a.failure.clone().unwrap_or_else(|| verdict.to_string()),
            },
        )?;
        Ok(())
    }

    fn step_review(&mut self) -> Result<Box<Proposal>, PipelineError> {
        self.enter(Stage::Review, "ready for review".into());
        let last_passing = self.attempts.last().is_some_and(|a| self.attempt_passes(a));
        if last_passing {
            self.close_last_attempt("passing")?;
        }
        let usable =
            |a: &&Attempt| a.failure.is_none() && a.run.is_some() && !a.generated.is_empty();
        let round = &self.attempts[self.round_start.min(self.attempts.len())..];
        // Prefer this round's attempts (a rejected proposal should not come straight back).
        let best = round
            .iter()
            .filter(usable)
            .max_by_key(|a| self.score(a))
            .or_else(|| {
                self.attempts
                    .iter()
                    .filter(usable)
                    .max_by_key(|a| self.score(a))
            })
            .cloned();
        let best = match best {
            Some(b) => b,
            None => return Err(PipelineError::NoCode(self.stub.name.clone())),
        };
        let passing = self.attempt_passes(&best);
        let mut reasons = Vec::new();
        let run = best.run.clone().expect("best has a run");
        if let Some(le) = &run.load_error {
            reasons.push(format!("the module fails to load: {le}"));
        }
        for (c, r) in failures_of(&self.tests, Some(&run)) {
            reasons.push(format!(
                "test {} `{}` fails: {}",
                c.id,
                c.call.replace('\n', "; "),
                r.message.clone().unwrap_or_default()
            ));
        }
        for f in best
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
        {
            reasons.push(format!("{} finding {}: {}", f.tool, f.rule, f.message));
        }
        if !passing && reasons.is_empty() {
            reasons.push("no test ran".into());
        }
        let tests = self
            .tests
            .iter()
            .map(|c| CaseOutcome {
                case: c.clone(),
                result: run.results.iter().find(|r| r.test_id == c.id).cloned(),
            })
            .collect();
        let diff = unified_diff(&self.spec.source, &best.full_source, &self.spec.file);
        let mut proposal = Proposal {
            task: self.task.0,
            function: self.stub.name.clone(),
            file: self.spec.file.clone(),
            code: best.standalone.clone(),
            new_source: best.full_source.clone(),
            diff,
            passing,
            reasons,
            tests,
            dropped: self.dropped.clone(),
            findings: best.findings.clone(),
            attempt: best.n,
            attempts: self.attempts.iter().filter(|a| a.n > 0).count() as u32,
            llm_calls: self.llm_calls,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            wall_ms: self.started.elapsed().as_millis() as u64,
            notes: self.notes.clone(),
            dir: None,
            original: self.view.source.clone(),
        };
        if self.deps.settings.write_proposal_files {
            match write_proposal_files(&self.spec.workspace, &proposal) {
                Ok(dir) => {
                    self.deps
                        .store
                        .set_task_proposal_dir(self.task, &dir.display().to_string())?;
                    proposal.dir = Some(dir);
                }
                Err(e) => tracing::warn!("could not write the proposal files: {e}"),
            }
        }
        // Kept so a restarted server can still apply the proposal.
        self.deps
            .store
            .set_task_final(self.task, &proposal.code, proposal.wall_ms)?;
        let status_reason = if passing {
            None
        } else {
            Some(proposal.reasons.join("; "))
        };
        self.deps.store.set_task_status(
            self.task,
            TaskStatus::AwaitingReview,
            status_reason.as_deref(),
        )?;
        let boxed = Box::new(proposal);
        self.proposal = Some(boxed.clone());
        Ok(boxed)
    }

    fn attempt_passes(&self, a: &Attempt) -> bool {
        a.failure.is_none()
            && a.run.as_ref().is_some_and(|r| r.load_error.is_none())
            && failures_of(&self.tests, a.run.as_ref()).is_empty()
            && !a.findings.iter().any(|f| f.severity == Severity::Error)
            && !a.generated.is_empty()
    }

    fn step_package(&mut self) -> Result<Stage, PipelineError> {
        self.enter(Stage::Package, "packaging".into());
        let p = self.proposal.as_ref().expect("Package follows Review");
        let wall = self.started.elapsed().as_millis() as u64;
        self.deps.store.set_task_final(self.task, &p.code, wall)?;
        self.deps
            .store
            .set_task_status(self.task, TaskStatus::Accepted, None)?;
        Ok(Stage::Done)
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

fn stage_fraction(stage: Stage) -> u32 {
    match stage {
        Stage::WriteCode => 10,
        Stage::RunTests => 50,
        Stage::Validate => 70,
        Stage::SecurityCheck => 80,
        Stage::Critique => 90,
        _ => 0,
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
    let mut out = String::with_capacity(s.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match quote {
            Some(q) => {
                out.push(if c == q && !escaped { '\'' } else { c });
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push('\'');
            }
            None if c.is_whitespace() => {}
            None => out.push(c),
        }
    }
    out
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

/// Unified diff (3 lines of context) with `a/` and `b/` headers.
pub fn unified_diff(old: &str, new: &str, file: &Path) -> String {
    let shown = file.display().to_string();
    let name = shown.trim_start_matches('/');
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// The test module written beside a proposal: one pytest function per test case.
pub fn render_test_module(p: &Proposal, module: &str) -> String {
    let mut s = format!(
        "# Tests docsmith designed for `{}` (task {}).\n",
        p.function, p.task
    );
    s.push_str(&format!("from {module} import *  # noqa: F401,F403\n\n"));
    for t in &p.tests {
        let c = &t.case;
        s.push_str(&format!("\ndef test_{}():\n", c.id));
        s.push_str(&format!(
            "    # {} test{}\n",
            c.origin.as_str(),
            if c.note.is_empty() {
                String::new()
            } else {
                format!(": {}", c.note.lines().next().unwrap_or(""))
            }
        ));
        let lines: Vec<&str> = c.call.lines().collect();
        let (setup, last) = lines.split_at(lines.len().saturating_sub(1));
        for l in setup {
            s.push_str(&format!("    {l}\n"));
        }
        let last = last.first().copied().unwrap_or("");
        match &c.raises {
            Some(exc) => {
                s.push_str(&format!(
                    "    import pytest\n    with pytest.raises({exc}):\n        {last}\n"
                ));
            }
            None => s.push_str(&format!("    assert {last} == {}\n", c.expected)),
        }
    }
    s
}

/// The review report in Markdown: tests, dropped tests, findings, attempts, time, tokens.
pub fn render_report(p: &Proposal) -> String {
    let mut s = format!(
        "# docsmith proposal for `{}` (task {})\n\n**{}**\n\n",
        p.function,
        p.task,
        p.summary()
    );
    if !p.reasons.is_empty() {
        s.push_str("## Why it is not passing\n\n");
        for r in &p.reasons {
            s.push_str(&format!("- {r}\n"));
        }
        s.push('\n');
    }
    s.push_str("## Tests\n\n| id | origin | call | expected | result |\n|---|---|---|---|---|\n");
    for t in &p.tests {
        let res = match &t.result {
            Some(r) if r.passed => "pass".to_string(),
            Some(r) => format!(
                "FAIL: {}",
                r.message
                    .clone()
                    .unwrap_or_default()
                    .replace('|', "\\|")
                    .replace('\n', " ")
            ),
            None => "not run".into(),
        };
        s.push_str(&format!(
            "| {} | {} | `{}` | `{}` | {} |\n",
            t.case.id,
            t.case.origin.as_str(),
            t.case.call.replace('\n', "; ").replace('|', "\\|"),
            t.case
                .raises
                .as_ref()
                .map_or(t.case.expected.clone(), |e| format!("raises {e}"))
                .replace('|', "\\|"),
            res
        ));
    }
    if !p.dropped.is_empty() {
        s.push_str("\n## Dropped generated tests\n\n");
        for (id, why) in &p.dropped {
            s.push_str(&format!("- {id}: {why}\n"));
        }
    }
    s.push_str("\n## Findings\n\n");
    if p.findings.is_empty() {
        s.push_str("none\n");
    }
    for f in &p.findings {
        s.push_str(&format!(
            "- {:?} {} ({}){}: {}\n",
            f.severity,
            f.rule,
            f.tool,
            f.line.map_or(String::new(), |l| format!(" line {l}")),
            f.message
        ));
    }
    if !p.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &p.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s.push_str(&format!("\n## Diff\n\n```diff\n{}```\n", p.diff));
    s
}

/// Writes `<workspace>/.docsmith/proposals/<task>/` with `<name>.py`, `test_<name>.py`,
/// `proposal.diff` and `report.md`; returns the directory.
pub fn write_proposal_files(workspace: &Path, p: &Proposal) -> std::io::Result<PathBuf> {
    let dir = workspace
        .join(".docsmith")
        .join("proposals")
        .join(p.task.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.py", p.function)), &p.code)?;
    std::fs::write(
        dir.join(format!("test_{}.py", p.function)),
        render_test_module(p, &p.function),
    )?;
    std::fs::write(dir.join("proposal.diff"), &p.diff)?;
    std::fs::write(dir.join("original.py"), &p.original)?;
    std::fs::write(dir.join("report.md"), render_report(p))?;
    Ok(dir)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
