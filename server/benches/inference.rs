//! Local inference speed: the `local` provider against a bare llama-cpp-2 decode
//! loop on the same prompt (`cargo bench --bench inference`). Prints tokens/s per
//! phase and the ratios provider / bare; asserts nothing.
//!
//! The prompt is the loop's own developer request (`roles::code_request`) for
//! the first `DOCSMITH_BENCH_TASKS` (default 4) stubs of the dev set
//! (`../shared/bench/humaneval-dev.jsonl`; its `test` field is never read
//! into a prompt). Both sides load the same GGUF (the default model, or
//! `DOCSMITH_BENCH_MODEL=<name|path>`), use the same context parameters
//! (4096-token context, 512-token batches, the provider's default thread
//! counts) and greedy sampling, so they produce the same tokens; the bare loop
//! generates exactly as many tokens as the provider did.
//!
//! Runs are ordered provider, bare, bare, provider per stub (ABBA), after one
//! warm-up each, so slow drift of the machine falls on both sides alike.
//!
//! The bare loop is what any llama.cpp program must do at least: render the
//! chat template, tokenize, create a context, decode the prompt in 512-token
//! batches, then sample greedily and decode one token at a time. The provider
//! adds a tokio blocking-thread hand-off, the mutex, stop-sequence scanning,
//! UTF-8 assembly, cancellation checks and accounting. Where the ratio is
//! near 1.0, that overhead is noise.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use docsmith::bench::read_dataset;
use docsmith::bench::stats::quantile;
use docsmith::config::Config;
use docsmith::llm::local::{
    backend, default_threads, default_threads_batch, LocalOptions, LocalProvider,
};
use docsmith::llm::{CompletionRequest, Provider};
use docsmith::rag::Guidelines;
use docsmith::roles;
use docsmith::types::Role;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use tokio_util::sync::CancellationToken;

const N_BATCH: u32 = 512;
const N_CTX: u32 = 4096;

/// One timed generation: token counts and milliseconds per phase.
#[derive(Debug, Clone, Copy)]
struct Run {
    prompt_tokens: u32,
    completion_tokens: u32,
    /// Context creation, ms.
    setup_ms: f64,
    /// Prompt ingestion, ms.
    prompt_ms: f64,
    /// Generation, ms.
    decode_ms: f64,
    /// The whole call as its caller sees it, ms.
    total_ms: f64,
}

impl Run {
    fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prompt_ms / 1000.0)
    }
    fn gen_tps(&self) -> f64 {
        self.completion_tokens as f64 / (self.decode_ms / 1000.0)
    }
    /// Tokens (prompt + completion) per second of the whole call.
    fn e2e_tps(&self) -> f64 {
        (self.prompt_tokens + self.completion_tokens) as f64 / (self.total_ms / 1000.0)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The bare loop: the fewest llama-cpp-2 calls that produce `n_gen` greedy tokens.
fn bare(model: &LlamaModel, req: &CompletionRequest, n_gen: u32) -> Run {
    let t_total = Instant::now();
    let template = model
        .chat_template(None)
        .expect("model has a chat template");
    let msgs: Vec<LlamaChatMessage> = req
        .messages
        .iter()
        .map(|m| LlamaChatMessage::new(m.role.as_str().into(), m.content.clone()).unwrap())
        .collect();
    let prompt = model.apply_chat_template(&template, &msgs, true).unwrap();
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX))
        .with_n_batch(N_BATCH)
        .with_n_ubatch(N_BATCH)
        .with_n_threads(default_threads())
        .with_n_threads_batch(default_threads_batch());
    let t_setup = Instant::now();
    let mut ctx = model.new_context(backend().unwrap(), params).unwrap();
    let setup_ms = ms(t_setup);

    let t_prompt = Instant::now();
    let mut batch = LlamaBatch::new(N_BATCH as usize, 1);
    let chunks: Vec<_> = tokens.chunks(N_BATCH as usize).collect();
    let mut pos = 0i32;
    for (ci, chunk) in chunks.iter().enumerate() {
        batch.clear();
        for (i, t) in chunk.iter().enumerate() {
            let last = ci + 1 == chunks.len() && i + 1 == chunk.len();
            batch.add(*t, pos, &[0], last).unwrap();
            pos += 1;
        }
        ctx.decode(&mut batch).unwrap();
    }
    let prompt_ms = ms(t_prompt);

    let t_decode = Instant::now();
    let mut sampler = LlamaSampler::greedy();
    for _ in 0..n_gen {
        let tok = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(tok);
        batch.clear();
        batch.add(tok, pos, &[0], true).unwrap();
        pos += 1;
        ctx.decode(&mut batch).unwrap();
    }
    let decode_ms = ms(t_decode);
    Run {
        prompt_tokens: tokens.len() as u32,
        completion_tokens: n_gen,
        setup_ms,
        prompt_ms,
        decode_ms,
        total_ms: ms(t_total),
    }
}

async fn provider_run(p: &LocalProvider, req: &CompletionRequest) -> Run {
    let t = Instant::now();
    let c = p
        .complete(req, &CancellationToken::new())
        .await
        .expect("local completion");
    let total_ms = ms(t);
    let ph = c.phases.expect("the local provider reports phases");
    Run {
        // Only what was ingested: the provider keeps its KV cache between
        // calls, so a repeated prompt is mostly cached.
        prompt_tokens: c.prompt_tokens - ph.cached_tokens,
        completion_tokens: c.completion_tokens,
        setup_ms: ph.setup_ms,
        prompt_ms: ph.prompt_ms,
        decode_ms: ph.decode_ms,
        total_ms,
    }
}

fn requests(n: usize) -> Vec<(String, CompletionRequest)> {
    let data =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/humaneval-dev.jsonl");
    let tasks = read_dataset(&data).unwrap_or_else(|e| panic!("{e}"));
    let guide = Guidelines::builtin().for_role(Role::Developer, false);
    tasks
        .into_iter()
        .take(n)
        .map(|(t, _hidden)| {
            let view = t.stub_view(Config::default().context_tokens);
            let mut req = roles::code_request(&view, roles::CodePrompt::Guided, &guide, None);
            // Greedy on both sides; no stop sequences so both generate the same count.
            req.temperature = 0.0;
            req.stop.clear();
            req.json_schema = None;
            (t.task_id, req)
        })
        .collect()
}

/// `DOCSMITH_BENCH_MODE=batch`: aggregate generation speed of k sequences of
/// one batch (the greedy one plus k-1 sampled at temperature 0.8, top-p 0.95)
/// sharing the prompt's KV cache, for k = 1, 2, 4, 8 and 1 or 2 generation
/// threads. Prints completion tokens per second of decoding, summed over the
/// sequences, and the wall time per call; the medians choose the loop's k.
async fn batch_mode(path: &std::path::Path, name: &str, n_tasks: usize) {
    let reqs = requests(n_tasks);
    let max_tokens: u32 = std::env::var("DOCSMITH_BENCH_MAX_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!("| threads | k | task | prompt tok | cached | gen tok (all seqs) | decode ms | aggregate gen tok/s | call ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for threads in [1, 2] {
        let opts = LocalOptions {
            threads: Some(threads),
            ..LocalOptions::default()
        };
        let provider = LocalProvider::new(path.to_path_buf(), name.to_string(), opts);
        provider.load_now().expect("model loads");
        for k in [1u32, 2, 4, 8] {
            let mut tps = Vec::new();
            let mut call = Vec::new();
            for (id, req) in &reqs {
                let mut req = req.clone();
                req.max_tokens = max_tokens;
                req.samples = (k > 1).then_some(docsmith::llm::Samples {
                    n: k - 1,
                    temperature: 0.8,
                    top_p: 0.95,
                });
                let t = Instant::now();
                let c = provider
                    .complete(&req, &CancellationToken::new())
                    .await
                    .expect("local completion");
                let call_ms = ms(t);
                let ph = c.phases.expect("phases");
                let agg = c.completion_tokens as f64 / (ph.decode_ms / 1000.0);
                println!(
                    "| {threads} | {k} | {id} | {} | {} | {} | {:.0} | {agg:.1} | {call_ms:.0} |",
                    c.prompt_tokens, ph.cached_tokens, c.completion_tokens, ph.decode_ms
                );
                tps.push(agg);
                call.push(call_ms);
            }
            summary.push((
                threads,
                k,
                quantile(&tps, 0.5).unwrap_or(0.0),
                quantile(&call, 0.5).unwrap_or(0.0),
            ));
        }
    }
    println!(
        "\nmedians over {} tasks (max_tokens {max_tokens} per sequence):",
        reqs.len()
    );
    println!("| threads | k | aggregate gen tok/s | call ms |");
    println!("|---|---|---|---|");
    for (threads, k, tps, call) in summary {
        println!("| {threads} | {k} | {tps:.1} | {call:.0} |");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let name = std::env::var("DOCSMITH_BENCH_MODEL")
        .unwrap_or_else(|_| docsmith::models::DEFAULT_MODEL.to_string());
    let path = docsmith::models::resolve(&name);
    if !path.is_file() {
        eprintln!(
            "inference bench: model {} not installed at {}: run `docsmith model install {name}`",
            name,
            path.display()
        );
        return;
    }
    let n_tasks: usize = std::env::var("DOCSMITH_BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    if std::env::var("DOCSMITH_BENCH_MODE").as_deref() == Ok("batch") {
        println!("model {name} ({}), batched sequences", path.display());
        batch_mode(&path, &name, n_tasks).await;
        return;
    }
    println!(
        "model {name} ({}), threads gen={} batch={}, n_ctx={N_CTX}, n_batch={N_BATCH}",
        path.display(),
        default_threads(),
        default_threads_batch()
    );

    let provider = LocalProvider::new(path.clone(), name.clone(), LocalOptions::default());
    provider.load_now().expect("model loads");
    let model = LlamaModel::load_from_file(
        backend().unwrap(),
        &path,
        &LlamaModelParams::default().with_use_mmap(false),
    )
    .expect("model loads");

    let reqs = requests(n_tasks);
    // Warm-up: page the weights in, warm the caches.
    let w = provider_run(&provider, &reqs[0].1).await;
    bare(&model, &reqs[0].1, w.completion_tokens.min(32));

    let mut prov = Vec::new();
    let mut raw = Vec::new();
    println!(
        "\n| task | side | prompt tok | gen tok | setup ms | prompt ms | prompt tok/s | decode ms | gen tok/s | total ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row = |id: &str, side: &str, r: &Run| {
        println!(
            "| {id} | {side} | {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.2} | {:.0} |",
            r.prompt_tokens,
            r.completion_tokens,
            r.setup_ms,
            r.prompt_ms,
            r.prompt_tps(),
            r.decode_ms,
            r.gen_tps(),
            r.total_ms
        )
    };
    for (id, req) in &reqs {
        let a = provider_run(&provider, req).await;
        row(id, "provider", &a);
        let n = a.completion_tokens;
        let b1 = tokio::task::block_in_place(|| bare(&model, req, n));
        row(id, "bare", &b1);
        let b2 = tokio::task::block_in_place(|| bare(&model, req, n));
        row(id, "bare", &b2);
        let a2 = provider_run(&provider, req).await;
        row(id, "provider", &a2);
        prov.extend([a, a2]);
        raw.extend([b1, b2]);
    }
    let med = |v: &[Run], f: fn(&Run) -> f64| {
        quantile(&v.iter().map(f).collect::<Vec<_>>(), 0.5).expect("runs were made")
    };
    let p_prompt = med(&prov, Run::prompt_tps);
    let b_prompt = med(&raw, Run::prompt_tps);
    let p_gen = med(&prov, Run::gen_tps);
    let b_gen = med(&raw, Run::gen_tps);
    let p_e2e = med(&prov, Run::e2e_tps);
    let b_e2e = med(&raw, Run::e2e_tps);
    println!("\nmedians over {} runs per side:", prov.len());
    println!("| | provider | bare loop | provider / bare |");
    println!("|---|---|---|---|");
    println!(
        "| prompt tok/s | {p_prompt:.1} | {b_prompt:.1} | {:.3} |",
        p_prompt / b_prompt
    );
    println!(
        "| generation tok/s | {p_gen:.2} | {b_gen:.2} | {:.3} |",
        p_gen / b_gen
    );
    println!(
        "| whole call, (prompt + gen) tok/s | {p_e2e:.1} | {b_e2e:.1} | {:.3} |",
        p_e2e / b_e2e
    );
    println!(
        "| context setup ms | {:.1} | {:.1} | {:.3} |",
        med(&prov, |r| r.setup_ms),
        med(&raw, |r| r.setup_ms),
        med(&prov, |r| r.setup_ms) / med(&raw, |r| r.setup_ms)
    );
}
