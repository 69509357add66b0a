//! docsmith's part of the protocol, defined once: command names, their typed
//! arguments and results, and the `docsmith/taskChanged` notification. The
//! server, the protocol tests (`tests/lsp_protocol.rs`) and, mirrored in
//! TypeScript, the VS Code extension use these.
//!
//! Every command takes one JSON object as its only argument
//! (`ExecuteCommandParams.arguments = [ {...} ]`), with camelCase keys.
//! [`Command`] is a command with its typed argument: code actions and lenses
//! build one, `workspace/executeCommand` parses into one, and the server
//! registers [`Command::NAMES`].
//!
//! `vscode-extension/src/protocol.ts` mirrors this file; the unit test in
//! `protocol/ts_mirror.rs` fails when the two disagree on a command name or
//! an argument field.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_lsp_server::ls_types::{notification::Notification, ExecuteCommandParams, Uri};

#[cfg(test)]
mod ts_mirror;

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

/// A docsmith workspace command with its typed argument: what a code action
/// or a lens sends, and what `workspace/executeCommand` is parsed into once
/// ([`Command::parse`]) before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// [`GENERATE`].
    Generate(FunctionArgs),
    /// [`REFINE`].
    Refine(RefineArgs),
    /// [`ANSWER`].
    Answer(AnswerArgs),
    /// [`ACCEPT`].
    Accept(TaskArgs),
    /// [`REJECT`].
    Reject(RejectArgs),
    /// [`DISCARD`].
    Discard(TaskArgs),
    /// [`SHOW_DIFF`].
    ShowDiff(ShowDiffArgs),
    /// [`CANCEL`].
    Cancel(TaskArgs),
    /// [`WRITE_TESTS`].
    WriteTests(TaskArgs),
}

impl Command {
    /// Every command's name, in the order the server registers them in
    /// `executeCommandProvider`. [`Command::parse`] knows exactly these.
    pub const NAMES: [&'static str; 9] = [
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

    /// The command's name (`docsmith.*`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Generate(_) => GENERATE,
            Command::Refine(_) => REFINE,
            Command::Answer(_) => ANSWER,
            Command::Accept(_) => ACCEPT,
            Command::Reject(_) => REJECT,
            Command::Discard(_) => DISCARD,
            Command::ShowDiff(_) => SHOW_DIFF,
            Command::Cancel(_) => CANCEL,
            Command::WriteTests(_) => WRITE_TESTS,
        }
    }

    /// `ExecuteCommandParams.arguments` for this command: its argument as
    /// the one JSON object (camelCase keys, absent options left out).
    pub fn arguments(&self) -> Vec<Value> {
        let arg = match self {
            Command::Generate(a) => serde_json::to_value(a),
            Command::Refine(a) => serde_json::to_value(a),
            Command::Answer(a) => serde_json::to_value(a),
            Command::Accept(a)
            | Command::Discard(a)
            | Command::Cancel(a)
            | Command::WriteTests(a) => serde_json::to_value(a),
            Command::Reject(a) => serde_json::to_value(a),
            Command::ShowDiff(a) => serde_json::to_value(a),
        };
        // Structs of strings, numbers and a URI always serialize.
        vec![arg.unwrap_or(Value::Null)]
    }

    /// Parses `workspace/executeCommand` params: the command by its name,
    /// then its argument, the first element of `arguments` (the rest are
    /// ignored). Errors: [`CommandError::Unknown`] for a name not in
    /// [`Command::NAMES`], [`CommandError::BadArguments`] (with an example
    /// argument) when the argument is missing or does not fit the command's
    /// argument struct (missing or unknown field, wrong type).
    pub fn parse(p: &ExecuteCommandParams) -> Result<Command, CommandError> {
        Ok(match p.command.as_str() {
            GENERATE => Command::Generate(argument(GENERATE, p, EX_FUNCTION)?),
            REFINE => Command::Refine(argument(REFINE, p, EX_REFINE)?),
            ANSWER => Command::Answer(argument(ANSWER, p, EX_ANSWER)?),
            ACCEPT => Command::Accept(argument(ACCEPT, p, EX_TASK)?),
            REJECT => Command::Reject(argument(REJECT, p, EX_REJECT)?),
            DISCARD => Command::Discard(argument(DISCARD, p, EX_TASK)?),
            SHOW_DIFF => Command::ShowDiff(argument(SHOW_DIFF, p, EX_TASK)?),
            CANCEL => Command::Cancel(argument(CANCEL, p, EX_TASK)?),
            WRITE_TESTS => Command::WriteTests(argument(WRITE_TESTS, p, EX_TASK)?),
            other => return Err(CommandError::Unknown(other.to_string())),
        })
    }
}

/// Why `workspace/executeCommand` params are not a docsmith command (both
/// answered as JSON-RPC `InvalidParams`, -32602).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command name is none of [`Command::NAMES`].
    #[error("unknown command `{0}`; docsmith's commands are: {list}", list = Command::NAMES.join(", "))]
    Unknown(String),
    /// The argument is missing or does not fit; `example` is a valid one.
    #[error("{command}: bad arguments: {message} (expected one JSON object, e.g. {example})")]
    BadArguments {
        command: &'static str,
        message: String,
        example: &'static str,
    },
}

/// Example arguments, shown in [`CommandError::BadArguments`].
const EX_FUNCTION: &str = r#"{"uri": "file:///path/to/file.py", "name": "slugify"}"#;
const EX_REFINE: &str =
    r#"{"uri": "file:///path/to/file.py", "name": "slugify", "feedback": "keep unicode letters"}"#;
const EX_TASK: &str = r#"{"task": 12}"#;
const EX_ANSWER: &str = r#"{"task": 12, "answer": "return None"}"#;
const EX_REJECT: &str = r#"{"task": 12, "feedback": "handle empty input"}"#;

/// The first argument of `p` as `T`.
fn argument<T: serde::de::DeserializeOwned>(
    command: &'static str,
    p: &ExecuteCommandParams,
    example: &'static str,
) -> Result<T, CommandError> {
    let bad = |message: String| CommandError::BadArguments {
        command,
        message,
        example,
    };
    let v = p
        .arguments
        .first()
        .cloned()
        .ok_or_else(|| bad("no argument given".into()))?;
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

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
/// `docsmithKind` of the clarifying question's action items.
pub const PROMPT_KIND_QUESTION: &str = "question";
/// `docsmithKind` of the review's action items.
pub const PROMPT_KIND_REVIEW: &str = "review";

/// Titles of the review prompt's action items (`window/showMessageRequest`),
/// in the order shown. A client with its own prompt UI answers with the item
/// of the same title.
pub const REVIEW_ACCEPT: &str = "Accept";
pub const REVIEW_REJECT: &str = "Reject with feedback";
pub const REVIEW_DIFF: &str = "Show diff";
pub const REVIEW_DISCARD: &str = "Discard";
/// Titles of the clarifying question's action items added after the
/// planner's suggested answers: answer in free text (with [`ANSWER`]), or go
/// on with the planner's stated assumptions.
pub const QUESTION_FREE_TEXT: &str = "Answer…";
pub const QUESTION_CANCEL: &str = "Cancel";
/// Title of the one action item offered when an accept finds the function
/// changed since the task began: discard the proposal and generate again.
pub const RERUN: &str = "Re-run";

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

/// One command of each kind with every optional field set, so its
/// serialized argument has every field (the tests here and in `ts_mirror`).
#[cfg(test)]
fn every_command() -> Vec<Command> {
    let uri: Uri = "file:///w/a.py".parse().expect("a valid URI");
    vec![
        Command::Generate(FunctionArgs {
            uri: uri.clone(),
            name: "f".into(),
        }),
        Command::Refine(RefineArgs {
            uri,
            name: "f".into(),
            feedback: Some("handle None".into()),
        }),
        Command::Answer(AnswerArgs {
            task: 1,
            answer: Some("return None".into()),
        }),
        Command::Accept(TaskArgs { task: 2 }),
        Command::Reject(RejectArgs {
            task: 3,
            feedback: Some("handle empty input".into()),
        }),
        Command::Discard(TaskArgs { task: 4 }),
        Command::ShowDiff(ShowDiffArgs {
            task: 5,
            open: Some(false),
        }),
        Command::Cancel(TaskArgs { task: 6 }),
        Command::WriteTests(TaskArgs { task: 7 }),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(command: &str, arguments: Value) -> ExecuteCommandParams {
        serde_json::from_value(json!({"command": command, "arguments": arguments}))
            .expect("ExecuteCommandParams")
    }

    #[test]
    fn every_command_is_registered_and_parses_back_from_its_arguments() {
        let all = every_command();
        let names: Vec<&str> = all.iter().map(Command::name).collect();
        assert_eq!(
            names,
            Command::NAMES,
            "one of each, in the registered order"
        );
        for c in all {
            let back = Command::parse(&params(c.name(), Value::Array(c.arguments())));
            assert_eq!(back.ok(), Some(c));
        }
    }

    #[test]
    fn arguments_are_one_object_without_absent_options() {
        let generate = Command::Generate(FunctionArgs {
            uri: "file:///w/a.py".parse().unwrap(),
            name: "Shop.total".into(),
        });
        assert_eq!(
            generate.arguments(),
            vec![json!({"uri": "file:///w/a.py", "name": "Shop.total"})]
        );
        let reject = Command::Reject(RejectArgs {
            task: 7,
            feedback: None,
        });
        assert_eq!(reject.arguments(), vec![json!({"task": 7})]);
    }

    #[test]
    fn unknown_commands_and_bad_arguments_say_what_was_expected() {
        let e = Command::parse(&params("docsmith.nope", json!([]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown command `docsmith.nope`; docsmith's commands are: docsmith.generate, \
             docsmith.refine, docsmith.answer, docsmith.accept, docsmith.reject, \
             docsmith.discard, docsmith.showDiff, docsmith.cancel, docsmith.writeTests"
        );
        let e = Command::parse(&params(GENERATE, json!([{"uri": "file:///w/a.py"}]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "docsmith.generate: bad arguments: missing field `name` (expected one JSON object, \
             e.g. {\"uri\": \"file:///path/to/file.py\", \"name\": \"slugify\"})"
        );
        let e = Command::parse(&params(SHOW_DIFF, json!([]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "docsmith.showDiff: bad arguments: no argument given (expected one JSON object, \
             e.g. {\"task\": 12})"
        );
    }

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
