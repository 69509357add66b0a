//! In-process inference with llama.cpp (`llama-cpp-2`) on a GGUF model.
//!
//! Owns: the llama.cpp backend (initialised once per process, logs routed to
//! `tracing` so nothing reaches stdout, which carries LSP traffic), lazy model
//! loading, chat-template rendering with the model's own template, sampling
//! (greedy, temperature + seed, JSON-schema grammar), stop handling and exact
//! token accounting. Must not know where the model came from (`models`
//! installs it) nor what the prompts mean.
//!
//! One generation runs at a time per provider (a mutex), on a blocking thread
//! (`tokio::task::spawn_blocking`), in one `LlamaContext` kept for the life of
//! the model: its KV cache still holds the last prompt, so a new prompt
//! ingests only what follows their longest common prefix (system prompts and
//! stubs repeat across a task's calls). A request with
//! [`Samples`](super::Samples) decodes its extra completions as further
//! sequences of the same batches, sharing the prompt's cells (llama.cpp's
//! `examples/batched` pattern: one prompt evaluation, then one token per
//! sequence per `llama_decode`).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio_util::sync::CancellationToken;

use super::{Choice, Completion, CompletionRequest, FinishReason, LlmError, PhaseTimes, Provider};

/// The fix named by [`LlmError::ModelMissing`] for a missing GGUF file.
pub const MODEL_MISSING_FIX: &str = "run `docsmith model install` or set DOCSMITH_MODEL_PATH";

/// Tokens decoded per `llama_decode` call while ingesting the prompt.
const N_BATCH: u32 = 512;

/// Options for [`LocalProvider`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Context window in tokens, shared by the prompt and every sequence's
    /// completion of one request. Default 8192.
    pub n_ctx: u32,
    /// Most sequences decoded together for one request (1 + extra samples).
    /// Default 8.
    pub max_sequences: u32,
    /// Threads used for generation; `None` means [`default_threads`].
    pub threads: Option<i32>,
    /// Threads used for prompt ingestion; `None` means the same as generation.
    pub threads_batch: Option<i32>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            n_ctx: 8192,
            max_sequences: 8,
            threads: None,
            threads_batch: None,
        }
    }
}

/// Default generation thread count: 1 on machines with up to 2 cores, otherwise
/// half the cores (at most 8).
///
/// Measured on a 2-core machine with Qwen2.5-Coder-0.5B Q4_K_M, greedy, 128
/// generated tokens, two runs each:
///
/// | threads | idle machine | while `yes > /dev/null` runs |
/// |---------|--------------|------------------------------|
/// | 1       | 27-29 tok/s  | 25-28 tok/s                  |
/// | 2       | 38-45 tok/s  | 7.6-10.5 tok/s               |
///
/// llama.cpp's threads wait on each other every token, so one busy neighbour
/// (the sandbox running tests, a compiler, the editor) makes the second thread
/// a 3x loss while its gain on an idle machine is 1.5x. A fresh 4096-token
/// context costs 28-58 ms per request, small next to generation.
pub fn default_threads() -> i32 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i32;
    if cores <= 2 {
        1
    } else {
        (cores / 2).min(8)
    }
}

/// Prompt-processing threads by default: every core. Prompt evaluation is one
/// large batch per 512 tokens, so the per-token thread synchronisation that makes
/// a second generation thread fragile on a busy 2-core machine costs little here.
pub fn default_threads_batch() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8) as i32
}

/// The process-wide llama.cpp backend, initialised on first use. Logs go to
/// `tracing` (never stdout). llama.cpp allows one backend per process, so code
/// that drives `llama-cpp-2` directly beside a provider (the inference
/// benchmark's bare decode loop) must take it from here.
///
/// Errors: [`LlmError::Config`] when llama.cpp cannot initialise.
pub fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Config(format!("cannot initialise llama.cpp: {e}")))
}

/// A loaded model and the chat template it carries. Boxed inside [`Engine`]
/// so its address is stable: the engine's context borrows it.
struct Loaded {
    path: PathBuf,
    model: LlamaModel,
    template: LlamaChatTemplate,
}

/// One loaded model with its persistent context.
///
/// Field order matters: `session` borrows `*loaded` and is declared first, so
/// it is dropped first.
struct Engine {
    session: Option<Session>,
    loaded: Box<Loaded>,
}

/// A llama.cpp context kept between requests, and what its KV cache holds.
struct Session {
    /// SAFETY: really borrows `Engine::loaded.model` (boxed, never moved or
    /// dropped while this lives, see [`Engine`]); `'static` only because Rust
    /// cannot name a borrow of a sibling field.
    ctx: LlamaContext<'static>,
    /// The tokens whose keys and values sequence 0 holds, from position 0.
    /// A new prompt re-ingests only what follows its longest common prefix
    /// with these.
    cached: Vec<LlamaToken>,
}

/// A [`Provider`] running a GGUF model in this process. Name `local`.
///
/// Lazy: nothing is read until the first [`Provider::complete`] or
/// [`LocalProvider::load_now`], so commands that never generate never load a model.
pub struct LocalProvider {
    path: PathBuf,
    model_name: String,
    opts: LocalOptions,
    /// The loaded model and its context; the mutex also serialises generations.
    state: Arc<Mutex<Option<Engine>>>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("path", &self.path)
            .field("model", &self.model_name)
            .field("opts", &self.opts)
            .finish()
    }
}

impl LocalProvider {
    /// A provider for the GGUF file at `path`, reported as model `model_name`.
    /// Loads nothing; a missing file surfaces as [`LlmError::ModelMissing`] at first use.
    pub fn new(path: PathBuf, model_name: String, opts: LocalOptions) -> LocalProvider {
        LocalProvider {
            path,
            model_name,
            opts,
            state: Arc::new(Mutex::new(None)),
        }
    }

    /// Loads the model now (idempotent).
    ///
    /// Errors: [`LlmError::ModelMissing`] when the file does not exist,
    /// [`LlmError::ModelLoad`] when llama.cpp rejects it.
    pub fn load_now(&self) -> Result<(), LlmError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        ensure_loaded(&mut state, &self.path).map(|_| ())
    }
}

/// Loads the model into `state` unless it is there already.
fn ensure_loaded<'s>(
    state: &'s mut Option<Engine>,
    path: &PathBuf,
) -> Result<&'s mut Engine, LlmError> {
    if state.is_none() {
        if !path.is_file() {
            return Err(LlmError::ModelMissing {
                path: path.clone(),
                fix: MODEL_MISSING_FIX.to_string(),
            });
        }
        let backend = backend()?;
        let start = Instant::now();
        let params = LlamaModelParams::default();
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            LlmError::ModelLoad {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        let template = match model.chat_template(None) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "model has no chat template; using chatml");
                LlamaChatTemplate::new("chatml").expect("static name has no NUL")
            }
        };
        tracing::info!(path = %path.display(), ms = start.elapsed().as_millis() as u64, "loaded local model");
        *state = Some(Engine {
            session: None,
            loaded: Box::new(Loaded {
                path: path.clone(),
                model,
                template,
            }),
        });
    }
    Ok(state.as_mut().expect("just loaded"))
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.model_name
    }

    async fn complete(
        &self,
        req: &CompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError> {
        let start = Instant::now();
        // Cancelled by the caller, or by dropping this future (the guard).
        let token = cancel.child_token();
        let _guard = token.clone().drop_guard();
        let state = self.state.clone();
        let path = self.path.clone();
        let opts = self.opts.clone();
        let req2 = req.clone();
        let mut out = tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if token.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            let engine = ensure_loaded(&mut state, &path)?;
            let result = generate(engine, &opts, &req2, &token);
            if result.is_err() {
                // The KV cache may hold half a batch: start the next request clean.
                if let Some(s) = engine.session.as_mut() {
                    s.ctx.clear_kv_cache();
                    s.cached.clear();
                }
            }
            result
        })
        .await
        .map_err(|e| LlmError::BadResponse(format!("local generation thread failed: {e}")))??;
        let first = out.choices.remove(0);
        let completion_tokens =
            first.completion_tokens + out.choices.iter().map(|c| c.completion_tokens).sum::<u32>();
        Ok(Completion {
            text: first.text,
            prompt_tokens: out.prompt_tokens,
            completion_tokens,
            latency_ms: start.elapsed().as_millis() as u64,
            provider: "local".to_string(),
            model: self.model_name.clone(),
            finish_reason: first.finish_reason,
            alternatives: out.choices,
            phases: Some(out.phases),
        })
    }
}

/// What one generation produced: one choice per sequence, sequence 0 first.
struct Generated {
    choices: Vec<Choice>,
    prompt_tokens: u32,
    phases: PhaseTimes,
}

/// Renders `req.messages` with the model's chat template, assistant turn opened.
fn render_prompt(loaded: &Loaded, req: &CompletionRequest) -> Result<String, LlmError> {
    let msgs = req
        .messages
        .iter()
        .map(|m| LlamaChatMessage::new(m.role.as_str().to_string(), m.content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LlmError::Config(format!("chat message is not representable: {e}")))?;
    loaded
        .model
        .apply_chat_template(&loaded.template, &msgs, true)
        .map_err(|e| LlmError::Config(format!("cannot apply the model's chat template: {e}")))
}

/// The JSON-schema grammar sampler for a request, when it has a schema and
/// llama.cpp accepts the grammar (otherwise sampling is unconstrained, with a warning).
fn build_grammar(model: &LlamaModel, req: &CompletionRequest) -> Option<LlamaSampler> {
    let schema = req.json_schema.as_ref()?;
    let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| e.to_string())
        .and_then(|g| LlamaSampler::grammar(model, &g, "root").map_err(|e| e.to_string()));
    match grammar {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "JSON schema grammar rejected; sampling unconstrained");
            None
        }
    }
}

/// Top-k applied before top-p and temperature on sampled sequences, so the
/// sort behind top-p sees 40 tokens instead of the whole vocabulary (about
/// 150k for Qwen2.5). llama.cpp's own default (`common_params_sampling::top_k`).
const SAMPLED_TOP_K: i32 = 40;

/// Greedy, or temperature + dist(seed) for sequence 0 (the request's own
/// settings); top-k, top-p, temperature and dist(seed + seq) for the samples.
fn build_sampler(req: &CompletionRequest, seq: u32) -> LlamaSampler {
    match (seq, req.samples) {
        (0, _) | (_, None) => {
            if req.temperature <= 0.0 {
                LlamaSampler::greedy()
            } else {
                LlamaSampler::chain_simple([
                    LlamaSampler::temp(req.temperature),
                    LlamaSampler::dist(req.seed),
                ])
            }
        }
        (s, Some(samples)) => LlamaSampler::chain_simple([
            LlamaSampler::top_k(SAMPLED_TOP_K),
            LlamaSampler::top_p(samples.top_p.clamp(0.01, 1.0), 1),
            LlamaSampler::temp(samples.temperature.max(0.01)),
            LlamaSampler::dist(req.seed.wrapping_add(s)),
        ]),
    }
}

/// Samples the next token at batch index `idx`. With a grammar, the unconstrained
/// choice is tried first and checked against the grammar alone (one token); only
/// when the grammar rejects it is the grammar applied to the whole vocabulary
/// (about 150k tokens for Qwen2.5) and the choice made again. This is the
/// resampling shortcut llama.cpp's own `common_sampler_sample` uses; most tokens
/// take the fast path, so grammar-constrained output costs little more than free text.
fn sample_next(
    ctx: &llama_cpp_2::context::LlamaContext<'_>,
    idx: i32,
    base: &mut LlamaSampler,
    grammar: Option<&mut LlamaSampler>,
    eos: LlamaToken,
) -> LlamaToken {
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    let Some(g) = grammar else {
        return base.sample(ctx, idx);
    };
    let mut all = ctx.token_data_array_ith(idx);
    let mut probe = all.clone();
    base.apply(&mut probe);
    let first = probe.selected_token();
    let tok = match first {
        Some(t) => {
            let mut single =
                LlamaTokenDataArray::new(vec![LlamaTokenData::new(t, 1.0, 0.0)], false);
            g.apply(&mut single);
            if single.data.first().is_some_and(|d| d.logit().is_finite()) {
                Some(t)
            } else {
                None
            }
        }
        None => None,
    };
    let tok = match tok {
        Some(t) => t,
        None => {
            g.apply(&mut all);
            base.apply(&mut all);
            all.selected_token().unwrap_or(eos)
        }
    };
    g.accept(tok);
    base.accept(tok);
    tok
}

/// The byte offset of the earliest stop sequence occurring in `text` at or after
/// `from` (stops may start before `from` if they end after it), if any.
fn find_stop(text: &[u8], stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = s.as_bytes();
            let begin = from.saturating_sub(s.len() - 1);
            text.get(begin..)?
                .windows(s.len())
                .position(|w| w == s)
                .map(|p| p + begin)
        })
        .min()
}

/// Length of the longest common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One sequence being decoded in the batch.
struct Seq {
    id: i32,
    sampler: LlamaSampler,
    grammar: Option<LlamaSampler>,
    bytes: Vec<u8>,
    completion_tokens: u32,
    /// The token sampled last and not yet decoded.
    next: Option<LlamaToken>,
    /// Index of this sequence's logits in the last decoded batch.
    logits_at: i32,
    finish: Option<FinishReason>,
}

/// Creates the engine's persistent context when it has none.
fn ensure_session(engine: &mut Engine, opts: &LocalOptions) -> Result<f64, LlmError> {
    if engine.session.is_some() {
        return Ok(0.0);
    }
    let t_ctx = Instant::now();
    let threads = opts.threads.unwrap_or_else(default_threads).max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(opts.n_ctx))
        .with_n_batch(N_BATCH)
        .with_n_ubatch(N_BATCH)
        .with_n_seq_max(opts.max_sequences.max(1))
        // One pool of KV cells shared by every sequence: copying the prompt
        // to another sequence only tags its cells, and each sequence may use
        // as much of the context as the others leave free.
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(
            opts.threads_batch
                .unwrap_or_else(default_threads_batch)
                .max(1),
        );
    let backend = backend()?;
    let loaded: &Loaded = &engine.loaded;
    let ctx = loaded
        .model
        .new_context(backend, params)
        .map_err(|e| LlmError::ModelLoad {
            path: loaded.path.clone(),
            message: format!("cannot create a context of {} tokens: {e}", opts.n_ctx),
        })?;
    // SAFETY: see `Session::ctx`: the model is boxed in the engine, which drops
    // the session before it.
    let ctx: LlamaContext<'static> = unsafe { std::mem::transmute(ctx) };
    engine.session = Some(Session {
        ctx,
        cached: Vec::new(),
    });
    let ms = ms_since(t_ctx);
    tracing::debug!(ms, n_ctx = opts.n_ctx, "created llama context");
    Ok(ms)
}

/// Runs one request on `engine`: sequence 0 with the request's own sampling,
/// plus `req.samples.n` sampled sequences in the same batches. Blocking;
/// checks `cancel` before every decode.
fn generate(
    engine: &mut Engine,
    opts: &LocalOptions,
    req: &CompletionRequest,
    cancel: &CancellationToken,
) -> Result<Generated, LlmError> {
    let setup_ms = ensure_session(engine, opts)?;
    let loaded: &Loaded = &engine.loaded;
    let session = engine.session.as_mut().expect("session exists");
    let model = &loaded.model;
    let vocab = model.vocab();
    let prompt = render_prompt(loaded, req)?;
    let mut tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    // A template that writes its own BOS plus add_special would double it.
    if tokens.len() >= 2 && tokens[0] == vocab.bos() && tokens[1] == vocab.bos() {
        tokens.remove(0);
    }
    let prompt_tokens = tokens.len() as u32;
    if prompt_tokens == 0 {
        return Err(LlmError::Config("empty prompt".to_string()));
    }
    let room = |n: u32| prompt_tokens as u64 + n as u64 * req.max_tokens as u64;
    if room(1) > opts.n_ctx as u64 {
        return Err(LlmError::ContextOverflow {
            prompt_tokens,
            n_ctx: opts.n_ctx,
        });
    }
    // As many sequences as asked for, the sequence limit and the context allow.
    let mut n_seq = req.n_choices().min(opts.max_sequences.max(1));
    while n_seq > 1 && room(n_seq) > opts.n_ctx as u64 {
        n_seq -= 1;
    }
    if n_seq < req.n_choices() {
        tracing::warn!(
            asked = req.n_choices(),
            decoded = n_seq,
            n_ctx = opts.n_ctx,
            max_sequences = opts.max_sequences,
            "fewer sequences than asked for fit the context"
        );
    }

    let ctx = &mut session.ctx;

    // Reuse the cached prefix; at least the last prompt token is decoded again
    // so its logits exist.
    let reuse = common_prefix(&session.cached, &tokens).min(tokens.len() - 1);
    ctx.clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
        .map_err(|e| LlmError::BadResponse(format!("KV cache: {e}")))?;
    for s in 1..opts.max_sequences.max(1) {
        ctx.clear_kv_cache_seq(Some(s), None, None)
            .map_err(|e| LlmError::BadResponse(format!("KV cache: {e}")))?;
    }
    session.cached.truncate(reuse);

    let t_prompt = Instant::now();
    let decode_err = |e: llama_cpp_2::DecodeError| {
        LlmError::BadResponse(format!("llama.cpp decode failed: {e}"))
    };
    let mut batch = LlamaBatch::new(N_BATCH as usize, n_seq as i32);
    let fresh = &tokens[reuse..];
    let chunks: Vec<&[LlamaToken]> = fresh.chunks(N_BATCH as usize).collect();
    let mut pos = reuse as i32;
    for (ci, chunk) in chunks.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        batch.clear();
        let last_chunk = ci + 1 == chunks.len();
        for (i, t) in chunk.iter().enumerate() {
            let logits = last_chunk && i + 1 == chunk.len();
            batch
                .add(*t, pos, &[0], logits)
                .map_err(|e| LlmError::BadResponse(e.to_string()))?;
            pos += 1;
        }
        ctx.decode(&mut batch).map_err(decode_err)?;
        session.cached.extend_from_slice(chunk);
    }
    let prompt_ms = ms_since(t_prompt);
    // The other sequences start from the same prompt cells.
    for s in 1..n_seq as i32 {
        ctx.kv_cache_seq_cp(0, s, None, None)
            .map_err(|e| LlmError::BadResponse(format!("KV cache: {e}")))?;
    }

    let t_decode = Instant::now();
    let first_logits = batch.n_tokens() - 1;
    let mut seqs: Vec<Seq> = (0..n_seq)
        .map(|s| Seq {
            id: s as i32,
            sampler: build_sampler(req, s),
            grammar: build_grammar(model, req),
            bytes: Vec::new(),
            completion_tokens: 0,
            next: None,
            logits_at: first_logits,
            finish: None,
        })
        .collect();
    loop {
        if cancel.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        // Sample every live sequence from its logits of the last decode.
        for seq in seqs.iter_mut().filter(|s| s.finish.is_none()) {
            if seq.completion_tokens >= req.max_tokens {
                seq.finish = Some(FinishReason::Length);
                continue;
            }
            let tok = sample_next(
                ctx,
                seq.logits_at,
                &mut seq.sampler,
                seq.grammar.as_mut(),
                vocab.eos(),
            );
            seq.completion_tokens += 1;
            if vocab.is_eog(tok) {
                seq.finish = Some(FinishReason::Stop);
                continue;
            }
            let before = seq.bytes.len();
            vocab.token_to_piece_into(tok, &mut seq.bytes, false, None);
            if let Some(at) = find_stop(&seq.bytes, &req.stop, before) {
                seq.bytes.truncate(at);
                seq.finish = Some(FinishReason::StopSequence);
                continue;
            }
            seq.next = Some(tok);
        }
        if seqs.iter().all(|s| s.finish.is_some()) {
            break;
        }
        // One token per live sequence, all at the same position.
        batch.clear();
        for seq in seqs.iter_mut().filter(|s| s.finish.is_none()) {
            let tok = seq.next.take().expect("a live sequence has a next token");
            seq.logits_at = batch.n_tokens();
            batch
                .add(tok, pos, &[seq.id], true)
                .map_err(|e| LlmError::BadResponse(e.to_string()))?;
            if seq.id == 0 {
                session.cached.push(tok);
            }
        }
        pos += 1;
        ctx.decode(&mut batch).map_err(decode_err)?;
    }
    // Keep only sequence 0 (prompt + its completion) for the next prefix match.
    for s in 1..n_seq {
        ctx.clear_kv_cache_seq(Some(s), None, None)
            .map_err(|e| LlmError::BadResponse(format!("KV cache: {e}")))?;
    }
    let choices = seqs
        .into_iter()
        .map(|s| {
            // Bytes were accumulated across tokens, so characters split between
            // tokens decode whole; only a truncated final character is replaced.
            let (text, _) = encoding_rs::UTF_8.decode_without_bom_handling(&s.bytes);
            Choice {
                text: text.into_owned(),
                completion_tokens: s.completion_tokens,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
            }
        })
        .collect();
    Ok(Generated {
        choices,
        prompt_tokens,
        phases: PhaseTimes {
            setup_ms,
            prompt_ms,
            decode_ms: ms_since(t_decode),
            cached_tokens: reuse as u32,
        },
    })
}

/// Milliseconds since `t`, with sub-millisecond precision.
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    const INSTALL_HINT: &str = "the real-model tests need Qwen2.5-Coder-0.5B-Instruct Q4_K_M at \
        ~/.cache/docsmith/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (or DOCSMITH_TEST_MODEL=<path>); \
        install it with `docsmith model install` or copy the GGUF there";

    fn test_model_path() -> PathBuf {
        if let Ok(p) = std::env::var("DOCSMITH_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let home = std::env::var("HOME").expect("HOME is set");
        PathBuf::from(home).join(".cache/docsmith/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    }

    /// One provider shared by the tests (one load; generations serialise on its mutex).
    fn provider() -> &'static LocalProvider {
        static P: OnceLock<LocalProvider> = OnceLock::new();
        P.get_or_init(|| {
            let path = test_model_path();
            assert!(path.is_file(), "missing {}: {INSTALL_HINT}", path.display());
            let p = LocalProvider::new(path, "qwen2.5-coder-0.5b".into(), LocalOptions::default());
            p.load_now().expect("test model loads");
            p
        })
    }

    fn ask(q: &str, max_tokens: u32) -> CompletionRequest {
        let mut r = CompletionRequest::new(vec![
            ChatMessage::system("You are a helpful Python programmer."),
            ChatMessage::user(q),
        ]);
        r.max_tokens = max_tokens;
        r
    }

    #[test]
    fn find_stop_spans_token_boundaries() {
        let stops = vec!["```".to_string(), "END".to_string()];
        assert_eq!(find_stop(b"abc``", &stops, 3), None);
        assert_eq!(find_stop(b"abc```x", &stops, 5), Some(3));
        assert_eq!(find_stop(b"xEND``` ", &stops, 0), Some(1));
        assert_eq!(find_stop(b"abc", &[String::new()], 0), None);
    }

    #[test]
    fn default_threads_is_positive() {
        assert!(default_threads() >= 1);
    }

    #[tokio::test]
    async fn missing_model_names_path_and_install_command() {
        let p = LocalProvider::new(
            "/nonexistent/x.gguf".into(),
            "x".into(),
            LocalOptions::default(),
        );
        let err = p
            .complete(&ask("hi", 4), &CancellationToken::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LlmError::ModelMissing { .. }), "{msg}");
        assert!(
            msg.contains("/nonexistent/x.gguf") && msg.contains("docsmith model install"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn corrupt_model_is_model_load() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"GGUF this is not a model").unwrap();
        let p = LocalProvider::new(f.path().to_path_buf(), "x".into(), LocalOptions::default());
        let err = p.load_now().unwrap_err();
        assert!(matches!(err, LlmError::ModelLoad { .. }), "{err}");
    }

    #[tokio::test]
    async fn real_model_writes_python() {
        let c = provider()
            .complete(
                &ask(
                    "Write a Python function add(a, b) that returns their sum.",
                    200,
                ),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(c.text.contains("def add"), "{}", c.text);
        assert_eq!(c.finish_reason, FinishReason::Stop, "{}", c.text);
        assert!(c.prompt_tokens > 10 && c.completion_tokens > 5, "{c:?}");
        let ph = c.phases.expect("local reports phase times");
        assert!(
            ph.prompt_ms > 0.0
                && ph.decode_ms > 0.0
                && ph.setup_ms + ph.prompt_ms + ph.decode_ms <= c.latency_ms as f64 + 1.0,
            "{ph:?} vs {} ms",
            c.latency_ms
        );
        assert_eq!(
            (c.provider.as_str(), c.model.as_str()),
            ("local", "qwen2.5-coder-0.5b")
        );
    }

    #[tokio::test]
    async fn real_model_follows_json_schema() {
        let mut r = ask(
            "Plan a Python function that reverses a string. Reply with a plan and your assumptions.",
            300,
        );
        r.json_schema = Some(serde_json::json!({
            "type": "object",
            "properties": {
                "plan": {"type": "string"},
                "assumptions": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["plan", "assumptions"],
            "additionalProperties": false
        }));
        let c = provider()
            .complete(&r, &CancellationToken::new())
            .await
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{e}: {}", c.text));
        assert!(v["plan"].is_string() && v["assumptions"].is_array(), "{v}");
    }

    #[tokio::test]
    async fn real_model_stop_sequence_and_length() {
        let mut r = ask(
            "Write a Python function add(a, b) that returns their sum.",
            200,
        );
        r.stop = vec!["return".to_string()];
        let c = provider()
            .complete(&r, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(c.finish_reason, FinishReason::StopSequence, "{}", c.text);
        assert!(
            c.text.contains("def add") && !c.text.contains("return"),
            "{}",
            c.text
        );

        let r = ask("Write a long essay about Python.", 7);
        let c = provider()
            .complete(&r, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            (c.finish_reason, c.completion_tokens),
            (FinishReason::Length, 7),
            "{}",
            c.text
        );
    }

    #[tokio::test]
    async fn real_model_cancel_and_overflow() {
        let tok = CancellationToken::new();
        tok.cancel();
        let err = provider().complete(&ask("hi", 50), &tok).await.unwrap_err();
        assert!(matches!(err, LlmError::Cancelled), "{err}");

        // Cancel mid-generation: must stop well before max_tokens.
        let tok = CancellationToken::new();
        let t2 = tok.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            t2.cancel();
        });
        let start = Instant::now();
        let err = provider()
            .complete(&ask("Write a long essay about Python.", 3000), &tok)
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Cancelled), "{err}");
        assert!(
            start.elapsed().as_secs() < 20,
            "cancel took {:?}",
            start.elapsed()
        );

        let r = ask("hi", 8190);
        let err = provider()
            .complete(&r, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LlmError::ContextOverflow { n_ctx: 8192, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn real_model_keeps_multibyte_characters() {
        let mut r = ask(
            "Reply with exactly this text and nothing else: héllo wörld ✓ 日本語",
            40,
        );
        r.stop = vec![];
        let c = provider()
            .complete(&r, &CancellationToken::new())
            .await
            .unwrap();
        assert!(!c.text.contains('\u{FFFD}'), "{}", c.text);
        assert!(
            c.text.contains("日本") || c.text.contains('ö'),
            "{}",
            c.text
        );
    }
}
