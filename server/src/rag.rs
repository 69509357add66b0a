//! Role guidelines: the short Markdown passages in `rag_contexts/` that are
//! added to each role's prompt, one file per concern (planning, testing, coding,
//! ...).
//!
//! Owns: the built-in passages (embedded in the binary with `include_str!`, so it
//! works from any directory), per-workspace overrides from
//! `<workspace>/.docsmith/rag_contexts/<concern>.md`, trimming them for a small
//! model's context, and which concerns each role gets. Must not know about
//! prompts' other parts, LLM providers, LSP or the store.

use std::path::{Path, PathBuf};

use crate::types::Role;

/// Where, relative to a workspace root, override files are looked for.
pub const OVERRIDE_DIR: &str = ".docsmith/rag_contexts";

/// One guideline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Concern {
    /// How the loop works (context only; no role gets it by default).
    Architecture,
    /// Restating the contract, edge cases, when to ask a question.
    Planning,
    /// Writing the function body.
    Coding,
    /// Designing call/expected test cases.
    Testing,
    /// What the deterministic checkers reject.
    Validation,
    /// Finding root causes; judging suspect generated tests.
    Debugging,
    /// Forbidden calls and their safe alternatives.
    Security,
}

impl Concern {
    /// Every concern, in file-listing order.
    pub const ALL: [Concern; 7] = [
        Concern::Architecture,
        Concern::Planning,
        Concern::Coding,
        Concern::Testing,
        Concern::Validation,
        Concern::Debugging,
        Concern::Security,
    ];

    /// Lower-case name, which is also the file stem (`planning` -> `planning.md`).
    pub fn name(self) -> &'static str {
        match self {
            Concern::Architecture => "architecture",
            Concern::Planning => "planning",
            Concern::Coding => "coding",
            Concern::Testing => "testing",
            Concern::Validation => "validation",
            Concern::Debugging => "debugging",
            Concern::Security => "security",
        }
    }

    /// Heading used when passages are joined for a prompt.
    pub fn title(self) -> &'static str {
        match self {
            Concern::Architecture => "How the loop works",
            Concern::Planning => "Planning guidelines",
            Concern::Coding => "Coding guidelines",
            Concern::Testing => "Testing guidelines",
            Concern::Validation => "Validation rules",
            Concern::Debugging => "Debugging guidelines",
            Concern::Security => "Security rules",
        }
    }

    /// The concerns a role's prompt carries, in prompt order.
    /// Planner: planning. TestDesigner: testing. Developer: coding, security,
    /// plus debugging when `rewriting` after a failure. Critic: debugging, validation.
    pub fn for_role(role: Role, rewriting: bool) -> Vec<Concern> {
        match role {
            Role::Planner => vec![Concern::Planning],
            Role::TestDesigner => vec![Concern::Testing],
            Role::Developer if rewriting => {
                vec![Concern::Coding, Concern::Security, Concern::Debugging]
            }
            Role::Developer => vec![Concern::Coding, Concern::Security],
            Role::Critic => vec![Concern::Debugging, Concern::Validation],
        }
    }

    fn index(self) -> usize {
        Concern::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }

    fn builtin_text(self) -> &'static str {
        match self {
            Concern::Architecture => include_str!("../../rag_contexts/architecture.md"),
            Concern::Planning => include_str!("../../rag_contexts/planning.md"),
            Concern::Coding => include_str!("../../rag_contexts/coding.md"),
            Concern::Testing => include_str!("../../rag_contexts/testing.md"),
            Concern::Validation => include_str!("../../rag_contexts/validation.md"),
            Concern::Debugging => include_str!("../../rag_contexts/debugging.md"),
            Concern::Security => include_str!("../../rag_contexts/security.md"),
        }
    }
}

impl std::fmt::Display for Concern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a passage came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded in the binary from the repository's `rag_contexts/`.
    Builtin,
    /// Read from this workspace override file.
    Override(PathBuf),
}

/// The passage text of every concern, already trimmed for prompts (title line,
/// HTML comments and repeated blank lines removed).
#[derive(Debug, Clone)]
pub struct Guidelines {
    passages: [String; 7],
    sources: [Source; 7],
}

impl Guidelines {
    /// The passages embedded in the binary.
    pub fn builtin() -> Guidelines {
        Guidelines {
            passages: Concern::ALL.map(|c| strip(c.builtin_text())),
            sources: Concern::ALL.map(|_| Source::Builtin),
        }
    }

    /// The built-in passages, each replaced by
    /// `<workspace_root>/.docsmith/rag_contexts/<concern>.md` when that file exists.
    /// An unreadable override (not UTF-8, permission denied) is logged and the
    /// built-in passage kept; an empty override deliberately disables its concern.
    /// Never fails.
    pub fn load(workspace_root: Option<&Path>) -> Guidelines {
        let mut g = Guidelines::builtin();
        let Some(root) = workspace_root else {
            return g;
        };
        let dir = root.join(OVERRIDE_DIR);
        if !dir.is_dir() {
            tracing::debug!(dir = %dir.display(), "no rag_contexts overrides; using built-in guidelines");
            return g;
        }
        for concern in Concern::ALL {
            let path = dir.join(format!("{}.md", concern.name()));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let text = strip(&text);
                    if text.is_empty() {
                        tracing::info!(path = %path.display(), %concern, "override is empty: concern disabled");
                    } else {
                        tracing::info!(path = %path.display(), %concern, "using workspace guideline override");
                    }
                    g.passages[concern.index()] = text;
                    g.sources[concern.index()] = Source::Override(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(), %concern, error = %e,
                    "cannot read guideline override (must be a readable UTF-8 file); using the built-in one"
                ),
            }
        }
        g
    }

    /// The trimmed passage of one concern (empty when an override disabled it).
    pub fn get(&self, concern: Concern) -> &str {
        &self.passages[concern.index()]
    }

    /// Where the passage of `concern` came from.
    pub fn source(&self, concern: Concern) -> &Source {
        &self.sources[concern.index()]
    }

    /// The passages for a role (see [`Concern::for_role`]), each under a
    /// `## <title>` heading, separated by blank lines; empty passages are left out.
    pub fn for_role(&self, role: Role, rewriting: bool) -> String {
        Concern::for_role(role, rewriting)
            .into_iter()
            .filter(|c| !self.get(*c).is_empty())
            .map(|c| format!("## {}\n{}", c.title(), self.get(c)))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// Trims a Markdown passage for a prompt: drops `<!-- -->` comments, a leading
/// `# Title` line, trailing spaces and repeated blank lines.
fn strip(md: &str) -> String {
    let mut text = String::with_capacity(md.len());
    let mut rest = md;
    while let Some(start) = rest.find("<!--") {
        text.push_str(&rest[..start]);
        rest = match rest[start..].find("-->") {
            Some(end) => &rest[start + end + 3..],
            None => "",
        };
    }
    text.push_str(rest);

    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    if let Some(first) = lines.iter().position(|l| !l.is_empty()) {
        if lines[first].starts_with("# ") {
            lines.remove(first);
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut blank = true; // swallows leading blank lines
    for line in lines {
        if line.is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
        } else {
            out.push_str(line);
            out.push('\n');
            blank = false;
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_files_are_short_and_non_empty() {
        for c in Concern::ALL {
            let raw = c.builtin_text();
            assert!(raw.len() < 2_000, "{c}.md is {} bytes", raw.len());
            let words = raw.split_whitespace().count();
            assert!((120..=300).contains(&words), "{c}.md has {words} words");
            let text = Guidelines::builtin().get(c).to_string();
            assert!(!text.is_empty(), "{c}");
            assert!(!text.contains("<!--"), "{c} keeps a comment");
            assert!(!text.starts_with("# "), "{c} keeps its title");
            assert!(!text.contains("\n\n\n"), "{c} keeps blank runs");
        }
    }

    #[test]
    fn strip_removes_title_comments_and_blank_runs() {
        let md = "\n# Title\n<!-- a\nmulti-line comment -->\nFirst line.  \n\n\n\n- item <!-- inline -->\n# Not a title\n<!-- unterminated";
        assert_eq!(strip(md), "First line.\n\n- item\n# Not a title");
        assert_eq!(strip("<!-- only -->\n\n"), "");
    }

    #[test]
    fn roles_get_the_expected_concerns() {
        use Concern::*;
        assert_eq!(Concern::for_role(Role::Planner, false), vec![Planning]);
        assert_eq!(Concern::for_role(Role::TestDesigner, true), vec![Testing]);
        assert_eq!(
            Concern::for_role(Role::Developer, false),
            vec![Coding, Security]
        );
        assert_eq!(
            Concern::for_role(Role::Developer, true),
            vec![Coding, Security, Debugging]
        );
        assert_eq!(
            Concern::for_role(Role::Critic, false),
            vec![Debugging, Validation]
        );

        let g = Guidelines::builtin();
        let dev = g.for_role(Role::Developer, false);
        assert!(dev.starts_with("## Coding guidelines\n"));
        assert!(dev.contains(g.get(Coding)) && dev.contains(g.get(Security)));
        assert!(!dev.contains(g.get(Debugging)));
        let rewrite = g.for_role(Role::Developer, true);
        assert!(
            rewrite.contains("## Debugging guidelines\n") && rewrite.contains(g.get(Debugging))
        );
        let critic = g.for_role(Role::Critic, false);
        assert!(critic.contains(g.get(Debugging)) && critic.contains(g.get(Validation)));
        assert!(!critic.contains(g.get(Coding)));
        assert_eq!(
            g.for_role(Role::Planner, false),
            format!("## Planning guidelines\n{}", g.get(Planning))
        );
    }

    #[test]
    fn workspace_override_replaces_only_its_concern() {
        let ws = tempfile::tempdir().unwrap();
        let dir = ws.path().join(OVERRIDE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("planning.md"),
            "# Mine\n<!-- note -->\nAlways ask.\n",
        )
        .unwrap();
        std::fs::write(dir.join("security.md"), "").unwrap();
        // An unreadable override (here a directory) falls back to the built-in text.
        std::fs::create_dir(dir.join("coding.md")).unwrap();

        let g = Guidelines::load(Some(ws.path()));
        let builtin = Guidelines::builtin();
        assert_eq!(g.get(Concern::Planning), "Always ask.");
        assert_eq!(
            g.source(Concern::Planning),
            &Source::Override(dir.join("planning.md"))
        );
        assert_eq!(
            g.for_role(Role::Planner, false),
            "## Planning guidelines\nAlways ask."
        );
        assert_eq!(g.get(Concern::Security), "");
        assert_eq!(
            g.for_role(Role::Developer, false),
            format!("## Coding guidelines\n{}", builtin.get(Concern::Coding))
        );
        assert_eq!(g.source(Concern::Coding), &Source::Builtin);
        assert_eq!(g.get(Concern::Testing), builtin.get(Concern::Testing));
    }

    #[test]
    fn missing_override_dir_falls_back_to_builtin() {
        let ws = tempfile::tempdir().unwrap();
        let builtin = Guidelines::builtin();
        for g in [Guidelines::load(Some(ws.path())), Guidelines::load(None)] {
            for c in Concern::ALL {
                assert_eq!(g.get(c), builtin.get(c));
                assert_eq!(g.source(c), &Source::Builtin);
            }
        }
    }
}
