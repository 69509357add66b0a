//! LLM access: chat messages, sampling parameters, completions and the
//! [`Provider`] trait, plus the providers and the per-role [`router::Router`].
//!
//! Owns: how a chat request reaches a model (in-process llama.cpp in `local`,
//! any OpenAI-compatible HTTP endpoint in `openai`, a scripted stand-in for
//! unit tests in `scripted`) and which provider serves which role (`router`).
//! Must not know: prompts, roles' meaning, the pipeline, the store, LSP or the
//! CLI. Callers build [`CompletionRequest`]s; this module only executes them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "local")]
pub mod local;
pub mod openai;
pub mod router;
pub mod scripted;

pub use router::Router;
pub use scripted::ScriptedProvider;

/// Who speaks a chat message. Serialised lowercase (`system`, `user`,
/// `assistant`), as OpenAI-compatible APIs and GGUF chat templates expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions that frame the conversation.
    System,
    /// The caller's turn.
    User,
    /// The model's turn (earlier replies, or a prefilled answer).
    Assistant,
}

impl ChatRole {
    /// `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// One chat message: a role and its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// The text, verbatim (no template tokens).
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(s: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::System,
            content: s.into(),
        }
    }
    /// A user message.
    pub fn user(s: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::User,
            content: s.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(s: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::Assistant,
            content: s.into(),
        }
    }
}

/// One chat completion request, provider-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature; `0.0` means greedy (deterministic).
    pub temperature: f32,
    /// Upper bound on generated tokens; reaching it ends with [`FinishReason::Length`].
    pub max_tokens: u32,
    /// Stop sequences; generation ends before the first one (it is not included in the text).
    pub stop: Vec<String>,
    /// A JSON Schema the reply must follow. The local provider enforces it with a
    /// grammar; remote ones use `response_format` where supported. Callers must
    /// still parse the reply defensively.
    pub json_schema: Option<serde_json::Value>,
    /// Sampling seed (used when `temperature > 0`, and passed to remote APIs).
    pub seed: u32,
    /// Extra sampled completions of the same prompt (the candidates of one
    /// round); `None` for one completion. The request's own `temperature`
    /// decides the first completion ([`Completion::text`]); these go to
    /// [`Completion::alternatives`].
    pub samples: Option<Samples>,
    /// The start of the model's reply, already written (empty: none). The
    /// local provider ends the chat-templated prompt with it, after the
    /// opened assistant turn, and every returned text (first completion and
    /// alternatives) begins with it; its tokens count as prompt tokens.
    /// OpenAI-compatible providers do not send it (the API has no portable
    /// way to continue an assistant turn), so callers must parse a reply
    /// that starts either way.
    pub prefill: String,
}

/// How to sample extra completions of one prompt.
///
/// The local provider decodes them as sequences of one llama.cpp batch that
/// share the prompt's KV cache; OpenAI-compatible providers use the `n`
/// parameter (vLLM supports it) or parallel requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Samples {
    /// How many extra completions (0 = none).
    pub n: u32,
    /// Their temperature (> 0).
    pub temperature: f32,
    /// Nucleus (top-p) threshold, 0 < p <= 1; 1.0 disables it.
    pub top_p: f32,
}

/// One extra completion of a [`CompletionRequest`] with [`Samples`].
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The generated text (stop sequence trimmed).
    pub text: String,
    /// Tokens generated for this choice.
    pub completion_tokens: u32,
    /// Why this choice ended.
    pub finish_reason: FinishReason,
}

impl CompletionRequest {
    /// A greedy request for `messages` with `max_tokens` 512, no stops, no schema, seed 0.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        CompletionRequest {
            messages,
            temperature: 0.0,
            max_tokens: 512,
            stop: Vec::new(),
            json_schema: None,
            seed: 0,
            samples: None,
            prefill: String::new(),
        }
    }

    /// Number of completions this request asks for: 1 plus the extra samples.
    pub fn n_choices(&self) -> u32 {
        1 + self.samples.map_or(0, |s| s.n)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn (end-of-generation token, or the API's `stop`).
    Stop,
    /// `max_tokens` was reached; the text is probably truncated.
    Length,
    /// One of the request's stop sequences appeared (it is trimmed from the text).
    StopSequence,
    /// The request was cancelled (providers return [`LlmError::Cancelled`] instead
    /// where nothing useful was produced).
    Cancelled,
}

impl FinishReason {
    /// `stop`, `length`, `stop_sequence` or `cancelled`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// A finished completion with its accounting.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The generated text (stop sequence trimmed).
    pub text: String,
    /// Tokens in the rendered prompt (exact for `local`; as reported by remote APIs, 0 if absent).
    pub prompt_tokens: u32,
    /// Tokens generated for all choices together (exact for `local`; as
    /// reported by remote APIs, 0 if absent).
    pub completion_tokens: u32,
    /// Wall-clock time of the call in milliseconds, retries included.
    pub latency_ms: u64,
    /// The provider's name (`local`, `openai`, `scripted`, or a configured name).
    pub provider: String,
    /// The model's name as configured.
    pub model: String,
    /// Why generation of the first choice ended.
    pub finish_reason: FinishReason,
    /// The extra sampled choices asked for by [`CompletionRequest::samples`]
    /// (empty otherwise). Providers return exactly `samples.n` of them.
    pub alternatives: Vec<Choice>,
    /// Where the time went inside an in-process generation (`local` only; `None`
    /// for remote providers, whose servers do not report it per phase).
    pub phases: Option<PhaseTimes>,
}

/// Wall time of the phases of one in-process generation, in milliseconds.
/// `setup_ms + prompt_ms + decode_ms` is at most the call's `latency_ms`; the
/// rest is chat-template rendering, tokenization and thread hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseTimes {
    /// Creating the `LlamaContext` (KV cache allocation), ms.
    pub setup_ms: f64,
    /// Ingesting the prompt (`prompt_tokens` in batches of 512), ms.
    pub prompt_ms: f64,
    /// Sampling and decoding the completion (`completion_tokens`, one per step), ms.
    pub decode_ms: f64,
    /// Prompt tokens whose KV cache was reused from the previous request
    /// (the longest common prefix), so not ingested again.
    pub cached_tokens: u32,
}

/// A source of chat completions. Implementations must be cheap to share
/// (`Arc<dyn Provider>`) and must honour `cancel` promptly.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Short provider name, e.g. `local` or `openai` (shown in logs, the store and `describe`).
    fn name(&self) -> &str;
    /// Model name, e.g. `qwen2.5-coder-1.5b` or `gpt-4o-mini`.
    fn model(&self) -> &str;
    /// Runs one completion.
    ///
    /// Errors: see [`LlmError`]; a cancelled `cancel` yields [`LlmError::Cancelled`].
    async fn complete(
        &self,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError>;

    /// Runs several requests together, one completion each, in order. The
    /// default runs them concurrently; the local provider decodes them in one
    /// llama.cpp batch (one prompt evaluation per request, then one token per
    /// sequence per decode), which on a CPU costs far less than one after
    /// another. Errors: the first error of any request.
    async fn complete_batch(
        &self,
        reqs: &[CompletionRequest],
        cancel: &CancellationToken,
    ) -> Result<Vec<Completion>, LlmError> {
        let calls = reqs.iter().map(|r| self.complete(r, cancel));
        futures_util::future::try_join_all(calls).await
    }
}

/// Everything that can go wrong talking to a model. Messages name the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The local GGUF file does not exist.
    #[error("model file {} not found: {fix}", .path.display())]
    ModelMissing {
        /// The path that was looked up.
        path: PathBuf,
        /// What to do about it.
        fix: String,
    },
    /// The local GGUF file exists but llama.cpp could not load it (corrupt, truncated, unsupported).
    #[error("cannot load model {}: {message}; re-install it with `docsmith model install` or check the file", .path.display())]
    ModelLoad {
        /// The file.
        path: PathBuf,
        /// llama.cpp's reason.
        message: String,
    },
    /// The endpoint could not be reached (connection refused, DNS, timeout).
    #[error("cannot reach {url}: {message}; is the server running?")]
    Unreachable {
        /// The URL that was called.
        url: String,
        /// The transport error.
        message: String,
    },
    /// 401 or 403.
    #[error("401/403 from {url}: {}", key_fix(.key_env))]
    Unauthorized {
        /// The URL that was called.
        url: String,
        /// The environment variable that should hold the key, if configured.
        key_env: Option<String>,
    },
    /// 429, after all retries.
    #[error("rate limited by {url} (429){}; wait, lower concurrency, or configure a fallback provider", after_retries(*.retries))]
    RateLimited {
        /// The URL that was called.
        url: String,
        /// Retries made after the first attempt.
        retries: u32,
    },
    /// The endpoint accepted the request but sent no whole reply within the
    /// request timeout (not retried: a hung server would cost the timeout again).
    #[error("no reply from {url} within {} s (the request timeout): the model server is slow, overloaded or stuck; check it, or raise `timeout_ms` under [providers.{provider}] in docsmith.toml (now {timeout_ms})", *.timeout_ms as f64 / 1000.0)]
    Timeout {
        /// The URL that was called.
        url: String,
        /// The timeout that ran out, ms.
        timeout_ms: u64,
        /// The provider's configured name (its `[providers.<name>]` table).
        provider: String,
    },
    /// Any other non-success HTTP status.
    #[error("HTTP {status} from the LLM endpoint: {body_excerpt}")]
    Http {
        /// The status code.
        status: u16,
        /// The first few hundred bytes of the body.
        body_excerpt: String,
    },
    /// The reply could not be understood (malformed JSON, no choices, ...).
    #[error("unexpected reply from the model: {0}")]
    BadResponse(String),
    /// The prompt does not fit the context window together with `max_tokens`.
    #[error("prompt of {prompt_tokens} tokens does not fit the context of {n_ctx} tokens (with room for max_tokens); raise n_ctx or shorten the prompt")]
    ContextOverflow {
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// The context size.
        n_ctx: u32,
    },
    /// The caller cancelled the request.
    #[error("cancelled")]
    Cancelled,
    /// Invalid provider or router configuration.
    #[error("LLM configuration error: {0}")]
    Config(String),
    /// Every provider in a route failed (only when there were at least two).
    #[error("all providers failed: {}", .0.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(String, LlmError)>),
}

impl LlmError {
    /// Whether the error says the endpoint itself is down or failing (not
    /// this request): connection refused or reset, a timeout, HTTP 5xx. What
    /// the router's circuit breaker counts ([`router::BreakerPolicy`]); a
    /// 429 is not counted (the provider already waits its `Retry-After`).
    pub fn is_endpoint_down(&self) -> bool {
        match self {
            LlmError::Unreachable { .. } | LlmError::Timeout { .. } => true,
            LlmError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether another provider might succeed where this one failed: true for
    /// `Unreachable`, `RateLimited`, `Timeout`, `Http` 5xx, `ModelMissing`, `ModelLoad` and
    /// `ContextOverflow`; false for cancellation, auth, bad requests, bad replies
    /// and configuration errors.
    pub fn is_retryable_elsewhere(&self) -> bool {
        match self {
            LlmError::Unreachable { .. }
            | LlmError::RateLimited { .. }
            | LlmError::Timeout { .. }
            | LlmError::ModelMissing { .. }
            | LlmError::ModelLoad { .. }
            | LlmError::ContextOverflow { .. } => true,
            LlmError::Http { status, .. } => *status >= 500,
            LlmError::Unauthorized { .. }
            | LlmError::BadResponse(_)
            | LlmError::Cancelled
            | LlmError::Config(_)
            | LlmError::AllFailed(_) => false,
        }
    }
}

/// ` after N retries` (nothing for none), for [`LlmError::RateLimited`]'s message.
fn after_retries(n: u32) -> String {
    match n {
        0 => String::new(),
        1 => " after 1 retry".to_string(),
        n => format!(" after {n} retries"),
    }
}

/// The fix half of [`LlmError::Unauthorized`]'s message.
fn key_fix(key_env: &Option<String>) -> String {
    match key_env {
        Some(k) => format!("set {k} to a valid API key"),
        None => "configure `api_key_env` and set that variable to a valid API key".to_string(),
    }
}

/// Number of whitespace-separated words in `s`: the token estimate used by
/// providers that report no usage (the scripted one).
pub(crate) fn word_count(s: &str) -> u32 {
    s.split_whitespace().count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_serialise_lowercase() {
        let m = ChatMessage::system("hi");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"role":"system","content":"hi"})
        );
        assert_eq!(ChatMessage::assistant("x").role, ChatRole::Assistant);
        assert_eq!(ChatMessage::user("x").role.as_str(), "user");
    }

    #[test]
    fn retryable_elsewhere_classification() {
        assert!(LlmError::Unreachable {
            url: "u".into(),
            message: "m".into()
        }
        .is_retryable_elsewhere());
        assert!(LlmError::Http {
            status: 503,
            body_excerpt: String::new()
        }
        .is_retryable_elsewhere());
        assert!(!LlmError::Http {
            status: 400,
            body_excerpt: String::new()
        }
        .is_retryable_elsewhere());
        assert!(!LlmError::Cancelled.is_retryable_elsewhere());
        assert!(!LlmError::Unauthorized {
            url: "u".into(),
            key_env: None
        }
        .is_retryable_elsewhere());
        assert!(LlmError::ContextOverflow {
            prompt_tokens: 9,
            n_ctx: 4
        }
        .is_retryable_elsewhere());
    }

    #[test]
    fn error_messages_name_cause_and_fix() {
        let e = LlmError::ModelMissing {
            path: "/m/x.gguf".into(),
            fix: "run `docsmith model install`".into(),
        };
        assert_eq!(
            e.to_string(),
            "model file /m/x.gguf not found: run `docsmith model install`"
        );
        let e = LlmError::Unauthorized {
            url: "http://h/v1".into(),
            key_env: Some("MY_KEY".into()),
        };
        assert_eq!(
            e.to_string(),
            "401/403 from http://h/v1: set MY_KEY to a valid API key"
        );
        let e = LlmError::AllFailed(vec![
            ("local:a".into(), LlmError::Cancelled),
            ("openai:b".into(), LlmError::BadResponse("x".into())),
        ]);
        let s = e.to_string();
        assert!(
            s.contains("local:a: cancelled") && s.contains("openai:b: unexpected reply"),
            "{s}"
        );
    }
}
