//! Turning an accepted proposal into text edits against the document as it is
//! *now*, and refusing when the user changed the function since the task began.
//!
//! Owns: the staleness check, the splice into the current text, and line-level
//! hunks (computed with `similar`) that leave every untouched line alone. Also
//! reads `# docsmith: <feedback>` comments. Knows nothing of the client: the
//! caller turns hunks into a versioned `TextDocumentEdit`.

use std::ops::Range;

use similar::{DiffOp, TextDiff};

use crate::python::{self, FunctionInfo};

/// Why an accepted proposal was not applied. Messages say what changed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaleError {
    #[error("`{0}` is no longer in the file (renamed or deleted); nothing was applied")]
    Missing(String),
    #[error("`{name}` changed since the task began ({what}); nothing was applied. Re-run docsmith on the function as it is now")]
    Changed { name: String, what: String },
    #[error("the proposal for `{name}` cannot be spliced into the current file: {message}")]
    Splice { name: String, message: String },
}

/// One replacement: `old` is a byte range of the current text, made of whole lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub old: Range<usize>,
    pub new_text: String,
}

/// The planned edit: the text after it, and the hunks that produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEdit {
    pub new_source: String,
    pub hunks: Vec<Hunk>,
}

/// Plans applying `code` (the proposal's module: imports, helpers, the function)
/// to `current`, the document's text now. `stub_source` is the function's text
/// when the task began (`tasks.stub_source`): if the function's text differs
/// now, nothing is planned and the error says which part changed.
pub fn plan_accept(
    current: &str,
    name: &str,
    stub_source: &str,
    code: &str,
) -> Result<PlannedEdit, StaleError> {
    let func =
        python::find_function(current, name).map_err(|_| StaleError::Missing(name.to_string()))?;
    let now = python::function_source(current, name).unwrap_or_default();
    if now != stub_source {
        return Err(StaleError::Changed {
            name: name.to_string(),
            what: what_changed(stub_source, &func, name),
        });
    }
    let spliced = python::splice(current, &func, code).map_err(|e| StaleError::Splice {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    Ok(PlannedEdit {
        hunks: line_hunks(current, &spliced.source),
        new_source: spliced.source,
    })
}

fn what_changed(before_src: &str, now: &FunctionInfo, name: &str) -> String {
    let Ok(before) = python::find_function(before_src, name) else {
        return "its text differs".into();
    };
    let mut parts = Vec::new();
    if before.signature != now.signature || before.decorators != now.decorators {
        parts.push("signature");
    }
    if before.docstring != now.docstring {
        parts.push("docstring");
    }
    if parts.is_empty() {
        parts.push("body");
    }
    format!("its {} changed", parts.join(" and "))
}

/// Line-level hunks turning `old` into `new`; equal lines produce nothing.
pub fn line_hunks(old: &str, new: &str) -> Vec<Hunk> {
    let diff = TextDiff::from_lines(old, new);
    let old_lines = diff.old_slices();
    let new_lines = diff.new_slices();
    let mut offsets = Vec::with_capacity(old_lines.len() + 1);
    let mut at = 0;
    for l in old_lines {
        offsets.push(at);
        at += l.len();
    }
    offsets.push(at);
    let mut hunks: Vec<Hunk> = Vec::new();
    for op in diff.ops() {
        if let DiffOp::Equal { .. } = op {
            continue;
        }
        let (o, n) = (op.old_range(), op.new_range());
        let new_text: String = new_lines[n].concat();
        let old = offsets[o.start]..offsets[o.end];
        // Adjacent delete + insert ops become one replacement.
        if let Some(last) = hunks.last_mut() {
            if last.old.end == old.start {
                last.old.end = old.end;
                last.new_text.push_str(&new_text);
                continue;
            }
        }
        hunks.push(Hunk { old, new_text });
    }
    hunks
}

/// Feedback written in the file for clients that cannot prompt: the text after
/// `# docsmith:` on a comment line directly above the function (decorators
/// included) or anywhere inside it. Several lines are joined with spaces.
pub fn feedback_comment(source: &str, func: &FunctionInfo) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    let mut above = Vec::new();
    let mut l = func.start_line;
    while l > 0 {
        l -= 1;
        let t = lines.get(l).map(|s| s.trim()).unwrap_or("");
        if !t.starts_with('#') {
            break;
        }
        above.push(t);
    }
    above.reverse();
    let inside = lines
        .iter()
        .take(func.end_line + 1)
        .skip(func.start_line)
        .map(|s| s.trim());
    for t in above.into_iter().chain(inside) {
        if let Some(rest) = t.strip_prefix('#').map(str::trim_start) {
            if let Some(fb) = rest.strip_prefix("docsmith:") {
                let fb = fb.trim();
                if !fb.is_empty() {
                    found.push(fb.to_string());
                }
            }
        }
    }
    (!found.is_empty()).then(|| found.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "import os\n\n\ndef keep():\n    return 1\n\n\ndef add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n    ...\n\n\nTAIL = 1\n";

    fn stub() -> String {
        python::function_source(FILE, "add").unwrap()
    }

    fn apply(src: &str, hunks: &[Hunk]) -> String {
        let mut out = src.to_string();
        for h in hunks.iter().rev() {
            out.replace_range(h.old.clone(), &h.new_text);
        }
        out
    }

    #[test]
    fn accept_replaces_only_the_stub_and_adds_imports() {
        let code = "import math\n\ndef add(a, b):\n    \"\"\"Other doc.\"\"\"\n    return math.fsum([a, b])\n";
        let plan = plan_accept(FILE, "add", &stub(), code).unwrap();
        assert!(plan.new_source.contains("import math\n"));
        assert!(
            plan.new_source.contains("    >>> add(1, 2)\n"),
            "user's docstring kept"
        );
        assert!(plan.new_source.contains("return math.fsum([a, b])"));
        assert!(plan.new_source.contains("def keep():\n    return 1\n"));
        assert!(plan.new_source.ends_with("TAIL = 1\n"));
        assert_eq!(apply(FILE, &plan.hunks), plan.new_source);
        // Untouched lines are outside every hunk.
        let keep_at = FILE.find("def keep").unwrap();
        assert!(plan.hunks.iter().all(|h| !h.old.contains(&keep_at)));
    }

    #[test]
    fn a_changed_function_is_refused_and_says_what_changed() {
        let code = "def add(a, b):\n    return a + b\n";
        let sig = FILE.replace("def add(a, b):", "def add(a, b, c=0):");
        let e = plan_accept(&sig, "add", &stub(), code).unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        let doc = FILE.replace("Add.", "Add two.");
        let e = plan_accept(&doc, "add", &stub(), code).unwrap_err();
        assert!(e.to_string().contains("docstring"), "{e}");
        let body = FILE.replace("    ...\n", "    return 0\n");
        let e = plan_accept(&body, "add", &stub(), code).unwrap_err();
        assert!(e.to_string().contains("body"), "{e}");
        let gone = FILE.replace("def add(a, b)", "def plus(a, b)");
        assert_eq!(
            plan_accept(&gone, "add", &stub(), code).unwrap_err(),
            StaleError::Missing("add".into())
        );
        // Edits elsewhere in the file do not make the proposal stale.
        let elsewhere = FILE.replace("TAIL = 1", "TAIL = 2\nMORE = 3");
        let plan = plan_accept(&elsewhere, "add", &stub(), code).unwrap();
        assert!(plan.new_source.contains("MORE = 3") && plan.new_source.contains("return a + b"));
    }

    #[test]
    fn a_crlf_document_gets_crlf_lines() {
        let file = FILE.replace('\n', "\r\n");
        let stub = python::function_source(&file, "add").unwrap();
        let code = "import math\n\ndef add(a, b):\n    s = math.fsum([a, b])\n    return s\n";
        let plan = plan_accept(&file, "add", &stub, code).unwrap();
        assert!(plan
            .new_source
            .contains("    s = math.fsum([a, b])\r\n    return s\r\n"));
        assert!(
            plan.new_source
                .match_indices('\n')
                .all(|(i, _)| plan.new_source.as_bytes()[i - 1] == b'\r'),
            "{:?}",
            plan.new_source
        );
        assert!(plan
            .hunks
            .iter()
            .all(|h| !h.new_text.replace("\r\n", "").contains('\n')));
        assert_eq!(apply(&file, &plan.hunks), plan.new_source);
    }

    #[test]
    fn feedback_comes_from_comments_above_or_inside() {
        let src = "# docsmith: handle negative numbers\n# docsmith: and zero\ndef f(x):\n    \"\"\"F.\"\"\"\n    return x\n";
        let f = python::find_function(src, "f").unwrap();
        assert_eq!(
            feedback_comment(src, &f).as_deref(),
            Some("handle negative numbers and zero")
        );
        let src2 = "def f(x):\n    \"\"\"F.\"\"\"\n    # docsmith: use a loop\n    return x\n";
        let f2 = python::find_function(src2, "f").unwrap();
        assert_eq!(feedback_comment(src2, &f2).as_deref(), Some("use a loop"));
        let src3 = "# docsmith: not mine\n\ndef f(x):\n    return x\n";
        let f3 = python::find_function(src3, "f").unwrap();
        assert_eq!(
            feedback_comment(src3, &f3),
            None,
            "a blank line separates it"
        );
    }
}
