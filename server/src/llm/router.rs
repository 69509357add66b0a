//! Routes each [`Role`] to an ordered list of providers and falls back along
//! that list when a provider fails in a way another might not
//! ([`LlmError::is_retryable_elsewhere`]).
//!
//! Owns: the role -> providers table and the fallback policy. Must not know
//! how providers are configured (the lead's `config` builds them) nor what the
//! roles ask for.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Choice, Completion, CompletionRequest, LlmError, Provider};
use crate::types::Role;

/// Every role's providers, first choice first.
#[derive(Clone)]
pub struct Router {
    routes: HashMap<Role, Vec<Arc<dyn Provider>>>,
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
        Ok(Router { routes })
    }

    /// A router that sends every role to `p` (no fallback).
    pub fn uniform(p: Arc<dyn Provider>) -> Router {
        let routes = Role::ALL.iter().map(|r| (*r, vec![p.clone()])).collect();
        Router { routes }
    }

    /// The providers for `role`, first choice first (never empty).
    pub fn providers(&self, role: Role) -> &[Arc<dyn Provider>] {
        self.routes.get(&role).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Completes `req` with `role`'s first provider, falling back to the next
    /// one while the error is [`LlmError::is_retryable_elsewhere`].
    ///
    /// Returns the completion and the index (into [`Router::providers`]) of the
    /// provider that produced it. A non-retryable error ends the chain. Errors:
    /// when only one provider was tried its error is returned as itself; when
    /// two or more failed, [`LlmError::AllFailed`] lists each (`name:model`,
    /// error); cancellation is always [`LlmError::Cancelled`].
    pub async fn complete(
        &self,
        role: Role,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<(Completion, usize), LlmError> {
        let providers = self.providers(role);
        let mut failures: Vec<(String, LlmError)> = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            match complete_all(p.as_ref(), req, cancel).await {
                Ok(c) => {
                    if !failures.is_empty() {
                        tracing::info!(role = %role, provider = %label(p.as_ref()), "fallback provider succeeded");
                    }
                    return Ok((c, i));
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
    pub async fn complete_batch(
        &self,
        items: &[(Role, CompletionRequest)],
        cancel: &CancellationToken,
    ) -> Result<Vec<(Completion, usize)>, LlmError> {
        let firsts: Vec<&Arc<dyn Provider>> = items
            .iter()
            .filter_map(|(role, _)| self.providers(*role).first())
            .collect();
        let shared =
            firsts.len() == items.len() && firsts.windows(2).all(|w| Arc::ptr_eq(w[0], w[1]));
        if shared && items.len() > 1 {
            let reqs: Vec<CompletionRequest> = items.iter().map(|(_, r)| r.clone()).collect();
            match firsts[0].complete_batch(&reqs, cancel).await {
                Ok(cs) => {
                    let mut out = Vec::with_capacity(cs.len());
                    for (c, r) in cs.into_iter().zip(&reqs) {
                        out.push((top_up(firsts[0].as_ref(), r, c, cancel).await?, 0));
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
        let (c, i) = r
            .complete(Role::Developer, &req(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!((c.text.as_str(), i), ("ok", 1));
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
