-- End-to-end run of docsmith in a real, headless Neovim (0.7.2 and 0.11.x).
-- Run: nvim --headless -u NONE -i NONE -n -c "luafile tests/nvim/e2e.lua"
-- Environment: DOCSMITH_BIN (server binary), E2E_FILE (stub file), E2E_FUNCTION
-- (its `def` name; a method's def may be indented), E2E_RESULT (JSON written
-- here), E2E_TIMEOUT_MS (default 900000), E2E_ROOT (the workspace root, default
-- the file's folder), E2E_STUB_LINE (the stub body line; one fewer such line
-- in the buffer means applied, default "    ...").
-- Flow: open the stub, start the server, request code actions on the function,
-- execute "Generate ...", answer the review with "Accept" (the stock
-- workspace/applyEdit handler applies the edit), wait for the task to end,
-- write the buffer and what was observed. Exits 0 when the task was accepted.

local uv = vim.loop
local t0 = uv.hrtime()
local function now() return (uv.hrtime() - t0) / 1e6 end

local bin = assert(os.getenv('DOCSMITH_BIN'), 'DOCSMITH_BIN')
local file = assert(os.getenv('E2E_FILE'), 'E2E_FILE')
local fname = assert(os.getenv('E2E_FUNCTION'), 'E2E_FUNCTION')
local result_path = assert(os.getenv('E2E_RESULT'), 'E2E_RESULT')
local timeout = tonumber(os.getenv('E2E_TIMEOUT_MS') or '900000')
local root = os.getenv('E2E_ROOT') or vim.fn.fnamemodify(file, ':p:h')
local stub_line = os.getenv('E2E_STUB_LINE') or '    ...'

local v = vim.version()
local obs = {
  nvim_version = string.format('%d.%d.%d', v.major, v.minor, v.patch),
  progress = {}, messages = {}, prompts = {}, task_changed = {}, actions = {},
  applied = false, phase = nil, errors = {},
}

local function finish(ok)
  obs.ok = ok
  local f = io.open(result_path, 'w')
  f:write(vim.fn.json_encode(obs))
  f:close()
  if ok then vim.cmd('qa!') else vim.cmd('cquit 1') end
end

local function log_message(_, params)
  table.insert(obs.messages, { t = now(), type = params.type, message = params.message })
end

local handlers = {
  -- Both versions' stock handlers block a headless run (inputlist / vim.ui.select).
  ['window/showMessageRequest'] = function(_, params)
    local titles = {}
    for _, a in ipairs(params.actions or {}) do table.insert(titles, a.title) end
    table.insert(obs.prompts, { t = now(), message = params.message, actions = titles })
    table.insert(obs.messages, { t = now(), type = params.type, message = params.message, actions = titles })
    for _, a in ipairs(params.actions or {}) do
      if a.title == 'Accept' then return a end
    end
    -- A clarifying question: take the planner's first suggestion.
    return (params.actions or {})[1] or vim.NIL
  end,
  ['$/progress'] = function(_, params)
    local val = params.value or {}
    table.insert(obs.progress, {
      t = now(), token = params.token, kind = val.kind,
      message = val.message, percentage = val.percentage,
    })
  end,
  ['window/showMessage'] = log_message,
  ['window/logMessage'] = log_message,
  ['docsmith/taskChanged'] = function(_, p)
    table.insert(obs.task_changed, { t = now(), phase = p.phase, message = p.message })
    obs.phase = p.phase
  end,
}

vim.cmd('edit ' .. vim.fn.fnameescape(file))
local bufnr = vim.api.nvim_get_current_buf()

-- How many lines of the buffer are exactly the stub line: a file may hold
-- several stubs with the same body (`...`), so "applied" means one fewer.
local function stub_count()
  local n = 0
  for _, l in ipairs(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)) do
    if l == stub_line then n = n + 1 end
  end
  return n
end
local stubs_before = stub_count()

local config = {
  name = 'docsmith',
  cmd = { bin, 'serve' },
  root_dir = root,
  capabilities = vim.lsp.protocol.make_client_capabilities(),
  handlers = handlers,
  on_exit = function(code) obs.server_exit = code end,
}
local client_id
if vim.fn.has('nvim-0.10') == 1 then
  -- vim.lsp.start_client() is deprecated from 0.11 (removal in 0.13).
  client_id = vim.lsp.start(config, { bufnr = bufnr })
else
  client_id = vim.lsp.start_client(config)
  if client_id then vim.lsp.buf_attach_client(bufnr, client_id) end
end
if not client_id then
  table.insert(obs.errors, 'starting the client failed')
  return finish(false)
end
local ready = vim.wait(60000, function()
  local c = vim.lsp.get_client_by_id(client_id)
  return c ~= nil and c.server_capabilities ~= nil and c.initialized
end, 50)
if not ready then
  table.insert(obs.errors, 'server did not initialize')
  return finish(false)
end

local def_line
for i, l in ipairs(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)) do
  if l:match('^%s*def ' .. fname .. '%(') or l:match('^%s*async def ' .. fname .. '%(') then
    def_line = i - 1
    break
  end
end
if not def_line then
  table.insert(obs.errors, 'no def ' .. fname)
  return finish(false)
end

local function first_result(resp)
  for _, r in pairs(resp or {}) do
    if r.err then table.insert(obs.errors, vim.inspect(r.err)) end
    if r.result ~= nil then return r.result end
  end
end

local params = {
  textDocument = { uri = vim.uri_from_bufnr(bufnr) },
  range = { start = { line = def_line, character = 0 }, ['end'] = { line = def_line, character = 0 } },
  context = { diagnostics = {} },
}
local generate
-- didOpen may still be in flight: ask again for a moment.
vim.wait(10000, function()
  local actions = first_result(vim.lsp.buf_request_sync(bufnr, 'textDocument/codeAction', params, 5000)) or {}
  obs.actions = {}
  for _, a in ipairs(actions) do
    table.insert(obs.actions, a.title)
    if a.title:find('^Generate `') then generate = a end
  end
  return generate ~= nil
end, 200)
if not generate then
  table.insert(obs.errors, 'no Generate action')
  return finish(false)
end

obs.t_action_ms = now()
local started = first_result(vim.lsp.buf_request_sync(bufnr, 'workspace/executeCommand', generate.command, 10000))
obs.task = started and started.task
if not obs.task then
  table.insert(obs.errors, 'executeCommand did not start a task')
  return finish(false)
end

local terminal = { accepted = true, rejected = true, discarded = true, failed = true, cancelled = true, interrupted = true }
local function stub_gone()
  return stub_count() < stubs_before
end
local function progress_ended()
  for _, p in ipairs(obs.progress) do
    if p.kind == 'end' then return true end
  end
  return false
end
vim.wait(timeout, function() return obs.phase ~= nil and terminal[obs.phase] == true end, 200)
if obs.phase == 'accepted' then
  -- The edit is applied before the server reports "accepted"; allow a moment anyway.
  vim.wait(10000, function() return stub_gone() and progress_ended() end, 50)
end
obs.stub_gone = stub_gone()

for _, p in ipairs(obs.progress) do
  if p.kind == 'begin' and not obs.t_first_progress_ms then obs.t_first_progress_ms = p.t end
  if p.kind == 'end' then obs.t_end_ms = p.t end
end
for _, p in ipairs(obs.prompts) do
  if not obs.t_review_ms and vim.tbl_contains(p.actions, 'Accept') then obs.t_review_ms = p.t end
end
obs.buffer = table.concat(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false), '\n') .. '\n'
obs.applied = obs.phase == 'accepted' and obs.stub_gone
vim.cmd('silent write')
vim.lsp.stop_client(client_id)
vim.wait(5000, function() return obs.server_exit ~= nil end, 50)
finish(obs.applied)
