//! Queries: each row is read straight into its struct (`from_row` in
//! `rows.rs`); a task's detail is read in one transaction.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::rows::{FromRow, RunRow};
use super::{
    to_u32, AttemptId, AttemptRecord, CandidateRow, RoleUsage, SelectionRow, Store, StoreError,
    TaskDetail, TaskId, TaskRow, TaskStatus, TaskSummary,
};
use crate::types::{Role, TestCase, TestOrigin, TestResult, TestRun};

impl Store {
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

    /// The test cases the user stated in feedback (origin `user`) on earlier
    /// tasks of `function` (a qualname) in `file`, oldest first, each
    /// distinct (call, expected, raises) once, numbered `user1`, `user2`...
    /// in that order: ground truth for a new task on that function.
    ///
    /// A task recorded `file` as its front end named it (the CLI: as typed,
    /// maybe relative to the workspace it recorded; the server: the path of
    /// the document's URI), so the same file may be recorded as different
    /// strings: a recorded file counts when its path, resolved against its
    /// task's workspace, is `file`'s path or, both canonicalised, the same
    /// file on disk.
    pub fn user_test_cases(
        &self,
        file: &Path,
        function: &str,
    ) -> Result<Vec<TestCase>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.test_id, c.call, c.expected, c.raises, c.note, t.workspace, t.file
             FROM test_cases c JOIN tasks t ON t.id = c.task
             WHERE c.origin = 'user' AND t.function = ?1
             ORDER BY c.id",
        )?;
        let rows = stmt.query_map(params![function], |r| {
            let recorded = Path::new(&r.get::<_, String>(5)?).join(r.get::<_, String>(6)?);
            Ok((
                recorded,
                TestCase {
                    id: r.get(0)?,
                    origin: TestOrigin::User,
                    call: r.get(1)?,
                    expected: r.get(2)?,
                    raises: r.get(3)?,
                    note: r.get(4)?,
                    options: Vec::new(),
                },
            ))
        })?;
        let canonical = std::fs::canonicalize(file).ok();
        let same_file = |recorded: &Path| {
            recorded == file
                || canonical
                    .as_ref()
                    .is_some_and(|c| std::fs::canonicalize(recorded).is_ok_and(|r| &r == c))
        };
        let mut out: Vec<TestCase> = Vec::new();
        for r in rows {
            let (recorded, mut c) = r?;
            if !same_file(&recorded) {
                continue;
            }
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

    /// The `limit` most recent tasks, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM tasks t
             LEFT JOIN (SELECT task, COUNT(*) AS calls, SUM(prompt_tokens) AS p,
                               SUM(completion_tokens) AS c
                        FROM llm_calls GROUP BY task) l ON l.task = t.id
             ORDER BY t.created_ms DESC, t.id DESC LIMIT ?1",
            TaskSummary::COLUMNS
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map([limit], TaskSummary::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|mut t| {
                (t.tests_passed, t.tests_total) = last_attempt_tests(&conn, t.id)?;
                Ok(t)
            })
            .collect()
    }

    /// Everything stored about a task; `None` when it does not exist.
    pub fn task(&self, task: TaskId) -> Result<Option<TaskDetail>, StoreError> {
        let mut conn = self.conn();
        // One read transaction so the detail is a consistent snapshot even
        // while another connection writes.
        let tx = conn.transaction()?;
        let Some(row) = tx
            .query_row(
                &format!("SELECT {} FROM tasks WHERE id = ?1", TaskRow::COLUMNS),
                [task.0],
                TaskRow::from_row,
            )
            .optional()?
        else {
            return Ok(None);
        };
        let llm_usage = read_usage(&tx, task)?;
        let detail = TaskDetail {
            clarifications: read_all(&tx, "clarifications WHERE task = ?1 ORDER BY id", task.0)?,
            test_cases: read_all(&tx, "test_cases WHERE task = ?1 ORDER BY id", task.0)?,
            attempts: read_attempts(&tx, task)?,
            feedback: read_all(&tx, "feedback WHERE task = ?1 ORDER BY id", task.0)?,
            llm_calls: llm_usage.iter().map(|u| u.calls).sum(),
            prompt_tokens: llm_usage.iter().map(|u| u.prompt_tokens).sum(),
            completion_tokens: llm_usage.iter().map(|u| u.completion_tokens).sum(),
            llm_usage,
            task: row,
        };
        tx.commit()?;
        Ok(Some(detail))
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
            "SELECT {} FROM tasks WHERE status IN ({}) ORDER BY id DESC LIMIT ?1",
            TaskRow::COLUMNS,
            list.join(", ")
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map([limit as i64], TaskRow::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// `SELECT T::COLUMNS FROM <from_where>` with `?1` = `id`: every row, each
/// read straight into a `T`.
fn read_all<T: FromRow>(
    tx: &Transaction<'_>,
    from_where: &str,
    id: i64,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = tx.prepare(&format!("SELECT {} FROM {from_where}", T::COLUMNS))?;
    let rows = stmt
        .query_map([id], T::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
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

/// The attempts of a task by `n`, each with its runs, findings and critiques.
fn read_attempts(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
    let mut attempts: Vec<AttemptRecord> =
        read_all(tx, "attempts WHERE task = ?1 ORDER BY n, id", task.0)?;
    for a in &mut attempts {
        a.runs = read_runs(tx, a.id)?;
        a.findings = read_all(tx, "findings WHERE attempt = ?1 ORDER BY id", a.id.0)?;
        a.critiques = read_all(tx, "critiques WHERE attempt = ?1 ORDER BY id", a.id.0)?;
    }
    Ok(attempts)
}

/// The sandbox runs of an attempt in the order they were recorded, each with its results.
fn read_runs(tx: &Transaction<'_>, attempt: AttemptId) -> Result<Vec<TestRun>, StoreError> {
    let runs: Vec<RunRow> = read_all(tx, "test_runs WHERE attempt = ?1 ORDER BY id", attempt.0)?;
    runs.into_iter()
        .map(|RunRow { id, mut run }| {
            run.results =
                read_all::<TestResult>(tx, "test_results WHERE run = ?1 ORDER BY idx", id)?;
            Ok(run)
        })
        .collect()
}

/// LLM usage per role, in [`Role::ALL`] order.
fn read_usage(tx: &Transaction<'_>, task: TaskId) -> Result<Vec<RoleUsage>, StoreError> {
    let mut usage: Vec<RoleUsage> =
        read_all(tx, "llm_calls WHERE task = ?1 GROUP BY role", task.0)?;
    usage.sort_by_key(|u| Role::ALL.iter().position(|r| *r == u.role));
    Ok(usage)
}
