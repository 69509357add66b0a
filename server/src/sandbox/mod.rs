//! Runs untrusted generated Python and its test cases. Each candidate runs in
//! its own fresh `python3` process that only *serialises* what each test's call
//! produced (an exact-type value tree, the printed output, or the exception):
//! it never sees an expected value. A second process, the *referee*, which
//! never imports or runs candidate code, receives the expected values and those
//! outcomes and decides pass or fail, so a candidate that rewrites the harness
//! in its own process can change only its own answers, never the verdicts.
//!
//! Isolation: `bwrap` with only the mounts a run needs (system dirs and the
//! interpreter's own directories read-only, never a home directory; the job
//! files read-only; a size-limited tmpfs on `/tmp` as the only writable place;
//! no network, no shared namespaces), rlimits, a uid of its own per run when
//! running as root, a wall-clock timeout and a kill of the whole process group
//! on timeout or cancel. Without a working bwrap, [`Sandbox::new`] fails unless
//! the user chose `rlimits_only` explicitly: there is no silent fallback.
//! cgroups are not used (RLIMIT_AS and the tmpfs size bound memory; see README).
//!
//! Owns: process isolation, the harness protocol and the verdicts. Must not
//! know about LLMs, LSP or the store: it takes code and [`TestCase`]s and gives
//! back [`TestRun`]s.

mod collect;
mod mounts;
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::types::{Isolation, KillReason, TestCase, TestResult, TestRun};
use collect::{CandidateLines, RefereeLines};
use mounts::{Layout, ProbeInfo, JOB_DIR_INSIDE, PROJECT_INSIDE, SCRATCH_INSIDE};
use process::{End, Finished, Limits, Spec};

pub use mounts::{remove_stale_work_dirs, temp_work_dir};

/// The harness script, written into every job directory.
const HARNESS: &str = include_str!("harness.py");
const HARNESS_FILE: &str = "_docsmith_harness.py";
const CANDIDATE_FILE: &str = "candidate.py";
const SCRIPT_FILE: &str = "script.py";
const JOB_FILE: &str = "job.json";
/// How to allow weaker isolation, quoted by every bwrap error.
const WEAKER_OPT_IN: &str = "to accept weaker isolation instead (no filesystem or network isolation), set sandbox.mode = \"rlimits_only\" in your user configuration or DOCSMITH_SANDBOX_MODE=rlimits_only";

/// Sandbox settings (the `[sandbox]` table of `docsmith.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Python interpreter, a name looked up on PATH or a path. Default `python3`.
    pub python: PathBuf,
    /// Isolation mode. Default [`SandboxMode::Auto`].
    pub mode: SandboxMode,
    /// RLIMIT_CPU of each process, seconds. Default 10.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes. Default 1 GiB.
    pub address_space_bytes: u64,
    /// Most processes (threads included) one run may have. Default 32.
    pub max_processes: u64,
    /// RLIMIT_FSIZE (largest file the run may write), bytes. Default 16 MiB.
    pub file_size_bytes: u64,
    /// Size of the tmpfs on `/tmp` inside bwrap (the only writable place), bytes. Default 64 MiB.
    pub tmp_size_bytes: u64,
    /// Timeout of one test case (SIGALRM in the harness), milliseconds. Default 3000.
    pub per_test_timeout_ms: u64,
    /// Wall-clock timeout of each process (candidate or referee; process group
    /// killed), milliseconds. Default 30000.
    pub wall_timeout_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("python3"),
            mode: SandboxMode::Auto,
            cpu_seconds: 10,
            address_space_bytes: 1 << 30,
            max_processes: 32,
            file_size_bytes: 16 << 20,
            tmp_size_bytes: 64 << 20,
            per_test_timeout_ms: 3000,
            wall_timeout_ms: 30_000,
        }
    }
}

/// How strongly to isolate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// bwrap, which must be installed and work (a probe run): [`Sandbox::new`]
    /// fails with [`SandboxError::BwrapUnavailable`] otherwise. No fallback.
    Auto,
    /// The same as `Auto` (kept for configurations that name it).
    Bwrap,
    /// rlimits, a process group and (as root) a uid drop; no namespaces, no
    /// filesystem isolation. Only when the user asks for it.
    RlimitsOnly,
}

/// Why the sandbox could not run something.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("python interpreter `{python}` does not run for the sandbox user: {detail} (install python3 where the sandbox user finds it on PATH, such as /usr/bin/python3; an active virtualenv's `bin/python` is used instead, and must not lie under /root)")]
    PythonMissing { python: String, detail: String },
    #[error("bubblewrap (bwrap) is needed to run generated code and is unusable here: {reason}. Install it with `apt-get install bubblewrap` (and allow unprivileged user namespaces), or, {WEAKER_OPT_IN}")]
    BwrapUnavailable { reason: String },
    #[error("the sandbox run was cancelled (its process group was killed)")]
    Cancelled,
    #[error("the sandbox harness gave no usable output ({detail}); stderr tail: {stderr_tail}")]
    HarnessOutput { detail: String, stderr_tail: String },
    #[error("work dir {path} is not reachable by the sandbox user: a parent directory is not world-searchable; use a work dir under /tmp (see Sandbox::new_work_dir)")]
    WorkDirUnreachable { path: PathBuf },
    #[error("sandbox I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    /// Whether this is a set-up error (the sandbox cannot be built here: no
    /// interpreter, no working bwrap), which front ends report as a
    /// configuration error (CLI exit code 4), as opposed to a failed run.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            SandboxError::PythonMissing { .. } | SandboxError::BwrapUnavailable { .. }
        )
    }
}

/// The outcome of [`Sandbox::run_script`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptOutcome {
    /// Exit code; `None` when killed by a signal (ours, or RLIMIT_CPU's SIGXCPU).
    pub exit_code: Option<i32>,
    /// Last ~2,000 bytes of stdout.
    pub stdout_tail: String,
    /// Last ~2,000 bytes of stderr.
    pub stderr_tail: String,
    /// Wall time of the process, milliseconds.
    pub wall_ms: u64,
    /// Set when the sandbox killed the process group (wall timeout).
    pub killed: Option<KillReason>,
}

/// A checked sandbox: the interpreter runs and the isolation level is known.
#[derive(Debug, Clone)]
pub struct Sandbox {
    cfg: SandboxConfig,
    /// The interpreter as resolved for the sandbox user (`sys.executable`).
    python: PathBuf,
    /// `Some` when runs go through bwrap.
    bwrap: Option<PathBuf>,
    /// What bwrap mounts (empty in `rlimits_only` mode).
    layout: Layout,
    /// Running as root: each process drops to its own uid/gid (see `process::next_run_uid`).
    drop_privileges: bool,
    note: Option<String>,
}

/// One process to start: its job directory and what the harness runs.
/// The user's project, for a candidate module that imports the project's own
/// modules (`from .models import Order`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectMount {
    /// The import root on the host (absolute): the folder that must be on
    /// `sys.path`. Mounted read-only at `/project` under bwrap (its
    /// `.docsmith`, `.git` and `.env*` hidden); on `sys.path` as it is in
    /// `rlimits_only` mode.
    pub root: PathBuf,
    /// The candidate's dotted module name (`shop.orders`), so relative
    /// imports resolve.
    pub module: String,
}

struct Job<'a> {
    /// Host directory with the harness, the job file and any module; mounted
    /// read-only at [`JOB_DIR_INSIDE`] under bwrap.
    dir: &'a Path,
    /// The user's project folder, mounted read-only (candidates only).
    project: Option<&'a Path>,
    /// `-I -S` (isolated mode, no site) for the referee; the candidate keeps
    /// `-B -s` and a fixed hash seed, so its outputs are reproducible.
    isolated: bool,
    stdin: Vec<u8>,
    uid: Option<u32>,
}

/// What one candidate's process left behind.
struct CandidateRun {
    lines: CandidateLines,
    finished: Finished,
    killed: Option<KillReason>,
    load_error: Option<String>,
}

impl Sandbox {
    /// Removes stale work dirs of dead docsmith processes, checks that the
    /// interpreter runs (as the sandbox user) and, unless the mode is
    /// `RlimitsOnly`, that bwrap is on PATH and a probe run through it, with the
    /// real mount layout, works.
    ///
    /// Errors: [`SandboxError::PythonMissing`]; [`SandboxError::BwrapUnavailable`]
    /// in modes `Auto` and `Bwrap` when bwrap is missing or broken (it names
    /// how to install bwrap and how the user can opt into `rlimits_only`).
    pub fn new(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let removed = remove_stale_work_dirs();
        if removed > 0 {
            tracing::info!(target: "docsmith::sandbox", "removed {removed} stale work dirs of dead docsmith processes");
        }
        // SAFETY: plain syscall.
        let drop_privileges = unsafe { libc::geteuid() } == 0;
        let mut sandbox = Sandbox {
            python: cfg.python.clone(),
            cfg,
            bwrap: None,
            layout: Layout::default(),
            drop_privileges,
            note: None,
        };
        let missing = |sandbox: &Sandbox, detail: String| SandboxError::PythonMissing {
            python: sandbox.cfg.python.display().to_string(),
            detail,
        };
        let info = sandbox
            .probe_interpreter()
            .map_err(|d| missing(&sandbox, d))?;
        sandbox.python = info.executable.clone();
        match sandbox.cfg.mode {
            SandboxMode::RlimitsOnly => {
                sandbox.note = Some(
                    "sandbox mode rlimits_only: isolation is reduced (network and filesystem are not isolated; remove sandbox.mode = \"rlimits_only\" with bubblewrap installed)".into(),
                );
                tracing::warn!(target: "docsmith::sandbox", "{}", sandbox.note.as_deref().unwrap_or_default());
            }
            SandboxMode::Auto | SandboxMode::Bwrap => {
                let bwrap = crate::host::find_on_path("bwrap").ok_or_else(|| {
                    SandboxError::BwrapUnavailable {
                        reason: "bwrap is not on PATH".into(),
                    }
                })?;
                sandbox.layout = Layout::new(&info).map_err(|d| missing(&sandbox, d))?;
                tracing::debug!(target: "docsmith::sandbox", "bwrap binds the interpreter dirs {:?} besides the system dirs", sandbox.layout.python_dirs());
                sandbox.bwrap = Some(bwrap);
                sandbox
                    .probe_bwrap()
                    .map_err(|reason| SandboxError::BwrapUnavailable { reason })?;
            }
        }
        Ok(sandbox)
    }

    /// `Bwrap` when runs go through bubblewrap, else `RlimitsOnly`.
    pub fn isolation(&self) -> Isolation {
        if self.bwrap.is_some() {
            Isolation::Bwrap
        } else {
            Isolation::RlimitsOnly
        }
    }

    /// Why isolation is reduced and how to fix it; `None` under bwrap.
    pub fn isolation_note(&self) -> Option<String> {
        self.note.clone()
    }

    /// The interpreter runs use, as resolved for the sandbox user.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// A fresh temporary work dir `docsmith-sandbox-<pid>-*` the sandbox user
    /// can reach (under the system temp dir); removed when the returned value
    /// is dropped, or by a later [`Sandbox::new`] when this process died first.
    pub fn new_work_dir(&self) -> std::io::Result<tempfile::TempDir> {
        temp_work_dir("sandbox")
    }

    /// Runs `code` (a whole Python module, imported as `candidate`) then each
    /// test case's `call` text in its namespace; a
    /// referee process then judges the outcomes. The same as [`Sandbox::run_many`]
    /// with one candidate. Writes job directories under `work_dir`.
    ///
    /// Returns one result per test, in order. A wall timeout is not an error:
    /// the run comes back with `killed: Some(WallTimeout)`, the test in progress
    /// as `Timeout` and later ones as `NotRun`. Errors: `Cancelled` (after every
    /// process group was killed), `HarnessOutput` (a harness or the referee gave
    /// no usable output), `WorkDirUnreachable`, `Io`.
    pub async fn run_tests(
        &self,
        work_dir: &Path,
        code: &str,
        tests: &[TestCase],
        cancel: &CancellationToken,
    ) -> Result<TestRun, SandboxError> {
        let mut runs = self
            .run_many(work_dir, &[code.to_string()], tests, None, cancel)
            .await?;
        Ok(runs.remove(0))
    }

    /// Runs several candidate modules on the same tests: each candidate in its
    /// own sandboxed process (its own job directory, and its own uid as root),
    /// up to `available_parallelism()` at a time, then ONE referee process
    /// that judges every outcome. Job directories go under `work_root`
    /// (`cand-<i>/`, `referee/`).
    ///
    /// Returns one [`TestRun`] per candidate, in order; each run's `wall_ms` is
    /// its own process's wall time plus the referee's. `outcome` in each result
    /// is a canonical JSON key of what the call produced (equal for equal
    /// outputs), so candidates can be clustered by behaviour. Errors as
    /// [`Sandbox::run_tests`]; a cancel kills every process within a second.
    ///
    /// With `project`, each candidate is imported under its project module
    /// name with the project's import root read-only on `sys.path`.
    pub async fn run_many(
        &self,
        work_root: &Path,
        candidates: &[String],
        tests: &[TestCase],
        project: Option<&ProjectMount>,
        cancel: &CancellationToken,
    ) -> Result<Vec<TestRun>, SandboxError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let root = self.prepare_root(work_root)?;
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, candidates.len().max(1));
        // The referee starts now, alongside the candidates (its start-up costs
        // no wall time then), and waits on stdin for the expected values and
        // outcomes; a dropped sender (nothing to judge, an error) ends it.
        let (job_tx, job_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let batches = candidates.len().div_ceil(parallel) as u64;
        let referee = self.referee(&root, job_rx, batches + 1, cancel);
        let judged = async {
            let slots = tokio::sync::Semaphore::new(parallel);
            let mut pending = Vec::with_capacity(candidates.len());
            for (i, code) in candidates.iter().enumerate() {
                let (slots, root) = (&slots, &root);
                pending.push(async move {
                    let _slot = slots.acquire().await;
                    if cancel.is_cancelled() {
                        return Err(SandboxError::Cancelled);
                    }
                    self.run_candidate(root, i, code, tests, project, cancel)
                        .await
                });
            }
            let finished = futures_util::future::join_all(pending).await;
            if cancel.is_cancelled() {
                return Err(SandboxError::Cancelled);
            }
            let finished = finished.into_iter().collect::<Result<Vec<_>, _>>()?;
            // Results the host decides; the rest goes to the referee as items.
            let mut slots: Vec<Vec<Option<TestResult>>> = Vec::with_capacity(finished.len());
            let mut items: Vec<(usize, usize)> = Vec::new();
            for (c, run) in finished.iter().enumerate() {
                let mut row = Vec::with_capacity(tests.len());
                for (t, test) in tests.iter().enumerate() {
                    let decided = run.lines.host_result(
                        test,
                        run.load_error.as_deref(),
                        run.killed.is_some(),
                        &run.finished.end,
                        self.cfg.per_test_timeout_ms,
                    );
                    if decided.is_none() {
                        items.push((c, t));
                    }
                    row.push(decided);
                }
                slots.push(row);
            }
            let sent = if items.is_empty() {
                None
            } else {
                let _ = job_tx.send(referee_job(tests, &finished, &items));
                Some(std::time::Instant::now())
            };
            Ok((finished, slots, items, sent))
        };
        let (referee, judged) = tokio::join!(referee, judged);
        let (finished, mut slots, items, sent) = judged?;
        let mut referee_ms = 0;
        if let Some(sent) = sent {
            let (mut verdicts, ended) = referee?;
            referee_ms = ended.saturating_duration_since(sent).as_millis() as u64;
            for (n, &(c, t)) in items.iter().enumerate() {
                let test = &tests[t];
                let duration = finished[c]
                    .lines
                    .outcome(&test.id)
                    .map(|o| o.duration_ms.min(finished[c].finished.wall_ms))
                    .unwrap_or(0);
                slots[c][t] = Some(match verdicts.remove(&n) {
                    Some(v) => v.into_result(&test.id, duration),
                    None => collect::failed(
                        &test.id,
                        "RefereeError",
                        "the referee ended before judging this test (never a pass)",
                    ),
                });
            }
        }
        Ok(finished
            .into_iter()
            .zip(slots)
            .map(|(run, row)| TestRun {
                results: row.into_iter().flatten().collect(),
                wall_ms: run.finished.wall_ms + referee_ms,
                isolation: self.isolation(),
                killed: run.killed,
                load_error: run.load_error,
                stderr_tail: run.finished.stderr_tail,
            })
            .collect())
    }

    /// Runs a whole script as `__main__` with the same isolation and limits
    /// (benchmarks score with hidden tests this way). Writes `script.py` and
    /// `job.json` into `work_dir/script/`. The script and its checks share one
    /// process: this is not a trusted verdict (see `run_tests`).
    /// Errors: `Cancelled`, `WorkDirUnreachable`, `Io`.
    pub async fn run_script(
        &self,
        work_dir: &Path,
        script: &str,
        cancel: &CancellationToken,
    ) -> Result<ScriptOutcome, SandboxError> {
        let root = self.prepare_root(work_dir)?;
        let dir = self.job_dir(&root, "script")?;
        let inside = self.inside(&dir);
        let job = serde_json::json!({ "mode": "script", "script_path": inside.join(SCRIPT_FILE) });
        write_file(&dir.join(SCRIPT_FILE), script.as_bytes())?;
        write_file(&dir.join(JOB_FILE), job.to_string().as_bytes())?;
        write_file(&dir.join(HARNESS_FILE), HARNESS.as_bytes())?;
        let uid = self.run_uid();
        let scratch = self.scratch_dir(&root, "script", uid)?;
        let spec = self.spec(
            &Job {
                dir: &dir,
                project: None,
                isolated: false,
                stdin: format!("{}\n", nonce()?).into_bytes(),
                uid,
            },
            scratch.as_deref(),
        );
        let finished = process::supervise(spec, cancel, |_| {}).await?;
        let (exit_code, killed) = match finished.end {
            End::Cancelled => return Err(SandboxError::Cancelled),
            End::WallTimeout => (None, Some(KillReason::WallTimeout)),
            End::Exited { code, .. } => (code, None),
        };
        Ok(ScriptOutcome {
            exit_code,
            stdout_tail: finished.stdout_tail,
            stderr_tail: finished.stderr_tail,
            wall_ms: finished.wall_ms,
            killed,
        })
    }

    /// One candidate's process: writes `cand-<i>/` (harness, module, a job with
    /// only test ids and calls) and collects its outcomes.
    async fn run_candidate(
        &self,
        root: &Path,
        index: usize,
        code: &str,
        tests: &[TestCase],
        project: Option<&ProjectMount>,
        cancel: &CancellationToken,
    ) -> Result<CandidateRun, SandboxError> {
        let name = format!("cand-{index}");
        let dir = self.job_dir(root, &name)?;
        let inside = self.inside(&dir);
        // Only ids and calls: the candidate's process never sees an expected value.
        let calls: Vec<serde_json::Value> = tests
            .iter()
            .map(|t| serde_json::json!({"id": t.id, "call": t.call}))
            .collect();
        let (module_name, sys_path) = match project {
            Some(p) if self.bwrap.is_some() => (p.module.clone(), vec![PROJECT_INSIDE.to_string()]),
            Some(p) => (p.module.clone(), vec![p.root.display().to_string()]),
            None => ("candidate".to_string(), Vec::new()),
        };
        let job = serde_json::json!({
            "mode": "candidate",
            "module_path": inside.join(CANDIDATE_FILE),
            "module_name": module_name,
            "sys_path": sys_path,
            "per_test_timeout_ms": self.cfg.per_test_timeout_ms,
            "tests": calls,
        });
        // Written as UTF-8, so a PEP 263 line must not say otherwise.
        write_file(
            &dir.join(CANDIDATE_FILE),
            crate::python::utf8_module(code).as_bytes(),
        )?;
        write_file(&dir.join(JOB_FILE), job.to_string().as_bytes())?;
        write_file(&dir.join(HARNESS_FILE), HARNESS.as_bytes())?;
        let uid = self.run_uid();
        let scratch = self.scratch_dir(root, &name, uid)?;
        let nonce = nonce()?;
        let mut lines = CandidateLines::new(&nonce, tests);
        let spec = self.spec(
            &Job {
                dir: &dir,
                project: project.map(|p| p.root.as_path()),
                isolated: false,
                stdin: format!("{nonce}\n").into_bytes(),
                uid,
            },
            scratch.as_deref(),
        );
        let finished = process::supervise(spec, cancel, |l| lines.line(l)).await?;
        let killed = match finished.end {
            End::Cancelled => return Err(SandboxError::Cancelled),
            End::WallTimeout => Some(KillReason::WallTimeout),
            End::Exited { .. } => None,
        };
        if !lines.ready && killed.is_none() {
            return Err(SandboxError::HarnessOutput {
                detail: format!(
                    "the harness exited before starting ({})",
                    describe_end(&finished.end)
                ),
                stderr_tail: finished.stderr_tail,
            });
        }
        let mut load_error = lines.load_error.clone();
        if load_error.is_none() && !lines.loaded {
            load_error = Some(match killed {
                Some(_) => format!(
                    "the run was killed by the wall timeout ({} ms) while importing the candidate module",
                    self.cfg.wall_timeout_ms
                ),
                None => format!(
                    "the process ended while importing the candidate module ({}); stderr: {}",
                    describe_end(&finished.end),
                    finished.stderr_tail
                ),
            });
        }
        Ok(CandidateRun {
            lines,
            finished,
            killed,
            load_error,
        })
    }

    /// The referee: a fresh sandboxed `python3 -I -S` whose job directory holds
    /// only the harness; its input (expected values and outcomes, see
    /// [`referee_job`]) arrives on stdin through `job`. Its wall timeout covers
    /// `rounds` candidate rounds of waiting plus its own work. Returns the
    /// verdicts by item index and when it ended.
    async fn referee(
        &self,
        root: &Path,
        job: tokio::sync::oneshot::Receiver<Vec<u8>>,
        rounds: u64,
        cancel: &CancellationToken,
    ) -> Result<(HashMap<usize, collect::Verdict>, std::time::Instant), SandboxError> {
        let dir = self.job_dir(root, "referee")?;
        write_file(&dir.join(JOB_FILE), br#"{"mode": "referee"}"#)?;
        write_file(&dir.join(HARNESS_FILE), HARNESS.as_bytes())?;
        let uid = self.run_uid();
        let scratch = self.scratch_dir(root, "referee", uid)?;
        let nonce = nonce()?;
        let mut lines = RefereeLines::new(&nonce);
        let mut spec = self.spec(
            &Job {
                dir: &dir,
                project: None,
                isolated: true,
                stdin: format!("{nonce}\n").into_bytes(),
                uid,
            },
            scratch.as_deref(),
        );
        spec.stdin_later = Some(job);
        spec.wall = Duration::from_millis(self.cfg.wall_timeout_ms.saturating_mul(rounds + 1));
        let finished = process::supervise(spec, cancel, |l| lines.line(l)).await?;
        let ended = std::time::Instant::now();
        match finished.end {
            End::Cancelled => Err(SandboxError::Cancelled),
            End::Exited { code: Some(0), .. } if lines.done => Ok((lines.verdicts, ended)),
            // Partial: the missing verdicts become failures (one candidate's
            // output must not turn into an error of the whole run).
            ref end if !lines.verdicts.is_empty() => {
                tracing::warn!(target: "docsmith::sandbox", "the referee ended early ({}): {}", describe_end(end), finished.stderr_tail);
                Ok((lines.verdicts, ended))
            }
            ref end => Err(SandboxError::HarnessOutput {
                detail: format!(
                    "the referee did not finish ({}, {} verdicts)",
                    describe_end(end),
                    lines.verdicts.len(),
                ),
                stderr_tail: finished.stderr_tail,
            }),
        }
    }

    /// The uid of one process: a fresh one from the pool when running as root.
    fn run_uid(&self) -> Option<u32> {
        self.drop_privileges.then(process::next_run_uid)
    }

    /// Creates and canonicalises the root of a run's job directories. As root
    /// it must be reachable by the per-run uids (every parent searchable), and
    /// is made 0755; nothing in it is ever owned by a sandbox uid except the
    /// `rlimits_only` scratch dirs.
    fn prepare_root(&self, work_dir: &Path) -> Result<PathBuf, SandboxError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(work_dir)?;
        let dir = work_dir.canonicalize()?;
        if self.drop_privileges {
            if !world_searchable_parents(&dir) {
                return Err(SandboxError::WorkDirUnreachable { path: dir });
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(dir)
    }

    /// A fresh job directory `root/name` (mode 0755; an old one is removed).
    fn job_dir(&self, root: &Path, name: &str) -> Result<PathBuf, SandboxError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = root.join(name);
        if dir.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&dir).or_else(|_| std::fs::remove_file(&dir))?;
        }
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(dir)
    }

    /// `rlimits_only` only: a writable working dir for one process (owned by
    /// its uid as root). Under bwrap the tmpfs is the working dir: `None`.
    fn scratch_dir(
        &self,
        root: &Path,
        name: &str,
        uid: Option<u32>,
    ) -> Result<Option<PathBuf>, SandboxError> {
        if self.bwrap.is_some() {
            return Ok(None);
        }
        let dir = self.job_dir(root, &format!("{name}-scratch"))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))?;
        }
        Ok(Some(dir))
    }

    /// Where a host job directory is seen by the process.
    fn inside(&self, host_dir: &Path) -> PathBuf {
        if self.bwrap.is_some() {
            PathBuf::from(JOB_DIR_INSIDE)
        } else {
            host_dir.to_path_buf()
        }
    }

    /// The process spec of one harness run.
    fn spec(&self, job: &Job<'_>, scratch: Option<&Path>) -> Spec {
        let inside = self.inside(job.dir);
        let mut argv: Vec<std::ffi::OsString> = vec![self.python.clone().into(), "-B".into()];
        if job.isolated {
            // The referee needs no site-packages: -S also saves start-up time.
            argv.extend(["-I".into(), "-S".into()]);
        } else {
            argv.push("-s".into());
        }
        argv.push(inside.join(HARNESS_FILE).into());
        argv.push(inside.join(JOB_FILE).into());
        self.wrap(
            job.dir,
            scratch,
            argv,
            job.stdin.clone(),
            job.uid,
            job.project,
        )
    }

    /// Builds the spec for `argv` (program first), through bwrap when enabled.
    /// `scratch` is the writable working dir in `rlimits_only` mode.
    fn wrap(
        &self,
        job_dir: &Path,
        scratch: Option<&Path>,
        mut argv: Vec<std::ffi::OsString>,
        stdin: Vec<u8>,
        uid: Option<u32>,
        project: Option<&Path>,
    ) -> Spec {
        let work = match (&self.bwrap, scratch) {
            (Some(_), _) => PathBuf::from(SCRATCH_INSIDE),
            (None, Some(s)) => s.to_path_buf(),
            (None, None) => job_dir.to_path_buf(),
        };
        let path = match &self.bwrap {
            Some(_) => self.layout.path_env(),
            None => std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        };
        let env = vec![
            ("PATH".to_string(), path),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
            ("PYTHONHASHSEED".to_string(), "0".to_string()),
            ("HOME".to_string(), work.display().to_string()),
            ("TMPDIR".to_string(), work.display().to_string()),
            (
                "DOCSMITH_NPROC".to_string(),
                self.cfg.max_processes.to_string(),
            ),
        ];
        let (program, args, nproc) = match &self.bwrap {
            Some(bwrap) => {
                let mut args = self
                    .layout
                    .bwrap_args(job_dir, self.cfg.tmp_size_bytes, project);
                args.append(&mut argv);
                // The harness also sets RLIMIT_NPROC inside the user namespace,
                // where it counts only this run's processes. With a per-run uid
                // the outer limit can bind too (+2: the two bwrap processes).
                let nproc = uid.map(|_| self.cfg.max_processes + 2);
                (bwrap.clone(), args, nproc)
            }
            None => {
                let program = PathBuf::from(argv.remove(0));
                let nproc = if uid.is_some() {
                    self.cfg.max_processes
                } else {
                    // Not root: the limit counts all of this user's processes.
                    count_own_processes() + self.cfg.max_processes
                };
                (program, argv, Some(nproc))
            }
        };
        Spec {
            program,
            args,
            env,
            cwd: scratch.unwrap_or(job_dir).to_path_buf(),
            limits: Limits {
                cpu_seconds: self.cfg.cpu_seconds,
                address_space_bytes: self.cfg.address_space_bytes,
                file_size_bytes: self.cfg.file_size_bytes,
                nproc,
            },
            run_as: uid,
            stdin,
            stdin_later: None,
            wall: Duration::from_millis(self.cfg.wall_timeout_ms),
        }
    }

    /// Runs the configured interpreter (as the sandbox user, outside bwrap, in
    /// an empty temp dir, `-I`) to learn where it lives. Errors: why it failed.
    fn probe_interpreter(&self) -> Result<ProbeInfo, String> {
        let dir = self
            .new_work_dir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let host_dir = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let argv = vec![
            self.cfg.python.clone().into_os_string(),
            "-I".into(),
            "-B".into(),
            "-c".into(),
            mounts::PROBE_SCRIPT.into(),
        ];
        let mut spec = Sandbox {
            bwrap: None,
            ..self.clone()
        }
        .wrap(&host_dir, None, argv, Vec::new(), self.run_uid(), None);
        spec.wall = Duration::from_secs(20);
        let line = run_probe(spec)?;
        serde_json::from_str::<ProbeInfo>(&line)
            .map_err(|e| format!("unreadable probe output ({e}): {line:.200}"))
    }

    /// Runs `python -I -c ...` through bwrap with the real layout and an empty
    /// job dir. Errors: why it failed.
    fn probe_bwrap(&self) -> Result<(), String> {
        let dir = self
            .new_work_dir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let host_dir = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let argv = vec![
            self.python.clone().into_os_string(),
            "-I".into(),
            "-B".into(),
            "-c".into(),
            "import sys; print(sys.executable)".into(),
        ];
        let mut spec = self.wrap(&host_dir, None, argv, Vec::new(), self.run_uid(), None);
        spec.wall = Duration::from_secs(20);
        run_probe(spec).map(|_| ())
    }
}

/// The referee's input: a first line with every test's expected text (never
/// its call), then one line per item `(candidate, test)` with that candidate's
/// outcome for that test (JSON lines, judged one at a time).
fn referee_job(tests: &[TestCase], runs: &[CandidateRun], items: &[(usize, usize)]) -> Vec<u8> {
    let expected: Vec<serde_json::Value> = tests
        .iter()
        .map(|t| {
            serde_json::json!({"id": t.id, "expected": t.expected, "raises": t.raises, "options": t.options})
        })
        .collect();
    let mut out = serde_json::json!({ "tests": expected }).to_string();
    out.push('\n');
    for &(c, t) in items {
        let id = &tests[t].id;
        let outcome = runs[c].lines.outcome(id).map(|o| &o.value);
        out.push_str(&serde_json::json!({"test_id": id, "outcome": outcome}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Runs a probe spec to completion on its own runtime; returns its first
/// non-empty stdout line or why it failed.
fn run_probe(spec: Spec) -> Result<String, String> {
    let mut lines = Vec::new();
    // A separate thread with its own runtime: `new` may be called from
    // inside a runtime, where blocking on (or dropping) another one panics.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cancel = CancellationToken::new();
            rt.block_on(process::supervise(spec, &cancel, |l| {
                lines.push(l.to_string())
            }))
        })
        .join()
    });
    let finished = match result {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(format!("cannot start it: {e}")),
        Err(_) => return Err("the probe thread panicked".into()),
    };
    match finished.end {
        End::Exited { code: Some(0), .. } => {}
        ref end => {
            return Err(format!(
                "probe run {}: {}",
                describe_end(end),
                finished.stderr_tail.trim()
            ))
        }
    }
    lines
        .into_iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .ok_or_else(|| "the probe run printed nothing".into())
}

fn describe_end(end: &End) -> String {
    match end {
        End::Exited { code: Some(c), .. } => format!("exit code {c}"),
        End::Exited {
            signal: Some(s), ..
        } => format!("killed by signal {s}"),
        End::Exited { .. } => "exited".into(),
        End::WallTimeout => "killed by the wall timeout".into(),
        End::Cancelled => "cancelled".into(),
    }
}

/// Writes a job file readable by any uid (0644), replacing whatever was there
/// (a previous run may have left a link).
fn write_file(path: &Path, data: &[u8]) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// 32 hex chars from /dev/urandom.
fn nonce() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Whether every parent of `dir` is searchable by "others" (the sandbox user).
fn world_searchable_parents(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    dir.ancestors().skip(1).all(|p| {
        p.metadata()
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// Processes (and threads) owned by the current real uid, from /proc.
fn count_own_processes() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: plain syscall.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .map(|e| {
            std::fs::read_dir(e.path().join("task"))
                .map(|t| t.count() as u64)
                .unwrap_or(1)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TestOrigin;
    use std::time::Instant;

    /// rlimits-only runs share RLIMIT_NPROC of uid 65534: run them one at a time.
    static RLIMITS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn tc(id: &str, call: &str, expected: &str) -> TestCase {
        TestCase {
            id: id.into(),
            origin: TestOrigin::Docstring,
            call: call.into(),
            expected: expected.into(),
            raises: None,
            note: String::new(),
            options: Vec::new(),
        }
    }

    fn raises(id: &str, call: &str, exc: &str) -> TestCase {
        TestCase {
            raises: Some(exc.into()),
            ..tc(id, call, "")
        }
    }

    fn cfg(mode: SandboxMode) -> SandboxConfig {
        SandboxConfig {
            mode,
            per_test_timeout_ms: 1000,
            wall_timeout_ms: 8000,
            ..Default::default()
        }
    }

    fn bwrap_sandbox() -> Sandbox {
        let sb = Sandbox::new(cfg(SandboxMode::Bwrap)).expect("bwrap sandbox");
        assert_eq!(sb.isolation(), Isolation::Bwrap);
        assert_eq!(sb.isolation_note(), None);
        sb
    }

    async fn run_cases(
        sb: &Sandbox,
        code: &str,
        tests: &[TestCase],
    ) -> (TestRun, tempfile::TempDir) {
        let dir = sb.new_work_dir().unwrap();
        let run = sb
            .run_tests(dir.path(), code, tests, &CancellationToken::new())
            .await
            .expect("run_tests");
        assert_eq!(run.results.len(), tests.len());
        (run, dir)
    }

    fn get<'a>(run: &'a TestRun, id: &str) -> &'a TestResult {
        run.results.iter().find(|r| r.test_id == id).unwrap()
    }

    #[tokio::test]
    async fn correct_candidate_passes_and_wrong_value_is_explained() {
        let sb = bwrap_sandbox();
        let code = "def add(a, b):\n    return a + b\n\ndef bad(a, b):\n    return a + b + 1\n";
        let tests = [
            tc("ex1", "add(2, 3)", "5"),
            tc("ex2", "x = 4\nadd(x, [1][0])", "5"),
            tc("ex3", "bad(2, 3)", "5"),
        ];
        let (run, _d) = run_cases(&sb, code, &tests).await;
        assert!(get(&run, "ex1").passed, "{run:?}");
        assert!(get(&run, "ex2").passed, "{run:?}");
        let r = get(&run, "ex3");
        assert!(!r.passed);
        assert_eq!(r.error_type.as_deref(), Some("AssertionError"));
        assert_eq!(r.message.as_deref(), Some("expected 5, got 6"));
        assert_eq!(r.actual.as_deref(), Some("6"));
        assert_eq!(run.isolation, Isolation::Bwrap);
        assert_eq!(run.killed, None);
        assert_eq!(run.passed(), 2);
    }

    #[tokio::test]
    async fn exceptions_raises_floats_and_printed_output() {
        let sb = bwrap_sandbox();
        let code = r#"
def div(a, b):
    return helper(a, b)

def helper(a, b):
    return a / b

def check(x):
    if x < 0:
        raise ValueError("negative")
    return x

def floats():
    return [0.1 + 0.2, {"a": 1 / 3, "b": (2.0000000001,)}]

def show(xs):
    print("items:", len(xs))
    for x in xs:
        print(" ", x)
"#;
        let tests = [
            tc("exc", "div(1, 0)", "0"),
            raises("r_ok", "check(-1)", "ValueError"),
            raises("r_base", "check(-1)", "Exception"),
            raises("r_none", "check(1)", "ValueError"),
            raises("r_other", "div(1, 0)", "ValueError"),
            tc("fl", "floats()", "[0.3, {'a': 0.333333333, 'b': (2.0,)}]"),
            tc(
                "fl_bad",
                "floats()",
                "[0.31, {'a': 0.333333333, 'b': (2.0,)}]",
            ),
            tc("out", "show([1, 2])", "items: 2\n  1\n  2"),
            tc("out_bad", "show([1])", "items: 2\n  1"),
        ];
        let (run, _d) = run_cases(&sb, code, &tests).await;
        let e = get(&run, "exc");
        assert_eq!(e.error_type.as_deref(), Some("ZeroDivisionError"));
        assert_eq!(e.message.as_deref(), Some("division by zero"));
        let tb = e.traceback.as_deref().unwrap();
        assert!(
            tb.contains("candidate.py") && tb.contains("in helper"),
            "{tb}"
        );
        assert!(
            !tb.contains("_docsmith_harness"),
            "harness frames leaked: {tb}"
        );
        assert!(get(&run, "r_ok").passed);
        assert!(get(&run, "r_base").passed, "base class in the MRO matches");
        let r = get(&run, "r_none");
        assert!(!r.passed);
        assert_eq!(
            r.message.as_deref(),
            Some("expected ValueError to be raised, got 1")
        );
        let r = get(&run, "r_other");
        assert!(!r.passed);
        assert_eq!(r.error_type.as_deref(), Some("ZeroDivisionError"));
        assert!(get(&run, "fl").passed, "{:?}", get(&run, "fl"));
        assert!(!get(&run, "fl_bad").passed);
        assert!(get(&run, "out").passed, "{:?}", get(&run, "out"));
        let r = get(&run, "out_bad");
        assert!(!r.passed);
        assert!(
            r.message.as_deref().unwrap().starts_with("expected output"),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn syntax_error_is_a_load_error_and_every_test_fails() {
        let sb = bwrap_sandbox();
        let (run, _d) = run_cases(
            &sb,
            "def f(:\n    return 1\n",
            &[tc("a", "f()", "1"), tc("b", "f()", "1")],
        )
        .await;
        let err = run.load_error.as_deref().expect("load_error");
        assert!(err.starts_with("SyntaxError"), "{err}");
        assert!(run
            .results
            .iter()
            .all(|r| !r.passed && r.error_type.as_deref() == Some("LoadError")));
        // A top-level exception is a load error too, with its traceback.
        let (run, _d) = run_cases(
            &sb,
            "import os\nraise RuntimeError('boom')\n",
            &[tc("a", "f()", "1")],
        )
        .await;
        let err = run.load_error.as_deref().unwrap();
        assert!(
            err.starts_with("RuntimeError: boom") && err.contains("candidate.py"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn infinite_loop_times_out_and_later_tests_still_run() {
        let sb = Sandbox::new(SandboxConfig {
            per_test_timeout_ms: 300,
            ..cfg(SandboxMode::Bwrap)
        })
        .unwrap();
        let code = "def spin():\n    while True:\n        pass\n\ndef ok():\n    return 1\n";
        let started = Instant::now();
        let (run, _d) = run_cases(
            &sb,
            code,
            &[tc("loop", "spin()", "1"), tc("ok", "ok()", "1")],
        )
        .await;
        let r = get(&run, "loop");
        assert_eq!(r.error_type.as_deref(), Some("Timeout"), "{r:?}");
        assert!(r.duration_ms >= 250 && r.duration_ms < 1500, "{r:?}");
        assert!(get(&run, "ok").passed);
        assert_eq!(run.killed, None);
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn a_loop_that_swallows_the_alarm_is_killed_by_the_wall_timeout() {
        let sb = Sandbox::new(SandboxConfig {
            per_test_timeout_ms: 200,
            wall_timeout_ms: 1500,
            ..cfg(SandboxMode::Bwrap)
        })
        .unwrap();
        let code = r#"
import signal
def stubborn():
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass

def ok():
    return 1
"#;
        let started = Instant::now();
        let tests = [
            tc("first", "ok()", "1"),
            tc("stuck", "stubborn()", "1"),
            tc("later", "ok()", "1"),
        ];
        let (run, _d) = run_cases(&sb, code, &tests).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(run.killed, Some(KillReason::WallTimeout));
        assert!(
            get(&run, "first").passed,
            "finished results are kept: {run:?}"
        );
        assert_eq!(get(&run, "stuck").error_type.as_deref(), Some("Timeout"));
        assert_eq!(get(&run, "later").error_type.as_deref(), Some("NotRun"));
        assert!(run.wall_ms >= 1400 && run.wall_ms < 3500, "{}", run.wall_ms);
    }

    const FORK_COUNT: &str = r#"
import os, time
def forks():
    n = 0
    pids = []
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            pids.append(pid)
            n += 1
    except OSError:
        return ("limited", n)
    finally:
        for p in pids:
            os.kill(p, 9)
    return ("unlimited", n)

def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#;

    fn assert_fork_limited(run: &TestRun, max: u64) {
        let r = get(run, "count");
        let actual = r.actual.as_deref().unwrap_or_default();
        assert!(actual.starts_with("('limited', "), "{r:?}");
        let n: u64 = actual
            .trim_start_matches("('limited', ")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert!(n < max, "forked {n} children with a limit of {max}");
    }

    #[tokio::test]
    async fn the_project_is_importable_read_only_and_its_secrets_are_hidden() {
        let project = tempfile::tempdir().unwrap();
        let root = project.path().canonicalize().unwrap();
        for (path, text) in [
            ("pkg/__init__.py", ""),
            ("pkg/util.py", "def helper():\n    return 41\n"),
            (".git/config", "SECRET_GIT"),
            (".env", "SECRET_ENV"),
            (".env.local", "SECRET_ENV_LOCAL"),
            (".docsmith/docsmith.db", "SECRET_DB"),
        ] {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let code = r#"
from .util import helper


def f():
    return helper() + 1


def probe():
    out = []
    for p in ["/project/.git/config", "/project/.env", "/project/.env.local", "/project/.docsmith/docsmith.db"]:
        try:
            with open(p) as fh:
                out.append("LEAKED" if "SECRET" in fh.read() else "hidden")
        except OSError:
            out.append("hidden")
    for p in ["/project/pkg/new.py", "/project/.git/x", "/project/.docsmith/x"]:
        try:
            with open(p, "w") as fh:
                fh.write("x")
            out.append("wrote")
        except OSError:
            out.append("refused")
    return out
"#;
        let sb = bwrap_sandbox();
        let dir = sb.new_work_dir().unwrap();
        let mount = ProjectMount {
            root: root.clone(),
            module: "pkg.mod".into(),
        };
        let runs = sb
            .run_many(
                dir.path(),
                &[code.to_string()],
                &[
                    tc("import", "f()", "42"),
                    tc(
                        "secrets",
                        "probe()",
                        "['hidden', 'hidden', 'hidden', 'hidden', 'refused', 'refused', 'refused']",
                    ),
                    tc("name", "__name__", "'pkg.mod'"),
                ],
                Some(&mount),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let run = &runs[0];
        assert!(run.load_error.is_none(), "{:?}", run.load_error);
        for r in &run.results {
            assert!(r.passed, "{r:?}");
        }
        assert!(!root.join("pkg/new.py").exists());
        // Without the mount the relative import has nothing to resolve against.
        let run = sb
            .run_tests(
                dir.path(),
                code,
                &[tc("import", "f()", "42")],
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(run.load_error.is_some(), "{run:?}");
    }

    #[tokio::test]
    async fn packages_of_the_configured_venv_are_importable_read_only() {
        use std::os::unix::fs::PermissionsExt as _;
        // A venv of the system interpreter (pyenv's lives under /root, which a
        // per-run uid cannot traverse), holding one "third-party" module.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let venv = dir.path().join("venv");
        let made = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status()
            .expect("/usr/bin/python3 (Debian's python3) runs");
        assert!(made.success(), "python3 -m venv --without-pip failed");
        let site = std::fs::read_dir(venv.join("lib"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("site-packages");
        std::fs::write(site.join("fake_thirdparty.py"), "VALUE = 7\n").unwrap();
        let code = "import fake_thirdparty\n\n\ndef f():\n    return fake_thirdparty.VALUE\n\n\ndef g():\n    with open(fake_thirdparty.__file__, 'a') as fh:\n        fh.write('x')\n";
        let tests = [tc("a", "f()", "7"), raises("ro", "g()", "OSError")];
        let sb = Sandbox::new(SandboxConfig {
            python: venv.join("bin/python"),
            ..cfg(SandboxMode::Bwrap)
        })
        .expect("a bwrap sandbox on the venv's interpreter");
        let (run, _d) = run_cases(&sb, code, &tests).await;
        assert!(run.load_error.is_none(), "{run:?}");
        assert!(run.results.iter().all(|r| r.passed), "{run:?}");
        // The default interpreter does not have it.
        let (run, _d) = run_cases(&bwrap_sandbox(), code, &tests).await;
        assert!(
            run.load_error
                .as_deref()
                .is_some_and(|e| e.contains("ModuleNotFoundError")),
            "{run:?}"
        );
    }

    #[tokio::test]
    async fn fork_bomb_is_contained_under_bwrap() {
        let sb = Sandbox::new(SandboxConfig {
            max_processes: 16,
            wall_timeout_ms: 2500,
            ..cfg(SandboxMode::Bwrap)
        })
        .unwrap();
        let tests = [tc("count", "forks()", "0"), tc("bomb", "bomb()", "0")];
        let started = Instant::now();
        let (run, _d) = run_cases(&sb, FORK_COUNT, &tests).await;
        assert_fork_limited(&run, 16);
        assert_eq!(get(&run, "bomb").error_type.as_deref(), Some("Timeout"));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The machine is unharmed: a new run works at once.
        let (again, _d) = run_cases(&sb, "def f():\n    return 1\n", &[tc("a", "f()", "1")]).await;
        assert!(again.all_passed());
    }

    #[tokio::test]
    async fn rlimits_only_mode_runs_and_limits_processes() {
        let _guard = RLIMITS_LOCK.lock().await;
        let sb = Sandbox::new(SandboxConfig {
            max_processes: 16,
            wall_timeout_ms: 2500,
            ..cfg(SandboxMode::RlimitsOnly)
        })
        .unwrap();
        assert_eq!(sb.isolation(), Isolation::RlimitsOnly);
        assert!(sb
            .isolation_note()
            .unwrap()
            .contains("isolation is reduced"));
        let code = format!("{FORK_COUNT}\ndef add(a, b):\n    return a + b\n");
        let tests = [
            tc("ok", "add(1, 2)", "3"),
            tc("count", "forks()", "0"),
            tc("bomb", "bomb()", "0"),
        ];
        let (run, _d) = run_cases(&sb, &code, &tests).await;
        assert_eq!(run.isolation, Isolation::RlimitsOnly);
        assert!(get(&run, "ok").passed, "{run:?}");
        assert_fork_limited(&run, 16);
        assert_eq!(
            get(&run, "bomb").error_type.as_deref(),
            Some("Timeout"),
            "{run:?}"
        );
        assert!(run.wall_ms < 4000, "{run:?}");
        let (again, _d) = run_cases(&sb, "def f():\n    return 1\n", &[tc("a", "f()", "1")]).await;
        assert!(again.all_passed(), "{again:?}");
    }

    #[tokio::test]
    async fn memory_hog_gets_memory_error() {
        let sb = Sandbox::new(SandboxConfig {
            address_space_bytes: 256 << 20,
            per_test_timeout_ms: 4000,
            ..cfg(SandboxMode::Bwrap)
        })
        .unwrap();
        let code = "def hog():\n    return len(bytearray(2 * 1024 ** 3))\n\ndef grow():\n    xs = []\n    while True:\n        xs.append(bytearray(10 ** 6))\n";
        let (run, _d) =
            run_cases(&sb, code, &[tc("a", "hog()", "0"), tc("b", "grow()", "0")]).await;
        assert_eq!(
            get(&run, "a").error_type.as_deref(),
            Some("MemoryError"),
            "{run:?}"
        );
        assert_eq!(
            get(&run, "b").error_type.as_deref(),
            Some("MemoryError"),
            "{run:?}"
        );
    }

    #[tokio::test]
    async fn network_and_writes_outside_the_work_dir_fail_under_bwrap() {
        let sb = bwrap_sandbox();
        let leak = format!("/tmp/docsmith-leak-{}", nonce().unwrap());
        let code = format!(
            r#"
import socket
def connect(host, port):
    socket.create_connection((host, port), timeout=2).close()
    return "connected"

def write(path):
    with open(path, "w") as fh:
        fh.write("x")
    return "written"

def write_tmp():
    return write("{leak}")
"#
        );
        let tests = [
            raises("lo", "connect('127.0.0.1', 22)", "OSError"),
            raises("public", "connect('1.1.1.1', 80)", "OSError"),
            raises("dns", "socket.getaddrinfo('example.com', 80)", "OSError"),
            raises("etc", "write('/etc/docsmith-test')", "OSError"),
            raises("root", "write('/root/docsmith-test')", "OSError"),
            raises("usr", "write('/usr/docsmith-test')", "OSError"),
            raises("jobdir", "write('/tmp/docsmith-run/here.txt')", "OSError"),
            raises("harness", "write(__file__)", "OSError"),
            raises("slash", "write('/here.txt')", "OSError"),
            raises("dev", "write('/dev/shm/here.txt')", "OSError"),
            tc("tmp", "write_tmp()", "'written'"),
            tc("cwd", "write('here.txt')", "'written'"),
        ];
        let (run, dir) = run_cases(&sb, &code, &tests).await;
        for r in &run.results {
            assert!(r.passed, "{r:?}");
        }
        assert!(
            !Path::new(&leak).exists(),
            "a write to the sandbox /tmp leaked to the host"
        );
        assert!(!Path::new("/etc/docsmith-test").exists());
        // The working dir is the private tmpfs: nothing lands in the host work dir.
        let files: Vec<String> = walk(dir.path());
        assert!(
            files.iter().all(|f| f.ends_with(HARNESS_FILE)
                || f.ends_with(JOB_FILE)
                || f.ends_with(CANDIDATE_FILE)),
            "{files:?}"
        );
    }

    /// Every file under `dir`, recursively.
    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
        out
    }

    #[tokio::test]
    async fn the_candidate_job_holds_no_expected_values_and_the_referee_no_candidate() {
        let sb = bwrap_sandbox();
        let (run, dir) = run_cases(
            &sb,
            "def f():\n    return 'ok'\n",
            &[
                tc("a", "f()", "'EXPECTED-MARKER'"),
                raises("b", "f()", "MarkerError"),
            ],
        )
        .await;
        assert!(!run.all_passed());
        let cand = std::fs::read_to_string(dir.path().join("cand-0").join(JOB_FILE)).unwrap();
        assert!(
            !cand.contains("EXPECTED-MARKER") && !cand.contains("MarkerError"),
            "{cand}"
        );
        let referee: Vec<String> = walk(&dir.path().join("referee"));
        assert_eq!(referee.len(), 2, "{referee:?}");
        assert!(referee.iter().all(|f| !f.ends_with(CANDIDATE_FILE)));
        let job = std::fs::read_to_string(dir.path().join("referee").join(JOB_FILE)).unwrap();
        // The referee gets the expected values on stdin: nothing on disk.
        assert!(
            !job.contains("EXPECTED-MARKER") && !job.contains("return 'ok'"),
            "{job}"
        );
        assert!(job.contains("referee"), "{job}");
    }

    #[tokio::test]
    async fn results_channel_cannot_be_forged_from_candidate_output() {
        let sb = bwrap_sandbox();
        let code = r#"
import os, sys, json
def f():
    fake = json.dumps({"event": "result", "test_id": "b", "passed": True, "duration_ms": 0})
    print(fake)
    os.write(1, (fake + "\n").encode())
    sys.__stdout__.write(fake + "\n")
    sys.__stdout__.flush()
    return 1

def g():
    return 2
"#;
        let (run, _d) = run_cases(&sb, code, &[tc("a", "f()", "1"), tc("b", "g()", "3")]).await;
        assert!(get(&run, "a").passed);
        assert!(!get(&run, "b").passed, "forged result accepted: {run:?}");
        assert!(
            run.stderr_tail.contains("\"test_id\": \"b\""),
            "raw writes go to stderr: {}",
            run.stderr_tail
        );
    }

    /// Host pids of processes whose command line contains `marker`.
    fn pids_with(marker: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(marker))
                    .unwrap_or(false)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    async fn cancel_kills_everything(sb: Sandbox) {
        let dir = sb.new_work_dir().unwrap();
        let marker = format!("1000.{}", std::process::id() * 7 + sb.isolation() as u32);
        let code = format!(
            r#"
import os, subprocess, time
def f():
    subprocess.Popen(["sleep", "{marker}"])
    while True:
        time.sleep(0.05)
"#
        );
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let watched = marker.clone();
        let watcher = tokio::spawn(async move {
            for _ in 0..200 {
                if !pids_with(&watched).is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            trigger.cancel();
        });
        let started = Instant::now();
        let res = sb
            .run_tests(dir.path(), &code, &[tc("a", "f()", "1")], &cancel)
            .await;
        watcher.await.unwrap();
        assert!(matches!(res, Err(SandboxError::Cancelled)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The candidate's process (bwrap's or python's command line names the
        // host job dir) and its grandchild (namespaced under bwrap, so found by
        // its argument) are gone within a second.
        let job_dir = dir.path().join("cand-0").display().to_string();
        let survivors = || {
            let mut left = pids_with(&marker);
            left.extend(pids_with(&job_dir));
            left
        };
        let mut left = survivors();
        for _ in 0..20 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = survivors();
        }
        assert!(left.is_empty(), "processes survived the cancel: {left:?}");
    }

    #[tokio::test]
    async fn cancel_kills_the_process_group_under_bwrap() {
        cancel_kills_everything(bwrap_sandbox()).await;
    }

    #[tokio::test]
    async fn cancel_kills_the_process_group_with_rlimits_only() {
        let _guard = RLIMITS_LOCK.lock().await;
        cancel_kills_everything(Sandbox::new(cfg(SandboxMode::RlimitsOnly)).unwrap()).await;
    }

    #[tokio::test]
    async fn run_script_reports_exit_code_output_and_timeout() {
        let sb = Sandbox::new(SandboxConfig {
            wall_timeout_ms: 1500,
            ..cfg(SandboxMode::Bwrap)
        })
        .unwrap();
        let dir = sb.new_work_dir().unwrap();
        let cancel = CancellationToken::new();
        let out = sb
            .run_script(
                dir.path(),
                "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nsys.exit(3)\n",
                &cancel,
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout_tail.trim(), "hello");
        assert!(out.stderr_tail.contains("oops"));
        assert_eq!(out.killed, None);
        let out = sb
            .run_script(dir.path(), "while True:\n    pass\n", &cancel)
            .await
            .unwrap();
        assert_eq!(out.killed, Some(KillReason::WallTimeout));
        assert!(out.wall_ms < 3000);
    }

    #[test]
    fn missing_python_and_config_defaults() {
        let err = Sandbox::new(SandboxConfig {
            python: "/nonexistent/python3".into(),
            ..cfg(SandboxMode::RlimitsOnly)
        })
        .unwrap_err();
        assert!(matches!(err, SandboxError::PythonMissing { .. }), "{err}");
        let c: SandboxConfig = toml::from_str("mode = \"rlimits_only\"\ncpu_seconds = 3").unwrap();
        assert_eq!(c.mode, SandboxMode::RlimitsOnly);
        assert_eq!(c.cpu_seconds, 3);
        assert_eq!(c.wall_timeout_ms, 30_000);
        assert_eq!(c.address_space_bytes, 1 << 30);
    }
}
