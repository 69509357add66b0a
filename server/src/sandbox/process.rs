//! Spawning one sandboxed process and supervising it: rlimits and the uid drop
//! in `pre_exec`, its own process group, a wall-clock deadline, the cancel
//! token, and a kill of the whole group. Knows nothing about tests or Python.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host::kill_group;

/// First uid of the pool that sandboxed runs use when the server runs as root
/// (RLIMIT_NPROC does not bind root, and root can write anywhere).
const RUN_UID_BASE: u32 = 0x7000_0000;
/// Size of the uid pool.
const RUN_UID_POOL: u32 = 1 << 16;

/// A fresh uid (used as gid too) for one run: its own RLIMIT_NPROC budget, not
/// shared with other runs, zombies waiting for init or other users' processes,
/// and a uid whose every process can be swept after the run ([`sweep_uid`]).
/// Chosen round-robin from a pool starting at a per-process random offset.
pub(crate) fn next_run_uid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        t ^ std::process::id().wrapping_mul(2_654_435_761)
    });
    RUN_UID_BASE + (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % RUN_UID_POOL)
}

/// Kills every process owned by `uid` (one of our per-run uids): a forked
/// child drops to `uid` and calls `kill(-1, SIGKILL)`, which reaches exactly
/// the processes of that uid, including ones that left the process group
/// (`setsid`) or were reparented to init.
pub(crate) fn sweep_uid(uid: u32) {
    // SAFETY: after fork the child only calls async-signal-safe functions and _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(uid) == 0
                && libc::setuid(uid) == 0
            {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// Resource limits applied with `setrlimit` in the child before `exec`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub cpu_seconds: u64,
    pub address_space_bytes: u64,
    pub file_size_bytes: u64,
    /// RLIMIT_NPROC, or `None` to leave it as inherited (bwrap: set inside the
    /// user namespace by the harness instead).
    pub nproc: Option<u64>,
}

/// What to run and how.
pub(crate) struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub limits: Limits,
    /// Run as this uid and gid (set after the limits); swept after the run.
    pub run_as: Option<u32>,
    /// Written to stdin at once.
    pub stdin: Vec<u8>,
    /// Written to stdin after `stdin` when it arrives; stdin is closed then
    /// (or when the sender is dropped). Lets a process start before its input exists.
    pub stdin_later: Option<tokio::sync::oneshot::Receiver<Vec<u8>>>,
    pub wall: Duration,
}

/// How a supervised run ended.
#[derive(Debug)]
pub(crate) enum End {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    WallTimeout,
    Cancelled,
}

/// The outcome of a supervised run.
#[derive(Debug)]
pub(crate) struct Finished {
    pub end: End,
    /// Last bytes of stderr (about `TAIL_BYTES`).
    pub stderr_tail: String,
    /// Last bytes of stdout (about `TAIL_BYTES`).
    pub stdout_tail: String,
    pub wall_ms: u64,
}

/// Bytes of stdout / stderr kept for the tails.
pub(crate) const TAIL_BYTES: usize = 2000;
/// A stdout line longer than this is dropped (the harness never writes one).
const MAX_LINE: usize = 4 << 20;
/// How long to keep reading pipes after the process ended or was killed.
const DRAIN: Duration = Duration::from_millis(300);

/// Runs `spec`, calling `on_line` for each complete stdout line as it arrives,
/// so that lines written before a kill are kept. Kills the whole process group
/// (SIGKILL) on wall timeout and cancel, and after a normal exit (stragglers).
pub(crate) async fn supervise(
    spec: Spec,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<Finished> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let limits = spec.limits;
    let run_as = spec.run_as;
    // SAFETY: the closure only calls async-signal-safe libc functions
    // (setrlimit, setgroups, setgid, setuid, prctl) and allocates nothing.
    unsafe {
        cmd.as_std_mut()
            .pre_exec(move || child_setup(limits, run_as));
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    if let Some(mut stdin) = child.stdin.take() {
        // A child that dies at once closes the pipe: not an error here. A task
        // of its own, so that a large or late input never delays the deadline.
        let (first, later) = (spec.stdin, spec.stdin_later);
        tokio::spawn(async move {
            let _ = stdin.write_all(&first).await;
            if let Some(rx) = later {
                if let Ok(data) = rx.await {
                    let _ = stdin.write_all(&data).await;
                }
            }
        });
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let out_task = tokio::spawn(pump(child.stdout.take(), out_tx));
    let err_task = tokio::spawn(pump(child.stderr.take(), err_tx));

    let mut lines = LineSplitter::default();
    let mut stdout_tail = Tail::default();
    let mut stderr_tail = Tail::default();
    let deadline = tokio::time::sleep(spec.wall);
    tokio::pin!(deadline);
    let mut status = None;
    let mut out_open = true;
    let end = loop {
        tokio::select! {
            chunk = out_rx.recv(), if out_open => match chunk {
                Some(c) => { stdout_tail.push(&c); lines.push(&c, &mut on_line); }
                None => out_open = false,
            },
            chunk = err_rx.recv() => if let Some(c) = chunk { stderr_tail.push(&c) },
            st = child.wait(), if status.is_none() => status = Some(st?),
            _ = &mut deadline => break End::WallTimeout,
            _ = cancel.cancelled() => break End::Cancelled,
        }
        if let Some(st) = status {
            if !out_open {
                use std::os::unix::process::ExitStatusExt as _;
                break End::Exited {
                    code: st.code(),
                    signal: st.signal(),
                };
            }
        }
    };
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    if status.is_none() {
        // Reap the leader; SIGKILL was sent to the whole group above.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    if let Some(uid) = run_as {
        sweep_uid(uid);
    }
    // Keep what was written before the kill: drain briefly (an escaped
    // grandchild could hold a pipe open forever, hence the bound).
    let drain_until = tokio::time::Instant::now() + DRAIN;
    loop {
        tokio::select! {
            chunk = out_rx.recv(), if out_open => match chunk {
                Some(c) => { stdout_tail.push(&c); lines.push(&c, &mut on_line); }
                None => out_open = false,
            },
            chunk = err_rx.recv() => match chunk {
                Some(c) => stderr_tail.push(&c),
                None => break,
            },
            _ = tokio::time::sleep_until(drain_until) => break,
        }
    }
    while let Ok(c) = out_rx.try_recv() {
        stdout_tail.push(&c);
        lines.push(&c, &mut on_line);
    }
    lines.finish(&mut on_line);
    out_task.abort();
    err_task.abort();
    Ok(Finished {
        end,
        stderr_tail: stderr_tail.text(),
        stdout_tail: stdout_tail.text(),
        wall_ms: started.elapsed().as_millis() as u64,
    })
}

fn child_setup(limits: Limits, run_as: Option<u32>) -> std::io::Result<()> {
    fn set(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit with a valid pointer.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    set(libc::RLIMIT_CPU, limits.cpu_seconds.max(1))?;
    set(libc::RLIMIT_AS, limits.address_space_bytes)?;
    set(libc::RLIMIT_FSIZE, limits.file_size_bytes)?;
    set(libc::RLIMIT_CORE, 0)?;
    if let Some(n) = limits.nproc {
        set(libc::RLIMIT_NPROC, n)?;
    }
    if let Some(uid) = run_as {
        // SAFETY: plain syscalls; order matters (groups and gid before uid).
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    // After the credential change (which clears it): die with the server.
    // SAFETY: plain syscall.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Splits a byte stream into lines, dropping any line over `MAX_LINE` bytes.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    overflow: bool,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8], on_line: &mut impl FnMut(&str)) {
        for &b in chunk {
            if b == b'\n' {
                if !self.overflow {
                    on_line(&String::from_utf8_lossy(&self.pending));
                }
                self.pending.clear();
                self.overflow = false;
            } else if self.pending.len() < MAX_LINE {
                self.pending.push(b);
            } else {
                self.overflow = true;
            }
        }
    }

    fn finish(&mut self, on_line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() && !self.overflow {
            on_line(&String::from_utf8_lossy(&self.pending));
        }
        self.pending.clear();
    }
}

/// Keeps the last `TAIL_BYTES` bytes of a stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > 2 * TAIL_BYTES {
            let drop = self.buf.len() - TAIL_BYTES;
            self.buf.drain(..drop);
            self.cut = true;
        }
    }

    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        let text = String::from_utf8_lossy(&self.buf[start..]).into_owned();
        if self.cut || start > 0 {
            format!("...{text}")
        } else {
            text
        }
    }
}
