//! The language-server front end: `docsmith serve` speaks LSP over stdio.
//!
//! Owns: the protocol edge (tower-lsp-server), open documents, code actions and
//! code lenses, `workspace/executeCommand`, background tasks with work-done
//! progress, review prompts, versioned workspace edits, configuration from
//! every door (through `Config::load_layered`, so an untrusted workspace's
//! `docsmith.toml` sets harmless keys only), and restoring tasks after a restart. It drives
//! `pipeline::TaskRun` exactly as the CLI does; the pipeline knows nothing of LSP.
//!
//! Concurrency rules: handlers never await a task's loop (commands spawn the
//! task and return at once); no lock is held across an `.await` (documents are
//! read and edited in synchronous blocks, state is cloned out first);
//! `didChange` applies its edits without awaiting, so the order tower-lsp-server
//! starts notification handlers in is the order edits are applied.
//!
//! Files: `frames` (the framing layer between stdio and tower-lsp-server),
//! `documents` (rope + tree + positions), `protocol` (commands and their
//! typed arguments, shared with tests), `actions` (code actions, code lenses),
//! `commands` (what each command does, and what a review choice runs),
//! `tasks` (the per-task driver), `prompts` (`window/showMessageRequest`:
//! question, review, re-run), `edits` (stale check and text edits),
//! `progress` (work-done progress), `errors`.

pub mod actions;
pub mod commands;
pub mod documents;
pub mod edits;
pub mod errors;
pub mod frames;
pub mod progress;
pub mod prompts;
pub mod protocol;
pub mod tasks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::jsonrpc::Result as RpcResult;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::config::{Config, Trust};
use crate::pipeline::Deps;
use crate::runtime;
use crate::store::{Store, TaskRow, TaskStatus};
use documents::{Document, Encoding};
use errors::LspError;
use tasks::TaskEntry;

/// What the client said it can do (from `initialize`), reduced to the flags
/// the server acts on.
#[derive(Debug, Clone, Default)]
pub struct ClientFlags {
    /// `window.workDoneProgress`.
    pub progress: bool,
    /// `window.showMessage` (`window/showMessageRequest` with actions).
    pub message_request: bool,
    /// `window.showDocument.support`.
    pub show_document: bool,
    /// `workspace.codeLens.refreshSupport`.
    pub code_lens_refresh: bool,
    /// `workspace.configuration` (pull model).
    pub configuration: bool,
    /// `workspace.applyEdit`.
    pub apply_edit: bool,
    /// `workspace.workspaceEdit.documentChanges` (versioned edits).
    pub document_changes: bool,
    /// `workspace.workspaceEdit.changeAnnotationSupport`.
    pub change_annotations: bool,
    /// `workspace.workspaceEdit.resourceOperations` includes `create`.
    pub create_files: bool,
    /// `experimental.docsmith.prompts`: the client prompts for free text itself.
    pub prompts_in_client: bool,
}

impl ClientFlags {
    fn from_capabilities(caps: &ClientCapabilities) -> ClientFlags {
        let window = caps.window.as_ref();
        let ws = caps.workspace.as_ref();
        let we = ws.and_then(|w| w.workspace_edit.as_ref());
        ClientFlags {
            progress: window.and_then(|w| w.work_done_progress).unwrap_or(false),
            message_request: window.and_then(|w| w.show_message.as_ref()).is_some(),
            show_document: window
                .and_then(|w| w.show_document.as_ref())
                .is_some_and(|s| s.support),
            code_lens_refresh: ws
                .and_then(|w| w.code_lens.as_ref())
                .and_then(|c| c.refresh_support)
                .unwrap_or(false),
            configuration: ws.and_then(|w| w.configuration).unwrap_or(false),
            apply_edit: ws.and_then(|w| w.apply_edit).unwrap_or(false),
            document_changes: we.and_then(|e| e.document_changes).unwrap_or(false),
            change_annotations: we
                .and_then(|e| e.change_annotation_support.as_ref())
                .is_some(),
            create_files: we
                .and_then(|e| e.resource_operations.as_ref())
                .is_some_and(|ops| ops.contains(&ResourceOperationKind::Create)),
            prompts_in_client: caps
                .experimental
                .as_ref()
                .and_then(|x| x.get("docsmith"))
                .and_then(|d| d.get(protocol::EXPERIMENTAL_PROMPTS))
                .and_then(|p| p.as_bool())
                .unwrap_or(false),
        }
    }
}

/// What `initialize` settled for the life of the connection: the position
/// encoding, what the client can do, and the workspace root. Set once; the
/// rest of the server's state is [`ServerState`].
#[derive(Debug, Clone)]
pub struct Session {
    pub encoding: Encoding,
    pub flags: ClientFlags,
    /// Workspace root: `.docsmith/`, `docsmith.toml`, proposals live here.
    pub root: PathBuf,
}

/// Configuration and the pipeline's dependencies built from it; replaced as a
/// whole when the configuration changes (running tasks keep the one they began with).
pub struct Runtime {
    pub config: Config,
    pub deps: Deps,
}

/// A task from an earlier server process, restored from the store: a proposal
/// awaiting review (accept, reject, diff still work) or an interrupted task.
#[derive(Debug, Clone)]
pub struct Restored {
    pub row: TaskRow,
    pub uri: Uri,
}

/// The language server's state, shared by the request handlers (through
/// [`Backend`]) and the task drivers: the client connection, open documents,
/// the [`Session`], the configuration's [`Runtime`], the store, and the live
/// and restored tasks.
pub struct ServerState {
    pub client: Client,
    pub docs: DashMap<Uri, Document>,
    pub session: OnceLock<Session>,
    runtime: RwLock<Option<Arc<Runtime>>>,
    /// Why there is no runtime (bad configuration), shown on use.
    runtime_error: RwLock<Option<String>>,
    /// Warnings of the last configuration (ignored keys of an untrusted
    /// workspace), and those already shown (each is shown once).
    config_warnings: Mutex<Vec<String>>,
    shown_warnings: Mutex<std::collections::HashSet<String>>,
    store: OnceLock<Arc<Store>>,
    init_options: Mutex<Option<Value>>,
    /// Live tasks (queued, running, waiting for an answer or a review) by task id.
    pub tasks: DashMap<i64, Arc<TaskEntry>>,
    /// (uri, function) -> the live task working on it; one task per function.
    pub active: DashMap<(Uri, String), i64>,
    /// Tasks restored from the store at start-up, by task id.
    pub restored: DashMap<i64, Restored>,
    /// Concurrency limit for running tasks (queued tasks wait here).
    pub queue: Arc<Semaphore>,
    permits: AtomicUsize,
    /// Set once the server stops (`shutdown`, `exit`, stdin closed, editor
    /// gone): a task cancelled from then on was interrupted, not cancelled.
    pub shutting_down: AtomicBool,
    /// Cancelled when the editor is gone (stdin closed or its process ended).
    gone: CancellationToken,
}

impl ServerState {
    fn new(client: Client, gone: CancellationToken) -> ServerState {
        ServerState {
            client,
            docs: DashMap::new(),
            session: OnceLock::new(),
            runtime: RwLock::new(None),
            runtime_error: RwLock::new(None),
            config_warnings: Mutex::new(Vec::new()),
            shown_warnings: Mutex::new(std::collections::HashSet::new()),
            store: OnceLock::new(),
            init_options: Mutex::new(None),
            tasks: DashMap::new(),
            active: DashMap::new(),
            restored: DashMap::new(),
            queue: Arc::new(Semaphore::new(1)),
            permits: AtomicUsize::new(1),
            shutting_down: AtomicBool::new(false),
            gone,
        }
    }

    /// Stops every live task and waits up to `limit` for each to record how it
    /// ended: a running task (or one waiting for an answer) as interrupted, a
    /// proposal as still awaiting review (`tasks::cancelled`). Then writes the
    /// store's log into the database file. Safe to call more than once.
    pub async fn wind_down(&self, limit: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for t in self.tasks.iter() {
            t.cancel.cancel();
        }
        let deadline = Instant::now() + limit;
        while !self.tasks.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.tasks.is_empty() {
            // Their rows still say running; the next start marks them interrupted.
            tracing::warn!(
                tasks = self.tasks.len(),
                "tasks still stopping at exit; the next start marks them interrupted"
            );
        }
        if let Some(store) = self.store() {
            if let Err(e) = store.checkpoint() {
                tracing::warn!("cannot checkpoint the store: {e}");
            }
        }
    }

    /// The session; errors before `initialize`.
    pub fn session(&self) -> Result<&Session, LspError> {
        self.session.get().ok_or(LspError::NotInitialized)
    }

    /// The current runtime; errors with the configuration problem when there is none.
    pub fn runtime(&self) -> Result<Arc<Runtime>, LspError> {
        if let Some(rt) = self.runtime.read().expect("runtime lock").clone() {
            return Ok(rt);
        }
        let why = self
            .runtime_error
            .read()
            .expect("runtime error lock")
            .clone()
            .unwrap_or_else(|| "the server is not initialized yet".into());
        Err(LspError::Config(why))
    }

    /// Builds (or rebuilds) the runtime from the layered configuration
    /// (`Config::load_layered`: user-level file, the workspace's
    /// `docsmith.toml` as far as it is trusted, environment,
    /// `initializationOptions`, then `overlay`, the `docsmith` section of the
    /// client's settings); its warnings wait in `config_warnings` for
    /// [`ServerState::show_config_problems`]. Unchanged providers keep their router (a loaded
    /// model stays loaded); an unchanged sandbox section keeps its sandbox.
    /// On error the previous runtime stays and the error is returned.
    pub fn configure(&self, overlay: Option<&Value>) -> Result<(), LspError> {
        let session = self.session()?;
        let init = self.init_options.lock().expect("init options lock").clone();
        let editor: Vec<&Value> = [init.as_ref(), overlay].into_iter().flatten().collect();
        // The editor's settings are the user's own; the workspace's
        // docsmith.toml applies whole only when the workspace is trusted.
        let loaded = Config::load_layered(&session.root, Trust::UserDecides, &editor)
            .map_err(|e| LspError::Config(e.to_string()))?;
        *self.config_warnings.lock().expect("config warnings lock") = loaded.warnings;
        let cfg = loaded.config;
        let previous = self.runtime.read().expect("runtime lock").clone();
        let store = match self.store.get() {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(runtime::open_store(&session.root)?);
                self.store.get_or_init(|| s).clone()
            }
        };
        let mut deps = Deps::from_config(&session.root, &cfg, store)?;
        deps.settings.interactive = session.flags.message_request;
        if let Some(prev) = &previous {
            if prev.config.providers == cfg.providers && prev.config.roles == cfg.roles {
                deps.router = prev.deps.router.clone();
            }
            if prev.config.sandbox == cfg.sandbox {
                deps.sandbox = prev.deps.sandbox.clone();
            }
        }
        self.set_concurrency(cfg.concurrency());
        *self.runtime.write().expect("runtime lock") =
            Some(Arc::new(Runtime { config: cfg, deps }));
        *self.runtime_error.write().expect("runtime error lock") = None;
        Ok(())
    }

    /// Shows the configuration's problems with `window/showMessage`: `error`
    /// (the configuration was refused) as an error, and each warning not
    /// shown before (say, the keys an untrusted workspace's `docsmith.toml`
    /// could not set) as a warning.
    pub async fn show_config_problems(&self, error: Option<String>) {
        if let Some(e) = error {
            self.client
                .show_message(MessageType::ERROR, format!("docsmith: {e}"))
                .await;
        }
        let fresh: Vec<String> = {
            let current = self.config_warnings.lock().expect("config warnings lock");
            let mut shown = self.shown_warnings.lock().expect("shown warnings lock");
            current
                .iter()
                .filter(|w| shown.insert((*w).clone()))
                .cloned()
                .collect()
        };
        for w in fresh {
            tracing::warn!("{w}");
            self.client
                .show_message(MessageType::WARNING, format!("docsmith: {w}"))
                .await;
        }
    }

    fn set_concurrency(&self, n: usize) {
        let old = self.permits.swap(n, Ordering::SeqCst);
        if n > old {
            self.queue.add_permits(n - old);
        } else if n < old {
            // Permits held by running tasks are forgotten as they come back.
            let q = self.queue.clone();
            let k = old - n;
            tokio::spawn(async move {
                if let Ok(p) = q.acquire_many_owned(k as u32).await {
                    p.forget();
                }
            });
        }
    }

    /// The store, once `initialize` opened it.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.get().cloned()
    }

    /// The text of a document and its version: the open document's, else the
    /// file on disk (version `None`).
    pub fn snapshot(&self, uri: &Uri) -> Result<(Arc<str>, Option<i32>), LspError> {
        if let Some(d) = self.docs.get(uri) {
            return Ok((d.text(), Some(d.version)));
        }
        let path = uri_path(uri)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LspError::Document(format!("{}: {e}", path.display())))?;
        Ok((Arc::from(text), None))
    }

    /// Asks the client to re-request code lenses, when it can.
    pub async fn refresh_lenses(&self) {
        if self
            .session
            .get()
            .is_some_and(|s| s.flags.code_lens_refresh)
        {
            let _ = self.client.code_lens_refresh().await;
        }
    }

    /// Restores ready proposals and interrupted tasks from the store; tasks a
    /// previous process left running become interrupted first.
    fn restore(&self) {
        let Some(store) = self.store() else { return };
        if let Err(e) = crate::pipeline::interrupt_left_over(&store) {
            tracing::warn!("cannot mark interrupted tasks: {e}");
        }
        let rows = match store
            .tasks_with_status(&[TaskStatus::AwaitingReview, TaskStatus::Interrupted], 200)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot restore tasks: {e}");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for row in rows {
            // Newest first: only the newest task per function is restored.
            if !seen.insert((row.file.clone(), row.function.clone())) {
                continue;
            }
            let Some(uri) = Uri::from_file_path(&row.file) else {
                continue;
            };
            self.restored.insert(row.id.0, Restored { row, uri });
        }
        tracing::info!(tasks = self.restored.len(), "restored tasks from the store");
    }
}

/// The file path of a `file:` URI.
pub fn uri_path(uri: &Uri) -> Result<PathBuf, LspError> {
    uri.to_file_path()
        .map(|p| p.into_owned())
        .ok_or_else(|| LspError::Document(format!("{} is not a file: URI", uri.as_str())))
}

/// The tower-lsp-server backend: a thin shell over [`ServerState`].
pub struct Backend {
    state: Arc<ServerState>,
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> RpcResult<InitializeResult> {
        let encoding = Encoding::negotiate(
            params
                .capabilities
                .general
                .as_ref()
                .and_then(|g| g.position_encodings.as_deref()),
        );
        #[allow(deprecated)]
        let root = params
            .workspace_folders
            .as_ref()
            .and_then(|f| f.first())
            .and_then(|f| f.uri.to_file_path().map(|p| p.into_owned()))
            .or_else(|| {
                params
                    .root_uri
                    .as_ref()
                    .and_then(|u| u.to_file_path().map(|p| p.into_owned()))
            })
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let flags = ClientFlags::from_capabilities(&params.capabilities);
        tracing::info!(?encoding, root = %root.display(), ?flags, process_id = ?params.process_id, "initialize");
        if let Some(pid) = params.process_id {
            if self.state.session.get().is_none() {
                watch_parent(pid, self.state.gone.clone());
            }
        }
        let _ = self.state.session.set(Session {
            encoding,
            flags,
            root,
        });
        *self.state.init_options.lock().expect("init options lock") =
            params.initialization_options.clone();
        if let Err(e) = self.state.configure(None) {
            *self
                .state
                .runtime_error
                .write()
                .expect("runtime error lock") = Some(e.to_string());
        }
        self.state.restore();
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(encoding.kind()),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        ..Default::default()
                    },
                )),
                code_action_provider: Some(CodeActionProviderCapability::Options(
                    CodeActionOptions {
                        code_action_kinds: Some(vec![CodeActionKind::REFACTOR_REWRITE]),
                        resolve_provider: Some(false),
                        work_done_progress_options: Default::default(),
                    },
                )),
                code_lens_provider: Some(CodeLensOptions {
                    resolve_provider: Some(false),
                }),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: protocol::Command::NAMES
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                    work_done_progress_options: Default::default(),
                }),
                ..Default::default()
            },
            server_info: Some(ServerInfo {
                name: "docsmith".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let state = &self.state;
        let config_error = state.runtime_error.read().expect("lock").clone();
        if state.session.get().is_some_and(|s| s.flags.configuration) {
            pull_configuration(state).await;
        } else {
            state.show_config_problems(config_error).await;
        }
        let n = state.restored.len();
        if n > 0 {
            state
                .client
                .log_message(
                    MessageType::INFO,
                    format!("docsmith: restored {n} task(s) from the previous session"),
                )
                .await;
            state.refresh_lenses().await;
        }
    }

    async fn shutdown(&self) -> RpcResult<()> {
        self.state.wind_down(SHUTDOWN_WAIT).await;
        Ok(())
    }

    async fn did_open(&self, p: DidOpenTextDocumentParams) {
        let d = p.text_document;
        self.state
            .docs
            .insert(d.uri, Document::new(d.version, &d.language_id, &d.text));
    }

    async fn did_change(&self, p: DidChangeTextDocumentParams) {
        let Ok(enc) = self.state.session().map(|s| s.encoding) else {
            return;
        };
        match self.state.docs.get_mut(&p.text_document.uri) {
            Some(mut d) => d.apply_changes(p.text_document.version, p.content_changes, enc),
            None => tracing::warn!(
                uri = p.text_document.uri.as_str(),
                "didChange for a document that is not open; ignored"
            ),
        }
    }

    async fn did_close(&self, p: DidCloseTextDocumentParams) {
        self.state.docs.remove(&p.text_document.uri);
    }

    async fn did_change_configuration(&self, p: DidChangeConfigurationParams) {
        let state = &self.state;
        if state.session.get().is_some_and(|s| s.flags.configuration) {
            pull_configuration(state).await;
        } else {
            let error = state.configure(Some(&p.settings)).err();
            state
                .show_config_problems(error.map(|e| e.to_string()))
                .await;
        }
    }

    async fn code_action(&self, p: CodeActionParams) -> RpcResult<Option<CodeActionResponse>> {
        Ok(Some(actions::code_actions(&self.state, &p)))
    }

    async fn code_lens(&self, p: CodeLensParams) -> RpcResult<Option<Vec<CodeLens>>> {
        Ok(Some(actions::code_lenses(
            &self.state,
            &p.text_document.uri,
        )))
    }

    async fn execute_command(&self, p: ExecuteCommandParams) -> RpcResult<Option<Value>> {
        commands::execute(&self.state, p)
            .await
            .map(Some)
            .map_err(Into::into)
    }
}

impl Backend {
    /// `window/workDoneProgress/cancel` (tower-lsp-server has no trait method for it).
    async fn work_done_progress_cancel(&self, p: WorkDoneProgressCancelParams) {
        if let Some(task) = progress::task_of(&p.token) {
            if let Some(t) = self.state.tasks.get(&task) {
                tracing::info!(task, "cancelled from the progress UI");
                t.cancel.cancel();
            }
        }
    }
}

async fn pull_configuration(state: &ServerState) {
    let items = vec![ConfigurationItem {
        scope_uri: None,
        section: Some("docsmith".into()),
    }];
    let overlay = match state.client.configuration(items).await {
        Ok(mut v) if !v.is_empty() => Some(v.remove(0)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("workspace/configuration failed: {e}");
            None
        }
    };
    let error = state
        .configure(overlay.as_ref())
        .err()
        .map(|e| e.to_string());
    if let Some(e) = &error {
        *state.runtime_error.write().expect("lock") = Some(e.clone());
    }
    state.show_config_problems(error).await;
}

/// How long `shutdown` waits for live tasks to stop and record how they ended.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// The same wait when the editor is gone (stdin closed, its process ended):
/// nobody waits for an answer, and the process should be gone within 2 s.
const GONE_WAIT: Duration = Duration::from_millis(1000);
/// How long queued output may take to be written before the process exits.
const OUTPUT_DRAIN: Duration = Duration::from_millis(300);
/// How often the editor's process (`processId` from `initialize`) is checked.
pub const PARENT_POLL: Duration = Duration::from_secs(2);

/// Runs the server on stdin/stdout until the client sends `exit`, stdin
/// closes, or the editor's process (`processId`) ends. Live tasks are stopped
/// first (running ones recorded as interrupted; proposals keep waiting for
/// review). Nothing but protocol traffic goes to stdout; logs go to stderr and
/// to `log_file`.
pub async fn serve() {
    let (out, writer) = frames::Output::start(tokio::io::stdout());
    let (to_server, from_frames) = tokio::io::duplex(1 << 20);
    // Stdin closed, or the editor's process is gone.
    let gone = CancellationToken::new();
    let reader = tokio::spawn({
        let (out, gone) = (out.clone(), gone.clone());
        async move {
            match frames::pump(tokio::io::stdin(), to_server, out).await {
                Ok(()) => tracing::info!("stdin closed; stopping"),
                Err(e) => tracing::error!("reading stdin: {e}; stopping"),
            }
            gone.cancel();
        }
    });
    let slot: Arc<OnceLock<Arc<ServerState>>> = Arc::new(OnceLock::new());
    let (service, socket) = LspService::build({
        let (slot, gone) = (slot.clone(), gone.clone());
        move |client| {
            let state = Arc::new(ServerState::new(client, gone));
            let _ = slot.set(state.clone());
            Backend { state }
        }
    })
    .custom_method(
        "window/workDoneProgress/cancel",
        Backend::work_done_progress_cancel,
    )
    .finish();
    let server = Server::new(from_frames, out.sink(), socket).serve(service);
    let wait = tokio::select! {
        _ = server => SHUTDOWN_WAIT,
        _ = gone.cancelled() => GONE_WAIT,
    };
    // The server future is dropped here: requests to the client fail at once
    // instead of waiting for answers that will not come.
    if let Some(state) = slot.get() {
        state.wind_down(wait).await;
    }
    reader.abort();
    let _ = reader.await;
    drop(out);
    let _ = tokio::time::timeout(OUTPUT_DRAIN, writer).await;
}

/// Watches the editor's process: cancels `gone` once `pid` no longer exists
/// (`kill(pid, 0)` fails with ESRCH). A pid that does not exist when watching
/// starts (another PID namespace, a container) is not watched.
fn watch_parent(pid: u32, gone: CancellationToken) {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return;
    };
    if raw <= 0 {
        return;
    }
    let alive = move || {
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(raw, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    };
    if !alive() {
        tracing::warn!(
            pid,
            "the editor's processId does not exist here (another PID namespace?); not watching it"
        );
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = gone.cancelled() => return,
                _ = tokio::time::sleep(PARENT_POLL) => {}
            }
            if !alive() {
                tracing::info!(pid, "the editor's process is gone; stopping");
                gone.cancel();
                return;
            }
        }
    });
}

/// Where the server writes its log file: `$XDG_STATE_HOME/docsmith/server.log`
/// (or the platform's equivalent), falling back to the cache directory.
pub fn log_file() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "docsmith")?;
    let dir: &Path = dirs.state_dir().unwrap_or_else(|| dirs.cache_dir());
    Some(dir.join("server.log"))
}
