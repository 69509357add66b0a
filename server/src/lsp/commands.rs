//! What each `workspace/executeCommand` does, and what the choices of the
//! review prompt (`prompts`) run. Commands that start work return at once
//! (the task runs in `tasks`); `accept` awaits only the client's answer to
//! `workspace/applyEdit`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tower_lsp_server::ls_types::*;

use super::documents::Document;
use super::edits::{self, StaleError};
use super::errors::LspError;
use super::prompts::{self, ReviewChoice};
use super::protocol::{Applied, Command, ProposalFiles, Started, TaskPhase};
use super::tasks::{self, Prompt, Tagged, TaskEntry};
use super::{uri_path, ServerState};
use crate::pipeline::{self, Ending, Proposal, Reply, Target, TaskRun, TaskSpec};
use crate::store::{TaskKind, TaskStatus};

/// Runs one command: parses it once into a [`Command`] (an unknown name or
/// bad arguments is an `InvalidParams` error), then does it. Errors are
/// returned to the client as JSON-RPC errors.
pub async fn execute(state: &Arc<ServerState>, p: ExecuteCommandParams) -> Result<Value, LspError> {
    match Command::parse(&p)? {
        Command::Generate(a) => Ok(json(&start(state, a.uri, a.name, None)?)),
        Command::Refine(a) => {
            let fb = match a.feedback.filter(|f| !f.trim().is_empty()) {
                Some(f) => f,
                None => comment_feedback(state, &a.uri, &a.name)?,
            };
            Ok(json(&start(state, a.uri, a.name, Some(fb))?))
        }
        Command::Answer(a) => {
            let e = live(state, a.task)?;
            if e.view().phase != TaskPhase::Question {
                return Err(wrong_phase(&e, "there is no question to answer"));
            }
            e.reply(match a.answer.filter(|s| !s.trim().is_empty()) {
                Some(s) => Reply::Answer(s),
                None => Reply::Assume,
            });
            Ok(Value::Null)
        }
        Command::Accept(a) => Ok(json(&accept(state, a.task).await?)),
        Command::Reject(a) => {
            reject(state, a.task, a.feedback).await?;
            Ok(Value::Null)
        }
        Command::Discard(a) => {
            discard(state, a.task).await?;
            Ok(Value::Null)
        }
        Command::ShowDiff(a) => Ok(json(
            &show_diff(state, a.task, a.open.unwrap_or(true)).await?,
        )),
        Command::Cancel(a) => {
            live(state, a.task)?.cancel.cancel();
            Ok(Value::Null)
        }
        Command::WriteTests(a) => Ok(json(&write_tests(state, a.task).await?)),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn live(state: &ServerState, task: i64) -> Result<Arc<TaskEntry>, LspError> {
    state
        .tasks
        .get(&task)
        .map(|e| e.clone())
        .ok_or(LspError::UnknownTask(task))
}

fn wrong_phase(e: &TaskEntry, wanted: &str) -> LspError {
    LspError::WrongPhase {
        task: e.id,
        phase: format!("{:?}", e.view().phase).to_lowercase(),
        wanted: wanted.to_string(),
    }
}

fn comment_feedback(state: &ServerState, uri: &Uri, name: &str) -> Result<String, LspError> {
    let (text, _) = state.snapshot(uri)?;
    let f = crate::python::find_function(&text, name).map_err(pipeline::PipelineError::from)?;
    edits::feedback_comment(&text, &f).ok_or_else(|| {
        LspError::Feedback(format!(
            "no feedback for `{name}`: pass it as the command's `feedback` argument, or write a `# docsmith: <feedback>` comment line directly above or inside the function"
        ))
    })
}

/// Starts a generate (`feedback` None) or refine task on the function as the
/// editor has it now. Refused while the function already has a live task.
pub fn start(
    state: &Arc<ServerState>,
    uri: Uri,
    name: String,
    feedback: Option<String>,
) -> Result<Started, LspError> {
    let rt = state.runtime()?;
    let root = state.session()?.root.clone();
    let key = (uri.clone(), name.clone());
    // Reserve the function first, atomically: two quick clicks start one task.
    match state.active.entry(key.clone()) {
        dashmap::Entry::Occupied(o) => {
            let task = *o.get();
            let phase = state
                .tasks
                .get(&task)
                .map(|e| e.view().message)
                .unwrap_or_else(|| "starting".into());
            return Err(LspError::Busy { name, task, phase });
        }
        dashmap::Entry::Vacant(v) => {
            v.insert(0);
        }
    }
    let started = (|| {
        let (text, _) = state.snapshot(&uri)?;
        let path = uri_path(&uri)?;
        let kind = if feedback.is_some() {
            TaskKind::Refine
        } else {
            TaskKind::Generate
        };
        let spec = TaskSpec {
            workspace: root,
            file: path.clone(),
            source: text.to_string(),
            target: Target::Name(name.clone()),
            feedback,
            kind,
        };
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let run = TaskRun::start(spec, rt.deps.clone(), Some(tx))?;
        let id = run.task_id().0;
        let stub_source =
            crate::python::function_source(&text, &run.function().qualname()).unwrap_or_default();
        let (entry, replies) = TaskEntry::new(id, uri.clone(), path, name.clone(), stub_source);
        // Tasks ahead in the queue: those already waiting, plus one running
        // task when no slot is free.
        let waiting = state
            .tasks
            .iter()
            .filter(|t| t.view().phase == TaskPhase::Queued)
            .count();
        let queued_behind = (waiting + 1).saturating_sub(state.queue.available_permits());
        state.tasks.insert(id, entry.clone());
        // A restored task for the same function is superseded.
        let old: Vec<i64> = state
            .restored
            .iter()
            .filter(|r| r.uri == uri && r.row.function == name)
            .map(|r| *r.key())
            .collect();
        for o in old {
            if let Some((_, r)) = state.restored.remove(&o) {
                if let Some(store) = state.store() {
                    let _ = pipeline::end_stored_task(
                        &store,
                        r.row.id,
                        Ending::Discarded,
                        Some(&format!("superseded by task {id}")),
                    );
                }
            }
        }
        tasks::spawn(state.clone(), entry, run, replies, events, raise_prompt);
        Ok::<_, LspError>(Started {
            task: id,
            queued_behind,
        })
    })();
    match &started {
        Ok(s) => {
            state.active.insert(key, s.task);
        }
        Err(_) => {
            state.active.remove(&key);
        }
    }
    started
}

/// The driver's [`tasks::Prompter`]: asks the question, or runs the review
/// prompt, on a task of its own.
fn raise_prompt(state: Arc<ServerState>, e: Arc<TaskEntry>, prompt: Prompt, pause: u32) {
    match prompt {
        Prompt::Question(q) => {
            tokio::spawn(prompts::ask_question(state, e, q, pause));
        }
        Prompt::Review(p) => {
            tokio::spawn(review(state, e, p, pause));
        }
    }
}

/// The review prompt of a live task's proposal, and what each choice does.
/// Show diff, and a reject the server cannot make (no feedback), come back
/// to the same prompt (4 prompts at most). Stops without acting once the
/// task left pause `pause` (answered meanwhile through a command).
async fn review(state: Arc<ServerState>, e: Arc<TaskEntry>, p: Box<Proposal>, pause: u32) {
    for _ in 0..4 {
        let chosen = prompts::ask_review(&state, &e, &p).await;
        if e.view().pause != pause {
            return; // answered meanwhile through a command
        }
        match chosen {
            Some(ReviewChoice::Accept) => {
                if let Err(err) = accept(&state, e.id).await {
                    state
                        .client
                        .show_message(MessageType::WARNING, format!("docsmith: {err}"))
                        .await;
                }
                return;
            }
            Some(ReviewChoice::Reject) => match reject(&state, e.id, None).await {
                Ok(()) => return,
                Err(err) => {
                    state
                        .client
                        .show_message(MessageType::INFO, format!("docsmith: {err}"))
                        .await
                }
            },
            Some(ReviewChoice::ShowDiff) => {
                let _ = show_diff(&state, e.id, true).await;
            }
            Some(ReviewChoice::Discard) => {
                let _ = e.replies.send(Tagged {
                    pause: Some(pause),
                    reply: Reply::Discard,
                });
                return;
            }
            // Dismissed: the proposal stays; code actions and lenses still offer the choices.
            None => return,
        }
    }
}

/// What an accept needs, from a live task in review or a restored one.
struct Ready {
    uri: Uri,
    name: String,
    stub_source: String,
    code: String,
    live: Option<Arc<TaskEntry>>,
    tests_file: Option<String>,
}

/// The module name a test module imports for `file`: the one Python gives
/// it in the workspace (`shop.inventory`), or the file's stem.
fn tests_module(state: &ServerState, file: &std::path::Path) -> String {
    match state.session() {
        // Only the module name: `locate`, not `tests_file_for`, which also
        // searches the workspace for existing test files.
        Ok(s) => crate::python::project::locate(file, &s.root).module,
        Err(_) => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

fn ready(state: &ServerState, task: i64) -> Result<Ready, LspError> {
    if let Some(e) = state.tasks.get(&task).map(|e| e.clone()) {
        let v = e.view();
        let Some(p) = v.proposal.filter(|_| v.phase == TaskPhase::Review) else {
            return Err(wrong_phase(&e, "it has no proposal to review yet"));
        };
        let module = tests_module(state, &e.path);
        return Ok(Ready {
            uri: e.uri.clone(),
            name: e.name.clone(),
            stub_source: e.stub_source.clone(),
            code: p.code.clone(),
            tests_file: Some(pipeline::render_test_module(&p, &module)),
            live: Some(e),
        });
    }
    let r = state
        .restored
        .get(&task)
        .map(|r| r.clone())
        .ok_or(LspError::UnknownTask(task))?;
    if r.row.status != TaskStatus::AwaitingReview {
        return Err(LspError::WrongPhase {
            task,
            phase: r.row.status.as_str().replace('_', " "),
            wanted: "only a proposal awaiting review can be accepted; re-run it".into(),
        });
    }
    let code = r.row.final_code.clone().ok_or_else(|| {
        LspError::Internal(format!(
            "task {task} awaits review but the store has no code for it"
        ))
    })?;
    let tests_file = r.row.proposal_dir.as_ref().and_then(|d| {
        let module = tests_module(state, std::path::Path::new(&r.row.file));
        let t = std::fs::read_to_string(
            std::path::Path::new(d).join(format!("test_{}.py", r.row.function)),
        )
        .ok()?;
        Some(t.replace(
            &format!("from {} import *", r.row.function),
            &format!("from {module} import *"),
        ))
    });
    Ok(Ready {
        uri: r.uri.clone(),
        name: r.row.function.clone(),
        stub_source: r.row.stub_source.clone(),
        code,
        live: None,
        tests_file,
    })
}

/// Applies a proposal as a versioned workspace edit against the document as
/// it is now. Refuses (and offers a re-run) when the function changed since
/// the task began; reports the client's refusal when the edit is not applied.
pub async fn accept(state: &Arc<ServerState>, task: i64) -> Result<Applied, LspError> {
    let r = ready(state, task)?;
    let session = state.session()?.clone();
    let (text, version) = state.snapshot(&r.uri)?;
    let plan = match edits::plan_accept(&text, &r.name, &r.stub_source, &r.code) {
        Ok(p) => p,
        Err(stale) => {
            offer_rerun(state.clone(), r.uri.clone(), r.name.clone(), task, &stale);
            return Ok(Applied {
                applied: false,
                reason: Some(stale.to_string()),
            });
        }
    };
    // Positions from the same text the plan was made on (a temporary document
    // when the file is not open).
    let doc_positions = Document::new(version.unwrap_or(0), "python", &text);
    let enc = session.encoding;
    let annotate = session.flags.change_annotations
        && state
            .runtime()
            .map(|rt| rt.config.confirm_edits)
            .unwrap_or(true);
    let annotation_id: ChangeAnnotationIdentifier = format!("docsmith-accept-{task}");
    let text_edits: Vec<OneOf<TextEdit, AnnotatedTextEdit>> = plan
        .hunks
        .iter()
        .map(|h| {
            let te = TextEdit::new(doc_positions.range(h.old.clone(), enc), h.new_text.clone());
            if annotate {
                OneOf::Right(AnnotatedTextEdit {
                    text_edit: te,
                    annotation_id: annotation_id.clone(),
                })
            } else {
                OneOf::Left(te)
            }
        })
        .collect();
    let edit = if session.flags.document_changes {
        WorkspaceEdit {
            document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                text_document: OptionalVersionedTextDocumentIdentifier {
                    uri: r.uri.clone(),
                    version,
                },
                edits: text_edits,
            }])),
            change_annotations: annotate.then(|| {
                HashMap::from([(
                    annotation_id.clone(),
                    ChangeAnnotation {
                        label: format!("docsmith: implement `{}`", r.name),
                        needs_confirmation: Some(true),
                        description: Some(format!("proposal of task {task}")),
                    },
                )])
            }),
            ..Default::default()
        }
    } else {
        // Without versioned edits the check above, made on this very text, is the only guard.
        let plain = text_edits
            .into_iter()
            .map(|e| match e {
                OneOf::Left(t) => t,
                OneOf::Right(a) => a.text_edit,
            })
            .collect();
        WorkspaceEdit {
            changes: Some(HashMap::from([(r.uri.clone(), plain)])),
            ..Default::default()
        }
    };
    let resp = state
        .client
        .apply_edit(edit)
        .await
        .map_err(|e| LspError::Internal(format!("workspace/applyEdit failed: {e}")))?;
    if !resp.applied {
        let reason = resp.failure_reason.unwrap_or_else(|| {
            "the editor did not apply the edit (the document may have changed meanwhile)".into()
        });
        state
            .client
            .show_message(
                MessageType::WARNING,
                format!("docsmith: `{}` not applied: {reason}", r.name),
            )
            .await;
        return Ok(Applied {
            applied: false,
            reason: Some(reason),
        });
    }
    match &r.live {
        Some(e) => e.reply(Reply::Accept),
        None => {
            state.restored.remove(&task);
            if let Some(store) = state.store() {
                let _ = pipeline::end_stored_task(
                    &store,
                    crate::store::TaskId(task),
                    Ending::Accepted,
                    None,
                );
            }
            state.refresh_lenses().await;
        }
    }
    if state
        .runtime()
        .map(|rt| rt.config.write_tests)
        .unwrap_or(false)
        && r.tests_file.is_some()
    {
        if let Err(e) = write_tests_text(state, &r).await {
            state
                .client
                .show_message(
                    MessageType::WARNING,
                    format!("docsmith: tests not written: {e}"),
                )
                .await;
        }
    }
    Ok(Applied {
        applied: true,
        reason: None,
    })
}

fn offer_rerun(state: Arc<ServerState>, uri: Uri, name: String, task: i64, stale: &StaleError) {
    let msg = format!("docsmith: {stale}");
    tokio::spawn(async move {
        if prompts::offer_rerun(&state, msg).await {
            let _ = discard(&state, task).await;
            // Wait for the old task to end so the function is free again.
            for _ in 0..100 {
                if !state.tasks.contains_key(&task) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if let Err(e) = start(&state, uri, name, None) {
                state
                    .client
                    .show_message(MessageType::ERROR, format!("docsmith: {e}"))
                    .await;
            }
        }
    });
}

/// Rejects a proposal with feedback (from the argument, else a `# docsmith:`
/// comment): a live task starts another round; a restored one is superseded
/// by a new refine task.
pub async fn reject(
    state: &Arc<ServerState>,
    task: i64,
    feedback: Option<String>,
) -> Result<(), LspError> {
    let r = ready(state, task)?;
    let feedback = match feedback.filter(|f| !f.trim().is_empty()) {
        Some(f) => f,
        None => comment_feedback(state, &r.uri, &r.name).map_err(|_| {
            LspError::Feedback(format!(
                "rejecting needs feedback: pass `feedback` to docsmith.reject, or write `# docsmith: <what to change>` directly above `{}` and reject again (Discard drops the proposal without feedback)",
                r.name
            ))
        })?,
    };
    match r.live {
        Some(e) => e.reply(Reply::Reject(feedback)),
        None => {
            if let Some(store) = state.store() {
                let _ = store.add_feedback(crate::store::TaskId(task), None, &feedback);
                let _ = pipeline::end_stored_task(
                    &store,
                    crate::store::TaskId(task),
                    Ending::Rejected,
                    Some("rejected with feedback after a restart; continued as a new task"),
                );
            }
            state.restored.remove(&task);
            start(state, r.uri, r.name, Some(feedback))?;
        }
    }
    Ok(())
}

/// Drops a proposal (or ends a task waiting for an answer).
pub async fn discard(state: &Arc<ServerState>, task: i64) -> Result<(), LspError> {
    if let Some(e) = state.tasks.get(&task).map(|e| e.clone()) {
        match e.view().phase {
            TaskPhase::Review => e.reply(Reply::Discard),
            _ => e.cancel.cancel(),
        }
        return Ok(());
    }
    let (_, r) = state
        .restored
        .remove(&task)
        .ok_or(LspError::UnknownTask(task))?;
    if let Some(store) = state.store() {
        let _ = pipeline::end_stored_task(
            &store,
            r.row.id,
            Ending::Discarded,
            Some("discarded by the user"),
        );
    }
    state.refresh_lenses().await;
    Ok(())
}

/// The proposal's files; opens the diff with `window/showDocument` when the
/// client can, else logs the diff to the client's log.
pub async fn show_diff(
    state: &Arc<ServerState>,
    task: i64,
    open: bool,
) -> Result<ProposalFiles, LspError> {
    let (dir, name) = if let Some(e) = state.tasks.get(&task).map(|e| e.clone()) {
        let v = e.view();
        let dir = v
            .proposal
            .as_ref()
            .and_then(|p| p.dir.clone())
            .ok_or_else(|| wrong_phase(&e, "it has no proposal files yet"))?;
        (dir, e.name.clone())
    } else {
        let r = state
            .restored
            .get(&task)
            .map(|r| r.clone())
            .ok_or(LspError::UnknownTask(task))?;
        let dir = r
            .row
            .proposal_dir
            .clone()
            .ok_or_else(|| LspError::Internal(format!("task {task} has no proposal files")))?;
        (std::path::PathBuf::from(dir), r.row.function.clone())
    };
    let files = ProposalFiles {
        dir: dir.display().to_string(),
        diff: dir.join("proposal.diff").display().to_string(),
        original: dir.join("original.py").display().to_string(),
        code: dir.join(format!("{name}.py")).display().to_string(),
        tests: dir.join(format!("test_{name}.py")).display().to_string(),
        report: dir.join("report.md").display().to_string(),
    };
    if !open {
        return Ok(files);
    }
    let shown = if state.session()?.flags.show_document {
        match Uri::from_file_path(&files.diff) {
            Some(uri) => state
                .client
                .show_document(ShowDocumentParams {
                    uri,
                    external: Some(false),
                    take_focus: Some(true),
                    selection: None,
                })
                .await
                .unwrap_or(false),
            None => false,
        }
    } else {
        false
    };
    if !shown {
        let diff = std::fs::read_to_string(&files.diff).unwrap_or_default();
        state
            .client
            .log_message(
                MessageType::INFO,
                format!("docsmith: proposal diff ({}):\n{diff}", files.diff),
            )
            .await;
        state
            .client
            .show_message(
                MessageType::INFO,
                format!(
                    "docsmith: the proposal is in {} (diff: {})",
                    files.dir, files.diff
                ),
            )
            .await;
    }
    Ok(files)
}

/// Writes the proposal's tests where the project keeps its tests
/// ([`crate::python::project::tests_file_for`]; `tests/test_<module>.py`
/// under the workspace when it has none).
pub async fn write_tests(state: &Arc<ServerState>, task: i64) -> Result<Applied, LspError> {
    let r = ready(state, task)?;
    write_tests_text(state, &r).await
}

async fn write_tests_text(state: &Arc<ServerState>, r: &Ready) -> Result<Applied, LspError> {
    let session = state.session()?.clone();
    let text = r
        .tests_file
        .clone()
        .ok_or_else(|| LspError::Internal("no tests to write".into()))?;
    // Where the project keeps its tests (an existing module for this file's
    // tests is appended to).
    let path = crate::python::project::tests_file_for(&uri_path(&r.uri)?, &session.root).path;
    let uri = Uri::from_file_path(&path)
        .ok_or_else(|| LspError::Internal(format!("bad path {}", path.display())))?;
    let exists = path.exists();
    if !exists && !session.flags.create_files {
        // The client cannot create files; a new file holds no user text, so write it directly.
        std::fs::create_dir_all(path.parent().expect("tests dir has a parent"))
            .and_then(|()| std::fs::write(&path, &text))
            .map_err(|e| LspError::Internal(format!("{}: {e}", path.display())))?;
        return Ok(Applied {
            applied: true,
            reason: None,
        });
    }
    let (insert_at, new_text) = if exists {
        let (cur, _) = state.snapshot(&uri)?;
        let d = Document::new(0, "python", &cur);
        (
            d.byte_to_position(cur.len(), session.encoding),
            format!("\n\n{text}"),
        )
    } else {
        (Position::new(0, 0), text)
    };
    let mut ops = Vec::new();
    if !exists {
        ops.push(DocumentChangeOperation::Op(ResourceOp::Create(
            CreateFile {
                uri: uri.clone(),
                options: Some(CreateFileOptions {
                    overwrite: Some(false),
                    ignore_if_exists: Some(true),
                }),
                annotation_id: None,
            },
        )));
    }
    ops.push(DocumentChangeOperation::Edit(TextDocumentEdit {
        text_document: OptionalVersionedTextDocumentIdentifier {
            uri: uri.clone(),
            version: state.docs.get(&uri).map(|d| d.version),
        },
        edits: vec![OneOf::Left(TextEdit::new(
            Range::new(insert_at, insert_at),
            new_text,
        ))],
    }));
    let resp = state
        .client
        .apply_edit(WorkspaceEdit {
            document_changes: Some(DocumentChanges::Operations(ops)),
            ..Default::default()
        })
        .await
        .map_err(|e| LspError::Internal(format!("workspace/applyEdit failed: {e}")))?;
    Ok(Applied {
        applied: resp.applied,
        reason: resp.failure_reason,
    })
}
