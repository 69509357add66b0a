//! Programs the server runs on the host, outside the sandbox: finding them on
//! PATH, and running one to completion under a deadline and the task's
//! cancel token, its whole process group killed when either comes first.
//!
//! Owns: PATH lookup and the supervision of short host-side tools (the
//! checkers' `python3 -m py_compile`, ruff, bandit). Knows nothing about what
//! the tools check, nor about sandboxed runs (`sandbox::process` supervises
//! those, with rlimits and uids; it shares [`kill_group`] and
//! [`find_on_path`] from here).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The first executable file named `name` in a directory of PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Sends SIGKILL to every process in group `pgid`.
pub fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: plain syscall; a group that is already gone gives ESRCH.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Why [`run`] returned no output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start it: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("it failed while running: {0}")]
    Wait(#[source] std::io::Error),
    #[error("it did not finish within {} s and was killed", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("it was cancelled and killed")]
    Cancelled,
}

/// Runs `cmd` to completion and returns its status, stdout and stderr. Stdin
/// is empty; the process leads its own process group, which is killed
/// (SIGKILL) when `timeout` passes or `cancel` fires first, so a tool's own
/// children go with it. The child is also killed if this future is dropped.
pub async fn run(
    mut cmd: Command,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Output, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if cancel.is_cancelled() {
        return Err(RunError::Cancelled);
    }
    let child = cmd.spawn().map_err(RunError::Spawn)?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    let ended = tokio::select! {
        out = child.wait_with_output() => return out.map_err(RunError::Wait),
        _ = tokio::time::sleep(timeout) => RunError::TimedOut(timeout),
        _ = cancel.cancelled() => RunError::Cancelled,
    };
    // The leader was killed when its future was dropped above; the rest of
    // its group goes now.
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    Err(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    /// Whether `pid` still runs (a zombie waiting for its reaper does not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit_once(')').map_or("", |(_, r)| r.trim_start());
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    async fn gone(pid: i32) -> bool {
        for _ in 0..100 {
            if !running(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn output_comes_back() {
        let out = run(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A grandchild that would outlive its parent, holding the pipes open.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let t0 = Instant::now();
        let e = run(
            sh(&script),
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RunError::TimedOut(_)), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(e.to_string().contains("0.3 s"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid).await, "the grandchild {pid} still runs");
    }

    #[tokio::test]
    async fn cancel_stops_it() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let t0 = Instant::now();
        let e = run(sh("sleep 30"), Duration::from_secs(60), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Cancelled), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // Already cancelled: nothing starts.
        let e = run(sh("exit 0"), Duration::from_secs(60), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Cancelled), "{e:?}");
    }

    #[test]
    fn path_lookup_wants_an_executable_file() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-here").is_none());
    }
}
