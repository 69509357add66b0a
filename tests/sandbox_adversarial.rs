//! Adversarial tests of the sandbox against the REAL bubblewrap sandbox: hostile
//! candidates that try to forge passing results, read secrets, fill memory and
//! disk; a broken or missing bwrap; a hostile `py_compile.py` in the working
//! directory. Each case asserts that nothing escaped.
//!
//! Some cases re-run this test binary as a helper process (`helper_*` tests,
//! ignored and inert unless `DOCSMITH_ADV_HELPER` names them): to change PATH or
//! the working directory without racing the other tests, and to run the
//! home-directory cases as a non-root user (`setpriv` to uid 65534).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use docsmith::sandbox::{Sandbox, SandboxConfig, SandboxMode};
use docsmith::types::{TestCase, TestOrigin, TestResult, TestRun};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- helpers

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

fn cfg() -> SandboxConfig {
    SandboxConfig {
        mode: SandboxMode::Bwrap,
        per_test_timeout_ms: 2000,
        wall_timeout_ms: 15_000,
        ..Default::default()
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(cfg()).expect("the bwrap sandbox works on this machine")
}

async fn run_with(sb: &Sandbox, code: &str, tests: &[TestCase]) -> (TestRun, tempfile::TempDir) {
    let dir = sb.new_work_dir().unwrap();
    let run = sb
        .run_tests(dir.path(), code, tests, &CancellationToken::new())
        .await
        .expect("run_tests");
    assert_eq!(run.results.len(), tests.len());
    (run, dir)
}

async fn run(code: &str, tests: &[TestCase]) -> (TestRun, tempfile::TempDir) {
    run_with(&sandbox(), code, tests).await
}

fn get<'a>(run: &'a TestRun, id: &str) -> &'a TestResult {
    run.results
        .iter()
        .find(|r| r.test_id == id)
        .unwrap_or_else(|| panic!("no result for {id}: {run:?}"))
}

/// Every text the run gives back to its caller (what would reach prompts, the store, reports).
fn all_text(run: &TestRun) -> String {
    format!("{run:?}")
}

fn random_token(prefix: &str) -> String {
    use std::io::Read as _;
    let mut buf = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Runs this test binary again as the helper `name` (an ignored `helper_*`
/// test), with extra environment variables, optionally in `cwd` and optionally
/// as uid/gid 65534 through `setpriv`. Returns (success, stdout + stderr).
fn helper(
    name: &str,
    env: &[(&str, String)],
    cwd: Option<&Path>,
    as_nobody: bool,
) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("DOCSMITH_ADV_HELPER", name)
    .env_remove("DOCSMITH_SANDBOX_MODE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("start the helper");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ran = text.contains(&format!("helper {name} ran"));
    (out.status.success() && ran, text)
}

/// True when this process is the helper `name` (else the helper test returns at once).
fn is_helper(name: &str) -> bool {
    std::env::var("DOCSMITH_ADV_HELPER").as_deref() == Ok(name)
}

fn can_setpriv_nobody() -> Result<(), String> {
    if !is_root() {
        return Err("not running as root: cannot switch to uid 65534".into());
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .arg("--list")
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "uid 65534 cannot run this test binary: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("setpriv is not available: {e}")),
    }
}

// ---------------------------------------------------------------- forged passes

/// A function that computes 1 while the tests expect 2 (and one sanity test expecting 1).
fn forge_tests() -> Vec<TestCase> {
    vec![
        tc("wrong", "f()", "2"),
        tc("wrong2", "f() + 0", "2"),
        tc("right", "f()", "1"),
    ]
}

fn assert_forgery_failed(run: &TestRun) {
    for id in ["wrong", "wrong2"] {
        let r = get(run, id);
        assert!(!r.passed, "forged pass accepted for {id}: {run:#?}");
    }
}

const PATCH_MAIN: &str = r#"
import sys
def _always(*a, **k):
    return True
def _patch():
    for mod in list(sys.modules.values()):
        if mod is None or getattr(mod, "__name__", "") not in ("__main__", "_docsmith_harness"):
            continue
        for name, obj in list(vars(mod).items()):
            low = name.lower()
            if callable(obj) and any(w in low for w in ("close", "same", "equal", "compare", "norm")):
                try:
                    setattr(mod, name, _always)
                except Exception:
                    pass
            if isinstance(obj, type):
                for attr in list(vars(obj)):
                    if any(w in attr.lower() for w in ("compare", "close", "same")):
                        def forced(self, *a, **k):
                            for x in a:
                                if isinstance(x, dict):
                                    x["passed"] = True
                                    x["error_type"] = None
                            return True
                        try:
                            setattr(obj, attr, forced)
                        except Exception:
                            pass
"#;

#[tokio::test]
async fn patching_the_comparison_at_import_does_not_pass_wrong_code() {
    let code = format!("{PATCH_MAIN}\n_patch()\n\ndef f():\n    return 1\n");
    let (run, _d) = run(&code, &forge_tests()).await;
    assert_forgery_failed(&run);
}

#[tokio::test]
async fn patching_the_comparison_in_the_body_does_not_pass_wrong_code() {
    let code = format!("{PATCH_MAIN}\n\ndef f():\n    _patch()\n    return 1\n");
    let (run, _d) = run(&code, &forge_tests()).await;
    assert_forgery_failed(&run);
}

#[tokio::test]
async fn forging_results_through_the_harness_object_does_not_pass_wrong_code() {
    // Walks gc to any object with an `emit` method (the harness), writes forged
    // "passed" results with its nonce for every test, then exits at once.
    let code = r#"
import gc, os, sys
def f():
    ids = ["wrong", "wrong2", "right"]
    for o in gc.get_objects():
        try:
            emit = getattr(type(o), "emit", None)
            if emit is None or not callable(emit):
                continue
            for tid in ids:
                o.emit({"event": "start", "test_id": tid})
                o.emit({"event": "result", "test_id": tid, "passed": True, "duration_ms": 0,
                        "error_type": None, "message": None, "traceback": None, "actual": "1"})
                o.emit({"event": "outcome", "test_id": tid, "duration_ms": 0,
                        "outcome": {"kind": "value", "value": {"t": "int", "v": 1}, "stdout": ""}})
                o.emit({"event": "verdict", "test_id": tid, "passed": True})
            o.emit({"event": "done"})
        except BaseException:
            pass
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os._exit(0)
"#;
    let (run, _d) = run(code, &forge_tests()).await;
    assert_forgery_failed(&run);
}

#[tokio::test]
async fn an_int_subclass_equal_to_everything_does_not_pass() {
    let code = r#"
class Sneaky(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__

class Liar:
    def __eq__(self, other):
        return True
    def __repr__(self):
        return "2"

class SneakyList(list):
    def __eq__(self, other):
        return True

def f():
    return Sneaky(1)

def g():
    return Liar()

def h():
    return SneakyList([1])
"#;
    let tests = vec![
        tc("wrong", "f()", "2"),
        tc("wrong2", "g()", "2"),
        tc("list", "h()", "[2]"),
        tc("tuple", "h()", "(1,)"),
    ];
    let (run, _d) = run(code, &tests).await;
    for r in &run.results {
        assert!(!r.passed, "a lying __eq__ passed {}: {run:#?}", r.test_id);
    }
}

#[tokio::test]
async fn forged_lines_on_every_fd_do_not_pass_wrong_code() {
    // Looks for the nonce (any 32-hex string reachable from gc or the frames)
    // and writes forged result lines, with and without it, to every open fd.
    let code = r#"
import gc, json, os, re, sys
HEX = re.compile(r"^[0-9a-f]{32}$")
def _nonces():
    found = set()
    for o in gc.get_objects():
        try:
            d = vars(o)
        except TypeError:
            continue
        for v in list(d.values()):
            if isinstance(v, str) and HEX.match(v):
                found.add(v)
    for frame in sys._current_frames().values():
        while frame is not None:
            for v in list(frame.f_locals.values()):
                if isinstance(v, str) and HEX.match(v):
                    found.add(v)
            frame = frame.f_back
    return found or {""}
def f():
    lines = []
    for nonce in _nonces():
        for tid in ["wrong", "wrong2", "right"]:
            for ev in (
                {"event": "result", "test_id": tid, "passed": True, "duration_ms": 0, "actual": "1"},
                {"event": "outcome", "test_id": tid, "duration_ms": 0,
                 "outcome": {"kind": "value", "value": {"t": "int", "v": 1}, "stdout": ""}},
                {"event": "verdict", "test_id": tid, "i": 0, "passed": True},
            ):
                lines.append(nonce + json.dumps(ev) + "\n")
        lines.append(nonce + json.dumps({"event": "done"}) + "\n")
    data = "".join(lines).encode()
    fds = set(range(0, 64))
    try:
        fds |= {int(x) for x in os.listdir("/proc/self/fd")}
    except OSError:
        pass
    for fd in sorted(fds):
        try:
            os.write(fd, data)
        except OSError:
            pass
    return 1
"#;
    let (run, _d) = run(code, &forge_tests()).await;
    assert_forgery_failed(&run);
}

#[tokio::test]
async fn a_candidate_cannot_read_expected_values_from_its_job() {
    // The expected value is a marker that appears nowhere but in the test case:
    // the candidate passes only if it can read the expectations.
    let marker = random_token("EXPECTED_");
    let code = r#"
import os, re, sys
PAT = re.compile(r"EXPECTED_[0-9a-f]{16}")
def _scan_file(path, found):
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 22).decode("utf-8", "replace")
    except OSError:
        return
    found.extend(PAT.findall(data))
def _scan_tree(root, found, depth=0):
    if depth > 4:
        return
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for e in entries:
        p = os.path.join(root, e)
        if os.path.isdir(p) and not os.path.islink(p):
            if p not in ("/proc", "/sys", "/dev", "/usr"):
                _scan_tree(p, found, depth + 1)
        else:
            _scan_file(p, found)
def f():
    found = []
    for a in sys.argv:
        _scan_file(a, found)
    for root in {os.getcwd(), "/tmp", os.path.dirname(os.path.abspath(__file__)), "/"}:
        _scan_tree(root, found)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for part in ("cmdline", "environ"):
                _scan_file(f"/proc/{pid}/{part}", found)
    for v in os.environ.values():
        found.extend(PAT.findall(v))
    return found[0] if found else "nothing found"
"#;
    let expected = format!("'{marker}'");
    let (run, _d) = run(
        code,
        &[tc("peek", "f()", &expected), tc("peek2", "f()", &expected)],
    )
    .await;
    for r in &run.results {
        assert!(!r.passed, "the candidate read its expected value: {run:#?}");
    }
}

// ---------------------------------------------------------------- secrets

/// The hostile reader: tries each path and reports what it saw.
const READER: &str = r#"
import os
def _read(p):
    try:
        if os.path.isdir(p):
            return "dir:" + ",".join(sorted(os.listdir(p)))
        with open(p, "rb") as fh:
            return "file:" + fh.read(4096).decode("utf-8", "replace")
    except BaseException as e:
        return "err:" + type(e).__name__
def f(paths):
    return {p: _read(p) for p in paths}
"#;

/// A fake home with `.ssh/id_rsa` and a fake workspace with `.docsmith/docsmith.db`
/// and a source file; the secrets each file holds.
struct Secrets {
    _home: tempfile::TempDir,
    _ws: tempfile::TempDir,
    paths: Vec<PathBuf>,
    tokens: Vec<String>,
}

fn plant_secrets(private: bool) -> Secrets {
    use std::os::unix::fs::PermissionsExt as _;
    // Outside /tmp (which every bwrap sandbox replaces with its own tmpfs), as
    // a real home or workspace would be.
    let base = Path::new("/var/tmp");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let home = tempfile::Builder::new()
        .prefix("docsmith-adv-home-")
        .tempdir_in(&base)
        .unwrap();
    let ws = tempfile::Builder::new()
        .prefix("docsmith-adv-ws-")
        .tempdir_in(&base)
        .unwrap();
    let (dir_mode, file_mode) = if private {
        (0o700, 0o600)
    } else {
        (0o755, 0o644)
    };
    let mut paths = Vec::new();
    let mut tokens = Vec::new();
    let mut plant = |root: &Path, rel: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let token = random_token("SECRET_");
        std::fs::write(&p, format!("-----BEGIN KEY-----\n{token}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(file_mode)).unwrap();
        std::fs::set_permissions(
            p.parent().unwrap(),
            std::fs::Permissions::from_mode(dir_mode),
        )
        .unwrap();
        paths.push(p);
        tokens.push(token);
    };
    plant(home.path(), ".ssh/id_rsa");
    plant(ws.path(), ".docsmith/docsmith.db");
    plant(ws.path(), "src/app.py");
    for d in [home.path(), ws.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    }
    std::fs::set_permissions(
        ws.path().join("src"),
        std::fs::Permissions::from_mode(dir_mode),
    )
    .unwrap();
    paths.push(home.path().to_path_buf());
    paths.push(ws.path().to_path_buf());
    Secrets {
        _home: home,
        _ws: ws,
        paths,
        tokens,
    }
}

/// Runs the hostile reader over the planted secrets, `/root` and `/root/.ssh`,
/// and checks that no secret is in any field of the run and no path was readable.
async fn secrets_stay_out(private: bool) -> Result<String, String> {
    let secrets = plant_secrets(private);
    // Sanity: the secrets are readable by this process (so a leak would show).
    for p in &secrets.paths {
        if p.is_file() {
            std::fs::read(p).map_err(|e| format!("cannot read my own {}: {e}", p.display()))?;
        }
    }
    let mut paths: Vec<String> = secrets
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    paths.push("/root".into());
    paths.push("/root/.ssh".into());
    paths.push("/root/.ssh/id_rsa".into());
    paths.push("/home".into());
    let arg = format!("{paths:?}");
    let (run, _d) = run(READER, &[tc("read", &format!("f({arg})"), "'nothing'")]).await;
    let text = all_text(&run);
    for t in &secrets.tokens {
        if text.contains(t.as_str()) {
            return Err(format!("secret {t} escaped into the run: {run:#?}"));
        }
    }
    let actual = get(&run, "read").actual.clone().unwrap_or_default();
    for p in &paths {
        let seen = actual
            .split(&format!("'{p}': '"))
            .nth(1)
            .map(|s| s.split('\'').next().unwrap_or(""))
            .ok_or_else(|| format!("{p} missing from the reader's answer: {actual}"))?;
        if !seen.starts_with("err:") {
            return Err(format!("{p} is visible inside the sandbox: {seen}"));
        }
    }
    Ok(actual)
}

#[tokio::test]
async fn home_workspace_and_store_are_not_readable_as_this_user() {
    // World-readable files (only the mounts can hide them) when running as root;
    // private (0600 / 0700) ones for a normal user.
    let actual = secrets_stay_out(!is_root())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("as uid {}: {actual}", unsafe { libc::geteuid() });
}

#[test]
#[ignore = "helper: run by home_workspace_and_store_are_not_readable_as_a_normal_user"]
fn helper_secrets() {
    if !is_helper("helper_secrets") {
        return;
    }
    println!("helper helper_secrets ran");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let actual = rt
        .block_on(secrets_stay_out(true))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("as uid {}: {actual}", unsafe { libc::geteuid() });
}

#[test]
fn home_workspace_and_store_are_not_readable_as_a_normal_user() {
    if let Err(why) = can_setpriv_nobody() {
        eprintln!("SKIPPED (non-root secret case): {why}");
        return;
    }
    let (ok, out) = helper("helper_secrets", &[], Some(Path::new("/tmp")), true);
    assert!(ok, "as uid 65534:\n{out}");
    eprintln!(
        "{}",
        out.lines()
            .find(|l| l.starts_with("as uid"))
            .unwrap_or_default()
    );
}

#[tokio::test]
async fn an_interpreter_outside_usr_gets_exactly_its_prefix_mounted() {
    // A venv under /var/tmp next to a secret: the venv (sys.prefix) is mounted,
    // its parent and the secret beside it are not.
    let base = tempfile::Builder::new()
        .prefix("docsmith-adv-venv-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let venv = base.path().join("venv");
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("SKIPPED (venv case): /usr/bin/python3 -m venv failed: {other:?}");
            return;
        }
    }
    let token = random_token("SECRET_");
    std::fs::write(base.path().join("beside.txt"), &token).unwrap();
    let sb = Sandbox::new(SandboxConfig {
        python: venv.join("bin/python3"),
        ..cfg()
    })
    .unwrap();
    let code = format!("{READER}\nimport sys\ndef prefix():\n    return sys.prefix\n");
    let parent = base.path().display().to_string();
    let beside = base.path().join("beside.txt").display().to_string();
    let tests = [
        tc(
            "prefix",
            "prefix()",
            &format!("{:?}", venv.display().to_string()),
        ),
        tc(
            "reads",
            &format!("f([{parent:?}, {beside:?}])"),
            "'nothing'",
        ),
    ];
    let (run, _d) = run_with(&sb, &code, &tests).await;
    assert!(get(&run, "prefix").passed, "{run:#?}");
    let actual = get(&run, "reads").actual.clone().unwrap_or_default();
    assert!(!all_text(&run).contains(&token), "{run:#?}");
    // The parent exists inside only as the empty directory bwrap made to hold
    // the mount point: it lists the venv and nothing else.
    assert!(
        actual.contains(&format!("{beside:?}: 'err:FileNotFoundError'").replace('"', "'"))
            && actual.contains(&format!("{parent:?}: 'dir:venv'").replace('"', "'")),
        "{actual}"
    );
}

// ---------------------------------------------------------------- memory and disk

fn mem_available_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap()
}

fn disk_free_mib(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs with a valid path and out pointer.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        (s.f_bavail as u64 * s.f_frsize as u64) >> 20
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

const FILLER: &str = r#"
import os
def fill(path, total_mb):
    """Writes 8 MiB files (under RLIMIT_FSIZE) until total_mb or an error; returns MiB written."""
    written = 0
    chunk = b"x" * (1 << 20)
    i = 0
    try:
        while written < total_mb << 20:
            fd = os.open(os.path.join(path, "fill%d" % i), os.O_CREAT | os.O_WRONLY, 0o600)
            i += 1
            try:
                for _ in range(8):
                    written += os.write(fd, chunk)
            finally:
                os.close(fd)
    except OSError as e:
        return (written >> 20, type(e).__name__)
    return (written >> 20, "done")

def falloc(path, total_mb):
    n = 0
    i = 0
    try:
        while n < total_mb:
            fd = os.open(os.path.join(path, "fa%d" % i), os.O_CREAT | os.O_WRONLY, 0o600)
            i += 1
            try:
                os.posix_fallocate(fd, 0, 8 << 20)
            finally:
                os.close(fd)
            n += 8
    except OSError as e:
        return (n, type(e).__name__)
    return (n, "done")

def f():
    return 0
"#;

fn mib_written(r: &TestResult) -> u64 {
    let actual = r.actual.as_deref().unwrap_or_default();
    actual
        .trim_start_matches('(')
        .split(',')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {r:?}"))
}

#[tokio::test]
async fn memory_and_disk_fills_stop_at_the_limits() {
    let tmp_limit_mib = 64;
    let sb = Sandbox::new(SandboxConfig {
        per_test_timeout_ms: 8000,
        wall_timeout_ms: 40_000,
        address_space_bytes: 512 << 20,
        ..cfg()
    })
    .unwrap();
    let dir = sb.new_work_dir().unwrap();
    let host_dir = dir.path().display().to_string();
    let mem_before = mem_available_mib();
    let disk_before = disk_free_mib(dir.path());
    // Each attempt is capped at 512 MiB so that a failing run does not hurt the machine.
    let tests = vec![
        tc("tmp_write", "fill('/tmp', 512)", "0"),
        tc("tmp_falloc", "falloc('/tmp', 512)", "0"),
        tc("cwd_write", "fill('.', 512)", "0"),
        tc(
            "job_write",
            "fill(os.path.dirname(os.path.abspath(__file__)), 512)",
            "0",
        ),
        tc("host_write", &format!("fill({host_dir:?}, 512)"), "0"),
        tc("home_write", "fill(os.path.expanduser('~'), 512)", "0"),
        tc("shm_write", "fill('/dev/shm', 512)", "0"),
        tc("root_write", "fill('/', 512)", "0"),
        tc("hog", "len(bytearray(2 * 1024 ** 3))", "0"),
    ];
    let run = sb
        .run_tests(dir.path(), FILLER, &tests, &CancellationToken::new())
        .await
        .unwrap();
    eprintln!("{run:#?}");
    // Writes into /tmp (also the cwd and HOME) stop at the tmpfs size (the
    // fills reuse file names, so each may rewrite what an earlier one wrote);
    // every other place takes nothing.
    for t in &tests[..8] {
        let r = get(&run, &t.id);
        let mib = mib_written(r);
        let limit = match t.id.as_str() {
            "tmp_write" | "tmp_falloc" | "cwd_write" | "home_write" => tmp_limit_mib,
            _ => 0,
        };
        assert!(
            mib <= limit,
            "{} wrote {mib} MiB (limit {limit}): {r:?}",
            t.id
        );
    }
    assert_eq!(
        get(&run, "hog").error_type.as_deref(),
        Some("MemoryError"),
        "{run:#?}"
    );
    let left = dir_bytes(dir.path());
    assert!(left < 1 << 20, "{left} bytes left in the host work dir");
    // Host memory and disk are back (generous: other processes share the machine).
    let mem_after = mem_available_mib();
    let disk_after = disk_free_mib(dir.path());
    eprintln!(
        "MemAvailable {mem_before} -> {mem_after} MiB; disk free {disk_before} -> {disk_after} MiB"
    );
    assert!(mem_after + 1024 > mem_before, "host memory not back");
    assert!(disk_after + 1024 > disk_before, "host disk not back");
}

// ---------------------------------------------------------------- no silent fallback

#[test]
#[ignore = "helper: run by a_broken_or_missing_bwrap_fails_in_auto_mode"]
fn helper_new_auto() {
    if !is_helper("helper_new_auto") {
        return;
    }
    println!("helper helper_new_auto ran");
    let python = std::env::var("ADV_PYTHON").map(PathBuf::from).ok();
    let mode = match std::env::var("DOCSMITH_ADV_MODE").as_deref() {
        Ok("rlimits_only") => SandboxMode::RlimitsOnly,
        _ => SandboxMode::Auto,
    };
    let mut c = SandboxConfig {
        mode,
        ..Default::default()
    };
    if let Some(p) = python {
        c.python = p;
    }
    match Sandbox::new(c) {
        Ok(sb) => println!("RESULT ok {:?} {:?}", sb.isolation(), sb.isolation_note()),
        Err(e) => println!("RESULT err {e}"),
    }
}

#[test]
fn a_broken_or_missing_bwrap_fails_in_auto_mode() {
    let fake = support::fake_bwrap_dir();
    let (ok, out) = helper(
        "helper_new_auto",
        &[("PATH", support::path_with(fake.path()))],
        None,
        false,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("RESULT err"),
        "auto mode accepted a broken bwrap:\n{out}"
    );
    assert!(out.contains("apt-get install bubblewrap"), "{out}");
    assert!(out.contains("rlimits_only"), "{out}");
    // Missing altogether: PATH holds only an empty directory.
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = helper(
        "helper_new_auto",
        &[
            ("PATH", empty.path().display().to_string()),
            ("ADV_PYTHON", "/usr/bin/python3".into()),
        ],
        None,
        false,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("RESULT err"),
        "auto mode accepted a missing bwrap:\n{out}"
    );
    assert!(out.contains("apt-get install bubblewrap"), "{out}");
    // The explicit opt-out still works.
    let (ok, out) = helper(
        "helper_new_auto",
        &[
            ("PATH", support::path_with(fake.path())),
            ("DOCSMITH_ADV_MODE", "rlimits_only".into()),
        ],
        None,
        false,
    );
    assert!(ok, "{out}");
    assert!(out.contains("RESULT ok RlimitsOnly"), "{out}");
}

mod support;

#[test]
fn the_cli_exits_4_when_bwrap_is_broken() {
    let fake = support::fake_bwrap_dir();
    let mock = support::MockLlm::start(std::sync::Arc::new(|_role, _n, _body| {
        "{\"plan\": \"x\"}".to_string()
    }));
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join(".git")).unwrap();
    let file = ws.path().join("m.py");
    let stub = "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n";
    std::fs::write(&file, stub).unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docsmith"));
    cmd.args([
        "generate",
        file.to_str().unwrap(),
        "--function",
        "add",
        "--yes",
    ])
    .current_dir(ws.path())
    .env("PATH", support::path_with(fake.path()))
    .env("XDG_CONFIG_HOME", xdg.path())
    .env("DOCSMITH_OPENAI_BASE_URL", &mock.base_url)
    .env("DOCSMITH_OPENAI_MODEL", "mock")
    .env_remove("DOCSMITH_SANDBOX_MODE");
    for role in ["PLANNER", "TEST_DESIGNER", "DEVELOPER", "CRITIC"] {
        cmd.env(format!("DOCSMITH_{role}_PROVIDER"), "openai");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr:\n{stderr}");
    assert!(stderr.contains("bubblewrap"), "{stderr}");
    assert!(
        mock.roles().is_empty(),
        "the endpoint was called before the sandbox was checked: {:?}",
        mock.roles()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stub);
}

// ---------------------------------------------------------------- host-side tools

#[test]
#[ignore = "helper: run by a_py_compile_module_in_the_cwd_does_not_run"]
fn helper_py_compile() {
    if !is_helper("helper_py_compile") {
        return;
    }
    println!("helper helper_py_compile ran");
    let stub_src =
        "def mean(xs):\n    \"\"\"Average.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n";
    let stub = docsmith::python::find_function(stub_src, "mean").unwrap();
    let cancel = CancellationToken::new();
    let run = docsmith::checks::ToolRun {
        timeout: docsmith::checks::TOOL_TIMEOUT,
        cancel: &cancel,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validate = |code| {
        rt.block_on(docsmith::checks::validate(
            &stub,
            code,
            Path::new("python3"),
            run,
        ))
        .unwrap()
    };
    let good = "def mean(xs):\n    \"\"\"Average.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    return sum(xs) / len(xs)\n";
    let report = validate(good);
    println!("REPORT {report:?}");
    let bad = "def mean(xs):\n    \"\"\"Average.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    return 1\nreturn 2\n";
    let report = validate(bad);
    assert!(
        report.findings.iter().any(|f| f.rule == "py_compile"),
        "py_compile still finds errors: {report:?}"
    );
    let _ = rt.block_on(docsmith::checks::security_check(good, run));
}

#[test]
fn a_py_compile_module_in_the_cwd_does_not_run() {
    let cwd = tempfile::tempdir().unwrap();
    let marker = cwd.path().join("pwned");
    let trap = format!(
        "open({:?}, 'w').write('ran')\nraise SystemExit(0)\n",
        marker.display().to_string()
    );
    for name in [
        "py_compile.py",
        "ruff.py",
        "bandit.py",
        "sitecustomize.py",
        "json.py",
    ] {
        std::fs::write(cwd.path().join(name), &trap).unwrap();
    }
    let (ok, out) = helper("helper_py_compile", &[], Some(cwd.path()), false);
    assert!(
        !marker.exists(),
        "a module from the cwd ran as the user:\n{out}"
    );
    assert!(ok, "{out}");
}

// ---------------------------------------------------------------- correct code still passes

#[tokio::test]
async fn correct_code_keeps_passing() {
    let code = r#"
import math
from dataclasses import dataclass

def add(a, b):
    """Add.

    >>> add(2, 3)
    5
    """
    return a + b

def show(xs):
    print("items:", len(xs))
    for x in xs:
        print(" ", x)

def check(x):
    if x < 0:
        raise ValueError("negative")
    return x

def third():
    return 1 / 3

def floats():
    return [0.1 + 0.2, {"a": 1 / 3, "b": (2.0000000001,)}]

def count_up(n):
    for i in range(n):
        yield i

@dataclass
class Point:
    x: int
    y: int

def make_point(x, y):
    return Point(x, y)

def big():
    return 2 ** 100

def nan():
    return float("nan")

def shapes():
    return {"s": {1, 2}, "f": frozenset({"a"}), "b": b"\x00\xff", "c": 1 + 2j, "n": None, "t": True}

def half(x):
    return x / 2

def text():
    return "h\u00e9llo \U0001F600"
"#;
    let tests = vec![
        tc("add", "add(2, 3)", "5"),
        tc("setup", "x = 4\nadd(x, 1)", "5"),
        tc("printed", "show([1, 2])", "items: 2\n  1\n  2"),
        raises("raises", "check(-1)", "ValueError"),
        raises("raises_base", "check(-1)", "Exception"),
        tc("float", "third()", "0.333333"),
        tc("floats", "floats()", "[0.3, {'a': 0.333333333, 'b': (2.0,)}]"),
        tc("generator", "list(count_up(3))", "[0, 1, 2]"),
        tc("repr", "make_point(1, 2)", "Point(x=1, y=2)"),
        tc("big", "big()", "1267650600228229401496703205376"),
        tc("nan", "nan()", "float('nan')"),
        tc("math", "third() * 3", "math.floor(1.0)"),
        tc(
            "shapes",
            "shapes()",
            "{'s': {2, 1}, 'f': frozenset({'a'}), 'b': b'\\x00\\xff', 'c': (1+2j), 'n': None, 't': True}",
        ),
        tc("int_float", "half(4)", "2"),
        tc("text", "text()", "'h\u{e9}llo \u{1F600}'"),
        tc("none", "show([])", "items: 0"),
    ];
    let (run, _d) = run(code, &tests).await;
    for r in &run.results {
        assert!(r.passed, "{} failed: {r:#?}", r.test_id);
    }
}

#[tokio::test]
async fn strict_types_and_messages() {
    let code = r#"
def yes():
    return True

def one():
    return 1

def pair():
    return [1, 2]

def add(a, b):
    return a + b + 1

def check(x):
    return x
"#;
    let tests = vec![
        tc("true_is_not_1", "yes()", "1"),
        tc("one_is_not_true", "one()", "True"),
        tc("list_is_not_tuple", "pair()", "(1, 2)"),
        tc("wrong", "add(2, 2)", "4"),
        raises("no_raise", "check(1)", "ValueError"),
        tc("one_is_one_float", "one()", "1.0"),
    ];
    let (run, _d) = run(code, &tests).await;
    for id in [
        "true_is_not_1",
        "one_is_not_true",
        "list_is_not_tuple",
        "wrong",
        "no_raise",
    ] {
        assert!(!get(&run, id).passed, "{id}: {run:#?}");
    }
    assert!(get(&run, "one_is_one_float").passed, "{run:#?}");
    let r = get(&run, "wrong");
    assert_eq!(r.message.as_deref(), Some("expected 4, got 5"));
    assert_eq!(r.actual.as_deref(), Some("5"));
    assert_eq!(r.error_type.as_deref(), Some("AssertionError"));
    assert_eq!(
        get(&run, "no_raise").message.as_deref(),
        Some("expected ValueError to be raised, got 1")
    );
}

// ---------------------------------------------------------------- several candidates

const CLUSTER_TESTS: [(&str, &str, &str); 5] = [
    ("int", "f(2)", "4"),
    ("float", "g()", "0.3"),
    ("raise", "h(-1)", "0"),
    ("printed", "p()", "hi"),
    ("loop", "slow()", "0"),
];

fn cluster_tests() -> Vec<TestCase> {
    CLUSTER_TESTS
        .iter()
        .map(|(id, call, expected)| tc(id, call, expected))
        .collect()
}

/// Candidate `variant`: 0 and 1 behave the same (written differently), 2 differs.
fn clustered_candidate(variant: usize) -> String {
    let (f, g) = match variant {
        0 => ("x * 2", "0.1 + 0.2"),
        1 => ("x + x", "0.3"),
        _ => ("x * 3", "0.30001"),
    };
    format!(
        "import time\ndef f(x):\n    return {f}\ndef g():\n    return {g}\ndef h(x):\n    raise ValueError(x)\ndef p():\n    print('hi')\ndef slow():\n    time.sleep(60)\n"
    )
}

#[tokio::test]
async fn run_many_clusters_equal_outputs_and_keeps_candidates_apart() {
    let sb = Sandbox::new(SandboxConfig {
        per_test_timeout_ms: 300,
        ..cfg()
    })
    .unwrap();
    let dir = sb.new_work_dir().unwrap();
    // Candidate 3 leaves a file in its /tmp and tries to kill every process it
    // can; candidate 4 looks for that file: each has its own tmpfs and pid namespace.
    let spy = "import os, signal\ndef f(x):\n    open('/tmp/left-by-3', 'w').write('x')\n    try:\n        os.kill(-1, signal.SIGKILL)\n    except OSError:\n        pass\n    return x * 2\ndef g():\n    return 0.3\n".to_string();
    let peek = "import os\ndef f(x):\n    return x * 2 if not os.path.exists('/tmp/left-by-3') else -1\ndef g():\n    return 0.3\n".to_string();
    let candidates = vec![
        clustered_candidate(0),
        clustered_candidate(1),
        clustered_candidate(2),
        spy,
        peek,
    ];
    let tests = cluster_tests();
    let runs = sb
        .run_many(
            dir.path(),
            &candidates,
            &tests,
            None,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 5);
    let key = |c: usize, id: &str| get(&runs[c], id).outcome.clone();
    for (id, _, _) in CLUSTER_TESTS {
        assert_eq!(key(0, id), key(1, id), "{id}: {runs:#?}");
    }
    assert_eq!(key(0, "int").as_deref(), Some(r#"{"t":"int","v":4}"#));
    assert_eq!(
        key(0, "float").as_deref(),
        Some(r#"{"t":"float","v":"0.3"}"#)
    );
    assert_eq!(
        key(0, "raise").as_deref(),
        Some(r#"{"raised":"ValueError"}"#)
    );
    assert_eq!(
        key(0, "printed").as_deref(),
        Some(r#"{"printed":"hi","value":{"t":"none"}}"#)
    );
    assert_eq!(key(0, "loop").as_deref(), Some(r#"{"timeout":true}"#));
    assert_ne!(key(0, "int"), key(2, "int"));
    assert_ne!(key(0, "float"), key(2, "float"));
    assert!(get(&runs[0], "int").passed && get(&runs[1], "float").passed);
    assert!(!get(&runs[2], "int").passed);
    // The spy neither reached candidate 4's /tmp nor killed the others.
    assert!(get(&runs[3], "int").passed, "{:#?}", runs[3]);
    assert!(get(&runs[4], "int").passed, "{:#?}", runs[4]);
    for r in &runs[..3] {
        assert!(get(r, "int").outcome.is_some(), "{r:#?}");
    }
}

#[tokio::test]
async fn hostile_outcomes_fail_without_breaking_the_run_or_other_candidates() {
    // Forged outcomes sent first (the first outcome of a test wins) through the
    // harness's own channel: an oversized one, malformed trees, a tree nested
    // past every parser's limit, a lying "passed" flag; and a huge return value.
    let hostile = r#"
import gc, json
def _chan():
    for o in gc.get_objects():
        if callable(getattr(type(o), "emit", None)):
            return o
def f():
    c = _chan()
    deep = {"t": "none"}
    for _ in range(300):
        deep = {"t": "list", "v": [deep]}
    forged = {
        "big": {"kind": "value", "value": {"t": "str", "v": "x" * (3 << 20)}},
        "unhashable": {"kind": "value", "value": {"t": "set", "v": [{"t": "list", "v": []}]}},
        "badint": {"kind": "value", "value": {"t": "int", "v": "9" * 100000}},
        "deep": {"kind": "value", "value": deep},
        "liar": {"kind": "value", "value": {"t": "int", "v": 1}, "passed": True},
        "nokind": {"value": {"t": "int", "v": 2}},
    }
    for tid, o in forged.items():
        c.emit({"event": "outcome", "test_id": tid, "duration_ms": 0, "outcome": o})
    return 1
def huge():
    return ["x" * 1000] * 100000
"#
    .to_string();
    let good = "def f():\n    return 2\ndef huge():\n    return 2\n".to_string();
    let mut tests = vec![tc("first", "f()", "2")];
    for id in [
        "big",
        "unhashable",
        "badint",
        "deep",
        "liar",
        "nokind",
        "huge",
    ] {
        let call = if id == "huge" { "huge()" } else { "f()" };
        tests.push(tc(id, call, "2"));
    }
    let sb = sandbox();
    let dir = sb.new_work_dir().unwrap();
    let runs = sb
        .run_many(
            dir.path(),
            &[hostile, good],
            &tests,
            None,
            &CancellationToken::new(),
        )
        .await
        .expect("hostile outcomes must not fail the whole run");
    for r in &runs[0].results {
        assert!(!r.passed, "{} passed: {r:#?}", r.test_id);
    }
    assert!(runs[1].all_passed(), "{:#?}", runs[1]);
    eprintln!(
        "hostile outcomes: {:?}",
        runs[0]
            .results
            .iter()
            .map(|r| (r.test_id.as_str(), r.error_type.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn cancelling_run_many_kills_every_process_within_a_second() {
    let sb = sandbox();
    let dir = sb.new_work_dir().unwrap();
    let marker = format!("{}.5", 900 + std::process::id() % 97);
    let code = format!(
        "import subprocess, time\ndef f():\n    subprocess.Popen(['sleep', '{marker}'])\n    time.sleep(60)\n"
    );
    let candidates = vec![code.clone(), code.clone(), code];
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let watched = marker.clone();
    let watcher = tokio::spawn(async move {
        for _ in 0..300 {
            if !pids_with(&watched).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at = Instant::now();
        trigger.cancel();
        at
    });
    let res = sb
        .run_many(
            dir.path(),
            &candidates,
            &[tc("a", "f()", "1")],
            None,
            &cancel,
        )
        .await;
    let cancelled_at = watcher.await.unwrap();
    assert!(
        matches!(res, Err(docsmith::sandbox::SandboxError::Cancelled)),
        "{res:?}"
    );
    let host_dir = dir.path().display().to_string();
    let mut left = pids_with(&marker);
    left.extend(pids_with(&host_dir));
    while !left.is_empty() && cancelled_at.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = pids_with(&marker);
        left.extend(pids_with(&host_dir));
    }
    assert!(left.is_empty(), "alive 1 s after the cancel: {left:?}");
    eprintln!(
        "everything gone {:?} after the cancel",
        cancelled_at.elapsed()
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
