//! Docstring examples -> test cases: doctest (`>>>`) and the informal forms
//! people write (`f(x) == y`, `f(x) ➞ y`, `->`, `=>`, `returns`, `= y`,
//! `Input: ... Output: ...`, `For x = 1 the output should be 2`).
//!
//! Owns only the text heuristics; every produced `call` and `expected` is checked
//! to parse as Python with tree-sitter (except doctest output that is printed text).

use super::scan::{is_bracket, scan, At};
use super::{parse, parses_cleanly, FunctionInfo};
use crate::types::{TestCase, TestOrigin};
use tree_sitter::Node;

/// Test cases from `func`'s docstring examples, in docstring order, ids `ex1`, `ex2`, ...
/// (origin [`TestOrigin::Docstring`]). Examples whose call or value cannot be read
/// as Python are left out rather than guessed. Empty without a docstring.
pub fn extract_examples(func: &FunctionInfo) -> Vec<TestCase> {
    let Some(doc) = func.docstring.as_deref() else {
        return Vec::new();
    };
    let lines: Vec<&str> = doc.lines().collect();
    let ctx = Ctx::new(func, &lines);
    let mut raw: Vec<(String, String, Option<String>, String)> = Vec::new();
    // Doctest option flags of each entry of `raw` (empty for informal forms).
    let mut raw_opts: Vec<Vec<String>> = Vec::new();
    let mut setup: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if t.starts_with(">>>") {
            i = doctest_example(&ctx, &lines, i, &mut setup, &mut raw, &mut raw_opts);
            continue;
        }
        if let Some(ex) = ctx.informal(&lines, i) {
            raw.push(ex);
            raw_opts.push(Vec::new());
        }
        i += 1;
    }
    let mut out: Vec<TestCase> = Vec::new();
    for ((call, expected, raises, note), options) in raw.into_iter().zip(raw_opts) {
        if out
            .iter()
            .any(|c| c.call == call && c.expected == expected && c.raises == raises)
        {
            continue;
        }
        out.push(TestCase {
            id: format!("ex{}", out.len() + 1),
            origin: TestOrigin::Docstring,
            call,
            expected,
            raises,
            note,
            options,
        });
    }
    out
}

/// Parses one doctest example starting at line `i`; returns the index of the next unread line.
fn doctest_example(
    ctx: &Ctx,
    lines: &[&str],
    mut i: usize,
    setup: &mut Vec<String>,
    out: &mut Vec<(String, String, Option<String>, String)>,
    out_opts: &mut Vec<Vec<String>>,
) -> usize {
    let first = lines[i];
    let indent = first.len() - first.trim_start().len();
    let note = first.trim().to_string();
    let strip_prompt = |l: &str, p: &str| -> String {
        let r = l.trim_start().strip_prefix(p).unwrap_or("");
        r.strip_prefix(' ').unwrap_or(r).to_string()
    };
    let mut src = vec![strip_prompt(first, ">>>")];
    i += 1;
    while i < lines.len()
        && lines[i].trim_start().starts_with("...")
        && !lines[i].trim_start().starts_with("....")
    {
        // `...` alone could also be output (an Ellipsis); treat it as a continuation only
        // when the statement so far is incomplete or the line has code.
        let cont = strip_prompt(lines[i], "...");
        if cont.trim().is_empty() && parses_cleanly(&src.join("\n")) {
            break;
        }
        src.push(cont);
        i += 1;
    }
    let mut output: Vec<String> = Vec::new();
    while i < lines.len()
        && !lines[i].trim().is_empty()
        && !lines[i].trim_start().starts_with(">>>")
    {
        let l = lines[i];
        let cut = indent.min(l.len() - l.trim_start().len());
        output.push(l[cut..].trim_end().to_string());
        i += 1;
    }
    let options = directives(&src.join("\n"));
    let source = strip_comments(&src.join("\n"));
    let one_line = if src.len() > 1 {
        src.iter().map(|s| s.trim()).collect::<Vec<_>>().join(" ")
    } else {
        source.clone()
    };
    let expr = if is_expression(&source) && is_expression(&one_line) {
        Some(one_line)
    } else {
        None
    };
    let with_setup = |e: &str| -> String {
        let mut all = setup.clone();
        all.push(e.to_string());
        all.join("\n")
    };
    let before = out.len();
    match expr {
        None => {
            if output.is_empty() && parses_cleanly(&source) {
                setup.push(source);
            }
        }
        Some(e) => {
            if output.is_empty() {
                // `>>> f(x) == y` with no output is an assertion-style example in
                // many docstrings; `>>> f(x)` alone really means `None`.
                match ctx.call_form(&e, usize::MAX).or_else(|| ctx.space_form(&e)) {
                    Some((call, expected)) => out.push((with_setup(&call), expected, None, note)),
                    None => out.push((with_setup(&e), "None".into(), None, note)),
                }
            } else if output[0].starts_with("Traceback (most recent call last)") {
                let last = output
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with(' '));
                if let Some(last) = last {
                    let name = last.split(':').next().unwrap_or("").trim();
                    let name = name.rsplit('.').next().unwrap_or(name);
                    if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        out.push((with_setup(&e), String::new(), Some(name.to_string()), note));
                    }
                }
            } else {
                let expected = output.join("\n");
                let expected = if is_expression(&expected) || output.len() == 1 {
                    expected
                } else {
                    let joined = output
                        .iter()
                        .map(|s| s.trim())
                        .collect::<Vec<_>>()
                        .join(" ");
                    if is_expression(&joined) {
                        joined
                    } else {
                        expected
                    }
                };
                out.push((with_setup(&e), expected, None, note));
            }
            // Doctest semantics: once set-up lines made state (`inv =
            // Inventory()`), what each later line did stays done for the
            // lines after it (`inv.add(...)` then `inv.count(...)`). A line
            // that must raise is replayed with its exception swallowed.
            // Examples with no set-up (pure calls) stay independent, so one
            // wrong answer does not fail the examples after it.
            if setup.is_empty() {
            } else if raises_here(&out[before..]) {
                setup.push(format!("try:\n    {e}\nexcept Exception:\n    pass"));
            } else {
                setup.push(e);
            }
        }
    }
    out_opts.resize(out.len(), options);
    i
}

/// Whether the example just recorded expects an exception.
fn raises_here(new: &[(String, String, Option<String>, String)]) -> bool {
    new.iter().any(|(_, _, raises, _)| raises.is_some())
}

/// The doctest option flags a `# doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE`
/// directive turns on in `source` (those the referee knows; `-FLAG` and
/// unknown ones are left out).
fn directives(source: &str) -> Vec<String> {
    const KNOWN: [&str; 4] = [
        "ELLIPSIS",
        "NORMALIZE_WHITESPACE",
        "IGNORE_EXCEPTION_DETAIL",
        "DONT_ACCEPT_BLANKLINE",
    ];
    let mut out: Vec<String> = Vec::new();
    for line in source.lines() {
        let Some(at) = line.find("doctest:") else {
            continue;
        };
        if !line[..at].contains('#') {
            continue;
        }
        for flag in line[at + "doctest:".len()..].split([',', ' ']) {
            if let Some(name) = flag.trim().strip_prefix('+') {
                if KNOWN.contains(&name) && !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

/// `s` without its comments (trailing whitespace trimmed per line).
fn strip_comments(s: &str) -> String {
    fn collect(n: Node, out: &mut Vec<std::ops::Range<usize>>) {
        if n.kind() == "comment" {
            out.push(n.byte_range());
        }
        let mut c = n.walk();
        for k in n.children(&mut c) {
            collect(k, out);
        }
    }
    let tree = parse(s);
    let mut ranges = Vec::new();
    collect(tree.root_node(), &mut ranges);
    let mut out = s.to_string();
    for r in ranges.into_iter().rev() {
        out.replace_range(r, "");
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `s` is exactly one Python expression (not an assignment), with no syntax error.
pub(crate) fn is_expression(s: &str) -> bool {
    if s.trim().is_empty() {
        return false;
    }
    let tree = parse(s);
    let root = tree.root_node();
    if root.has_error() {
        return false;
    }
    let mut c = root.walk();
    let kids: Vec<Node> = root
        .named_children(&mut c)
        .filter(|n| n.kind() != "comment")
        .collect();
    if kids.len() != 1 || kids[0].kind() != "expression_statement" {
        return false;
    }
    let mut c2 = kids[0].walk();
    let inner: Vec<Node> = kids[0].named_children(&mut c2).collect();
    inner.len() == 1
        && !matches!(
            inner[0].kind(),
            "assignment" | "augmented_assignment" | "yield"
        )
}

/// Whether expression `s` uses no bare names: only literals, attribute chains and
/// calls (`float('inf')`), so it means the same inside any module.
fn no_free_names(s: &str) -> bool {
    fn walk(n: Node) -> bool {
        if n.kind() == "identifier" {
            let Some(p) = n.parent() else { return false };
            let ok = match p.kind() {
                "attribute" => true,
                "call" => p
                    .child_by_field_name("function")
                    .is_some_and(|f| f.id() == n.id()),
                "keyword_argument" => p
                    .child_by_field_name("name")
                    .is_some_and(|f| f.id() == n.id()),
                _ => false,
            };
            return ok;
        }
        let mut c = n.walk();
        let kids: Vec<Node> = n.children(&mut c).collect();
        kids.into_iter().all(walk)
    }
    let tree = parse(s);
    walk(tree.root_node())
}

/// Index just past the bracket matching the one at `start`, honouring quotes.
fn balanced_end(s: &str, start: usize) -> Option<usize> {
    for (i, c, at) in scan(&s[start..]) {
        match at {
            At::Code(d) if d < 0 => return None,
            At::Code(0) if matches!(c, ')' | ']' | '}') => return Some(start + i + 1),
            _ => {}
        }
    }
    None
}

/// Byte positions in `s` at bracket depth 0 and outside quotes where `pred`
/// holds (never a bracket or a quote).
fn top_level_positions(s: &str, pred: impl Fn(char, usize) -> bool) -> Vec<usize> {
    scan(s)
        .filter(|&(i, c, at)| at == At::Code(0) && !is_bracket(c) && pred(c, i))
        .map(|(i, ..)| i)
        .collect()
}

/// The expected value at the start of `rest`: the longest prefix that is a
/// self-contained Python expression followed by nothing or by prose.
fn rhs_expression(rest: &str) -> Option<String> {
    let s = rest.trim();
    let bytes = s.as_bytes();
    let cut = top_level_positions(s, |c, i| {
        c == ',' || c == ';' || (c == '#' && (i == 0 || bytes[i - 1] == b' '))
    })
    .into_iter()
    .next()
    .unwrap_or(s.len());
    let s = s[..cut].trim_end();
    let mut ends = top_level_positions(s, |c, _| c == ' ' || c == '\t');
    ends.push(s.len());
    for &end in ends.iter().rev() {
        let remainder = s[end..].trim_start();
        if let Some(c) = remainder.chars().next() {
            if !(c.is_alphabetic() || c == '(') {
                continue;
            }
        }
        let mut cand = s[..end].trim_end();
        if cand.ends_with('.') && !cand.ends_with("..") && cand.len() > 1 {
            cand = &cand[..cand.len() - 1];
        }
        let cand = match cand {
            "true" => "True",
            "false" => "False",
            "none" | "null" => "None",
            c => c,
        };
        if is_expression(cand) && no_free_names(cand) {
            return Some(cand.to_string());
        }
    }
    None
}

/// `name = value` pairs at the start of `s` (values balanced, ended by `,` or prose),
/// and the text after them.
fn parse_assignments(s: &str) -> (Vec<(String, String)>, &str) {
    let mut pairs = Vec::new();
    let mut rest = s;
    loop {
        let t = rest.trim_start();
        let ident_len = t
            .char_indices()
            .take_while(|(i, c)| {
                c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit())
            })
            .count();
        if ident_len == 0 {
            break;
        }
        let name = &t[..ident_len];
        let after = t[ident_len..].trim_start();
        if !after.starts_with('=') || after.starts_with("==") {
            break;
        }
        let v = after[1..].trim_start();
        let stops = top_level_positions(v, |c, i| {
            c == ','
                || ((c == ' ' || c == '\t') && {
                    let next = v[i..].trim_start();
                    next.chars().next().is_some_and(|n| n.is_alphabetic())
                })
        });
        let end = stops.first().copied().unwrap_or(v.len());
        let value = v[..end].trim().trim_end_matches('.');
        if !is_expression(value) || !no_free_names(value) {
            break;
        }
        pairs.push((name.to_string(), value.to_string()));
        rest = v[end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    (pairs, rest)
}

struct Ctx<'a> {
    func: &'a FunctionInfo,
    /// When the docstring defines the function by formulas (`tri(n) = ...`),
    /// `f(x) = y` lines count only after this line (the last "Example" header).
    eq_form_from: usize,
}

const OPERATORS: [&str; 12] = [
    "==>",
    "==",
    "=>",
    "->",
    "➞",
    "→",
    "=",
    "returns",
    "should return",
    "will return",
    "should be",
    "gives",
];

impl<'a> Ctx<'a> {
    fn new(func: &'a FunctionInfo, lines: &[&str]) -> Self {
        let pat = format!("{}(", func.name);
        let defines = lines.iter().any(|l| {
            let t = l.trim();
            t.starts_with(&pat)
                && balanced_end(t, func.name.len()).is_some_and(|e| {
                    let args = &t[func.name.len() + 1..e - 1];
                    let rest = t[e..].trim_start();
                    rest.starts_with('=')
                        && !rest.starts_with("==")
                        && args
                            .split(',')
                            .any(|a| func.params.iter().any(|p| p == a.trim()))
                })
        });
        let eq_form_from = if defines {
            lines
                .iter()
                .rposition(|l| {
                    let t = l.trim().to_ascii_lowercase();
                    t.starts_with("example") || t.starts_with("for example")
                })
                .unwrap_or(usize::MAX)
        } else {
            0
        };
        Ctx { func, eq_form_from }
    }

    fn informal(
        &self,
        lines: &[&str],
        i: usize,
    ) -> Option<(String, String, Option<String>, String)> {
        let line = lines[i];
        let note = line.trim().to_string();
        if let Some((call, expected)) = self.call_form(line, i) {
            return Some((call, expected, None, note));
        }
        if let Some((call, expected)) = self.for_form(line) {
            return Some((call, expected, None, note));
        }
        if let Some((call, expected)) = self.input_output_form(lines, i) {
            return Some((call, expected, None, note));
        }
        None
    }

    /// `f(args) OP value`, the call anywhere in the line.
    fn call_form(&self, line: &str, i: usize) -> Option<(String, String)> {
        let name = &self.func.name;
        let pat = format!("{name}(");
        let mut search = 0;
        while let Some(off) = line[search..].find(&pat) {
            let at = search + off;
            search = at + pat.len();
            let prev = line[..at].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let end = balanced_end(line, at + name.len())?;
            let call = &line[at..end];
            let rest = line[end..].trim_start();
            for op in OPERATORS {
                let Some(after) = rest.strip_prefix(op) else {
                    continue;
                };
                if op.chars().all(|c| c.is_alphabetic() || c == ' ')
                    && !after.starts_with([' ', '\t'])
                {
                    continue;
                }
                if op == "=" && (after.starts_with('=') || i < self.eq_form_from) {
                    return None;
                }
                if !is_expression(call) || !no_free_names(call) {
                    return None;
                }
                let expected = rhs_expression(after)?;
                if expected.contains(&pat) {
                    return None;
                }
                return Some((call.to_string(), expected));
            }
            return None;
        }
        None
    }

    /// `f(args) value` (a doctest line missing its `==`): the whole rest must be the value.
    fn space_form(&self, src: &str) -> Option<(String, String)> {
        let name = &self.func.name;
        if !src.starts_with(&format!("{name}(")) {
            return None;
        }
        let end = balanced_end(src, name.len())?;
        let rest = &src[end..];
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let call = &src[..end];
        let expected = rhs_expression(rest)?;
        (expected == rest.trim() && is_expression(call) && no_free_names(call))
            .then(|| (call.to_string(), expected))
    }

    /// `For x = 1, y = 2 the output should be 3`.
    fn for_form(&self, line: &str) -> Option<(String, String)> {
        let t = line.trim();
        if !t.to_ascii_lowercase().starts_with("for ") {
            return None;
        }
        let (pairs, rest) = parse_assignments(&t[4..]);
        if pairs.is_empty() {
            return None;
        }
        let lower = rest.to_ascii_lowercase();
        let at = ["should be", "will be", "should return"]
            .iter()
            .filter_map(|p| lower.rfind(p).map(|i| i + p.len()))
            .max()?;
        let expected = rhs_expression(&rest[at..])?;
        Some((self.build_call(&pairs)?, expected))
    }

    /// `Input: ...` then `Output: ...` (same line or within the next three lines).
    fn input_output_form(&self, lines: &[&str], i: usize) -> Option<(String, String)> {
        let line = lines[i];
        let lower = line.to_ascii_lowercase();
        let at = lower.find("input:")? + "input:".len();
        let (input, output) = match lower[at..].find("output:") {
            Some(o) => (&line[at..at + o], &line[at + o + "output:".len()..]),
            None => {
                let j = (i + 1..lines.len().min(i + 4)).find(|&j| {
                    lines[j]
                        .trim_start()
                        .to_ascii_lowercase()
                        .starts_with("output:")
                })?;
                let l = lines[j].trim_start();
                (&line[at..], &l["output:".len()..])
            }
        };
        let expected = rhs_expression(output)?;
        let input = input.trim().trim_end_matches(',');
        let (pairs, rest) = parse_assignments(input);
        let call = if !pairs.is_empty() && rest.trim().is_empty() {
            self.build_call(&pairs)?
        } else {
            let c = format!("{}({})", self.func.name, input);
            if !is_expression(&c) || !no_free_names(&c) {
                return None;
            }
            c
        };
        Some((call, expected))
    }

    /// A call from `name = value` pairs: keywords when every name is a parameter,
    /// positional when the count matches the parameters, else nothing.
    fn build_call(&self, pairs: &[(String, String)]) -> Option<String> {
        let params: Vec<&str> = self
            .func
            .params
            .iter()
            .map(|p| p.as_str())
            .filter(|p| *p != "self" && *p != "cls")
            .collect();
        let args: Vec<String> = if pairs.iter().all(|(n, _)| params.contains(&n.as_str())) {
            pairs.iter().map(|(n, v)| format!("{n}={v}")).collect()
        } else if pairs.len() == params.len() {
            pairs.iter().map(|(_, v)| v.clone()).collect()
        } else {
            return None;
        };
        let call = format!("{}({})", self.func.name, args.join(", "));
        is_expression(&call).then_some(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::find_function;

    fn examples(src: &str, name: &str) -> Vec<TestCase> {
        extract_examples(&find_function(src, name).unwrap())
    }

    fn pairs(cases: &[TestCase]) -> Vec<(&str, &str)> {
        cases
            .iter()
            .map(|c| (c.call.as_str(), c.expected.as_str()))
            .collect()
    }

    #[test]
    fn doctest_with_setup_none_and_traceback() {
        let src = r#"
def f(xs, k=1):
    """Do things.

    >>> x = [1, 2]
    >>> f(x)
    [2, 3]
    >>> f([1,
    ...    2], k=2)
    [3, 4]
    >>> f([])
    >>> f(None)
    Traceback (most recent call last):
      ...
    ValueError: bad input
    >>> print(f([0]))
    hello world
    """
"#;
        let ex = examples(src, "f");
        assert_eq!(ex.len(), 5, "{ex:#?}");
        assert_eq!(ex[0].call, "x = [1, 2]\nf(x)");
        assert_eq!(ex[0].expected, "[2, 3]");
        assert_eq!(ex[0].id, "ex1");
        assert_eq!(ex[0].origin, TestOrigin::Docstring);
        assert_eq!(ex[0].note, ">>> f(x)");
        // State carries on once set-up lines made some (doctest semantics).
        assert_eq!(ex[1].call, "x = [1, 2]\nf(x)\nf([1, 2], k=2)");
        assert_eq!(ex[2].expected, "None");
        assert!(
            ex[4]
                .call
                .contains("try:\n    f(None)\nexcept Exception:\n    pass\n"),
            "{}",
            ex[4].call
        );
        assert_eq!(ex[3].raises.as_deref(), Some("ValueError"));
        assert_eq!(ex[3].expected, "");
        assert_eq!(ex[4].expected, "hello world");
        assert_eq!(ex[4].id, "ex5");
    }

    #[test]
    fn doctest_state_carries_from_line_to_line_and_directives_become_options() {
        let src = r#"
class Inventory:
    def add(self, name, qty):
        """Adds stock.

        >>> inv = Inventory()
        >>> inv.add("apple", 3)
        >>> inv.add("apple", 2)
        >>> inv.count("apple")
        5
        >>> list(range(20))  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        [0, 1, ..., 19]
        """
"#;
        let ex = examples(src, "Inventory.add");
        assert_eq!(ex.len(), 4, "{ex:#?}");
        assert_eq!(ex[0].call, "inv = Inventory()\ninv.add(\"apple\", 3)");
        assert_eq!(ex[0].expected, "None");
        assert_eq!(
            ex[2].call,
            "inv = Inventory()\ninv.add(\"apple\", 3)\ninv.add(\"apple\", 2)\ninv.count(\"apple\")"
        );
        assert_eq!(ex[2].expected, "5");
        assert!(ex[2].options.is_empty());
        assert_eq!(ex[3].options, ["ELLIPSIS", "NORMALIZE_WHITESPACE"]);
        assert_eq!(ex[3].expected, "[0, 1, ..., 19]");
        // Pure calls with no set-up stay independent.
        let pure = r#"
def f(x):
    """
    >>> f(1)
    2
    >>> f(2)
    3
    """
"#;
        let ex = examples(pure, "f");
        assert_eq!(ex[1].call, "f(2)");
    }

    #[test]
    fn doctest_assertion_style_without_output() {
        let src = r#"
def c(xs):
    """
    >>> c([]) == 0
    >>> c([1, 0]) [0, 1]
    >>> round(c([1, 2]), 2) # comment
    1.5
    """
"#;
        assert_eq!(
            pairs(&examples(src, "c")),
            vec![
                ("c([])", "0"),
                ("c([1, 0])", "[0, 1]"),
                ("round(c([1, 2]), 2)", "1.5")
            ]
        );
    }

    #[test]
    fn informal_arrows_and_words() {
        let src = r#"
def g(a, b):
    """Example:
    g(1, 2) == True
    g('a', 'b') ➞ 'abc'
    g([1, 2], 3) -> [1, 2]
    * g(3.5, 1) => 3.5
    g(0, 0) returns None
    g(1, 1) should return False because they are equal
    for g(2, 2) == 4
    g(5, 5) = 10
    g(9, 9) ==> "x y"
    g(7, 7) => true
    g(a, b) == 3
    g(1, 0) => 2 # comment here
    """
"#;
        let ex = examples(src, "g");
        assert_eq!(
            pairs(&ex),
            vec![
                ("g(1, 2)", "True"),
                ("g('a', 'b')", "'abc'"),
                ("g([1, 2], 3)", "[1, 2]"),
                ("g(3.5, 1)", "3.5"),
                ("g(0, 0)", "None"),
                ("g(1, 1)", "False"),
                ("g(2, 2)", "4"),
                ("g(5, 5)", "10"),
                ("g(9, 9)", "\"x y\""),
                ("g(7, 7)", "True"),
                ("g(1, 0)", "2"),
            ]
        );
    }

    #[test]
    fn input_output_and_for_forms() {
        let src = r#"
def h(arr, k):
    """Example 1:
        Input: arr = [-3, -4, 5], k = 3
        Output: [-4, -3, 5]

    Example: input: arr = [1,2], k = 3 output: 5
    For arr = [1], k = 2 the output should be 7.
    """
def p(arr):
    """
    Example 1:
        Input: [4,2,3]
        Output: [2, 1]
        Explanation: 2 has the smallest even value.
    """
"#;
        assert_eq!(
            pairs(&examples(src, "h")),
            vec![
                ("h(arr=[-3, -4, 5], k=3)", "[-4, -3, 5]"),
                ("h(arr=[1,2], k=3)", "5"),
                ("h(arr=[1], k=2)", "7"),
            ]
        );
        assert_eq!(pairs(&examples(src, "p")), vec![("p([4,2,3])", "[2, 1]")]);
    }

    #[test]
    fn formulas_are_not_examples() {
        let src = r#"
def tri(n):
    """Defined by:
    tri(1) = 3
    tri(n) = 1 + n / 2, if n is even.
    For example:
    tri(2) = 1 + (2 / 2) = 2
    Examples:
    tri(3) = [1, 3, 2, 8]
    """
"#;
        assert_eq!(
            pairs(&examples(src, "tri")),
            vec![("tri(3)", "[1, 3, 2, 8]")]
        );
    }

    /// Every HumanEval dev prompt: most yield examples, and every call and
    /// expected value parses as Python. Only `prompt` and `entry_point` are read.
    #[test]
    fn humaneval_dev_prompts() {
        let path = std::env::var("DOCSMITH_HUMANEVAL_DEV").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/bench/humaneval-dev.jsonl"
            )
            .into()
        });
        let data = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {path}: {e} (set DOCSMITH_HUMANEVAL_DEV)"));
        let mut total = 0;
        let mut with_examples = 0;
        let mut without = Vec::new();
        for line in data.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let prompt = v["prompt"].as_str().unwrap();
            let name = v["entry_point"].as_str().unwrap();
            total += 1;
            let func = find_function(prompt, name).unwrap();
            let ex = extract_examples(&func);
            if ex.is_empty() {
                without.push(name.to_string());
            } else {
                with_examples += 1;
            }
            for c in &ex {
                if std::env::var("DOCSMITH_DUMP_EXAMPLES").is_ok() {
                    eprintln!(
                        "{name}: {:?} => {:?} raises {:?}",
                        c.call, c.expected, c.raises
                    );
                }
                assert!(
                    parses_cleanly(&c.call),
                    "{name}: call does not parse: {:?}",
                    c.call
                );
                if c.raises.is_none() {
                    assert!(
                        parses_cleanly(&c.expected),
                        "{name}: expected does not parse: {:?} from {:?}",
                        c.expected,
                        c.note
                    );
                }
            }
        }
        eprintln!(
            "humaneval-dev: {with_examples}/{total} prompts yield examples; none from {without:?}"
        );
        assert_eq!(total, 82);
        assert!(
            with_examples >= 70,
            "only {with_examples}/{total}; none from {without:?}"
        );
    }
}
