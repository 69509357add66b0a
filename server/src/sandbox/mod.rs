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
    /// Running as root: drop to uid/gid 65534 in the child.
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
        let host_dir = self.prepare_work_dir(work_dir)?;
        let inside = self.inside_dir(&host_dir);
        let job = serde_json::json!({
            "mode": "tests",
            "module_path": inside.join(CANDIDATE_FILE),
            "entry_point": entry_point,
            "per_test_timeout_ms": self.cfg.per_test_timeout_ms,
            "tests": tests,
        });
        self.write_file(&host_dir.join(CANDIDATE_FILE), code.as_bytes())?;
        self.write_file(&host_dir.join(JOB_FILE), job.to_string().as_bytes())?;
        self.write_file(&host_dir.join(HARNESS_FILE), HARNESS.as_bytes())?;

        let nonce = nonce()?;
        let mut collector = Collector::new(&nonce);
        let spec = self.spec(&host_dir, &inside, nonce.clone());
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

    /// Runs a whole script as `__main__` with the same isolation and limits
    /// (benchmarks score with hidden tests this way). Writes `script.py` and
    /// `job.json` into `work_dir`. Errors: `Cancelled`, `WorkDirUnreachable`, `Io`.
    pub async fn run_script(
        &self,
        work_dir: &Path,
        script: &str,
        cancel: &CancellationToken,
    ) -> Result<ScriptOutcome, SandboxError> {
        let host_dir = self.prepare_work_dir(work_dir)?;
        let inside = self.inside_dir(&host_dir);
        let job = serde_json::json!({ "mode": "script", "script_path": inside.join(SCRIPT_FILE) });
        self.write_file(&host_dir.join(SCRIPT_FILE), script.as_bytes())?;
        self.write_file(&host_dir.join(JOB_FILE), job.to_string().as_bytes())?;
        self.write_file(&host_dir.join(HARNESS_FILE), HARNESS.as_bytes())?;
        let spec = self.spec(&host_dir, &inside, nonce()?);
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
    fn prepare_work_dir(&self, work_dir: &Path) -> Result<PathBuf, SandboxError> {
        std::fs::create_dir_all(work_dir)?;
        let dir = work_dir.canonicalize()?;
        if self.drop_privileges {
            if self.bwrap.is_none() && !world_searchable_parents(&dir) {
                return Err(SandboxError::WorkDirUnreachable { path: dir });
            }
            std::os::unix::fs::chown(&dir, Some(process::SANDBOX_UID), Some(process::SANDBOX_GID))?;
        }
        Ok(dir)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<(), SandboxError> {
        // Replace rather than truncate: a previous run may have left a link.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, data)?;
        if self.drop_privileges {
            std::os::unix::fs::chown(path, Some(process::SANDBOX_UID), Some(process::SANDBOX_GID))?;
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
    fn spec(&self, host_dir: &Path, inside: &Path, nonce: String) -> Spec {
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
        )
    }

    /// Builds the spec for `argv` (program first), through bwrap when enabled.
    fn wrap(
        &self,
        host_dir: &Path,
        inside: &Path,
        argv: &mut Vec<std::ffi::OsString>,
        stdin: Vec<u8>,
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
                // RLIMIT_NPROC is set by the harness inside the user namespace,
                // where it counts only this run's processes.
                (bwrap.clone(), args, None)
            }
            None => {
                let program = PathBuf::from(argv.remove(0));
                let nproc = if self.drop_privileges {
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
            drop_privileges: self.drop_privileges,
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
        if self.drop_privileges {
            std::os::unix::fs::chown(
                &host_dir,
                Some(process::SANDBOX_UID),
                Some(process::SANDBOX_GID),
            )
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
        let mut spec = self.wrap(&host_dir, &inside, &mut argv, Vec::new());
        spec.wall = Duration::from_secs(20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let cancel = CancellationToken::new();
        let mut lines = Vec::new();
        // A separate thread: `new` may be called from inside a runtime.
        let result = std::thread::scope(|s| {
            s.spawn(|| {
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
}
