//! `docsmith bench`: the loop against a single shot on HumanEval-format data,
//! scored by tests the loop never sees.
//!
//! Owns: reading records (the hidden `test` is split off at parse time and only
//! ever reaches [`score`]), running each task in a fresh temporary workspace in
//! `single` and/or `loop` mode, scoring once in the sandbox, one JSON line per
//! task and mode, and the summary (see `report`). Drives `pipeline::TaskRun`
//! exactly as `docsmith generate --yes` does (questions: the planner's
//! assumptions; review: accept).

pub mod report;
pub mod stats;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProviderConfig};
use crate::llm::Router;
use crate::pipeline::{Deps, Event, Pause, Reply, Target, TaskRun, TaskSpec};
use crate::python;
use crate::rag::Guidelines;
use crate::roles::{self, StubView};
use crate::runtime;
use crate::sandbox::Sandbox;
use crate::store::TaskKind;
use crate::types::Role;

/// What the loop may see of a record: no `test` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchTask {
    /// The record's id, e.g. `HumanEval/0`.
    pub task_id: String,
    /// The stub: imports, signature and docstring (written to `task.py`).
    pub prompt: String,
    /// The function to generate and to score.
    pub entry_point: String,
}

impl BenchTask {
    /// The stub as the developer role sees it: the entry point's source (empty
    /// when the prompt lacks it), the prompt's imports and, as the loop gets
    /// it (`python::context::gather`, same budget), the outlines of the
    /// prompt's other functions within `context_tokens` (the configured
    /// budget), so the single call is as informed as the loop.
    pub fn stub_view(&self, context_tokens: usize) -> StubView {
        let f = python::find_function(&self.prompt, &self.entry_point).ok();
        let context = f
            .as_ref()
            .map(|f| {
                python::context::gather(&self.prompt, f, None, context_tokens)
                    .context
                    .text
            })
            .unwrap_or_default();
        StubView {
            head: f
                .as_ref()
                .map(|f| python::function_head(&self.prompt, f))
                .unwrap_or_default(),
            name: self.entry_point.clone(),
            source: python::function_source(&self.prompt, &self.entry_point).unwrap_or_default(),
            imports: python::module_imports(&self.prompt),
            context,
            enclosing: None,
            memory: String::new(),
        }
    }
}

/// The record's hidden test (`def check(candidate): ...`), used only by [`score`].
#[derive(Debug, Clone)]
pub struct HiddenTest(String);

/// Reads a HumanEval-format JSONL file into tasks and their hidden tests.
/// Errors name the line and the missing field.
pub fn read_dataset(path: &Path) -> Result<Vec<(BenchTask, HiddenTest)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), i + 1))?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{}:{}: no string field `{k}`", path.display(), i + 1))
        };
        out.push((
            BenchTask {
                task_id: field("task_id")?,
                prompt: field("prompt")?,
                entry_point: field("entry_point")?,
            },
            HiddenTest(field("test")?),
        ));
    }
    Ok(out)
}

/// `single`: one greedy developer call, no plan, tests or critique. `loop`: the full pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One greedy developer call with the loop's first-attempt prompt.
    Single,
    /// The full pipeline, as `docsmith generate --yes`.
    Loop,
    /// Both, on each task, in the same run.
    Both,
}

impl Mode {
    /// The row modes this choice runs, in order (`single` before `loop`).
    pub fn rows(self) -> &'static [&'static str] {
        match self {
            Mode::Single => &["single"],
            Mode::Loop => &["loop"],
            Mode::Both => &["single", "loop"],
        }
    }
}

/// One task run in one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub task_id: String,
    /// `single` or `loop`.
    pub mode: String,
    /// The hidden tests passed.
    pub passed: bool,
    /// Code attempts made (1 for `single`).
    pub attempts: u32,
    /// Model calls made (all roles).
    pub llm_calls: u32,
    /// Prompt tokens over all calls.
    pub prompt_tokens: u64,
    /// Completion tokens over all calls.
    pub completion_tokens: u64,
    /// Wall time of generation (not scoring), ms.
    pub wall_ms: u64,
    /// Time spent in each stage, ms (loop mode).
    #[serde(default)]
    pub stage_ms: std::collections::BTreeMap<String, u64>,
    /// Generated tests the loop dropped as wrong (count).
    pub dropped_tests: usize,
    /// `accepted` (the loop's own tests passed), `failing` (best attempt offered failing), `failed` (error), `single`.
    pub loop_status: String,
    /// Why the loop's proposal was failing, or the error.
    #[serde(default)]
    pub reason: Option<String>,
    /// Tail of the scorer's output when the hidden tests failed.
    #[serde(default)]
    pub score_error: Option<String>,
    /// The code that was scored (the whole stub file with the function filled in).
    #[serde(default)]
    pub final_code: String,
    /// Rounds of candidates the loop made (1 + repair rounds).
    #[serde(default)]
    pub rounds: u32,
    /// Why the loop chose its proposal (the selection's reason).
    #[serde(default)]
    pub chosen_because: Option<String>,
    /// Every distinct candidate the loop made, scored against the hidden
    /// tests *after* the run (the loop never sees these scores): shows
    /// whether a task was lost by generation (no candidate passes) or by
    /// selection (one passes but another was chosen).
    #[serde(default)]
    pub candidates: Vec<CandidateScore>,
}

/// One loop candidate scored against the hidden tests after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// The candidate's number in the task.
    pub n: u32,
    /// The round that produced it.
    pub round: u32,
    /// Samples that produced this code.
    pub weight: u32,
    /// The greedy sample is among them.
    pub greedy: bool,
    /// The hidden tests pass.
    pub passed: bool,
}

/// Options of `docsmith bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// HumanEval-format JSONL (`task_id`, `prompt`, `entry_point`, `test`).
    pub dataset: PathBuf,
    /// Which modes to run on each task.
    pub mode: Mode,
    /// Only the first N tasks (after `tasks`).
    pub limit: Option<usize>,
    /// Only these task ids.
    pub tasks: Option<Vec<String>>,
    /// Local model name or GGUF path, overriding the local provider's model.
    pub model: Option<String>,
    /// Task/mode pairs run at once (at least 1). Each job gets its own router,
    /// so with the local provider each loads its own copy of the model (about
    /// 1.1 GB for the default 1.5B Q4_K_M) and generations of different jobs
    /// run in parallel; unless configured, each local model then uses
    /// `cores / jobs` threads for generation and for prompt ingestion.
    pub jobs: usize,
    /// Output folder: `results.jsonl`, `command.txt` (and the caller's `summary.md`, charts).
    pub out: PathBuf,
    /// Keep the rows already in `out/results.jsonl` and skip their task/mode pairs.
    pub resume: bool,
    /// One store (this SQLite file) for every loop task, so a later task sees
    /// what earlier ones remembered (workspace memory: the loop's own fixed
    /// failures; a bench gives no feedback, and the hidden tests never reach
    /// the store). `None`: a fresh store per task, as before.
    pub memory_store: Option<PathBuf>,
    /// The command line, written to `command.txt`.
    pub command_line: String,
}

/// The command line as a shell can rerun it, for `command.txt` and the summary:
/// the environment variables in `env` that configured the run, sorted, as
/// `NAME=value`, before `args`, each word shell-quoted where needed. A run
/// configured by the environment (say `DOCSMITH_MAX_REFINEMENTS=0`) is otherwise
/// not reproducible from its record. Which variables count is decided by
/// [`Config::apply_env`] itself: those it reads and finds set. It never reads an
/// API key (keys are read at request time from the variable an `api_key_env`
/// names), so no key is written to the results.
pub fn command_line(args: &[String], env: &[(String, String)]) -> String {
    let used = std::cell::RefCell::new(Vec::new());
    // Only the names matter here; `config_for` reports a bad value.
    let _ = Config::default().apply_env(|k| {
        let v = env
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())?;
        if !v.trim().is_empty() {
            used.borrow_mut().push((k.to_string(), v.clone()));
        }
        Some(v)
    });
    let mut vars = used.into_inner();
    vars.sort();
    vars.dedup();
    let quote = |w: &str| shlex::try_quote(w).map_or_else(|_| format!("{w:?}"), |q| q.into_owned());
    vars.iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn config_for(model: Option<&str>, jobs: usize) -> Result<Config, String> {
    let mut cfg = Config::default();
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    if let Some(m) = model {
        if let Some(ProviderConfig::Local(l)) = cfg.providers.get_mut("local") {
            if m.ends_with(".gguf") || m.contains('/') {
                l.path = Some(PathBuf::from(m));
            } else {
                l.model = m.to_string();
            }
        }
    }
    if jobs > 1 {
        // Parallel jobs share the cores: threads that wait on each other every
        // token collapse when a neighbour is busy (see `default_threads`).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = (cores / jobs).max(1) as i32;
        for p in cfg.providers.values_mut() {
            if let ProviderConfig::Local(l) = p {
                l.threads.get_or_insert(share);
                l.threads_batch.get_or_insert(share);
            }
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Runs the benchmark; returns the rows of this run (resumed rows included).
pub async fn run(opts: &BenchOptions) -> Result<Vec<Row>, String> {
    let mut data = read_dataset(&opts.dataset)?;
    if let Some(ids) = &opts.tasks {
        data.retain(|(t, _)| ids.contains(&t.task_id));
    }
    if let Some(n) = opts.limit {
        data.truncate(n);
    }
    if data.is_empty() {
        return Err(format!(
            "no tasks selected from {} (check --tasks and --limit)",
            opts.dataset.display()
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    std::fs::write(
        opts.out.join("command.txt"),
        format!("{}\n", opts.command_line),
    )
    .map_err(|e| e.to_string())?;
    let results = opts.out.join("results.jsonl");
    let previous = if opts.resume {
        load_rows(&results)?
    } else {
        let _ = std::fs::remove_file(&results);
        Vec::new()
    };
    let (mut rows, todo) = plan_runs(&data, opts.mode, previous);
    let jobs = opts.jobs.max(1);
    let cfg = config_for(opts.model.as_deref(), jobs)?;
    // One router per job: a local provider serialises its generations, so jobs
    // sharing one would only overlap their sandbox time.
    let mut routers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        routers.push(Arc::new(runtime::router(&cfg).map_err(|e| e.to_string())?));
    }
    let routers = Arc::new(std::sync::Mutex::new(routers));
    let sandbox = Arc::new(runtime::sandbox(&cfg).map_err(|e| e.to_string())?);
    let shared = match &opts.memory_store {
        Some(p) => Some(Arc::new(
            crate::store::Store::open(p).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .expect("valid template"),
    );
    let file = std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .map_err(|e| e.to_string())?,
    );
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut handles = Vec::new();
    let file = Arc::new(file);
    for (task, hidden, mode) in todo.into_iter().map(|(t, h, m)| (t.clone(), h.clone(), m)) {
        let (routers, sandbox, cfg, sem, bar, file, shared) = (
            routers.clone(),
            sandbox.clone(),
            cfg.clone(),
            sem.clone(),
            bar.clone(),
            file.clone(),
            shared.clone(),
        );
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            // As many routers as permits: a permit holder always finds one free.
            let router = routers
                .lock()
                .expect("router pool lock")
                .pop()
                .expect("a free router per permit");
            bar.set_message(format!("{} {mode}", task.task_id));
            let row = run_one(&task, &hidden, mode, &cfg, router.clone(), sandbox, shared).await;
            routers.lock().expect("router pool lock").push(router);
            let mut f = file.lock().expect("results lock");
            let _ = writeln!(
                f,
                "{}",
                serde_json::to_string(&row).expect("row serializes")
            );
            bar.inc(1);
            row
        }));
    }
    for h in handles {
        rows.push(h.await.map_err(|e| e.to_string())?);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Rows already in a results file (lines that do not parse are skipped); none when it does not exist.
pub fn load_rows(results: &Path) -> Result<Vec<Row>, String> {
    if !results.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Row>(l).ok())
        .collect())
}

/// Splits the work for `--resume`: the earlier rows that belong to the selected
/// tasks and modes (kept, one per task and mode), and the task/mode pairs still to run.
pub fn plan_runs(
    data: &[(BenchTask, HiddenTest)],
    mode: Mode,
    previous: Vec<Row>,
) -> (Vec<Row>, Vec<(&BenchTask, &HiddenTest, &'static str)>) {
    let wanted: HashSet<(&str, &str)> = data
        .iter()
        .flat_map(|(t, _)| mode.rows().iter().map(move |m| (t.task_id.as_str(), *m)))
        .collect();
    let mut kept: Vec<Row> = Vec::new();
    let mut done: HashSet<(String, String)> = HashSet::new();
    for r in previous {
        if wanted.contains(&(r.task_id.as_str(), r.mode.as_str()))
            && done.insert((r.task_id.clone(), r.mode.clone()))
        {
            kept.push(r);
        }
    }
    let todo = data
        .iter()
        .flat_map(|(t, h)| mode.rows().iter().map(move |m| (t, h, *m)))
        .filter(|(t, _, m)| !done.contains(&(t.task_id.clone(), m.to_string())))
        .collect();
    (kept, todo)
}

async fn run_one(
    task: &BenchTask,
    hidden: &HiddenTest,
    mode: &str,
    cfg: &Config,
    router: Arc<Router>,
    sandbox: Arc<Sandbox>,
    shared: Option<Arc<crate::store::Store>>,
) -> Row {
    let ws = tempfile::tempdir().expect("temp dir");
    let root = ws.path().to_path_buf();
    let _ = std::fs::create_dir(root.join(".git"));
    let file = root.join("task.py");
    let _ = std::fs::write(&file, &task.prompt);
    let mut row = Row {
        task_id: task.task_id.clone(),
        mode: mode.to_string(),
        passed: false,
        attempts: 0,
        llm_calls: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        wall_ms: 0,
        stage_ms: Default::default(),
        dropped_tests: 0,
        loop_status: String::new(),
        reason: None,
        score_error: None,
        final_code: String::new(),
        rounds: 0,
        chosen_because: None,
        candidates: Vec::new(),
    };
    let started = Instant::now();
    let (code, made) = if mode == "single" {
        (single(task, &router, cfg, &mut row).await, Vec::new())
    } else {
        looped(
            task,
            &root,
            &file,
            cfg,
            (router, sandbox.clone(), shared),
            &mut row,
        )
        .await
    };
    row.wall_ms = started.elapsed().as_millis() as u64;
    let (passed, err) = score(&sandbox, &code, task, hidden).await;
    row.passed = passed;
    row.score_error = err;
    row.final_code = code;
    if let Ok(func) = python::find_function(&task.prompt, &task.entry_point) {
        for (n, round, weight, greedy, generated) in made {
            let Ok(spliced) = python::splice(&task.prompt, &func, &generated) else {
                continue;
            };
            let (passed, _) = score(&sandbox, &spliced.source, task, hidden).await;
            row.candidates.push(CandidateScore {
                n,
                round,
                weight,
                greedy,
                passed,
            });
        }
    }
    row
}

/// One greedy developer call with the loop's own developer prompt (no plan,
/// no tests), spliced into the stub.
async fn single(task: &BenchTask, router: &Router, cfg: &Config, row: &mut Row) -> String {
    row.loop_status = "single".into();
    row.attempts = 1;
    let Ok(func) = python::find_function(&task.prompt, &task.entry_point) else {
        row.reason = Some("entry point not found in the prompt".into());
        return task.prompt.clone();
    };
    let stub = task.stub_view(cfg.context_tokens);
    let guide = Guidelines::builtin().for_role(Role::Developer, false);
    // The loop's own first-round prompt, greedy, one sample: the plain single shot.
    let style = roles::CodePrompt::parse(&cfg.code_prompt).unwrap_or(roles::CodePrompt::Plain);
    let req = roles::code_request(&stub, style, &guide, None);
    match router
        .complete(Role::Developer, &req, &CancellationToken::new())
        .await
    {
        Ok(routed) => {
            let c = routed.completion;
            row.llm_calls = 1;
            row.prompt_tokens = c.prompt_tokens as u64;
            row.completion_tokens = c.completion_tokens as u64;
            let gen = python::extract_code_block(&c.text);
            match python::splice(&task.prompt, &func, &gen) {
                Ok(s) => s.source,
                Err(e) => {
                    row.reason = Some(e.to_string());
                    task.prompt.clone()
                }
            }
        }
        Err(e) => {
            row.reason = Some(e.to_string());
            task.prompt.clone()
        }
    }
}

/// The full pipeline, as `docsmith generate --yes`; returns the final (or best) code.
async fn looped(
    task: &BenchTask,
    root: &Path,
    file: &Path,
    cfg: &Config,
    (router, sandbox, shared): (Arc<Router>, Arc<Sandbox>, Option<Arc<crate::store::Store>>),
    row: &mut Row,
) -> (String, Vec<(u32, u32, u32, bool, String)>) {
    let opened = match shared {
        Some(s) => Ok(s),
        None => runtime::open_store(root).map(Arc::new),
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            row.loop_status = "failed".into();
            row.reason = Some(e.to_string());
            return (task.prompt.clone(), Vec::new());
        }
    };
    let deps = Deps {
        router,
        sandbox,
        store: store.clone(),
        guidelines: Arc::new(Guidelines::builtin()),
        settings: crate::pipeline::Settings {
            write_proposal_files: false,
            ..runtime::settings(cfg)
        },
    };
    let spec = TaskSpec {
        workspace: root.to_path_buf(),
        file: file.to_path_buf(),
        source: task.prompt.clone(),
        target: Target::Name(task.entry_point.clone()),
        feedback: None,
        kind: TaskKind::Bench,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let timer = tokio::spawn(async move {
        // Stage times from the stage events' arrival.
        let mut times = std::collections::BTreeMap::<String, u64>::new();
        let mut last: Option<(String, Instant)> = None;
        while let Some(ev) = rx.recv().await {
            if let Event::Stage { stage, .. } = ev {
                if let Some((s, t)) = last.take() {
                    *times.entry(s).or_default() += t.elapsed().as_millis() as u64;
                }
                last = Some((stage.as_str().to_string(), Instant::now()));
            }
        }
        if let Some((s, t)) = last {
            *times.entry(s).or_default() += t.elapsed().as_millis() as u64;
        }
        times
    });
    let mut run = match TaskRun::start(spec, deps, Some(tx)) {
        Ok(r) => r,
        Err(e) => {
            row.loop_status = "failed".into();
            row.reason = Some(e.to_string());
            return (task.prompt.clone(), Vec::new());
        }
    };
    let task_id = run.task_id();
    let cancel = CancellationToken::new();
    let mut code = task.prompt.clone();
    loop {
        match run.advance(&cancel).await {
            Ok(Pause::Question(_)) => {
                let _ = run.reply(Reply::Assume);
            }
            Ok(Pause::Review(p)) => {
                row.attempts = p.attempts;
                row.llm_calls = p.llm_calls;
                row.prompt_tokens = p.prompt_tokens;
                row.completion_tokens = p.completion_tokens;
                row.dropped_tests = p.dropped.len();
                row.loop_status = if p.passing { "accepted" } else { "failing" }.into();
                row.rounds = p.rounds;
                row.chosen_because = Some(p.chosen_because.clone());
                if !p.passing {
                    row.reason = Some(p.reasons.join("; "));
                }
                code = p.new_source.clone();
                let _ = run.reply(Reply::Accept);
            }
            Ok(Pause::Finished(_)) => break,
            Err(e) => {
                row.loop_status = "failed".into();
                row.reason = Some(e.to_string());
                break;
            }
        }
    }
    drop(run);
    row.stage_ms = timer.await.unwrap_or_default();
    let made = store
        .candidates(task_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, n, round, weight, greedy, code)| (n, round, weight, greedy, code))
        .collect();
    (code, made)
}

/// Runs `code` + the hidden test + `check(entry_point)` once in the sandbox.
/// Returns whether it exited 0, and the output tail otherwise.
pub async fn score(
    sandbox: &Sandbox,
    code: &str,
    task: &BenchTask,
    hidden: &HiddenTest,
) -> (bool, Option<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = format!("{code}\n\n{}\n\ncheck({})\n", hidden.0, task.entry_point);
    match sandbox
        .run_script(dir.path(), &script, &CancellationToken::new())
        .await
    {
        Ok(o) if o.exit_code == Some(0) => (true, None),
        Ok(o) => {
            let tail: String = o
                .stderr_tail
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            (
                false,
                Some(format!(
                    "exit {:?}{}: {tail}",
                    o.exit_code,
                    o.killed.map(|k| format!(" ({k:?})")).unwrap_or_default()
                )),
            )
        }
        Err(e) => (false, Some(format!("sandbox: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_records_configuration_variables_but_not_secrets() {
        let args: Vec<String> = ["docsmith", "bench", "--dataset", "my data.jsonl"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env: Vec<(String, String)> = [
            ("PATH", "/usr/bin"),
            ("DOCSMITH_MAX_REFINEMENTS", "0"),
            ("MAX_PLANNER_ITERATIONS", "1"),
            ("DOCSMITH_OPENAI_API_KEY_ENV", "VLLM_API_KEY"),
            ("DOCSMITH_API_KEY", "sk-secret"),
            ("VLLM_API_KEY", "sk-secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let line = command_line(&args, &env);
        assert_eq!(
            line,
            "DOCSMITH_MAX_REFINEMENTS=0 DOCSMITH_OPENAI_API_KEY_ENV=VLLM_API_KEY \
             MAX_PLANNER_ITERATIONS=1 docsmith bench --dataset 'my data.jsonl'"
        );
        assert!(!line.contains("sk-secret"));
        assert_eq!(command_line(&args[..2], &[]), "docsmith bench");
    }

    #[test]
    fn records_split_the_hidden_test_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"task_id\": \"T/0\", \"prompt\": \"def f(x):\\n    \\\"\\\"\\\"Id.\\\"\\\"\\\"\\n\", \"entry_point\": \"f\", \"test\": \"def check(c):\\n    assert c(1) == 1\\n\", \"canonical_solution\": \"x\"}\n\n",
        )
        .unwrap();
        let d = read_dataset(&p).unwrap();
        assert_eq!(d.len(), 1);
        let json = serde_json::to_string(&d[0].0).unwrap();
        assert!(
            !json.contains("check"),
            "the task the loop sees has no test: {json}"
        );
        assert!(d[0].1 .0.contains("assert c(1) == 1"));
        std::fs::write(&p, "{\"task_id\": \"T/0\", \"prompt\": \"x\"}\n").unwrap();
        assert!(read_dataset(&p).unwrap_err().contains("entry_point"));
    }

    fn done_row(id: &str, mode: &str) -> Row {
        Row {
            task_id: id.into(),
            mode: mode.into(),
            passed: true,
            attempts: 1,
            llm_calls: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            wall_ms: 1,
            stage_ms: Default::default(),
            dropped_tests: 0,
            loop_status: "single".into(),
            reason: None,
            score_error: None,
            final_code: String::new(),
            rounds: 0,
            chosen_because: None,
            candidates: Vec::new(),
        }
    }

    #[test]
    fn parallel_jobs_split_the_cores_between_local_models() {
        let local = |cfg: &Config| match cfg.providers.get("local") {
            Some(ProviderConfig::Local(l)) => (l.threads, l.threads_batch),
            _ => panic!("the default config has a local provider"),
        };
        let one = config_for(None, 1).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
        let share = Some((cores / 2).max(1));
        let two = config_for(None, 2).unwrap();
        // One job keeps the provider's own defaults (or the environment's).
        if std::env::var_os("DOCSMITH_THREADS").is_none() {
            assert_eq!(local(&one), (None, None));
            assert_eq!(local(&two), (share, share));
        }
    }

    #[test]
    fn resume_skips_pairs_already_in_the_results_file() {
        let data: Vec<(BenchTask, HiddenTest)> = ["T/0", "T/1"]
            .iter()
            .map(|id| {
                let t = BenchTask {
                    task_id: id.to_string(),
                    prompt: String::new(),
                    entry_point: "f".into(),
                };
                (t, HiddenTest(String::new()))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("results.jsonl");
        assert!(load_rows(&file).unwrap().is_empty());
        let lines: Vec<String> = [
            done_row("T/0", "single"),
            done_row("T/0", "loop"),
            done_row("T/9", "single"),
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
        std::fs::write(&file, format!("{}\nnot json\n", lines.join("\n"))).unwrap();
        let previous = load_rows(&file).unwrap();
        assert_eq!(previous.len(), 3);
        let (kept, todo) = plan_runs(&data, Mode::Both, previous.clone());
        let todo: Vec<(&str, &str)> = todo
            .iter()
            .map(|(t, _, m)| (t.task_id.as_str(), *m))
            .collect();
        assert_eq!(todo, vec![("T/1", "single"), ("T/1", "loop")]);
        assert_eq!(kept.len(), 2, "T/9 is not selected and is not summarised");
        let (kept, todo) = plan_runs(&data, Mode::Loop, previous);
        assert_eq!(kept.len(), 1);
        assert_eq!(todo.len(), 1);
        let (kept, todo) = plan_runs(&data, Mode::Single, Vec::new());
        assert!(kept.is_empty());
        assert_eq!(todo.len(), 2);
    }

    #[tokio::test]
    async fn scoring_runs_the_hidden_check_in_the_sandbox() {
        let sandbox = Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap();
        let task = BenchTask {
            task_id: "T".into(),
            prompt: String::new(),
            entry_point: "f".into(),
        };
        let hidden = HiddenTest("def check(c):\n    assert c(2) == 4\n".into());
        assert!(
            score(&sandbox, "def f(x):\n    return x * 2\n", &task, &hidden)
                .await
                .0
        );
        let (ok, err) = score(&sandbox, "def f(x):\n    return x + 3\n", &task, &hidden).await;
        assert!(!ok && err.unwrap().contains("AssertionError"));
    }
}
