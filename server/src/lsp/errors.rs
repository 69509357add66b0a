//! The language server's errors, mapped once to JSON-RPC errors. Messages name
//! the cause and the fix; codes follow LSP where one fits (`RequestCancelled`,
//! `InvalidParams`). A stale document is not an error: accept answers
//! `applied: false` with the reason and offers a re-run.

use tower_lsp_server::jsonrpc::{Error, ErrorCode};

use super::protocol::CommandError;
use crate::pipeline::PipelineError;
use crate::runtime::SetupError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum LspError {
    #[error("the server has not received `initialize` yet")]
    NotInitialized,
    #[error("configuration: {0}")]
    Config(String),
    /// An unknown command, or arguments that do not fit it.
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(
        "no docsmith task #{0} is live or restored (it ended, or belongs to another workspace)"
    )]
    UnknownTask(i64),
    #[error("task #{task} is {phase}; {wanted}")]
    WrongPhase {
        task: i64,
        phase: String,
        wanted: String,
    },
    #[error("`{name}` already has a docsmith task (#{task}, {phase}): cancel it (docsmith.cancel) or wait for it to finish")]
    Busy {
        name: String,
        task: i64,
        phase: String,
    },
    #[error("{0}")]
    Feedback(String),
    #[error("document: {0}")]
    Document(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A configuration the server cannot build a runtime from is the user's to
/// fix (`Config`); a store or sandbox that fails otherwise is `Internal`.
impl From<SetupError> for LspError {
    fn from(e: SetupError) -> LspError {
        if e.is_configuration() {
            LspError::Config(e.to_string())
        } else {
            LspError::Internal(e.to_string())
        }
    }
}

impl From<LspError> for Error {
    fn from(e: LspError) -> Error {
        let code = match &e {
            LspError::NotInitialized => ErrorCode::ServerError(-32002),
            LspError::Command(_)
            | LspError::UnknownTask(_)
            | LspError::Feedback(_)
            | LspError::Document(_) => ErrorCode::InvalidParams,
            LspError::Pipeline(PipelineError::Analysis(_))
            | LspError::Pipeline(PipelineError::NoDocstring(_)) => ErrorCode::InvalidParams,
            LspError::Pipeline(PipelineError::Cancelled) => ErrorCode::ServerError(-32800), // RequestCancelled
            LspError::WrongPhase { .. } | LspError::Busy { .. } => ErrorCode::InvalidRequest,
            LspError::Config(_) => ErrorCode::ServerError(-32001),
            LspError::Pipeline(_) | LspError::Internal(_) => ErrorCode::InternalError,
        };
        Error {
            code,
            message: format!("docsmith: {e}").into(),
            data: None,
        }
    }
}
