//! docsmith's part of the protocol, defined once: command names, their typed
//! arguments and results, and the `docsmith/taskChanged` notification. The
//! server, the protocol tests (`tests/lsp_protocol.rs`) and, mirrored in
//! TypeScript, the VS Code extension use these.
//!
//! Every command takes one JSON object as its only argument
//! (`ExecuteCommandParams.arguments = [ {...} ]`), with camelCase keys.

use serde::{Deserialize, Serialize};
use tower_lsp_server::ls_types::{notification::Notification, Uri};

/// Start a task generating the function from its docstring. Args: [`FunctionArgs`]. Result: [`Started`].
pub const GENERATE: &str = "docsmith.generate";
/// Start a task refining a function with feedback. Args: [`RefineArgs`]. Result: [`Started`].
pub const REFINE: &str = "docsmith.refine";
/// Answer the planner's clarifying question. Args: [`AnswerArgs`]. Result: `null`.
pub const ANSWER: &str = "docsmith.answer";
/// Apply the proposal as a versioned workspace edit. Args: [`TaskArgs`]. Result: [`Applied`].
pub const ACCEPT: &str = "docsmith.accept";
/// Reject the proposal; with feedback another round starts. Args: [`RejectArgs`]. Result: `null`.
pub const REJECT: &str = "docsmith.reject";
/// Drop the proposal; the task ends. Args: [`TaskArgs`]. Result: `null`.
pub const DISCARD: &str = "docsmith.discard";
/// Open (or, without `window/showDocument`, log) the proposal's diff. Args: [`ShowDiffArgs`]. Result: [`ProposalFiles`].
pub const SHOW_DIFF: &str = "docsmith.showDiff";
/// Cancel a task and kill its sandbox. Args: [`TaskArgs`]. Result: `null`.
pub const CANCEL: &str = "docsmith.cancel";
/// Write the proposal's tests to `tests/test_<module>.py`. Args: [`TaskArgs`]. Result: [`Applied`].
pub const WRITE_TESTS: &str = "docsmith.writeTests";

/// Every command the server registers in `executeCommandProvider`.
pub const COMMANDS: &[&str] = &[
    GENERATE,
    REFINE,
    ANSWER,
    ACCEPT,
    REJECT,
    DISCARD,
    SHOW_DIFF,
    CANCEL,
    WRITE_TESTS,
];

/// The function a command is about: a document and a function name in it
/// (module-level `def`; methods are refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionArgs {
    pub uri: Uri,
    pub name: String,
}

/// [`REFINE`]'s argument. Without `feedback`, the server takes it from a
/// `# docsmith: <feedback>` comment directly above or inside the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefineArgs {
    pub uri: Uri,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// A task, by the id the store gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskArgs {
    pub task: i64,
}

/// [`ANSWER`]'s argument. Without `answer` the planner's stated assumptions are taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnswerArgs {
    pub task: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// [`REJECT`]'s argument. Without `feedback`, the server looks for a
/// `# docsmith: <feedback>` comment; with none, the reject is refused (use
/// [`DISCARD`] to drop a proposal without feedback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejectArgs {
    pub task: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// Result of [`GENERATE`] and [`REFINE`]: the task started (it may be queued).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub task: i64,
    /// Tasks ahead of it in the queue when it was started (0: running now).
    pub queued_behind: usize,
}

/// Result of [`ACCEPT`] and [`WRITE_TESTS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub applied: bool,
    /// Why not, when `applied` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// [`SHOW_DIFF`]'s argument. `open: false` only returns the paths (the VS Code
/// extension opens its own diff view); by default the server asks the client
/// to open `proposal.diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShowDiffArgs {
    pub task: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
}

/// Result of [`SHOW_DIFF`]: where the proposal's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProposalFiles {
    pub dir: String,
    pub diff: String,
    /// The function as it was when the task began.
    pub original: String,
    /// The proposed module (imports, helpers, the function).
    pub code: String,
    pub tests: String,
    pub report: String,
}

/// Keys docsmith puts in the `MessageActionItem`s of its prompts, so a client
/// with its own prompt UI (the VS Code extension) knows the task and the kind
/// of prompt: `docsmithTask` (number) and `docsmithKind` (`question` or `review`).
pub const ACTION_TASK_KEY: &str = "docsmithTask";
pub const ACTION_KIND_KEY: &str = "docsmithKind";

/// Client capability `experimental.docsmith.prompts: true`: the client prompts
/// for free text itself (answers, feedback), so the server does not tell the
/// user how to run `docsmith.answer` by hand.
pub const EXPERIMENTAL_PROMPTS: &str = "prompts";

/// Where a task stands, as `docsmith/taskChanged` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskPhase {
    Queued,
    Running,
    Question,
    Review,
    Accepted,
    Rejected,
    Discarded,
    Failed,
    Cancelled,
    Interrupted,
}

impl TaskPhase {
    /// Whether the task has ended (no action but re-running applies).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TaskPhase::Queued | TaskPhase::Running | TaskPhase::Question | TaskPhase::Review
        )
    }
}

/// Params of the `docsmith/taskChanged` notification, sent whenever a task's
/// phase or stage changes (the VS Code extension's status bar listens to it;
/// other clients may ignore it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskChangedParams {
    pub task: i64,
    pub uri: Uri,
    pub name: String,
    pub phase: TaskPhase,
    /// Human-readable stage or outcome (`writing code (attempt 2/4)`, `ready for review: 7/7 tests`).
    pub message: String,
    /// 0-100.
    pub percent: u32,
}

/// The `docsmith/taskChanged` notification.
pub enum TaskChanged {}

impl Notification for TaskChanged {
    type Params = TaskChangedParams;
    const METHOD: &'static str = "docsmith/taskChanged";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_camel_case_objects_and_typos_are_refused() {
        let a: RefineArgs = serde_json::from_value(serde_json::json!({
            "uri": "file:///w/a.py", "name": "f", "feedback": "handle None"
        }))
        .unwrap();
        assert_eq!(a.feedback.as_deref(), Some("handle None"));
        let bad = serde_json::from_value::<TaskArgs>(serde_json::json!({"taks": 1}));
        assert!(bad.is_err());
        let s = serde_json::to_value(Started {
            task: 3,
            queued_behind: 1,
        })
        .unwrap();
        assert_eq!(s, serde_json::json!({"task": 3, "queuedBehind": 1}));
    }
}
