//! Feedback becomes a test: the concrete cases a user states when rejecting
//! a proposal ("`slugify('')` must return `''`", "`parse('x')` should raise
//! ValueError", or a doctest `>>> f(2)` / `4`) are read into test cases of
//! origin [`TestOrigin::User`]: ground truth like the docstring's examples,
//! for the next rounds of the task and for later tasks on the same function
//! ([`crate::store::Store::user_test_cases`]).
//!
//! Part of test design, but read deterministically with the docstring
//! example reader (`python::extract_examples`) rather than asked of the
//! model: a case the user wrote is exact, and a small model's JSON is not.
//! Feedback that states no concrete case (a preference, a complaint) yields
//! none and is only passed to the developer, as before. One case per line;
//! the call must name the function directly (`f(...)`, not `obj.f(...)`).

use crate::python::{self, FunctionInfo};
use crate::types::{TestCase, TestOrigin};

/// Feedback phrasings rewritten to ones the docstring example reader knows
/// (`returns`, `should return`, `should be`, `gives`, `==`).
const PHRASES: [(&str, &str); 7] = [
    (" must return ", " should return "),
    (" must be ", " should be "),
    (" must give ", " gives "),
    (" should give ", " gives "),
    (" must equal ", " == "),
    (" should equal ", " == "),
    (" equals ", " == "),
];

/// The test cases stated in `feedback` for the function `stub`, minus those
/// already in `existing` (same call, expected value and exception). Ids
/// continue after the `user<n>` ids in `existing`; each note quotes the line
/// it came from. Empty when the feedback states no concrete case.
pub fn cases_from_feedback(
    feedback: &str,
    stub: &FunctionInfo,
    existing: &[TestCase],
) -> Vec<TestCase> {
    let text = feedback.replace('`', "");
    let mut found: Vec<(String, String, Option<String>, String)> = Vec::new();
    let mut value_lines = Vec::new();
    for line in text.lines() {
        if let Some((call, exc)) = raising_case(line, &stub.name) {
            found.push((call, String::new(), Some(exc), line.trim().to_string()));
            continue;
        }
        let mut l = format!(" {line} ");
        for (from, to) in PHRASES {
            l = l.replace(from, to);
        }
        value_lines.push(l.trim().to_string());
    }
    let mut reader = stub.clone();
    reader.docstring = Some(value_lines.join("\n"));
    for c in python::extract_examples(&reader) {
        found.push((c.call, c.expected, c.raises, c.note));
    }
    let mut next = existing
        .iter()
        .filter_map(|c| c.id.strip_prefix("user")?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    let mut out: Vec<TestCase> = Vec::new();
    for (call, expected, raises, note) in found {
        let same = |c: &TestCase| c.call == call && c.expected == expected && c.raises == raises;
        if existing.iter().any(same) || out.iter().any(same) {
            continue;
        }
        next += 1;
        out.push(TestCase {
            id: format!("user{next}"),
            origin: TestOrigin::User,
            call,
            expected,
            raises,
            note: format!("your feedback: {note}"),
            options: Vec::new(),
        });
    }
    out
}

/// The calls of `cases`, comma-separated, for a note (`add(6, 1), add(0, 0)`).
pub fn calls(cases: &[TestCase]) -> String {
    let calls: Vec<&str> = cases.iter().map(|c| c.call.as_str()).collect();
    calls.join(", ")
}

/// `name(args) must raise Exc` (or `should raise`, `raises`) in `line`: the
/// call and the exception's name.
fn raising_case(line: &str, name: &str) -> Option<(String, String)> {
    let at = line.find(&format!("{name}("))?;
    if line[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    // The shortest prefix from the name to a `)` that parses is the call.
    let end = line[at..]
        .match_indices(')')
        .map(|(i, _)| at + i + 1)
        .find(|&e| python::syntax_errors(&line[at..e]).is_empty())?;
    let mut words = line[end..].split_whitespace();
    let mut w = words.next()?;
    if matches!(w, "must" | "should" | "will" | "to") {
        w = words.next()?;
    }
    if !matches!(w, "raise" | "raises") {
        return None;
    }
    let exc = words
        .next()?
        .trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
    let is_path = !exc.is_empty()
        && exc.split('.').all(|p| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        });
    is_path.then(|| (line[at..end].to_string(), exc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub(name: &str) -> FunctionInfo {
        let src = format!("def {name}(s):\n    \"\"\"Doc.\"\"\"\n    ...\n");
        python::find_function(&src, name).unwrap()
    }

    fn triples(cases: &[TestCase]) -> Vec<(&str, &str, &str, Option<&str>)> {
        cases
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.call.as_str(),
                    c.expected.as_str(),
                    c.raises.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn concrete_cases_in_feedback_become_user_test_cases() {
        let fb = "Wrong for empty input: `slugify('')` must return `''`.\n\
                  Also slugify('A  B') should be 'a-b'\n\
                  slugify(None) must raise TypeError.\n\
                  >>> slugify('x y')\n\
                  'x-y'\n\
                  \n\
                  and please keep it short";
        let cases = cases_from_feedback(fb, &stub("slugify"), &[]);
        assert_eq!(
            triples(&cases),
            vec![
                ("user1", "slugify(None)", "", Some("TypeError")),
                ("user2", "slugify('')", "''", None),
                ("user3", "slugify('A  B')", "'a-b'", None),
                ("user4", "slugify('x y')", "'x-y'", None),
            ]
        );
        assert!(cases.iter().all(|c| c.origin == TestOrigin::User));
        assert!(
            cases[1].note.starts_with("your feedback: "),
            "{}",
            cases[1].note
        );
    }

    #[test]
    fn feedback_without_a_case_gives_none_and_known_cases_are_not_repeated() {
        let s = stub("slugify");
        assert!(cases_from_feedback("use re, and no recursion please", &s, &[]).is_empty());
        assert!(cases_from_feedback("other(1) must return 2", &s, &[]).is_empty());
        assert!(cases_from_feedback("x.slugify('a') must raise ValueError", &s, &[]).is_empty());
        let first = cases_from_feedback("slugify('') must return ''", &s, &[]);
        let again = cases_from_feedback(
            "slugify('') must return ''\nslugify('B') must return 'b'",
            &s,
            &first,
        );
        assert_eq!(
            triples(&again),
            vec![("user2", "slugify('B')", "'b'", None)]
        );
    }
}
