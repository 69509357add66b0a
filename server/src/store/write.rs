//! Inserts and updates. Each is one statement or one transaction; a write
//! that names a missing parent row is [`StoreError::NotFound`].

use rusqlite::params;

use super::{
    now_ms, to_i64, AttemptId, AttemptSummary, LlmCallRecord, NewTask, Store, StoreError, TaskId,
    TaskStatus,
};
use crate::types::{Finding, TestCase, TestRun};

impl Store {
    /// Inserts a task with status `running`; returns its id.
    pub fn create_task(&self, t: &NewTask) -> Result<TaskId, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tasks (created_ms, updated_ms, workspace, file, function, kind, status, stub_source, docstring)
             VALUES (?1, ?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
            params![now, t.workspace, t.file, t.function, t.kind, t.stub_source, t.docstring],
        )?;
        Ok(TaskId(conn.last_insert_rowid()))
    }

    /// Records what the model was shown around the stub (JSON of
    /// `python::context::Gathered`).
    pub fn set_task_context(&self, task: TaskId, context_json: &str) -> Result<(), StoreError> {
        self.update_task(task, "context_json = ?2", params![task.0, context_json])
    }

    /// Sets the status (and its reason, cleared when `None`). Errors with
    /// [`StoreError::NotFound`] for an unknown task.
    ///
    /// Only the pipeline calls this (`pipeline::TaskRun` and
    /// `pipeline::end_stored_task`): it is the one writer of task status.
    pub(crate) fn set_task_status(
        &self,
        task: TaskId,
        status: TaskStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_task(
            task,
            "status = ?2, status_reason = ?3",
            params![task.0, status, reason],
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
                    c.origin,
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
                run.isolation,
                to_i64(run.wall_ms),
                run.killed,
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
                    f.severity,
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
                c.role,
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

    /// At server start: tasks left live by a previous process (`running` or
    /// `awaiting_answer`; no loop can resume them) become `interrupted`.
    /// `awaiting_review` tasks are kept: their proposal files are complete.
    /// Returns how many tasks were marked.
    /// Called through `pipeline::interrupt_left_over` (the pipeline writes
    /// every task status).
    pub(crate) fn mark_running_as_interrupted(&self) -> Result<usize, StoreError> {
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
