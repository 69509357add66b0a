//! One background task per function: the driver that runs `pipeline::TaskRun`
//! on tokio, turns its events into work-done progress, raises the planner's
//! questions and the review (through the [`Prompter`] it was started with),
//! and waits for replies, all without a handler ever awaiting it.
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
use tower_lsp_server::ls_types::{MessageType, Uri};

use super::progress::Reporter;
use super::protocol::{TaskChanged, TaskChangedParams, TaskPhase};
use super::ServerState;
use crate::pipeline::{Ending, Event, Pause, Proposal, Question, Reply, TaskRun};
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

/// What a task asks the user at a pause, when the client can show prompts
/// (`window/showMessageRequest`).
#[derive(Debug, Clone)]
pub enum Prompt {
    /// The planner's clarifying question.
    Question(Question),
    /// The proposal to review.
    Review(Box<Proposal>),
}

/// Raises `Prompt` for a task paused at pause number `u32` and returns at
/// once (the prompt runs on its own task); its answer comes back on the
/// task's reply channel, tagged with that pause. The driver calls it; the
/// caller of [`spawn`] says what it does (`commands::raise_prompt`), so the driver
/// does not depend on what a review choice runs.
pub type Prompter = fn(Arc<ServerState>, Arc<TaskEntry>, Prompt, u32);

/// Starts the driver for `run` on the runtime. Returns at once. `prompt`
/// raises the task's questions and reviews.
pub fn spawn(
    state: Arc<ServerState>,
    entry: Arc<TaskEntry>,
    run: TaskRun,
    replies: UnboundedReceiver<Tagged>,
    events: UnboundedReceiver<Event>,
    prompt: Prompter,
) {
    tokio::spawn(async move {
        let id = entry.id;
        drive(&state, &entry, run, replies, events, prompt).await;
        state.tasks.remove(&id);
        state
            .active
            .remove(&(entry.uri.clone(), entry.name.clone()));
        state.refresh_lenses().await;
    });
}

async fn notify(state: &ServerState, e: &TaskEntry, v: &TaskView) {
    state
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

async fn acquire(state: &ServerState, e: &TaskEntry) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = state.queue.clone().acquire_owned() => p.ok(),
        _ = e.cancel.cancelled() => None,
    }
}

async fn drive(
    state: &Arc<ServerState>,
    e: &Arc<TaskEntry>,
    mut run: TaskRun,
    mut replies: UnboundedReceiver<Tagged>,
    events: UnboundedReceiver<Event>,
    prompt: Prompter,
) {
    let flags = state.session().map(|s| s.flags.clone()).unwrap_or_default();
    let title = format!("docsmith: {}", e.name);
    let mut round = 0u32;
    let reporter = Arc::new(tokio::sync::Mutex::new(
        Reporter::begin(
            &state.client,
            flags.progress,
            e.id,
            round,
            title.clone(),
            "queued".into(),
        )
        .await,
    ));
    let v = e.view();
    notify(state, e, &v).await;
    let forwarder = tokio::spawn(forward_events(
        state.clone(),
        e.clone(),
        reporter.clone(),
        events,
    ));

    let mut permit = acquire(state, e).await;
    let end_message: String;
    'run: loop {
        if permit.is_none() {
            end_message = cancelled(state, e, &mut run);
            break;
        }
        let v = e.update(|v| {
            v.phase = TaskPhase::Running;
            v.question = None;
        });
        notify(state, e, &v).await;
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
                notify(state, e, &v).await;
                reporter
                    .lock()
                    .await
                    .report(v.message.clone(), v.percent)
                    .await;
                if flags.message_request {
                    prompt(state.clone(), e.clone(), Prompt::Question(q), v.pause);
                    if wait(e, &mut replies, &mut run, v.pause).await.is_none() {
                        end_message = cancelled(state, e, &mut run);
                        break 'run;
                    }
                } else {
                    // A client that cannot ask gets the planner's assumptions.
                    let _ = run.reply(Reply::Assume);
                }
                permit = acquire(state, e).await;
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
                notify(state, e, &v).await;
                state.refresh_lenses().await;
                if flags.message_request {
                    prompt(state.clone(), e.clone(), Prompt::Review(p), v.pause);
                }
                if wait(e, &mut replies, &mut run, v.pause).await.is_none() {
                    end_message = cancelled(state, e, &mut run);
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
                        &state.client,
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
                    notify(state, e, &v).await;
                    state.refresh_lenses().await;
                }
                permit = acquire(state, e).await;
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
                notify(state, e, &v).await;
                break;
            }
            Err(err) => {
                if matches!(err, crate::pipeline::PipelineError::Cancelled) {
                    end_message = cancelled(state, e, &mut run);
                } else {
                    end_message = format!("failed: {err}");
                    state
                        .client
                        .show_message(MessageType::ERROR, format!("docsmith: `{}`: {err}", e.name))
                        .await;
                    let v = e.update(|v| {
                        v.phase = TaskPhase::Failed;
                        v.message = end_message.clone();
                    });
                    notify(state, e, &v).await;
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
fn cancelled(state: &ServerState, e: &TaskEntry, run: &mut TaskRun) -> String {
    let stopping = state.shutting_down.load(Ordering::SeqCst);
    if stopping && run.stage() == crate::pipeline::Stage::Review {
        let why = "the server stopped; the proposal waits for review after a restart";
        e.update(|v| v.message = why.into());
        return why.to_string();
    }
    let (ending, why) = if stopping {
        (
            Ending::Interrupted,
            "the server shut down while the task was running",
        )
    } else {
        (Ending::Cancelled, "cancelled by the user")
    };
    let _ = run.end(ending, Some(why));
    e.update(|v| {
        v.phase = if ending == Ending::Interrupted {
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
    state: Arc<ServerState>,
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
                notify(&state, &e, &v).await;
                // The lens above the function shows the stage too
                // (`docsmith: running tests · Cancel`): ask the editor to
                // re-read it, or it keeps the first stage until the review.
                state.refresh_lenses().await;
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
                state
                    .client
                    .log_message(
                        MessageType::INFO,
                        format!("docsmith: `{}`: round {round}: {reason}", e.name),
                    )
                    .await;
            }
            Event::Note { message, .. } => {
                state
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
                state
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
