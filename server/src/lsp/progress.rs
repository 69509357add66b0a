//! Work-done progress for one round of a task: `window/workDoneProgress/create`,
//! then `$/progress` begin / report / end, or `window/showMessage` and
//! `window/logMessage` when the client has no progress support.
//!
//! Tokens are `docsmith/<task>/<round>` so a `window/workDoneProgress/cancel`
//! names its task without a lookup table.

use tower_lsp_server::ls_types::{
    notification::Progress as ProgressNotification, MessageType, NumberOrString, ProgressParams,
    ProgressParamsValue, ProgressToken, WorkDoneProgress, WorkDoneProgressBegin,
    WorkDoneProgressEnd, WorkDoneProgressReport,
};
use tower_lsp_server::Client;

/// The token of a task's round.
pub fn token(task: i64, round: u32) -> ProgressToken {
    NumberOrString::String(format!("docsmith/{task}/{round}"))
}

/// The task a docsmith progress token belongs to.
pub fn task_of(token: &ProgressToken) -> Option<i64> {
    match token {
        NumberOrString::String(s) => s.strip_prefix("docsmith/")?.split('/').next()?.parse().ok(),
        NumberOrString::Number(_) => None,
    }
}

/// One progress sequence. `end` is sent at most once; reports after it are dropped.
pub struct Reporter {
    client: Client,
    token: Option<ProgressToken>,
    title: String,
    ended: bool,
    last_percent: u32,
}

impl Reporter {
    /// Creates the token and sends `begin` (cancellable). With `supported` false,
    /// or when the client refuses the token, falls back to `window/showMessage`.
    pub async fn begin(
        client: &Client,
        supported: bool,
        task: i64,
        round: u32,
        title: String,
        message: String,
    ) -> Reporter {
        let mut token_ok = None;
        if supported {
            let t = token(task, round);
            // A client that never answers must not hold the task back.
            let created = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                client.create_work_done_progress(t.clone()),
            )
            .await;
            match created {
                Ok(Ok(())) => token_ok = Some(t),
                Ok(Err(e)) => tracing::warn!("client refused progress token: {e}"),
                Err(_) => tracing::warn!(
                    "client did not answer window/workDoneProgress/create within 10 s"
                ),
            }
        }
        let r = Reporter {
            client: client.clone(),
            token: token_ok,
            title,
            ended: false,
            last_percent: 0,
        };
        match &r.token {
            Some(t) => {
                r.send(
                    t.clone(),
                    WorkDoneProgress::Begin(WorkDoneProgressBegin {
                        title: r.title.clone(),
                        cancellable: Some(true),
                        message: Some(message),
                        percentage: Some(0),
                    }),
                )
                .await
            }
            None => {
                client
                    .show_message(MessageType::INFO, format!("{}: {message}", r.title))
                    .await
            }
        }
        r
    }

    /// A stage message and its percentage (never lower than the last one sent:
    /// clients may not handle a progress bar going back).
    pub async fn report(&mut self, message: String, percent: u32) {
        if self.ended {
            return;
        }
        self.last_percent = self.last_percent.max(percent.min(100));
        match &self.token {
            Some(t) => {
                self.send(
                    t.clone(),
                    WorkDoneProgress::Report(WorkDoneProgressReport {
                        cancellable: Some(true),
                        message: Some(message),
                        percentage: Some(self.last_percent),
                    }),
                )
                .await
            }
            None => {
                self.client
                    .log_message(MessageType::INFO, format!("{}: {message}", self.title))
                    .await
            }
        }
    }

    /// Ends the sequence with a final message.
    pub async fn end(&mut self, message: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        match &self.token {
            Some(t) => {
                self.send(
                    t.clone(),
                    WorkDoneProgress::End(WorkDoneProgressEnd {
                        message: Some(message),
                    }),
                )
                .await
            }
            None => {
                self.client
                    .show_message(MessageType::INFO, format!("{}: {message}", self.title))
                    .await
            }
        }
    }

    async fn send(&self, token: ProgressToken, value: WorkDoneProgress) {
        self.client
            .send_notification::<ProgressNotification>(ProgressParams {
                token,
                value: ProgressParamsValue::WorkDone(value),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_task() {
        assert_eq!(task_of(&token(42, 3)), Some(42));
        assert_eq!(task_of(&NumberOrString::String("other/1".into())), None);
        assert_eq!(task_of(&NumberOrString::Number(7)), None);
    }
}
