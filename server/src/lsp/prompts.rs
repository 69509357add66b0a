//! docsmith's prompts: every `window/showMessageRequest` the server sends
//! (the planner's clarifying question, the review of a proposal, the offer to
//! re-run a stale one). Their action items carry the task and the prompt's
//! kind (`protocol::ACTION_TASK_KEY`, `ACTION_KIND_KEY`) and titles from
//! `protocol`, so a client with its own prompt UI can answer them.
//!
//! A prompt asks and reports the user's choice; what a choice does (accept,
//! reject, ...) is `commands`'s.

use std::sync::Arc;

use tower_lsp_server::ls_types::{MessageActionItem, MessageActionItemProperty, MessageType};

use super::protocol::{
    ACTION_KIND_KEY, ACTION_TASK_KEY, PROMPT_KIND_QUESTION, PROMPT_KIND_REVIEW, QUESTION_CANCEL,
    QUESTION_FREE_TEXT, RERUN, REVIEW_ACCEPT, REVIEW_DIFF, REVIEW_DISCARD, REVIEW_REJECT,
};
use super::tasks::{Tagged, TaskEntry};
use super::ServerState;
use crate::pipeline::{Proposal, Question, Reply};

/// An action item that also names its task and prompt kind.
fn tagged_action(title: &str, task: i64, kind: &str) -> MessageActionItem {
    MessageActionItem {
        title: title.to_string(),
        properties: [
            (
                ACTION_TASK_KEY.to_string(),
                MessageActionItemProperty::Integer(task as i32),
            ),
            (
                ACTION_KIND_KEY.to_string(),
                MessageActionItemProperty::String(kind.to_string()),
            ),
        ]
        .into_iter()
        .collect(),
    }
}

/// Asks the planner's question `q` of task `e`, waiting on pause number
/// `pause`: the planner's suggested answers, then [`QUESTION_FREE_TEXT`] and
/// [`QUESTION_CANCEL`]. A suggested answer is sent as the answer; cancel, a
/// dismissed prompt or a failed request go on with the planner's
/// assumptions. Free text is left to the client when it prompts itself
/// (`experimental.docsmith.prompts`); otherwise the user is told how to send
/// `docsmith.answer`. Replies are tagged with `pause`.
pub async fn ask_question(state: Arc<ServerState>, e: Arc<TaskEntry>, q: Question, pause: u32) {
    let mut actions: Vec<MessageActionItem> = q
        .options
        .iter()
        .map(|o| tagged_action(o, e.id, PROMPT_KIND_QUESTION))
        .collect();
    actions.push(tagged_action(
        QUESTION_FREE_TEXT,
        e.id,
        PROMPT_KIND_QUESTION,
    ));
    actions.push(tagged_action(QUESTION_CANCEL, e.id, PROMPT_KIND_QUESTION));
    let msg = format!("docsmith: `{}`: {}", e.name, q.text);
    let chosen = state
        .client
        .show_message_request(MessageType::INFO, msg, Some(actions))
        .await;
    let reply = match chosen {
        Ok(Some(a)) if q.options.contains(&a.title) => Reply::Answer(a.title),
        Ok(Some(a)) if a.title == QUESTION_FREE_TEXT => {
            if state.session().is_ok_and(|s| s.flags.prompts_in_client) {
                return; // the client prompts and sends docsmith.answer itself
            }
            state
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

/// What the user chose in the review prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewChoice {
    /// [`REVIEW_ACCEPT`].
    Accept,
    /// [`REVIEW_REJECT`] (feedback from a `# docsmith:` comment).
    Reject,
    /// [`REVIEW_DIFF`].
    ShowDiff,
    /// [`REVIEW_DISCARD`].
    Discard,
}

/// Asks once what to do with task `e`'s proposal `p`: [`REVIEW_ACCEPT`],
/// [`REVIEW_REJECT`], [`REVIEW_DIFF`], [`REVIEW_DISCARD`], in that order (a
/// warning when the proposal is not passing). `None` when the prompt was
/// dismissed or the request failed.
pub async fn ask_review(state: &ServerState, e: &TaskEntry, p: &Proposal) -> Option<ReviewChoice> {
    let typ = if p.passing {
        MessageType::INFO
    } else {
        MessageType::WARNING
    };
    let msg = format!(
        "docsmith: proposal for `{}` ready: {}. Chosen because {}. {}.",
        e.name,
        p.summary(),
        p.chosen_because,
        p.explanation().join(". ")
    );
    let actions = [REVIEW_ACCEPT, REVIEW_REJECT, REVIEW_DIFF, REVIEW_DISCARD]
        .into_iter()
        .map(|t| tagged_action(t, e.id, PROMPT_KIND_REVIEW))
        .collect();
    let chosen = state
        .client
        .show_message_request(typ, msg, Some(actions))
        .await;
    match chosen.ok().flatten()?.title.as_str() {
        REVIEW_ACCEPT => Some(ReviewChoice::Accept),
        REVIEW_REJECT => Some(ReviewChoice::Reject),
        REVIEW_DIFF => Some(ReviewChoice::ShowDiff),
        REVIEW_DISCARD => Some(ReviewChoice::Discard),
        _ => None,
    }
}

/// Warns with `message` (why a proposal cannot be applied) and offers
/// [`RERUN`]; true when the user chose it.
pub async fn offer_rerun(state: &ServerState, message: String) -> bool {
    let choice = state
        .client
        .show_message_request(
            MessageType::WARNING,
            message,
            Some(vec![MessageActionItem {
                title: RERUN.into(),
                properties: Default::default(),
            }]),
        )
        .await;
    matches!(choice, Ok(Some(a)) if a.title == RERUN)
}
