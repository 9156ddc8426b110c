--- fly: a client for the Fly.io Machines API.
--
--     local fly = require "fly"
--     local client = assert(fly.new())          -- token from FLY_API_TOKEN
--     local app = assert(client.apps:get("my-app"))
--
-- The C core (`fly.core`) does HTTP on one libcurl multi handle per client,
-- authentication, the operation table, rate limiting and retries; this layer
-- adds resource namespaces, objects with methods, and tasks.
-- @module fly
local core = require "fly.core"
local json = require "fly.json"
local Error = require "fly.error"
local compat = require "fly.compat"
local loop = require "fly.loop"
local task_base = require "fly.task"
local resource = require "fly.resource"
local trace = require "fly.trace"

local fly = {
  _VERSION = "0.1.0",
  --- The public API endpoint.
  DEFAULT_BASE_URL = "https://api.machines.dev",
  --- The endpoint inside Fly's private network.
  INTERNAL_BASE_URL = "http://_api.internal:4280",
  --- JSON null, as decoded results hold it and as bodies may send it.
  null = json.null,
  array = json.array,
  Error = Error,
  Task = loop.Task,
  --- Seconds on a monotonic clock.
  now = core.now,
}

-- Resource namespaces reachable as client.<name>; each is a class whose
-- instances hold `client`.
local namespaces = {
  apps = require "fly.apps",
  machines = require "fly.machines",
  volumes = require "fly.volumes",
  secrets = require "fly.secrets",
  secretkeys = require "fly.secretkeys",
  certificates = require "fly.certificates",
  ips = require "fly.ips",
  orgs = require "fly.orgs",
  platform = require "fly.platform",
  tokens = require "fly.tokens",
  postgres = require "fly.postgres",
}
fly.namespaces = namespaces

local methods = core.Client
local client_mt = core.client_mt

client_mt.__index = function(self, key)
  local m = methods[key]
  if m ~= nil then return m end
  local class = namespaces[key]
  if class then
    -- the namespaces bound to this client live in its own state table, so
    -- they go with it (no weak table keyed by clients)
    local cs = methods._state(self)
    local cache = cs.namespaces
    if not cache then
      cache = {}
      cs.namespaces = cache
    end
    local ns = cache[key]
    if not ns then
      ns = setmetatable({ client = self }, class)
      cache[key] = ns
    end
    return ns
  end
end

local OPTIONS = {
  token = "string", base_url = "string", timeout = "number", connect_timeout = "number", deadline = "number",
  user_agent = "string", ca_file = "string", insecure = "boolean", headers = "table",
  rate_limit = "boolean|table", retry = "boolean|table", trace = "function", trace_bodies = "boolean",
  max_body = "number",
}

-- A value an error quotes, unless it holds the token or a part of it (SHOWN_RUN bytes in a row, or
-- all of a shorter token): a token given as base_url by mistake is not shown.
local SHOWN_RUN = 12
local function shown(value, token)
  local run = math.min(#token, SHOWN_RUN)
  if run < 6 then
    if value == token then return "the token, not shown" end
  else
    for i = 1, #token - run + 1 do
      if value:find(token:sub(i, i + run - 1), 1, true) then return "a value holding the token, not shown" end
    end
  end
  return ("%q"):format(value)
end

local function getenv(name)
  local v = os.getenv(name)
  if v and v ~= "" then return v end
end

--- Makes a client.
-- @tparam[opt] table opts `token` (default: FLY_API_TOKEN, then FLY_ACCESS_TOKEN),
-- `base_url` (with its scheme; default: FLY_API_HOSTNAME, then https://api.machines.dev), `timeout`
-- (seconds per attempt, default 60), `connect_timeout` (default 10), `deadline` (seconds each
-- call may take in all, rate-limit wait and retries included, unless the call gives its own;
-- default none), `user_agent`,
-- `ca_file`, `insecure` (true turns TLS verification off), `headers` (extra headers),
-- `rate_limit` (false, or `{ scale = n, [action] = { rate = r, burst = b }, redis = url,
-- redis_timeout = s, redis_retry = s }`: `redis` shares the buckets with every process using it),
-- `retry` (false, or `{ attempts = 4, base = 0.1, cap = 5, max_wait = 60 }`), `max_body` (bytes, the
-- largest response body taken in, counted decompressed; default 64 MiB), `trace` (a function
-- called with each event of each call: see "Seeing what it does" in the README),
-- `trace_bodies` (true: events carry request and response bodies)
-- @treturn fly.Client or nil, fly.Error when no token is configured
-- @raise on unknown options, wrong types, and a base URL that is not http(s) or has no scheme
function fly.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("fly.new: options must be a table (got " .. type(opts) .. ")", 2) end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error(("fly.new: unknown option '%s'"):format(tostring(k)), 2) end
    if not want:find(type(v), 1, true) then
      error(("fly.new: option '%s' must be a %s (got %s)"):format(k, want:gsub("|", " or "), type(v)), 2)
    end
  end
  for _, k in ipairs { "timeout", "connect_timeout", "deadline", "max_body" } do
    local v = opts[k]
    if v and (v <= 0 or v ~= v) then error(("fly.new: option '%s' must be > 0"):format(k), 2) end
  end
  local token = opts.token or getenv("FLY_API_TOKEN") or getenv("FLY_ACCESS_TOKEN")
  if not token or token:find("^%s*$") then
    return nil, Error.new {
      code = "no_token",
      message = "no API token: pass token to fly.new, or set FLY_API_TOKEN (or FLY_ACCESS_TOKEN)",
    }
  end
  local base = opts.base_url or getenv("FLY_API_HOSTNAME") or fly.DEFAULT_BASE_URL
  if base:find("^%a[%w+.-]*://[^/?#]*@") then
    error("fly.new: base_url must not hold credentials (user:password@): the token goes in `token`", 2)
  end
  if not base:find("^%a[%w+.-]*://") then
    local from = opts.base_url and "" or " (from FLY_API_HOSTNAME)"
    error(("fly.new: base_url needs a scheme: http:// or https:// (got %s%s)"):format(shown(base, token), from), 2)
  end
  if not base:find("^https?://[^/?#%s]+") or base:find("[?#%s]") then
    error(("fly.new: base_url must be an http(s) URL without query or fragment (got %s)"):format(shown(base, token)),
      2)
  end
  if opts.trace_bodies and not opts.trace then
    error("fly.new: option 'trace_bodies' needs a trace hook (option 'trace')", 2)
  end
  local hooks = {}
  if opts.trace then
    local where = debug.getinfo(opts.trace, "S")
    -- (a C function is known by its address: each is a hook of its own)
    hooks[1] = { fn = opts.trace, name = where.what == "C" and ("trace hook (a C function, %s)"):format(
      tostring(opts.trace)) or ("trace hook (%s:%d)"):format(where.short_src, where.linedefined) }
  end
  if trace.debug_wanted() then hooks[#hooks + 1] = { fn = trace.debug_line, name = "FLY_DEBUG printer" } end
  local ok, client = pcall(core.new, {
    token = token, base_url = base, timeout = opts.timeout, connect_timeout = opts.connect_timeout,
    deadline = opts.deadline,
    user_agent = opts.user_agent or ("fly-machines/%s (libcurl/%s; %s)"):format(
      fly._VERSION, core.curl_version, _VERSION),
    ca_file = opts.ca_file, insecure = opts.insecure, headers = opts.headers,
    rate_limit = opts.rate_limit, retry = opts.retry, max_body = opts.max_body,
    trace = hooks[1] ~= nil, trace_bodies = opts.trace_bodies,
    -- inside nginx calls are admitted through fly.ngx.redis: the core's connection stays shut
    redis_connect = require("fly.ngx.phase").current() == nil,
  })
  if not ok then error(client, 2) end
  if hooks[1] then trace.install(client, hooks) end
  local rl = opts.rate_limit
  if type(rl) == "table" and rl.redis then -- for transports with buckets of their own (nginx)
    client:_state().shared_limit = { url = rl.redis, timeout = rl.redis_timeout, retry = rl.redis_retry }
  end
  return client
end

--- Calls any operation by its operationId.
-- @tparam string operation e.g. "Machines_start"
-- @tparam[opt] table params path, query and header parameters by name, and `body`
-- (a table sent as JSON, or a string)
-- @tparam[opt] table opts `timeout`, `deadline` (seconds), `attempts`
-- @return the decoded result (`true` for an empty success, a string for text), or nil, fly.Error
-- @raise on an unknown operation, a missing or unknown parameter, or a wrong type
function methods:call(operation, params, opts)
  if type(self) ~= "userdata" then resource.dot_call("client:call", 2) end
  if type(operation) ~= "string" then
    error("fly: call: operation must be a string (got " .. type(operation) .. ")", 2)
  end
  local res, err = resource.call(self, operation, params, opts, 2)
  return res, err
end

local core_close = methods.close

-- Raises (at `level`) when the client is closed, or the method `name` was called with '.'.
local function open(client, level, name)
  if type(client) ~= "userdata" then resource.dot_call("client:" .. name, level) end
  if client:is_closed() then error("fly: client is closed", level) end
end

-- Raises when called from a task of this client: driving the loop from
-- inside it would wait for itself.
local function outside_tasks(client, name, level)
  if loop.current(client) then
    error(("fly: %s: cannot drive the loop from inside one of its tasks"):format(name), level)
  end
end

local function optional_number(v, name, what, level)
  if v ~= nil and type(v) ~= "number" then
    error(("fly: %s: %s must be a number (got %s)"):format(name, what, type(v)), level)
  end
  if v ~= v then error(("fly: %s: %s must be a number (got NaN)"):format(name, what), level) end
end

--- How long `close` lets the cleanups of cancelled tasks (lease releases) run, seconds.
fly.CLOSE_CLEANUP_TIMEOUT = 5

--- Closes the client: cancels its tasks and requests, frees its connections.
-- The cleanups the cancelled tasks leave (releasing a lease a task held) run
-- first, for at most `fly.CLOSE_CLEANUP_TIMEOUT` seconds (not when `close` is
-- called from one of the client's own tasks, which cannot drive the loop).
-- Closing again does nothing; any other call on a closed client raises.
function methods:close()
  if type(self) ~= "userdata" then resource.dot_call("client:close", 2) end
  if self:is_closed() then return end
  local driving = not loop.current(self)
  loop.cancel_all(self, not driving) -- (shielded tasks are let finish when the loop can be driven)
  if driving and loop.count(self, true) > 0 then
    local deadline = core.now() + fly.CLOSE_CLEANUP_TIMEOUT
    while loop.count(self, true) > 0 and core.now() < deadline do
      loop.drive(self, math.min(0.1, deadline - core.now()))
    end
    loop.cancel_all(self, true)
  end
  core_close(self)
  trace.drain(self) -- the attempts that closing cut short
end
client_mt.__close = methods.close

--- Starts `fn(...)` as a task: API calls made inside it yield instead of blocking.
-- @treturn fly.Task
function methods:spawn(fn, ...)
  if type(fn) ~= "function" then error("fly: spawn: expected a function (got " .. type(fn) .. ")", 2) end
  open(self, 3, "spawn")
  return loop.spawn(self, fn, ...)
end

--- Drives the loop until every task has finished, or `timeout` seconds pass.
-- @treturn boolean true when all tasks finished
function methods:run(timeout)
  open(self, 3, "run")
  outside_tasks(self, "run", 3)
  optional_number(timeout, "run", "timeout", 3)
  local deadline = timeout and core.now() + timeout
  while loop.count(self) > 0 do
    local wait = 1
    if deadline then
      wait = deadline - core.now()
      if wait <= 0 then return false end
      if wait > 1 then wait = 1 end
    end
    loop.drive(self, wait)
  end
  trace.drain(self) -- what ended without a step after it (a cancelled task's giveup)
  return true
end

--- The default work budget of `client:poll`, in seconds (0.5 ms: with a collector
-- step, a poll still fits in 2 ms; a program may set another).
fly.POLL_BUDGET = 0.0005

--- One step of the loop: works at most about `budget` seconds (default
-- `fly.POLL_BUDGET`, 0.5 ms; `math.huge`: no limit), starting, finishing and
-- resuming only what fits and leaving the rest, oldest first, for the next
-- call; when that resumed no task, finished nothing and left nothing over, it
-- waits at most `timeout` seconds (default 0: never blocks) for a socket or
-- the loop's next deadline, then works again. For game loops: once per frame.
-- @treturn integer the number of unfinished tasks
function methods:poll(timeout, budget)
  open(self, 3, "poll")
  outside_tasks(self, "poll", 3)
  optional_number(timeout, "poll", "timeout", 3)
  optional_number(budget, "poll", "budget", 3)
  local given = budget ~= nil
  if not given then budget = fly.POLL_BUDGET end
  if type(budget) ~= "number" or budget ~= budget or budget < 0 then
    error(given and "fly: poll: budget must be >= 0"
      or "fly: poll: fly.POLL_BUDGET must be a number >= 0 (got " .. tostring(budget) .. ")", 2)
  end
  return loop.drive(self, timeout or 0, nil, budget ~= math.huge and budget or nil)
end

--- Seconds until the loop next needs a step (for host event loops), or nil
-- when nothing is pending.
function methods:timeout()
  open(self, 3, "timeout")
  if loop.has_ready(self) then return 0 end
  return self:_timeout()
end

--- The sockets the loop waits on: `{ [fd] = "r" | "w" | "rw" }`.
function methods:sockets()
  open(self, 3, "sockets")
  return self:_sockets()
end

--- Sleeps `seconds` without blocking other tasks.
function methods:sleep(seconds)
  open(self, 3, "sleep")
  if type(seconds) ~= "number" or seconds ~= seconds then
    error(("fly: sleep: seconds must be a number (got %s)"):format(seconds ~= seconds and "NaN" or type(seconds)), 2)
  end
  loop.sleep(self, seconds)
end

--- Runs `fn(item, i)` for every item, `concurrency` at a time (default 32),
-- each in its own task.
-- @treturn table results in input order (the first value each call returned)
-- @treturn table errors by index (the second value, or the raised error)
function methods:map(list, fn, opts)
  open(self, 3, "map")
  if type(list) ~= "table" then error("fly: map: list must be a table", 2) end
  if type(fn) ~= "function" then error("fly: map: fn must be a function", 2) end
  local n = #list
  if opts ~= nil and type(opts) ~= "table" then error("fly: map: opts must be a table", 2) end
  for k in next, opts or {} do
    if k ~= "concurrency" then error(("fly: map: unknown option '%s'"):format(tostring(k)), 2) end
  end
  local concurrency = compat.tointeger(opts and rawget(opts, "concurrency") or 32)
  if not concurrency or concurrency < 1 then
    error("fly: map: concurrency must be a positive integer", 2)
  end
  local results, errors, next_index = {}, {}, 1
  -- map inside a task: cancelling that task cancels the workers too (their calls in flight are
  -- abandoned, as a cancelled task's are), and no worker starts another item
  local parent = loop.current(self)
  local tasks, finished, key = {}, 0, nil
  local function worker()
    while next_index <= n and not (parent and parent._status ~= "running") do
      local i = next_index
      next_index = i + 1
      local ok, res, err = compat.pcall(fn, list[i], i)
      finished = finished + 1
      if ok then
        results[i] = res
        if not res then errors[i] = err end -- the `nil, err` convention: a value is never an error
      else
        errors[i] = Error.new { code = "task_failed", message = tostring(res), cause = res }
      end
    end
  end
  if parent then
    -- cancelled with it; something may have run if an item finished, a worker had made a call
    -- (it may sleep or wait for its next one now), or its call in flight had gone out
    key = task_base.cascade(parent, function()
      local ran = finished > 0
      for _, t in ipairs(tasks) do
        t:cancel() -- (cancelled already, when the client closes: then it returns false)
        local _, err = t:result()
        if t._made_call or (type(err) == "table" and err.may_have_run) then ran = true end
      end
      return ran
    end)
  end
  for w = 1, math.min(concurrency, n) do tasks[w] = self:spawn(worker) end
  for _, t in ipairs(tasks) do t:join() end
  if key then task_base.uncascade(parent, key) end
  return results, errors
end

--- Every operation of the API: `{ id, method, path, tag, params, idempotent, safety, action, rate, burst, scope }`.
fly.operations = core.operations

return fly
