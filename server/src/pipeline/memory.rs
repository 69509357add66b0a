//! Workspace memory in the loop (issue 15): at the start of a task, what
//! the workspace remembers (lessons, the most relevant past feedback and
//! fixed failures; `store::memory`) goes into the developer's and the
//! planner's prompts as a block of its own, within [`MEMORY_TOKENS`]; feedback
//! that states a preference is kept as a lesson; and when a task is accepted
//! after an earlier candidate failed a docstring (or user) example, that
//! example and what fixed it are remembered.
//!
//! Only the loop's own material is remembered: the user's feedback, the
//! stub's examples and the candidates' results on them. The generated tests'
//! expected values are not (they are guesses), and a bench record's hidden
//! test never reaches the loop.

use std::collections::HashSet;

use super::{failures_of, PipelineError, TaskRun};
use crate::roles;
use crate::store::memory::{MemoryItem, MemoryKind};
use crate::store::{Store, StoreError, TaskId};

/// Budget of the memory block, in estimated tokens (4 bytes each, as
/// `python::context::estimate_tokens`).
pub const MEMORY_TOKENS: usize = 256;

/// Longest fix line remembered, bytes.
const MAX_FIX_BYTES: usize = 120;

/// What the workspace remembers for a task on `function` (qualified name)
/// with `docstring`, in prompt order; nothing when `enabled` is false.
pub(super) fn recall(
    store: &Store,
    task: TaskId,
    function: &str,
    docstring: &str,
    enabled: bool,
) -> Result<Vec<MemoryItem>, StoreError> {
    if !enabled {
        return Ok(Vec::new());
    }
    store.recall(function, docstring, Some(task), MEMORY_TOKENS)
}

/// The prompt lines of `items` (`roles::StubView::memory`).
pub(super) fn prompt_lines(items: &[MemoryItem]) -> String {
    items
        .iter()
        .map(|i| i.prompt_line() + "\n")
        .collect::<String>()
}

/// The note saying what was shown: `remembered from this workspace: 1
/// lesson(s), 2 feedback, 0 failure(s) (within 256 tokens)`; `None` for nothing.
pub(super) fn recall_note(items: &[MemoryItem]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let count = |k: MemoryKind| items.iter().filter(|i| i.kind == k).count();
    Some(format!(
        "remembered from this workspace: {} lesson(s), {} feedback, {} past failure(s) (within {MEMORY_TOKENS} tokens; `docsmith memory list` shows them)",
        count(MemoryKind::Lesson),
        count(MemoryKind::Feedback),
        count(MemoryKind::Failure)
    ))
}

/// After feedback `text` on `task` is recorded: keeps it as a lesson when it
/// states a preference, and returns the note that says so.
pub(super) fn keep_lesson(
    store: &Store,
    task: TaskId,
    text: &str,
) -> Result<Option<String>, StoreError> {
    Ok(store.remember_lesson(task, text)?.map(|id| {
        format!(
            "kept as a workspace lesson for later tasks (memory {id}; `docsmith memory forget {id}` removes it): {}",
            text.trim()
        )
    }))
}

/// The first line of `new` (trimmed) that `old` lacks, skipping the
/// signature, comments, imports and docstring quotes, in backticks and at
/// most [`MAX_FIX_BYTES`]; `None` when every line of `new` is in `old`.
fn fix_line(old: &str, new: &str) -> Option<String> {
    let before: HashSet<&str> = old.lines().map(str::trim).collect();
    let line = new.lines().map(str::trim).find(|l| {
        !l.is_empty()
            && !before.contains(l)
            && ![
                "def ",
                "async def ",
                "#",
                "\"\"\"",
                "'''",
                "import ",
                "from ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
    })?;
    let mut end = line.len().min(MAX_FIX_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("`{}`", &line[..end]))
}

impl TaskRun {
    /// On accept: when an earlier candidate failed a ground-truth example
    /// that the accepted one passes, remembers the first such failure and
    /// its fix (`` `f(x)` expected 3 but got 2; the fix: `return ...` ``).
    /// At most one per task.
    pub(super) fn remember_fix(&mut self) -> Result<(), PipelineError> {
        let Some(acc) = self.proposal_candidate() else {
            return Ok(());
        };
        let accepted = &self.candidates[acc];
        let Some(acc_run) = accepted.run.as_ref() else {
            return Ok(());
        };
        let fixed = |id: &str| acc_run.results.iter().any(|r| r.test_id == id && r.passed);
        let found = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != acc && !c.generated.is_empty())
            .find_map(|(_, c)| {
                failures_of(&self.tests, c.run.as_ref())
                    .into_iter()
                    .find(|(t, _)| t.origin.is_ground_truth() && fixed(&t.id))
                    .map(|f| (c, f))
            });
        let Some((failed, (case, result))) = found else {
            return Ok(());
        };
        // `roles::describe_failures` words it as the repair prompt does.
        let described = roles::describe_failures(&[(case, result)], 1);
        let Some(what) = described.lines().nth(1).and_then(|l| l.strip_prefix("- ")) else {
            return Ok(());
        };
        let fix = fix_line(&failed.generated, &accepted.generated)
            .unwrap_or_else(|| "a rewrite of the function".into());
        let text = format!("{what}; the fix: {fix}");
        let id = self.deps.store.remember_failure(self.task, &text)?;
        tracing::info!(task = self.task.0, memory = id, "remembered: {text}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_is_the_first_new_line_that_is_not_boilerplate() {
        let old = "def add(a, b):\n    \"\"\"Add.\"\"\"\n    return a - b\n";
        let new =
            "import math\n\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n    # sum\n    return a + b\n";
        assert_eq!(fix_line(old, new).as_deref(), Some("`return a + b`"));
        assert_eq!(fix_line(new, new), None);
        let long = format!("def f():\n    return {}\n", "é".repeat(100));
        let got = fix_line("", &long).unwrap();
        assert!(got.len() <= MAX_FIX_BYTES + 2 && got.starts_with("`return é"));
    }
}
