//! What the model sees around a function: outlines of what it may use.
//!
//! An *outline* is a top-level name's text with bodies elided: a function's
//! decorators, signature and docstring; a class's header, docstring, fields,
//! `__init__` and its methods' outlines; an assignment (a constant, a type
//! alias) in full when short. [`build`] fills a token budget with them by
//! relevance: first the names the stub's signature and docstring mention (a
//! short mentioned function is shown whole), then the rest in source order.
//! A method is shown inside its class's outline, which is never trimmed.
//!
//! Owns: choosing and rendering outlines. Input is source text (this file or
//! a project module found by `project`), output plain data.

use std::collections::HashSet;
use std::ops::Range;

use serde::Serialize;
use tree_sitter::Node;

use super::project::{project_imports, ModulePath};
use super::{
    dedent, docstring_node, is_import, line_start, named_children, parse, statements, text,
    FunctionInfo,
};

/// Tokens of a text, estimated as one token per 4 bytes (the usual rule of
/// thumb for code with BPE tokenizers; Qwen2.5's tokenizer gives 3.2 to 4.5
/// bytes per token on Python). Used only to size the context, never to bill.
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// A function of at most this many lines that the stub mentions by name is
/// shown whole instead of outlined (its body often *is* the specification:
/// `decode_cyclic` next to `encode_cyclic`).
const WHOLE_FUNCTION_LINES: usize = 15;
/// An assignment of at most this many lines is shown whole; longer ones show
/// their first line and `...`.
const WHOLE_ASSIGNMENT_LINES: usize = 3;

/// One top-level name of a module, outlined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outline {
    /// The name it defines (`MAX_ITEMS`, `parse`, `Order`).
    pub name: String,
    /// `function`, `class` or `assignment`.
    pub kind: &'static str,
    /// The outline's text, at column 0.
    pub text: String,
    /// The whole definition's text, for a short function shown whole when mentioned.
    #[serde(skip)]
    pub whole: Option<String>,
    /// Where it came from: `""` for the function's own module, else the
    /// import it was found through (`from .models import Order`).
    pub origin: String,
}

/// One entry of the context given to the model, as recorded with the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextItem {
    pub name: String,
    pub kind: &'static str,
    /// `""` (this module) or the import statement it came through.
    pub origin: String,
    /// Estimated tokens of its text ([`estimate_tokens`]).
    pub tokens: usize,
    /// The stub's signature or docstring mentions it.
    pub mentioned: bool,
}

/// The context shown before the stub, and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Context {
    /// Python text (outlines, `...` for elided bodies), empty when there is nothing.
    pub text: String,
    /// What was shown, in the order shown.
    pub items: Vec<ContextItem>,
    /// Names left out for the budget.
    pub omitted: Vec<String>,
    /// Estimated tokens of `text`.
    pub tokens: usize,
    /// The budget it was filled to.
    pub budget_tokens: usize,
}

/// Identifiers mentioned in `text` (words of letters, digits and `_` not
/// starting with a digit).
pub fn mentioned_names(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

fn indent_lines(s: &str, indent: &str) -> String {
    s.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{indent}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of `node` from the start of its line, dedented (so a method's
/// text starts at column 0).
fn dedented(node: Node, source: &str) -> String {
    dedent(&source[line_start(source, node.start_byte())..node.end_byte()])
}

/// `def` / `class` node under a possibly decorated definition.
fn definition(node: Node) -> Node {
    if node.kind() == "decorated_definition" {
        node.child_by_field_name("definition").unwrap_or(node)
    } else {
        node
    }
}

/// How much of the methods a class outline shows besides their signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Whole docstrings; `__init__` whole.
    Full,
    /// The first line of each docstring; `__init__` whole.
    FirstDocLine,
    /// Signatures only; `__init__` outlined too.
    Signatures,
}

/// A function's outline: decorators, signature, docstring (as `detail`
/// says), `...`.
fn function_outline(outer: Node, source: &str, detail: Detail) -> String {
    let def = definition(outer);
    let Some(body) = def.child_by_field_name("body") else {
        return dedented(outer, source);
    };
    let doc = statements(body).first().and_then(|s| docstring_node(*s));
    let start = line_start(source, outer.start_byte());
    let header = dedent(source[start..body.start_byte()].trim_end());
    let body_indent = {
        let first = statements(body).first().map(|s| s.start_byte());
        match first {
            Some(b) if line_start(source, b) > line_start(source, def.start_byte()) => {
                let ls = line_start(source, b);
                let ws = &source[ls..b];
                let outer_ws = &source[start..outer.start_byte()];
                ws.strip_prefix(outer_ws).unwrap_or("    ").to_string()
            }
            _ => "    ".to_string(),
        }
    };
    let head = match (doc, detail) {
        (Some(d), Detail::Full) => dedent(&source[start..d.end_byte()]),
        (Some(d), Detail::FirstDocLine) => {
            let content = super::cleandoc(&super::string_literal_content(text(d, source)));
            let first = content
                .lines()
                .next()
                .unwrap_or("")
                .replace("\"\"\"", "'''");
            let more = if content.lines().nth(1).is_some() {
                " ..."
            } else {
                ""
            };
            format!("{header}\n{body_indent}\"\"\"{first}{more}\"\"\"")
        }
        _ => header,
    };
    format!("{head}\n{body_indent}...")
}

/// A class's outline: decorators and header, docstring, class-level
/// statements other than methods (fields, constants) in full, `__init__` in
/// full (outlined with [`Detail::Signatures`]), other methods outlined as
/// `detail` says. `target`, when inside, is shown whole.
pub fn class_outline(
    outer: Node,
    source: &str,
    target: Option<&Range<usize>>,
    detail: Detail,
) -> String {
    let class = definition(outer);
    let start = line_start(source, outer.start_byte());
    let Some(body) = class.child_by_field_name("body") else {
        return dedented(outer, source);
    };
    let header = dedent(source[start..body.start_byte()].trim_end());
    // (text, is a def or class): simple statements (fields, constants) sit
    // on consecutive lines, definitions apart.
    let mut parts: Vec<(String, bool)> = Vec::new();
    for stmt in statements(body) {
        let def = definition(stmt);
        let whole_target =
            target.is_some_and(|t| stmt.start_byte() <= t.start && t.end <= stmt.end_byte());
        let part = match def.kind() {
            "function_definition" => {
                let is_init = def
                    .child_by_field_name("name")
                    .is_some_and(|n| text(n, source) == "__init__");
                let exact_target = target.is_some_and(|t| t.start == stmt.start_byte());
                if exact_target || (is_init && !whole_target && detail != Detail::Signatures) {
                    dedented(stmt, source)
                } else {
                    function_outline(stmt, source, detail)
                }
            }
            "class_definition" => class_outline(stmt, source, target, detail),
            _ => dedented(stmt, source),
        };
        let is_def = matches!(def.kind(), "function_definition" | "class_definition");
        parts.push((indent_lines(&part, "    "), is_def));
    }
    if parts.is_empty() {
        return format!("{header}\n    ...");
    }
    let mut out = header;
    for (i, (part, is_def)) in parts.iter().enumerate() {
        let apart = *is_def || i > 0 && parts[i - 1].1;
        out.push_str(if i > 0 && apart { "\n\n" } else { "\n" });
        out.push_str(part);
    }
    out
}

fn assignment_name(stmt: Node, source: &str) -> Option<String> {
    match stmt.kind() {
        "expression_statement" => {
            let first = named_children(stmt).into_iter().next()?;
            if first.kind() != "assignment" {
                return None;
            }
            let left = first.child_by_field_name("left")?;
            Some(text(left, source).to_string())
        }
        "type_alias_statement" => named_children(stmt)
            .into_iter()
            .next()
            .map(|n| text(n, source).to_string()),
        _ => None,
    }
}

/// Outlines of `source`'s top-level names, in source order: functions,
/// classes, assignments. Imports, the module docstring, `if __name__ ==
/// "__main__":` blocks and any statement overlapping `exclude` (the target
/// function, or the class around a method) are left out. `origin` is stored
/// on each outline. When `only` is given, only those names are kept.
pub fn module_outlines(
    source: &str,
    exclude: Option<&Range<usize>>,
    origin: &str,
    only: Option<&[String]>,
) -> Vec<Outline> {
    let tree = parse(source);
    let mut out = Vec::new();
    for (i, stmt) in named_children(tree.root_node()).into_iter().enumerate() {
        if stmt.kind() == "comment" || is_import(stmt) {
            continue;
        }
        if i == 0 && docstring_node(stmt).is_some() {
            continue;
        }
        if exclude.is_some_and(|r| stmt.start_byte() < r.end && r.start < stmt.end_byte()) {
            continue;
        }
        let def = definition(stmt);
        let (name, kind, outline, whole) = match def.kind() {
            "function_definition" => {
                let Some(n) = def.child_by_field_name("name") else {
                    continue;
                };
                let whole = dedented(stmt, source);
                let whole = (whole.lines().count() <= WHOLE_FUNCTION_LINES).then_some(whole);
                (
                    text(n, source).to_string(),
                    "function",
                    function_outline(stmt, source, Detail::Full),
                    whole,
                )
            }
            "class_definition" => {
                let Some(n) = def.child_by_field_name("name") else {
                    continue;
                };
                (
                    text(n, source).to_string(),
                    "class",
                    class_outline(stmt, source, None, Detail::FirstDocLine),
                    None,
                )
            }
            _ => {
                let Some(name) = assignment_name(stmt, source) else {
                    continue;
                };
                let t = dedented(stmt, source);
                let t = if t.lines().count() <= WHOLE_ASSIGNMENT_LINES {
                    t
                } else {
                    format!("{}  ...", t.lines().next().unwrap_or_default())
                };
                (name, "assignment", t, None)
            }
        };
        if only.is_some_and(|o| !o.iter().any(|x| x == &name)) {
            continue;
        }
        out.push(Outline {
            name,
            kind,
            text: outline,
            whole,
            origin: origin.to_string(),
        });
    }
    out
}

/// The outermost class around `func` (a method), as the byte range of its
/// (decorated) definition, or `None` for a module-level function.
pub fn enclosing_class(source: &str, func: &FunctionInfo) -> Option<Range<usize>> {
    func.class_name.as_ref()?;
    let tree = parse(source);
    named_children(tree.root_node())
        .into_iter()
        .find(|n| {
            definition(*n).kind() == "class_definition"
                && n.start_byte() <= func.def_range.start
                && func.def_range.end <= n.end_byte()
        })
        .map(|n| n.byte_range())
}

/// The outline of the class around the method `func` (outermost class; the
/// method itself whole), or `None` for a module-level function. Within
/// `budget_tokens` where it can be: whole docstrings, else their first
/// lines, else signatures only (the method itself is never cut).
pub fn method_view(source: &str, func: &FunctionInfo, budget_tokens: usize) -> Option<String> {
    let range = enclosing_class(source, func)?;
    let tree = parse(source);
    let node = named_children(tree.root_node())
        .into_iter()
        .find(|n| n.byte_range() == range)?;
    let mut view = String::new();
    for detail in [Detail::Full, Detail::FirstDocLine, Detail::Signatures] {
        view = class_outline(node, source, Some(&func.def_range), detail);
        if estimate_tokens(&view) <= budget_tokens {
            break;
        }
    }
    Some(view)
}

/// Fills `budget_tokens` with outlines: the ones whose name `mentioned`
/// holds first (a short mentioned function whole), then the others in
/// order, each only when it fits whole. The text lists them in the order
/// given (this module's, then imported ones), grouped by origin, each group
/// after a `# from ...` comment line when it was imported.
pub fn build(outlines: Vec<Outline>, mentioned: &HashSet<String>, budget_tokens: usize) -> Context {
    let mut order: Vec<usize> = (0..outlines.len()).collect();
    order.sort_by_key(|&i| !mentioned.contains(&outlines[i].name));
    let mut chosen: Vec<(usize, String)> = Vec::new();
    let mut used = 0;
    let mut omitted = Vec::new();
    for i in order {
        let o = &outlines[i];
        let is_mentioned = mentioned.contains(&o.name);
        let shown = match (&o.whole, is_mentioned) {
            (Some(w), true) if used + estimate_tokens(w) < budget_tokens => w.clone(),
            _ => o.text.clone(),
        };
        let cost = estimate_tokens(&shown) + 1;
        if used + cost > budget_tokens {
            omitted.push(o.name.clone());
            continue;
        }
        used += cost;
        chosen.push((i, shown));
    }
    chosen.sort_by_key(|(i, _)| *i);
    let mut text = String::new();
    let mut items = Vec::new();
    let mut origin: Option<&str> = None;
    for (i, shown) in &chosen {
        let o = &outlines[*i];
        if origin != Some(o.origin.as_str()) {
            if !o.origin.is_empty() {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&format!("# {}:\n", o.origin));
            }
            origin = Some(o.origin.as_str());
        } else if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(shown);
        items.push(ContextItem {
            name: o.name.clone(),
            kind: o.kind,
            origin: o.origin.clone(),
            tokens: estimate_tokens(shown),
            mentioned: mentioned.contains(&o.name),
        });
    }
    Context {
        tokens: estimate_tokens(&text),
        text,
        items,
        omitted,
        budget_tokens,
    }
}

/// Everything shown around one function, and what could not be found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gathered {
    /// Outlines of this module's other names and of the project names it imports.
    pub context: Context,
    /// For a method: its class's outline with the method whole.
    pub enclosing: Option<String>,
    /// Project imports that could not be resolved (statement, and why).
    pub unresolved: Vec<String>,
}

/// Gathers what the model sees around `func` in `source`: the class outline
/// for a method, and [`build`] over this module's other top-level names and
/// (with `here`, the file's place in its project) the outlines of the
/// project names it imports, within `budget_tokens`.
pub fn gather(
    source: &str,
    func: &FunctionInfo,
    here: Option<&ModulePath>,
    budget_tokens: usize,
) -> Gathered {
    // The class view is the stub itself: at least 1024 tokens of it.
    let enclosing = method_view(source, func, budget_tokens.max(1024));
    let exclude = enclosing_class(source, func).unwrap_or_else(|| func.def_range.clone());
    let mut outlines = module_outlines(source, Some(&exclude), "", None);
    let mut unresolved = Vec::new();
    if let Some(here) = here {
        let (imported, missing) = imported_outlines(source, here);
        outlines.extend(imported);
        unresolved = missing;
    }
    let mut about = format!(
        "{}\n{}",
        func.signature,
        func.docstring.as_deref().unwrap_or("")
    );
    if let Some(e) = &enclosing {
        about.push('\n');
        about.push_str(e);
    }
    let mentioned = mentioned_names(&about);
    Gathered {
        context: build(outlines, &mentioned, budget_tokens),
        enclosing,
        unresolved,
    }
}

/// Outlines of what the project imports of `source` bring in: the named
/// names of `from m import a, b`, every top-level name of `import m` and of
/// `from m import *`. Files that cannot be read are skipped (their imports
/// stay in the returned list of unresolved statements). Returns the outlines
/// and the statements that could not be resolved in the project.
pub fn imported_outlines(source: &str, here: &ModulePath) -> (Vec<Outline>, Vec<String>) {
    let mut outlines = Vec::new();
    let mut unresolved = Vec::new();
    for imp in project_imports(source, here) {
        let Some(file) = &imp.file else {
            unresolved.push(imp.statement.clone());
            continue;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            unresolved.push(imp.statement.clone());
            continue;
        };
        let only: Option<Vec<String>> =
            if imp.names.is_empty() || imp.names.iter().any(|n| n == "*") {
                None
            } else {
                Some(imp.names.clone())
            };
        let found = module_outlines(&text, None, &imp.statement, only.as_deref());
        if let Some(o) = &only {
            for n in o {
                if !found.iter().any(|f| &f.name == n) {
                    // Re-exported from elsewhere, or not there at all.
                    unresolved.push(format!(
                        "{} (`{n}` not defined in {})",
                        imp.statement, imp.module
                    ));
                }
            }
        }
        outlines.extend(found);
    }
    (outlines, unresolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::find_function;

    const MODULE: &str = r#""""Shop inventory."""
from dataclasses import dataclass

MAX_ITEMS = 100
Price = float
LONG = [
    1,
    2,
    3,
    4,
]


def helper(x):
    """Doubles x."""
    return 2 * x


def unrelated(a, b):
    """Not mentioned anywhere."""
    total = 0
    for i in range(a):
        total += b
    return total


@dataclass
class Item:
    """A line of stock."""

    name: str
    qty: int = 0

    def value(self, price: Price) -> float:
        """Worth of the line."""
        return self.qty * price


class Inventory:
    """Items by name."""

    def __init__(self):
        self.items = {}

    def count(self, name):
        """How many `name` are in stock."""
        return self.items.get(name, 0)

    def add(self, name, qty):
        """Adds qty of name; at most MAX_ITEMS in all; uses helper.

        >>> inv = Inventory()
        >>> inv.add("apple", 3)
        >>> inv.count("apple")
        3
        """
        raise NotImplementedError


if __name__ == "__main__":
    print(Inventory())
"#;

    #[test]
    fn outlines_elide_bodies_and_keep_fields_init_and_docstrings() {
        let all = module_outlines(MODULE, None, "", None);
        let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "MAX_ITEMS",
                "Price",
                "LONG",
                "helper",
                "unrelated",
                "Item",
                "Inventory"
            ]
        );
        let by = |n: &str| all.iter().find(|o| o.name == n).unwrap();
        assert_eq!(by("LONG").text, "LONG = [  ...");
        assert_eq!(
            by("helper").text,
            "def helper(x):\n    \"\"\"Doubles x.\"\"\"\n    ..."
        );
        assert!(by("helper")
            .whole
            .as_deref()
            .unwrap()
            .contains("return 2 * x"));
        let item = &by("Item").text;
        assert!(item.starts_with("@dataclass\nclass Item:"), "{item}");
        assert!(
            item.contains("    name: str\n") && item.contains("qty: int = 0"),
            "{item}"
        );
        assert!(item.contains("def value(self, price: Price) -> float:\n        \"\"\"Worth of the line.\"\"\"\n        ..."), "{item}");
        assert!(!item.contains("self.qty * price"), "{item}");
        let inv = &by("Inventory").text;
        assert!(
            inv.contains("self.items = {}"),
            "__init__ is shown whole: {inv}"
        );
        assert!(!inv.contains("raise NotImplementedError"), "{inv}");
    }

    #[test]
    fn a_method_is_shown_whole_inside_its_class_outline() {
        let f = find_function(MODULE, "Inventory.add").unwrap();
        let view = method_view(MODULE, &f, 1024).unwrap();
        assert!(
            view.starts_with("class Inventory:\n    \"\"\"Items by name.\"\"\""),
            "{view}"
        );
        assert!(
            view.contains("    def add(self, name, qty):\n        \"\"\"Adds qty"),
            "{view}"
        );
        assert!(view.contains("        raise NotImplementedError"), "{view}");
        assert!(
            view.contains("def count(self, name):\n        \"\"\"How many"),
            "{view}"
        );
        assert!(!view.contains("return self.items.get"), "{view}");
        // The class is left out of the module context then.
        let range = enclosing_class(MODULE, &f).unwrap();
        let rest = module_outlines(MODULE, Some(&range), "", None);
        assert!(rest.iter().all(|o| o.name != "Inventory"));
    }

    #[test]
    fn a_large_class_is_shown_with_shorter_docstrings_then_signatures() {
        let f = find_function(MODULE, "Inventory.add").unwrap();
        let full = method_view(MODULE, &f, 10_000).unwrap();
        assert!(
            full.contains("\"\"\"How many `name` are in stock.\"\"\""),
            "{full}"
        );
        // The method alone is about 90 tokens: a budget of 100 forces signatures only.
        let small = method_view(MODULE, &f, 100).unwrap();
        assert!(!small.contains("How many"), "{small}");
        assert!(
            small.contains("    def count(self, name):\n        ..."),
            "{small}"
        );
        assert!(
            small.contains("    def __init__(self):\n        ..."),
            "{small}"
        );
        // The method itself is whole whatever the budget.
        assert!(
            small.contains("        >>> inv.count(\"apple\")\n        3\n"),
            "{small}"
        );
        // Module context shows other classes' docstrings by their first line.
        let item = module_outlines(MODULE, None, "", None)
            .into_iter()
            .find(|o| o.name == "Item")
            .unwrap();
        assert!(
            item.text.contains("\"\"\"Worth of the line.\"\"\""),
            "{}",
            item.text
        );
    }

    #[test]
    fn the_budget_takes_mentioned_names_first_and_shows_short_ones_whole() {
        let f = find_function(MODULE, "Inventory.add").unwrap();
        let range = enclosing_class(MODULE, &f).unwrap();
        let outlines = module_outlines(MODULE, Some(&range), "", None);
        let mentioned = mentioned_names(&format!(
            "{} {}",
            f.signature,
            f.docstring.as_deref().unwrap()
        ));
        let small = build(outlines.clone(), &mentioned, 20);
        let names: Vec<&str> = small.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["MAX_ITEMS", "helper"], "{small:?}");
        assert!(small.text.contains("return 2 * x"), "{}", small.text);
        assert!(small.omitted.contains(&"unrelated".to_string()));
        assert!(small.tokens <= 20);
        let all = build(outlines, &mentioned, 10_000);
        assert_eq!(all.items.len(), 6);
        assert!(all.omitted.is_empty());
        // Source order in the text.
        let p = |s: &str| all.text.find(s).unwrap();
        assert!(p("MAX_ITEMS") < p("def helper") && p("def helper") < p("class Item"));
    }

    #[test]
    fn outlines_of_project_imports_name_their_import_and_skip_bodies() {
        let (_d, here, src) = crate::python::project::tests::shop_imports();
        let (outlines, unresolved) = imported_outlines(src, &here);
        let names: Vec<(&str, &str)> = outlines
            .iter()
            .map(|o| (o.name.as_str(), o.origin.as_str()))
            .collect();
        assert_eq!(names[0], ("RATE", "from .models import Order, RATE as R"));
        assert_eq!(names[1].0, "Order");
        assert!(names.contains(&("parse", "from shop.util import parse")));
        assert!(outlines
            .iter()
            .any(|o| o.name == "other" && o.origin == "import shop.models"));
        assert!(
            !outlines[1].text.contains("return 1"),
            "{}",
            outlines[1].text
        );
        assert_eq!(unresolved, vec!["from ..outside import x".to_string()]);
    }
}
