//! The rows the store hands out, each read straight from its SQL row
//! (`from_row`, with the column list it expects beside it), and how the
//! enums of `crate::types` are stored: as their serde (snake_case) names,
//! through one `ToSql`/`FromSql` pair each. Those names are in existing
//! databases and in the migrations: never rename one.

use std::collections::BTreeMap;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{Row, ToSql};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{to_u32, to_u64};
use crate::types::{
    Finding, Isolation, KillReason, Role, Severity, TaskKind, TaskStatus, TestCase, TestOrigin,
    TestResult, TestRun,
};

/// A stored value that does not decode: an enum name this build does not
/// know, or a JSON column that does not parse. Raised inside rusqlite's
/// `FromSqlConversionFailure`; `StoreError::from` turns it into
/// `StoreError::Corrupt`.
#[derive(Debug)]
pub(super) struct Unreadable {
    /// What the value is, e.g. `task status`.
    pub what: &'static str,
    /// The stored text.
    pub value: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stored {} {:?} cannot be read", self.what, self.value)
    }
}

impl std::error::Error for Unreadable {}

/// The serde name of a fieldless enum (`"awaiting_review"`), as stored.
fn to_name<T: Serialize>(v: &T) -> rusqlite::Result<ToSqlOutput<'static>> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(ToSqlOutput::from(s)),
        Ok(other) => Err(rusqlite::Error::ToSqlConversionFailure(
            format!("not stored as a name: {other}").into(),
        )),
        Err(e) => Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
    }
}

/// The enum whose serde name is the stored text; [`Unreadable`] for any other text.
fn from_name<T: DeserializeOwned>(v: ValueRef<'_>, what: &'static str) -> FromSqlResult<T> {
    let s = v.as_str()?;
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        FromSqlError::Other(Box::new(Unreadable {
            what,
            value: s.to_string(),
        }))
    })
}

/// `ToSql`/`FromSql` for an enum stored as its serde name; `$what` names it
/// in the error for an unknown name.
macro_rules! stored_by_name {
    ($($ty:ty => $what:literal),+ $(,)?) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                to_name(self)
            }
        }

        impl FromSql for $ty {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                from_name(v, $what)
            }
        }
    )+};
}

stored_by_name! {
    TaskKind => "task kind",
    TaskStatus => "task status",
    TestOrigin => "test origin",
    Isolation => "isolation",
    KillReason => "kill reason",
    Severity => "severity",
}

// A role is written by its name but read as `Role::parse` reads it (it
// also takes the aliases config files may use), as the store always has.
impl ToSql for Role {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Role {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = v.as_str()?;
        Role::parse(s).ok_or_else(|| {
            FromSqlError::Other(Box::new(Unreadable {
                what: "llm call role",
                value: s.to_string(),
            }))
        })
    }
}

/// The JSON text in column `idx` decoded; [`Unreadable`] (`what`) when it does not parse.
fn json_column<T: DeserializeOwned>(
    r: &Row<'_>,
    idx: usize,
    what: &'static str,
) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            Box::new(Unreadable { what, value: text }),
        )
    })
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

/// Arguments of [`Store::create_task`](super::Store::create_task). The task starts as `running`.
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

/// Result of a finished attempt, written by [`Store::finish_attempt`](super::Store::finish_attempt).
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

/// One LLM request, written by [`Store::add_llm_call`](super::Store::add_llm_call).
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

/// One row of [`Store::history`](super::Store::history): a task at a glance.
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
    /// Total wall time set by [`Store::set_task_final`](super::Store::set_task_final), ms.
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

/// One selection of a task ([`Store::selections`](super::Store::selections)): `(round, chosen attempt,
/// passes_gate, reason, detail_json)`.
pub type SelectionRow = (u32, Option<AttemptId>, bool, String, String);

/// One candidate of a task ([`Store::candidates`](super::Store::candidates)): `(attempt, n, round,
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

/// Everything stored about one task, from [`Store::task`](super::Store::task).
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

/// A struct read straight from one SQL row.
pub(super) trait FromRow: Sized {
    /// The columns to select, in the order `from_row` reads them.
    const COLUMNS: &'static str;

    /// The struct from a row selected with `COLUMNS`. A stored value that
    /// does not decode is an error carrying [`Unreadable`].
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self>;
}

impl FromRow for TaskRow {
    /// The columns `from_row` reads, from `tasks`.
    const COLUMNS: &'static str =
        "id, created_ms, updated_ms, workspace, file, function, kind, status, status_reason,
         stub_source, docstring, plan_json, final_code, proposal_dir, wall_ms";

    /// A `tasks` row selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(TaskRow {
            id: TaskId(r.get(0)?),
            created_ms: r.get(1)?,
            updated_ms: r.get(2)?,
            workspace: r.get(3)?,
            file: r.get(4)?,
            function: r.get(5)?,
            kind: r.get(6)?,
            status: r.get(7)?,
            status_reason: r.get(8)?,
            stub_source: r.get(9)?,
            docstring: r.get(10)?,
            plan_json: r.get(11)?,
            final_code: r.get(12)?,
            proposal_dir: r.get(13)?,
            wall_ms: r.get::<_, Option<i64>>(14)?.map(to_u64),
        })
    }
}

impl FromRow for TaskSummary {
    /// The columns `from_row` reads, from `tasks t` joined
    /// with the per-task LLM call totals `l` (`calls`, `p`, `c`).
    const COLUMNS: &'static str =
        "t.id, t.created_ms, t.file, t.function, t.kind, t.status, t.status_reason, t.wall_ms,
         (SELECT COUNT(*) FROM attempts a WHERE a.task = t.id),
         COALESCE(l.calls, 0), COALESCE(l.p, 0), COALESCE(l.c, 0)";

    /// A task at a glance, selected with `COLUMNS`; the test
    /// counts of its last attempt are left at 0 for the caller to fill.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(TaskSummary {
            id: TaskId(r.get(0)?),
            created_ms: r.get(1)?,
            file: r.get(2)?,
            function: r.get(3)?,
            kind: r.get(4)?,
            status: r.get(5)?,
            status_reason: r.get(6)?,
            wall_ms: r.get::<_, Option<i64>>(7)?.map(to_u64),
            attempts: to_u32(r.get(8)?),
            tests_passed: 0,
            tests_total: 0,
            llm_calls: to_u32(r.get(9)?),
            prompt_tokens: to_u64(r.get(10)?),
            completion_tokens: to_u64(r.get(11)?),
        })
    }
}

impl FromRow for Clarification {
    /// The columns `from_row` reads, from `clarifications`.
    const COLUMNS: &'static str = "question, options_json, answer, assumed, created_ms";

    /// A `clarifications` row selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Clarification {
            question: r.get(0)?,
            options: json_column(r, 1, "clarification options")?,
            answer: r.get(2)?,
            assumed: r.get(3)?,
            created_ms: r.get(4)?,
        })
    }
}

impl FromRow for StoredTestCase {
    /// The columns `from_row` reads, from `test_cases`.
    const COLUMNS: &'static str =
        "test_id, origin, call, expected, raises, note, dropped, drop_reason, dropped_at_attempt, options";

    /// A `test_cases` row selected with `COLUMNS`. Doctest
    /// options are stored comma-separated.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let dropped: bool = r.get(6)?;
        let options: String = r.get(9)?;
        Ok(StoredTestCase {
            case: TestCase {
                id: r.get(0)?,
                origin: r.get(1)?,
                call: r.get(2)?,
                expected: r.get(3)?,
                raises: r.get(4)?,
                note: r.get(5)?,
                options: options
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect(),
            },
            dropped: if dropped {
                Some(DropInfo {
                    reason: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                    at_attempt: r.get::<_, Option<i64>>(8)?.map_or(0, to_u32),
                })
            } else {
                None
            },
        })
    }
}

impl FromRow for AttemptRecord {
    /// The columns `from_row` reads, from `attempts`.
    const COLUMNS: &'static str =
        "id, n, code, started_ms, stage_reached, passed, failed, findings_errors, wall_ms,
         stage_times_json, verdict";

    /// An `attempts` row selected with `COLUMNS`, with its
    /// summary when it finished (`stage_reached` set); its runs, findings and
    /// critiques are left empty for the caller to fill.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let summary = match r.get::<_, Option<String>>(4)? {
            None => None,
            Some(stage_reached) => {
                let stage_times_ms: BTreeMap<String, u64> = match r.get::<_, Option<String>>(9)? {
                    None => BTreeMap::new(),
                    Some(_) => json_column(r, 9, "attempt stage times")?,
                };
                Some(AttemptSummary {
                    stage_reached,
                    passed: r.get::<_, Option<i64>>(5)?.map_or(0, to_u32),
                    failed: r.get::<_, Option<i64>>(6)?.map_or(0, to_u32),
                    findings_errors: r.get::<_, Option<i64>>(7)?.map_or(0, to_u32),
                    wall_ms: r.get::<_, Option<i64>>(8)?.map_or(0, to_u64),
                    stage_times_ms,
                    verdict: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                })
            }
        };
        Ok(AttemptRecord {
            id: AttemptId(r.get(0)?),
            n: to_u32(r.get(1)?),
            code: r.get(2)?,
            started_ms: r.get(3)?,
            summary,
            runs: Vec::new(),
            findings: Vec::new(),
            critiques: Vec::new(),
        })
    }
}

impl FromRow for StoredFinding {
    /// The columns `from_row` reads, from `findings`.
    const COLUMNS: &'static str = "phase, rule, severity, message, line, tool";

    /// A `findings` row selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredFinding {
            phase: r.get(0)?,
            finding: Finding {
                rule: r.get(1)?,
                severity: r.get(2)?,
                message: r.get(3)?,
                line: r
                    .get::<_, Option<i64>>(4)?
                    .and_then(|l| usize::try_from(l).ok()),
                tool: r.get(5)?,
            },
        })
    }
}

impl FromRow for Critique {
    /// The columns `from_row` reads, from `critiques`.
    const COLUMNS: &'static str = "text, json, created_ms";

    /// A `critiques` row selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Critique {
            text: r.get(0)?,
            json: r.get(1)?,
            created_ms: r.get(2)?,
        })
    }
}

impl FromRow for FeedbackRecord {
    /// The columns `from_row` reads, from `feedback`.
    const COLUMNS: &'static str = "attempt, text, created_ms";

    /// A `feedback` row selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(FeedbackRecord {
            attempt: r.get::<_, Option<i64>>(0)?.map(AttemptId),
            text: r.get(1)?,
            created_ms: r.get(2)?,
        })
    }
}

impl FromRow for RoleUsage {
    /// The columns `from_row` reads: `llm_calls` grouped by role.
    const COLUMNS: &'static str =
        "role, COUNT(*), SUM(1 - ok), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_ms)";

    /// One role's totals, selected with `COLUMNS`.
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RoleUsage {
            role: r.get(0)?,
            calls: to_u32(r.get(1)?),
            failed_calls: to_u32(r.get(2)?),
            prompt_tokens: to_u64(r.get(3)?),
            completion_tokens: to_u64(r.get(4)?),
            latency_ms: to_u64(r.get(5)?),
        })
    }
}

/// A `test_runs` row: its id (to read its results by) and the run, whose
/// results are left empty for the caller to fill.
pub(super) struct RunRow {
    pub id: i64,
    pub run: TestRun,
}

impl FromRow for RunRow {
    /// The columns `from_row` reads, from `test_runs`.
    const COLUMNS: &'static str = "id, isolation, wall_ms, killed, load_error, stderr_tail";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RunRow {
            id: r.get(0)?,
            run: TestRun {
                results: Vec::new(),
                wall_ms: to_u64(r.get(2)?),
                isolation: r.get(1)?,
                killed: r.get(3)?,
                load_error: r.get(4)?,
                stderr_tail: r.get(5)?,
            },
        })
    }
}

impl FromRow for TestResult {
    /// The columns `from_row` reads, from `test_results`.
    const COLUMNS: &'static str =
        "test_id, passed, error_type, message, traceback, actual, duration_ms, outcome";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
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
    }
}
