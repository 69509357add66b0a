//! The language-server front end: `docsmith serve` speaks LSP over stdio.
//!
//! Owns: the protocol edge (tower-lsp-server), open documents, code actions and
//! code lenses, `workspace/executeCommand`, background tasks with work-done
//! progress, review prompts, versioned workspace edits, configuration from
//! every door, and restoring tasks after a restart. It drives
//! `pipeline::TaskRun` exactly as the CLI does; the pipeline knows nothing of LSP.
//!
//! Concurrency rules: handlers never await a task's loop (commands spawn the
//! task and return at once); no lock is held across an `.await` (documents are
//! read and edited in synchronous blocks, state is cloned out first);
//! `didChange` applies its edits without awaiting, so the order tower-lsp-server
//! starts notification handlers in is the order edits are applied.
//!
//! Files: `documents` (rope + tree + positions), `protocol` (commands and their
//! typed arguments, shared with tests), `actions` (code actions, code lenses),
//! `commands` (what each command does), `tasks` (the per-task driver), `edits`
//! (stale check and text edits), `progress` (work-done progress), `errors`.

pub mod actions;
pub mod commands;
pub mod documents;
pub mod edits;
pub mod errors;
pub mod frames;
pub mod progress;
pub mod protocol;
pub mod tasks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::Semaphore;
use tower_lsp_server::jsonrpc::Result as RpcResult;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::config::Config;
use crate::pipeline::Deps;
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

/// Fixed for the life of the connection once `initialize` ran.
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

/// State shared by the handlers and the task drivers.
pub struct Inner {
    pub client: Client,
    pub docs: DashMap<Uri, Document>,
    pub session: OnceLock<Session>,
    runtime: RwLock<Option<Arc<Runtime>>>,
    /// Why there is no runtime (bad configuration), shown on use.
    runtime_error: RwLock<Option<String>>,
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
    pub shutting_down: AtomicBool,
}

impl Inner {
    fn new(client: Client) -> Inner {
        Inner {
            client,
            docs: DashMap::new(),
            session: OnceLock::new(),
            runtime: RwLock::new(None),
            runtime_error: RwLock::new(None),
            store: OnceLock::new(),
            init_options: Mutex::new(None),
            tasks: DashMap::new(),
            active: DashMap::new(),
            restored: DashMap::new(),
            queue: Arc::new(Semaphore::new(1)),
            permits: AtomicUsize::new(1),
            shutting_down: AtomicBool::new(false),
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

    /// Builds (or rebuilds) the runtime from `docsmith.toml` + environment +
    /// `initializationOptions` + `overlay` (the `docsmith` section of the
    /// client's settings). Unchanged providers keep their router (a loaded
    /// model stays loaded); an unchanged sandbox section keeps its sandbox.
    /// On error the previous runtime stays and the error is returned.
    pub fn configure(&self, overlay: Option<&Value>) -> Result<(), LspError> {
        let session = self.session()?;
        let mut cfg = Config::load(&session.root).map_err(|e| LspError::Config(e.to_string()))?;
        let init = self.init_options.lock().expect("init options lock").clone();
        for o in [init.as_ref(), overlay].into_iter().flatten() {
            cfg = cfg
                .overlay(o)
                .map_err(|e| LspError::Config(e.to_string()))?;
        }
        let previous = self.runtime.read().expect("runtime lock").clone();
        let store = match self.store.get() {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(
                    Store::open(&session.root.join(".docsmith").join("docsmith.db"))
                        .map_err(|e| LspError::Internal(e.to_string()))?,
                );
                self.store.get_or_init(|| s).clone()
            }
        };
        let mut deps = crate::cli::build_deps_with_store(&session.root, &cfg, store)
            .map_err(|(_, m)| LspError::Config(m))?;
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
        if let Err(e) = store.mark_running_as_interrupted() {
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

/// The tower-lsp-server backend: a thin shell over [`Inner`].
pub struct Backend {
    inner: Arc<Inner>,
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
        tracing::info!(?encoding, root = %root.display(), ?flags, "initialize");
        let _ = self.inner.session.set(Session {
            encoding,
            flags,
            root,
        });
        *self.inner.init_options.lock().expect("init options lock") =
            params.initialization_options.clone();
        if let Err(e) = self.inner.configure(None) {
            *self
                .inner
                .runtime_error
                .write()
                .expect("runtime error lock") = Some(e.to_string());
        }
        self.inner.restore();
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
                    commands: protocol::COMMANDS.iter().map(|c| c.to_string()).collect(),
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
        let inner = &self.inner;
        let config_error = inner.runtime_error.read().expect("lock").clone();
        if inner.session.get().is_some_and(|s| s.flags.configuration) {
            pull_configuration(inner).await;
        } else if let Some(e) = config_error {
            inner
                .client
                .show_message(MessageType::ERROR, format!("docsmith: {e}"))
                .await;
        }
        let n = inner.restored.len();
        if n > 0 {
            inner
                .client
                .log_message(
                    MessageType::INFO,
                    format!("docsmith: restored {n} task(s) from the previous session"),
                )
                .await;
            inner.refresh_lenses().await;
        }
    }

    async fn shutdown(&self) -> RpcResult<()> {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for t in self.inner.tasks.iter() {
            t.cancel.cancel();
        }
        // Give drivers a moment to kill their sandboxes and record the interruption.
        for _ in 0..40 {
            if self.inner.tasks.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn did_open(&self, p: DidOpenTextDocumentParams) {
        let d = p.text_document;
        self.inner
            .docs
            .insert(d.uri, Document::new(d.version, &d.language_id, &d.text));
    }

    async fn did_change(&self, p: DidChangeTextDocumentParams) {
        let Ok(enc) = self.inner.session().map(|s| s.encoding) else {
            return;
        };
        match self.inner.docs.get_mut(&p.text_document.uri) {
            Some(mut d) => d.apply_changes(p.text_document.version, p.content_changes, enc),
            None => tracing::warn!(
                uri = p.text_document.uri.as_str(),
                "didChange for a document that is not open; ignored"
            ),
        }
    }

    async fn did_close(&self, p: DidCloseTextDocumentParams) {
        self.inner.docs.remove(&p.text_document.uri);
    }

    async fn did_change_configuration(&self, p: DidChangeConfigurationParams) {
        let inner = &self.inner;
        if inner.session.get().is_some_and(|s| s.flags.configuration) {
            pull_configuration(inner).await;
        } else if let Err(e) = inner.configure(Some(&p.settings)) {
            inner
                .client
                .show_message(MessageType::ERROR, format!("docsmith: {e}"))
                .await;
        }
    }

    async fn code_action(&self, p: CodeActionParams) -> RpcResult<Option<CodeActionResponse>> {
        Ok(Some(actions::code_actions(&self.inner, &p)))
    }

    async fn code_lens(&self, p: CodeLensParams) -> RpcResult<Option<Vec<CodeLens>>> {
        Ok(Some(actions::code_lenses(
            &self.inner,
            &p.text_document.uri,
        )))
    }

    async fn execute_command(&self, p: ExecuteCommandParams) -> RpcResult<Option<Value>> {
        commands::execute(&self.inner, p)
            .await
            .map(Some)
            .map_err(Into::into)
    }
}

impl Backend {
    /// `window/workDoneProgress/cancel` (tower-lsp-server has no trait method for it).
    async fn work_done_progress_cancel(&self, p: WorkDoneProgressCancelParams) {
        if let Some(task) = progress::task_of(&p.token) {
            if let Some(t) = self.inner.tasks.get(&task) {
                tracing::info!(task, "cancelled from the progress UI");
                t.cancel.cancel();
            }
        }
    }
}

async fn pull_configuration(inner: &Inner) {
    let items = vec![ConfigurationItem {
        scope_uri: None,
        section: Some("docsmith".into()),
    }];
    let overlay = match inner.client.configuration(items).await {
        Ok(mut v) if !v.is_empty() => Some(v.remove(0)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("workspace/configuration failed: {e}");
            None
        }
    };
    if let Err(e) = inner.configure(overlay.as_ref()) {
        *inner.runtime_error.write().expect("lock") = Some(e.to_string());
        inner
            .client
            .show_message(MessageType::ERROR, format!("docsmith: {e}"))
            .await;
    }
}

/// Runs the server on stdin/stdout until the client sends `exit`. Nothing but
/// protocol traffic goes to stdout; logs go to stderr and to `log_file`.
pub async fn serve() {
    // tower-lsp-server reads with tokio-util's FramedRead, which ends the stream
    // after the first undecodable message: one malformed message would leave
    // the server deaf. Frames are checked here first; bad ones are logged and
    // dropped, good ones passed through unchanged.
    let (mut checked_tx, checked_rx) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        if let Err(e) = filter_frames(tokio::io::stdin(), &mut checked_tx).await {
            tracing::error!("reading stdin: {e}");
        }
    });
    let stdin = checked_rx;
    let stdout = tokio::io::stdout();
    let (service, socket) = LspService::build(|client| Backend {
        inner: Arc::new(Inner::new(client)),
    })
    .custom_method(
        "window/workDoneProgress/cancel",
        Backend::work_done_progress_cancel,
    )
    .finish();
    Server::new(stdin, stdout, socket).serve(service).await;
}

/// Where the server writes its log file: `$XDG_STATE_HOME/docsmith/server.log`
/// (or the platform's equivalent), falling back to the cache directory.
pub fn log_file() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "docsmith")?;
    let dir: &Path = dirs.state_dir().unwrap_or_else(|| dirs.cache_dir());
    Some(dir.join("server.log"))
}

/// Copies LSP frames from `input` to `output`, dropping (and logging) frames
/// without a usable `Content-Length` or whose body is not JSON. Returns at EOF.
pub async fn filter_frames<R, W>(input: R, output: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut r = tokio::io::BufReader::new(input);
    loop {
        let mut len: Option<usize> = None;
        let mut saw_header = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if saw_header {
                    break;
                }
                continue;
            }
            saw_header = true;
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok();
                }
            }
        }
        let Some(len) = len.filter(|n| *n <= 64 << 20) else {
            tracing::error!("dropped a message without a valid Content-Length header");
            continue;
        };
        let mut body = vec![0; len];
        r.read_exact(&mut body).await?;
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            tracing::error!(
                "dropped a malformed message ({e}): {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
            continue;
        }
        output
            .write_all(format!("Content-Length: {len}\r\n\r\n").as_bytes())
            .await?;
        output.write_all(&body).await?;
        output.flush().await?;
    }
}
