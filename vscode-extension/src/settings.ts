// Maps the extension's settings (the Settings UI's camelCase keys) to the
// server's configuration (snake_case, the shape of docsmith.toml), which the
// server reads through workspace/configuration. Pure: unit-tested without VS Code.

export type Get = (key: string) => unknown;

export interface Mapped {
  /** JSON for the server (`docsmith` section). */
  config: Record<string, unknown>;
  /** Problems to show the user; the affected roles fall back to the local model. */
  errors: string[];
}

const ROLES: Array<[string, string]> = [
  ['planner', 'planner'],
  ['testDesigner', 'test_designer'],
  ['developer', 'developer'],
  ['critic', 'critic'],
];

function nonEmpty(v: unknown): string | undefined {
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

function count(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.floor(v) : undefined;
}

/** Builds the server configuration from `get` (e.g. `workspace.getConfiguration('docsmith').get`). */
export function toServerConfig(get: Get): Mapped {
  const config: Record<string, unknown> = {};
  const errors: string[] = [];
  const numbers: Array<[string, string]> = [
    ['maxRefinements', 'max_refinements'],
    ['maxClarifications', 'max_clarifications'],
    ['maxGeneratedTests', 'max_generated_tests'],
    ['maxConcurrentTasks', 'max_concurrent_tasks'],
  ];
  for (const [k, s] of numbers) {
    const n = count(get(k));
    if (n !== undefined) config[s] = n;
  }
  for (const [k, s] of [['writeTests', 'write_tests'], ['confirmEdits', 'confirm_edits']] as const) {
    const b = get(k);
    if (typeof b === 'boolean') config[s] = b;
  }
  const providers: Record<string, unknown> = {};
  const local = nonEmpty(get('localModel'));
  if (local) {
    providers.local = local.endsWith('.gguf') || local.includes('/')
      ? { kind: 'local', path: local }
      : { kind: 'local', model: local };
  }
  const baseUrl = nonEmpty(get('endpoint.baseUrl'));
  const model = nonEmpty(get('endpoint.model'));
  if (baseUrl) {
    if (!model) errors.push('docsmith.endpoint.model is empty: name the endpoint\'s model (e.g. Qwen/Qwen2.5-Coder-7B-Instruct)');
    else {
      const p: Record<string, unknown> = { kind: 'openai', base_url: baseUrl, model };
      const keyEnv = nonEmpty(get('endpoint.apiKeyEnv'));
      if (keyEnv) p.api_key_env = keyEnv;
      providers.endpoint = p;
    }
  }
  if (Object.keys(providers).length) config.providers = providers;
  const roles: Record<string, unknown> = {};
  for (const [k, s] of ROLES) {
    const v = get(`roles.${k}`);
    if (v === 'endpoint') {
      if (providers.endpoint) roles[s] = { provider: 'endpoint', fallback: ['local'] };
      else errors.push(`docsmith.roles.${k} is "endpoint" but no endpoint is configured (docsmith.endpoint.baseUrl and .model): using the local model`);
    }
  }
  if (Object.keys(roles).length) config.roles = roles;
  return { config, errors };
}
