//! What a sandboxed run can see: the interpreter's directories (from a probe of
//! the interpreter), the system directories, and the bwrap arguments that mount
//! only those read-only, plus `/proc`, `/dev`, the job directory (read-only) and
//! a size-limited tmpfs on `/tmp`, the only writable place. Also the temporary
//! work dirs' names and the removal of stale ones.
//!
//! Owns: the mount layout. Knows nothing about tests, the harness protocol or
//! process supervision.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the job directory is mounted inside bwrap (a fixed path, so tracebacks
/// are stable and the host path never matters).
pub(crate) const JOB_DIR_INSIDE: &str = "/tmp/docsmith-run";
/// The writable working directory (and HOME, TMPDIR) inside bwrap: the tmpfs.
pub(crate) const SCRATCH_INSIDE: &str = "/tmp";
/// Where the user's project (its import root) is mounted read-only inside
/// bwrap, for a candidate that imports the project's own modules.
pub(crate) const PROJECT_INSIDE: &str = "/project";
/// Folders of the project a candidate never sees (an empty read-only tmpfs
/// covers them): docsmith's store (every prompt) and git's objects and config.
const HIDDEN_PROJECT_DIRS: [&str; 2] = [".docsmith", ".git"];

/// Top-level system directories bound read-only (or recreated as the same
/// symlink, on merged-/usr systems) when they exist.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The probe script: where the interpreter lives. Runs with `-I -B`.
pub(crate) const PROBE_SCRIPT: &str = "import json, sys, sysconfig\n\
p = sysconfig.get_paths()\n\
print(json.dumps({'executable': sys.executable, \
'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix], \
'dirs': [p.get(k) for k in ('stdlib', 'platstdlib', 'purelib', 'platlib')] + [d for d in sys.path if d.endswith('lib-dynload')]}))\n";

/// What the probe printed.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProbeInfo {
    pub executable: PathBuf,
    pub prefixes: Vec<Option<PathBuf>>,
    pub dirs: Vec<Option<PathBuf>>,
}

/// One top-level system entry and how to recreate it inside.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SystemEntry {
    Dir(PathBuf),
    Symlink { path: PathBuf, target: PathBuf },
}

/// The read-only part of the mount layout, fixed when the sandbox is created.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    system: Vec<SystemEntry>,
    /// Interpreter directories outside the system directories, each bound at
    /// its own path (never a parent of them, never a home directory).
    python_dirs: Vec<PathBuf>,
    /// The directory of the interpreter, first on PATH inside.
    python_bin: Option<PathBuf>,
}

impl Layout {
    /// The layout for an interpreter described by `info`. Errors (a message)
    /// when an interpreter directory is `/` or contains the home directory.
    pub(crate) fn new(info: &ProbeInfo) -> Result<Layout, String> {
        let system: Vec<SystemEntry> = SYSTEM_DIRS
            .iter()
            .filter_map(|d| {
                let p = Path::new(d);
                let meta = p.symlink_metadata().ok()?;
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(p).ok()?;
                    Some(SystemEntry::Symlink {
                        path: p.to_path_buf(),
                        target,
                    })
                } else if meta.is_dir() {
                    Some(SystemEntry::Dir(p.to_path_buf()))
                } else {
                    None
                }
            })
            .collect();
        let covered: Vec<PathBuf> = system
            .iter()
            .filter_map(|e| match e {
                SystemEntry::Dir(p) => p.canonicalize().ok(),
                SystemEntry::Symlink { .. } => None,
            })
            .collect();
        let mut wanted: Vec<PathBuf> = info
            .prefixes
            .iter()
            .chain(info.dirs.iter())
            .flatten()
            .cloned()
            .collect();
        for exe in [
            Some(info.executable.clone()),
            info.executable.canonicalize().ok(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(dir) = exe.parent() {
                wanted.push(dir.to_path_buf());
            }
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .and_then(|h| h.canonicalize().ok());
        let mut dirs: Vec<PathBuf> = Vec::new();
        for w in wanted {
            let Ok(c) = w.canonicalize() else { continue };
            if !c.is_dir() || covered.iter().any(|s| c.starts_with(s)) {
                continue;
            }
            if c == Path::new("/") {
                return Err(format!(
                    "the interpreter lives at `{}`, which would expose the whole filesystem",
                    w.display()
                ));
            }
            if let Some(h) = &home {
                if h.starts_with(&c) {
                    return Err(format!(
                        "the interpreter directory `{}` contains the home directory, which must not be mounted; use an interpreter installed elsewhere (sandbox.python)",
                        c.display()
                    ));
                }
            }
            dirs.push(c);
        }
        dirs.sort();
        dirs.dedup();
        // Keep only the outermost of nested directories.
        let mut python_dirs: Vec<PathBuf> = Vec::new();
        for d in dirs {
            if !python_dirs.iter().any(|p| d.starts_with(p)) {
                python_dirs.push(d);
            }
        }
        Ok(Layout {
            system,
            python_dirs,
            python_bin: info.executable.parent().map(Path::to_path_buf),
        })
    }

    /// Interpreter directories bound besides the system ones.
    pub(crate) fn python_dirs(&self) -> &[PathBuf] {
        &self.python_dirs
    }

    /// PATH inside the sandbox.
    pub(crate) fn path_env(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(b) = &self.python_bin {
            parts.push(b.display().to_string());
        }
        for p in ["/usr/local/bin", "/usr/bin", "/bin"] {
            if !parts.iter().any(|x| x == p) {
                parts.push(p.to_string());
            }
        }
        parts.join(":")
    }

    /// bwrap arguments up to and including `--`: no namespace shared, the
    /// read-only layout, `job_dir` read-only at [`JOB_DIR_INSIDE`], a tmpfs of
    /// `tmp_size_bytes` on `/tmp` (the working directory), and `/` and `/dev`
    /// read-only. With `project`, that folder read-only at
    /// [`PROJECT_INSIDE`], its `.docsmith` and `.git` folders covered by
    /// empty read-only tmpfs and its top-level `.env*` files by `/dev/null`.
    pub(crate) fn bwrap_args(
        &self,
        job_dir: &Path,
        tmp_size_bytes: u64,
        project: Option<&Path>,
    ) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            for i in items {
                a.push(i.as_ref().to_os_string());
            }
        };
        push(&[&"--unshare-all", &"--die-with-parent", &"--new-session"]);
        for e in &self.system {
            match e {
                SystemEntry::Dir(p) => push(&[&"--ro-bind", p, p]),
                SystemEntry::Symlink { path, target } => push(&[&"--symlink", target, path]),
            }
        }
        let size = tmp_size_bytes.max(1 << 20).to_string();
        push(&[
            &"--proc",
            &"/proc",
            &"--dev",
            &"/dev",
            &"--size",
            &size,
            &"--tmpfs",
            &SCRATCH_INSIDE,
            &"--ro-bind",
            &job_dir,
            &JOB_DIR_INSIDE,
        ]);
        // After the tmpfs on /tmp, so an interpreter (a venv) under /tmp is
        // not hidden by it.
        for d in &self.python_dirs {
            push(&[&"--ro-bind", d, d]);
        }
        if let Some(root) = project {
            push(&[&"--ro-bind", &root, &PROJECT_INSIDE]);
            let inside = Path::new(PROJECT_INSIDE);
            for d in HIDDEN_PROJECT_DIRS {
                if root.join(d).is_dir() {
                    let at = inside.join(d);
                    push(&[&"--size", &"4096", &"--tmpfs", &at, &"--remount-ro", &at]);
                }
            }
            let envs = std::fs::read_dir(root).into_iter().flatten().flatten();
            for e in envs {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(".env")
                    && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())
                {
                    push(&[&"--ro-bind", &"/dev/null", &inside.join(&name)]);
                }
            }
        }
        push(&[
            &"--remount-ro",
            &"/dev",
            &"--remount-ro",
            &"/",
            &"--chdir",
            &SCRATCH_INSIDE,
            &"--",
        ]);
        a
    }
}

/// A fresh temporary directory `docsmith-<kind>-<pid>-XXXXXX` in the system
/// temp dir (mode 0755: a per-run sandbox uid must be able to reach what is
/// inside), removed when the value is dropped. The pid in the name lets
/// [`remove_stale_work_dirs`] clean up after a killed process.
pub fn temp_work_dir(kind: &str) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix(&format!("docsmith-{kind}-{}-", std::process::id()))
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Removes `docsmith-sandbox-*` and `docsmith-task-*` directories in the system
/// temp dir whose creating process (the pid in the name) is gone; directories
/// from older versions (no pid in the name) once they are a day old. Best
/// effort: returns how many were removed.
pub fn remove_stale_work_dirs() -> usize {
    remove_stale_in(
        &std::env::temp_dir(),
        std::time::Duration::from_secs(24 * 3600),
    )
}

fn remove_stale_in(tmp: &Path, legacy_age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("docsmith-sandbox-")
            .or_else(|| name.strip_prefix("docsmith-task-"))
        else {
            continue;
        };
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let stale = match owner_pid(rest) {
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            None => meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > legacy_age),
        };
        if stale && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The pid in `<pid>-<random>`, the part of a work dir's name after its prefix.
fn owner_pid(rest: &str) -> Option<u32> {
    let (pid, random) = rest.split_once('-')?;
    if random.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_the_new_format() {
        assert_eq!(owner_pid("123-abcDEF"), Some(123));
        assert_eq!(owner_pid("abcDEF"), None);
        assert_eq!(owner_pid("12x-abc"), None);
        assert_eq!(owner_pid("0-abc"), None);
        assert_eq!(owner_pid("123-"), None);
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp
            .path()
            .join(format!("docsmith-task-{}-aaaaaa", std::process::id()));
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = tmp.path().join("docsmith-sandbox-99999999-bbbbbb");
        let legacy = tmp.path().join("docsmith-task-cccccc");
        let other = tmp.path().join("unrelated-99999999-x");
        for d in [&mine, &dead, &legacy, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/file"), "x").unwrap();
        }
        let removed = remove_stale_in(tmp.path(), std::time::Duration::from_secs(3600));
        assert_eq!(removed, 1);
        assert!(mine.exists() && legacy.exists() && other.exists());
        assert!(!dead.exists());
        // A legacy dir older than the age limit goes too.
        assert_eq!(remove_stale_in(tmp.path(), std::time::Duration::ZERO), 1);
        assert!(!legacy.exists() && mine.exists());
    }

    #[test]
    fn layout_binds_the_prefix_not_its_parent_and_never_home() {
        let root = tempfile::tempdir().unwrap();
        let prefix = root.path().join("versions/3.11.7");
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::fs::create_dir_all(prefix.join("lib/python3.11/lib-dynload")).unwrap();
        let info = ProbeInfo {
            executable: prefix.join("bin/python3"),
            prefixes: vec![Some(prefix.clone()), Some(PathBuf::from("/usr"))],
            dirs: vec![
                Some(prefix.join("lib/python3.11")),
                Some(prefix.join("lib/python3.11/lib-dynload")),
                None,
                Some(PathBuf::from("/nonexistent/dir")),
            ],
        };
        let layout = Layout::new(&info).unwrap();
        let canon = prefix.canonicalize().unwrap();
        assert_eq!(layout.python_dirs(), std::slice::from_ref(&canon));
        assert!(layout
            .path_env()
            .starts_with(&format!("{}/bin:", prefix.display())));
        let args: Vec<String> = layout
            .bwrap_args(Path::new("/x/job"), 64 << 20, None)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains(&format!("--ro-bind {0} {0}", canon.display())));
        assert!(!joined.contains(&format!(" {} ", root.path().display())));
        assert!(!joined.contains("--ro-bind / /"), "{joined}");
        assert!(joined.contains("--size 67108864 --tmpfs /tmp"), "{joined}");
        assert!(joined.contains(&format!("--ro-bind /x/job {JOB_DIR_INSIDE}")));
        assert!(
            joined.ends_with("--remount-ro / --chdir /tmp --"),
            "{joined}"
        );
        // An interpreter whose prefix contains HOME is refused.
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
            if let Some(parent) = home.parent().filter(|p| *p != Path::new("/")) {
                let info = ProbeInfo {
                    executable: home.join("python3"),
                    prefixes: vec![Some(parent.to_path_buf())],
                    dirs: vec![],
                };
                if parent.canonicalize().is_ok() && !parent.starts_with("/usr") {
                    assert!(Layout::new(&info).is_err());
                }
            }
        }
    }
}
