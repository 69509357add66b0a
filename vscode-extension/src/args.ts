// Building command arguments and reading docsmith's prompt items. Pure.

import * as P from './protocol';

/** The function name in a docsmith code action title ("Generate `f` from docstring"). */
export function functionInTitle(title: string): string | undefined {
  const m = /`([^`]+)`/.exec(title);
  return m ? m[1] : undefined;
}

/** Refine arguments from a code action's arguments and the user's feedback. */
export function refineArgs(base: P.FunctionArgs, feedback: string): P.RefineArgs {
  return { uri: base.uri, name: base.name, feedback: feedback.trim() };
}

export interface PromptInfo { task: number; kind: 'question' | 'review' }

/** The task and kind a docsmith prompt is about, from its action items' extra properties. */
export function promptInfo(actions: Array<Record<string, unknown>> | undefined): PromptInfo | undefined {
  const a = actions?.find((x) => typeof x[P.ACTION_TASK_KEY] === 'number');
  if (!a) return undefined;
  const kind = a[P.ACTION_KIND_KEY];
  if (kind !== 'question' && kind !== 'review') return undefined;
  return { task: a[P.ACTION_TASK_KEY] as number, kind };
}

/** The one-line status bar text for the tasks known, most urgent first. */
export function statusText(tasks: P.TaskChangedParams[]): { text: string; command?: string; tooltip: string } {
  const running = tasks.filter((t) => t.phase === 'running' || t.phase === 'queued');
  const question = tasks.find((t) => t.phase === 'question');
  const review = tasks.filter((t) => t.phase === 'review');
  if (question) return { text: `$(question) docsmith: ${question.name} has a question`, tooltip: question.message };
  if (running.length) {
    const t = running[0];
    const more = running.length > 1 ? ` (+${running.length - 1})` : '';
    return { text: `$(sync~spin) docsmith: ${t.name}: ${t.message}${more}`, command: 'docsmith.ui.cancel', tooltip: 'Click to cancel' };
  }
  if (review.length) {
    return { text: `$(check) docsmith: proposal ready for ${review[0].name}`, command: 'docsmith.ui.review', tooltip: review[0].message };
  }
  return { text: '$(beaker) docsmith', tooltip: 'docsmith: idle' };
}
