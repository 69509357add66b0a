//! One background task per function: the driver that runs `pipeline::TaskRun`
//! on tokio, turns its events into work-done progress, asks the client the
//! planner's questions and the review, and waits for replies, all without a
//! handler ever awaiting it.
//!
//! The driver is a small loop over the pipeline's pauses:
//! queued -> running -> (question -> running)* -> review -> (rejected -> running -> review)* -> end.
//! Replies arrive on a channel, tagged with the pause they answer so a late
//! answer to an earlier prompt cannot answer a later one.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::ls_types::{MessageActionItem, MessageType, Uri};

use super::progress::Reporter;
use super::protocol::{TaskChanged, TaskChangedParams, TaskPhase};
use super::{commands, Inner};
use crate::pipeline::{Event, Pause, Proposal, Question, Reply, TaskRun};
use crate::store::TaskStatus;

/// A reply to a pause. `pause` is the pause number it answers, `None` for
/// replies from commands (they answer whatever is pending).
#[derive(Debug, Clone)]
pub struct Tagged {
    pub pause: Option<u32>,
    pub reply: Reply,
}

/// What the editor sees of a task.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub phase: TaskPhase,
    pub message: String,
    pub percent: u32,
    pub question: Option<Question>,
    pub proposal: Option<Box<Proposal>>,
    /// Number of the pause the task is waiting on (0 before the first).
    pub pause: u32,
}

/// A live task.
pub struct TaskEntry {
    pub id: i64,
    pub uri: Uri,
    pub path: PathBuf,
    pub name: String,
    /// The function's text when the task began (the stale check compares against it).
    pub stub_source: String,
    pub cancel: CancellationToken,
    pub replies: UnboundedSender<Tagged>,
    pub started: Instant,
    view: Mutex<TaskView>,
}

impl TaskEntry {
    /// A new entry, queued, and the receiving end of its reply channel.
    pub fn new(
        id: i64,
        uri: Uri,
        path: PathBuf,
        name: String,
        stub_source: String,
    ) -> (Arc<TaskEntry>, UnboundedReceiver<Tagged>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let e = TaskEntry {
            id,
            uri,
            path,
            name,
            stub_source,
            cancel: CancellationToken::new(),
            replies: tx,
            started: Instant::now(),
            view: Mutex::new(TaskView {
                phase: TaskPhase::Queued,
                message: "queued".into(),
                percent: 0,
                question: None,
                proposal: None,
                pause: 0,
            }),
        };
        (Arc::new(e), rx)
    }

    /// A copy of the current view.
    pub fn view(&self) -> TaskView {
        self.view.lock().expect("task view lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut TaskView)) -> TaskView {
        let mut v = self.view.lock().expect("task view lock");
        f(&mut v);
        v.clone()
    }

    /// Sends a reply from a command (answers whatever pause is pending).
    pub fn reply(&self, reply: Reply) {
        let _ = self.replies.send(Tagged { pause: None, reply });
    }
}

/// Starts the driver for `run` on the runtime. Returns at once.
pub fn spawn(
    inner: Arc<Inner>,
    entry: Arc<TaskEntry>,
    run: TaskRun,
    replies: UnboundedReceiver<Tagged>,
    events: UnboundedReceiver<Event>,
) {
    tokio::spawn(async move {
        let id = entry.id;
        drive(&inner, &entry, run, replies, events).await;
        inner.tasks.remove(&id);
        inner
            .active
            .remove(&(entry.uri.clone(), entry.name.clone()));
        inner.refresh_lenses().await;
    });
}

async fn notify(inner: &Inner, e: &TaskEntry, v: &TaskView) {
    inner
        .client
        .send_notification::<TaskChanged>(TaskChangedParams {
            task: e.id,
            uri: e.uri.clone(),
            name: e.name.clone(),
            phase: v.phase,
            message: v.message.clone(),
            percent: v.percent,
        })
        .await;
}

async fn acquire(inner: &Inner, e: &TaskEntry) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = inner.queue.clone().acquire_owned() => p.ok(),
        _ = e.cancel.cancelled() => None,
    }
}

async fn drive(
    inner: &Arc<Inner>,
    e: &Arc<TaskEntry>,
    mut run: TaskRun,
    mut replies: UnboundedReceiver<Tagged>,
    events: UnboundedReceiver<Event>,
) {
    let flags = inner.session().map(|s| s.flags.clone()).unwrap_or_default();
    let title = format!("docsmith: {}", e.name);
    let mut round = 0u32;
    let reporter = Arc::new(tokio::sync::Mutex::new(
        Reporter::begin(
            &inner.client,
            flags.progress,
            e.id,
            round,
            title.clone(),
            "queued".into(),
        )
        .await,
    ));
    let v = e.view();
    notify(inner, e, &v).await;
    let forwarder = tokio::spawn(forward_events(
        inner.clone(),
        e.clone(),
        reporter.clone(),
        events,
    ));

    let mut permit = acquire(inner, e).await;
    let end_message: String;
    'run: loop {
        if permit.is_none() {
            end_message = cancelled(inner, e, &run);
            break;
        }
        let v = e.update(|v| {
            v.phase = TaskPhase::Running;
            v.question = None;
        });
        notify(inner, e, &v).await;
        let pause = run.advance(&e.cancel).await;
        match pause {
            Ok(Pause::Question(q)) => {
                permit = None;
                let v = e.update(|v| {
                    v.phase = TaskPhase::Question;
                    v.message = format!("question: {}", q.text);
                    v.question = Some(q.clone());
                    v.pause += 1;
                });
                notify(inner, e, &v).await;
                reporter
                    .lock()
                    .await
                    .report(v.message.clone(), v.percent)
                    .await;
                if flags.message_request {
                    tokio::spawn(ask_question(inner.clone(), e.clone(), q, v.pause));
                    if wait(e, &mut replies, &mut run, v.pause).await.is_none() {
                        end_message = cancelled(inner, e, &run);
                        break 'run;
                    }
                } else {
                    // A client that cannot ask gets the planner's assumptions.
                    let _ = run.reply(Reply::Assume);
                }
                permit = acquire(inner, e).await;
            }
            Ok(Pause::Review(p)) => {
                permit = None;
                let summary = p.summary();
                let v = e.update(|v| {
                    v.phase = TaskPhase::Review;
                    v.message = format!("ready for review: {summary}");
                    v.percent = 100;
                    v.proposal = Some(p.clone());
                    v.pause += 1;
                });
                reporter.lock().await.end(v.message.clone()).await;
                notify(inner, e, &v).await;
                inner.refresh_lenses().await;
                if flags.message_request {
                    tokio::spawn(ask_review(inner.clone(), e.clone(), p, v.pause));
                }
                if wait(e, &mut replies, &mut run, v.pause).await.is_none() {
                    end_message = cancelled(inner, e, &run);
                    break 'run;
                }
                // After Accept the run packages; after Discard it is done;
                // after Reject it samples a new round of candidates.
                let rejected = matches!(
                    run.stage(),
                    crate::pipeline::Stage::WriteCode | crate::pipeline::Stage::DesignTests
                );
                if rejected {
                    round += 1;
                    *reporter.lock().await = Reporter::begin(
                        &inner.client,
                        flags.progress,
                        e.id,
                        round,
                        title.clone(),
                        "refining with your feedback".into(),
                    )
                    .await;
                    let v = e.update(|v| {
                        v.phase = TaskPhase::Running;
                        v.proposal = None;
                        v.percent = 0;
                        v.message = "refining with your feedback".into();
                    });
                    notify(inner, e, &v).await;
                    inner.refresh_lenses().await;
                }
                permit = acquire(inner, e).await;
            }
            Ok(Pause::Finished(o)) => {
                let phase = match o.status {
                    TaskStatus::Accepted => TaskPhase::Accepted,
                    TaskStatus::Rejected => TaskPhase::Rejected,
                    TaskStatus::Discarded => TaskPhase::Discarded,
                    TaskStatus::Cancelled => TaskPhase::Cancelled,
                    _ => TaskPhase::Failed,
                };
                end_message = match &o.reason {
                    Some(r) => format!("{}: {r}", o.status.as_str().replace('_', " ")),
                    None => o.status.as_str().replace('_', " "),
                };
                let v = e.update(|v| {
                    v.phase = phase;
                    v.message = end_message.clone();
                });
                notify(inner, e, &v).await;
                break;
            }
            Err(err) => {
                if matches!(err, crate::pipeline::PipelineError::Cancelled) {
                    end_message = cancelled(inner, e, &run);
                } else {
                    end_message = format!("failed: {err}");
                    inner
                        .client
                        .show_message(MessageType::ERROR, format!("docsmith: `{}`: {err}", e.name))
                        .await;
                    let v = e.update(|v| {
                        v.phase = TaskPhase::Failed;
                        v.message = end_message.clone();
                    });
                    notify(inner, e, &v).await;
                }
                break;
            }
        }
    }
    drop(permit);
    reporter.lock().await.end(end_message).await;
    forwarder.abort();
}

/// Records how a cancelled task ended. By the user: cancelled. While the
/// server stops: a proposal waiting for review keeps its `awaiting_review`
/// row (its code and files are complete, so a restarted server offers Accept
/// again); anything else (running, queued, waiting for an answer) was cut
/// short and becomes interrupted.
fn cancelled(inner: &Inner, e: &TaskEntry, run: &TaskRun) -> String {
    let stopping = inner.shutting_down.load(Ordering::SeqCst);
    if stopping && run.stage() == crate::pipeline::Stage::Review {
        let why = "the server stopped; the proposal waits for review after a restart";
        e.update(|v| v.message = why.into());
        return why.to_string();
    }
    let (status, why) = if stopping {
        (
            TaskStatus::Interrupted,
            "the server shut down while the task was running",
        )
    } else {
        (TaskStatus::Cancelled, "cancelled by the user")
    };
    if let Some(store) = inner.store() {
        let _ = store.set_task_status(run.task_id(), status, Some(why));
    }
    e.update(|v| {
        v.phase = if status == TaskStatus::Interrupted {
            TaskPhase::Interrupted
        } else {
            TaskPhase::Cancelled
        };
        v.message = why.into();
    });
    why.to_string()
}

/// Waits for a reply that fits the pending pause and hands it to the run.
/// `None` when the task was cancelled meanwhile.
async fn wait(
    e: &TaskEntry,
    replies: &mut UnboundedReceiver<Tagged>,
    run: &mut TaskRun,
    pause: u32,
) -> Option<()> {
    loop {
        let t = tokio::select! {
            t = replies.recv() => t?,
            _ = e.cancel.cancelled() => return None,
        };
        if t.pause.is_some_and(|p| p != pause) {
            tracing::debug!(task = e.id, "ignored a late reply to an earlier prompt");
            continue;
        }
        match run.reply(t.reply) {
            Ok(()) => return Some(()),
            Err(err) => tracing::warn!(task = e.id, "reply ignored: {err}"),
        }
    }
}

async fn forward_events(
    inner: Arc<Inner>,
    e: Arc<TaskEntry>,
    reporter: Arc<tokio::sync::Mutex<Reporter>>,
    mut events: UnboundedReceiver<Event>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Stage {
                message, percent, ..
            } => {
                let v = e.update(|v| {
                    v.message = message.clone();
                    v.percent = percent;
                });
                reporter.lock().await.report(message, percent).await;
                notify(&inner, &e, &v).await;
            }
            Event::Tests {
                passed,
                total,
                attempt,
                ..
            } => {
                let msg = format!("candidate {attempt}: {passed}/{total} tests passed");
                let pct = e.view().percent;
                reporter.lock().await.report(msg, pct).await;
            }
            Event::Selected { reason, round, .. } => {
                inner
                    .client
                    .log_message(
                        MessageType::INFO,
                        format!("docsmith: `{}`: round {round}: {reason}", e.name),
                    )
                    .await;
            }
            Event::Note { message, .. } => {
                inner
                    .client
                    .log_message(
                        MessageType::INFO,
                        format!("docsmith: `{}`: {message}", e.name),
                    )
                    .await;
            }
            Event::TestDropped {
                test_id, reason, ..
            } => {
                inner
                    .client
                    .log_message(
                        MessageType::INFO,
                        format!(
                            "docsmith: `{}`: dropped generated test {test_id}: {reason}",
                            e.name
                        ),
                    )
                    .await;
            }
            Event::LlmCall { .. } => {}
        }
    }
}

/// An action that also names its task and prompt kind (see `protocol::ACTION_TASK_KEY`).
fn tagged_action(title: &str, task: i64, kind: &str) -> MessageActionItem {
    use tower_lsp_server::ls_types::MessageActionItemProperty as P;
    MessageActionItem {
        title: title.to_string(),
        properties: [
            (
                super::protocol::ACTION_TASK_KEY.to_string(),
                P::Integer(task as i32),
            ),
            (
                super::protocol::ACTION_KIND_KEY.to_string(),
                P::String(kind.to_string()),
            ),
        ]
        .into_iter()
        .collect(),
    }
}

/// Review choices, in the order shown.
pub const REVIEW_ACCEPT: &str = "Accept";
pub const REVIEW_REJECT: &str = "Reject with feedback";
pub const REVIEW_DIFF: &str = "Show diff";
pub const REVIEW_DISCARD: &str = "Discard";
/// Question choices added after the planner's suggestions.
pub const QUESTION_FREE_TEXT: &str = "Answer…";
pub const QUESTION_CANCEL: &str = "Cancel";

async fn ask_question(inner: Arc<Inner>, e: Arc<TaskEntry>, q: Question, pause: u32) {
    let mut actions: Vec<MessageActionItem> = q
        .options
        .iter()
        .map(|o| tagged_action(o, e.id, "question"))
        .collect();
    actions.push(tagged_action(QUESTION_FREE_TEXT, e.id, "question"));
    actions.push(tagged_action(QUESTION_CANCEL, e.id, "question"));
    let msg = format!("docsmith: `{}`: {}", e.name, q.text);
    let chosen = inner
        .client
        .show_message_request(MessageType::INFO, msg, Some(actions))
        .await;
    let reply = match chosen {
        Ok(Some(a)) if q.options.contains(&a.title) => Reply::Answer(a.title),
        Ok(Some(a)) if a.title == QUESTION_FREE_TEXT => {
            if inner.session().is_ok_and(|s| s.flags.prompts_in_client) {
                return; // the client prompts and sends docsmith.answer itself
            }
            inner
                .client
                .show_message(
                    MessageType::INFO,
                    format!(
                        "docsmith: answer with the docsmith.answer command, arguments {{\"task\": {}, \"answer\": \"...\"}} (Neovim: :DocsmithAnswer)",
                        e.id
                    ),
                )
                .await;
            return;
        }
        // Cancel, dismissed, or no answer: go on with the planner's assumptions.
        _ => Reply::Assume,
    };
    let _ = e.replies.send(Tagged {
        pause: Some(pause),
        reply,
    });
}

async fn ask_review(inner: Arc<Inner>, e: Arc<TaskEntry>, p: Box<Proposal>, pause: u32) {
    let typ = if p.passing {
        MessageType::INFO
    } else {
        MessageType::WARNING
    };
    let msg = format!(
        "docsmith: proposal for `{}` ready: {}. Chosen because {}.",
        e.name,
        p.summary(),
        p.chosen_because
    );
    // Show diff and a reject without feedback come back to the same question.
    for _ in 0..4 {
        let actions = [REVIEW_ACCEPT, REVIEW_REJECT, REVIEW_DIFF, REVIEW_DISCARD]
            .into_iter()
            .map(|t| tagged_action(t, e.id, "review"))
            .collect();
        let chosen = inner
            .client
            .show_message_request(typ, msg.clone(), Some(actions))
            .await;
        if e.view().pause != pause {
            return; // answered meanwhile through a command
        }
        match chosen.ok().flatten().map(|a| a.title) {
            Some(t) if t == REVIEW_ACCEPT => {
                if let Err(err) = commands::accept(&inner, e.id).await {
                    inner
                        .client
                        .show_message(MessageType::WARNING, format!("docsmith: {err}"))
                        .await;
                }
                return;
            }
            Some(t) if t == REVIEW_REJECT => match commands::reject(&inner, e.id, None).await {
                Ok(()) => return,
                Err(err) => {
                    inner
                        .client
                        .show_message(MessageType::INFO, format!("docsmith: {err}"))
                        .await
                }
            },
            Some(t) if t == REVIEW_DIFF => {
                let _ = commands::show_diff(&inner, e.id, true).await;
            }
            Some(t) if t == REVIEW_DISCARD => {
                let _ = e.replies.send(Tagged {
                    pause: Some(pause),
                    reply: Reply::Discard,
                });
                return;
            }
            // Dismissed: the proposal stays; code actions and lenses still offer the choices.
            _ => return,
        }
    }
}
