//! docsmith: turns a Python function stub with a docstring into a working, tested function.
//!
//! Data flows one way: front ends (`cli`, `lsp`, `bench`) -> `pipeline` ->
//! `roles` -> (`llm`, `sandbox`, `checks`, `store`, `rag`); `sandbox` and
//! `checks` find and supervise host programs through `host`. `types` holds
//! the plain data they share. The front ends build a task's dependencies
//! through `runtime` (the composition root); `cli` dispatches to `lsp` and
//! `bench`, neither of which imports it, and only `main.rs` imports `cli`.
//! See ARCHITECTURE.md at the repository root.

pub mod bench;
pub mod checks;
pub mod cli;
pub mod config;
pub mod files;
pub mod host;
pub mod llm;
pub mod lsp;
pub mod models;
pub mod pipeline;
pub mod python;
pub mod rag;
pub mod roles;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod types;
