// docsmith's protocol, mirrored from server/src/lsp/protocol.rs (the single
// definition): command names, their arguments and results, and the
// docsmith/taskChanged notification.

export const GENERATE = 'docsmith.generate';
export const REFINE = 'docsmith.refine';
export const ANSWER = 'docsmith.answer';
export const ACCEPT = 'docsmith.accept';
export const REJECT = 'docsmith.reject';
export const DISCARD = 'docsmith.discard';
export const SHOW_DIFF = 'docsmith.showDiff';
export const CANCEL = 'docsmith.cancel';
export const WRITE_TESTS = 'docsmith.writeTests';

export interface FunctionArgs { uri: string; name: string }
export interface RefineArgs { uri: string; name: string; feedback?: string }
export interface TaskArgs { task: number }
export interface AnswerArgs { task: number; answer?: string }
export interface RejectArgs { task: number; feedback?: string }
export interface ShowDiffArgs { task: number; open?: boolean }

/**
 * Each command's argument, by command name (`Command` in protocol.rs). The
 * server's unit test (server/src/lsp/protocol/ts_mirror.rs) reads this file
 * and fails when a command name or an argument field differs from Rust's.
 */
export interface CommandArgs {
  [GENERATE]: FunctionArgs;
  [REFINE]: RefineArgs;
  [ANSWER]: AnswerArgs;
  [ACCEPT]: TaskArgs;
  [REJECT]: RejectArgs;
  [DISCARD]: TaskArgs;
  [SHOW_DIFF]: ShowDiffArgs;
  [CANCEL]: TaskArgs;
  [WRITE_TESTS]: TaskArgs;
}

export interface Started { task: number; queuedBehind: number }
export interface Applied { applied: boolean; reason?: string }
export interface ProposalFiles { dir: string; diff: string; original: string; code: string; tests: string; report: string }

export type TaskPhase =
  | 'queued' | 'running' | 'question' | 'review'
  | 'accepted' | 'rejected' | 'discarded' | 'failed' | 'cancelled' | 'interrupted';

export interface TaskChangedParams {
  task: number; uri: string; name: string; phase: TaskPhase; message: string; percent: number;
}
export const TASK_CHANGED = 'docsmith/taskChanged';

/** Keys in the MessageActionItems of docsmith's prompts. */
export const ACTION_TASK_KEY = 'docsmithTask';
export const ACTION_KIND_KEY = 'docsmithKind';

/** Titles the server uses in its prompts (server/src/lsp/protocol.rs). */
export const REVIEW_ACCEPT = 'Accept';
export const REVIEW_REJECT = 'Reject with feedback';
export const REVIEW_DIFF = 'Show diff';
export const REVIEW_DISCARD = 'Discard';
export const QUESTION_FREE_TEXT = 'Answer…';
export const QUESTION_CANCEL = 'Cancel';

export function isTerminal(p: TaskPhase): boolean {
  return !['queued', 'running', 'question', 'review'].includes(p);
}
