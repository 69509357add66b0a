//! A [`Provider`] for any OpenAI-compatible chat completions endpoint
//! (OpenAI, vLLM, llama-server, Ollama's `/v1`, LM Studio, ...).
//!
//! Owns: the HTTP request/response shapes of `POST {base_url}/chat/completions`,
//! timeouts, retries with exponential backoff and jitter on 429/5xx/connect
//! errors (waiting what a `Retry-After` header asks on 429 and 503, up to
//! [`MAX_RETRY_AFTER`]), and mapping HTTP failures to [`LlmError`]. The API key is read from
//! the environment variable *named* in the options at each request and is
//! never stored in a `Debug` output or logged. Must not know about roles,
//! prompts or configuration files.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    ChatMessage, ChatRole, Choice, Completion, CompletionRequest, FinishReason, LlmError, Provider,
};

/// First retry delay; doubles each retry (with jitter) up to [`MAX_DELAY`].
#[cfg(not(test))]
const MIN_DELAY: Duration = Duration::from_millis(500);
#[cfg(test)]
const MIN_DELAY: Duration = Duration::from_millis(10);
/// Longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Longest wait a `Retry-After` header can impose before the next attempt.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Characters of an error body kept in [`LlmError::Http`].
const BODY_EXCERPT_CHARS: usize = 300;

/// Options for [`OpenAiProvider`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiOptions {
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`
    /// or `http://127.0.0.1:8000/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent in the request, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Name of the environment variable holding the API key (e.g. `OPENAI_API_KEY`);
    /// `None`, or the variable unset, sends no `Authorization` header (fine for local servers).
    pub api_key_env: Option<String>,
    /// Whole-request timeout in milliseconds (per attempt). Default 120000.
    pub timeout_ms: u64,
    /// TCP/TLS connect timeout in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// Retries after the first attempt on 429, 5xx and connection errors. Default 3.
    pub max_retries: u32,
    /// Whether the endpoint accepts `response_format: {"type": "json_schema"}`; when
    /// false the schema is described in a system line instead. Default true.
    pub supports_json_schema: bool,
    /// Provider name reported in completions and `Router::describe`. Default `openai`.
    pub name: String,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            base_url: "https://api.openai.com/v1".to_string(),
            model: "gpt-4o-mini".to_string(),
            api_key_env: Some("OPENAI_API_KEY".to_string()),
            timeout_ms: 120_000,
            connect_timeout_ms: 5_000,
            max_retries: 3,
            supports_json_schema: true,
            name: "openai".to_string(),
        }
    }
}

/// Chat completions over HTTP. Cheap to share; holds a connection pool.
pub struct OpenAiProvider {
    opts: OpenAiOptions,
    url: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for OpenAiProvider {
    /// Names the key's variable, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.opts.name)
            .field("url", &self.url)
            .field("model", &self.opts.model)
            .field("api_key_env", &self.opts.api_key_env)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// One failed attempt and whether it is worth repeating.
struct AttemptError {
    err: LlmError,
    retry: bool,
    /// What the endpoint's `Retry-After` asked for (429 and 503 only).
    retry_after: Option<Duration>,
    /// What went wrong, for the warning logged before a retry.
    what: String,
}

impl AttemptError {
    /// A failure that is not retried.
    fn fatal(err: LlmError) -> AttemptError {
        AttemptError {
            what: err.to_string(),
            err,
            retry: false,
            retry_after: None,
        }
    }

    /// The error returned once no retry is left; `retries` were made.
    fn into_final(self, retries: u32) -> LlmError {
        match self.err {
            LlmError::RateLimited { url, .. } => LlmError::RateLimited { url, retries },
            e => e,
        }
    }
}

/// The wait before the next attempt: what `Retry-After` asked (at most
/// [`MAX_RETRY_AFTER`]) when the endpoint sent one, else the backoff's delay;
/// `None` (no retry left) when the backoff is spent.
fn retry_delay(backoff: Option<Duration>, retry_after: Option<Duration>) -> Option<Duration> {
    backoff.map(|d| retry_after.map_or(d, |ra| ra.min(MAX_RETRY_AFTER)))
}

/// The wait a `Retry-After` header value asks for: delay-seconds (`120`) or an
/// HTTP date (IMF-fixdate, `Wed, 21 Oct 2015 07:28:00 GMT`) relative to `now`;
/// a date in the past is no wait. `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as a time.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_weekday, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..=60).contains(&sec)
    {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3_600 + m * 60 + sec).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

impl OpenAiProvider {
    /// A provider for `opts`.
    ///
    /// Errors: [`LlmError::Config`] when `base_url` is not an http(s) URL, the
    /// model is empty, or the HTTP client cannot be built.
    pub fn new(opts: OpenAiOptions) -> Result<Self, LlmError> {
        let base = opts.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Config(format!(
                "base_url `{}` must start with http:// or https:// (e.g. https://api.openai.com/v1)",
                opts.base_url
            )));
        }
        if opts.model.trim().is_empty() {
            return Err(LlmError::Config(format!(
                "no model set for the OpenAI-compatible provider at {base}"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(opts.connect_timeout_ms))
            .timeout(Duration::from_millis(opts.timeout_ms))
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        let url = format!("{base}/chat/completions");
        Ok(OpenAiProvider { opts, url, client })
    }

    /// The JSON body for `req`.
    fn body(&self, req: &CompletionRequest) -> Value {
        let mut messages: Vec<ChatMessage> = req.messages.clone();
        let mut body = json!({
            "model": self.opts.model,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
        });
        if let Some(schema) = &req.json_schema {
            if self.opts.supports_json_schema {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema, "strict": false}
                });
            } else {
                let line = format!(
                    "Reply with only one JSON value, no prose and no code fence, that follows this JSON Schema: {schema}"
                );
                match messages.first_mut() {
                    Some(m) if m.role == ChatRole::System => {
                        m.content = format!("{}\n\n{line}", m.content)
                    }
                    _ => messages.insert(0, ChatMessage::system(line)),
                }
            }
        }
        body["messages"] = serde_json::to_value(&messages).expect("messages serialise");
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        body
    }

    /// One HTTP attempt: the parsed reply or a classified error.
    async fn attempt(&self, body: &Value) -> Result<Value, AttemptError> {
        let mut rb = self.client.post(&self.url).json(body);
        if let Some(var) = &self.opts.api_key_env {
            if let Ok(key) = std::env::var(var) {
                if !key.is_empty() {
                    rb = rb.bearer_auth(key);
                }
            }
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = matches!(status, 429 | 503)
            .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = resp.text().await.map_err(|e| self.transport_error(e))?;
        match status {
            200..=299 => serde_json::from_str(&text).map_err(|e| {
                AttemptError::fatal(LlmError::BadResponse(format!(
                    "reply from {} is not JSON ({e}): {}",
                    self.url,
                    excerpt(&text)
                )))
            }),
            401 | 403 => Err(AttemptError::fatal(LlmError::Unauthorized {
                url: self.url.clone(),
                key_env: self.opts.api_key_env.clone(),
            })),
            429 => Err(AttemptError {
                err: LlmError::RateLimited {
                    url: self.url.clone(),
                    retries: 0,
                },
                retry: true,
                retry_after,
                what: "HTTP 429 Too Many Requests".into(),
            }),
            _ => Err(AttemptError {
                what: format!("HTTP {status}: {}", excerpt(&text)),
                err: LlmError::Http {
                    status,
                    body_excerpt: excerpt(&text),
                },
                retry: status >= 500,
                retry_after,
            }),
        }
    }

    /// Maps a reqwest transport error. Connection failures (connect timeouts
    /// included) are retried; a request that timed out waiting for the reply
    /// is not (a hung server would cost the whole timeout again).
    fn transport_error(&self, e: reqwest::Error) -> AttemptError {
        if e.is_timeout() && !e.is_connect() {
            return AttemptError::fatal(LlmError::Timeout {
                url: self.url.clone(),
                timeout_ms: self.opts.timeout_ms,
                provider: self.opts.name.clone(),
            });
        }
        let message = if e.is_timeout() {
            format!(
                "no connection within {} ms (the connect timeout)",
                self.opts.connect_timeout_ms
            )
        } else {
            let mut message = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                message = format!("{message}: {s}");
                src = s.source();
            }
            message
        };
        let err = LlmError::Unreachable {
            url: self.url.clone(),
            message,
        };
        AttemptError {
            what: err.to_string(),
            err,
            retry: e.is_connect() || e.is_request(),
            retry_after: None,
        }
    }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of `s`.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(BODY_EXCERPT_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Pulls text, finish reason and usage out of a chat completions reply.
fn parse_reply(v: &Value) -> Result<(String, FinishReason, u32, u32), LlmError> {
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| {
        LlmError::BadResponse(format!("no choices in reply: {}", excerpt(&v.to_string())))
    })?;
    let text = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            LlmError::BadResponse(format!(
                "no message content in reply: {}",
                excerpt(&v.to_string())
            ))
        })?
        .to_string();
    let finish = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let usage = |k: &str| {
        v.pointer(&format!("/usage/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32
    };
    Ok((
        text,
        finish,
        usage("prompt_tokens"),
        usage("completion_tokens"),
    ))
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.opts.name
    }

    fn model(&self) -> &str {
        &self.opts.model
    }

    /// One completion; with [`CompletionRequest::samples`], a second request
    /// with `n` = the samples asked for (vLLM and OpenAI support `n`) runs
    /// concurrently and fills [`Completion::alternatives`]. A server that
    /// refuses `n` gives no alternatives here; the router then tops up with
    /// single sampled requests.
    async fn complete(
        &self,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError> {
        let start = Instant::now();
        let main = self.send(self.body(req), cancel);
        let extra = async {
            let s = req.samples.filter(|s| s.n > 0)?;
            let mut body = self.body(req);
            body["n"] = json!(s.n);
            body["temperature"] = json!(s.temperature);
            body["top_p"] = json!(s.top_p);
            body["seed"] = json!(req.seed.wrapping_add(1));
            Some(self.send(body, cancel).await)
        };
        let (main, extra) = tokio::join!(main, extra);
        let reply = main?;
        let (text, finish_reason, prompt_tokens, mut completion_tokens) = parse_reply(&reply)?;
        let mut alternatives = Vec::new();
        match extra {
            None => {}
            Some(Ok(v)) => {
                for (text, finish_reason) in parse_choices(&v) {
                    alternatives.push(Choice {
                        text,
                        completion_tokens: 0,
                        finish_reason,
                    });
                }
                let n = alternatives.len().max(1) as u32;
                let total = v
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u32;
                for a in &mut alternatives {
                    a.completion_tokens = total / n;
                }
                completion_tokens += total;
            }
            Some(Err(LlmError::Cancelled)) => return Err(LlmError::Cancelled),
            Some(Err(e)) => {
                tracing::warn!(url = %self.url, error = %e, "the sampled request (n > 1) failed; sampling one at a time instead");
            }
        }
        Ok(Completion {
            text,
            prompt_tokens,
            completion_tokens,
            latency_ms: start.elapsed().as_millis() as u64,
            provider: self.opts.name.clone(),
            model: self.opts.model.clone(),
            finish_reason,
            alternatives,
            phases: None,
        })
    }
}

impl OpenAiProvider {
    /// Sends `body` with retries (backoff, `Retry-After`) until a reply,
    /// a final error or `cancel`.
    async fn send(&self, body: Value, cancel: &CancellationToken) -> Result<Value, LlmError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_max_times(self.opts.max_retries as usize)
            .with_jitter();
        let attempts = AtomicU32::new(0);
        let total = self.opts.max_retries + 1;
        let call = (|| {
            attempts.fetch_add(1, Ordering::SeqCst);
            self.attempt(&body)
        })
        .retry(backoff)
        .when(|e: &AttemptError| e.retry)
        .adjust(|e: &AttemptError, d| retry_delay(d, e.retry_after))
        .notify(|e: &AttemptError, d: Duration| {
            let next = attempts.load(Ordering::SeqCst) + 1;
            tracing::warn!(
                url = %self.url,
                "LLM request failed ({}); retrying (attempt {next} of {total}) after {:.1} s",
                e.what,
                d.as_secs_f64()
            );
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(LlmError::Cancelled),
            r = call => r.map_err(|e| e.into_final(attempts.load(Ordering::SeqCst).saturating_sub(1))),
        }
    }
}

/// Every choice's text and finish reason (choices without text are skipped).
fn parse_choices(v: &Value) -> Vec<(String, FinishReason)> {
    v.get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    let text = c.pointer("/message/content")?.as_str()?.to_string();
                    let finish = match c.get("finish_reason").and_then(Value::as_str) {
                        Some("length") => FinishReason::Length,
                        _ => FinishReason::Stop,
                    };
                    Some((text, finish))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_of_an_n_reply_is_read() {
        let v = json!({
            "choices": [
                {"message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
                {"message": {"role": "assistant", "content": "b"}, "finish_reason": "length"},
                {"message": {"role": "assistant"}, "finish_reason": "stop"}
            ],
            "usage": {"completion_tokens": 9}
        });
        assert_eq!(
            parse_choices(&v),
            vec![
                ("a".to_string(), FinishReason::Stop),
                ("b".to_string(), FinishReason::Length)
            ]
        );
        assert!(parse_choices(&json!({})).is_empty());
    }
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request as the fake server saw it: lowercased header block and body.
    #[derive(Debug, Clone)]
    struct Seen {
        headers: String,
        body: String,
    }

    /// Starts an HTTP/1.1 server on 127.0.0.1:0 answering with `replies` in
    /// order (status, body), one per connection. Returns the base URL and the log.
    async fn serve(replies: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in replies {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed before sending headers");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let headers = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
                let len: usize = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while buf.len() < header_end + len {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req_body =
                    String::from_utf8_lossy(&buf[header_end..header_end + len]).to_string();
                log.lock().unwrap().push(Seen {
                    headers,
                    body: req_body,
                });
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
                sock.shutdown().await.ok();
            }
        });
        (format!("http://{addr}/v1"), seen)
    }

    fn ok_body(text: &str) -> String {
        json!({
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5}
        })
        .to_string()
    }

    fn provider(base_url: String, key_env: Option<&str>) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiOptions {
            base_url,
            model: "test-model".into(),
            api_key_env: key_env.map(str::to_string),
            ..OpenAiOptions::default()
        })
        .unwrap()
    }

    fn req() -> CompletionRequest {
        CompletionRequest::new(vec![ChatMessage::system("sys"), ChatMessage::user("hi")])
    }

    #[tokio::test]
    async fn success_sends_model_schema_stop_and_key() {
        let (url, seen) = serve(vec![(200, ok_body("{\"a\": 1}"))]).await;
        std::env::set_var("DOCSMITH_TEST_KEY_SUCCESS", "sk-secret-123");
        let p = provider(url, Some("DOCSMITH_TEST_KEY_SUCCESS"));
        let mut r = req();
        r.stop = vec!["```".into()];
        r.json_schema = Some(json!({"type": "object", "required": ["a"]}));
        let c = p.complete(&r, &CancellationToken::new()).await.unwrap();
        assert_eq!(c.text, "{\"a\": 1}");
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens, c.finish_reason),
            (12, 5, FinishReason::Stop)
        );
        assert_eq!(
            (c.provider.as_str(), c.model.as_str()),
            ("openai", "test-model")
        );

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].headers.starts_with("post /v1/chat/completions "),
            "{}",
            seen[0].headers
        );
        assert!(
            seen[0]
                .headers
                .contains("authorization: bearer sk-secret-123"),
            "{}",
            seen[0].headers
        );
        let body: Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stop"], json!(["```"]));
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(
            body["response_format"]["json_schema"]["schema"]["required"],
            json!(["a"])
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "hi"})
        );
        assert!(
            !format!("{p:?}").contains("sk-secret"),
            "Debug must redact the key"
        );
    }

    #[tokio::test]
    async fn without_schema_support_the_schema_goes_in_the_system_line() {
        let (url, seen) = serve(vec![(200, ok_body("x"))]).await;
        let p = OpenAiProvider::new(OpenAiOptions {
            base_url: url,
            model: "m".into(),
            api_key_env: None,
            supports_json_schema: false,
            ..OpenAiOptions::default()
        })
        .unwrap();
        let mut r = req();
        r.json_schema = Some(json!({"type": "object"}));
        p.complete(&r, &CancellationToken::new()).await.unwrap();
        let body: Value = serde_json::from_str(&seen.lock().unwrap()[0].body).unwrap();
        assert!(
            body.get("response_format").is_none() && body.get("stop").is_none(),
            "{body}"
        );
        let sys = body["messages"][0]["content"].as_str().unwrap();
        assert!(
            sys.starts_with("sys") && sys.contains("JSON Schema: {\"type\":\"object\"}"),
            "{sys}"
        );
        assert!(!seen.lock().unwrap()[0].headers.contains("authorization"));
    }

    #[tokio::test]
    async fn retries_after_500() {
        let (url, seen) = serve(vec![(500, "oops".into()), (200, ok_body("fine"))]).await;
        let c = provider(url, None)
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(c.text, "fine");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn unauthorized_is_not_retried_and_names_the_variable() {
        let (url, seen) = serve(vec![
            (401, "{\"error\":\"bad key\"}".into()),
            (200, ok_body("no")),
        ])
        .await;
        let p = provider(url, Some("DOCSMITH_TEST_KEY_401"));
        let err = p
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Unauthorized { .. }), "{err}");
        assert!(
            err.to_string().contains("set DOCSMITH_TEST_KEY_401"),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_request_is_http_error_without_retry() {
        let (url, seen) = serve(vec![
            (400, "{\"error\":\"bad\"}".into()),
            (200, ok_body("no")),
        ])
        .await;
        let err = provider(url, None)
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Http { status: 400, .. }), "{err}");
        assert!(!err.is_retryable_elsewhere());
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = provider(format!("http://127.0.0.1:{port}/v1"), None);
        let err = p
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn malformed_json_is_bad_response() {
        let (url, _) = serve(vec![(200, "{not json".into())]).await;
        let err = provider(url, None)
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::BadResponse(_)), "{err}");
        let (url, _) = serve(vec![(200, "{\"choices\": []}".into())]).await;
        let err = provider(url, None)
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::BadResponse(_)), "{err}");
    }

    #[tokio::test]
    async fn cancellation_interrupts_a_hanging_request() {
        // A listener that accepts but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _s = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let p = provider(format!("http://{addr}/v1"), None);
        let tok = CancellationToken::new();
        let t2 = tok.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t2.cancel();
        });
        let start = Instant::now();
        let err = p.complete(&req(), &tok).await.unwrap_err();
        assert!(matches!(err, LlmError::Cancelled), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH;
        let secs = |v: &str| parse_retry_after(v, now).map(|d| d.as_secs());
        assert_eq!(secs("120"), Some(120));
        assert_eq!(secs(" 3 "), Some(3));
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(secs("Thu, 29 Feb 2024 12:00:00 GMT"), Some(1_709_208_000));
        let later = UNIX_EPOCH + Duration::from_secs(784_111_787);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        for bad in [
            "soon",
            "-1",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_the_cap() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(Some(ms(10)), None), Some(ms(10)));
        assert_eq!(retry_delay(Some(ms(10)), Some(ms(1500))), Some(ms(1500)));
        assert_eq!(
            retry_delay(Some(ms(10)), Some(Duration::from_secs(3600))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_delay(None, Some(ms(1))), None, "no retry left");
    }

    #[tokio::test]
    async fn rate_limited_to_the_end_says_how_many_retries() {
        let (url, seen) = serve(vec![(429, "{}".into()); 4]).await;
        let err = provider(url, None)
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LlmError::RateLimited { retries: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("(429) after 3 retries;"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_hung_endpoint_times_out_with_a_message_naming_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _s = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let p = OpenAiProvider::new(OpenAiOptions {
            base_url: format!("http://{addr}/v1"),
            model: "m".into(),
            api_key_env: None,
            timeout_ms: 300,
            name: "vllm".into(),
            ..OpenAiOptions::default()
        })
        .unwrap();
        let start = Instant::now();
        let err = p
            .complete(&req(), &CancellationToken::new())
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(
                err,
                LlmError::Timeout {
                    timeout_ms: 300,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        for want in [
            format!("no reply from http://{addr}/v1/chat/completions within 0.3 s"),
            "raise `timeout_ms` under [providers.vllm]".to_string(),
        ] {
            assert!(msg.contains(&want), "{want:?} in {msg}");
        }
        assert!(!msg.contains("is the server running"), "{msg}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(3),
            "not retried: {took:?}"
        );
    }

    #[test]
    fn new_rejects_bad_url_and_empty_model() {
        let bad = OpenAiOptions {
            base_url: "localhost:8000".into(),
            ..OpenAiOptions::default()
        };
        assert!(matches!(OpenAiProvider::new(bad), Err(LlmError::Config(_))));
        let empty = OpenAiOptions {
            model: " ".into(),
            ..OpenAiOptions::default()
        };
        assert!(matches!(
            OpenAiProvider::new(empty),
            Err(LlmError::Config(_))
        ));
    }
}
