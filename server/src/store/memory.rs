//! Workspace memory (issue 15): what a new task is shown from the
//! workspace's past, kept in the `memory` table and its FTS5 index
//! `memory_fts` (migration `0006_memory.sql`).
//!
//! Three kinds of item, one row each ([`MemoryKind`]):
//! - `feedback`: every feedback the user gave (a trigger on `feedback`
//!   writes it, with the task's function name and docstring);
//! - `lesson`: feedback that states a standing preference ([`is_lesson`]),
//!   shown to every later task until forgotten;
//! - `failure`: a docstring (or user) example an earlier candidate failed
//!   and what fixed it, written by the pipeline when a task is accepted.
//!
//! Only the loop's own material is remembered: feedback, the stub's
//! examples and its own failures. A bench record's hidden `test` never
//! reaches the store (`bench` keeps it for scoring alone).
//!
//! The database is the workspace's own (`.docsmith/docsmith.db`), so every
//! item in it belongs to this workspace.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Store, StoreError, TaskId};

/// What a remembered item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// The user's feedback on a task; retrieved when relevant.
    Feedback,
    /// A standing preference; shown to every task until forgotten.
    Lesson,
    /// A failed example and its fix; retrieved when relevant.
    Failure,
}

impl MemoryKind {
    /// `feedback`, `lesson` or `failure`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Feedback => "feedback",
            MemoryKind::Lesson => "lesson",
            MemoryKind::Failure => "failure",
        }
    }

    fn parse(s: &str) -> Result<MemoryKind, StoreError> {
        match s {
            "feedback" => Ok(MemoryKind::Feedback),
            "lesson" => Ok(MemoryKind::Lesson),
            "failure" => Ok(MemoryKind::Failure),
            _ => Err(StoreError::Corrupt {
                what: "memory kind",
                value: s.to_string(),
            }),
        }
    }
}

/// One remembered item (a row of `memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryItem {
    /// The id `docsmith memory forget` takes.
    pub id: i64,
    pub kind: MemoryKind,
    /// The feedback, the lesson, or `` `call` expected X, got Y; the fix: ... ``.
    pub text: String,
    /// Qualified name of the function of the task it came from.
    pub function: String,
    /// The task it came from (`None` once that task is gone).
    pub task: Option<TaskId>,
    /// Unix ms.
    pub created_ms: i64,
}

impl MemoryItem {
    /// The item as one prompt line: a lesson as the user said it, feedback
    /// and failures with the function they were about.
    pub fn prompt_line(&self) -> String {
        let text = one_line(&self.text);
        match self.kind {
            MemoryKind::Lesson => format!("- {text}"),
            MemoryKind::Feedback => format!("- feedback on `{}`: {text}", self.function),
            MemoryKind::Failure => format!("- earlier failure of `{}`: {text}", self.function),
        }
    }

    /// The item as the review names it: `lesson 3 (task 1): use pathlib`.
    pub fn label(&self) -> String {
        let from = self.task.map_or(String::new(), |t| format!(" (task {t})"));
        format!(
            "{} {}{from}: {}",
            self.kind.as_str(),
            self.id,
            one_line(&self.text)
        )
    }
}

/// Bytes per token of the budget estimate, as `python::context::estimate_tokens`.
const BYTES_PER_TOKEN: usize = 4;

/// Most query terms taken from a function name and docstring.
const MAX_QUERY_TERMS: usize = 32;

/// Most relevant rows read before the budget is applied.
const MAX_CANDIDATES: i64 = 50;

/// Words too common in docstrings to say what a function is about.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "that", "this", "from", "are", "was", "its", "not", "but", "has",
    "have", "into", "all", "any", "each", "given", "return", "returns", "list", "none", "true",
    "false", "int", "str", "string",
];

/// Words that open a standing preference (after an optional `please`).
const PREFERENCE_OPENERS: &[&str] = &[
    "always",
    "never",
    "don't",
    "dont",
    "do not",
    "no",
    "avoid",
    "prefer",
    "use",
    "only use",
    "stop using",
    "stick to",
];

/// Whether feedback states a standing preference, kept as a lesson for
/// every later task: it opens (after an optional `please`) with `always`,
/// `never`, `don't`/`do not`, `no`, `avoid`, `prefer`, `use`, `only use`,
/// `stop using` or `stick to`, and names no concrete case: it mentions no
/// `return`/`raise`, no `==`/`->`, and holds no call with arguments in
/// backticks. "always type-hint", "no recursion", "use pathlib, not
/// os.path" are lessons; "`f('')` must return `''`" (a test case),
/// "don't return None on empty input" (behaviour of this function) and
/// "wrong result" are not.
pub fn is_lesson(text: &str) -> bool {
    let t = text.trim().to_lowercase();
    let t = t.strip_prefix("please").map_or(t.as_str(), str::trim_start);
    let opens = PREFERENCE_OPENERS.iter().any(|o| {
        t.strip_prefix(o)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',', ':', '-']))
    });
    let concrete = t.contains("return")
        || t.contains("raise")
        || t.contains("==")
        || t.contains("->")
        || t.split('`').skip(1).step_by(2).any(|code| {
            code.find('(')
                .is_some_and(|i| i > 0 && !code[i + 1..].starts_with(')'))
        });
    opens && !concrete && t.len() <= 300
}

/// The FTS5 query for a function: the distinct words (letters and digits,
/// as FTS5's `unicode61` tokenizer splits them, so `slugify_title` gives
/// `slugify` and `title`) of its name and docstring, lower-cased, each
/// quoted as an FTS5 string (so no word is read as an operator) and joined
/// with `OR`; words under 3 characters and a short list of common
/// docstring words (`the`, `return`, `list`, ...) left out, at most 32.
/// `None` when no word is left.
pub fn fts_query(function: &str, docstring: &str) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    let text = format!("{function} {docstring}").to_lowercase();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if w.chars().count() < 3 || STOPWORDS.contains(&w) || terms.iter().any(|t| t == w) {
            continue;
        }
        terms.push(w.to_string());
        if terms.len() == MAX_QUERY_TERMS {
            break;
        }
    }
    if terms.is_empty() {
        return None;
    }
    // Quoting is FTS5's string syntax: a `"` inside doubles (none can be
    // left after the split, but the rule is kept).
    Some(
        terms
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

/// The text on one line (newlines to spaces, runs of spaces kept).
fn one_line(s: &str) -> String {
    s.trim().replace(['\r', '\n'], " ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

const ITEM_COLUMNS: &str = "m.id, m.kind, m.text, m.function, m.task, m.created_ms";

/// A row of [`ITEM_COLUMNS`]; the inner error names a kind no docsmith writes.
fn read_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<MemoryItem, StoreError>> {
    let kind: String = r.get(1)?;
    let item = MemoryItem {
        id: r.get(0)?,
        kind: MemoryKind::Feedback,
        text: r.get(2)?,
        function: r.get(3)?,
        task: r.get::<_, Option<i64>>(4)?.map(TaskId),
        created_ms: r.get(5)?,
    };
    Ok(MemoryKind::parse(&kind).map(|kind| MemoryItem { kind, ..item }))
}

/// Inserts an item of `kind` about `task`'s function; its id, or
/// [`StoreError::NotFound`] for an unknown task.
fn insert_item(
    conn: &rusqlite::Connection,
    kind: MemoryKind,
    task: TaskId,
    text: &str,
) -> Result<i64, StoreError> {
    let n = conn.execute(
        "INSERT INTO memory (kind, text, function, docstring, task, created_ms)
         SELECT ?2, ?3, function, COALESCE(docstring, ''), id, ?4 FROM tasks WHERE id = ?1",
        params![task.0, kind.as_str(), text, now_ms()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "task",
            id: task.0.to_string(),
        });
    }
    Ok(conn.last_insert_rowid())
}

impl Store {
    /// Keeps feedback `text` the user gave on `task` as a lesson when it
    /// states a preference ([`is_lesson`]); returns the lesson's id, or
    /// `None` when it is no lesson. The feedback's own memory row (written
    /// when the feedback was added) becomes the lesson, so it is not also
    /// retrieved as feedback; a lesson with the same words (any case) is
    /// kept once, and feedback items with those words are dropped. Call
    /// after [`Store::add_feedback`].
    pub fn remember_lesson(&self, task: TaskId, text: &str) -> Result<Option<i64>, StoreError> {
        if !is_lesson(text) {
            return Ok(None);
        }
        let conn = self.conn();
        let indexed: Option<i64> = conn
            .query_row(
                "SELECT id FROM memory WHERE kind = 'feedback' AND task = ?1 AND text = ?2
                 ORDER BY id DESC LIMIT 1",
                params![task.0, text],
                |r| r.get(0),
            )
            .optional()?;
        let same: Option<i64> = conn
            .query_row(
                "SELECT id FROM memory WHERE kind = 'lesson' AND lower(trim(text)) = lower(trim(?1))
                 ORDER BY id LIMIT 1",
                [text],
                |r| r.get(0),
            )
            .optional()?;
        let lesson = match (same, indexed) {
            (Some(lesson), _) => lesson,
            (None, Some(row)) => {
                conn.execute("UPDATE memory SET kind = 'lesson' WHERE id = ?1", [row])?;
                row
            }
            (None, None) => insert_item(&conn, MemoryKind::Lesson, task, text)?,
        };
        // The same words given as feedback elsewhere (a rejection recorded on
        // a restored task, then again on the task that continues it) are
        // the lesson: forgetting it must not leave them to be retrieved.
        conn.execute(
            "DELETE FROM memory WHERE kind = 'feedback' AND lower(trim(text)) = lower(trim(?1))",
            [text],
        )?;
        Ok(Some(lesson))
    }

    /// Remembers a failure of `task`'s function and its fix (`text`, one
    /// line: `` `f(x)` expected 3, got 2; the fix: ... ``); returns its id.
    /// Errors: [`StoreError::NotFound`] for an unknown task.
    pub fn remember_failure(&self, task: TaskId, text: &str) -> Result<i64, StoreError> {
        insert_item(&self.conn(), MemoryKind::Failure, task, text)
    }

    /// Every remembered item, lessons first, then oldest first.
    pub fn memory(&self) -> Result<Vec<MemoryItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ITEM_COLUMNS} FROM memory m ORDER BY m.kind != 'lesson', m.id"
        ))?;
        let rows = stmt
            .query_map([], read_item)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().collect()
    }

    /// Forgets item `id`: a lesson no longer applies, a feedback or failure
    /// is no longer retrieved (the feedback itself stays in the task's
    /// history). Returns what was forgotten; [`StoreError::NotFound`] for an
    /// unknown id.
    pub fn forget(&self, id: i64) -> Result<MemoryItem, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {ITEM_COLUMNS} FROM memory m WHERE m.id = ?1"),
                [id],
                read_item,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "memory item",
                id: id.to_string(),
            })?;
        conn.execute("DELETE FROM memory WHERE id = ?1", [id])?;
        row
    }

    /// What a new task on `function` with `docstring` is shown, within
    /// `budget_tokens` (estimated at 4 bytes a token over
    /// [`MemoryItem::prompt_line`] plus its newline): every lesson, oldest
    /// first, then feedback and failures ranked by relevance, most relevant
    /// first. Relevance is FTS5's BM25 (`bm25()`, lower is better; see
    /// <https://sqlite.org/fts5.html#the_bm25_function>) of [`fts_query`]
    /// over the item's text, function name (weight 2) and docstring
    /// (weights 1). A fixed failure is recalled only for the same function
    /// (`function` as recorded): on the dev set, failures of other functions
    /// that merely shared words (`remove_duplicates`' shown to `unique`)
    /// misled the 1.5B model's first candidate, costing rounds and never
    /// gaining a task (`bench/results/dev-memory-on/`). Items of `exclude`
    /// (the task asking) and a text already shown are left out. Stops at the
    /// first item that does not fit.
    pub fn recall(
        &self,
        function: &str,
        docstring: &str,
        exclude: Option<TaskId>,
        budget_tokens: usize,
    ) -> Result<Vec<MemoryItem>, StoreError> {
        let conn = self.conn();
        let exclude = exclude.map(|t| t.0);
        let mut rows = {
            let mut stmt = conn.prepare(&format!(
                "SELECT {ITEM_COLUMNS} FROM memory m
                 WHERE m.kind = 'lesson' AND (?1 IS NULL OR m.task IS NULL OR m.task != ?1)
                 ORDER BY m.id"
            ))?;
            let v = stmt
                .query_map([exclude], read_item)?
                .collect::<Result<Vec<_>, _>>()?;
            v
        };
        if let Some(q) = fts_query(function, docstring) {
            let mut stmt = conn.prepare(&format!(
                "SELECT {ITEM_COLUMNS} FROM memory_fts JOIN memory m ON m.id = memory_fts.rowid
                 WHERE memory_fts MATCH ?1 AND m.kind != 'lesson'
                   AND (?2 IS NULL OR m.task IS NULL OR m.task != ?2)
                   AND (m.kind != 'failure' OR m.function = ?4)
                 ORDER BY bm25(memory_fts, 1.0, 2.0, 1.0), m.id DESC
                 LIMIT ?3"
            ))?;
            let ranked = stmt
                .query_map(params![q, exclude, MAX_CANDIDATES, function], read_item)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.extend(ranked);
        }
        let mut out: Vec<MemoryItem> = Vec::new();
        let mut used = 0;
        for row in rows {
            let item = row?;
            if out.iter().any(|o| o.text.trim() == item.text.trim()) {
                continue;
            }
            let cost = (item.prompt_line().len() + 1).div_ceil(BYTES_PER_TOKEN);
            if used + cost > budget_tokens {
                break;
            }
            used += cost;
            out.push(item);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewTask, TaskKind};

    fn task(store: &Store, function: &str, docstring: &str) -> TaskId {
        store
            .create_task(&NewTask {
                workspace: "/ws".into(),
                file: "/ws/m.py".into(),
                function: function.into(),
                kind: TaskKind::Generate,
                stub_source: format!("def {function}():\n    \"\"\"{docstring}\"\"\"\n"),
                docstring: Some(docstring.into()),
            })
            .unwrap()
    }

    fn texts(items: &[MemoryItem]) -> Vec<&str> {
        items.iter().map(|i| i.text.as_str()).collect()
    }

    #[test]
    fn preferences_are_lessons_and_concrete_cases_are_not() {
        for yes in [
            "always type-hint",
            "Always add type hints",
            "no recursion",
            "use pathlib, not os.path",
            "Please don't use regex",
            "do not use global state",
            "prefer list comprehensions",
            "avoid mutable default arguments",
            "never print",
        ] {
            assert!(is_lesson(yes), "{yes:?} is a lesson");
        }
        for no in [
            "`slugify('')` must return `''`",
            "don't return None on empty input",
            "use `f(2)` == 4",
            "wrong result",
            "it always crashes",
            "nothing works",
            "notably slow",
            "raise ValueError on negatives",
            "",
        ] {
            assert!(!is_lesson(no), "{no:?} is no lesson");
        }
    }

    #[test]
    fn the_query_quotes_distinct_words_of_name_and_docstring() {
        assert_eq!(
            fts_query(
                "slugify_title",
                "Make a URL slug of the title; \"AND\" OR NEAR(x)"
            )
            .unwrap(),
            "\"slugify\" OR \"title\" OR \"make\" OR \"url\" OR \"slug\" OR \"near\""
        );
        assert_eq!(fts_query("f", "a b"), None);
    }

    #[test]
    fn feedback_is_indexed_and_the_more_relevant_comes_first() {
        let store = Store::open_in_memory().unwrap();
        let slug = task(&store, "slugify", "Make a URL slug of a title.");
        let date = task(&store, "parse_date", "Parse an ISO date string.");
        // Unrelated feedback, so that BM25's IDF has documents to weigh by.
        for (f, d, fb) in [
            ("sum_squares", "Sum of the squares.", "handle empty input"),
            ("median", "Middle value of numbers.", "sort a copy first"),
            (
                "word_count",
                "Count words in text.",
                "split on any whitespace",
            ),
        ] {
            let t = task(&store, f, d);
            store.add_feedback(t, None, fb).unwrap();
        }
        store
            .add_feedback(date, None, "accept dates with slashes too")
            .unwrap();
        store
            .add_feedback(slug, None, "keep digits in the slug, drop other symbols")
            .unwrap();
        let now = task(&store, "slugify_title", "Turn a title into a URL slug.");
        let got = store
            .recall(
                "slugify_title",
                "Turn a title into a URL slug.",
                Some(now),
                256,
            )
            .unwrap();
        assert_eq!(
            texts(&got),
            ["keep digits in the slug, drop other symbols"],
            "only what matches the query"
        );
        let got = store
            .recall(
                "parse_slug_date",
                "Parse the date in a slug.",
                Some(now),
                256,
            )
            .unwrap();
        assert_eq!(got.len(), 2);
        // `date` appears in the dates feedback's text, function and
        // docstring; `slug` in the other's text and docstring only.
        assert_eq!(got[0].text, "accept dates with slashes too", "{got:?}");
        assert_eq!(got[0].kind, MemoryKind::Feedback);
        assert_eq!(got[0].task, Some(date));
        // The task asking is left out.
        let own = store
            .recall("slugify", "Make a URL slug of a title.", Some(slug), 256)
            .unwrap();
        assert!(texts(&own).iter().all(|t| !t.contains("digits")), "{own:?}");
    }

    #[test]
    fn lessons_apply_to_every_task_and_a_forgotten_one_is_not_retrieved() {
        let store = Store::open_in_memory().unwrap();
        // Recorded on a task restored after a restart, then again on the
        // task that continues it (as the language server does).
        let t0 = task(&store, "read_config", "Read the config file.");
        store
            .add_feedback(t0, None, "use pathlib, not os.path")
            .unwrap();
        let t1 = task(&store, "read_config", "Read the config file.");
        store
            .add_feedback(t1, None, "use pathlib, not os.path")
            .unwrap();
        let lesson = store
            .remember_lesson(t1, "use pathlib, not os.path")
            .unwrap()
            .expect("a preference");
        assert_eq!(
            store.remember_lesson(t1, "the result is wrong").unwrap(),
            None
        );
        // Said again on another task: one lesson.
        let t2 = task(&store, "count_words", "Count the words.");
        store
            .add_feedback(t2, None, "Use pathlib, not os.path")
            .unwrap();
        assert_eq!(
            store
                .remember_lesson(t2, "Use pathlib, not os.path")
                .unwrap(),
            Some(lesson)
        );
        let all = store.memory().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].kind, MemoryKind::Lesson);
        assert_eq!(
            all[0].label(),
            format!("lesson {lesson} (task {t1}): use pathlib, not os.path")
        );
        // An unrelated function still gets the lesson, and not as feedback.
        let t3 = task(&store, "add", "Add two numbers.");
        let got = store
            .recall("add", "Add two numbers.", Some(t3), 256)
            .unwrap();
        assert_eq!(texts(&got), ["use pathlib, not os.path"]);
        let got = store
            .recall(
                "read_config",
                "Read the config file with pathlib.",
                Some(t3),
                256,
            )
            .unwrap();
        assert_eq!(
            got.len(),
            1,
            "the lesson once, not again as feedback: {got:?}"
        );
        let gone = store.forget(lesson).unwrap();
        assert_eq!(gone.kind, MemoryKind::Lesson);
        for (f, d) in [
            ("add", "Add two numbers."),
            ("read_config", "pathlib os path"),
        ] {
            assert!(store.recall(f, d, Some(t3), 256).unwrap().is_empty());
        }
        assert!(matches!(
            store.forget(lesson),
            Err(StoreError::NotFound { .. })
        ));
        // The feedback itself stays in the task's history.
        assert_eq!(store.task(t1).unwrap().unwrap().feedback.len(), 1);
    }

    #[test]
    fn recall_stops_at_the_budget() {
        let store = Store::open_in_memory().unwrap();
        let t = task(&store, "mean", "Average of numbers.");
        // Each line `- earlier failure of `mean`: <60 bytes>` is 95 bytes
        // with its newline: 24 tokens.
        for i in 0..5 {
            let text = format!("`mean([{i}])` expected {i}.0, got 0; the fix: {:x<20}", "");
            store.remember_failure(t, &text).unwrap();
        }
        let cost = |items: &[MemoryItem]| {
            items
                .iter()
                .map(|i| (i.prompt_line().len() + 1).div_ceil(4))
                .sum::<usize>()
        };
        let all = store.recall("mean", "numbers", None, 10_000).unwrap();
        assert_eq!(all.len(), 5);
        let per = cost(&all[..1]);
        for budget in [0, per - 1, per, 2 * per + 1, 3 * per] {
            let got = store.recall("mean", "numbers", None, budget).unwrap();
            assert!(cost(&got) <= budget, "{budget}: {got:?}");
            assert_eq!(got.len(), budget / per, "budget {budget}, {per} a line");
        }
        assert_eq!(all[0].kind, MemoryKind::Failure);
        assert!(all[0]
            .prompt_line()
            .starts_with("- earlier failure of `mean`: `mean(["));
    }

    #[test]
    fn a_failure_is_recalled_for_its_own_function_only() {
        let store = Store::open_in_memory().unwrap();
        let t = task(
            &store,
            "remove_duplicates",
            "Remove all elements that occur more than once.",
        );
        store
            .remember_failure(t, "`remove_duplicates([1, 2, 2])` expected [1], got [1, 2]")
            .unwrap();
        // Another function whose docstring shares words: not shown.
        let other = store
            .recall(
                "unique",
                "Return sorted unique elements that occur in a list",
                None,
                256,
            )
            .unwrap();
        assert!(other.is_empty(), "{other:?}");
        let same = store
            .recall(
                "remove_duplicates",
                "Remove all elements that occur more than once.",
                None,
                256,
            )
            .unwrap();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].kind, MemoryKind::Failure);
    }

    #[test]
    fn feedback_given_before_the_migration_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            super::super::migrate(&mut conn, &super::super::MIGRATIONS[..5], "old").unwrap();
            conn.execute_batch(
                "INSERT INTO tasks (created_ms, updated_ms, workspace, file, function, kind, status, stub_source, docstring)
                 VALUES (1, 1, '/ws', 'm.py', 'slugify', 'generate', 'accepted', 'def slugify(): ...', 'Make a slug.');
                 INSERT INTO feedback (task, text, created_ms) VALUES (1, 'keep digits', 2);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let got = store.recall("slugify", "", None, 256).unwrap();
        assert_eq!(texts(&got), ["keep digits"]);
    }
}
