//! Pure analysis of Python source text with tree-sitter-python.
//!
//! Owns: finding functions (by name or line), their signature, parameters,
//! docstring, body range and indentation, stub detection, syntax errors,
//! docstring examples as test cases (`examples`), splicing a generated body
//! into a file, and pulling Python code out of an LLM reply.
//! Must not know about LLMs, LSP, the sandbox or the store: input is text,
//! output is plain data. All ranges are byte offsets into the given `&str`.

pub mod context;
mod examples;
pub mod project;
pub mod scan;

use std::ops::Range;

use serde::Serialize;
use tree_sitter::{Node, Parser, Tree};

pub use examples::extract_examples;

/// Errors of the analysis functions. Messages name the cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("no function `{name}` in the file; it defines: {}", available.join(", "))]
    FunctionNotFound {
        name: String,
        available: Vec<String>,
    },
    #[error("no function definition contains line {}; put the cursor inside a `def`", line + 1)]
    NoFunctionAtLine {
        /// 0-based line.
        line: usize,
    },
    #[error("generated code is not usable: {0}")]
    GeneratedCodeInvalid(String),
    #[error("`{name}` (line {line}) is defined inside `{outer}`; docsmith replaces module-level functions only: move `{name}` to the top level of the module (passing what it uses from `{outer}` as arguments), generate it there, and call it from `{outer}`")]
    NestedFunction {
        name: String,
        /// The innermost function around it.
        outer: String,
        /// 1-based line of its `def` (or first decorator).
        line: usize,
    },
    #[error("`{name}` is defined {} times at module level (lines {}); Python keeps only the last one, so docsmith cannot tell which to replace: delete or rename the others, then run docsmith again", lines.len(), lines.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    DuplicateDefinition {
        name: String,
        /// 1-based lines of each definition, in order.
        lines: Vec<usize>,
    },
}

/// One `def` / `async def` found in a file. Ranges are byte offsets into the
/// source the function was found in; lines are 0-based.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub is_async: bool,
    /// Enclosing class for methods, `None` for module-level and nested functions.
    pub class_name: Option<String>,
    /// Decorator source text, e.g. `@functools.cache`.
    pub decorators: Vec<String>,
    /// Exact text from `def` / `async def` through the `:` ending the header (may span lines).
    pub signature: String,
    /// Parameter names in order (`self`, `*args`, `**kwargs` as written, no annotations/defaults;
    /// the bare `*` and `/` separators are left out).
    pub params: Vec<String>,
    /// Cleaned docstring content (quotes removed, `inspect.cleandoc` semantics).
    pub docstring: Option<String>,
    /// Byte range of the docstring string literal.
    pub docstring_range: Option<Range<usize>>,
    /// Byte range of the whole definition, including decorators.
    pub def_range: Range<usize>,
    /// Byte range of the body block (first statement start to last statement end).
    pub body_range: Range<usize>,
    /// Indentation of the body's first statement, e.g. `"    "`.
    pub body_indent: String,
    /// 0-based line of the first decorator or `def`.
    pub start_line: usize,
    /// 0-based last line of the definition.
    pub end_line: usize,
    /// The body is only a docstring and/or `pass`, `...`, `raise NotImplementedError[(...)]`.
    pub is_stub: bool,
}

impl FunctionInfo {
    /// The name that finds it again with [`find_function`]: `Class.method`
    /// for a method (innermost class), the bare name otherwise.
    pub fn qualname(&self) -> String {
        match &self.class_name {
            Some(c) => format!("{c}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A syntax problem found by tree-sitter; `line` and `column` are 1-based
/// (column in bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyntaxIssue {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The result of [`splice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spliced {
    /// The whole new file text.
    pub source: String,
    /// Import statements added at the module top, as text.
    pub added_imports: Vec<String>,
    /// Names of helper functions, classes and assignments inserted before the target.
    pub added_helpers: Vec<String>,
}

/// A parser set to the Python grammar (for callers that parse incrementally).
pub fn new_parser() -> Parser {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("tree-sitter-python grammar matches the tree-sitter version");
    parser
}

/// A key that is equal for two modules differing only in comments,
/// docstrings, blank lines, indentation width or spacing: the leaf tokens of
/// the tree-sitter parse, in order, docstrings and comments left out. Used to
/// deduplicate candidates (the same code sampled twice runs once).
pub fn normalized_code(source: &str) -> String {
    fn is_docstring(node: tree_sitter::Node<'_>) -> bool {
        if node.kind() != "expression_statement" || node.named_child_count() != 1 {
            return false;
        }
        let only_string = node.named_child(0).is_some_and(|c| c.kind() == "string");
        let first_in_block = node
            .parent()
            .is_some_and(|p| matches!(p.kind(), "block" | "module"))
            && node
                .prev_named_sibling()
                .is_none_or(|s| s.kind() == "comment");
        only_string && first_in_block
    }
    fn walk(node: tree_sitter::Node<'_>, src: &[u8], out: &mut Vec<String>) {
        if node.kind() == "comment" || is_docstring(node) {
            return;
        }
        if node.child_count() == 0 || node.kind() == "string" {
            if let Ok(t) = node.utf8_text(src) {
                if !t.trim().is_empty() {
                    out.push(t.to_string());
                }
            }
            return;
        }
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            walk(child, src, out);
        }
    }
    let tree = parse(source);
    let mut out = Vec::new();
    walk(tree.root_node(), source.as_bytes(), &mut out);
    out.join(" ")
}

/// A PEP 263 encoding declaration in the first two lines of `head` (a file's
/// first bytes, or its text): `# -*- coding: NAME -*-`, `# vim: set
/// fileencoding=NAME :` and the like, matched as CPython does
/// (`^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)`; the second line counts only
/// when the first is blank or a comment). Returns the byte range of NAME in
/// `head` and NAME.
pub fn coding_declaration(head: &[u8]) -> Option<(Range<usize>, String)> {
    let first_len = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let first = &head[..first_len];
    if let Some((r, name)) = declared_in_line(first) {
        return Some((r, name));
    }
    let rest = first
        .iter()
        .skip_while(|b| matches!(b, b' ' | b'\t' | b'\x0c' | b'\r'))
        .copied()
        .next();
    if !matches!(rest, None | Some(b'#')) || first_len == head.len() {
        return None;
    }
    let second_start = first_len + 1;
    let second_len = head[second_start..]
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(head.len() - second_start);
    declared_in_line(&head[second_start..second_start + second_len])
        .map(|(r, name)| (r.start + second_start..r.end + second_start, name))
}

/// The declaration on one line (range relative to the line).
fn declared_in_line(line: &[u8]) -> Option<(Range<usize>, String)> {
    let hash = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\x0c'))
        .filter(|&i| line[i] == b'#')?;
    let word = b"coding";
    let mut from = hash + 1;
    while let Some(i) = line
        .get(from..)?
        .windows(word.len())
        .position(|w| w == word)
    {
        let after = from + i + word.len();
        if matches!(line.get(after), Some(b':' | b'=')) {
            let start = after
                + 1
                + line[after + 1..]
                    .iter()
                    .take_while(|b| matches!(b, b' ' | b'\t'))
                    .count();
            let len = line[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                .count();
            if len > 0 {
                let name = String::from_utf8_lossy(&line[start..start + len]).into_owned();
                return Some((start..start + len, name));
            }
        }
        from = after;
    }
    None
}

/// `source` as a module for a UTF-8 file: a PEP 263 declaration of another
/// encoding is rewritten to `utf-8`, since the text is already decoded and is
/// written as UTF-8 (the sandbox's and `py_compile`'s files), so Python reads
/// it back as the same text. Unchanged without a declaration or with utf-8.
pub fn utf8_module(source: &str) -> std::borrow::Cow<'_, str> {
    let head = &source.as_bytes()[..source.len().min(4096)];
    match coding_declaration(head) {
        Some((range, name))
            if !name
                .to_ascii_lowercase()
                .replace('_', "-")
                .starts_with("utf-8")
                && !name.eq_ignore_ascii_case("utf8") =>
        {
            let mut s = source.to_string();
            s.replace_range(range, "utf-8");
            std::borrow::Cow::Owned(s)
        }
        _ => std::borrow::Cow::Borrowed(source),
    }
}

/// `"\r\n"` when the first line of `source` ends with CRLF, else `"\n"`: the
/// line ending new lines spliced into it get.
pub fn line_ending(source: &str) -> &'static str {
    match source.find('\n') {
        Some(i) if i > 0 && source.as_bytes()[i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// Parses Python source. tree-sitter is error tolerant: a tree is always produced.
pub(crate) fn parse(source: &str) -> Tree {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("tree-sitter-python grammar matches the tree-sitter version");
    parser
        .parse(source, None)
        .expect("parse without timeout or cancellation")
}

pub(crate) fn text<'a>(node: Node, source: &'a str) -> &'a str {
    &source[node.byte_range()]
}

/// Start byte of the line containing `pos`.
pub(crate) fn line_start(source: &str, pos: usize) -> usize {
    source[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// End byte (position of the `\n` or end of text) of the line containing `pos`.
fn line_end(source: &str, pos: usize) -> usize {
    source[pos..].find('\n').map_or(source.len(), |i| pos + i)
}

fn leading_ws(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

fn named_children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor).collect()
}

fn children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.children(&mut cursor).collect()
}

/// Statements of a block, without comments.
fn statements<'t>(block: Node<'t>) -> Vec<Node<'t>> {
    named_children(block)
        .into_iter()
        .filter(|n| n.kind() != "comment")
        .collect()
}

/// The string node when `stmt` is a docstring-shaped expression statement.
fn docstring_node(stmt: Node) -> Option<Node> {
    if stmt.kind() != "expression_statement" {
        return None;
    }
    let kids = named_children(stmt);
    match kids.as_slice() {
        [s] if s.kind() == "string" || s.kind() == "concatenated_string" => Some(*s),
        _ => None,
    }
}

/// Removes prefix and quotes from a string literal's text.
fn string_literal_content(lit: &str) -> String {
    let body = lit.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    for q in ["\"\"\"", "'''", "\"", "'"] {
        if body.len() >= 2 * q.len() && body.starts_with(q) && body.ends_with(q) {
            return body[q.len()..body.len() - q.len()].to_string();
        }
    }
    body.to_string()
}

/// `inspect.cleandoc`: strip the first line's leading space, remove the common
/// indentation of the other lines, drop leading and trailing blank lines.
pub fn cleandoc(doc: &str) -> String {
    let expanded = doc.replace('\t', "        ");
    let lines: Vec<&str> = expanded.lines().collect();
    let margin = lines
        .iter()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        if i == 0 {
            out.push(l.trim_start().to_string());
        } else if l.len() >= margin && l.is_char_boundary(margin) {
            out.push(l[margin..].trim_end().to_string());
        } else {
            out.push(l.trim().to_string());
        }
    }
    while out.first().is_some_and(|l| l.trim().is_empty()) {
        out.remove(0);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n")
}

fn param_name(p: Node, source: &str) -> Option<String> {
    match p.kind() {
        "identifier" | "list_splat_pattern" | "dictionary_splat_pattern" => {
            Some(text(p, source).to_string())
        }
        "default_parameter" | "typed_default_parameter" => p
            .child_by_field_name("name")
            .map(|n| text(n, source).to_string()),
        "typed_parameter" => named_children(p)
            .into_iter()
            .find(|c| c.kind() != "type")
            .map(|n| text(n, source).to_string()),
        _ => None,
    }
}

fn is_stub_statement(stmt: Node, source: &str) -> bool {
    match stmt.kind() {
        "pass_statement" => true,
        "expression_statement" => {
            let kids = named_children(stmt);
            kids.len() == 1 && kids[0].kind() == "ellipsis"
        }
        "raise_statement" => {
            let Some(exc) = named_children(stmt).into_iter().next() else {
                return false;
            };
            let target = if exc.kind() == "call" {
                exc.child_by_field_name("function")
            } else {
                Some(exc)
            };
            target.is_some_and(|t| text(t, source) == "NotImplementedError")
        }
        _ => false,
    }
}

fn function_info(def: Node, source: &str) -> Option<FunctionInfo> {
    let name = text(def.child_by_field_name("name")?, source).to_string();
    let body = def.child_by_field_name("body")?;
    let kids = children(def);
    let is_async = kids.first().is_some_and(|k| k.kind() == "async");
    let colon = kids
        .iter()
        .take_while(|k| k.id() != body.id())
        .filter(|k| k.kind() == ":")
        .last()?;
    let signature = source[def.start_byte()..colon.end_byte()].to_string();
    let params = def
        .child_by_field_name("parameters")
        .map(|ps| {
            named_children(ps)
                .into_iter()
                .filter_map(|p| param_name(p, source))
                .collect()
        })
        .unwrap_or_default();

    let outer = match def.parent() {
        Some(p) if p.kind() == "decorated_definition" => p,
        _ => def,
    };
    let decorators = if outer.id() != def.id() {
        named_children(outer)
            .into_iter()
            .filter(|c| c.kind() == "decorator")
            .map(|d| text(d, source).to_string())
            .collect()
    } else {
        Vec::new()
    };

    // Enclosing class: the first class or function met walking up.
    let mut class_name = None;
    let mut up = outer.parent();
    while let Some(n) = up {
        match n.kind() {
            "class_definition" => {
                class_name = n
                    .child_by_field_name("name")
                    .map(|c| text(c, source).to_string());
                break;
            }
            "function_definition" => break,
            _ => up = n.parent(),
        }
    }

    let stmts = statements(body);
    let (doc, is_stub) = docstring_and_stub(&stmts, source);
    let docstring = doc.map(|d| cleandoc(&string_literal_content(text(d, source))));
    let docstring_range = doc.map(|d| d.byte_range());

    let body_start = stmts.first().map_or(body.start_byte(), |s| s.start_byte());
    let body_end = stmts.last().map_or(body.end_byte(), |s| s.end_byte());
    let header_row = colon.start_position().row;
    let body_indent = if body.start_position().row == header_row {
        let def_line = &source[line_start(source, outer.start_byte())..];
        format!("{}    ", leading_ws(def_line))
    } else {
        leading_ws(&source[line_start(source, body_start)..]).to_string()
    };

    Some(FunctionInfo {
        name,
        is_async,
        class_name,
        decorators,
        signature,
        params,
        docstring,
        docstring_range,
        def_range: outer.start_byte()..def.end_byte(),
        body_range: body_start..body_end,
        body_indent,
        start_line: outer.start_position().row,
        end_line: def.end_position().row,
        is_stub,
    })
}

/// A body's docstring node, if its first statement is one, and whether the
/// rest is only stub statements (`...`, `pass`, `raise NotImplementedError`):
/// what makes a function a stub ([`FunctionInfo::is_stub`]).
fn docstring_and_stub<'t>(stmts: &[Node<'t>], source: &str) -> (Option<Node<'t>>, bool) {
    let doc = stmts.first().and_then(|s| docstring_node(*s));
    let rest = &stmts[usize::from(doc.is_some())..];
    (doc, rest.iter().all(|s| is_stub_statement(*s, source)))
}

/// `Class.name` or `name` of the definition `def`, as [`FunctionInfo::qualname`]
/// would give it, without building the rest of the info.
fn qualname_of(def: Node, source: &str) -> Option<String> {
    let name = text(def.child_by_field_name("name")?, source);
    let mut up = def.parent();
    while let Some(n) = up {
        match n.kind() {
            "class_definition" => {
                let class = text(n.child_by_field_name("name")?, source);
                return Some(format!("{class}.{name}"));
            }
            "function_definition" => break,
            _ => up = n.parent(),
        }
    }
    Some(name.to_string())
}

/// Whether a definition can sit below `node`: definitions are statements, and
/// statements live only in the module, in blocks, in compound statements and
/// their clauses (and, in broken code, in `ERROR` nodes). Expressions and
/// simple statements are not entered, so listing definitions costs a walk of
/// the statement tree, not of every node (a 50,000-line file has millions).
fn may_hold_defs(kind: &str) -> bool {
    matches!(
        kind,
        "module"
            | "block"
            | "ERROR"
            | "function_definition"
            | "class_definition"
            | "decorated_definition"
            | "if_statement"
            | "for_statement"
            | "while_statement"
            | "try_statement"
            | "with_statement"
            | "match_statement"
    ) || kind.ends_with("_clause")
}

fn collect_defs<'t>(node: Node<'t>, out: &mut Vec<Node<'t>>) {
    collect_defs_until(node, out, |_| true);
}

/// Collects function definitions below `node`, entering a function or class
/// only when `enter` says so.
fn collect_defs_until<'t>(node: Node<'t>, out: &mut Vec<Node<'t>>, enter: fn(&str) -> bool) {
    if node.kind() == "function_definition" {
        out.push(node);
    }
    let mut cursor = node.walk();
    for c in node.children(&mut cursor) {
        let kind = c.kind();
        let scope = matches!(kind, "function_definition" | "class_definition");
        if kind == "function_definition" && !enter(kind) {
            out.push(c);
        } else if may_hold_defs(kind) && (!scope || enter(kind)) {
            collect_defs_until(c, out, enter);
        }
    }
}

/// Every function definition in the file (nested ones and methods too), in source order.
pub fn list_functions(source: &str) -> Vec<FunctionInfo> {
    let tree = parse(source);
    let mut defs = Vec::new();
    collect_defs(tree.root_node(), &mut defs);
    defs.into_iter()
        .filter_map(|d| function_info(d, source))
        .collect()
}

fn is_nested(f: &FunctionInfo, all: &[FunctionInfo]) -> bool {
    all.iter().any(|o| {
        o.def_range != f.def_range
            && o.def_range.start <= f.def_range.start
            && f.def_range.end <= o.def_range.end
    })
}

/// Every function definition in an already parsed `tree` of `source` (the
/// LSP front end keeps one tree per document, updated incrementally).
pub fn functions_in_tree(tree: &Tree, source: &str) -> Vec<FunctionInfo> {
    let mut defs = Vec::new();
    collect_defs(tree.root_node(), &mut defs);
    defs.into_iter()
        .filter_map(|d| function_info(d, source))
        .collect()
}

/// The module-level functions and the methods of an already parsed `tree` of
/// `source`, in source order: those at the top level, under module-level
/// `if`, `try`, `with` and loops, and in classes (nested classes too), but no
/// function nested in another function (what the language server shows code
/// lenses on). Never enters a function's body, so its cost grows with the
/// module's and classes' statements, not with the size of the functions.
pub fn module_functions_in_tree(tree: &Tree, source: &str) -> Vec<FunctionInfo> {
    lens_functions_in_tree(tree, source, |_| true)
}

/// The functions of [`module_functions_in_tree`] that can carry a code lens:
/// stubs with a docstring, and those whose qualname `wanted` accepts (the
/// language server passes the names that have a task or a proposal). The
/// cheap tests come first (a stub test on the body's statements, the name),
/// so a large file whose functions are mostly written costs a walk of its
/// statements and one short string per function, and the full
/// [`FunctionInfo`] (signature, parameters, cleaned docstring) is built only
/// for the few that get a lens.
pub fn lens_functions_in_tree(
    tree: &Tree,
    source: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<FunctionInfo> {
    let mut defs = Vec::new();
    collect_defs_until(tree.root_node(), &mut defs, |k| k == "class_definition");
    defs.into_iter()
        .filter(|d| {
            let documented_stub = d.child_by_field_name("body").is_some_and(|b| {
                let (doc, stub) = docstring_and_stub(&statements(b), source);
                doc.is_some() && stub
            });
            documented_stub || qualname_of(*d, source).is_some_and(|q| wanted(&q))
        })
        .filter_map(|d| function_info(d, source))
        .collect()
}

/// The innermost function whose definition spans the 0-based `line`, found by
/// descending from the node at `line_start_byte` (the first byte of that line)
/// instead of listing every function: O(depth), not O(file).
pub fn function_at_line_in_tree(
    tree: &Tree,
    source: &str,
    line: usize,
    line_start_byte: usize,
) -> Option<FunctionInfo> {
    // Skip leading whitespace so a cursor at column 0 of an indented line lands
    // inside the statement, not in the enclosing block's gap.
    let rest = source.get(line_start_byte..).unwrap_or("");
    let first = rest
        .find(|c: char| c != ' ' && c != '\t')
        .map_or(line_start_byte, |i| line_start_byte + i);
    let mut node = tree.root_node().descendant_for_byte_range(first, first)?;
    loop {
        if node.kind() == "function_definition" {
            let f = function_info(node, source)?;
            if f.start_line <= line && line <= f.end_line {
                return Some(f);
            }
        }
        node = node.parent()?;
    }
}

/// Whether the method `f` (found in `tree`) comes after another method of
/// the same name in its class, as a `@x.setter` after its `@property`
/// getter: `Class.name` finds the first, so the later one cannot be named
/// and is not offered. O(the class's statements).
pub fn is_later_namesake(tree: &Tree, source: &str, f: &FunctionInfo) -> bool {
    if f.class_name.is_none() {
        return false;
    }
    let mut node = tree
        .root_node()
        .descendant_for_byte_range(f.def_range.start, f.def_range.start);
    while let Some(n) = node {
        if n.kind() == "block" && n.parent().is_some_and(|p| p.kind() == "class_definition") {
            return statements(n).into_iter().any(|stmt| {
                let def = if stmt.kind() == "decorated_definition" {
                    stmt.child_by_field_name("definition").unwrap_or(stmt)
                } else {
                    stmt
                };
                def.kind() == "function_definition"
                    && stmt.start_byte() < f.def_range.start
                    && def
                        .child_by_field_name("name")
                        .is_some_and(|name| text(name, source) == f.name)
            });
        }
        node = n.parent();
    }
    false
}

/// Finds a function by `name` or `Class.name`. With a bare name, a module-level
/// function wins over a method, and a method over a nested function.
/// Errors: [`AnalysisError::FunctionNotFound`] listing the names the file defines.
pub fn find_function(source: &str, name: &str) -> Result<FunctionInfo, AnalysisError> {
    let all = list_functions(source);
    let found = if let Some((class, method)) = name.rsplit_once('.') {
        all.iter()
            .find(|f| f.name == method && f.class_name.as_deref() == Some(class))
    } else {
        let matching: Vec<&FunctionInfo> = all.iter().filter(|f| f.name == name).collect();
        matching
            .iter()
            .find(|f| f.class_name.is_none() && !is_nested(f, &all))
            .or_else(|| matching.iter().find(|f| f.class_name.is_some()))
            .or_else(|| matching.first())
            .copied()
    };
    found.cloned().ok_or_else(|| {
        let mut available: Vec<String> = Vec::new();
        for f in &all {
            let n = match &f.class_name {
                Some(c) => format!("{c}.{}", f.name),
                None => f.name.clone(),
            };
            if !available.contains(&n) {
                available.push(n);
            }
        }
        AnalysisError::FunctionNotFound {
            name: name.to_string(),
            available,
        }
    })
}

/// Checks that `func` (found in `source`) can be replaced on its own: it is
/// not defined inside another function, and no other module-level
/// definition has its name (including ones under `if`/`try` at module
/// level). Methods are the caller's check.
///
/// Errors: [`AnalysisError::NestedFunction`],
/// [`AnalysisError::DuplicateDefinition`].
pub fn check_replaceable(source: &str, func: &FunctionInfo) -> Result<(), AnalysisError> {
    let all = list_functions(source);
    let around = |f: &FunctionInfo| {
        all.iter()
            .filter(|o| {
                o.def_range != f.def_range
                    && o.def_range.start <= f.def_range.start
                    && f.def_range.end <= o.def_range.end
            })
            .max_by_key(|o| o.def_range.start)
    };
    if let Some(outer) = around(func) {
        return Err(AnalysisError::NestedFunction {
            name: func.name.clone(),
            outer: outer.name.clone(),
            line: func.start_line + 1,
        });
    }
    if func.class_name.is_some() {
        return Ok(());
    }
    let lines: Vec<usize> = all
        .iter()
        .filter(|f| f.name == func.name && f.class_name.is_none() && around(f).is_none())
        .map(|f| f.start_line + 1)
        .collect();
    if lines.len() > 1 {
        return Err(AnalysisError::DuplicateDefinition {
            name: func.name.clone(),
            lines,
        });
    }
    Ok(())
}

/// The innermost function whose definition (decorators included) spans the
/// 0-based `line`. Errors: [`AnalysisError::NoFunctionAtLine`].
pub fn find_function_at_line(source: &str, line: usize) -> Result<FunctionInfo, AnalysisError> {
    list_functions(source)
        .into_iter()
        .filter(|f| f.start_line <= line && line <= f.end_line)
        .max_by_key(|f| f.def_range.start)
        .ok_or(AnalysisError::NoFunctionAtLine { line })
}

fn collect_errors(node: Node, source: &str, out: &mut Vec<SyntaxIssue>) {
    if node.is_missing() {
        let p = node.start_position();
        out.push(SyntaxIssue {
            line: p.row + 1,
            column: p.column + 1,
            message: format!("missing `{}`", node.kind()),
        });
        return;
    }
    if node.is_error() {
        let p = node.start_position();
        let snippet: String = text(node, source).chars().take(40).collect();
        out.push(SyntaxIssue {
            line: p.row + 1,
            column: p.column + 1,
            message: format!("syntax error near `{}`", snippet.trim()),
        });
        return;
    }
    if !node.has_error() {
        return;
    }
    let mut cursor = node.walk();
    for c in node.children(&mut cursor) {
        collect_errors(c, source, out);
    }
}

/// Whether `expr` is a Python literal value as `ast.literal_eval` would accept it
/// (numbers, strings, bytes, `True`/`False`/`None`, and lists, tuples, sets and
/// dicts of literals, with unary minus and `+`/`-` for complex numbers), plus
/// the spellings `float('inf')`, `float('nan')`, `set()`, `frozenset()`.
/// Used to reject generated test cases whose expected value is prose such as
/// `hello-world` (which parses as a subtraction of names).
pub fn is_literal(expr: &str) -> bool {
    let tree = parse(expr);
    let root = tree.root_node();
    if root.has_error() || root.named_child_count() != 1 {
        return false;
    }
    let stmt = root.named_child(0).expect("one child");
    if stmt.kind() != "expression_statement" || stmt.named_child_count() != 1 {
        return false;
    }
    literal_node(stmt.named_child(0).expect("one child"), expr)
}

fn literal_node(n: Node, src: &str) -> bool {
    match n.kind() {
        "integer" | "float" | "string" | "concatenated_string" | "true" | "false" | "none" => true,
        "unary_operator" => n
            .child_by_field_name("argument")
            .is_some_and(|a| literal_node(a, src)),
        "binary_operator" => {
            let op = n
                .child_by_field_name("operator")
                .map(|o| &src[o.byte_range()]);
            matches!(op, Some("+") | Some("-"))
                && n.child_by_field_name("left")
                    .is_some_and(|a| literal_node(a, src))
                && n.child_by_field_name("right")
                    .is_some_and(|a| literal_node(a, src))
        }
        "parenthesized_expression" | "list" | "tuple" | "set" | "dictionary" | "pair" => {
            let mut c = n.walk();
            let kids: Vec<Node> = n
                .named_children(&mut c)
                .filter(|k| k.kind() != "comment")
                .collect();
            kids.into_iter().all(|k| literal_node(k, src))
        }
        "call" => {
            let f = n
                .child_by_field_name("function")
                .map(|f| &src[f.byte_range()])
                .unwrap_or("");
            let args = n
                .child_by_field_name("arguments")
                .map(|a| src[a.byte_range()].replace(' ', ""))
                .unwrap_or_default();
            matches!(
                (f, args.as_str()),
                ("float", "('inf')")
                    | ("float", "(\"inf\")")
                    | ("float", "('-inf')")
                    | ("float", "(\"-inf\")")
                    | ("float", "('nan')")
                    | ("float", "(\"nan\")")
                    | ("set", "()")
                    | ("frozenset", "()")
            )
        }
        _ => false,
    }
}

/// Syntax errors (tree-sitter ERROR and MISSING nodes), in source order; empty when the text parses.
pub fn syntax_errors(source: &str) -> Vec<SyntaxIssue> {
    let tree = parse(source);
    let mut out = Vec::new();
    collect_errors(tree.root_node(), source, &mut out);
    out
}

/// Whether `source` parses with no ERROR or MISSING node.
pub fn parses_cleanly(source: &str) -> bool {
    !parse(source).root_node().has_error()
}

/// The text of function `name` (decorators included), from the start of its first line.
pub fn function_source(source: &str, name: &str) -> Option<String> {
    let f = find_function(source, name).ok()?;
    Some(source[line_start(source, f.def_range.start)..f.def_range.end].to_string())
}

/// `raw` with its first line's indentation removed from every line (as far
/// as each line has it).
pub(crate) fn dedent(raw: &str) -> String {
    let margin = raw.len() - raw.trim_start_matches([' ', '\t']).len();
    raw.lines()
        .map(|l| {
            let ws = l.len() - l.trim_start_matches([' ', '\t']).len();
            &l[ws.min(margin)..]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `func` without its body: decorators, signature and docstring (when it
/// has one), dedented to column 0, no trailing newline. For a method, the
/// start of a reply that writes that method alone.
pub fn function_head(source: &str, func: &FunctionInfo) -> String {
    let end = func
        .docstring_range
        .as_ref()
        .map_or(func.body_range.start, |d| d.end);
    dedent(source[line_start(source, func.def_range.start)..end].trim_end())
}

/// The smallest module holding `func`: the file's `imports`, then the
/// function's text; for a method, inside bare `class Name:` headers of its
/// enclosing classes (outermost first, no bases or decorators). Used as the
/// code a proposal carries and as the candidate's module when the whole file
/// does not parse.
pub fn stub_module(source: &str, func: &FunctionInfo, imports: &[String]) -> String {
    let fn_start = line_start(source, func.def_range.start);
    let fn_text = &source[fn_start..func.def_range.end];
    let body = if func.class_name.is_some() {
        let tree = parse(source);
        let mut headers = Vec::new();
        let mut node = tree
            .root_node()
            .descendant_for_byte_range(func.def_range.start, func.def_range.start);
        while let Some(n) = node {
            if n.kind() == "class_definition" {
                if let Some(name) = n.child_by_field_name("name") {
                    let at = line_start(source, n.start_byte());
                    let indent = leading_ws(&source[at..]).to_string();
                    headers.push(format!("{indent}class {}:", text(name, source)));
                }
            }
            node = n.parent();
        }
        headers.reverse();
        let all = format!("{}\n{}", headers.join("\n"), fn_text);
        let margin = headers.first().map_or(0, |h| leading_ws(h).len());
        all.lines()
            .map(|l| &l[leading_ws(l).len().min(margin)..])
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        fn_text.to_string()
    };
    if imports.is_empty() {
        body
    } else {
        format!("{}\n\n\n{}", imports.join("\n"), body)
    }
}

fn is_import(node: Node) -> bool {
    matches!(
        node.kind(),
        "import_statement" | "import_from_statement" | "future_import_statement"
    )
}

/// The text of each top-level `import` / `from ... import` statement, in order.
pub fn module_imports(source: &str) -> Vec<String> {
    let tree = parse(source);
    named_children(tree.root_node())
        .into_iter()
        .filter(|n| is_import(*n))
        .map(|n| text(n, source).to_string())
        .collect()
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rows (0-based, relative to `source`) that are continuation lines of a
/// multi-line string literal: their text belongs to the string and must not be re-indented.
fn string_continuation_rows(node: Node, rows: &mut std::collections::HashSet<usize>) {
    if node.kind() == "string" {
        let (s, e) = (node.start_position().row, node.end_position().row);
        rows.extend(s + 1..=e);
        return;
    }
    let mut cursor = node.walk();
    for c in node.children(&mut cursor) {
        string_continuation_rows(c, rows);
    }
}

/// Re-indents `code` (whole lines of some parsed text starting at row `first_row`)
/// from its common indentation to `indent`, leaving multi-line string continuation lines alone.
fn reindent(
    code: &str,
    first_row: usize,
    protected: &std::collections::HashSet<usize>,
    indent: &str,
) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let common = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| !l.trim().is_empty() && !protected.contains(&(first_row + i)))
        .map(|(_, l)| leading_ws(l).len())
        .min()
        .unwrap_or(0);
    let out: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if protected.contains(&(first_row + i)) {
                l.to_string()
            } else if l.trim().is_empty() {
                String::new()
            } else {
                format!("{indent}{}", &l[common.min(leading_ws(l).len())..])
            }
        })
        .collect();
    out.join("\n")
}

/// Top-level helper name of a statement, for de-duplication and reporting.
fn helper_name(node: Node, source: &str) -> Option<String> {
    let def = if node.kind() == "decorated_definition" {
        node.child_by_field_name("definition")?
    } else {
        node
    };
    match def.kind() {
        "function_definition" | "class_definition" => def
            .child_by_field_name("name")
            .map(|n| text(n, source).to_string()),
        "expression_statement" => {
            let first = named_children(def).into_iter().next()?;
            if first.kind() == "assignment" {
                first
                    .child_by_field_name("left")
                    .map(|n| text(n, source).to_string())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Replaces `func`'s body in `source` with the body of the same-named function
/// in `generated` (LLM code: imports, helpers, the function).
///
/// Keeps the user's decorators, signature and docstring exactly (the generated
/// docstring is dropped), re-indents the new body to `func.body_indent`, adds
/// the generated top-level imports the file lacks (after the last top-level
/// import, else after the module docstring / `from __future__`), and inserts
/// generated top-level helpers (defs, classes, assignments the file does not
/// define yet) just before the target, at its indentation.
/// Errors: [`AnalysisError::GeneratedCodeInvalid`] when `generated` does not
/// parse, defines no function of that name, or gives it an empty body.
pub fn splice(
    source: &str,
    func: &FunctionInfo,
    generated: &str,
) -> Result<Spliced, AnalysisError> {
    // New lines get the file's line ending; the generated text is read with LF.
    let eol = line_ending(source);
    let generated = generated.replace("\r\n", "\n");
    let generated = generated.as_str();
    // Where a line's content ends in `source` (before its `\r\n` or `\n`).
    let content_end = |pos: usize| {
        let e = line_end(source, pos);
        if e > pos && source.as_bytes()[e - 1] == b'\r' {
            e - 1
        } else {
            e
        }
    };
    let gen_tree = parse(generated);
    if let Some(e) = {
        let mut v = Vec::new();
        collect_errors(gen_tree.root_node(), generated, &mut v);
        v.into_iter().next()
    } {
        return Err(AnalysisError::GeneratedCodeInvalid(format!(
            "it does not parse: line {}, column {}: {}",
            e.line, e.column, e.message
        )));
    }
    let mut defs = Vec::new();
    collect_defs(gen_tree.root_node(), &mut defs);
    let named = |d: &Node| {
        d.child_by_field_name("name")
            .is_some_and(|n| text(n, generated) == func.name)
    };
    // Prefer a top-level def, then any def of that name (e.g. inside a class).
    let target = defs
        .iter()
        .find(|d| {
            named(d)
                && d.parent().is_some_and(|p| {
                    p.kind() == "module"
                        || (p.kind() == "decorated_definition"
                            && p.parent().is_some_and(|g| g.kind() == "module"))
                })
        })
        .or_else(|| defs.iter().find(|d| named(d)))
        .copied()
        .ok_or_else(|| {
            AnalysisError::GeneratedCodeInvalid(format!(
                "it does not define `def {}`; answer with the complete function",
                func.name
            ))
        })?;
    let gen_body = target
        .child_by_field_name("body")
        .ok_or_else(|| AnalysisError::GeneratedCodeInvalid("function has no body".into()))?;
    let gen_stmts = statements(gen_body);
    let gen_doc = gen_stmts.first().and_then(|s| docstring_node(*s));
    let rest: Vec<Node> = gen_stmts
        .iter()
        .skip(usize::from(gen_doc.is_some()))
        .copied()
        .collect();
    let (Some(first), Some(last)) = (rest.first(), rest.last()) else {
        return Err(AnalysisError::GeneratedCodeInvalid(format!(
            "`{}` has no statements besides its docstring",
            func.name
        )));
    };
    let mut protected = std::collections::HashSet::new();
    string_continuation_rows(gen_body, &mut protected);
    // Body text: from the line after the docstring (keeps comments above the
    // first statement), or the first statement's line.
    let from = match gen_doc {
        Some(d) => {
            let after = line_end(generated, d.end_byte());
            if after < first.start_byte() {
                after + 1
            } else {
                first.start_byte()
            }
        }
        None => {
            let ls = line_start(generated, first.start_byte());
            if ls > target.start_byte() {
                ls
            } else {
                first.start_byte()
            }
        }
    };
    let from = if line_start(generated, from) == from
        || generated[line_start(generated, from)..from]
            .trim()
            .is_empty()
    {
        line_start(generated, from)
    } else {
        from
    };
    let from_row = generated[..from].matches('\n').count();
    let body_text = &generated[from..line_end(generated, last.end_byte())];
    let new_body = reindent(body_text, from_row, &protected, &func.body_indent);
    let new_body = new_body.trim_start_matches('\n');

    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    // (1) the body.
    let body_edit = match &func.docstring_range {
        Some(d) => {
            let doc_end = content_end(d.end);
            let end = content_end(func.body_range.end).max(doc_end);
            (doc_end..end, format!("\n{new_body}"))
        }
        None => {
            let bs = func.body_range.start;
            let ls = line_start(source, bs);
            if ls <= func.def_range.start || !source[ls..bs].trim().is_empty() {
                // Body on the header line: `def f(x): ...`
                let colon_end = func.def_range.start
                    + source[func.def_range.start..]
                        .find(&func.signature)
                        .unwrap_or(0)
                    + func.signature.len();
                (
                    colon_end..content_end(func.body_range.end),
                    format!("\n{new_body}"),
                )
            } else {
                (ls..content_end(func.body_range.end), new_body.to_string())
            }
        }
    };
    edits.push(body_edit);

    // (2) helpers.
    let src_tree = parse(source);
    let existing: Vec<String> = named_children(src_tree.root_node())
        .into_iter()
        .filter_map(|n| helper_name(n, source))
        .collect();
    let target_outer = match target.parent() {
        Some(p) if p.kind() == "decorated_definition" => p,
        _ => target,
    };
    let def_line_start = line_start(source, func.def_range.start);
    let def_indent = leading_ws(&source[def_line_start..]).to_string();
    // A method's module-level helpers go before its (outermost) class, at the
    // class's indentation; helper methods the reply added to the class go
    // before the method.
    let (helper_at, helper_indent) = match context::enclosing_class(source, func) {
        Some(class) => {
            let at = line_start(source, class.start);
            (at, leading_ws(&source[at..]).to_string())
        }
        None => (def_line_start, def_indent.clone()),
    };
    let mut added_helpers = Vec::new();
    // A method's siblings: a reply that also rewrites them (inside a class,
    // or at column 0 after the method) does not add them again.
    let have_methods: Vec<String> = match func.class_name {
        Some(_) => list_functions(source)
            .into_iter()
            .filter(|f| f.class_name == func.class_name)
            .map(|f| f.name)
            .collect(),
        None => Vec::new(),
    };
    if func.class_name.is_some() {
        let gen_class = {
            let mut up = target_outer.parent();
            while let Some(n) = up {
                if n.kind() == "class_definition" {
                    break;
                }
                up = n.parent();
            }
            up
        };
        let mut methods = Vec::new();
        if let Some(body) = gen_class.and_then(|c| c.child_by_field_name("body")) {
            for node in statements(body) {
                let def = if node.kind() == "decorated_definition" {
                    node.child_by_field_name("definition").unwrap_or(node)
                } else {
                    node
                };
                if node.id() == target_outer.id() || def.kind() != "function_definition" {
                    continue;
                }
                let Some(name) = helper_name(node, generated) else {
                    continue;
                };
                if have_methods.contains(&name) || added_helpers.contains(&name) {
                    continue;
                }
                let mut prot = std::collections::HashSet::new();
                string_continuation_rows(node, &mut prot);
                let first_row = line_start(generated, node.start_byte());
                let whole = &generated[first_row..node.end_byte()];
                let row0 = generated[..first_row].matches('\n').count();
                methods.push(reindent(whole, row0, &prot, &def_indent));
                added_helpers.push(name);
            }
        }
        if !methods.is_empty() {
            let mut block = methods.join("\n\n");
            block.push_str("\n\n");
            edits.push((def_line_start..def_line_start, block));
        }
    }
    let mut helper_texts = Vec::new();
    for node in named_children(gen_tree.root_node()) {
        if node.id() == target_outer.id()
            || node.start_byte() <= target.start_byte() && target.end_byte() <= node.end_byte()
        {
            continue;
        }
        let Some(name) = helper_name(node, generated) else {
            continue;
        };
        if existing.contains(&name) || name == func.name || have_methods.contains(&name) {
            continue;
        }
        let mut prot = std::collections::HashSet::new();
        string_continuation_rows(node, &mut prot);
        let t = reindent(text(node, generated), node.start_position().row, &prot, "");
        // First line of a node's text has no leading indentation; re-indent each line.
        let t: String = t
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if l.is_empty() || prot.contains(&(node.start_position().row + i)) {
                    l.to_string()
                } else {
                    format!("{helper_indent}{l}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        helper_texts.push(t);
        added_helpers.push(name);
    }
    if !helper_texts.is_empty() {
        let sep = if helper_indent.is_empty() {
            "\n\n\n"
        } else {
            "\n\n"
        };
        let mut block = helper_texts.join(sep);
        block.push_str(sep);
        edits.push((helper_at..helper_at, block));
    }

    // (3) imports.
    let src_top = named_children(src_tree.root_node());
    let have: Vec<String> = src_top
        .iter()
        .filter(|n| is_import(**n))
        .map(|n| normalize_ws(text(*n, source)))
        .collect();
    let mut added_imports = Vec::new();
    for node in named_children(gen_tree.root_node()) {
        if is_import(node) {
            let t = text(node, generated).to_string();
            let norm = normalize_ws(&t);
            if !have.contains(&norm)
                && !added_imports
                    .iter()
                    .any(|a: &String| normalize_ws(a) == norm)
            {
                added_imports.push(t);
            }
        }
    }
    if !added_imports.is_empty() {
        let joined = added_imports.join("\n");
        let last_import = src_top.iter().rev().find(|n| is_import(**n));
        let edit = if let Some(li) = last_import {
            let at = content_end(li.end_byte());
            (at..at, format!("\n{joined}"))
        } else {
            let anchor = src_top
                .first()
                .filter(|n| docstring_node(**n).is_some())
                .map(|n| n.end_byte());
            match anchor {
                Some(a) => {
                    let at = content_end(a);
                    (at..at, format!("\n\n{joined}"))
                }
                None => {
                    // Below a shebang, a PEP 263 line or any leading comment block.
                    let at = leading_comments_end(source);
                    (at..at, format!("{joined}\n\n\n"))
                }
            }
        };
        edits.push(edit);
    }

    edits.sort_by_key(|e| std::cmp::Reverse(e.0.start));
    let mut out = source.to_string();
    for (range, t) in edits {
        if eol == "\n" {
            out.replace_range(range, &t);
        } else {
            out.replace_range(range, &t.replace('\n', eol));
        }
    }
    Ok(Spliced {
        source: out,
        added_imports,
        added_helpers,
    })
}

/// The byte offset of the first line after the comment lines (and blank
/// lines) at the top of `source`, or 0 when it starts with no comment: where
/// imports go in a file without imports or a module docstring, so a shebang
/// or a PEP 263 line stays first.
fn leading_comments_end(source: &str) -> usize {
    let mut at = 0;
    let mut comments = false;
    for line in source.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('#') {
            comments = true;
        } else if !t.is_empty() {
            break;
        }
        at += line.len();
    }
    if comments {
        at
    } else {
        0
    }
}

/// Pulls Python code out of an LLM reply: the fenced block (```python, ```py,
/// ```python3 or a bare ```) defining the most `def`s (the first on a tie); an
/// unterminated fence runs to the end of the text. Without a fence, the whole text trimmed.
pub fn extract_code_block(reply: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in reply.lines() {
        let t = line.trim();
        match current.as_mut() {
            None => {
                if let Some(tag) = t.strip_prefix("```") {
                    let tag = tag.trim().to_ascii_lowercase();
                    if matches!(tag.as_str(), "" | "python" | "py" | "python3") {
                        current = Some(Vec::new());
                    } else {
                        current = Some(vec!["\u{0}skip"]);
                    }
                }
            }
            Some(lines) => {
                if t.starts_with("```") {
                    let done = current.take().unwrap_or_default();
                    if done.first() != Some(&"\u{0}skip") {
                        blocks.push(done.join("\n"));
                    }
                } else {
                    lines.push(line);
                }
            }
        }
    }
    if let Some(done) = current {
        if done.first() != Some(&"\u{0}skip") {
            blocks.push(done.join("\n"));
        }
    }
    let count_defs = |b: &str| {
        b.lines()
            .filter(|l| {
                let t = l.trim_start();
                t.starts_with("def ") || t.starts_with("async def ")
            })
            .count()
    };
    let mut best: Option<(usize, &String)> = None;
    for b in &blocks {
        let n = count_defs(b);
        if best.is_none_or(|(m, _)| n > m) {
            best = Some((n, b));
        }
    }
    match best {
        Some((_, b)) => b.trim_matches('\n').to_string(),
        None => reply.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_function_head_is_its_decorators_signature_and_docstring_at_column_0() {
        let src = "class A:\n    @property\n    def total(\n        self,\n    ) -> int:\n        \"\"\"Sum.\n\n        >>> A().total\n        0\n        \"\"\"\n        ...\n\n\ndef f(x): return x\n";
        let m = super::find_function(src, "A.total").unwrap();
        assert_eq!(
            super::function_head(src, &m),
            "@property\ndef total(\n    self,\n) -> int:\n    \"\"\"Sum.\n\n    >>> A().total\n    0\n    \"\"\""
        );
        // No docstring, body on the header's line: the header alone.
        let f = super::find_function(src, "f").unwrap();
        assert_eq!(super::function_head(src, &f), "def f(x):");
    }

    #[test]
    fn normalized_code_ignores_comments_docstrings_and_spacing() {
        let a = "def f(x):\n    \"\"\"Doc.\"\"\"\n    # add one\n    return x+1\n";
        let b = "def f( x ):\n  return x + 1  # the answer\n\n";
        let c = "def f(x):\n    return x + 2\n";
        let d = "def f(x):\n    return 'a  b'\n";
        let e = "def f(x):\n    return 'a b'\n";
        assert_eq!(normalized_code(a), normalized_code(b));
        assert_ne!(normalized_code(a), normalized_code(c));
        assert_ne!(
            normalized_code(d),
            normalized_code(e),
            "string contents count"
        );
    }

    use super::*;

    const FILE: &str = r#""""Module doc."""
import os
from typing import List


@functools.cache
@other(1)
async def fetch(url: str, *args, timeout: float = 1.0, **kwargs) -> List[str]:
    """Fetch it.

        Indented line.
    """
    return []


class Box:
    def size(self, /, k, *, scale=2):
        """Size."""
        ...

    def stub2(self):
        pass


def outer(x):
    def inner(y):
        raise NotImplementedError("later")
    return inner


def size(n):
    raise NotImplementedError
"#;

    /// Definitions under every kind of compound statement, in broken code too,
    /// are still found by the pruned walk; the module-level listing keeps the
    /// ones a code lens belongs on.
    #[test]
    fn the_pruned_walk_finds_defs_under_every_compound_statement() {
        let src = "\
if X:
    def a(): pass
elif Y:
    def b(): pass
else:
    def c(): pass
try:
    def d(): pass
except E:
    def e(): pass
finally:
    def f(): pass
with g() as h:
    for i in j:
        while k:
            def l(): pass
match m:
    case 1:
        def n(): pass
@dec
def o():
    def p(): pass
class Q:
    def r(self): pass
x = lambda: 0
def s(:
    def t(): pass
";
        let tree = parse(src);
        let names = |fs: Vec<FunctionInfo>| fs.into_iter().map(|f| f.name).collect::<Vec<_>>();
        let all = names(list_functions(src));
        for want in ["a", "b", "c", "d", "e", "f", "l", "n", "o", "p", "r"] {
            assert!(all.contains(&want.to_string()), "{want} in {all:?}");
        }
        let module = names(module_functions_in_tree(&tree, src));
        for want in ["a", "b", "c", "d", "e", "f", "l", "n", "o"] {
            assert!(module.contains(&want.to_string()), "{want} in {module:?}");
        }
        assert!(!module.contains(&"p".to_string()), "nested: {module:?}");
        assert!(
            module.contains(&"r".to_string()),
            "methods are listed: {module:?}"
        );
    }

    #[test]
    fn a_method_is_spliced_in_place_and_its_helpers_go_where_python_finds_them() {
        let src = "import math\n\n\nclass Shape:\n    \"\"\"A shape.\"\"\"\n\n    def __init__(self, r):\n        self.r = r\n\n    @property\n    def area(self) -> float:\n        \"\"\"Area of the circle.\n\n        >>> Shape(1).area\n        3.14\n        \"\"\"\n        ...\n\n    def other(self):\n        return 1\n\n\nTAIL = 1\n";
        let f = find_function(src, "Shape.area").unwrap();
        assert_eq!(f.qualname(), "Shape.area");
        assert_eq!(f.decorators, ["@property"]);
        // The reply gives the whole class, a helper method and a module-level helper.
        let generated = "import math\n\ndef _round2(x):\n    return round(x, 2)\n\nclass Shape:\n    def _squared(self):\n        return self.r ** 2\n\n    @property\n    def area(self) -> float:\n        \"\"\"Other docstring.\"\"\"\n        return _round2(math.pi * self._squared())\n\n    def other(self):\n        return 2\n";
        let out = splice(src, &f, generated).unwrap();
        let want = "import math\n\n\ndef _round2(x):\n    return round(x, 2)\n\n\nclass Shape:\n    \"\"\"A shape.\"\"\"\n\n    def __init__(self, r):\n        self.r = r\n\n    def _squared(self):\n        return self.r ** 2\n\n    @property\n    def area(self) -> float:\n        \"\"\"Area of the circle.\n\n        >>> Shape(1).area\n        3.14\n        \"\"\"\n        return _round2(math.pi * self._squared())\n\n    def other(self):\n        return 1\n\n\nTAIL = 1\n";
        assert_eq!(out.source, want, "{}", out.source);
        assert_eq!(out.added_helpers, ["_squared", "_round2"]);
        // Everything outside the method and the inserted helpers is unchanged.
        assert!(out
            .source
            .ends_with("    def other(self):\n        return 1\n\n\nTAIL = 1\n"));
        // A reply with the method alone, at column 0.
        let alone = "def area(self) -> float:\n    return math.pi * self.r ** 2\n";
        let out = splice(src, &f, alone).unwrap();
        assert!(
            out.source
                .contains("        \"\"\"\n        return math.pi * self.r ** 2\n\n    def other"),
            "{}",
            out.source
        );
        // Going on at column 0 with a sibling (as a prefilled reply may): the
        // sibling is not added to the module; a real helper is.
        let more = format!(
            "{alone}\n\ndef other(self):\n    return 3\n\n\ndef _half(x):\n    return x / 2\n"
        );
        let out = splice(src, &f, &more).unwrap();
        assert_eq!(out.added_helpers, ["_half"]);
        assert!(!out.source.contains("return 3"), "{}", out.source);
    }

    #[test]
    fn lens_functions_are_documented_stubs_and_wanted_names_only() {
        let src = "def done(x):\n    \"\"\"Doc.\"\"\"\n    return x\n\n\
                   def todo(x):\n    \"\"\"Doc.\"\"\"\n    ...\n\n\
                   def bare(x):\n    ...\n\n\
                   def raises(x):\n    \"\"\"Doc.\"\"\"\n    raise NotImplementedError(\"x\")\n\n\
                   class C:\n    def m(self):\n        \"\"\"Doc.\"\"\"\n        pass\n\n\
                   \x20   @property\n    def p(self):\n        return 1\n\n\
                   \x20   def q(self):\n        \"\"\"Doc.\"\"\"\n        return 2\n";
        let tree = parse(src);
        let names = |fs: Vec<FunctionInfo>| fs.iter().map(|f| f.qualname()).collect::<Vec<_>>();
        assert_eq!(
            names(lens_functions_in_tree(&tree, src, |_| false)),
            ["todo", "raises", "C.m"]
        );
        // A written function or a stub without a docstring only when wanted,
        // by qualname (a method by `Class.name`, not its bare name).
        assert_eq!(
            names(lens_functions_in_tree(&tree, src, |q| {
                ["done", "bare", "C.p", "q"].contains(&q)
            })),
            ["done", "todo", "bare", "raises", "C.m", "C.p"]
        );
        // The pre-filter agrees with the full info on every function.
        for f in module_functions_in_tree(&tree, src) {
            let kept = !lens_functions_in_tree(&tree, src, |_| false)
                .iter()
                .all(|g| g.qualname() != f.qualname());
            assert_eq!(kept, f.is_stub && f.docstring.is_some(), "{}", f.qualname());
        }
    }

    #[test]
    fn a_setter_after_its_getter_is_a_later_namesake() {
        let src = "class C:\n    @property\n    def x(self):\n        \"\"\"X.\"\"\"\n        ...\n\n    @x.setter\n    def x(self, v):\n        \"\"\"Set x.\"\"\"\n        ...\n\n    def y(self):\n        ...\n";
        let tree = parse(src);
        let all = module_functions_in_tree(&tree, src);
        let later: Vec<bool> = all
            .iter()
            .map(|f| is_later_namesake(&tree, src, f))
            .collect();
        assert_eq!(later, [false, true, false]);
        assert_eq!(find_function(src, "C.x").unwrap().start_line, 1);
    }

    #[test]
    fn lists_and_describes_functions() {
        let all = list_functions(FILE);
        let names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["fetch", "size", "stub2", "outer", "inner", "size"]);
        let f = &all[0];
        assert!(f.is_async);
        assert_eq!(f.decorators, ["@functools.cache", "@other(1)"]);
        assert_eq!(
            f.signature,
            "async def fetch(url: str, *args, timeout: float = 1.0, **kwargs) -> List[str]:"
        );
        assert_eq!(f.params, ["url", "*args", "timeout", "**kwargs"]);
        assert_eq!(f.docstring.as_deref(), Some("Fetch it.\n\nIndented line."));
        assert_eq!(&FILE[f.docstring_range.clone().unwrap()][..6], "\"\"\"Fet");
        assert!(FILE[f.def_range.clone()].starts_with("@functools.cache"));
        assert!(FILE[f.def_range.clone()].ends_with("return []"));
        assert_eq!(f.body_indent, "    ");
        assert_eq!(f.start_line, 5);
        assert_eq!(f.end_line, 12);
        assert!(!f.is_stub);
        assert_eq!(all[1].class_name.as_deref(), Some("Box"));
        assert_eq!(all[1].params, ["self", "k", "scale"]);
        assert!(all[1].is_stub && all[2].is_stub && all[4].is_stub && all[5].is_stub);
        assert_eq!(all[2].body_indent, "        ");
        assert_eq!(all[4].class_name, None);
        assert!(!all[3].is_stub);
    }

    #[test]
    fn find_by_name_class_and_line() {
        let f = find_function(FILE, "size").unwrap();
        assert_eq!(f.class_name, None, "module-level wins");
        let m = find_function(FILE, "Box.size").unwrap();
        assert_eq!(m.class_name.as_deref(), Some("Box"));
        let err = find_function(FILE, "nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "no function `nope` in the file; it defines: fetch, Box.size, Box.stub2, outer, inner, size"
        );
        assert_eq!(find_function_at_line(FILE, 26).unwrap().name, "inner");
        assert_eq!(find_function_at_line(FILE, 27).unwrap().name, "outer");
        assert_eq!(find_function_at_line(FILE, 5).unwrap().name, "fetch");
        let e = find_function_at_line(FILE, 1).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn syntax_errors_elsewhere_do_not_hide_functions() {
        let src = "def ok(a):\n    return a + 1\n\n\ndef broken(:\n    return (\n\nx = = 3\n";
        let errs = syntax_errors(src);
        assert!(!errs.is_empty());
        assert!(errs.iter().all(|e| e.line >= 5), "{errs:?}");
        let f = find_function(src, "ok").unwrap();
        assert_eq!(f.params, ["a"]);
        assert!(syntax_errors("def f():\n    return 1\n").is_empty());
    }

    #[test]
    fn cleandoc_semantics() {
        assert_eq!(
            cleandoc("  First.\n\n      a\n        b\n    "),
            "First.\n\na\n  b"
        );
        assert_eq!(cleandoc("\n    Only.\n"), "Only.");
    }

    #[test]
    fn stub_kinds() {
        for body in [
            "...",
            "pass",
            "raise NotImplementedError",
            "raise NotImplementedError('x')",
            "# todo\n    pass",
        ] {
            let src = format!("def f():\n    \"\"\"Doc.\"\"\"\n    {body}\n");
            assert!(find_function(&src, "f").unwrap().is_stub, "{body}");
        }
        assert!(
            find_function("def f():\n    \"\"\"Only doc.\"\"\"\n", "f")
                .unwrap()
                .is_stub
        );
        assert!(
            !find_function("def f():\n    return 1\n", "f")
                .unwrap()
                .is_stub
        );
        assert!(
            !find_function("def f():\n    raise ValueError\n", "f")
                .unwrap()
                .is_stub
        );
    }

    #[test]
    fn function_source_and_imports() {
        let src = "import os\n\nclass A:\n    @staticmethod\n    def m(x):\n        return x\nfrom a import (b,\n  c)\n";
        assert_eq!(
            function_source(src, "m").unwrap(),
            "    @staticmethod\n    def m(x):\n        return x"
        );
        assert_eq!(
            module_imports(src),
            ["import os", "from a import (b,\n  c)"]
        );
        assert_eq!(function_source(src, "zz"), None);
    }

    #[test]
    fn splice_replaces_body_keeps_docstring_adds_imports_and_helpers() {
        let src = "\"\"\"Mod é.\"\"\"\nimport os\n\n\ndef add(a, b):\n    \"\"\"Add – café 🎉.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n    ...\n\n\ndef other():\n    return 1\n";
        let func = find_function(src, "add").unwrap();
        let generated = "import math\nimport os\nfrom typing import List\n\nLIMIT = 10\n\ndef _helper(x):\n    return x\n\ndef add(a, b):\n    \"\"\"Different doc.\"\"\"\n    # sum them\n    return _helper(a) + b\n\nif __name__ == '__main__':\n    print(add(1, 2))\n";
        let out = splice(src, &func, generated).unwrap();
        assert_eq!(
            out.added_imports,
            ["import math", "from typing import List"]
        );
        assert_eq!(out.added_helpers, ["LIMIT", "_helper"]);
        assert_eq!(
            out.source,
            "\"\"\"Mod é.\"\"\"\nimport os\nimport math\nfrom typing import List\n\n\nLIMIT = 10\n\n\ndef _helper(x):\n    return x\n\n\ndef add(a, b):\n    \"\"\"Add – café 🎉.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n    # sum them\n    return _helper(a) + b\n\n\ndef other():\n    return 1\n"
        );
        assert!(syntax_errors(&out.source).is_empty());
    }

    #[test]
    fn splice_method_with_nested_def_and_multiline_string() {
        let src = "class K:\n    def run(self, n):\n        pass\n\n    def other(self):\n        return 2\n";
        let func = find_function(src, "K.run").unwrap();
        let generated = "def run(self, n):\n    text = \"\"\"line one\n  keep this indent\nend\"\"\"\n    def inner(k):\n        return k * 2\n    return inner(n), text\n";
        let out = splice(src, &func, generated).unwrap();
        assert_eq!(
            out.source,
            "class K:\n    def run(self, n):\n        text = \"\"\"line one\n  keep this indent\nend\"\"\"\n        def inner(k):\n            return k * 2\n        return inner(n), text\n\n    def other(self):\n        return 2\n"
        );
    }

    #[test]
    fn splice_without_docstring_and_one_line_stub() {
        let src = "def f(x): ...\n";
        let func = find_function(src, "f").unwrap();
        let out = splice(src, &func, "def f(y):\n    '''doc'''\n    return x\n").unwrap();
        assert_eq!(out.source, "def f(x):\n    return x\n");
        let src = "def f(x):\n    raise NotImplementedError\n";
        let func = find_function(src, "f").unwrap();
        let out = splice(src, &func, "def f(x):\n        return x  # deep\n").unwrap();
        assert_eq!(out.source, "def f(x):\n    return x  # deep\n");
        // No imports in the file: imports go at the top.
        let out = splice(
            src,
            &func,
            "import re\ndef f(x):\n    return re.escape(x)\n",
        )
        .unwrap();
        assert_eq!(
            out.source,
            "import re\n\n\ndef f(x):\n    return re.escape(x)\n"
        );
    }

    /// Every `\n` of `text` ends a CRLF pair.
    fn all_crlf(text: &str) -> bool {
        text.match_indices('\n')
            .all(|(i, _)| i > 0 && text.as_bytes()[i - 1] == b'\r')
    }

    #[test]
    fn splice_keeps_a_crlf_files_line_endings() {
        let lf = "import os\n\n\ndef add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    \"\"\"\n    ...\n\n\nX = 1\n";
        let crlf = lf.replace('\n', "\r\n");
        // A generated reply may come with either ending.
        for generated in [
            "import math\n\nK = 2\n\ndef add(a, b):\n    s = a + b\n    return s\n",
            "import math\r\n\r\nK = 2\r\n\r\ndef add(a, b):\r\n    s = a + b\r\n    return s\r\n",
        ] {
            let out = splice(&crlf, &find_function(&crlf, "add").unwrap(), generated).unwrap();
            let want = splice(lf, &find_function(lf, "add").unwrap(), generated).unwrap();
            assert!(all_crlf(&out.source), "{:?}", out.source);
            assert_eq!(out.source, want.source.replace('\n', "\r\n"));
            assert!(!want.source.contains('\r'), "an LF file stays LF");
        }
        // No docstring, body on the header line, imports at the top.
        let crlf = "def f(x): ...\r\n";
        let out = splice(
            crlf,
            &find_function(crlf, "f").unwrap(),
            "import re\ndef f(x):\n    return re.escape(x)\n",
        )
        .unwrap();
        assert_eq!(
            out.source,
            "import re\r\n\r\n\r\ndef f(x):\r\n    return re.escape(x)\r\n"
        );
        assert_eq!(line_ending("a\r\nb\n"), "\r\n");
        assert_eq!(line_ending("a\nb\r\n"), "\n");
        assert_eq!(line_ending("a"), "\n");
    }

    #[test]
    fn imports_go_below_a_shebang_and_a_coding_line() {
        let src = "#!/usr/bin/env python\n# -*- coding: latin-1 -*-\n\ndef f(x):\n    pass\n";
        let out = splice(
            src,
            &find_function(src, "f").unwrap(),
            "import re\ndef f(x):\n    return re.escape(x)\n",
        )
        .unwrap();
        assert_eq!(
            out.source,
            "#!/usr/bin/env python\n# -*- coding: latin-1 -*-\n\nimport re\n\n\ndef f(x):\n    return re.escape(x)\n"
        );
        assert_eq!(
            coding_declaration(out.source.as_bytes()).unwrap().1,
            "latin-1"
        );
    }

    #[test]
    fn nested_and_duplicate_definitions_cannot_be_replaced() {
        let src = "def outer(xs):\n    def helper(x):\n        \"\"\"Double.\"\"\"\n    return [helper(x) for x in xs]\n\n\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n\n\nclass K:\n    def add(self):\n        pass\n";
        let helper = find_function(src, "helper").unwrap();
        let e = check_replaceable(src, &helper).unwrap_err();
        assert!(
            matches!(&e, AnalysisError::NestedFunction { outer, line: 2, .. } if outer == "outer"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("move `helper` to the top level"),
            "{e}"
        );
        let by_line = find_function_at_line(src, 2).unwrap();
        assert!(
            check_replaceable(src, &by_line).is_err(),
            "found by line too"
        );
        // A method of the same name is not a duplicate.
        check_replaceable(src, &find_function(src, "add").unwrap()).unwrap();
        check_replaceable(src, &find_function(src, "outer").unwrap()).unwrap();
        let dup = format!("{src}\n\nif True:\n    def add(a, b):\n        return 0\n");
        let e = check_replaceable(&dup, &find_function(&dup, "add").unwrap()).unwrap_err();
        assert!(
            matches!(&e, AnalysisError::DuplicateDefinition { lines, .. } if lines == &[7, 17]),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("defined 2 times") && e.to_string().contains("lines 7, 17"),
            "{e}"
        );
    }

    #[test]
    fn coding_declarations_are_found_as_python_finds_them() {
        let cases: &[(&str, Option<&str>)] = &[
            ("# -*- coding: latin-1 -*-\nx = 1\n", Some("latin-1")),
            ("#!/usr/bin/env python\n# coding=cp1252\n", Some("cp1252")),
            (
                "# vim: set fileencoding=iso-8859-15 :\n",
                Some("iso-8859-15"),
            ),
            ("\n# coding: utf-8\n", Some("utf-8")),
            ("\r\n  # coding: utf-8\r\n", Some("utf-8")),
            ("x = 1\n# coding: latin-1\n", None),
            ("x = 1  # coding: latin-1\n", None),
            ("#\n#\n# coding: latin-1\n", None),
            ("# coding:\n", None),
            ("# encoding: euc_jp\n", Some("euc_jp")),
            ("# coding", None),
        ];
        for (head, want) in cases {
            let got = coding_declaration(head.as_bytes());
            assert_eq!(got.as_ref().map(|g| g.1.as_str()), *want, "{head:?}");
            if let Some((r, name)) = got {
                assert_eq!(&head[r], name);
            }
        }
        let src = "#!/bin/python\n# -*- coding: latin-1 -*-\nS = 'Ça'\n";
        assert_eq!(
            utf8_module(src),
            "#!/bin/python\n# -*- coding: utf-8 -*-\nS = 'Ça'\n"
        );
        let plain = "# coding: utf_8\nS = 1\n";
        assert!(matches!(utf8_module(plain), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn splice_rejects_bad_generated_code() {
        let src = "def f(x):\n    pass\n";
        let func = find_function(src, "f").unwrap();
        let e = splice(src, &func, "def g(x):\n    return 1\n").unwrap_err();
        assert!(e.to_string().contains("does not define `def f`"), "{e}");
        let e = splice(src, &func, "def f(x):\n    return (\n").unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
        let e = splice(src, &func, "def f(x):\n    \"\"\"Only doc.\"\"\"\n").unwrap_err();
        assert!(matches!(e, AnalysisError::GeneratedCodeInvalid(_)));
    }

    #[test]
    fn code_block_extraction() {
        let reply = "Here:\n```python\nx = 1\n```\nand the full one:\n```py\nimport os\n\ndef a():\n    pass\n\ndef b():\n    pass\n```\nDone.";
        assert_eq!(
            extract_code_block(reply),
            "import os\n\ndef a():\n    pass\n\ndef b():\n    pass"
        );
        assert_eq!(
            extract_code_block("  def f():\n    pass  \n"),
            "def f():\n    pass"
        );
        assert_eq!(
            extract_code_block("```python\ndef f():\n    return 1\n"),
            "def f():\n    return 1"
        );
        assert_eq!(
            extract_code_block("```text\nnope\n```\n```\ndef g(): pass\n```"),
            "def g(): pass"
        );
    }

    #[test]
    fn literals_are_told_from_prose() {
        for ok in [
            "5",
            "-3.5",
            "'abc'",
            "\"a\" 'b'",
            "True",
            "None",
            "[1, (2, 3), {'a': [None]}]",
            "{1, 2}",
            "()",
            "1+2j",
            "float('inf')",
            "set()",
        ] {
            assert!(is_literal(ok), "{ok}");
        }
        for bad in [
            "hello-world-123",
            "x",
            "f(1)",
            "[a, 1]",
            "1 if x else 2",
            "",
            "1; 2",
            "'unterminated",
        ] {
            assert!(!is_literal(bad), "{bad}");
        }
    }
}
