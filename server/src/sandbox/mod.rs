//! Runs untrusted generated Python and its test cases in a fresh `python3`
//! process: an embedded harness (`harness.py`), one test case at a time with
//! its own timeout, results as JSON lines on a channel the candidate cannot
//! reach, `bwrap` isolation when it works (no network, read-only root, private
//! /tmp, writable work dir only), rlimits, a uid drop when running as root, a
//! wall-clock timeout, and a kill of the whole process group on timeout or
//! cancel.
//!
//! Owns: process isolation and the harness protocol. Must not know about LLMs,
//! LSP or the store: it takes code and [`TestCase`]s and gives back a [`TestRun`].

mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::types::{Isolation, KillReason, TestCase, TestResult, TestRun};
use process::{End, Limits, Spec};

/// The harness script, written next to the candidate for every run.
const HARNESS: &str = include_str!("harness.py");
const HARNESS_FILE: &str = "_docsmith_harness.py";
const CANDIDATE_FILE: &str = "candidate.py";
const SCRIPT_FILE: &str = "script.py";
const JOB_FILE: &str = "job.json";
/// Where the work dir is mounted inside bwrap (a fixed path, so the sandbox
/// user never needs to traverse the host path, and tracebacks are stable).
const BWRAP_WORK_DIR: &str = "/tmp/docsmith-run";
const BWRAP_MISSING_NOTE: &str =
    "bwrap not found: running with rlimits only, isolation is reduced (apt-get install bubblewrap)";

/// Sandbox settings (the `[sandbox]` table of `docsmith.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Python interpreter, a name looked up on PATH or a path. Default `python3`.
    pub python: PathBuf,
    /// Isolation mode. Default [`SandboxMode::Auto`].
    pub mode: SandboxMode,
    /// RLIMIT_CPU of the whole run, seconds. Default 10.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes. Default 1 GiB.
    pub address_space_bytes: u64,
    /// Most processes (threads included) the run may have. Default 32.
    pub max_processes: u64,
    /// RLIMIT_FSIZE (largest file the run may write), bytes. Default 16 MiB.
    pub file_size_bytes: u64,
    /// Timeout of one test case (SIGALRM in the harness), milliseconds. Default 3000.
    pub per_test_timeout_ms: u64,
    /// Wall-clock timeout of the whole run (process group killed), milliseconds. Default 30000.
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
            per_test_timeout_ms: 3000,
            wall_timeout_ms: 30_000,
        }
    }
}

/// How strongly to isolate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// bwrap when it is installed and a probe run works, else rlimits only (with a note).
    Auto,
    /// bwrap or nothing: [`Sandbox::new`] fails with [`SandboxError::BwrapRequired`].
    Bwrap,
    /// rlimits, a process group and (as root) a uid drop; no namespaces.
    RlimitsOnly,
}

/// Why the sandbox could not run something.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("python interpreter `{python}` does not run for the sandbox user: {detail} (install python3, or set sandbox.python to an interpreter outside /root such as /usr/bin/python3)")]
    PythonMissing { python: String, detail: String },
    #[error("sandbox mode is `bwrap` but bubblewrap is unusable: {reason} (apt-get install bubblewrap, allow unprivileged user namespaces, or set sandbox.mode = \"auto\")")]
    BwrapRequired { reason: String },
    #[error("the sandbox run was cancelled (its process group was killed)")]
    Cancelled,
    #[error("the sandbox harness gave no usable output ({detail}); stderr tail: {stderr_tail}")]
    HarnessOutput { detail: String, stderr_tail: String },
    #[error("work dir {path} is not reachable by the sandbox user (uid 65534): a parent directory is not world-searchable; use a work dir under /tmp (see Sandbox::new_work_dir)")]
    WorkDirUnreachable { path: PathBuf },
    #[error("sandbox I/O error: {0}")]
    Io(#[from] std::io::Error),
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
    /// Running as root: each run drops to its own uid/gid (see `process::next_run_uid`).
    drop_privileges: bool,
    note: Option<String>,
}

impl Sandbox {
    /// Checks that the interpreter runs (as the sandbox user) and, unless the
    /// mode is `RlimitsOnly`, that bwrap is on PATH and a probe run through it works.
    ///
    /// Errors: [`SandboxError::PythonMissing`]; [`SandboxError::BwrapRequired`]
    /// in mode `Bwrap` when bwrap is missing or broken.
    pub fn new(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        // SAFETY: plain syscall.
        let drop_privileges = unsafe { libc::geteuid() } == 0;
        let mut sandbox = Sandbox {
            python: cfg.python.clone(),
            cfg,
            bwrap: None,
            drop_privileges,
            note: None,
        };
        let python = sandbox
            .probe_python()
            .map_err(|detail| SandboxError::PythonMissing {
                python: sandbox.cfg.python.display().to_string(),
                detail,
            })?;
        sandbox.python = python;
        match sandbox.cfg.mode {
            SandboxMode::RlimitsOnly => {
                sandbox.note = Some(
                    "sandbox mode rlimits_only: isolation is reduced (network and filesystem are not isolated; set sandbox.mode = \"auto\" with bubblewrap installed)".into(),
                );
            }
            SandboxMode::Auto | SandboxMode::Bwrap => match find_on_path("bwrap") {
                None => {
                    if sandbox.cfg.mode == SandboxMode::Bwrap {
                        return Err(SandboxError::BwrapRequired {
                            reason: "bwrap not found on PATH".into(),
                        });
                    }
                    sandbox.note = Some(BWRAP_MISSING_NOTE.into());
                }
                Some(bwrap) => {
                    sandbox.bwrap = Some(bwrap);
                    if let Err(reason) = sandbox.probe_python() {
                        sandbox.bwrap = None;
                        if sandbox.cfg.mode == SandboxMode::Bwrap {
                            return Err(SandboxError::BwrapRequired { reason });
                        }
                        sandbox.note = Some(format!(
                            "bwrap does not work here ({reason}): running with rlimits only, isolation is reduced (check that unprivileged user namespaces are allowed)"
                        ));
                    }
                }
            },
        }
        if let Some(note) = &sandbox.note {
            tracing::warn!(target: "docsmith::sandbox", "{note}");
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

    /// A fresh temporary work dir the sandbox user can reach (under the system
    /// temp dir); removed when the returned value is dropped.
    pub fn new_work_dir(&self) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("docsmith-sandbox-")
            .tempdir()
    }

    /// Runs `code` (a whole Python module, imported as `candidate`) then each
    /// test case, calling `entry_point` through the test's `call` text.
    /// Writes `candidate.py`, `job.json` and the harness into `work_dir`.
    ///
    /// Returns one result per test, in order. A wall timeout is not an error:
    /// the run comes back with `killed: Some(WallTimeout)`, the test in progress
    /// as `Timeout` and later ones as `NotRun`. Errors: `Cancelled` (after the
    /// process group was killed), `HarnessOutput`, `WorkDirUnreachable`, `Io`.
    pub async fn run_tests(
        &self,
        work_dir: &Path,
        code: &str,
        entry_point: &str,
        tests: &[TestCase],
        cancel: &CancellationToken,
    ) -> Result<TestRun, SandboxError> {
        let uid = self.run_uid();
        let host_dir = self.prepare_work_dir(work_dir, uid)?;
        let inside = self.inside_dir(&host_dir);
        let job = serde_json::json!({
            "mode": "tests",
            "module_path": inside.join(CANDIDATE_FILE),
            "entry_point": entry_point,
            "per_test_timeout_ms": self.cfg.per_test_timeout_ms,
            "tests": tests,
        });
        self.write_file(&host_dir.join(CANDIDATE_FILE), code.as_bytes(), uid)?;
        self.write_file(&host_dir.join(JOB_FILE), job.to_string().as_bytes(), uid)?;
        self.write_file(&host_dir.join(HARNESS_FILE), HARNESS.as_bytes(), uid)?;

        let nonce = nonce()?;
        let mut collector = Collector::new(&nonce);
        let spec = self.spec(&host_dir, &inside, nonce.clone(), uid);
        let finished = process::supervise(spec, cancel, |line| collector.line(line)).await?;
        let killed = match finished.end {
            End::Cancelled => return Err(SandboxError::Cancelled),
            End::WallTimeout => Some(KillReason::WallTimeout),
            End::Exited { .. } => None,
        };
        if !collector.ready && killed.is_none() {
            return Err(SandboxError::HarnessOutput {
                detail: format!(
                    "the harness exited before starting ({})",
                    describe_end(&finished.end)
                ),
                stderr_tail: finished.stderr_tail,
            });
        }
        let mut load_error = collector.load_error.take();
        if load_error.is_none() && !collector.loaded {
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
        let results = tests
            .iter()
            .map(|t| {
                collector.result_for(t, load_error.as_deref(), killed.is_some(), &finished.end)
            })
            .collect();
        Ok(TestRun {
            results,
            wall_ms: finished.wall_ms,
            isolation: self.isolation(),
            killed,
            load_error,
            stderr_tail: finished.stderr_tail,
        })
    }

    /// Runs several candidate modules on the same test cases; one [`TestRun`]
    /// per candidate, in order. (Sequential for now: each candidate is one
    /// `run_tests` in its own sub-directory of `work_root`.) Errors as
    /// [`Sandbox::run_tests`].
    pub async fn run_many(
        &self,
        work_root: &Path,
        candidates: &[String],
        entry_point: &str,
        tests: &[TestCase],
        cancel: &CancellationToken,
    ) -> Result<Vec<TestRun>, SandboxError> {
        let mut runs = Vec::with_capacity(candidates.len());
        for (i, code) in candidates.iter().enumerate() {
            let dir = work_root.join(format!("candidate-{i}"));
            runs.push(
                self.run_tests(&dir, code, entry_point, tests, cancel)
                    .await?,
            );
        }
        Ok(runs)
    }

    /// Runs a whole script as `__main__` with the same isolation and limits
    /// (benchmarks score with hidden tests this way). Writes `script.py` and
    /// `job.json` into `work_dir`. Errors: `Cancelled`, `WorkDirUnreachable`, `Io`.
    pub async fn run_script(
        &self,
        work_dir: &Path,
        script: &str,
        cancel: &CancellationToken,
    ) -> Result<ScriptOutcome, SandboxError> {
        let uid = self.run_uid();
        let host_dir = self.prepare_work_dir(work_dir, uid)?;
        let inside = self.inside_dir(&host_dir);
        let job = serde_json::json!({ "mode": "script", "script_path": inside.join(SCRIPT_FILE) });
        self.write_file(&host_dir.join(SCRIPT_FILE), script.as_bytes(), uid)?;
        self.write_file(&host_dir.join(JOB_FILE), job.to_string().as_bytes(), uid)?;
        self.write_file(&host_dir.join(HARNESS_FILE), HARNESS.as_bytes(), uid)?;
        let spec = self.spec(&host_dir, &inside, nonce()?, uid);
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

    /// Canonicalises the work dir and, when dropping privileges, hands it to
    /// the sandbox user (after checking that user can reach it).
    /// The uid of one run: a fresh one from the pool when running as root.
    fn run_uid(&self) -> Option<u32> {
        self.drop_privileges.then(process::next_run_uid)
    }

    fn prepare_work_dir(&self, work_dir: &Path, uid: Option<u32>) -> Result<PathBuf, SandboxError> {
        std::fs::create_dir_all(work_dir)?;
        let dir = work_dir.canonicalize()?;
        if let Some(uid) = uid {
            if self.bwrap.is_none() && !world_searchable_parents(&dir) {
                return Err(SandboxError::WorkDirUnreachable { path: dir });
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))?;
        }
        Ok(dir)
    }

    fn write_file(&self, path: &Path, data: &[u8], uid: Option<u32>) -> Result<(), SandboxError> {
        // Replace rather than truncate: a previous run may have left a link.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, data)?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
        }
        Ok(())
    }

    fn inside_dir(&self, host_dir: &Path) -> PathBuf {
        if self.bwrap.is_some() {
            PathBuf::from(BWRAP_WORK_DIR)
        } else {
            host_dir.to_path_buf()
        }
    }

    /// The process spec of one harness run in `host_dir` (seen as `inside`).
    fn spec(&self, host_dir: &Path, inside: &Path, nonce: String, uid: Option<u32>) -> Spec {
        let mut python_args: Vec<std::ffi::OsString> = vec![
            self.python.clone().into(),
            "-B".into(),
            "-s".into(),
            inside.join(HARNESS_FILE).into(),
            inside.join(JOB_FILE).into(),
        ];
        self.wrap(
            host_dir,
            inside,
            &mut python_args,
            format!("{nonce}\n").into_bytes(),
            uid,
        )
    }

    /// Builds the spec for `argv` (program first), through bwrap when enabled.
    fn wrap(
        &self,
        host_dir: &Path,
        inside: &Path,
        argv: &mut Vec<std::ffi::OsString>,
        stdin: Vec<u8>,
        uid: Option<u32>,
    ) -> Spec {
        let env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
            ("PYTHONHASHSEED".to_string(), "0".to_string()),
            ("HOME".to_string(), inside.display().to_string()),
            (
                "DOCSMITH_NPROC".to_string(),
                self.cfg.max_processes.to_string(),
            ),
        ];
        let (program, args, nproc) = match &self.bwrap {
            Some(bwrap) => {
                let mut args: Vec<std::ffi::OsString> = [
                    "--unshare-all",
                    "--die-with-parent",
                    "--new-session",
                    "--ro-bind",
                    "/",
                    "/",
                    "--tmpfs",
                    "/tmp",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                ]
                .iter()
                .map(Into::into)
                .collect();
                args.push("--bind".into());
                args.push(host_dir.into());
                args.push(inside.into());
                args.push("--chdir".into());
                args.push(inside.into());
                args.push("--".into());
                args.append(argv);
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
                (program, std::mem::take(argv), Some(nproc))
            }
        };
        Spec {
            program,
            args,
            env,
            cwd: host_dir.to_path_buf(),
            limits: Limits {
                cpu_seconds: self.cfg.cpu_seconds,
                address_space_bytes: self.cfg.address_space_bytes,
                file_size_bytes: self.cfg.file_size_bytes,
                nproc,
            },
            run_as: uid,
            stdin,
            wall: Duration::from_millis(self.cfg.wall_timeout_ms),
        }
    }

    /// Runs `python -c 'print(sys.executable)'` in the current mode; returns
    /// the interpreter path or why it failed.
    fn probe_python(&self) -> Result<PathBuf, String> {
        let dir = self
            .new_work_dir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let host_dir = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let uid = self.run_uid();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&host_dir, Some(uid), Some(uid))
                .map_err(|e| format!("cannot chown the probe dir: {e}"))?;
        }
        let inside = self.inside_dir(&host_dir);
        let mut argv = vec![
            self.python.clone().into_os_string(),
            "-B".into(),
            "-s".into(),
            "-c".into(),
            "import sys; print(sys.executable)".into(),
        ];
        let mut spec = self.wrap(&host_dir, &inside, &mut argv, Vec::new(), uid);
        spec.wall = Duration::from_secs(20);
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
        match lines.iter().find(|l| !l.trim().is_empty()) {
            Some(path) => Ok(PathBuf::from(path.trim())),
            None => Err("probe run printed no interpreter path".into()),
        }
    }
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

/// Collects harness channel lines as they arrive.
struct Collector {
    nonce: String,
    ready: bool,
    loaded: bool,
    load_error: Option<String>,
    in_progress: Option<(String, Instant)>,
    results: HashMap<String, TestResult>,
}

#[derive(Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    test_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Collector {
    fn new(nonce: &str) -> Self {
        Collector {
            nonce: nonce.to_string(),
            ready: false,
            loaded: false,
            load_error: None,
            in_progress: None,
            results: HashMap::new(),
        }
    }

    fn line(&mut self, line: &str) {
        let Some(json) = line.strip_prefix(&self.nonce) else {
            tracing::debug!(target: "docsmith::sandbox", "ignoring a channel line without the nonce");
            return;
        };
        let Ok(ev) = serde_json::from_str::<Event>(json) else {
            tracing::warn!(target: "docsmith::sandbox", "unparsable harness line: {json:.200}");
            return;
        };
        match ev.event.as_str() {
            "ready" => self.ready = true,
            "loaded" => self.loaded = true,
            "load_error" => self.load_error = ev.error,
            "start" => self.in_progress = ev.test_id.map(|id| (id, Instant::now())),
            "result" => {
                let Some(id) = ev.test_id else { return };
                let mut map = ev.rest;
                map.insert("test_id".into(), serde_json::Value::String(id.clone()));
                match serde_json::from_value::<TestResult>(serde_json::Value::Object(map)) {
                    Ok(r) => {
                        self.results.insert(id, r);
                    }
                    Err(e) => tracing::warn!(target: "docsmith::sandbox", "bad result line: {e}"),
                }
                self.in_progress = None;
            }
            _ => {}
        }
    }

    fn result_for(
        &mut self,
        test: &TestCase,
        load_error: Option<&str>,
        killed: bool,
        end: &End,
    ) -> TestResult {
        if let Some(r) = self.results.remove(&test.id) {
            return r;
        }
        let mut r = TestResult {
            test_id: test.id.clone(),
            passed: false,
            error_type: Some("NotRun".into()),
            message: Some("not run: the sandboxed process ended before this test".into()),
            traceback: None,
            actual: None,
            duration_ms: 0,
            outcome: None,
        };
        if let Some(err) = load_error {
            r.error_type = Some("LoadError".into());
            r.message = Some(format!(
                "the candidate module failed to load: {}",
                first_line(err)
            ));
            return r;
        }
        if let Some((id, started)) = &self.in_progress {
            if *id == test.id {
                r.duration_ms = started.elapsed().as_millis() as u64;
                if killed {
                    r.error_type = Some("Timeout".into());
                    r.message = Some(
                        "killed by the wall timeout of the run while this test ran (it ignored its own timeout)"
                            .into(),
                    );
                } else {
                    r.error_type = Some("ProcessExited".into());
                    r.message = Some(format!(
                        "the sandboxed process ended during this test ({})",
                        describe_end(end)
                    ));
                }
            }
        }
        r
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// 32 hex chars from /dev/urandom.
fn nonce() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
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
            .run_tests(dir.path(), code, "f", tests, &CancellationToken::new())
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
            tc("tmp", "write_tmp()", "'written'"),
            tc("workdir", "write('here.txt')", "'written'"),
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
        assert!(
            dir.path().join("here.txt").exists(),
            "the work dir is writable"
        );
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
    with open("pid.txt", "w") as fh:
        fh.write(str(os.getpid()))
    while True:
        time.sleep(0.05)
"#
        );
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let pid_file = dir.path().join("pid.txt");
        let watcher = tokio::spawn(async move {
            for _ in 0..100 {
                if pid_file.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            trigger.cancel();
        });
        let started = Instant::now();
        let res = sb
            .run_tests(dir.path(), &code, "f", &[tc("a", "f()", "1")], &cancel)
            .await;
        watcher.await.unwrap();
        assert!(matches!(res, Err(SandboxError::Cancelled)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
        let pid =
            std::fs::read_to_string(dir.path().join("pid.txt")).expect("candidate wrote its pid");
        if sb.isolation() == Isolation::RlimitsOnly {
            // Host pid: the process must be gone (reaped, not a zombie).
            assert!(
                !Path::new(&format!("/proc/{}", pid.trim())).exists(),
                "candidate {pid} survived"
            );
        }
        // The grandchild too (under bwrap the pid is namespaced, so look for it by its argument).
        let mut left = pids_with(&marker);
        for _ in 0..20 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = pids_with(&marker);
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

    /// Not an assertion: prints the median wall time of a 10-test run per mode
    /// (`cargo test -p docsmith --lib sandbox::tests::timing -- --nocapture`).
    #[tokio::test]
    async fn timing_of_a_ten_test_run() {
        let _guard = RLIMITS_LOCK.lock().await;
        let code = "def f(x):\n    return x * 2\n";
        let tests: Vec<TestCase> = (0..10)
            .map(|i| tc(&format!("t{i}"), &format!("f({i})"), &format!("{}", i * 2)))
            .collect();
        for mode in [SandboxMode::Bwrap, SandboxMode::RlimitsOnly] {
            let sb = Sandbox::new(cfg(mode)).unwrap();
            let mut times = Vec::new();
            for _ in 0..7 {
                let (run, _d) = run_cases(&sb, code, &tests).await;
                assert!(run.all_passed(), "{run:?}");
                times.push(run.wall_ms);
            }
            times.sort();
            eprintln!(
                "sandbox timing: mode {mode:?}: median {} ms over 7 runs of 10 tests ({times:?})",
                times[3]
            );
        }
    }
}
