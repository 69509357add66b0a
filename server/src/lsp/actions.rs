//! Code actions at the cursor and code lenses above functions: what the user
//! can do with a function now (generate, refine, cancel, accept, reject, diff,
//! discard, re-run), as commands of `protocol`.
//!
//! Read-only: both take one synchronous look at the document and the task
//! tables (no await, no lock kept) and build the list.

use tower_lsp_server::ls_types::*;

use super::protocol::{
    self as proto, AnswerArgs, FunctionArgs, RefineArgs, RejectArgs, ShowDiffArgs, TaskArgs,
    TaskPhase,
};
use super::{Restored, ServerState};
use crate::python::{self, FunctionInfo};
use crate::store::TaskStatus;

/// The state a function is in, for choosing actions and lenses.
enum FnState {
    /// A live task: its id, phase and one-line message.
    Live(i64, TaskPhase, String),
    /// A proposal restored from the store, awaiting review.
    RestoredReview(i64, String),
    /// A task interrupted by a server restart.
    Interrupted,
    Idle,
}

fn state_of(state: &ServerState, uri: &Uri, name: &str) -> FnState {
    if let Some(id) = state
        .active
        .get(&(uri.clone(), name.to_string()))
        .map(|r| *r)
    {
        if let Some(e) = state.tasks.get(&id) {
            let v = e.view();
            return FnState::Live(id, v.phase, v.message);
        }
    }
    let restored: Option<Restored> = state
        .restored
        .iter()
        .find(|r| &r.uri == uri && r.row.function == name)
        .map(|r| r.clone());
    match restored {
        Some(r) if r.row.status == TaskStatus::AwaitingReview => FnState::RestoredReview(
            r.row.id.0,
            r.row
                .status_reason
                .clone()
                .unwrap_or_else(|| "passing".into()),
        ),
        Some(_) => FnState::Interrupted,
        None => FnState::Idle,
    }
}

/// The functions of `uri` (by qualname) that [`state_of`] would not find
/// idle: a live task or a restored one. Collected once per request, so the
/// code lens listing tests each function with a set lookup.
fn names_with_state(state: &ServerState, uri: &Uri) -> std::collections::HashSet<String> {
    let live = state
        .active
        .iter()
        .filter(|e| &e.key().0 == uri)
        .map(|e| e.key().1.clone());
    let restored = state
        .restored
        .iter()
        .filter(|r| &r.uri == uri)
        .map(|r| r.row.function.clone());
    live.chain(restored).collect()
}

/// The LSP command (of a code action or a lens) that runs `c`, shown as `title`.
fn lsp_command(title: String, c: proto::Command) -> Command {
    Command {
        title,
        command: c.name().to_string(),
        arguments: Some(c.arguments()),
    }
}

/// The commands that apply to `f` in `uri` now, most useful first, each with
/// its title.
fn commands_for(state: &ServerState, uri: &Uri, f: &FunctionInfo) -> Vec<(String, proto::Command)> {
    // `Class.method` for a method: the name that finds it again.
    let name = &f.qualname();
    let function = || FunctionArgs {
        uri: uri.clone(),
        name: name.clone(),
    };
    let review = |task: i64| {
        let t = TaskArgs { task };
        vec![
            (
                format!("Accept proposal for `{name}`"),
                proto::Command::Accept(t),
            ),
            (
                format!("Reject proposal for `{name}`…"),
                proto::Command::Reject(RejectArgs {
                    task,
                    feedback: None,
                }),
            ),
            (
                format!("Show proposal diff for `{name}`"),
                proto::Command::ShowDiff(ShowDiffArgs { task, open: None }),
            ),
            (
                format!("Discard proposal for `{name}`"),
                proto::Command::Discard(t),
            ),
        ]
    };
    match state_of(state, uri, name) {
        FnState::Live(task, TaskPhase::Review, _) | FnState::RestoredReview(task, _) => {
            review(task)
        }
        FnState::Live(task, TaskPhase::Question, _) => vec![
            (
                format!("Answer docsmith's question about `{name}` with its assumptions"),
                proto::Command::Answer(AnswerArgs { task, answer: None }),
            ),
            (
                "Cancel docsmith task".into(),
                proto::Command::Cancel(TaskArgs { task }),
            ),
        ],
        FnState::Live(task, _, _) => vec![(
            "Cancel docsmith task".into(),
            proto::Command::Cancel(TaskArgs { task }),
        )],
        FnState::Interrupted => vec![(
            format!("Re-run docsmith on `{name}` (interrupted)"),
            proto::Command::Generate(function()),
        )],
        FnState::Idle => {
            let mut v = Vec::new();
            if f.is_stub && f.docstring.is_some() {
                v.push((
                    format!("Generate `{name}` from docstring"),
                    proto::Command::Generate(function()),
                ));
            }
            v.push((
                format!("Refine `{name}` with feedback…"),
                proto::Command::Refine(RefineArgs {
                    uri: uri.clone(),
                    name: name.clone(),
                    feedback: None,
                }),
            ));
            v
        }
    }
}

/// `textDocument/codeAction`: the actions for the function at the start of the range.
pub fn code_actions(state: &ServerState, p: &CodeActionParams) -> CodeActionResponse {
    let kind = CodeActionKind::REFACTOR_REWRITE;
    if let Some(only) = &p.context.only {
        if !only.iter().any(|k| kind.as_str().starts_with(k.as_str())) {
            return Vec::new();
        }
    }
    let uri = &p.text_document.uri;
    let Some(f) = function_at(state, uri, p.range.start.line as usize) else {
        return Vec::new();
    };
    // A `@x.setter` after its getter: `Class.x` names the getter.
    if state
        .docs
        .get(uri)
        .is_some_and(|d| python::is_later_namesake(d.tree(), &d.text(), &f))
    {
        return Vec::new();
    }
    commands_for(state, uri, &f)
        .into_iter()
        .map(|(title, c)| {
            CodeActionOrCommand::CodeAction(CodeAction {
                title: title.clone(),
                kind: Some(kind.clone()),
                command: Some(lsp_command(title, c)),
                ..Default::default()
            })
        })
        .collect()
}

fn function_at(state: &ServerState, uri: &Uri, line: usize) -> Option<FunctionInfo> {
    let doc = state.docs.get(uri)?;
    let text = doc.text();
    python::function_at_line_in_tree(doc.tree(), &text, line, doc.line_start_byte(line))
}

/// `textDocument/codeLens`: above each module-level function and method with
/// a task or a proposal (its state and choices), and above each stub with a
/// docstring (`Generate`). Functions nested in functions get none (the
/// pipeline refuses them). Lists the functions without entering their
/// bodies and builds a function's full info only when it gets a lens, so a
/// 50,000-line file costs a walk of its top-level and class statements
/// (`cargo bench --bench lsp`).
pub fn code_lenses(state: &ServerState, uri: &Uri) -> Vec<CodeLens> {
    let functions: Vec<FunctionInfo> = {
        let Some(doc) = state.docs.get(uri) else {
            return Vec::new();
        };
        let text = doc.text();
        let with_state = names_with_state(state, uri);
        python::lens_functions_in_tree(doc.tree(), &text, |q| with_state.contains(q))
            .into_iter()
            .filter(|f| !python::is_later_namesake(doc.tree(), &text, f))
            .collect()
    };
    let mut out = Vec::new();
    for f in functions {
        let line = f.start_line as u32;
        let range = Range::new(Position::new(line, 0), Position::new(line, 0));
        let lens = |c: Command| CodeLens {
            range,
            command: Some(c),
            data: None,
        };
        match state_of(state, uri, &f.qualname()) {
            FnState::Idle => {
                if f.is_stub && f.docstring.is_some() {
                    out.extend(
                        commands_for(state, uri, &f)
                            .into_iter()
                            .take(1)
                            .map(|(title, c)| lens(lsp_command(title, c))),
                    );
                }
            }
            FnState::Live(task, TaskPhase::Review, msg) | FnState::RestoredReview(task, msg) => {
                out.push(lens(lsp_command(
                    format!("docsmith: {}", msg.trim_start_matches("ready for review: ")),
                    proto::Command::ShowDiff(ShowDiffArgs { task, open: None }),
                )));
                for (_, c) in commands_for(state, uri, &f) {
                    let short = match c {
                        proto::Command::Accept(_) => "Accept",
                        proto::Command::Reject(_) => "Reject…",
                        proto::Command::ShowDiff(_) => "Diff",
                        _ => continue,
                    };
                    out.push(lens(lsp_command(short.to_string(), c)));
                }
            }
            FnState::Live(task, _, msg) => {
                out.push(lens(lsp_command(
                    format!("docsmith: {msg} · Cancel"),
                    proto::Command::Cancel(TaskArgs { task }),
                )));
            }
            FnState::Interrupted => {
                out.extend(
                    commands_for(state, uri, &f)
                        .into_iter()
                        .map(|(title, c)| lens(lsp_command(title, c))),
                );
            }
        }
    }
    out
}
