//! SQLite persistence of everything the loop does: tasks, clarifications, test
//! cases (and which were dropped), attempts, sandbox test runs with per-test
//! results, validation/security findings, critiques, user feedback and every
//! LLM call with its token usage and latency.
//!
//! Owns: the schema (`migrations/*.sql`, applied in order by `PRAGMA user_version`)
//! and the typed read/write API over it. Must not know about LLM providers, LSP,
//! the CLI or the sandbox: it stores the plain data of `crate::types` and strings
//! the callers hand it.
//!
//! Concurrency: one `rusqlite::Connection` behind a `Mutex`, so `Store` is
//! `Send + Sync` and can sit in an `Arc`. Every method is synchronous and short
//! (a few ms); call it directly or from `spawn_blocking`. Several processes may
//! open the same file: WAL mode plus a 5,000 ms busy timeout lets them share it.

pub mod memory;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use serde::Serialize;

use crate::types::{
    Finding, Isolation, KillReason, Role, Severity, TestCase, TestOrigin, TestResult, TestRun,
};

/// Schema migrations, in order. Entry `i` takes the database from
/// `user_version == i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_llm_call_response.sql"),
    include_str!("migrations/0003_candidates.sql"),
    include_str!("migrations/0004_real_code.sql"),
    include_str!("migrations/0005_user_tests.sql"),
    include_str!("migrations/0006_memory.sql"),
];

/// How long a statement waits for another connection's write lock, ms.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Errors of the store. Messages name the cause and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the database could not be created.
    #[error("cannot create directory {path} for the docsmith database: {source}; check permissions or choose another path")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite could not open (or configure) the database file.
    #[error("cannot open docsmith database {path}: {source}; check the file is writable and not corrupt (delete it to start a fresh history)")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database was written by a newer docsmith whose schema this build does not know.
    #[error("docsmith database {path} has schema version {found}, newer than the {supported} this docsmith supports; upgrade docsmith or use another database file")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// A migration script failed; the database is left at the previous version.
    #[error("migrating the docsmith database to schema version {version} failed: {source}; the database was left unchanged at version {}", .version - 1)]
    Migration {
        version: usize,
        source: rusqlite::Error,
    },
    /// A row the call refers to does not exist (wrong id, or deleted).
    #[error("{what} {id} not found in the docsmith database; it may belong to another database or was never created")]
    NotFound { what: &'static str, id: String },
    /// An argument outside the allowed set (e.g. a findings phase other than `validate`/`security`).
    #[error("invalid {what}: {value:?}; expected one of {expected}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A stored value could not be decoded (unknown enum name, bad JSON).
    #[error("stored {what} {value:?} cannot be read; the database was modified by another program or is corrupt")]
    Corrupt { what: &'static str, value: String },
    /// Any other SQLite failure (disk full, locked past the busy timeout, ...).
    #[error("docsmith database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Id of a row in `tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

/// Id of a row in `attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AttemptId(pub i64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What started a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
    /// The server stopped while the task was live (see [`Store::mark_running_as_interrupted`]).
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

/// Arguments of [`Store::create_task`]. The task starts as `running`.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Workspace root the task runs in (path as text).
    pub workspace: String,
    /// File holding the function, as the caller names it (path or URI).
    pub file: String,
    /// Function name.
    pub function: String,
    pub kind: TaskKind,
    /// The stub (signature + docstring + placeholder body) as the user wrote it.
    pub stub_source: String,
    pub docstring: Option<String>,
}

/// Result of a finished attempt, written by [`Store::finish_attempt`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttemptSummary {
    /// Last stage the attempt reached, e.g. `run_tests`, `validate`, `security`, `review`.
    pub stage_reached: String,
    /// Test cases passed / failed in the attempt's last run (dropped ones excluded, as the caller counts).
    pub passed: u32,
    pub failed: u32,
    /// Number of `Error`-severity findings.
    pub findings_errors: u32,
    /// Wall time of the whole attempt, ms.
    pub wall_ms: u64,
    /// Wall time per stage name, ms.
    pub stage_times_ms: BTreeMap<String, u64>,
    /// Short outcome, e.g. `tests_failed`, `findings`, `ok`.
    pub verdict: String,
}

/// One LLM request, written by [`Store::add_llm_call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmCallRecord {
    /// The task it served, if any (model warm-up calls have none).
    pub task: Option<TaskId>,
    pub attempt: Option<AttemptId>,
    pub role: Role,
    /// Provider name, e.g. `local`, `openai`.
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Request latency, ms.
    pub latency_ms: u64,
    pub ok: bool,
    /// Error message when `ok` is false.
    pub error: Option<String>,
    /// The model's reply text (stored truncated to 16 KiB), when there was one.
    pub response: Option<String>,
}

/// Longest reply text kept per LLM call, bytes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One row of [`Store::history`]: a task at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskSummary {
    pub id: TaskId,
    /// Unix ms.
    pub created_ms: i64,
    pub file: String,
    pub function: String,
    pub kind: TaskKind,
    pub status: TaskStatus,
    pub status_reason: Option<String>,
    /// Number of attempts started.
    pub attempts: u32,
    /// Tests passed / run in the last attempt: from its summary when finished,
    /// else from its latest test run, else 0/0.
    pub tests_passed: u32,
    pub tests_total: u32,
    /// Total wall time set by [`Store::set_task_final`], ms.
    pub wall_ms: Option<u64>,
    /// LLM calls made for the task and their token totals.
    pub llm_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The `tasks` row itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    pub id: TaskId,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms of the last write to the row.
    pub updated_ms: i64,
    pub workspace: String,
    pub file: String,
    pub function: String,
    pub kind: TaskKind,
    pub status: TaskStatus,
    pub status_reason: Option<String>,
    pub stub_source: String,
    pub docstring: Option<String>,
    pub plan_json: Option<String>,
    pub final_code: Option<String>,
    pub proposal_dir: Option<String>,
    /// ms.
    pub wall_ms: Option<u64>,
}

/// A planner question and the answer used (the user's, or the planner's assumption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clarification {
    pub question: String,
    pub options: Vec<String>,
    pub answer: String,
    /// True when nobody answered and the planner's assumption was used.
    pub assumed: bool,
    /// Unix ms.
    pub created_ms: i64,
}

/// Why and when a generated test case was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropInfo {
    pub reason: String,
    /// Attempt number (`n`) at which it was dropped.
    pub at_attempt: u32,
}

/// One selection of a task ([`Store::selections`]): `(round, chosen attempt,
/// passes_gate, reason, detail_json)`.
pub type SelectionRow = (u32, Option<AttemptId>, bool, String, String);

/// One candidate of a task ([`Store::candidates`]): `(attempt, n, round,
/// weight, greedy, code)`.
pub type CandidateRow = (AttemptId, u32, u32, u32, bool, String);

/// A test case of a task plus its drop state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredTestCase {
    pub case: TestCase,
    /// `Some` once the critic judged the case wrong.
    pub dropped: Option<DropInfo>,
}

/// A finding and the pass that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredFinding {
    /// `validate` or `security`.
    pub phase: String,
    pub finding: Finding,
}

/// A critic's output for an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Critique {
    pub text: String,
    /// The structured critique, when the critic produced valid JSON.
    pub json: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
}

/// User feedback given on review or with a refine request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedbackRecord {
    /// The attempt that was shown when the feedback was given, if any.
    pub attempt: Option<AttemptId>,
    pub text: String,
    /// Unix ms.
    pub created_ms: i64,
}

/// One attempt with everything recorded for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub id: AttemptId,
    /// 1-based attempt number within the task.
    pub n: u32,
    pub code: String,
    /// Unix ms.
    pub started_ms: i64,
    /// `None` while the attempt is still running.
    pub summary: Option<AttemptSummary>,
    /// Sandbox runs in the order they were recorded.
    pub runs: Vec<TestRun>,
    pub findings: Vec<StoredFinding>,
    pub critiques: Vec<Critique>,
}

/// LLM usage of one role within a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleUsage {
    pub role: Role,
    pub calls: u32,
    pub failed_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Sum of latencies, ms.
    pub latency_ms: u64,
}

/// Everything stored about one task, from [`Store::task`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskDetail {
    pub task: TaskRow,
    pub clarifications: Vec<Clarification>,
    /// All test cases in insertion order, dropped ones included (see [`TaskDetail::dropped`]).
    pub test_cases: Vec<StoredTestCase>,
    /// Attempts ordered by `n`.
    pub attempts: Vec<AttemptRecord>,
    pub feedback: Vec<FeedbackRecord>,
    /// Per role, in [`Role::ALL`] order; roles without calls are left out.
    pub llm_usage: Vec<RoleUsage>,
    pub llm_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TaskDetail {
    /// The attempt with the highest `n`, if any.
    pub fn last_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }

    /// Findings of the last attempt (empty when there is none).
    pub fn last_findings(&self) -> &[StoredFinding] {
        self.last_attempt().map_or(&[], |a| a.findings.as_slice())
    }

    /// Test cases that were dropped, with why.
    pub fn dropped(&self) -> impl Iterator<Item = (&TestCase, &DropInfo)> {
        self.test_cases
            .iter()
            .filter_map(|t| t.dropped.as_ref().map(|d| (&t.case, d)))
    }
}

/// Handle on the docsmith database. Cheap to share in an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it and its parent directories if needed) the database at
    /// `path`, sets WAL mode, `foreign_keys=ON` and a 5,000 ms busy timeout, and
    /// applies pending migrations.
    ///
    /// Errors: [`StoreError::CreateDir`], [`StoreError::Open`], [`StoreError::NewerSchema`]
    /// when the file was written by a newer docsmith, [`StoreError::Migration`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode; concurrent readers will block writers");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        Self::finish_open(conn, &path.display().to_string())
    }

    /// An empty database in memory (tests, `--no-history` runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::finish_open(conn, ":memory:")
    }

    fn finish_open(mut conn: Connection, label: &str) -> Result<Store, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|source| StoreError::Open {
                path: PathBuf::from(label),
                source,
            })?;
        let applied = migrate(&mut conn, MIGRATIONS, label)?;
        if applied > 0 {
            tracing::info!(
                db = label,
                applied,
                version = MIGRATIONS.len(),
                "migrated docsmith database"
            );
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic, transactions roll back on drop), so a
        // poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a task with status `running`; returns its id.
    pub fn create_task(&self, t: &NewTask) -> Result<TaskId, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tasks (created_ms, updated_ms, workspace, file, function, kind, status, stub_source, docstring)
             VALUES (?1, ?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
            params![now, t.workspace, t.file, t.function, t.kind.as_str(), t.stub_source, t.docstring],
        )?;
        Ok(TaskId(conn.last_insert_rowid()))
    }

    /// Sets the status (and its reason, cleared when `None`). Errors with
    /// [`StoreError::NotFound`] for an unknown task.
    /// Records what the model was shown around the stub (JSON of
    /// `python::context::Gathered`).
    pub fn set_task_context(&self, task: TaskId, context_json: &str) -> Result<(), StoreError> {
        self.update_task(task, "context_json = ?2", params![task.0, context_json])
    }

    /// The context recorded with [`Store::set_task_context`], if any.
    pub fn task_context(&self, task: TaskId) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT context_json FROM tasks WHERE id = ?1",
                [task.0],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    pub fn set_task_status(
        &self,
        task: TaskId,
        status: TaskStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_task(
            task,
            "status = ?2, status_reason = ?3",
            params![task.0, status.as_str(), reason],
        )
    }

    /// Stores the planner's plan (JSON text, not validated here).
    pub fn set_task_plan(&self, task: TaskId, plan_json: &str) -> Result<(), StoreError> {
        self.update_task(task, "plan_json = ?2", params![task.0, plan_json])
    }

    /// Stores the code proposed for review and the task's total wall time, ms.
    pub fn set_task_final(&self, task: TaskId, code: &str, wall_ms: u64) -> Result<(), StoreError> {
        self.update_task(
            task,
            "final_code = ?2, wall_ms = ?3",
            params![task.0, code, to_i64(wall_ms)],
        )
    }

    /// Stores where the proposal files were written (`.docsmith/proposals/<task>/`).
    pub fn set_task_proposal_dir(&self, task: TaskId, dir: &str) -> Result<(), StoreError> {
        self.update_task(task, "proposal_dir = ?2", params![task.0, dir])
    }

    fn update_task(
        &self,
        task: TaskId,
        set: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE tasks SET {set}, updated_ms = {} WHERE id = ?1",
            now_ms()
        );
        let n = self.conn().execute(&sql, params)?;
        if n == 0 {
            return Err(not_found("task", task.0));
        }
        Ok(())
    }

    /// Records a planner question, its suggested answers and the answer used.
    pub fn add_clarification(
        &self,
        task: TaskId,
        question: &str,
        options: &[String],
        answer: &str,
        assumed: bool,
    ) -> Result<(), StoreError> {
        let options_json = serde_json::to_string(options).unwrap_or_else(|_| "[]".into());
        self.conn()
            .execute(
                "INSERT INTO clarifications (task, question, options_json, answer, assumed, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![task.0, question, options_json, answer, assumed, now_ms()],
            )
            .map_err(|e| fk_not_found(e, "task", task.0))?;
        Ok(())
    }

    /// Records test cases of a task, in one transaction. A case whose `id` the
    /// task already has replaces the stored one (its drop state is kept).
    pub fn add_test_cases(&self, task: TaskId, cases: &[TestCase]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO test_cases (task, test_id, origin, call, expected, raises, note, options)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (task, test_id) DO UPDATE SET origin = excluded.origin,
                   call = excluded.call, expected = excluded.expected,
                   raises = excluded.raises, note = excluded.note, options = excluded.options",
            )?;
            for c in cases {
                stmt.execute(params![
                    task.0,
                    c.id,
                    c.origin.as_str(),
                    c.call,
                    c.expected,
                    c.raises,
                    c.note,
                    c.options.join(",")
                ])
                .map_err(|e| fk_not_found(e, "task", task.0))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The test cases the user stated in feedback (origin `user`) on earlier
    /// tasks of `function` (a qualname) in `file` of `workspace` (both as
    /// the tasks recorded them), oldest first, each distinct (call,
    /// expected, raises) once, numbered `user1`, `user2`... in that order:
    /// ground truth for a new task on that function.
    pub fn user_test_cases(
        &self,
        workspace: &str,
        file: &str,
        function: &str,
    ) -> Result<Vec<TestCase>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.test_id, c.call, c.expected, c.raises, c.note
             FROM test_cases c JOIN tasks t ON t.id = c.task
             WHERE c.origin = 'user' AND t.workspace = ?1 AND t.file = ?2 AND t.function = ?3
             ORDER BY c.id",
        )?;
        let rows = stmt.query_map(params![workspace, file, function], |r| {
            Ok(TestCase {
                id: r.get(0)?,
                origin: TestOrigin::User,
                call: r.get(1)?,
                expected: r.get(2)?,
                raises: r.get(3)?,
                note: r.get(4)?,
                options: Vec::new(),
            })
        })?;
        let mut out: Vec<TestCase> = Vec::new();
        for c in rows {
            let mut c = c?;
            if !out
                .iter()
                .any(|o| (&o.call, &o.expected, &o.raises) == (&c.call, &c.expected, &c.raises))
            {
                // Renumbered: ids of different tasks may repeat.
                c.id = format!("user{}", out.len() + 1);
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Marks a test case as dropped (the critic judged it contradicts the
    /// docstring) at attempt number `attempt_n`. [`StoreError::NotFound`] when
    /// the task has no case `test_id`.
    pub fn drop_test_case(
        &self,
        task: TaskId,
        test_id: &str,
        reason: &str,
        attempt_n: u32,
    ) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE test_cases SET dropped = 1, drop_reason = ?3, dropped_at_attempt = ?4
             WHERE task = ?1 AND test_id = ?2",
            params![task.0, test_id, reason, attempt_n],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "test case",
                id: format!("{test_id} of task {}", task.0),
            });
        }
        Ok(())
    }

    /// Records the start of attempt number `n` (1-based) with its candidate code.
    pub fn start_attempt(&self, task: TaskId, n: u32, code: &str) -> Result<AttemptId, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO attempts (task, n, code, started_ms) VALUES (?1, ?2, ?3, ?4)",
            params![task.0, n, code, now_ms()],
        )
        .map_err(|e| fk_not_found(e, "task", task.0))?;
        Ok(AttemptId(conn.last_insert_rowid()))
    }

    /// Records how an attempt ended. May be called again to overwrite.
    pub fn finish_attempt(&self, attempt: AttemptId, s: &AttemptSummary) -> Result<(), StoreError> {
        let stage_times = serde_json::to_string(&s.stage_times_ms).unwrap_or_else(|_| "{}".into());
        let n = self.conn().execute(
            "UPDATE attempts SET stage_reached = ?2, passed = ?3, failed = ?4, findings_errors = ?5,
               wall_ms = ?6, stage_times_json = ?7, verdict = ?8 WHERE id = ?1",
            params![
                attempt.0,
                s.stage_reached,
                s.passed,
                s.failed,
                s.findings_errors,
                to_i64(s.wall_ms),
                stage_times,
                s.verdict
            ],
        )?;
        if n == 0 {
            return Err(not_found("attempt", attempt.0));
        }
        Ok(())
    }

    /// Marks an attempt as a candidate of `round`: `weight` samples produced
    /// its code, `greedy` when the greedy sample is among them.
    pub fn set_attempt_candidate(
        &self,
        attempt: AttemptId,
        round: u32,
        weight: u32,
        greedy: bool,
    ) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE attempts SET round = ?2, weight = ?3, greedy = ?4 WHERE id = ?1",
            params![attempt.0, round, weight, greedy],
        )?;
        if n == 0 {
            return Err(not_found("attempt", attempt.0));
        }
        Ok(())
    }

    /// Records one round's selection: the chosen attempt (if any), whether it
    /// passes every docstring example, the reason shown to the user, and the
    /// whole decision as JSON (clusters, ranking; candidates named by attempt id).
    pub fn add_selection(
        &self,
        task: TaskId,
        round: u32,
        chosen: Option<AttemptId>,
        passes_gate: bool,
        reason: &str,
        detail_json: &str,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO selections (task, round, chosen_attempt, passes_gate, reason, detail_json, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![task.0, round, chosen.map(|a| a.0), passes_gate, reason, detail_json, now_ms()],
        )
        .map_err(|e| fk_not_found(e, "task", task.0))?;
        Ok(conn.last_insert_rowid())
    }

    /// The selections of a task, oldest first: `(round, chosen attempt,
    /// passes_gate, reason, detail_json)`.
    pub fn selections(&self, task: TaskId) -> Result<Vec<SelectionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT round, chosen_attempt, passes_gate, reason, detail_json
             FROM selections WHERE task = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([task.0], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, Option<i64>>(1)?.map(AttemptId),
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The candidates of a task (attempts marked by
    /// [`Store::set_attempt_candidate`]), in order: `(attempt, n, round,
    /// weight, greedy, code)`.
    pub fn candidates(&self, task: TaskId) -> Result<Vec<CandidateRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, n, round, weight, greedy, code FROM attempts
             WHERE task = ?1 AND round IS NOT NULL ORDER BY n, id",
        )?;
        let rows = stmt
            .query_map([task.0], |r| {
                Ok((
                    AttemptId(r.get(0)?),
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records a sandbox run and its per-test results in one transaction;
    /// returns the run's id.
    pub fn add_test_run(&self, attempt: AttemptId, run: &TestRun) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO test_runs (attempt, isolation, wall_ms, killed, load_error, stderr_tail, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                attempt.0,
                isolation_str(run.isolation),
                to_i64(run.wall_ms),
                run.killed.as_ref().map(kill_str),
                run.load_error,
                run.stderr_tail,
                now_ms()
            ],
        )
        .map_err(|e| fk_not_found(e, "attempt", attempt.0))?;
        let run_id = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare(
                "INSERT INTO test_results (run, idx, test_id, passed, error_type, message, traceback, actual, duration_ms, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (idx, r) in run.results.iter().enumerate() {
                stmt.execute(params![
                    run_id,
                    idx as i64,
                    r.test_id,
                    r.passed,
                    r.error_type,
                    r.message,
                    r.traceback,
                    r.actual,
                    to_i64(r.duration_ms),
                    r.outcome
                ])?;
            }
        }
        tx.commit()?;
        Ok(run_id)
    }

    /// Records findings of one pass; `phase` is `validate` or `security`
    /// (anything else is [`StoreError::InvalidArgument`]).
    pub fn add_findings(
        &self,
        attempt: AttemptId,
        phase: &str,
        findings: &[Finding],
    ) -> Result<(), StoreError> {
        if phase != "validate" && phase != "security" {
            return Err(StoreError::InvalidArgument {
                what: "findings phase",
                value: phase.to_string(),
                expected: "`validate`, `security`",
            });
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO findings (attempt, phase, rule, severity, message, line, tool)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for f in findings {
                stmt.execute(params![
                    attempt.0,
                    phase,
                    f.rule,
                    severity_str(f.severity),
                    f.message,
                    f.line.map(|l| l as i64),
                    f.tool
                ])
                .map_err(|e| fk_not_found(e, "attempt", attempt.0))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the critic's text (and its structured JSON, when it parsed).
    pub fn add_critique(
        &self,
        attempt: AttemptId,
        text: &str,
        json: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO critiques (attempt, text, json, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![attempt.0, text, json, now_ms()],
            )
            .map_err(|e| fk_not_found(e, "attempt", attempt.0))?;
        Ok(())
    }

    /// Records user feedback on a task, optionally tied to the attempt shown.
    pub fn add_feedback(
        &self,
        task: TaskId,
        attempt: Option<AttemptId>,
        text: &str,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO feedback (task, attempt, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![task.0, attempt.map(|a| a.0), text, now_ms()],
            )
            .map_err(|e| fk_not_found(e, "task or attempt", task.0))?;
        Ok(())
    }

    /// Records one LLM request; returns its row id.
    pub fn add_llm_call(&self, c: &LlmCallRecord) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO llm_calls (task, attempt, role, provider, model, prompt_tokens,
               completion_tokens, latency_ms, ok, error, created_ms, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                c.task.map(|t| t.0),
                c.attempt.map(|a| a.0),
                c.role.as_str(),
                c.provider,
                c.model,
                to_i64(c.prompt_tokens),
                to_i64(c.completion_tokens),
                to_i64(c.latency_ms),
                c.ok,
                c.error,
                now_ms(),
                c.response
                    .as_deref()
                    .map(|r| truncate_utf8(r, MAX_RESPONSE_BYTES))
            ],
        )
        .map_err(|e| fk_not_found(e, "task or attempt", c.task.map_or(0, |t| t.0)))?;
        Ok(conn.last_insert_rowid())
    }

    /// The `limit` most recent tasks, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT t.id, t.created_ms, t.file, t.function, t.kind, t.status, t.status_reason, t.wall_ms,
                    (SELECT COUNT(*) FROM attempts a WHERE a.task = t.id),
                    COALESCE(l.calls, 0), COALESCE(l.p, 0), COALESCE(l.c, 0)
             FROM tasks t
             LEFT JOIN (SELECT task, COUNT(*) AS calls, SUM(prompt_tokens) AS p,
                               SUM(completion_tokens) AS c
                        FROM llm_calls GROUP BY task) l ON l.task = t.id
             ORDER BY t.created_ms DESC, t.id DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map([limit], |r| {
                Ok((
                    TaskId(r.get(0)?),
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, i64>(11)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, created_ms, file, function, kind, status, reason, wall, attempts, calls, p, c) in
            rows
        {
            let (tests_passed, tests_total) = last_attempt_tests(&conn, id)?;
            out.push(TaskSummary {
                id,
                created_ms,
                file,
                function,
                kind: parse_kind(&kind)?,
                status: parse_status(&status)?,
                status_reason: reason,
                attempts: to_u32(attempts),
                tests_passed,
                tests_total,
                wall_ms: wall.map(to_u64),
                llm_calls: to_u32(calls),
                prompt_tokens: to_u64(p),
                completion_tokens: to_u64(c),
            });
        }
        Ok(out)
    }

    /// Everything stored about a task; `None` when it does not exist.
    pub fn task(&self, task: TaskId) -> Result<Option<TaskDetail>, StoreError> {
        let mut conn = self.conn();
        // One read transaction so the detail is a consistent snapshot even
        // while another connection writes.
        let tx = conn.transaction()?;
        let Some(row) = tx
            .query_row(
                "SELECT id, created_ms, updated_ms, workspace, file, function, kind, status, status_reason,
                        stub_source, docstring, plan_json, final_code, proposal_dir, wall_ms
                 FROM tasks WHERE id = ?1",
                [task.0],
                read_task_row,
            )
            .optional()?
        else {
            return Ok(None);
        };
        let row = row?;
        let detail = TaskDetail {
            clarifications: read_clarifications(&tx, task)?,
            test_cases: read_test_cases(&tx, task)?,
            attempts: read_attempts(&tx, task)?,
            feedback: read_feedback(&tx, task)?,
            llm_usage: read_usage(&tx, task)?,
            llm_calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            task: row,
        };
        tx.commit()?;
        let llm_calls = detail.llm_usage.iter().map(|u| u.calls).sum();
        let prompt_tokens = detail.llm_usage.iter().map(|u| u.prompt_tokens).sum();
        let completion_tokens = detail.llm_usage.iter().map(|u| u.completion_tokens).sum();
        Ok(Some(TaskDetail {
            llm_calls,
            prompt_tokens,
            completion_tokens,
            ..detail
        }))
    }

    /// The newest task rows whose status is one of `statuses`, newest first
    /// (the LSP front end restores ready proposals and interrupted tasks from these).
    pub fn tasks_with_status(
        &self,
        statuses: &[TaskStatus],
        limit: usize,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.conn();
        let list: Vec<String> = statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let sql = format!(
            "SELECT id, created_ms, updated_ms, workspace, file, function, kind, status, status_reason,
                    stub_source, docstring, plan_json, final_code, proposal_dir, wall_ms
             FROM tasks WHERE status IN ({}) ORDER BY id DESC LIMIT ?1",
            list.join(", ")
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([limit as i64], read_task_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Copies the write-ahead log into the database file and empties it
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so a process that exits without
    /// closing the store leaves one self-contained file. Every write is already
    /// committed; this only tidies. Errors: [`StoreError::Sqlite`].
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// At server start: tasks left live by a previous process (`running` or
    /// `awaiting_answer`; no loop can resume them) become `interrupted`.
    /// `awaiting_review` tasks are kept: their proposal files are complete.
    /// Returns how many tasks were marked.
    pub fn mark_running_as_interrupted(&self) -> Result<usize, StoreError> {
        let n = self.conn().execute(
            "UPDATE tasks SET status = 'interrupted',
               status_reason = 'the server stopped while the task was ' || replace(status, '_', ' '),
               updated_ms = ?1
             WHERE status IN ('running', 'awaiting_answer')",
            [now_ms()],
        )?;
        if n > 0 {
            tracing::info!(
                tasks = n,
                "marked tasks left running by a previous server as interrupted"
            );
        }
        Ok(n)
    }
}

/// Applies `migrations[user_version..]`, each in its own transaction together
/// with the `user_version` bump. Returns how many were applied.
fn migrate(conn: &mut Connection, migrations: &[&str], label: &str) -> Result<usize, StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StoreError::NewerSchema {
            path: label.to_string(),
            found,
            supported,
        });
    }
    let start = usize::try_from(found).unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate().skip(start) {
        let version = i + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migration { version, source })?;
    }
    Ok(migrations.len() - start)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(if v < 0 { 0 } else { u32::MAX })
}

fn not_found(what: &'static str, id: i64) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// Maps a foreign-key violation on insert to [`StoreError::NotFound`] of the parent row.
fn fk_not_found(e: rusqlite::Error, what: &'static str, id: i64) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            not_found(what, id)
        }
        _ => StoreError::Sqlite(e),
    }
}

fn corrupt(what: &'static str, value: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        value: value.to_string(),
    }
}

fn parse_kind(s: &str) -> Result<TaskKind, StoreError> {
    TaskKind::parse(s).ok_or_else(|| corrupt("task kind", s))
}

fn parse_status(s: &str) -> Result<TaskStatus, StoreError> {
    TaskStatus::parse(s).ok_or_else(|| corrupt("task status", s))
}

fn isolation_str(i: Isolation) -> &'static str {
    match i {
        Isolation::Bwrap => "bwrap",
        Isolation::RlimitsOnly => "rlimits_only",
    }
}

fn parse_isolation(s: &str) -> Result<Isolation, StoreError> {
    match s {
        "bwrap" => Ok(Isolation::Bwrap),
        "rlimits_only" => Ok(Isolation::RlimitsOnly),
        _ => Err(corrupt("isolation", s)),
    }
}

fn kill_str(k: &KillReason) -> &'static str {
    match k {
        KillReason::WallTimeout => "wall_timeout",
        KillReason::Cancelled => "cancelled",
    }
}

fn parse_kill(s: &str) -> Result<KillReason, StoreError> {
    match s {
        "wall_timeout" => Ok(KillReason::WallTimeout),
        "cancelled" => Ok(KillReason::Cancelled),
        _ => Err(corrupt("kill reason", s)),
    }
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

fn parse_severity(s: &str) -> Result<Severity, StoreError> {
    match s {
        "info" => Ok(Severity::Info),
        "warning" => Ok(Severity::Warning),
        "error" => Ok(Severity::Error),
        _ => Err(corrupt("severity", s)),
    }
}

fn parse_origin(s: &str) -> Result<TestOrigin, StoreError> {
    match s {
        "docstring" => Ok(TestOrigin::Docstring),
        "generated" => Ok(TestOrigin::Generated),
        "user" => Ok(TestOrigin::User),
        _ => Err(corrupt("test origin", s)),
    }
}

/// Tests passed / total of the task's last attempt (see [`TaskSummary::tests_passed`]).
fn last_attempt_tests(conn: &Connection, task: TaskId) -> Result<(u32, u32), StoreError> {
    let last: Option<(i64, Option<i64>, Option<i64>)> = conn
        .query_row(
            "SELECT id, passed, failed FROM attempts WHERE task = ?1 ORDER BY n DESC, id DESC LIMIT 1",
            [task.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match last {
        None => Ok((0, 0)),
        Some((_, Some(p), Some(f))) => Ok((to_u32(p), to_u32(p + f))),
        Some((attempt, _, _)) => {
            let counts: Option<(i64, i64)> = conn
                .query_row(
                    "SELECT COALESCE(SUM(r.passed), 0), COUNT(r.id) FROM test_results r
                     WHERE r.run = (SELECT MAX(id) FROM test_runs WHERE attempt = ?1)",
                    [attempt],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(counts.map_or((0, 0), |(p, t)| (to_u32(p), to_u32(t))))
        }
    }
}

/// Reads a `tasks` row; enum decoding errors are returned in the inner `Result`
/// because rusqlite's row closure only carries `rusqlite::Error`.
fn read_task_row(r: &Row<'_>) -> rusqlite::Result<Result<TaskRow, StoreError>> {
    let kind: String = r.get(6)?;
    let status: String = r.get(7)?;
    let build = |kind: TaskKind, status: TaskStatus| -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            id: TaskId(r.get(0)?),
            created_ms: r.get(1)?,
            updated_ms: r.get(2)?,
            workspace: r.get(3)?,
            file: r.get(4)?,
            function: r.get(5)?,
            kind,
            status,
            status_reason: r.get(8)?,
            stub_source: r.get(9)?,
            docstring: r.get(10)?,
            plan_json: r.get(11)?,
            final_code: r.get(12)?,
            proposal_dir: r.get(13)?,
            wall_ms: r.get::<_, Option<i64>>(14)?.map(to_u64),
        })
    };
    match (parse_kind(&kind), parse_status(&status)) {
        (Ok(k), Ok(s)) => build(k, s).map(Ok),
        (Err(e), _) | (_, Err(e)) => Ok(Err(e)),
    }
}

fn read_clarifications(
    tx: &Transaction<'_>,
    task: TaskId,
) -> Result<Vec<Clarification>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT question, options_json, answer, assumed, created_ms FROM clarifications
         WHERE task = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([task.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(question, options_json, answer, assumed, created_ms)| {
            let options: Vec<String> = serde_json::from_str(&options_json)
                .map_err(|_| corrupt("clarification options", &options_json))?;
            Ok(Clarification {
                question,
                options,
                answer,
                assumed,
                created_ms,
            })
        })
        .collect()
}

fn read_test_cases(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<StoredTestCase>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT test_id, origin, call, expected, raises, note, dropped, drop_reason, dropped_at_attempt, options
         FROM test_cases WHERE task = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([task.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(id, origin, call, expected, raises, note, dropped, reason, at, options)| {
                Ok(StoredTestCase {
                    case: TestCase {
                        id,
                        origin: parse_origin(&origin)?,
                        call,
                        expected,
                        raises,
                        note,
                        options: options
                            .split(',')
                            .filter(|o| !o.is_empty())
                            .map(str::to_string)
                            .collect(),
                    },
                    dropped: dropped.then(|| DropInfo {
                        reason: reason.unwrap_or_default(),
                        at_attempt: at.map_or(0, to_u32),
                    }),
                })
            },
        )
        .collect()
}

fn read_attempts(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
    type AttemptCols = (
        i64,
        i64,
        String,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let mut stmt = tx.prepare(
        "SELECT id, n, code, started_ms, stage_reached, passed, failed, findings_errors, wall_ms,
                stage_times_json, verdict
         FROM attempts WHERE task = ?1 ORDER BY n, id",
    )?;
    let rows: Vec<AttemptCols> = stmt
        .query_map([task.0], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, n, code, started_ms, stage, passed, failed, ferr, wall, times, verdict) in rows {
        let summary = match stage {
            None => None,
            Some(stage_reached) => {
                let times = times.unwrap_or_else(|| "{}".into());
                let stage_times_ms: BTreeMap<String, u64> = serde_json::from_str(&times)
                    .map_err(|_| corrupt("attempt stage times", &times))?;
                Some(AttemptSummary {
                    stage_reached,
                    passed: passed.map_or(0, to_u32),
                    failed: failed.map_or(0, to_u32),
                    findings_errors: ferr.map_or(0, to_u32),
                    wall_ms: wall.map_or(0, to_u64),
                    stage_times_ms,
                    verdict: verdict.unwrap_or_default(),
                })
            }
        };
        let attempt = AttemptId(id);
        out.push(AttemptRecord {
            id: attempt,
            n: to_u32(n),
            code,
            started_ms,
            summary,
            runs: read_runs(tx, attempt)?,
            findings: read_findings(tx, attempt)?,
            critiques: read_critiques(tx, attempt)?,
        });
    }
    Ok(out)
}

fn read_runs(tx: &Transaction<'_>, attempt: AttemptId) -> Result<Vec<TestRun>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT id, isolation, wall_ms, killed, load_error, stderr_tail FROM test_runs
         WHERE attempt = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([attempt.0], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut results_stmt = tx.prepare(
        "SELECT test_id, passed, error_type, message, traceback, actual, duration_ms, outcome
         FROM test_results WHERE run = ?1 ORDER BY idx",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (run_id, isolation, wall_ms, killed, load_error, stderr_tail) in rows {
        let results = results_stmt
            .query_map([run_id], |r| {
                Ok(TestResult {
                    test_id: r.get(0)?,
                    passed: r.get(1)?,
                    error_type: r.get(2)?,
                    message: r.get(3)?,
                    traceback: r.get(4)?,
                    actual: r.get(5)?,
                    duration_ms: to_u64(r.get(6)?),
                    outcome: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(TestRun {
            results,
            wall_ms: to_u64(wall_ms),
            isolation: parse_isolation(&isolation)?,
            killed: killed.as_deref().map(parse_kill).transpose()?,
            load_error,
            stderr_tail,
        });
    }
    Ok(out)
}

fn read_findings(
    tx: &Transaction<'_>,
    attempt: AttemptId,
) -> Result<Vec<StoredFinding>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT phase, rule, severity, message, line, tool FROM findings WHERE attempt = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([attempt.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(phase, rule, severity, message, line, tool)| {
            Ok(StoredFinding {
                phase,
                finding: Finding {
                    rule,
                    severity: parse_severity(&severity)?,
                    message,
                    line: line.and_then(|l| usize::try_from(l).ok()),
                    tool,
                },
            })
        })
        .collect()
}

fn read_critiques(tx: &Transaction<'_>, attempt: AttemptId) -> Result<Vec<Critique>, StoreError> {
    let mut stmt =
        tx.prepare("SELECT text, json, created_ms FROM critiques WHERE attempt = ?1 ORDER BY id")?;
    let rows = stmt
        .query_map([attempt.0], |r| {
            Ok(Critique {
                text: r.get(0)?,
                json: r.get(1)?,
                created_ms: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn read_feedback(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<FeedbackRecord>, StoreError> {
    let mut stmt =
        tx.prepare("SELECT attempt, text, created_ms FROM feedback WHERE task = ?1 ORDER BY id")?;
    let rows = stmt
        .query_map([task.0], |r| {
            Ok(FeedbackRecord {
                attempt: r.get::<_, Option<i64>>(0)?.map(AttemptId),
                text: r.get(1)?,
                created_ms: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn read_usage(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<RoleUsage>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT role, COUNT(*), SUM(1 - ok), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_ms)
         FROM llm_calls WHERE task = ?1 GROUP BY role",
    )?;
    let rows = stmt
        .query_map([task.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut usage = rows
        .into_iter()
        .map(|(role, calls, failed, p, c, lat)| {
            Ok(RoleUsage {
                role: Role::parse(&role).ok_or_else(|| corrupt("llm call role", &role))?,
                calls: to_u32(calls),
                failed_calls: to_u32(failed),
                prompt_tokens: to_u64(p),
                completion_tokens: to_u64(c),
                latency_ms: to_u64(lat),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    usage.sort_by_key(|u| Role::ALL.iter().position(|r| *r == u.role));
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn new_task(function: &str) -> NewTask {
        NewTask {
            workspace: "/ws".into(),
            file: "/ws/m.py".into(),
            function: function.into(),
            kind: TaskKind::Generate,
            stub_source: format!("def {function}(a, b):\n    \"\"\"Add.\"\"\"\n    ...\n"),
            docstring: Some("Add.".into()),
        }
    }

    #[test]
    fn checkpoint_empties_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let store = Store::open(&path).unwrap();
        store.create_task(&new_task("f")).unwrap();
        let wal = dir.path().join("d.db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "the write is in the WAL"
        );
        store.checkpoint().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.history(10).unwrap().len(), 1);
    }

    fn case(id: &str, origin: TestOrigin) -> TestCase {
        TestCase {
            id: id.into(),
            origin,
            call: "add(2, 3)".into(),
            expected: "5".into(),
            raises: None,
            note: "from docstring".into(),
            options: Vec::new(),
        }
    }

    fn sample_run() -> TestRun {
        TestRun {
            results: vec![
                TestResult {
                    test_id: "ex1".into(),
                    passed: true,
                    error_type: None,
                    message: None,
                    traceback: None,
                    actual: Some("5".into()),
                    duration_ms: 3,
                    outcome: None,
                },
                TestResult {
                    test_id: "gen1".into(),
                    passed: false,
                    error_type: Some("AssertionError".into()),
                    message: Some("expected 0, got -1".into()),
                    traceback: Some("Traceback ...\nAssertionError".into()),
                    actual: Some("-1".into()),
                    duration_ms: 4,
                    outcome: None,
                },
            ],
            wall_ms: 120,
            isolation: Isolation::Bwrap,
            killed: Some(KillReason::WallTimeout),
            load_error: None,
            stderr_tail: "warning: x\n".into(),
        }
    }

    fn call(
        task: Option<TaskId>,
        attempt: Option<AttemptId>,
        role: Role,
        p: u64,
        c: u64,
        ok: bool,
    ) -> LlmCallRecord {
        LlmCallRecord {
            task,
            attempt,
            role,
            provider: "local".into(),
            model: "qwen2.5-coder-0.5b".into(),
            prompt_tokens: p,
            completion_tokens: c,
            latency_ms: 250,
            ok,
            error: (!ok).then(|| "timeout".to_string()),
            response: ok.then(|| "é".repeat(MAX_RESPONSE_BYTES)),
        }
    }

    #[test]
    fn llm_replies_are_kept_truncated_on_a_char_boundary() {
        let s = Store::open_in_memory().unwrap();
        s.add_llm_call(&call(None, None, Role::Developer, 10, 5, true))
            .unwrap();
        s.add_llm_call(&call(None, None, Role::Critic, 10, 0, false))
            .unwrap();
        let rows: Vec<Option<String>> = s
            .conn()
            .prepare("SELECT response FROM llm_calls ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let kept = rows[0].as_deref().unwrap();
        assert_eq!(
            kept.len(),
            MAX_RESPONSE_BYTES,
            "16 KiB of two-byte characters fits exactly"
        );
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(rows[1], None);
    }

    #[test]
    fn status_and_kind_names_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        for k in [TaskKind::Generate, TaskKind::Refine, TaskKind::Bench] {
            assert_eq!(TaskKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(TaskStatus::parse("Running"), None);
        assert_eq!(TaskKind::parse("other"), None);
        assert!(TaskStatus::Accepted.is_terminal());
        assert!(!TaskStatus::AwaitingReview.is_terminal());
    }

    #[test]
    fn every_table_round_trips_through_the_api() {
        let store = Store::open_in_memory().unwrap();
        let t = store.create_task(&new_task("add")).unwrap();
        store.set_task_plan(t, r#"{"steps":["add"]}"#).unwrap();
        store
            .add_clarification(
                t,
                "Negative inputs?",
                &["allowed".into(), "error".into()],
                "allowed",
                true,
            )
            .unwrap();
        let mut raising = case("gen2", TestOrigin::Generated);
        raising.expected = String::new();
        raising.raises = Some("TypeError".into());
        store
            .add_test_cases(
                t,
                &[
                    case("ex1", TestOrigin::Docstring),
                    case("gen1", TestOrigin::Generated),
                    raising.clone(),
                ],
            )
            .unwrap();

        let a1 = store
            .start_attempt(t, 1, "def add(a, b):\n    return a - b\n")
            .unwrap();
        let run = sample_run();
        let run_id = store.add_test_run(a1, &run).unwrap();
        assert!(run_id > 0);
        let findings = [
            Finding {
                rule: "eval".into(),
                severity: Severity::Error,
                message: "eval is not allowed".into(),
                line: Some(2),
                tool: "tree-sitter".into(),
            },
            Finding {
                rule: "ruff:F401".into(),
                severity: Severity::Warning,
                message: "unused import".into(),
                line: None,
                tool: "ruff".into(),
            },
        ];
        store.add_findings(a1, "security", &findings[..1]).unwrap();
        store.add_findings(a1, "validate", &findings[1..]).unwrap();
        store
            .add_critique(
                a1,
                "subtracts instead of adding",
                Some(r#"{"cause":"sign"}"#),
            )
            .unwrap();
        let mut times = BTreeMap::new();
        times.insert("run_tests".to_string(), 120u64);
        times.insert("write_code".to_string(), 900u64);
        let summary1 = AttemptSummary {
            stage_reached: "run_tests".into(),
            passed: 1,
            failed: 1,
            findings_errors: 1,
            wall_ms: 1500,
            stage_times_ms: times,
            verdict: "tests_failed".into(),
        };
        store.finish_attempt(a1, &summary1).unwrap();
        store
            .drop_test_case(t, "gen1", "contradicts example ex1", 1)
            .unwrap();

        let a2 = store
            .start_attempt(t, 2, "def add(a, b):\n    return a + b\n")
            .unwrap();
        store.add_feedback(t, Some(a2), "use a + b").unwrap();
        store.add_feedback(t, None, "keep it short").unwrap();
        store
            .add_llm_call(&call(Some(t), Some(a1), Role::Developer, 300, 40, true))
            .unwrap();
        store
            .add_llm_call(&call(Some(t), None, Role::Planner, 200, 30, true))
            .unwrap();
        store
            .add_llm_call(&call(Some(t), Some(a2), Role::Developer, 350, 45, false))
            .unwrap();
        store
            .add_llm_call(&call(None, None, Role::Critic, 1, 1, true))
            .unwrap();
        store
            .set_task_final(t, "def add(a, b):\n    return a + b\n", 4200)
            .unwrap();
        store
            .set_task_proposal_dir(t, ".docsmith/proposals/1")
            .unwrap();
        store
            .set_task_status(t, TaskStatus::AwaitingReview, Some("3/3 tests"))
            .unwrap();

        let d = store.task(t).unwrap().expect("task exists");
        assert_eq!(d.task.id, t);
        assert_eq!(d.task.function, "add");
        assert_eq!(d.task.kind, TaskKind::Generate);
        assert_eq!(d.task.status, TaskStatus::AwaitingReview);
        assert_eq!(d.task.status_reason.as_deref(), Some("3/3 tests"));
        assert_eq!(d.task.docstring.as_deref(), Some("Add."));
        assert_eq!(d.task.plan_json.as_deref(), Some(r#"{"steps":["add"]}"#));
        assert_eq!(
            d.task.final_code.as_deref(),
            Some("def add(a, b):\n    return a + b\n")
        );
        assert_eq!(
            d.task.proposal_dir.as_deref(),
            Some(".docsmith/proposals/1")
        );
        assert_eq!(d.task.wall_ms, Some(4200));
        assert!(d.task.updated_ms >= d.task.created_ms);

        assert_eq!(d.clarifications.len(), 1);
        assert_eq!(
            d.clarifications[0].options,
            vec!["allowed".to_string(), "error".to_string()]
        );
        assert!(d.clarifications[0].assumed);

        assert_eq!(d.test_cases.len(), 3);
        assert_eq!(d.test_cases[0].case, case("ex1", TestOrigin::Docstring));
        assert_eq!(d.test_cases[2].case, raising);
        let dropped: Vec<_> = d.dropped().collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0.id, "gen1");
        assert_eq!(
            dropped[0].1,
            &DropInfo {
                reason: "contradicts example ex1".into(),
                at_attempt: 1
            }
        );

        assert_eq!(d.attempts.len(), 2);
        let first = &d.attempts[0];
        assert_eq!((first.id, first.n), (a1, 1));
        assert_eq!(first.summary.as_ref(), Some(&summary1));
        assert_eq!(first.runs, vec![run]);
        assert_eq!(first.findings.len(), 2);
        assert_eq!(first.findings[0].phase, "security");
        assert_eq!(first.findings[0].finding, findings[0]);
        assert_eq!(first.findings[1].phase, "validate");
        assert_eq!(first.findings[1].finding, findings[1]);
        assert_eq!(first.critiques[0].text, "subtracts instead of adding");
        assert_eq!(
            first.critiques[0].json.as_deref(),
            Some(r#"{"cause":"sign"}"#)
        );
        let last = d.last_attempt().unwrap();
        assert_eq!((last.id, last.n, last.summary.clone()), (a2, 2, None));
        assert!(d.last_findings().is_empty());

        assert_eq!(d.feedback.len(), 2);
        assert_eq!(d.feedback[0].attempt, Some(a2));
        assert_eq!(d.feedback[1].attempt, None);

        // The task-less call is not counted for the task.
        assert_eq!(
            (d.llm_calls, d.prompt_tokens, d.completion_tokens),
            (3, 850, 115)
        );
        assert_eq!(d.llm_usage.len(), 2);
        assert_eq!(d.llm_usage[0].role, Role::Planner);
        let dev = &d.llm_usage[1];
        assert_eq!(
            (dev.role, dev.calls, dev.failed_calls, dev.prompt_tokens),
            (Role::Developer, 2, 1, 650)
        );
        assert_eq!(dev.latency_ms, 500);

        let h = store.history(10).unwrap();
        assert_eq!(h.len(), 1);
        let s = &h[0];
        assert_eq!(
            (s.id, s.status, s.kind),
            (t, TaskStatus::AwaitingReview, TaskKind::Generate)
        );
        assert_eq!(s.attempts, 2);
        // Attempt 2 is unfinished and has no run yet.
        assert_eq!((s.tests_passed, s.tests_total), (0, 0));
        assert_eq!(
            (s.llm_calls, s.prompt_tokens, s.completion_tokens),
            (3, 850, 115)
        );
        assert_eq!(s.wall_ms, Some(4200));
    }

    #[test]
    fn history_counts_tests_of_the_last_attempt() {
        let store = Store::open_in_memory().unwrap();
        let t = store.create_task(&new_task("f")).unwrap();
        let a1 = store.start_attempt(t, 1, "x").unwrap();
        store
            .finish_attempt(
                a1,
                &AttemptSummary {
                    passed: 4,
                    failed: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(store.history(5).unwrap()[0].tests_passed, 4);
        assert_eq!(store.history(5).unwrap()[0].tests_total, 7);
        // Unfinished attempt with a run: counted from its latest run.
        let a2 = store.start_attempt(t, 2, "y").unwrap();
        store.add_test_run(a2, &sample_run()).unwrap();
        let s = &store.history(5).unwrap()[0];
        assert_eq!((s.attempts, s.tests_passed, s.tests_total), (2, 1, 2));

        let t2 = store.create_task(&new_task("g")).unwrap();
        let h = store.history(5).unwrap();
        assert_eq!(h.iter().map(|s| s.id).collect::<Vec<_>>(), vec![t2, t]);
        assert_eq!(store.history(1).unwrap().len(), 1);
        assert_eq!((h[0].attempts, h[0].tests_total, h[0].llm_calls), (0, 0, 0));
    }

    #[test]
    fn unknown_ids_and_bad_arguments_are_clear_errors() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.task(TaskId(42)).unwrap().is_none());
        let e = store
            .set_task_status(TaskId(42), TaskStatus::Failed, None)
            .unwrap_err();
        assert!(
            matches!(e, StoreError::NotFound { what: "task", .. }),
            "{e}"
        );
        let e = store.start_attempt(TaskId(42), 1, "x").unwrap_err();
        assert!(
            matches!(e, StoreError::NotFound { what: "task", .. }),
            "{e}"
        );
        let e = store
            .finish_attempt(AttemptId(7), &AttemptSummary::default())
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::NotFound {
                    what: "attempt",
                    ..
                }
            ),
            "{e}"
        );
        let e = store.add_test_run(AttemptId(7), &sample_run()).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::NotFound {
                    what: "attempt",
                    ..
                }
            ),
            "{e}"
        );

        let t = store.create_task(&new_task("f")).unwrap();
        let e = store.drop_test_case(t, "nope", "r", 1).unwrap_err();
        assert!(e.to_string().contains("test case nope of task"), "{e}");
        let a = store.start_attempt(t, 1, "x").unwrap();
        let e = store.add_findings(a, "lint", &[]).unwrap_err();
        assert!(matches!(e, StoreError::InvalidArgument { .. }), "{e}");
        // A failed run insert leaves nothing behind.
        assert!(store.task(t).unwrap().unwrap().attempts[0].runs.is_empty());
    }

    #[test]
    fn re_adding_a_test_case_updates_it_and_keeps_the_drop() {
        let store = Store::open_in_memory().unwrap();
        let t = store.create_task(&new_task("f")).unwrap();
        store
            .add_test_cases(t, &[case("gen1", TestOrigin::Generated)])
            .unwrap();
        store.drop_test_case(t, "gen1", "wrong", 2).unwrap();
        let mut changed = case("gen1", TestOrigin::Generated);
        changed.expected = "6".into();
        store.add_test_cases(t, &[changed.clone()]).unwrap();
        let d = store.task(t).unwrap().unwrap();
        assert_eq!(d.test_cases.len(), 1);
        assert_eq!(d.test_cases[0].case, changed);
        assert_eq!(
            d.test_cases[0].dropped.as_ref().map(|x| x.at_attempt),
            Some(2)
        );
    }

    #[test]
    fn file_db_uses_wal_and_keeps_data_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/docsmith.db");
        let t = {
            let store = Store::open(&path).unwrap();
            let mode: String = store
                .conn()
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let fk: i64 = store
                .conn()
                .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
                .unwrap();
            assert_eq!(fk, 1);
            store.create_task(&new_task("kept")).unwrap()
        };
        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(store.task(t).unwrap().unwrap().task.function, "kept");
    }

    #[test]
    fn migrations_apply_once_and_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        let m1 = "CREATE TABLE a (x INTEGER);";
        let m2 = "INSERT INTO a VALUES (1);";
        assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 1);
        assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 0);
        assert_eq!(migrate(&mut conn, &[m1, m2], "t").unwrap(), 1);
        assert_eq!(migrate(&mut conn, &[m1, m2], "t").unwrap(), 0);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "m2 ran exactly once");
    }

    #[test]
    fn failed_migration_rolls_back_to_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let m1 = "CREATE TABLE a (x INTEGER);";
        let bad = "CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1);";
        assert_eq!(migrate(&mut conn, &[m1], "t").unwrap(), 1);
        let e = migrate(&mut conn, &[m1, bad], "t").unwrap_err();
        assert!(matches!(e, StoreError::Migration { version: 2, .. }), "{e}");
        assert!(e.to_string().contains("left unchanged at version 1"), "{e}");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        let b: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, 0, "table b rolled back");
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docsmith.db");
        drop(Store::open(&path).unwrap());
        let newer = MIGRATIONS.len() as i64 + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(
            matches!(e, StoreError::NewerSchema { found, .. } if found == newer),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade docsmith"), "{e}");
    }

    #[test]
    fn store_is_send_sync_and_shared_by_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for j in 0..25 {
                        let t = store.create_task(&new_task(&format!("f{i}_{j}"))).unwrap();
                        let a = store.start_attempt(t, 1, "x").unwrap();
                        store.add_test_run(a, &sample_run()).unwrap();
                        store
                            .add_llm_call(&call(Some(t), Some(a), Role::Critic, 10, 1, true))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let h = store.history(1000).unwrap();
        assert_eq!(h.len(), 50);
        assert!(h.iter().all(|s| s.tests_total == 2 && s.llm_calls == 1));
    }

    #[test]
    fn two_connections_to_one_file_write_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docsmith.db");
        drop(Store::open(&path).unwrap());
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    for j in 0..20 {
                        let t = store.create_task(&new_task(&format!("p{i}_{j}"))).unwrap();
                        store
                            .add_test_cases(t, &[case("ex1", TestOrigin::Docstring)])
                            .unwrap();
                        store.history(5).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(Store::open(&path).unwrap().history(100).unwrap().len(), 40);
    }

    #[test]
    fn live_tasks_become_interrupted() {
        let store = Store::open_in_memory().unwrap();
        let running = store.create_task(&new_task("a")).unwrap();
        let asking = store.create_task(&new_task("b")).unwrap();
        store
            .set_task_status(asking, TaskStatus::AwaitingAnswer, None)
            .unwrap();
        let review = store.create_task(&new_task("c")).unwrap();
        store
            .set_task_status(review, TaskStatus::AwaitingReview, None)
            .unwrap();
        let done = store.create_task(&new_task("d")).unwrap();
        store
            .set_task_status(done, TaskStatus::Accepted, None)
            .unwrap();

        assert_eq!(store.mark_running_as_interrupted().unwrap(), 2);
        let status = |t| store.task(t).unwrap().unwrap().task;
        assert_eq!(status(running).status, TaskStatus::Interrupted);
        assert_eq!(
            status(running).status_reason.as_deref(),
            Some("the server stopped while the task was running")
        );
        assert_eq!(status(asking).status, TaskStatus::Interrupted);
        assert_eq!(status(review).status, TaskStatus::AwaitingReview);
        assert_eq!(status(done).status, TaskStatus::Accepted);
        assert_eq!(store.mark_running_as_interrupted().unwrap(), 0);
    }
}
