//! A scripted [`Provider`] that answers from a closure or a list of canned
//! replies, and records every request it saw.
//!
//! For fast unit tests of routing and of the pipeline's control flow ONLY.
//! It must never serve the main job, a benchmark or an end-to-end test: those
//! run a real model (`local`) or a real endpoint (`openai`), because a script
//! proves nothing about whether docsmith works with an LLM.
//!
//! Owns: nothing but its script. Must not know about roles or prompts.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{word_count, Choice, Completion, CompletionRequest, FinishReason, LlmError, Provider};

type Script = Box<dyn Fn(&CompletionRequest) -> Result<String, LlmError> + Send + Sync>;

/// A provider whose replies come from a script. Name `scripted`, model `script`;
/// token counts are whitespace-separated words (prompt: all messages' contents).
pub struct ScriptedProvider {
    script: Script,
    seen: Mutex<Vec<CompletionRequest>>,
}

impl ScriptedProvider {
    /// Answers each request with `f(request)`; an `Err` is returned as the provider's error.
    pub fn new(
        f: impl Fn(&CompletionRequest) -> Result<String, LlmError> + Send + Sync + 'static,
    ) -> Self {
        ScriptedProvider {
            script: Box::new(f),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Answers with `replies` in order, one per request; afterwards every request
    /// fails with `LlmError::BadResponse("script exhausted")`.
    pub fn from_replies(replies: Vec<String>) -> Self {
        let queue = Mutex::new(VecDeque::from(replies));
        Self::new(move |_| {
            queue
                .lock()
                .expect("script queue poisoned")
                .pop_front()
                .ok_or_else(|| LlmError::BadResponse("script exhausted".to_string()))
        })
    }

    /// The requests seen so far, oldest first (cancelled ones included).
    pub fn requests(&self) -> Vec<CompletionRequest> {
        self.seen.lock().expect("request log poisoned").clone()
    }
}

impl std::fmt::Debug for ScriptedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedProvider")
            .field("requests_seen", &self.requests().len())
            .finish()
    }
}

#[async_trait::async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn model(&self) -> &str {
        "script"
    }

    async fn complete(
        &self,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError> {
        let start = Instant::now();
        self.seen
            .lock()
            .expect("request log poisoned")
            .push(req.clone());
        if cancel.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        // One script reply per choice: the first, then one per extra sample.
        let mut choices = Vec::new();
        for _ in 0..req.n_choices() {
            let mut text = (self.script)(req)?;
            let mut finish_reason = FinishReason::Stop;
            if let Some(pos) = req.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(pos);
                finish_reason = FinishReason::StopSequence;
            }
            choices.push(Choice {
                completion_tokens: word_count(&text),
                text,
                finish_reason,
            });
        }
        let first = choices.remove(0);
        let prompt_tokens = req.messages.iter().map(|m| word_count(&m.content)).sum();
        Ok(Completion {
            prompt_tokens,
            completion_tokens: first.completion_tokens
                + choices.iter().map(|c| c.completion_tokens).sum::<u32>(),
            text: first.text,
            latency_ms: start.elapsed().as_millis() as u64,
            provider: "scripted".to_string(),
            model: "script".to_string(),
            finish_reason: first.finish_reason,
            alternatives: choices,
            phases: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[tokio::test]
    async fn replies_in_order_then_exhausted() {
        let p = ScriptedProvider::from_replies(vec!["one two".into(), "three".into()]);
        let req = CompletionRequest::new(vec![ChatMessage::user("a b c")]);
        let tok = CancellationToken::new();
        let c = p.complete(&req, &tok).await.unwrap();
        assert_eq!(
            (c.text.as_str(), c.prompt_tokens, c.completion_tokens),
            ("one two", 3, 2)
        );
        assert_eq!(
            (c.provider.as_str(), c.model.as_str()),
            ("scripted", "script")
        );
        assert_eq!(p.complete(&req, &tok).await.unwrap().text, "three");
        let err = p.complete(&req, &tok).await.unwrap_err();
        assert!(
            matches!(err, LlmError::BadResponse(ref m) if m == "script exhausted"),
            "{err}"
        );
        assert_eq!(p.requests().len(), 3);
    }

    #[tokio::test]
    async fn closure_sees_request_and_stop_is_trimmed() {
        let p = ScriptedProvider::new(|r| Ok(format!("{} END tail", r.messages[0].content)));
        let mut req = CompletionRequest::new(vec![ChatMessage::user("hello")]);
        req.stop = vec!["END".into()];
        let c = p.complete(&req, &CancellationToken::new()).await.unwrap();
        assert_eq!(c.text, "hello ");
        assert_eq!(c.finish_reason, FinishReason::StopSequence);
    }

    #[tokio::test]
    async fn cancelled_token_is_an_error() {
        let p = ScriptedProvider::from_replies(vec!["x".into()]);
        let tok = CancellationToken::new();
        tok.cancel();
        let req = CompletionRequest::new(vec![]);
        assert!(matches!(
            p.complete(&req, &tok).await,
            Err(LlmError::Cancelled)
        ));
    }
}
