//! Validation and security checks of a candidate module before it is proposed.
//!
//! Owns: the rules that decide whether a spliced candidate is acceptable
//! (tree-sitter parse, `python3 -m py_compile`, preserved signature and
//! docstring, not still a stub, `ruff`, a few style rules) and whether it does
//! something a docstring function has no business doing (tree-sitter rules,
//! `bandit`). Must not know about LLMs, LSP, the sandbox or the store: input is
//! text, output is a [`CheckReport`]. External tools run on a temporary file,
//! in an empty temporary directory, through `host::run` (a deadline, the
//! task's cancel token, the process group killed at either); a tool that is
//! not on PATH or cannot run is skipped with a note, one that runs past its
//! deadline gives a `timeout` finding, and a cancel ends the check with
//! [`Cancelled`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tree_sitter::Node;

use crate::host::{self, RunError};
use crate::python::{self, FunctionInfo};
use crate::types::{CheckReport, Finding, Severity};

/// How long one external checker (py_compile, ruff, bandit) may run by
/// default; they take well under a second on a module.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The checks were cancelled (the task's cancel token fired): the tool
/// running then was killed, and no report was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the checks were cancelled")]
pub struct Cancelled;

/// How the external checkers run: their deadline each and the task's cancel token.
#[derive(Debug, Clone, Copy)]
pub struct ToolRun<'a> {
    pub timeout: Duration,
    pub cancel: &'a CancellationToken,
}

const TS: &str = "tree-sitter";

fn finding(
    rule: &str,
    severity: Severity,
    message: String,
    line: Option<usize>,
    tool: &str,
) -> Finding {
    Finding {
        rule: rule.to_string(),
        severity,
        message,
        line,
        tool: tool.to_string(),
    }
}

/// Writes `code` to `candidate.py` in a fresh temporary directory (removed on drop).
fn temp_module(code: &str) -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("candidate.py");
    // Written as UTF-8, so a PEP 263 line must not say otherwise.
    std::fs::write(&file, crate::python::utf8_module(code).as_bytes())?;
    Ok((dir, file))
}

fn walk<'t>(node: Node<'t>, f: &mut impl FnMut(Node<'t>)) {
    f(node);
    let mut cursor = node.walk();
    for c in node.children(&mut cursor) {
        walk(c, f);
    }
}

fn row(node: Node) -> Option<usize> {
    Some(node.start_position().row + 1)
}

/// Validates a spliced candidate against the stub it must implement.
///
/// `stub` is the user's function as found in their file; `candidate_module` is
/// a standalone module (imports, helpers, the function with the user's
/// docstring); `python` is the interpreter used for `py_compile`.
/// Rules: `syntax`, `py_compile`, `signature-changed`, `docstring-changed`,
/// `still-stub` (all Error); `ruff:<code>` (Error for F821 and E9xx, Warning
/// otherwise) when ruff is on PATH, else a note; `bare-except`,
/// `mutable-default`, `global` (Warning); `print` inside the function (Info).
/// Lines are 1-based in `candidate_module`. A tool past `run.timeout` gives
/// a `timeout` warning (its rules were not applied); a cancel gives [`Cancelled`].
pub async fn validate(
    stub: &FunctionInfo,
    candidate_module: &str,
    python: &Path,
    run: ToolRun<'_>,
) -> Result<CheckReport, Cancelled> {
    if run.cancel.is_cancelled() {
        return Err(Cancelled);
    }
    let mut report = CheckReport::default();
    for e in python::syntax_errors(candidate_module) {
        report.findings.push(finding(
            "syntax",
            Severity::Error,
            format!("column {}: {}", e.column, e.message),
            Some(e.line),
            TS,
        ));
    }
    py_compile(candidate_module, python, run, &mut report).await?;
    structure(stub, candidate_module, &mut report);
    ruff(candidate_module, run, &mut report).await?;
    style_rules(stub, candidate_module, &mut report);
    Ok(report)
}

/// Runs one external tool on `code`, written to `candidate.py` in a fresh
/// empty temporary directory that is also its working directory (so nothing
/// of the user's working directory is imported or read); `args` come before
/// the file. `None` when the tool could not give an answer: a note or a
/// `timeout` finding says why.
async fn run_tool(
    tool: &str,
    program: &Path,
    args: &[&str],
    code: &str,
    run: ToolRun<'_>,
    report: &mut CheckReport,
) -> Result<Option<Output>, Cancelled> {
    let (dir, file) = match temp_module(code) {
        Ok(x) => x,
        Err(e) => {
            report.notes.push(format!(
                "{tool} skipped: cannot write a temporary file: {e}"
            ));
            return Ok(None);
        }
    };
    let mut cmd = Command::new(program);
    cmd.args(args).arg(&file).current_dir(dir.path());
    match host::run(cmd, run.timeout, run.cancel).await {
        Ok(out) => Ok(Some(out)),
        Err(RunError::Cancelled) => Err(Cancelled),
        Err(e @ RunError::TimedOut(_)) => {
            report.findings.push(finding(
                "timeout",
                Severity::Warning,
                format!("{tool}: {e}; its rules were not applied to this candidate"),
                None,
                tool,
            ));
            Ok(None)
        }
        Err(e) => {
            report
                .notes
                .push(format!("{tool} skipped: `{}`: {e}", program.display()));
            Ok(None)
        }
    }
}

/// [`run_tool`] for a tool that prints JSON on stdout (ruff, bandit): the
/// parsed value, or `None` with a note when the tool is not on PATH or its
/// output is not JSON.
async fn run_json_tool(
    tool: &str,
    args: &[&str],
    code: &str,
    run: ToolRun<'_>,
    report: &mut CheckReport,
) -> Result<Option<serde_json::Value>, Cancelled> {
    let Some(program) = host::find_on_path(tool) else {
        report
            .notes
            .push(format!("{tool} not on PATH: skipped (pip install {tool})"));
        return Ok(None);
    };
    let Some(out) = run_tool(tool, &program, args, code, run, report).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&out.stdout) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            report.notes.push(format!(
                "{tool} skipped: unreadable output ({e}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            Ok(None)
        }
    }
}

async fn py_compile(
    code: &str,
    python: &Path,
    run: ToolRun<'_>,
    report: &mut CheckReport,
) -> Result<(), Cancelled> {
    // -I and a temp dir as cwd: a `py_compile.py` (or `sitecustomize.py`) in
    // the user's working directory must not run as the user.
    let Some(out) = run_tool(
        "py_compile",
        python,
        &["-I", "-m", "py_compile"],
        code,
        run,
        report,
    )
    .await?
    else {
        return Ok(());
    };
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .split("line ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let msg = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("py_compile failed")
        .trim()
        .to_string();
    report.findings.push(finding(
        "py_compile",
        Severity::Error,
        msg,
        line,
        "py_compile",
    ));
    Ok(())
}

fn structure(stub: &FunctionInfo, code: &str, report: &mut CheckReport) {
    let qualified = match &stub.class_name {
        Some(c) => format!("{c}.{}", stub.name),
        None => stub.name.clone(),
    };
    let cand = python::find_function(code, &qualified)
        .or_else(|_| python::find_function(code, &stub.name));
    let cand = match cand {
        Ok(c) => c,
        Err(e) => {
            report.findings.push(finding(
                "signature-changed",
                Severity::Error,
                e.to_string(),
                None,
                TS,
            ));
            return;
        }
    };
    let line = Some(cand.start_line + 1);
    if cand.params != stub.params {
        report.findings.push(finding(
            "signature-changed",
            Severity::Error,
            format!(
                "parameters of `{}` changed from ({}) to ({}); keep the stub's signature",
                stub.name,
                stub.params.join(", "),
                cand.params.join(", ")
            ),
            line,
            TS,
        ));
    }
    if stub.docstring.is_some() && cand.docstring != stub.docstring {
        report.findings.push(finding(
            "docstring-changed",
            Severity::Error,
            format!(
                "the docstring of `{}` differs from the user's; keep it exactly",
                stub.name
            ),
            cand.docstring_range
                .as_ref()
                .map(|_| cand.start_line + 2)
                .or(line),
            TS,
        ));
    }
    if cand.is_stub {
        report.findings.push(finding(
            "still-stub",
            Severity::Error,
            format!(
                "`{}` is still a stub (pass, ..., or raise NotImplementedError)",
                stub.name
            ),
            line,
            TS,
        ));
    }
}

async fn ruff(code: &str, run: ToolRun<'_>, report: &mut CheckReport) -> Result<(), Cancelled> {
    // --isolated: the user's global ruff config must not change the verdict.
    let args = [
        "check",
        "--output-format",
        "json",
        "--no-cache",
        "--isolated",
    ];
    let Some(v) = run_json_tool("ruff", &args, code, run, report).await? else {
        return Ok(());
    };
    for item in v.as_array().into_iter().flatten() {
        let code = item["code"].as_str().unwrap_or("syntax").to_string();
        let severity = if code == "F821" || code.starts_with("E9") || code == "syntax" {
            Severity::Error
        } else {
            Severity::Warning
        };
        report.findings.push(finding(
            &format!("ruff:{code}"),
            severity,
            item["message"].as_str().unwrap_or("").to_string(),
            item["location"]["row"].as_u64().map(|r| r as usize),
            "ruff",
        ));
    }
    Ok(())
}

fn is_mutable_default(value: Node, code: &str) -> bool {
    match value.kind() {
        "list"
        | "dictionary"
        | "set"
        | "list_comprehension"
        | "dictionary_comprehension"
        | "set_comprehension" => true,
        "call" => value.child_by_field_name("function").is_some_and(|f| {
            matches!(&code[f.byte_range()], "list" | "dict" | "set" | "bytearray")
        }),
        _ => false,
    }
}

fn style_rules(stub: &FunctionInfo, code: &str, report: &mut CheckReport) {
    let tree = python::parse(code);
    let target = python::find_function(code, &stub.name).ok();
    walk(tree.root_node(), &mut |n| match n.kind() {
        "except_clause" => {
            let mut c = n.walk();
            let has_type = n
                .named_children(&mut c)
                .any(|k| k.kind() != "block" && k.kind() != "comment");
            if !has_type {
                report.findings.push(finding(
                    "bare-except",
                    Severity::Warning,
                    "bare `except:` also catches KeyboardInterrupt and SystemExit; name the exception".into(),
                    row(n),
                    TS,
                ));
            }
        }
        "default_parameter" | "typed_default_parameter"
            if n.child_by_field_name("value")
                .is_some_and(|v| is_mutable_default(v, code)) =>
        {
            let name = n
                .child_by_field_name("name")
                .map_or("", |x| &code[x.byte_range()]);
            report.findings.push(finding(
                "mutable-default",
                Severity::Warning,
                format!("parameter `{name}` has a mutable default shared between calls; use None"),
                row(n),
                TS,
            ));
        }
        "global_statement" => report.findings.push(finding(
            "global",
            Severity::Warning,
            format!(
                "`{}`: a docstring function should not mutate module state",
                &code[n.byte_range()]
            ),
            row(n),
            TS,
        )),
        "call" => {
            let is_print = n
                .child_by_field_name("function")
                .is_some_and(|f| &code[f.byte_range()] == "print");
            let inside = target.as_ref().is_some_and(|t| {
                t.def_range.start <= n.start_byte() && n.end_byte() <= t.def_range.end
            });
            if is_print && inside {
                report.findings.push(finding(
                    "print",
                    Severity::Info,
                    "`print(` inside the function: return the value instead of printing it".into(),
                    row(n),
                    TS,
                ));
            }
        }
        _ => {}
    });
}

const NETWORK_MODULES: [&str; 7] = [
    "socket", "urllib", "http", "requests", "ftplib", "smtplib", "ctypes",
];

/// Local name -> dotted origin for `import a.b as c` and `from a import b as c`.
fn import_aliases(root: Node, code: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    walk(root, &mut |n| match n.kind() {
        "import_statement" => {
            let mut c = n.walk();
            for k in n.named_children(&mut c) {
                if k.kind() == "aliased_import" {
                    if let (Some(name), Some(alias)) = (
                        k.child_by_field_name("name"),
                        k.child_by_field_name("alias"),
                    ) {
                        map.insert(
                            code[alias.byte_range()].to_string(),
                            code[name.byte_range()].to_string(),
                        );
                    }
                }
            }
        }
        "import_from_statement" => {
            let Some(module) = n.child_by_field_name("module_name") else {
                return;
            };
            let module = &code[module.byte_range()];
            let mut c = n.walk();
            for k in n.children_by_field_name("name", &mut c) {
                let (name, alias) = if k.kind() == "aliased_import" {
                    match (
                        k.child_by_field_name("name"),
                        k.child_by_field_name("alias"),
                    ) {
                        (Some(a), Some(b)) => (&code[a.byte_range()], &code[b.byte_range()]),
                        _ => continue,
                    }
                } else {
                    (&code[k.byte_range()], &code[k.byte_range()])
                };
                map.insert(alias.to_string(), format!("{module}.{name}"));
            }
        }
        _ => {}
    });
    map
}

fn imported_modules(n: Node, code: &str) -> Vec<String> {
    match n.kind() {
        "import_statement" => {
            let mut c = n.walk();
            n.children_by_field_name("name", &mut c)
                .map(|k| {
                    let k = if k.kind() == "aliased_import" {
                        k.child_by_field_name("name").unwrap_or(k)
                    } else {
                        k
                    };
                    code[k.byte_range()].to_string()
                })
                .collect()
        }
        "import_from_statement" => n
            .child_by_field_name("module_name")
            .map(|m| vec![code[m.byte_range()].to_string()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Whether an `open(...)` call's mode writes, appends or creates.
fn open_writes(call: Node, code: &str) -> bool {
    let Some(args) = call.child_by_field_name("arguments") else {
        return false;
    };
    let mut c = args.walk();
    let mut positional = 0;
    for a in args.named_children(&mut c) {
        let mode = if a.kind() == "keyword_argument" {
            let is_mode = a
                .child_by_field_name("name")
                .is_some_and(|k| &code[k.byte_range()] == "mode");
            if !is_mode {
                continue;
            }
            a.child_by_field_name("value")
        } else {
            positional += 1;
            if positional != 2 {
                continue;
            }
            Some(a)
        };
        if let Some(m) = mode {
            if m.kind() == "string" {
                let t = &code[m.byte_range()];
                return t.contains(['w', 'a', 'x', '+']);
            }
            return true; // a computed mode: assume the worst
        }
    }
    false
}

/// Security rules on a candidate module, by tree-sitter (always) and `bandit`
/// (when on PATH, else a note). Errors: `eval`, `exec`, `compile`,
/// `__import__`; `shell` (`os.system`, `os.popen`); `subprocess` (any
/// `subprocess.*` call); `process` (`os.exec*`, `os.spawn*`, `os.fork`);
/// `unsafe-deserialization` (`pickle`/`marshal` `load(s)`, `yaml.load`
/// without a SafeLoader); `network-import` (socket, urllib, http, requests,
/// ftplib, smtplib, ctypes). Warnings: `file-write` (`open` with a w/a/x/+
/// mode), `file-delete` (`shutil.rmtree`, `os.remove`, `os.unlink`,
/// `os.rmdir`). bandit: `bandit:<id>` with HIGH -> Error, MEDIUM -> Warning,
/// LOW -> Info; B101 (assert) is skipped. Lines are 1-based. bandit past
/// `run.timeout` gives a `timeout` warning; a cancel gives [`Cancelled`].
pub async fn security_check(
    candidate_module: &str,
    run: ToolRun<'_>,
) -> Result<CheckReport, Cancelled> {
    if run.cancel.is_cancelled() {
        return Err(Cancelled);
    }
    let code = candidate_module;
    let mut report = CheckReport::default();
    let tree = python::parse(code);
    let aliases = import_aliases(tree.root_node(), code);
    let mut push = |rule: &str, sev: Severity, msg: String, n: Node| {
        report.findings.push(finding(rule, sev, msg, row(n), TS));
    };
    walk(tree.root_node(), &mut |n| {
        for m in imported_modules(n, code) {
            let top = m.split('.').next().unwrap_or("");
            if NETWORK_MODULES.contains(&top) {
                push(
                    "network-import",
                    Severity::Error,
                    format!("imports `{m}`: network or native access is outside a docstring function's purpose"),
                    n,
                );
            }
        }
        if n.kind() != "call" {
            return;
        }
        let Some(f) = n.child_by_field_name("function") else {
            return;
        };
        if !matches!(f.kind(), "identifier" | "attribute") {
            return;
        }
        let raw = &code[f.byte_range()];
        let (head, tail) = raw
            .split_once('.')
            .map_or((raw, None), |(h, t)| (h, Some(t)));
        let resolved = match (aliases.get(head), tail) {
            (Some(origin), Some(t)) => format!("{origin}.{t}"),
            (Some(origin), None) => origin.clone(),
            (None, _) => raw.to_string(),
        };
        let name = resolved.as_str();
        let args = n
            .child_by_field_name("arguments")
            .map_or("", |a| &code[a.byte_range()]);
        match name {
            "eval" | "exec" | "compile" | "__import__" => push(
                name,
                Severity::Error,
                format!("`{raw}(` runs or loads arbitrary code; compute the result directly"),
                n,
            ),
            "os.system" | "os.popen" => push(
                "shell",
                Severity::Error,
                format!("`{raw}(` runs a shell command"),
                n,
            ),
            "os.fork" => push(
                "process",
                Severity::Error,
                format!("`{raw}(` starts a process"),
                n,
            ),
            _ if name.starts_with("subprocess.") => {
                let shell = if args.replace(' ', "").contains("shell=True") {
                    " with shell=True"
                } else {
                    ""
                };
                push(
                    "subprocess",
                    Severity::Error,
                    format!("`{raw}(` starts a process{shell}"),
                    n,
                )
            }
            _ if name.starts_with("os.exec") || name.starts_with("os.spawn") => push(
                "process",
                Severity::Error,
                format!("`{raw}(` starts a process"),
                n,
            ),
            "pickle.load" | "pickle.loads" | "marshal.load" | "marshal.loads" => push(
                "unsafe-deserialization",
                Severity::Error,
                format!("`{raw}(` can run arbitrary code while loading data"),
                n,
            ),
            "yaml.load" if !args.contains("SafeLoader") => push(
                "unsafe-deserialization",
                Severity::Error,
                format!(
                    "`{raw}(` without a SafeLoader can build arbitrary objects; use yaml.safe_load"
                ),
                n,
            ),
            "open" | "io.open" if open_writes(n, code) => push(
                "file-write",
                Severity::Warning,
                format!("`{raw}(` opens a file for writing; return the data instead"),
                n,
            ),
            "shutil.rmtree" | "os.remove" | "os.unlink" | "os.rmdir" => push(
                "file-delete",
                Severity::Warning,
                format!("`{raw}(` deletes files"),
                n,
            ),
            _ => {}
        }
    });
    bandit(code, run, &mut report).await?;
    Ok(report)
}

async fn bandit(code: &str, run: ToolRun<'_>, report: &mut CheckReport) -> Result<(), Cancelled> {
    let Some(v) = run_json_tool("bandit", &["-f", "json", "-q"], code, run, report).await? else {
        return Ok(());
    };
    for r in v["results"].as_array().into_iter().flatten() {
        let id = r["test_id"].as_str().unwrap_or("B000");
        if id == "B101" {
            continue;
        }
        let severity = match r["issue_severity"].as_str().unwrap_or("") {
            "HIGH" => Severity::Error,
            "MEDIUM" => Severity::Warning,
            _ => Severity::Info,
        };
        report.findings.push(finding(
            &format!("bandit:{id}"),
            severity,
            r["issue_text"].as_str().unwrap_or("").to_string(),
            r["line_number"].as_u64().map(|l| l as usize),
            "bandit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: &str = "def mean(xs, default=None):\n    \"\"\"Average of xs.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    ...\n";
    const GOOD: &str = "import statistics\n\n\ndef mean(xs, default=None):\n    \"\"\"Average of xs.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    if not xs:\n        return default\n    return float(statistics.mean(xs))\n";

    fn stub() -> FunctionInfo {
        python::find_function(STUB, "mean").unwrap()
    }

    /// [`validate`] with the default timeout, never cancelled.
    fn validated(stub: &FunctionInfo, code: &str, python: &Path) -> CheckReport {
        block_on(validate(
            stub,
            code,
            python,
            tool_run(&CancellationToken::new()),
        ))
    }

    /// [`security_check`] with the default timeout, never cancelled.
    fn secured(code: &str) -> CheckReport {
        block_on(security_check(code, tool_run(&CancellationToken::new())))
    }

    fn tool_run(cancel: &CancellationToken) -> ToolRun<'_> {
        ToolRun {
            timeout: TOOL_TIMEOUT,
            cancel,
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = Result<T, Cancelled>>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
            .expect("not cancelled")
    }

    fn python3() -> PathBuf {
        host::find_on_path("python3").expect("python3 on PATH for the checks tests")
    }

    fn rules(r: &CheckReport) -> Vec<&str> {
        r.findings.iter().map(|f| f.rule.as_str()).collect()
    }

    fn has(r: &CheckReport, rule: &str, sev: Severity) -> bool {
        r.findings
            .iter()
            .any(|f| f.rule == rule && f.severity == sev)
    }

    /// Runs `script` as a checker tool (`sh -c SCRIPT sh candidate.py`) under `run`.
    async fn shell_tool(
        script: &str,
        run: ToolRun<'_>,
    ) -> (Result<Option<Output>, Cancelled>, CheckReport) {
        let mut report = CheckReport::default();
        let r = run_tool(
            "slowtool",
            Path::new("sh"),
            &["-c", script, "sh"],
            GOOD,
            run,
            &mut report,
        )
        .await;
        (r, report)
    }

    /// Whether process `pid` is gone (or a zombie) within a second or two.
    fn gone(pid: &str) -> bool {
        (0..100).any(|_| {
            let state =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            let state = state.rsplit_once(')').map_or("", |(_, r)| r.trim_start());
            if state.is_empty() || state.starts_with('Z') {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
            false
        })
    }

    #[test]
    fn a_checker_past_its_timeout_is_killed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let cancel = CancellationToken::new();
        let run = ToolRun {
            timeout: Duration::from_millis(300),
            cancel: &cancel,
        };
        let t0 = std::time::Instant::now();
        let (r, report) = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(shell_tool(&script, run));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(matches!(r, Ok(None)), "{r:?}");
        let f = &report.findings[0];
        assert_eq!((f.rule.as_str(), f.tool.as_str()), ("timeout", "slowtool"));
        assert_eq!(f.severity, Severity::Warning);
        assert!(
            f.message
                .contains("did not finish within 0.3 s and was killed"),
            "{f:?}"
        );
        assert!(
            gone(&std::fs::read_to_string(&pidfile).unwrap()),
            "the tool still runs"
        );
    }

    #[test]
    fn cancel_stops_a_checker() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        let run = ToolRun {
            timeout: TOOL_TIMEOUT,
            cancel: &cancel,
        };
        let t0 = std::time::Instant::now();
        let (r, report) = rt.block_on(shell_tool(&script, run));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(r.unwrap_err(), Cancelled);
        assert!(report.findings.is_empty(), "{report:?}");
        assert!(
            gone(&std::fs::read_to_string(&pidfile).unwrap()),
            "the tool still runs"
        );
        // A cancelled task's checks end at once, before any tool starts.
        let run = ToolRun {
            timeout: TOOL_TIMEOUT,
            cancel: &cancel,
        };
        assert_eq!(
            rt.block_on(validate(&stub(), GOOD, &python3(), run))
                .unwrap_err(),
            Cancelled
        );
        assert_eq!(
            rt.block_on(security_check(GOOD, run)).unwrap_err(),
            Cancelled
        );
    }

    #[test]
    fn clean_candidate_has_no_errors() {
        let v = validated(&stub(), GOOD, &python3());
        assert_eq!(v.errors().count(), 0, "{v:#?}");
        let s = secured(GOOD);
        assert_eq!(s.errors().count(), 0, "{s:#?}");
    }

    #[test]
    fn syntax_and_py_compile() {
        let bad = "def mean(xs, default=None):\n    \"\"\"Average of xs.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    return (xs\n";
        let v = validated(&stub(), bad, &python3());
        assert!(has(&v, "syntax", Severity::Error), "{v:#?}");
        let pc = v
            .findings
            .iter()
            .find(|f| f.rule == "py_compile")
            .expect("py_compile finding");
        assert_eq!(pc.severity, Severity::Error);
        assert!(pc.line.is_some());
        // Valid for tree-sitter, rejected by CPython: `return` outside a function.
        let v = validated(&stub(), &format!("{GOOD}return 1\n"), &python3());
        assert!(has(&v, "py_compile", Severity::Error), "{v:#?}");
        let v = validated(&stub(), GOOD, Path::new("/nonexistent/python3"));
        assert!(
            v.notes.iter().any(|n| n.starts_with("py_compile skipped")),
            "{v:#?}"
        );
    }

    #[test]
    fn structure_rules() {
        let renamed = GOOD.replace(
            "def mean(xs, default=None)",
            "def mean(values, default=None)",
        );
        let v = validated(&stub(), &renamed, &python3());
        assert!(has(&v, "signature-changed", Severity::Error), "{v:#?}");
        let missing = GOOD.replace("def mean(", "def average(");
        assert!(has(
            &validated(&stub(), &missing, &python3()),
            "signature-changed",
            Severity::Error
        ));
        let redoc = GOOD.replace("Average of xs.", "Mean of xs.");
        let v = validated(&stub(), &redoc, &python3());
        assert_eq!(
            rules(&v)
                .iter()
                .filter(|r| **r == "docstring-changed")
                .count(),
            1,
            "{v:#?}"
        );
        let v = validated(&stub(), STUB, &python3());
        assert!(has(&v, "still-stub", Severity::Error), "{v:#?}");
    }

    #[test]
    fn style_rules_fire() {
        let code = "COUNT = 0\n\ndef mean(xs, default=None, cache=[]):\n    \"\"\"Average of xs.\n\n    >>> mean([1, 3])\n    2.0\n    \"\"\"\n    global COUNT\n    try:\n        print(xs)\n        return sum(xs) / len(xs)\n    except:\n        return default\n\nprint('module level is not flagged')\n";
        let v = validated(&stub(), code, &python3());
        assert!(has(&v, "mutable-default", Severity::Warning), "{v:#?}");
        assert!(has(&v, "global", Severity::Warning));
        assert!(has(&v, "bare-except", Severity::Warning));
        let prints: Vec<_> = v.findings.iter().filter(|f| f.rule == "print").collect();
        assert_eq!(prints.len(), 1, "{v:#?}");
        assert_eq!(prints[0].severity, Severity::Info);
        assert_eq!(prints[0].line, Some(11));
        // The signature check compares names only: the extra `cache` parameter is a change.
        assert!(has(&v, "signature-changed", Severity::Error));
    }

    #[test]
    fn ruff_runs_or_is_noted() {
        let code = GOOD.replace(
            "return float(statistics.mean(xs))",
            "return float(statistics.mean(undefined_name))",
        );
        let v = validated(&stub(), &code, &python3());
        if host::find_on_path("ruff").is_some() {
            let f = v
                .findings
                .iter()
                .find(|f| f.rule == "ruff:F821")
                .expect("ruff F821");
            assert_eq!(f.severity, Severity::Error);
            assert_eq!(f.line, Some(12));
            let unused = format!("import os\n{GOOD}");
            let v = validated(&stub(), &unused, &python3());
            assert!(has(&v, "ruff:F401", Severity::Warning), "{v:#?}");
        } else {
            assert!(v
                .notes
                .contains(&"ruff not on PATH: skipped (pip install ruff)".to_string()));
        }
    }

    #[test]
    fn security_rules_fire() {
        let code = r#"import os
import subprocess as sp
import pickle, marshal, yaml, shutil
import urllib.request
from http import client
import requests
from os import system as run_it

def f(x):
    eval(x)
    exec(x)
    compile(x, "f", "exec")
    __import__("os")
    os.system("ls")
    run_it("ls")
    os.popen("ls")
    sp.run("ls", shell=True)
    os.execv("/bin/ls", [])
    os.spawnl(0, "/bin/ls")
    os.fork()
    pickle.loads(x)
    marshal.load(x)
    yaml.load(x)
    yaml.load(x, Loader=yaml.SafeLoader)
    open("out.txt", "w")
    open("in.txt")
    open("in.txt", mode="rb")
    open("log.txt", mode="a")
    shutil.rmtree("/tmp/x")
    os.remove("a")
    os.unlink("a")
    os.rmdir("a")
    re.compile("x")
"#;
        let r = secured(code);
        let count = |rule: &str, sev: Severity| {
            r.findings
                .iter()
                .filter(|f| f.tool == TS && f.rule == rule && f.severity == sev)
                .count()
        };
        assert_eq!(count("eval", Severity::Error), 1);
        assert_eq!(count("exec", Severity::Error), 1);
        assert_eq!(count("compile", Severity::Error), 1, "re.compile is fine");
        assert_eq!(count("__import__", Severity::Error), 1);
        assert_eq!(
            count("shell", Severity::Error),
            3,
            "os.system, aliased system, os.popen"
        );
        assert_eq!(count("subprocess", Severity::Error), 1);
        assert_eq!(count("process", Severity::Error), 3);
        assert_eq!(
            count("unsafe-deserialization", Severity::Error),
            3,
            "safe yaml.load is fine"
        );
        assert_eq!(count("network-import", Severity::Error), 3);
        assert_eq!(count("file-write", Severity::Warning), 2);
        assert_eq!(count("file-delete", Severity::Warning), 4);
        let eval = r.findings.iter().find(|f| f.rule == "eval").unwrap();
        assert_eq!(eval.line, Some(10));
    }

    #[test]
    fn bandit_runs_or_is_noted() {
        let code = "def f(x):\n    assert x\n    return eval(x)\n";
        let r = secured(code);
        if host::find_on_path("bandit").is_some() {
            let b = r
                .findings
                .iter()
                .find(|f| f.rule == "bandit:B307")
                .expect("bandit B307");
            assert_eq!(b.tool, "bandit");
            assert_eq!(b.line, Some(3));
            assert_eq!(b.severity, Severity::Warning, "B307 is MEDIUM");
            assert!(
                !r.findings.iter().any(|f| f.rule == "bandit:B101"),
                "assert findings are skipped"
            );
        } else {
            assert!(r
                .notes
                .contains(&"bandit not on PATH: skipped (pip install bandit)".to_string()));
        }
    }
}
