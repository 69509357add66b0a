//! The composition root: builds what a task needs ([`Deps`]) from a
//! [`Config`]: the providers' router, the sandbox, the workspace's store, the
//! guidelines and the loop's settings.
//!
//! Owns: which part of the configuration builds which piece, where a
//! workspace's store lives, and [`SetupError`], the one error type of all
//! that. The CLI, the language server and the bench all build through here;
//! none of them builds a piece itself, and none imports another. Must not
//! know about terminals, LSP or exit codes: each front end maps
//! [`SetupError`] to its own errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::llm::{LlmError, Router};
use crate::pipeline::{Deps, Settings};
use crate::rag::Guidelines;
use crate::roles::CodePrompt;
use crate::sandbox::{Sandbox, SandboxError};
use crate::store::{Store, StoreError};

/// Why the pieces of a task could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A role's provider (or a fallback) could not be built: not defined,
    /// a bad endpoint, or a provider kind this build lacks.
    #[error("providers: {0}")]
    Providers(#[source] LlmError),
    /// The sandbox cannot run here (no working bwrap, no interpreter for the
    /// sandbox user): a matter of installation or configuration.
    #[error("sandbox: {0}")]
    SandboxUnusable(#[source] SandboxError),
    /// The sandbox could not be set up for another reason (I/O).
    #[error("sandbox: {0}")]
    Sandbox(#[source] SandboxError),
    /// The workspace's store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl SetupError {
    /// Whether the user's installation or configuration is at fault (a
    /// provider, a sandbox that cannot run here), as opposed to an
    /// unexpected failure (I/O, the database).
    pub fn is_configuration(&self) -> bool {
        match self {
            SetupError::Providers(_) | SetupError::SandboxUnusable(_) => true,
            SetupError::Sandbox(_) | SetupError::Store(_) => false,
        }
    }
}

impl Deps {
    /// Everything a task in `workspace` needs, from `cfg`, around an already
    /// open `store` (the language server keeps one store for its life and
    /// rebuilds the rest when the configuration changes; others open it
    /// with [`open_store`]). The guidelines are the workspace's
    /// ([`Guidelines::load`]); `settings.interactive` is false, and a front
    /// end that can ask questions sets it.
    pub fn from_config(
        workspace: &Path,
        cfg: &Config,
        store: Arc<Store>,
    ) -> Result<Deps, SetupError> {
        Ok(Deps {
            router: Arc::new(router(cfg)?),
            sandbox: Arc::new(sandbox(cfg)?),
            store,
            guidelines: Arc::new(Guidelines::load(Some(workspace))),
            settings: settings(cfg),
        })
    }
}

/// The router of every role's provider chain (`[providers]`, `[roles]`).
/// A local model is not loaded here: that happens at its first call.
pub fn router(cfg: &Config) -> Result<Router, SetupError> {
    crate::config::build_router(cfg).map_err(SetupError::Providers)
}

/// The checked sandbox of `[sandbox]` (the interpreter and bwrap are probed now).
pub fn sandbox(cfg: &Config) -> Result<Sandbox, SetupError> {
    Ok(Sandbox::new(cfg.sandbox_config())?)
}

impl From<SandboxError> for SetupError {
    fn from(e: SandboxError) -> SetupError {
        if e.is_setup() {
            SetupError::SandboxUnusable(e)
        } else {
            SetupError::Sandbox(e)
        }
    }
}

/// The loop settings a configuration gives: its budgets and prompts; the
/// rest (`python3` for the checks, proposal files written, not interactive,
/// the checkers' timeout) as [`Settings::default`].
pub fn settings(cfg: &Config) -> Settings {
    Settings {
        max_refinements: cfg.max_refinements,
        candidates: cfg.candidates,
        sample_temperature: cfg.sample_temperature,
        top_p: cfg.top_p,
        code_prompt: CodePrompt::parse(&cfg.code_prompt).unwrap_or(CodePrompt::Plain),
        greedy_first: cfg.greedy_first,
        max_clarifications: cfg.max_clarifications,
        max_generated_tests: cfg.max_generated_tests,
        context_tokens: cfg.context_tokens,
        memory: cfg.memory,
        ..Settings::default()
    }
}

/// Where a workspace's store lives: `.docsmith/docsmith.db` under its root.
pub fn store_path(workspace: &Path) -> PathBuf {
    workspace.join(".docsmith").join("docsmith.db")
}

/// Opens (creating it when needed) the store of `workspace`.
pub fn open_store(workspace: &Path) -> Result<Store, SetupError> {
    Ok(Store::open(&store_path(workspace))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_the_configured_budgets_and_default_the_rest() {
        let cfg = Config {
            max_refinements: 3,
            candidates: 2,
            context_tokens: 99,
            code_prompt: "no-such-prompt".into(),
            ..Config::default()
        };
        let s = settings(&cfg);
        assert_eq!(
            (s.max_refinements, s.candidates, s.context_tokens),
            (3, 2, 99)
        );
        assert_eq!(
            s.code_prompt,
            CodePrompt::Plain,
            "an unknown prompt falls back"
        );
        let d = Settings::default();
        assert!(!s.interactive);
        assert_eq!(s.python, d.python);
        assert_eq!(s.check_timeout, d.check_timeout);
        assert!(s.write_proposal_files);
    }

    #[test]
    fn an_undefined_provider_is_a_configuration_error() {
        let mut cfg = Config::default();
        cfg.providers.clear();
        let e = router(&cfg).unwrap_err();
        assert!(matches!(e, SetupError::Providers(_)), "{e:?}");
        assert!(e.is_configuration());
        assert!(e.to_string().starts_with("providers: "), "{e}");
    }

    #[test]
    fn a_sandbox_that_cannot_run_here_is_a_configuration_error() {
        let e = SetupError::from(SandboxError::BwrapUnavailable {
            reason: "no user namespaces".into(),
        });
        assert!(matches!(e, SetupError::SandboxUnusable(_)), "{e:?}");
        assert!(e.is_configuration());
        assert!(e.to_string().contains("bubblewrap"), "{e}");
        let e = SetupError::from(SandboxError::PythonMissing {
            python: "python3".into(),
            detail: "not found".into(),
        });
        assert!(e.is_configuration());
        let e = SetupError::from(SandboxError::Io(std::io::Error::other("disk full")));
        assert!(matches!(e, SetupError::Sandbox(_)), "{e:?}");
        assert!(!e.is_configuration());
    }

    #[test]
    fn a_store_that_cannot_be_created_is_not_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        // `.docsmith` is a file: its database cannot be created under it.
        std::fs::write(dir.path().join(".docsmith"), "").unwrap();
        let e = open_store(dir.path()).unwrap_err();
        assert!(matches!(e, SetupError::Store(_)), "{e:?}");
        assert!(!e.is_configuration());
        assert_eq!(
            store_path(dir.path()),
            dir.path().join(".docsmith/docsmith.db")
        );
    }
}
