//! `vscode-extension/src/protocol.ts` mirrors `protocol.rs`: these tests
//! read it as text and fail when the two disagree on a command name, an
//! argument field (both ways), a result or notification field, or a shared
//! constant.
//!
//! What is read of the TypeScript: `export const NAME = '...';` lines,
//! `export interface Name { key: Type; key?: Type }` blocks (one level of
//! braces, members split at `;` and line ends), and `interface CommandArgs`,
//! whose members are `[CONSTANT]: ArgsInterface`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;

fn protocol_ts() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vscode-extension/src/protocol.ts"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `export const NAME = 'value';` lines: NAME -> value.
fn ts_consts(ts: &str) -> BTreeMap<&str, &str> {
    ts.lines()
        .filter_map(|line| {
            let (name, value) = line.trim().strip_prefix("export const ")?.split_once('=')?;
            let value = value.trim().strip_suffix(';')?.trim();
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
            Some((name.trim(), value))
        })
        .collect()
}

/// The members of `export interface <name> { ... }`: (key without `?`, type).
fn ts_interface<'a>(ts: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let opening = format!("export interface {name} {{");
    let start = ts
        .find(&opening)
        .unwrap_or_else(|| panic!("protocol.ts declares no `{opening}`"))
        + opening.len();
    let body = &ts[start..];
    let body = &body[..body.find('}').expect("the interface's closing brace")];
    body.split([';', '\n'])
        .filter_map(|member| {
            let (key, typ) = member.split_once(':')?;
            Some((key.trim().trim_end_matches('?'), typ.trim()))
        })
        .collect()
}

/// The field names of an interface.
fn ts_fields(ts: &str, interface: &str) -> BTreeSet<String> {
    ts_interface(ts, interface)
        .into_iter()
        .map(|(key, _)| key.to_string())
        .collect()
}

/// The keys of a serialized struct.
fn rust_fields(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn protocol_ts_has_the_same_commands_and_argument_fields() {
    let ts = protocol_ts();
    let consts = ts_consts(&ts);
    // protocol.ts: command name -> its argument's fields, from `CommandArgs`.
    let mut in_ts = BTreeMap::new();
    for (key, interface) in ts_interface(&ts, "CommandArgs") {
        let constant = key
            .strip_prefix('[')
            .and_then(|k| k.strip_suffix(']'))
            .unwrap_or_else(|| panic!("CommandArgs member `{key}` is not `[CONSTANT]`"));
        let name = consts
            .get(constant)
            .unwrap_or_else(|| panic!("protocol.ts has no `export const {constant} = '...'`"));
        in_ts.insert(name.to_string(), ts_fields(&ts, interface));
    }
    // protocol.rs: the same, from one command of each kind with every field set.
    let in_rust: BTreeMap<String, BTreeSet<String>> = every_command()
        .iter()
        .map(|c| (c.name().to_string(), rust_fields(&c.arguments()[0])))
        .collect();
    assert_eq!(
        in_ts, in_rust,
        "protocol.ts (left) and protocol.rs (right) disagree on commands or argument fields"
    );
    // Every command name protocol.ts declares has its argument in CommandArgs.
    let named_in_ts: BTreeSet<&str> = consts
        .values()
        .copied()
        .filter(|v| v.starts_with("docsmith."))
        .collect();
    let mapped: BTreeSet<&str> = in_ts.keys().map(String::as_str).collect();
    assert_eq!(
        named_in_ts, mapped,
        "protocol.ts declares commands (left) that CommandArgs does not map (right)"
    );
}

#[test]
fn protocol_ts_has_the_same_results_and_notification_fields() {
    let ts = protocol_ts();
    let uri: Uri = "file:///w/a.py".parse().unwrap();
    let rust = [
        (
            "Started",
            serde_json::to_value(Started {
                task: 1,
                queued_behind: 0,
            }),
        ),
        (
            "Applied",
            serde_json::to_value(Applied {
                applied: false,
                reason: Some("stale".into()),
            }),
        ),
        (
            "ProposalFiles",
            serde_json::to_value(ProposalFiles {
                dir: "d".into(),
                diff: "d/proposal.diff".into(),
                original: "d/original.py".into(),
                code: "d/f.py".into(),
                tests: "d/test_f.py".into(),
                report: "d/report.md".into(),
            }),
        ),
        (
            "TaskChangedParams",
            serde_json::to_value(TaskChangedParams {
                task: 1,
                uri,
                name: "f".into(),
                phase: TaskPhase::Running,
                message: "writing code".into(),
                percent: 10,
            }),
        ),
    ];
    for (interface, value) in rust {
        assert_eq!(
            ts_fields(&ts, interface),
            rust_fields(&value.unwrap()),
            "protocol.ts (left) and protocol.rs (right) disagree on the fields of {interface}"
        );
    }
}

#[test]
fn protocol_ts_constants_have_the_values_of_protocol_rs() {
    let ts = protocol_ts();
    let consts = ts_consts(&ts);
    let rust = [
        ("GENERATE", GENERATE),
        ("REFINE", REFINE),
        ("ANSWER", ANSWER),
        ("ACCEPT", ACCEPT),
        ("REJECT", REJECT),
        ("DISCARD", DISCARD),
        ("SHOW_DIFF", SHOW_DIFF),
        ("CANCEL", CANCEL),
        ("WRITE_TESTS", WRITE_TESTS),
        ("TASK_CHANGED", <TaskChanged as Notification>::METHOD),
        ("ACTION_TASK_KEY", ACTION_TASK_KEY),
        ("ACTION_KIND_KEY", ACTION_KIND_KEY),
        ("REVIEW_ACCEPT", REVIEW_ACCEPT),
        ("REVIEW_REJECT", REVIEW_REJECT),
        ("REVIEW_DIFF", REVIEW_DIFF),
        ("REVIEW_DISCARD", REVIEW_DISCARD),
        ("QUESTION_FREE_TEXT", QUESTION_FREE_TEXT),
        ("QUESTION_CANCEL", QUESTION_CANCEL),
    ];
    for (name, value) in rust {
        assert_eq!(
            consts.get(name).copied(),
            Some(value),
            "protocol.ts's `{name}` differs from protocol.rs's"
        );
    }
}
