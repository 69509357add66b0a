// The docsmith VS Code extension: starts `docsmith serve`, and adds what LSP
// cannot: input boxes for feedback and free-text answers, a diff view of the
// proposal, a status bar for tasks, and settings in the Settings UI.

import * as cp from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as vscode from 'vscode';
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  MessageActionItem,
  ServerOptions,
  ShowMessageRequest,
  ShowMessageRequestParams,
  StaticFeature,
} from 'vscode-languageclient/node';
import { functionInTitle, promptInfo, refineArgs, statusText } from './args';
import * as P from './protocol';
import { toServerConfig } from './settings';

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
const tasks = new Map<number, P.TaskChangedParams>();

/** Where `docsmith` is: the setting, else the bundled binary, else PATH. */
export function findServer(extensionPath: string): { path?: string; error?: string } {
  const configured = vscode.workspace.getConfiguration('docsmith').get<string>('serverPath')?.trim();
  if (configured) {
    return fs.existsSync(configured)
      ? { path: configured }
      : { error: `docsmith.serverPath is ${configured}, which does not exist. Fix the setting, or clear it to use the bundled binary or \`docsmith\` on PATH.` };
  }
  const bundled = path.join(extensionPath, 'bin', process.platform === 'win32' ? 'docsmith.exe' : 'docsmith');
  if (fs.existsSync(bundled)) return { path: bundled };
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'docsmith');
    if (dir && fs.existsSync(p)) return { path: p };
  }
  return {
    error: 'docsmith: no server binary found. Set docsmith.serverPath to the `docsmith` binary, or install it on PATH (`cargo install --path server` in the docsmith repository).',
  };
}

/** Tells the server this client prompts for free text itself. */
class PromptsFeature implements StaticFeature {
  fillClientCapabilities(caps: any): void {
    caps.experimental = { ...(caps.experimental ?? {}), docsmith: { prompts: true } };
  }
  initialize(): void {}
  getState(): any {
    return { kind: 'static' };
  }
  clear(): void {}
}

async function run<C extends keyof P.CommandArgs>(command: C, arg: P.CommandArgs[C]): Promise<any> {
  if (!client) throw new Error('docsmith is not running');
  return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: [arg] });
}

function report(e: unknown) {
  const msg = e instanceof Error ? e.message : String((e as any)?.message ?? e);
  vscode.window.showErrorMessage(msg.startsWith('docsmith') ? msg : `docsmith: ${msg}`);
}

function renderStatus() {
  const s = statusText([...tasks.values()]);
  status.text = s.text;
  status.tooltip = s.tooltip;
  status.command = s.command;
  status.show();
}

async function pickTask(phases: P.TaskPhase[], verb: string): Promise<P.TaskChangedParams | undefined> {
  const doc = vscode.window.activeTextEditor?.document.uri.toString();
  const list = [...tasks.values()].filter((t) => phases.includes(t.phase));
  list.sort((a, b) => Number(b.uri === doc) - Number(a.uri === doc));
  if (list.length === 0) {
    vscode.window.showInformationMessage(`docsmith: no task to ${verb}`);
    return undefined;
  }
  if (list.length === 1) return list[0];
  const pick = await vscode.window.showQuickPick(
    list.map((t) => ({ label: t.name, description: `#${t.task} ${t.message}`, t })),
    { placeHolder: `Task to ${verb}` },
  );
  return pick?.t;
}

async function askFeedback(name: string, what: string): Promise<string | undefined> {
  const fb = await vscode.window.showInputBox({
    title: `docsmith: ${what} ${name}`,
    prompt: 'What should change? (the critic reads this before the next attempt)',
    ignoreFocusOut: true,
  });
  return fb && fb.trim() ? fb.trim() : undefined;
}

/**
 * The proposal's diff, with its review (report.md: how the code was chosen,
 * the planner's understanding and assumptions, the tests by source and
 * result, dropped tests, findings) rendered beside it.
 */
async function showDiff(task: number) {
  const files: P.ProposalFiles = await run(P.SHOW_DIFF, { task, open: false } satisfies P.ShowDiffArgs);
  const name = tasks.get(task)?.name ?? `task ${task}`;
  await vscode.commands.executeCommand(
    'vscode.diff',
    vscode.Uri.file(files.original),
    vscode.Uri.file(files.code),
    `docsmith: ${name} (before ↔ proposal)`,
  );
  if (!fs.existsSync(files.report)) {
    output.warn(`docsmith: no review beside the diff: ${files.report} does not exist`);
    return;
  }
  const report = vscode.Uri.file(files.report);
  try {
    // The built-in Markdown extension; a VS Code without it gets the source.
    await vscode.commands.executeCommand('markdown.showPreviewToSide', report);
  } catch (e) {
    output.warn(`docsmith: markdown preview unavailable (${e}); showing ${files.report} as text`);
    await vscode.window.showTextDocument(report, { viewColumn: vscode.ViewColumn.Beside, preview: true, preserveFocus: true });
  }
}

async function reject(t: P.TaskChangedParams): Promise<boolean> {
  const feedback = await askFeedback(t.name, 'reject the proposal for');
  if (!feedback) return false;
  await run(P.REJECT, { task: t.task, feedback } satisfies P.RejectArgs);
  return true;
}

/** The review prompt: Accept returns the server's item (it applies the edit). */
async function reviewPrompt(task: number, params: ShowMessageRequestParams): Promise<MessageActionItem | null> {
  const item = (title: string) => params.actions?.find((a) => a.title === title) ?? null;
  for (;;) {
    const choice = await vscode.window.showInformationMessage(
      params.message, 'Accept', 'Reject with feedback…', 'Show diff', 'Discard',
    );
    const t = tasks.get(task) ?? { task, name: `task ${task}` } as P.TaskChangedParams;
    switch (choice) {
      case 'Accept': return item(P.REVIEW_ACCEPT);
      case 'Discard': return item(P.REVIEW_DISCARD);
      case 'Show diff': await showDiff(task).catch(report); continue;
      case 'Reject with feedback…':
        try { if (await reject(t)) return null; } catch (e) { report(e); }
        continue;
      default: return null; // dismissed: the lens and the commands still offer the choices
    }
  }
}

/** A clarifying question: the planner's answers, free text, or its assumptions. */
async function questionPrompt(task: number, params: ShowMessageRequestParams): Promise<MessageActionItem | null> {
  const actions = params.actions ?? [];
  const item = (title: string) => actions.find((a) => a.title === title) ?? null;
  const options = actions.filter((a) => a.title !== P.QUESTION_FREE_TEXT && a.title !== P.QUESTION_CANCEL);
  const picks = [
    ...options.map((a) => ({ label: a.title })),
    { label: P.QUESTION_FREE_TEXT, description: 'type your own answer' },
    { label: "Use the planner's assumptions" },
  ];
  const pick = await vscode.window.showQuickPick(picks, { title: params.message, ignoreFocusOut: true });
  if (!pick) return item(P.QUESTION_CANCEL);
  if (pick.label === P.QUESTION_FREE_TEXT) {
    const answer = await vscode.window.showInputBox({ title: params.message, ignoreFocusOut: true });
    if (!answer?.trim()) return item(P.QUESTION_CANCEL);
    await run(P.ANSWER, { task, answer: answer.trim() } satisfies P.AnswerArgs);
    return item(P.QUESTION_FREE_TEXT);
  }
  return item(pick.label) ?? item(P.QUESTION_CANCEL);
}

async function codeActionAt(prefix: string): Promise<vscode.Command | undefined> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) return undefined;
  const pos = editor.selection.active;
  const actions = await vscode.commands.executeCommand<vscode.CodeAction[]>(
    'vscode.executeCodeActionProvider', editor.document.uri, new vscode.Range(pos, pos),
  );
  return actions?.find((a) => a.title.startsWith(prefix))?.command;
}

function startClient(ctx: vscode.ExtensionContext): LanguageClient | undefined {
  const server = findServer(ctx.extensionPath);
  if (!server.path) {
    vscode.window.showErrorMessage(server.error!, 'Open Settings').then((c) => {
      if (c) vscode.commands.executeCommand('workbench.action.openSettings', 'docsmith.serverPath');
    });
    return undefined;
  }
  output.appendLine(`docsmith: starting ${server.path} serve`);
  const serverOptions: ServerOptions = { command: server.path, args: ['serve'] };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file', language: 'python' }],
    outputChannel: output,
    synchronize: { configurationSection: 'docsmith' },
    middleware: {
      workspace: {
        configuration: (params) => params.items.map((it) => {
          if (it.section !== 'docsmith') return null;
          const mapped = toServerConfig((k) => vscode.workspace.getConfiguration('docsmith').get(k));
          for (const e of mapped.errors) vscode.window.showWarningMessage(e);
          return mapped.config;
        }),
      },
      // Code actions run server commands; where the server needs text, ask for it here.
      executeCommand: async (command, args, next) => {
        const a = (args?.[0] ?? {}) as any;
        if (command === P.REFINE && !a.feedback) {
          const fb = await askFeedback(a.name, 'refine');
          if (!fb) return undefined;
          return next(command, [refineArgs(a, fb)]);
        }
        if (command === P.REJECT && !a.feedback) {
          const t = tasks.get(a.task) ?? ({ task: a.task, name: `task ${a.task}` } as P.TaskChangedParams);
          return reject(t).catch(report);
        }
        if (command === P.SHOW_DIFF && a.open === undefined) return showDiff(a.task).catch(report);
        return next(command, args);
      },
    },
  };
  const c = new LanguageClient('docsmith', 'docsmith', serverOptions, clientOptions);
  c.registerFeature(new PromptsFeature());
  c.onNotification(P.TASK_CHANGED, (p: P.TaskChangedParams) => {
    tasks.set(p.task, p);
    renderStatus();
    if (P.isTerminal(p.phase)) {
      setTimeout(() => { if (tasks.get(p.task)?.phase === p.phase) { tasks.delete(p.task); renderStatus(); } }, 4000);
    }
  });
  c.onRequest(ShowMessageRequest.type, async (params) => {
    const info = promptInfo(params.actions as any);
    if (info?.kind === 'review') return reviewPrompt(info.task, params);
    if (info?.kind === 'question') return questionPrompt(info.task, params);
    const titles = (params.actions ?? []).map((a) => a.title);
    const pick = params.type === 1
      ? await vscode.window.showErrorMessage(params.message, ...titles)
      : params.type === 2
        ? await vscode.window.showWarningMessage(params.message, ...titles)
        : await vscode.window.showInformationMessage(params.message, ...titles);
    return params.actions?.find((a) => a.title === pick) ?? null;
  });
  c.start().catch(report);
  return c;
}

export function activate(ctx: vscode.ExtensionContext) {
  output = vscode.window.createOutputChannel('docsmith', { log: true });
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 100);
  status.name = 'docsmith';
  ctx.subscriptions.push(output, status);
  renderStatus();
  client = startClient(ctx);

  const cmd = (id: string, f: () => Promise<unknown>) =>
    ctx.subscriptions.push(vscode.commands.registerCommand(id, () => f().catch(report)));

  cmd('docsmith.ui.generate', async () => {
    const c = await codeActionAt('Generate `');
    if (!c) return void vscode.window.showInformationMessage('docsmith: put the cursor in a stub with a docstring');
    await vscode.commands.executeCommand(c.command, ...(c.arguments ?? []));
  });
  cmd('docsmith.ui.refine', async () => {
    const c = await codeActionAt('Refine `');
    if (!c) return void vscode.window.showInformationMessage('docsmith: put the cursor in a function');
    const base = c.arguments?.[0] as P.FunctionArgs;
    const fb = await askFeedback(base.name ?? functionInTitle(c.title) ?? '', 'refine');
    if (fb) await run(P.REFINE, refineArgs(base, fb));
  });
  cmd('docsmith.ui.accept', async () => {
    const t = await pickTask(['review'], 'accept');
    if (!t) return;
    const r: P.Applied = await run(P.ACCEPT, { task: t.task } satisfies P.TaskArgs);
    if (!r.applied) vscode.window.showWarningMessage(`docsmith: not applied: ${r.reason}`);
  });
  cmd('docsmith.ui.reject', async () => {
    const t = await pickTask(['review'], 'reject');
    if (t) await reject(t);
  });
  cmd('docsmith.ui.showDiff', async () => {
    const t = await pickTask(['review'], 'diff');
    if (t) await showDiff(t.task);
  });
  cmd('docsmith.ui.cancel', async () => {
    const t = await pickTask(['queued', 'running', 'question'], 'cancel');
    if (t) await run(P.CANCEL, { task: t.task } satisfies P.TaskArgs);
  });
  cmd('docsmith.ui.review', async () => {
    const t = await pickTask(['review'], 'review');
    if (!t) return;
    const choice = await vscode.window.showQuickPick(['Accept', 'Reject with feedback…', 'Show diff', 'Discard'], { title: `docsmith: ${t.message}` });
    if (choice === 'Accept') await vscode.commands.executeCommand('docsmith.ui.accept');
    else if (choice === 'Reject with feedback…') await reject(t);
    else if (choice === 'Show diff') await showDiff(t.task);
    else if (choice === 'Discard') await run(P.DISCARD, { task: t.task } satisfies P.TaskArgs);
  });
  cmd('docsmith.ui.history', async () => {
    const server = findServer(ctx.extensionPath);
    const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? process.cwd();
    if (!server.path) throw new Error(server.error);
    const out = cp.execFileSync(server.path, ['history', '--workspace', root], { encoding: 'utf8' });
    output.appendLine(out);
    output.show(true);
  });
  cmd('docsmith.ui.restart', async () => {
    if (client) await client.stop().catch(() => undefined);
    tasks.clear();
    renderStatus();
    client = startClient(ctx);
  });
}

export async function deactivate() {
  await client?.stop();
}
