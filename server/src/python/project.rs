//! The project around a file: the module name Python gives it, the folder its
//! imports are resolved from, and the project modules its imports name.
//!
//! Python's rules, as far as a file tree shows them: a folder with an
//! `__init__.py` is a package; a file's import root is the first folder
//! above it that is not a package (so `src/` layouts work); `from .models
//! import Order` is resolved against the file's package; `from shop.util
//! import parse` against the import root. Namespace packages (no
//! `__init__.py`) are resolved only directly under the import root.
//!
//! Owns: reading the workspace's files for that (with tree-sitter, never by
//! running them). Nothing here executes code.

use std::path::{Path, PathBuf};

use super::{is_import, named_children, parse, text};

/// Where a file sits as a Python module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePath {
    /// The import root: the folder that must be on `sys.path` (absolute).
    pub root: PathBuf,
    /// The dotted module name under `root` (`shop.orders`; `orders` for a
    /// file that is not in a package).
    pub module: String,
    /// Whether the file is inside a package (its folder has `__init__.py`).
    pub in_package: bool,
}

/// The module path of `file`. `workspace` bounds the walk up: the import
/// root is never above it (a package that spans the workspace's edge is cut
/// there). Paths are canonicalised when they exist.
pub fn locate(file: &Path, workspace: &Path) -> ModulePath {
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let workspace = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = Vec::new();
    if stem != "__init__" {
        parts.push(stem);
    }
    let mut dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut in_package = false;
    while dir.join("__init__.py").is_file() && dir != workspace && dir.starts_with(&workspace) {
        in_package = true;
        parts.push(
            dir.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    parts.reverse();
    ModulePath {
        root: dir,
        module: parts.join("."),
        in_package,
    }
}

/// One import of the file that names a module of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectImport {
    /// The statement as written (`from .models import Order`).
    pub statement: String,
    /// The absolute dotted module it imports from (`shop.models`).
    pub module: String,
    /// The module's file, when found in the project.
    pub file: Option<PathBuf>,
    /// Names imported from it (`Order`); empty for `import shop.models`
    /// and for `*`.
    pub names: Vec<String>,
}

/// The file of dotted `module` under `root` (`a/b.py` or `a/b/__init__.py`).
fn module_file(root: &Path, module: &str) -> Option<PathBuf> {
    if module.is_empty() {
        return None;
    }
    let rel: PathBuf = module.split('.').collect();
    let py = root.join(&rel).with_extension("py");
    if py.is_file() {
        return Some(py);
    }
    let init = root.join(&rel).join("__init__.py");
    init.is_file().then_some(init)
}

/// The imports of `source` (top level and under module-level `try`/`if`)
/// that are relative, or absolute and found under `here.root`. Relative
/// imports that lead nowhere are returned with `file: None` (the caller
/// reports them); absolute ones not in the project (the standard library,
/// installed packages) are not returned.
pub fn project_imports(source: &str, here: &ModulePath) -> Vec<ProjectImport> {
    let tree = parse(source);
    let mut stmts = Vec::new();
    collect_imports(tree.root_node(), &mut stmts);
    let package: Vec<&str> = if here.module.is_empty() {
        Vec::new()
    } else {
        let mut p: Vec<&str> = here.module.split('.').collect();
        p.pop();
        p
    };
    let mut out = Vec::new();
    for node in stmts {
        let statement = text(node, source).to_string();
        match node.kind() {
            "import_from_statement" => {
                let Some(m) = node.child_by_field_name("module_name") else {
                    continue;
                };
                let written = text(m, source);
                let dots = written.chars().take_while(|c| *c == '.').count();
                let rest = written[dots..].trim();
                let wildcard = named_children(node)
                    .iter()
                    .any(|c| c.kind() == "wildcard_import");
                let names: Vec<String> = if wildcard {
                    vec!["*".to_string()]
                } else {
                    let mut c = node.walk();
                    node.children_by_field_name("name", &mut c)
                        .map(|n| {
                            let n = if n.kind() == "aliased_import" {
                                n.child_by_field_name("name").unwrap_or(n)
                            } else {
                                n
                            };
                            text(n, source).to_string()
                        })
                        .collect()
                };
                let module = if dots == 0 {
                    rest.to_string()
                } else {
                    if dots > package.len() {
                        out.push(ProjectImport {
                            statement,
                            module: written.to_string(),
                            file: None,
                            names,
                        });
                        continue;
                    }
                    let mut base: Vec<&str> = package[..package.len() - (dots - 1)].to_vec();
                    if !rest.is_empty() {
                        base.push(rest);
                    }
                    base.join(".")
                };
                // `from . import models`: a name may be a submodule.
                let mut plain = Vec::new();
                for n in names {
                    let m = if module.is_empty() {
                        n.clone()
                    } else {
                        format!("{module}.{n}")
                    };
                    match module_file(&here.root, &m) {
                        Some(f) => out.push(ProjectImport {
                            statement: statement.clone(),
                            module: m,
                            file: Some(f),
                            names: Vec::new(),
                        }),
                        None => plain.push(n),
                    }
                }
                let file = module_file(&here.root, &module);
                if !plain.is_empty() && (file.is_some() || dots > 0) {
                    out.push(ProjectImport {
                        statement,
                        module,
                        file,
                        names: plain,
                    });
                }
            }
            "import_statement" => {
                for n in named_children(node) {
                    let n = if n.kind() == "aliased_import" {
                        n.child_by_field_name("name").unwrap_or(n)
                    } else {
                        n
                    };
                    let module = text(n, source).to_string();
                    if let Some(file) = module_file(&here.root, &module) {
                        out.push(ProjectImport {
                            statement: statement.clone(),
                            module,
                            file: Some(file),
                            names: Vec::new(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn collect_imports<'t>(node: tree_sitter::Node<'t>, out: &mut Vec<tree_sitter::Node<'t>>) {
    for c in named_children(node) {
        if is_import(c) {
            out.push(c);
        } else if matches!(
            c.kind(),
            "if_statement" | "try_statement" | "block" | "else_clause" | "except_clause"
        ) || c.kind().ends_with("_clause")
        {
            collect_imports(c, out);
        }
    }
}

/// Where the pytest module for `file`'s tests goes, and the dotted module
/// it imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestsFile {
    /// The test module (may exist: then the tests are appended to it).
    pub path: PathBuf,
    /// The module under test, as the test module imports it (`shop.inventory`).
    pub module: String,
}

/// Folders never searched for a project's tests.
const NOT_SOURCE: [&str; 8] = [
    ".git",
    ".docsmith",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    "site-packages",
    ".tox",
];

/// Where the tests of `file` go in the project at `workspace`, following
/// the layout the project already has (as pytest finds tests: `test_*.py`
/// or `*_test.py`):
/// 1. an existing `test_<m>.py` or `<m>_test.py` for the module `m`, at
///    most 4 folders down (the first in path order): the tests are appended;
/// 2. otherwise a new file in `tests/` or `test/` under the workspace,
///    whichever exists (`tests/` when neither does), named `<m>_test.py`
///    when that folder's test files all use that form, else `test_<m>.py`.
///
/// The module name is the one Python gives `file` ([`locate`]), so a test in
/// `tests/` imports `shop.inventory`, not `inventory` (run pytest from the
/// import root, e.g. `python -m pytest`, for that import to resolve).
pub fn tests_file_for(file: &Path, workspace: &Path) -> TestsFile {
    let here = locate(file, workspace);
    let root = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    let stem = here.module.rsplit('.').next().unwrap_or("").to_string();
    let names = [format!("test_{stem}.py"), format!("{stem}_test.py")];
    let mut found = Vec::new();
    find_named(&root, &names, 4, &mut found);
    found.sort();
    if let Some(path) = found.into_iter().next() {
        return TestsFile {
            path,
            module: here.module,
        };
    }
    let dir = ["tests", "test"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| root.join("tests"));
    let (prefixed, suffixed) = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .fold((0, 0), |(p, q), n| {
                    (
                        p + usize::from(n.starts_with("test_") && n.ends_with(".py")),
                        q + usize::from(n.ends_with("_test.py")),
                    )
                })
        })
        .unwrap_or((0, 0));
    let name = if suffixed > 0 && prefixed == 0 {
        &names[1]
    } else {
        &names[0]
    };
    TestsFile {
        path: dir.join(name),
        module: here.module,
    }
}

/// Files under `dir` (at most `depth` folders down, skipping [`NOT_SOURCE`]
/// and hidden folders) whose name is one of `names`.
fn find_named(dir: &Path, names: &[String], depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if depth > 0 && !name.starts_with('.') && !NOT_SOURCE.contains(&name.as_str()) {
                find_named(&e.path(), names, depth - 1, out);
            }
        } else if kind.is_file() && names.contains(&name) {
            out.push(e.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A temp folder holding `files` (path, text).
    pub(crate) fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, t) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        }
        dir
    }

    #[test]
    fn module_names_follow_packages_and_src_layouts() {
        let d = tree(&[
            ("src/shop/__init__.py", ""),
            ("src/shop/sub/__init__.py", ""),
            ("src/shop/sub/deep.py", ""),
            ("script.py", ""),
        ]);
        let ws = d.path().canonicalize().unwrap();
        let m = locate(&ws.join("src/shop/sub/deep.py"), &ws);
        assert_eq!(m.module, "shop.sub.deep");
        assert_eq!(m.root, ws.join("src"));
        assert!(m.in_package);
        let s = locate(&ws.join("script.py"), &ws);
        assert_eq!(
            (s.module.as_str(), s.root.as_path(), s.in_package),
            ("script", ws.as_path(), false)
        );
        let i = locate(&ws.join("src/shop/__init__.py"), &ws);
        assert_eq!(i.module, "shop");
    }

    /// A package `shop` (models, util, orders) and the source of
    /// `shop/orders.py` with project and other imports; the folder, the
    /// module path of `orders.py`, the source.
    pub(crate) fn shop_imports() -> (tempfile::TempDir, ModulePath, &'static str) {
        let d = tree(&[
            ("shop/__init__.py", ""),
            ("shop/models.py", "RATE = 2\n\nclass Order:\n    \"\"\"An order.\"\"\"\n    def total(self):\n        \"\"\"Sum.\"\"\"\n        return 1\n\ndef other():\n    pass\n"),
            ("shop/util.py", "def parse(s):\n    \"\"\"Parses s.\"\"\"\n    return s\n"),
            ("shop/orders.py", ""),
        ]);
        let ws = d.path().canonicalize().unwrap();
        let here = locate(&ws.join("shop/orders.py"), &ws);
        let src = "import os\nfrom collections import Counter\nfrom .models import Order, RATE as R\nfrom shop.util import parse\nfrom . import util\nfrom ..outside import x\ntry:\n    import shop.models\nexcept ImportError:\n    pass\n";
        (d, here, src)
    }

    #[test]
    fn relative_and_absolute_project_imports_resolve_and_others_are_left_alone() {
        let (_d, here, src) = shop_imports();
        let imps = project_imports(src, &here);
        let got: Vec<(&str, bool, Vec<String>)> = imps
            .iter()
            .map(|i| (i.module.as_str(), i.file.is_some(), i.names.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "shop.models",
                    true,
                    vec!["Order".to_string(), "RATE".to_string()]
                ),
                ("shop.util", true, vec!["parse".to_string()]),
                ("shop.util", true, vec![]),
                ("..outside", false, vec!["x".to_string()]),
                ("shop.models", true, vec![]),
            ]
        );
    }

    #[test]
    fn tests_go_where_the_project_keeps_them() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path().canonicalize().unwrap();
        let pkg = root.join("src/shop");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("__init__.py"), "").unwrap();
        let file = pkg.join("inventory.py");
        std::fs::write(&file, "").unwrap();
        // No tests yet: a new tests/test_inventory.py importing the package path.
        let t = tests_file_for(&file, &root);
        assert_eq!(t.path, root.join("tests/test_inventory.py"));
        assert_eq!(t.module, "shop.inventory");
        // A test/ folder whose files end in _test.py: that folder, that form.
        std::fs::create_dir_all(root.join("test")).unwrap();
        std::fs::write(root.join("test/orders_test.py"), "").unwrap();
        assert_eq!(
            tests_file_for(&file, &root).path,
            root.join("test/inventory_test.py")
        );
        // An existing test module for this module wins, wherever it is;
        // one under .venv or .git does not count.
        for skipped in [".venv/lib", ".git/x"] {
            std::fs::create_dir_all(root.join(skipped)).unwrap();
            std::fs::write(root.join(skipped).join("test_inventory.py"), "").unwrap();
        }
        std::fs::create_dir_all(root.join("src/shop/tests")).unwrap();
        std::fs::write(root.join("src/shop/tests/test_inventory.py"), "").unwrap();
        assert_eq!(
            tests_file_for(&file, &root).path,
            root.join("src/shop/tests/test_inventory.py")
        );
    }
}
