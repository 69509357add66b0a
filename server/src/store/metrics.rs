//! Reads for `docsmith history --task N` and `docsmith stats`: every LLM
//! call of a task, and a workspace's tasks, proposals and LLM usage
//! summarised by outcome, role and provider.
//!
//! Read-only: nothing here writes. Rows map straight into their structs.

use rusqlite::{params, Row};
use serde::Serialize;

use super::TaskId;
use super::{Store, StoreError};

/// One recorded LLM call (a row of `llm_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmCallRow {
    /// `planner`, `test_designer`, `developer` or `critic`.
    pub role: String,
    /// The provider's configured name; `name:model` for a skipped one.
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// ms; 0 for a call the router skipped (open circuit breaker).
    pub latency_ms: u64,
    pub ok: bool,
    /// Why it failed or was skipped (`skipped: ...`).
    pub error: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
}

impl LlmCallRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(LlmCallRow {
            role: r.get(0)?,
            provider: r.get(1)?,
            model: r.get(2)?,
            prompt_tokens: r.get::<_, i64>(3)?.max(0) as u64,
            completion_tokens: r.get::<_, i64>(4)?.max(0) as u64,
            latency_ms: r.get::<_, i64>(5)?.max(0) as u64,
            ok: r.get(6)?,
            error: r.get(7)?,
            created_ms: r.get(8)?,
        })
    }
}

/// Tasks of one status (or one kind of proposal outcome), counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    pub name: String,
    pub n: u64,
}

/// LLM usage of one (role, provider, model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub role: String,
    pub provider: String,
    pub model: String,
    /// Calls made (skipped ones not counted).
    pub calls: u64,
    pub failed_calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Sum of the calls' latencies, ms.
    pub latency_ms: u64,
}

/// A workspace summarised, from [`Store::workspace_stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceStats {
    /// Tasks of each kind (`generate`, `refine`, `bench`), most first.
    pub tasks_by_kind: Vec<Count>,
    /// Tasks by status (`accepted`, `failed`, ...), most first.
    pub tasks_by_status: Vec<Count>,
    /// Tasks that made a proposal (an attempt was chosen for review),
    /// whatever the user did with it.
    pub proposals: u64,
    /// Of those, the ones whose latest proposal passed every ground-truth
    /// test with no error finding (verdict `passing`).
    pub passing_proposals: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Feedback given when rejecting (rows of `feedback`).
    pub feedback: u64,
    /// Sum of tasks' wall times, ms (tasks still running count as 0).
    pub wall_ms: u64,
    /// By role, provider and model, roles in pipeline order.
    pub usage: Vec<Usage>,
    /// Calls skipped by an open circuit breaker.
    pub skipped_calls: u64,
}

impl Store {
    /// Every LLM call recorded for `task`, oldest first, skipped ones too.
    pub fn llm_calls_of(&self, task: TaskId) -> Result<Vec<LlmCallRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT role, provider, model, prompt_tokens, completion_tokens, latency_ms, ok, error, created_ms
             FROM llm_calls WHERE task = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![task.0], LlmCallRow::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The workspace's tasks, proposals and LLM usage summarised (all tasks
    /// of the store, bench tasks included; see [`WorkspaceStats`]).
    pub fn workspace_stats(&self) -> Result<WorkspaceStats, StoreError> {
        let conn = self.conn();
        let counts = |sql: &str| -> Result<Vec<Count>, StoreError> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Count {
                        name: r.get(0)?,
                        n: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        };
        let one = |sql: &str| -> Result<u64, StoreError> {
            Ok(conn
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
                .unwrap_or(0)
                .max(0) as u64)
        };
        let tasks_by_kind =
            counts("SELECT kind, COUNT(*) FROM tasks GROUP BY kind ORDER BY 2 DESC, 1")?;
        let tasks_by_status =
            counts("SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY 2 DESC, 1")?;
        // A task made a proposal when one of its attempts was chosen for
        // review (verdict `passing` or `failing`, set by the pipeline's
        // review stage); its latest such attempt is the one that counts.
        let reviewed = "WITH reviewed AS (SELECT a.task, a.verdict FROM attempts a
             WHERE a.verdict IN ('passing', 'failing') AND a.n = (SELECT MAX(b.n) FROM attempts b
               WHERE b.task = a.task AND b.verdict IN ('passing', 'failing')))";
        let proposals = one(&format!("{reviewed} SELECT COUNT(*) FROM reviewed"))?;
        let passing_proposals = one(&format!(
            "{reviewed} SELECT COUNT(*) FROM reviewed WHERE verdict = 'passing'"
        ))?;
        let accepted = one("SELECT COUNT(*) FROM tasks WHERE status = 'accepted'")?;
        let rejected = one("SELECT COUNT(*) FROM tasks WHERE status = 'rejected'")?;
        let feedback = one("SELECT COUNT(*) FROM feedback")?;
        let wall_ms = one("SELECT SUM(wall_ms) FROM tasks")?;
        let skipped_calls =
            one("SELECT COUNT(*) FROM llm_calls WHERE NOT ok AND error LIKE 'skipped: %'")?;
        let mut stmt = conn.prepare(
            "SELECT role, provider, model, COUNT(*), SUM(1 - ok), SUM(prompt_tokens),
                    SUM(completion_tokens), SUM(latency_ms)
             FROM llm_calls WHERE NOT (NOT ok AND error LIKE 'skipped: %')
             GROUP BY role, provider, model",
        )?;
        let mut usage = stmt
            .query_map([], |r| {
                let n = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                };
                Ok(Usage {
                    role: r.get(0)?,
                    provider: r.get(1)?,
                    model: r.get(2)?,
                    calls: n(3)?,
                    failed_calls: n(4)?,
                    prompt_tokens: n(5)?,
                    completion_tokens: n(6)?,
                    latency_ms: n(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let order = |role: &str| {
            crate::types::Role::ALL
                .iter()
                .position(|r| r.as_str() == role)
                .unwrap_or(usize::MAX)
        };
        usage.sort_by(|a, b| {
            (order(&a.role), &a.provider, &a.model).cmp(&(order(&b.role), &b.provider, &b.model))
        });
        Ok(WorkspaceStats {
            tasks_by_kind,
            tasks_by_status,
            proposals,
            passing_proposals,
            accepted,
            rejected,
            feedback,
            wall_ms,
            usage,
            skipped_calls,
        })
    }
}
