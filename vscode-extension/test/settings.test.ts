// Unit tests of the extension's own logic (settings mapping, arguments, status text).
// Run: npm test (esbuild bundles them; node --test runs them).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { toServerConfig } from '../src/settings';
import { functionInTitle, promptInfo, refineArgs, statusText } from '../src/args';

const from = (o: Record<string, unknown>) => (k: string) => o[k];

test('defaults map to the server keys it knows, in snake_case', () => {
  const m = toServerConfig(from({ maxRefinements: 3, maxClarifications: 2, writeTests: false, confirmEdits: false, localModel: 'qwen2.5-coder-1.5b', 'roles.developer': 'local', maxConcurrentTasks: null }));
  assert.deepEqual(m.errors, []);
  assert.deepEqual(m.config, {
    max_refinements: 3, max_clarifications: 2, write_tests: false, confirm_edits: false,
    providers: { local: { kind: 'local', model: 'qwen2.5-coder-1.5b' } },
  });
});

test('an endpoint for the developer falls back to the local model', () => {
  const m = toServerConfig(from({ 'endpoint.baseUrl': 'http://127.0.0.1:8000/v1', 'endpoint.model': 'm', 'endpoint.apiKeyEnv': 'KEY', 'roles.developer': 'endpoint' }));
  assert.deepEqual(m.config.providers, { endpoint: { kind: 'openai', base_url: 'http://127.0.0.1:8000/v1', model: 'm', api_key_env: 'KEY' } });
  assert.deepEqual(m.config.roles, { developer: { provider: 'endpoint', fallback: ['local'] } });
});

test('a role on a missing endpoint is reported and left local', () => {
  const m = toServerConfig(from({ 'roles.critic': 'endpoint' }));
  assert.equal(m.config.roles, undefined);
  assert.match(m.errors[0], /docsmith.roles.critic/);
  const noModel = toServerConfig(from({ 'endpoint.baseUrl': 'http://x/v1' }));
  assert.match(noModel.errors[0], /endpoint.model/);
});

test('a GGUF path becomes the local provider path; bad numbers are ignored', () => {
  const m = toServerConfig(from({ localModel: '/models/x.gguf', maxRefinements: -1, maxGeneratedTests: 'many' }));
  assert.deepEqual(m.config, { providers: { local: { kind: 'local', path: '/models/x.gguf' } } });
});

test('arguments and prompt items', () => {
  assert.equal(functionInTitle('Generate `slugify` from docstring'), 'slugify');
  assert.deepEqual(refineArgs({ uri: 'file:///a.py', name: 'f' }, '  handle None '), { uri: 'file:///a.py', name: 'f', feedback: 'handle None' });
  assert.deepEqual(promptInfo([{ title: 'Accept', docsmithTask: 4, docsmithKind: 'review' }]), { task: 4, kind: 'review' });
  assert.equal(promptInfo([{ title: 'OK' }]), undefined);
});

test('status text: running beats review, review offers the review command', () => {
  const t = (task: number, phase: any, message = '') => ({ task, uri: 'file:///a.py', name: `f${task}`, phase, message, percent: 0 });
  assert.match(statusText([t(1, 'review'), t(2, 'running', 'writing code (attempt 1/4)')]).text, /f2: writing code/);
  const r = statusText([t(1, 'review', 'ready')]);
  assert.equal(r.command, 'docsmith.ui.review');
  assert.equal(statusText([]).text, '$(beaker) docsmith');
});
