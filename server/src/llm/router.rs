//! Routes each [`Role`] to an ordered list of providers and falls back along
//! that list when a provider fails in a way another might not
//! ([`LlmError::is_retryable_elsewhere`]). A circuit breaker per provider
//! skips one that failed [`BreakerPolicy::failures`] times in a row (endpoint
//! down: [`LlmError::is_endpoint_down`]) for [`BreakerPolicy::cool_down`], in
//! favour of its fallback, instead of paying its full timeout on every call;
//! after the cool-down one call tries it again (half-open) and a success
//! closes the breaker. (The pattern: Nygard, *Release It!*, "Circuit
//! Breaker".) A provider with no fallback after it is always tried.
//!
//! Owns: the role -> providers table, the fallback policy and the breakers'
//! state (shared by clones of a router, so every task of a language server
//! sees the same). Must not know
//! how providers are configured (the lead's `config` builds them) nor what the
//! roles ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Choice, Completion, CompletionRequest, LlmError, Provider};
use crate::types::Role;

/// Every role's providers, first choice first, and each provider's breaker.
#[derive(Clone)]
pub struct Router {
    routes: HashMap<Role, Vec<Arc<dyn Provider>>>,
    policy: BreakerPolicy,
    /// Breaker state by provider (the `Arc`'s address: one provider shared by
    /// several roles has one breaker).
    breakers: Arc<Mutex<HashMap<usize, Breaker>>>,
}

/// When a provider's breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Calls in a row that failed with the endpoint down (each call after
    /// the provider's own retries) before the provider is skipped.
    pub failures: u32,
    /// How long it is then skipped in favour of its fallback.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    /// 3 failed calls in a row; skipped for 60 s.
    fn default() -> Self {
        BreakerPolicy {
            failures: 3,
            cool_down: Duration::from_secs(60),
        }
    }
}

/// One provider's breaker.
#[derive(Debug, Default)]
struct Breaker {
    /// Calls in a row that failed with the endpoint down.
    failures: u32,
    /// Skipped until then (open); `None` when closed.
    open_until: Option<Instant>,
    /// The last failure's message.
    last_error: String,
}

/// A provider the router skipped because its breaker was open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `name:model` of the skipped provider.
    pub provider: String,
    /// Why, for a person: the failures in a row, the last error and the
    /// cool-down left, e.g. `failed 3 calls in a row (last: cannot reach
    /// http://…: refused); skipped for 42 s more`.
    pub reason: String,
}

/// A completion and how the router got it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub completion: Completion,
    /// Index (into [`Router::providers`] of the role) of the provider that
    /// produced it.
    pub provider: usize,
    /// Providers skipped on the way (open breakers), in chain order.
    pub skipped: Vec<Skipped>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for role in Role::ALL {
            m.entry(&role.as_str(), &self.describe(role));
        }
        m.finish()
    }
}

impl Router {
    /// A router from a role -> providers table.
    ///
    /// Errors: [`LlmError::Config`] naming the role when some role of
    /// [`Role::ALL`] is missing or has an empty list.
    pub fn new(routes: HashMap<Role, Vec<Arc<dyn Provider>>>) -> Result<Router, LlmError> {
        for role in Role::ALL {
            if routes.get(&role).is_none_or(|v| v.is_empty()) {
                return Err(LlmError::Config(format!(
                    "no provider configured for role `{role}`; give it at least one provider"
                )));
            }
        }
        Ok(Router {
            routes,
            policy: BreakerPolicy::default(),
            breakers: Arc::default(),
        })
    }

    /// A router that sends every role to `p` (no fallback).
    pub fn uniform(p: Arc<dyn Provider>) -> Router {
        let routes = Role::ALL.iter().map(|r| (*r, vec![p.clone()])).collect();
        Router {
            routes,
            policy: BreakerPolicy::default(),
            breakers: Arc::default(),
        }
    }

    /// The same router with another breaker policy (and fresh breakers).
    pub fn with_breaker(mut self, policy: BreakerPolicy) -> Router {
        self.policy = policy;
        self.breakers = Arc::default();
        self
    }

    /// Why `p` is skipped now, or `None` when its breaker is closed or its
    /// cool-down is over (then the next call tries it: half-open).
    fn open_reason(&self, p: &Arc<dyn Provider>) -> Option<String> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = breakers.get(&key(p))?;
        let left = b.open_until?.checked_duration_since(Instant::now())?;
        Some(format!(
            "failed {} calls in a row (last: {}); skipped for {} s more",
            b.failures,
            b.last_error,
            left.as_secs().max(1)
        ))
    }

    /// Records a call's outcome in `p`'s breaker: a success closes it, an
    /// endpoint-down failure counts and opens it at the policy's count;
    /// other errors (a bad reply, cancellation) leave it as it is.
    fn record(&self, p: &Arc<dyn Provider>, outcome: Result<(), &LlmError>) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                breakers.remove(&key(p));
            }
            Err(e) if e.is_endpoint_down() => {
                let b = breakers.entry(key(p)).or_default();
                b.failures += 1;
                b.last_error = e.to_string();
                if b.failures >= self.policy.failures {
                    b.open_until = Some(Instant::now() + self.policy.cool_down);
                    tracing::warn!(provider = %label(p.as_ref()), failures = b.failures, cool_down_s = self.policy.cool_down.as_secs(), "provider skipped in favour of its fallback until the cool-down ends");
                }
            }
            Err(_) => {}
        }
    }

    /// The providers for `role`, first choice first (never empty).
    pub fn providers(&self, role: Role) -> &[Arc<dyn Provider>] {
        self.routes.get(&role).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Completes `req` with `role`'s first provider, falling back to the next
    /// one while the error is [`LlmError::is_retryable_elsewhere`].
    ///
    /// Returns the completion, the index (into [`Router::providers`]) of the
    /// provider that produced it and the providers skipped on the way (open
    /// breakers; never the last of the chain). A non-retryable error ends the
    /// chain. Errors: when only one provider was tried its error is returned
    /// as itself; when two or more failed, [`LlmError::AllFailed`] lists each
    /// (`name:model`, error); cancellation is always [`LlmError::Cancelled`].
    pub async fn complete(
        &self,
        role: Role,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Routed, LlmError> {
        let providers = self.providers(role);
        let mut failures: Vec<(String, LlmError)> = Vec::new();
        let mut skipped = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            if i + 1 < providers.len() {
                if let Some(reason) = self.open_reason(p) {
                    skipped.push(Skipped {
                        provider: label(p.as_ref()),
                        reason,
                    });
                    continue;
                }
            }
            let res = complete_all(p.as_ref(), req, cancel).await;
            self.record(p, res.as_ref().map(|_| ()));
            match res {
                Ok(c) => {
                    if !failures.is_empty() || !skipped.is_empty() {
                        tracing::info!(role = %role, provider = %label(p.as_ref()), "fallback provider succeeded");
                    }
                    return Ok(Routed {
                        completion: c,
                        provider: i,
                        skipped,
                    });
                }
                Err(e) if e.is_retryable_elsewhere() && i + 1 < providers.len() => {
                    tracing::warn!(role = %role, provider = %label(p.as_ref()), error = %e, "provider failed; trying the next one");
                    failures.push((label(p.as_ref()), e));
                }
                Err(e) => {
                    if failures.is_empty() || matches!(e, LlmError::Cancelled) {
                        return Err(e);
                    }
                    failures.push((label(p.as_ref()), e));
                    break;
                }
            }
        }
        match failures.len() {
            0 => Err(LlmError::Config(format!(
                "no provider configured for role `{role}`"
            ))),
            1 => Err(failures.pop().expect("one failure").1),
            _ => Err(LlmError::AllFailed(failures)),
        }
    }

    /// Completes several `(role, request)` pairs together. When every role's
    /// first provider is the same one, the requests go to it as one batch
    /// ([`Provider::complete_batch`]: the local provider decodes them in one
    /// llama.cpp batch); otherwise, or when that batch fails in a way another
    /// provider might not, each request goes through [`Router::complete`]
    /// (with its fallbacks), concurrently. Results are in input order.
    /// A batch is not sent to a shared first provider whose breaker is open
    /// while some role has a fallback: each request then goes through
    /// [`Router::complete`], which skips it.
    pub async fn complete_batch(
        &self,
        items: &[(Role, CompletionRequest)],
        cancel: &CancellationToken,
    ) -> Result<Vec<Routed>, LlmError> {
        let firsts: Vec<&Arc<dyn Provider>> = items
            .iter()
            .filter_map(|(role, _)| self.providers(*role).first())
            .collect();
        let shared =
            firsts.len() == items.len() && firsts.windows(2).all(|w| Arc::ptr_eq(w[0], w[1]));
        let some_fallback = items
            .iter()
            .any(|(role, _)| self.providers(*role).len() > 1);
        let skip_batch = some_fallback && shared && self.open_reason(firsts[0]).is_some();
        if shared && items.len() > 1 && !skip_batch {
            let reqs: Vec<CompletionRequest> = items.iter().map(|(_, r)| r.clone()).collect();
            let res = firsts[0].complete_batch(&reqs, cancel).await;
            self.record(firsts[0], res.as_ref().map(|_| ()));
            match res {
                Ok(cs) => {
                    let mut out = Vec::with_capacity(cs.len());
                    for (c, r) in cs.into_iter().zip(&reqs) {
                        out.push(Routed {
                            completion: top_up(firsts[0].as_ref(), r, c, cancel).await?,
                            provider: 0,
                            skipped: Vec::new(),
                        });
                    }
                    return Ok(out);
                }
                Err(e) if e.is_retryable_elsewhere() => {
                    tracing::warn!(provider = %label(firsts[0].as_ref()), error = %e, "batch failed; trying each request on its own");
                }
                Err(e) => return Err(e),
            }
        }
        let calls = items
            .iter()
            .map(|(role, r)| self.complete(*role, r, cancel));
        futures_util::future::try_join_all(calls).await
    }

    /// `role`'s chain as text, e.g. `local:qwen2.5-coder-1.5b -> openai:gpt-4o-mini`.
    pub fn describe(&self, role: Role) -> String {
        self.providers(role)
            .iter()
            .map(|p| label(p.as_ref()))
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// `p.complete(req)`, topped up with single sampled calls when the provider
/// returned fewer [`Completion::alternatives`] than `req.samples` asks for
/// (an OpenAI-compatible server without `n` support, say). The top-up calls
/// vary the seed so they differ; their tokens and latency are added in.
async fn complete_all(
    p: &dyn Provider,
    req: &CompletionRequest,
    cancel: &CancellationToken,
) -> Result<Completion, LlmError> {
    let c = p.complete(req, cancel).await?;
    top_up(p, req, c, cancel).await
}

/// Adds single sampled calls to `c` until it has the alternatives `req` asked for.
async fn top_up(
    p: &dyn Provider,
    req: &CompletionRequest,
    mut c: Completion,
    cancel: &CancellationToken,
) -> Result<Completion, LlmError> {
    let Some(samples) = req.samples else {
        return Ok(c);
    };
    let mut k = c.alternatives.len() as u32;
    while k < samples.n {
        let mut one = req.clone();
        one.samples = None;
        one.temperature = samples.temperature;
        one.seed = req.seed.wrapping_add(1 + k);
        let extra = p.complete(&one, cancel).await?;
        c.latency_ms += extra.latency_ms;
        c.completion_tokens += extra.completion_tokens;
        c.alternatives.push(Choice {
            text: extra.text,
            completion_tokens: extra.completion_tokens,
            finish_reason: extra.finish_reason,
        });
        k += 1;
    }
    c.alternatives.truncate(samples.n as usize);
    Ok(c)
}

/// `name:model` of a provider.
fn label(p: &dyn Provider) -> String {
    format!("{}:{}", p.name(), p.model())
}

/// A provider's breaker key: its `Arc`'s address (stable while the router
/// holds it).
fn key(p: &Arc<dyn Provider>) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, ScriptedProvider};

    fn unreachable() -> LlmError {
        LlmError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            message: "refused".into(),
        }
    }

    fn req() -> CompletionRequest {
        CompletionRequest::new(vec![ChatMessage::user("hi")])
    }

    fn routes(chain: Vec<Arc<dyn Provider>>) -> HashMap<Role, Vec<Arc<dyn Provider>>> {
        Role::ALL.iter().map(|r| (*r, chain.clone())).collect()
    }

    #[tokio::test]
    async fn falls_back_on_unreachable() {
        let a = Arc::new(ScriptedProvider::new(|_| Err(unreachable())));
        let b = Arc::new(ScriptedProvider::from_replies(vec!["ok".into()]));
        let r = Router::new(routes(vec![a.clone(), b.clone()])).unwrap();
        let routed = r
            .complete(Role::Developer, &req(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            (routed.completion.text.as_str(), routed.provider),
            ("ok", 1)
        );
        assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
    }

    #[tokio::test]
    async fn no_fallback_on_cancelled() {
        let a = Arc::new(ScriptedProvider::new(|_| Err(LlmError::Cancelled)));
        let b = Arc::new(ScriptedProvider::from_replies(vec!["ok".into()]));
        let r = Router::new(routes(vec![a.clone(), b.clone()])).unwrap();
        let err = r
            .complete(Role::Planner, &req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Cancelled), "{err}");
        assert_eq!(b.requests().len(), 0);
    }

    #[tokio::test]
    async fn all_failed_lists_both_and_single_error_is_itself() {
        let a = Arc::new(ScriptedProvider::new(|_| Err(unreachable())));
        let b = Arc::new(ScriptedProvider::new(|_| {
            Err(LlmError::Http {
                status: 503,
                body_excerpt: "busy".into(),
            })
        }));
        let r = Router::new(routes(vec![a.clone(), b])).unwrap();
        let err = r
            .complete(Role::Critic, &req(), &CancellationToken::new())
            .await
            .unwrap_err();
        match &err {
            LlmError::AllFailed(v) => assert_eq!(v.len(), 2),
            other => panic!("expected AllFailed, got {other}"),
        }
        let s = err.to_string();
        assert!(
            s.contains("scripted:script: cannot reach") && s.contains("HTTP 503"),
            "{s}"
        );

        let single = Router::uniform(a);
        let err = single
            .complete(Role::Critic, &req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn non_retryable_error_stops_the_chain() {
        let a = Arc::new(ScriptedProvider::new(|_| Err(unreachable())));
        let b = Arc::new(ScriptedProvider::new(|_| {
            Err(LlmError::BadResponse("junk".into()))
        }));
        let c = Arc::new(ScriptedProvider::from_replies(vec!["never".into()]));
        let r = Router::new(routes(vec![a, b, c.clone()])).unwrap();
        let err = r
            .complete(Role::Critic, &req(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::AllFailed(v) if v.len() == 2),
            "{err}"
        );
        assert_eq!(c.requests().len(), 0, "a bad reply must not fall through");
    }

    /// A provider that fails with the endpoint down while `down` is set.
    fn flaky(down: Arc<std::sync::atomic::AtomicBool>) -> Arc<ScriptedProvider> {
        Arc::new(ScriptedProvider::new(move |_| {
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                Err(unreachable())
            } else {
                Ok("from a".into())
            }
        }))
    }

    #[tokio::test]
    async fn the_breaker_skips_a_failing_provider_then_tries_it_again_after_the_cool_down() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let down = Arc::new(AtomicBool::new(true));
        let a = flaky(down.clone());
        let b = Arc::new(ScriptedProvider::new(|_| Ok("from b".into())));
        let r = Router::new(routes(vec![a.clone(), b.clone()]))
            .unwrap()
            .with_breaker(BreakerPolicy {
                failures: 2,
                cool_down: Duration::from_millis(300),
            });
        let cancel = CancellationToken::new();
        // Two failures in a row: each still tries `a` first.
        for _ in 0..2 {
            let got = r.complete(Role::Developer, &req(), &cancel).await.unwrap();
            assert_eq!((got.provider, got.skipped.len()), (1, 0));
        }
        assert_eq!(a.requests().len(), 2);
        // Open: `a` is skipped (by every role and by a clone of the router),
        // with the reason.
        let clone = r.clone();
        let got = clone.complete(Role::Critic, &req(), &cancel).await.unwrap();
        assert_eq!(got.completion.text, "from b");
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].provider, "scripted:script");
        let why = &got.skipped[0].reason;
        assert!(
            why.contains("failed 2 calls in a row")
                && why.contains("cannot reach")
                && why.contains("s more"),
            "{why}"
        );
        assert_eq!(a.requests().len(), 2, "a skipped provider gets no call");
        // The endpoint comes back; after the cool-down one call tries it and
        // the breaker closes.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        for _ in 0..2 {
            let got = r.complete(Role::Developer, &req(), &cancel).await.unwrap();
            assert_eq!((got.completion.text.as_str(), got.provider), ("from a", 0));
            assert!(got.skipped.is_empty());
        }
        assert_eq!(a.requests().len(), 4);
    }

    #[tokio::test]
    async fn a_failed_trial_call_reopens_the_breaker_at_once() {
        use std::sync::atomic::AtomicBool;
        let a = flaky(Arc::new(AtomicBool::new(true)));
        let b = Arc::new(ScriptedProvider::new(|_| Ok("from b".into())));
        let r = Router::new(routes(vec![a.clone(), b]))
            .unwrap()
            .with_breaker(BreakerPolicy {
                failures: 1,
                cool_down: Duration::from_millis(200),
            });
        let cancel = CancellationToken::new();
        let skips = || async {
            let got = r.complete(Role::Planner, &req(), &cancel).await.unwrap();
            got.skipped.len()
        };
        assert_eq!(skips().await, 0);
        assert_eq!(skips().await, 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Half-open: tried once, fails, open again for the next call.
        assert_eq!(skips().await, 0);
        assert_eq!(a.requests().len(), 2);
        assert_eq!(skips().await, 1);
        assert_eq!(a.requests().len(), 2);
    }

    #[tokio::test]
    async fn the_breaker_counts_only_endpoint_failures_and_never_skips_the_last_provider() {
        // Bad replies are the request's problem, not the endpoint's.
        let bad = Arc::new(ScriptedProvider::new(|_| {
            Err(LlmError::BadResponse("junk".into()))
        }));
        let b = Arc::new(ScriptedProvider::new(|_| Ok("from b".into())));
        let policy = BreakerPolicy {
            failures: 1,
            cool_down: Duration::from_secs(60),
        };
        let r = Router::new(routes(vec![bad.clone(), b]))
            .unwrap()
            .with_breaker(policy);
        let cancel = CancellationToken::new();
        for _ in 0..3 {
            assert!(r.complete(Role::Critic, &req(), &cancel).await.is_err());
        }
        assert_eq!(bad.requests().len(), 3);
        // With no fallback, an open breaker does not fail the call unseen:
        // the provider is still tried.
        let down = Arc::new(ScriptedProvider::new(|_| Err(unreachable())));
        let alone = Router::uniform(down.clone()).with_breaker(policy);
        for _ in 0..3 {
            let err = alone
                .complete(Role::Critic, &req(), &cancel)
                .await
                .unwrap_err();
            assert!(matches!(err, LlmError::Unreachable { .. }), "{err}");
        }
        assert_eq!(down.requests().len(), 3);
    }

    #[test]
    fn new_requires_every_role_and_describe_joins_chain() {
        let p: Arc<dyn Provider> = Arc::new(ScriptedProvider::from_replies(vec![]));
        let mut m = routes(vec![p.clone(), p.clone()]);
        let r = Router::new(m.clone()).unwrap();
        assert_eq!(
            r.describe(Role::Planner),
            "scripted:script -> scripted:script"
        );
        m.insert(Role::TestDesigner, vec![]);
        let err = Router::new(m).unwrap_err();
        assert!(err.to_string().contains("test_designer"), "{err}");
        assert_eq!(
            Router::uniform(p).describe(Role::Developer),
            "scripted:script"
        );
    }
}
