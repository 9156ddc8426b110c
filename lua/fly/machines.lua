--- client.machines: Fly Machines, with waits, leases, metadata and memory.
--
-- Every method of the namespace takes the app name and (but for `list` and
-- `create`) the machine id first: `client.machines:start(app, id, opts)`.
-- `get`, `list`, `create` and `update` return Machine objects: the API's
-- Machine tables with methods bound to the client and the app
-- (`m:start()`, `m:wait("started")`, `m:with_lease(opts, fn)`, …), taking the
-- same arguments as the namespace's methods without `app` and `id`.
--
-- Each method is declared once below (its operation, arguments, options and
-- result); `resource.declare` makes both forms from the declaration.
-- @module fly.machines
local core = require "fly.core"
local json = require "fly.json"
local Error = require "fly.error"
local resource = require "fly.resource"
local loop = require "fly.loop"
local compat = require "fly.compat"

local call, check, options, owner, merge = resource.call, resource.check, resource.options, resource.owner,
  resource.merge
local now = core.now
local null = json.null
local pack, unpack, tointeger = compat.pack, compat.unpack, compat.tointeger

--- The namespace (`client.machines`).
local Machines = { __name = "fly.machines" }
Machines.__index = Machines

--- A Fly Machine as the API returns it, with methods.
local Machine = resource.class("fly.Machine")

--- Default lease TTL in seconds (flyctl uses 13–15).
Machines.DEFAULT_LEASE_TTL = 15
--- Default overall timeout of a wait, seconds.
Machines.DEFAULT_WAIT_TIMEOUT = 300
--- Longest server-side long-poll the API accepts, seconds.
Machines.MAX_POLL = 60
--- How long a wait tolerates 404 (eventual consistency after create), seconds.
Machines.DEFAULT_NOT_FOUND_GRACE = 5
--- How long past its deadline a wait's reads of the machine (after a 408 on a wait scoped to a
-- version, and at the end) may go on, seconds: they do not wait for the client's `timeout`.
Machines.WAIT_READ_GRACE = 5

-- Operations that change a machine: they carry the lease nonce when one is held
-- (API-NOTES: every mutating call on a leased machine must send it).
local MUTATING = {}
for _, op in ipairs(core.operations()) do
  if op.tag == "Machines" and op.method ~= "GET" and op.id ~= "Machines_create" then
    MUTATING[op.id] = true
  end
end

--- The lease in a response, flat or wrapped (`{status, data = {…}}`), as a plain table
-- `{ nonce, expires_at, owner, version, description }`; nulls become nil.
-- @param res a decoded lease response
-- @treturn table
local function parse_lease(res)
  if type(res) ~= "table" then return res end
  local data = type(res.data) == "table" and res.data or res
  local lease = {}
  for _, k in ipairs { "nonce", "expires_at", "owner", "version", "description" } do
    local v = data[k]
    if v ~= null then lease[k] = v end
  end
  return lease
end
Machines.parse_lease = parse_lease

---------------------------------------------------------------------------- results and bodies

local function bind_machine(res, c, p, nonce)
  if type(res) ~= "table" then return res end
  if nonce == nil then return resource.bind_app(Machine, res, c, p.app_name) end
  return resource.bind(Machine, res, c, { app = p.app_name, nonce = nonce })
end

local function bind_list(res, c, p)
  return resource.bind_all(Machine, res, c, { app = p.app_name })
end

-- A machine created with lease_ttl comes back holding that lease: its calls send the nonce.
local function bind_created(res, c, p)
  if type(res) ~= "table" then return res end
  local nonce = res.nonce
  if type(nonce) ~= "string" or nonce == "" then nonce = nil end
  return bind_machine(res, c, p, nonce)
end

local function lease_result(res) return parse_lease(res) end

-- A stop timeout goes as a Go duration: numbers are seconds, written in plain decimals to the
-- microsecond ("30s", "0.5s"; never an exponent, which Go's durations do not read). NaN and
-- the infinities have no duration: false and why.
local function duration(v)
  if type(v) ~= "number" then return v end
  if v ~= v or v == math.huge or v == -math.huge then
    return false, ("opts.timeout must be a finite number of seconds (got %s)"):format(v ~= v and "NaN" or tostring(v))
  end
  local s = ("%.6f"):format(v):gsub("0+$", ""):gsub("%.$", "")
  return s .. "s"
end

local function key_param(p, _, key) p.key = key end

local function metadata_body(p, o, metadata)
  p.body = { metadata = metadata, machine_version = o.machine_version }
end

-- A command: a string runs under `sh -c`, an array runs as it is, a table
-- with `command` or `cmd` is the whole request.
local function exec_build(p, _, cmd)
  local body
  if type(cmd) == "string" then
    body = { command = { "sh", "-c", cmd } }
  elseif cmd.command ~= nil or cmd.cmd ~= nil then
    body = cmd
  elseif #cmd == 0 then
    return false, "command must not be empty"
  else
    body = { command = cmd }
  end
  p.body = body
  -- the command's own time bounds each attempt, and the client's deadline does not cut it short
  if type(body.timeout) == "number" then return { timeout = body.timeout + 10, deadline = math.huge } end
end

-- A lease TTL as the API takes it (whole seconds, rounded up), or false and why: it must be a
-- finite number above 0.
local function lease_ttl(v, what)
  if v == nil then return Machines.DEFAULT_LEASE_TTL end
  if v ~= v or v <= 0 or v == math.huge then
    return false, ("%s must be a finite number of seconds above 0 (got %s)"):format(what, v ~= v and "NaN" or v)
  end
  return math.ceil(v)
end

-- Raises (`d` levels up, for method `name`) unless opts[key]'s value `v` is a number >= 0.
local function nonnegative(v, key, name, d)
  if v ~= v or v < 0 then
    error(("fly: %s: opts.%s must be a number >= 0 (got %s)"):format(name, key, v ~= v and "NaN" or v), d + 1)
  end
end

local NONCE = { lease_nonce = "string" }
local STOP_OPTS = { signal = "string", timeout = "number|string", lease_nonce = "string" }

---------------------------------------------------------------------------- the declared methods

-- Each entry: `{ method, operationId, … }` (see resource.declare). The namespace form
-- takes `app, id` first (`app` only where `path` says so); the object form takes the rest.
-- Every entry that changes a machine sends the lease nonce held by the object it is called
-- on (inside with_lease), or `opts.lease_nonce`.
Machines.operations = {}
resource.declare(Machines, {
  name = "machines", class = Machine, object = "machine", operations = Machines.operations,
  path = { "app", "id" }, params = { app = "app_name", id = "machine_id" },
  identity = function(m, ctx) return ctx.app, m.id end,
  nonce = MUTATING,
}, {
  --- `list(app, params)`: the machines of an app (`include_deleted`, `include_leases`, `region`,
  -- `state`, `summary`, `metadata = { key = value }`) -> {Machine, …}
  { "list", "Machines_list", path = { "app" }, params = true, result = bind_list },
  --- `create(app, body)`: a new machine (`config`, `region`, `name`, `skip_launch`, `lease_ttl`, …)
  -- -> Machine (holding the lease when created with `lease_ttl`)
  { "create", "Machines_create", path = { "app" }, args = { "body:table" },
    build = function(p, _, body) p.body = body end, result = bind_created },
  --- `get(app, id, params)`: one machine (`include_leases`) -> Machine
  { "get", "Machines_show", params = { include_leases = "boolean" }, result = bind_machine, object = false },
  --- `update(app, id, body, opts)`: a new config (a bare config is sent as `{ config = … }`);
  -- `opts.lease_nonce` -> Machine; `m:update(config_or_request)` updates `m` in place
  { "update", "Machines_update", args = { "body:table" }, opts = NONCE, result = bind_machine, inplace = true,
    build = function(p, _, body)
      if rawget(body, "config") == nil then body = { config = body } end
      p.body = body
    end },
  --- `destroy(app, id, opts)`: `force`, `lease_nonce` -> true
  { "destroy", "Machines_delete", opts = { force = "boolean", lease_nonce = "string" },
    build = function(p, o) p.force = o.force end },
  --- `start(app, id, opts)`: `lease_nonce` -> true
  { "start", "Machines_start", opts = NONCE },
  --- `stop(app, id, opts)`: `signal`, `timeout` (seconds or a Go duration), `lease_nonce`;
  -- always sends a JSON body -> true
  { "stop", "Machines_stop", opts = STOP_OPTS,
    build = function(p, o)
      local timeout, why = duration(o.timeout)
      if timeout == false then return false, why end
      p.body = { signal = o.signal, timeout = timeout }
    end },
  --- `restart(app, id, opts)`: `signal`, `timeout`, `lease_nonce` -> true
  { "restart", "Machines_restart", opts = STOP_OPTS,
    build = function(p, o) p.signal, p.timeout = o.signal, o.timeout end },
  --- `signal(app, id, signal, opts)`: sends a signal ("SIGUSR1"); `lease_nonce` -> true
  { "signal", "Machines_signal", args = { "signal:string" }, opts = NONCE,
    build = function(p, _, sig) p.body = { signal = sig } end },
  --- `suspend(app, id, opts)`: `lease_nonce` -> true
  { "suspend", "Machines_suspend", opts = NONCE },
  --- `cordon(app, id, opts)`: the proxy sends the machine no traffic; `lease_nonce` -> true
  { "cordon", "Machines_cordon", opts = NONCE },
  --- `uncordon(app, id, opts)`: `lease_nonce` -> true
  { "uncordon", "Machines_uncordon", opts = NONCE },
  --- `list_events(app, id, params)`: `limit` -> the events, newest first
  { "list_events", "Machines_list_events", params = { limit = "number" } },
  --- `list_processes(app, id, params)`: `sort_by`, `order` -> the processes
  { "list_processes", "Machines_list_processes", params = { sort_by = "string", order = "string" } },
  --- `list_versions(app, id)` -> `{ { version, user_config }, … }`, newest first
  { "list_versions", "Machines_list_versions" },
  --- `exec(app, id, command, opts)`: a string (run by `sh -c`), an array of arguments, or the
  -- whole request `{ command, stdin, timeout, container }`; `lease_nonce` ->
  -- `{ stdout, stderr, exit_code }`
  { "exec", "Machines_exec", args = { "command:string|table" }, opts = NONCE, build = exec_build },
  --- `get_lease(app, id)` -> `{ expires_at, owner, version, description }` (404 when none)
  { "get_lease", "Machines_show_lease", result = lease_result },
  --- `acquire_lease(app, id, opts)`: `ttl` (default 15), `description` ->
  -- `{ nonce, expires_at, owner, version, description }` (409 when someone else holds one)
  { "acquire_lease", "Machines_create_lease", opts = { ttl = "number", description = "string" },
    nonce = false, result = lease_result,
    build = function(p, o)
      local ttl, why = lease_ttl(o.ttl, "opts.ttl")
      if not ttl then return false, why end
      p.body = { ttl = ttl, description = o.description }
    end },
  --- `refresh_lease(app, id, nonce, ttl)`: extends a lease you hold -> the lease
  { "refresh_lease", "Machines_create_lease", args = { "nonce:string", "ttl:?number" }, nonce = false,
    result = lease_result,
    build = function(p, _, nonce, ttl)
      local seconds, why = lease_ttl(ttl, "ttl")
      if not seconds then return false, why end
      p.lease_nonce, p.body = nonce, { ttl = seconds }
    end },
  --- `release_lease(app, id, nonce)`: releases a lease you hold -> true
  { "release_lease", "Machines_release_lease", args = { "nonce:string" }, nonce = false,
    build = function(p, _, nonce) p.lease_nonce = nonce end },
  --- `get_metadata(app, id)` -> `{ key = value, … }`
  { "get_metadata", "Machines_show_metadata" },
  --- `get_metadata_key(app, id, key)` -> the value (404 when the key is not set)
  { "get_metadata_key", "Machines_get_metadata_key", args = { "key:string" }, build = key_param,
    result = function(res) if type(res) == "table" then return res.value end return res end },
  --- `set_metadata(app, id, key, value, opts)`: `lease_nonce` -> true
  { "set_metadata", "Machines_upsert_metadata", args = { "key:string", "value:string" }, opts = NONCE,
    build = function(p, _, key, value) p.key, p.body = key, { value = value } end },
  --- `update_metadata(app, id, metadata, opts)`: many keys at once (PUT; `fly.null` or ""
  -- removes one); `machine_version` (412 when the machine has another), `lease_nonce` -> true
  { "update_metadata", "Machines_update_metadata", args = { "metadata:table" },
    opts = { machine_version = "string", lease_nonce = "string" }, build = metadata_body },
  --- `patch_metadata(app, id, metadata, opts)`: the same, sent as PATCH -> true
  { "patch_metadata", "Machines_patch_metadata", args = { "metadata:table" },
    opts = { machine_version = "string", lease_nonce = "string" }, build = metadata_body },
  --- `delete_metadata(app, id, key, opts)`: `lease_nonce` -> true
  { "delete_metadata", "Machines_delete_metadata", args = { "key:string" }, opts = NONCE, build = key_param },
  --- `get_memory(app, id)` -> `{ limit_mb, available_mb }`
  { "get_memory", "Machines_get_memory" },
  --- `set_memory_limit(app, id, limit_mb, opts)`: `lease_nonce` -> `{ limit_mb, available_mb }`
  { "set_memory_limit", "Machines_set_memory_limit", args = { "limit_mb:number" }, opts = NONCE,
    build = function(p, _, mb) p.body = { limit_mb = tointeger(mb) or mb } end },
  --- `reclaim_memory(app, id, amount_mb, opts)`: `amount_mb` optional; `lease_nonce` -> `{ actual_mb }`
  { "reclaim_memory", "Machines_reclaim_memory", args = { "amount_mb:?number" }, opts = NONCE,
    build = function(p, _, mb) p.body = { amount_mb = mb and (tointeger(mb) or mb) } end },
})
Machines.operations.wait = "Machines_wait"

---------------------------------------------------------------------------- wait

local WAIT_OPTIONS = {
  state = "string|table", states = "string|table", timeout = "number", version = "string|boolean",
  from_event_id = "string", not_found_grace = "number",
}

local function wait_states(opts, name, d)
  local s = opts.states or opts.state or "started"
  if type(s) == "string" then return { s } end
  if #s == 0 then error(("fly: %s: states must not be empty"):format(name), d + 1) end
  for i = 1, #s do check(s[i], "string", "each state", name, d + 1) end
  return s
end

-- Whether version `a` is newer than `b`: machine versions are ULIDs, which sort by time.
local function newer(a, b)
  return #a == 26 and #b == 26 and not a:find("[^0-9A-Za-z]") and not b:find("[^0-9A-Za-z]")
    and a:upper() > b:upper()
end

-- The long-poll's own 408 ("not reached yet") carries the API's JSON error; another one (a
-- proxy's) is a transient failure like a 502.
local function own_408(err)
  if err.status ~= 408 or type(err.body) ~= "string" then return false end
  local ok, decoded = pcall(json.decode, err.body)
  return ok and type(decoded) == "table" and decoded.error ~= nil
end

-- A failure worth another poll: waiting is safe to repeat, so 5xx, 429, a proxy's 408 and
-- transport failures are retried within the wait's deadline. Not TLS (a configuration
-- problem) nor a response the client cannot read.
local function transient(err)
  if err.status == 408 then return true end
  return err.retryable == true and err.code ~= "tls" and err.code ~= "cancelled" and err.code ~= "protocol"
end

local function wanted(states, state)
  for i = 1, #states do
    if states[i] == state then return true end
  end
  return false
end

-- The error for a wait scoped to `version` that cannot end well: the machine runs a newer
-- version (`superseded`), or, at the deadline, reached a wanted state at another one.
local function other_version(id, states, version, m, timeout)
  local current, state = m.instance_id, m.state
  if type(current) ~= "string" or current == "" or current == version then return nil end
  local hint = "wait for any version with opts.version = false (m:wait(state, { version = false })), "
    .. "or refresh the object first (m:refresh())"
  if newer(current, version) then
    return Error.new {
      code = "superseded", operation = "Machines_wait", retryable = false, state = state, version = current,
      waited_version = version,
      message = ("machine %s runs version %s now (state: %s), newer than version %s this wait is scoped "
        .. "to: %s"):format(id, current, tostring(state), version, hint),
    }
  end
  if timeout and wanted(states, state) then
    return Error.new {
      code = "timeout", operation = "Machines_wait", retryable = true, state = state, version = current,
      waited_version = version,
      message = ("machine %s reached %s at version %s, not at version %s this wait is scoped to, within %gs: %s")
        :format(id, state, current, version, timeout, hint),
    }
  end
end

-- The machine now, for a wait whose deadline is `deadline`: by WAIT_READ_GRACE past it, or
-- within 1 s when that has passed, whatever the client's timeout.
local function show(c, app, id, deadline, d)
  local within = math.max(deadline + Machines.WAIT_READ_GRACE - now(), 1)
  local m, err = call(c, "Machines_show", { app_name = app, machine_id = id },
    { attempts = 1, timeout = within, deadline = within }, d + 1)
  if type(m) == "table" then return m end
  return nil, err
end

-- Waits until the machine reaches one of the states: loops the long-poll under an overall
-- deadline (see the README, Waiting). `name` labels programmer errors, raised `d` levels up.
-- An error of wait's own, which quotes what the server answered (a state, a version): the
-- client's credentials masked in it, as the core masks them in what it returns.
local function masked(c, e)
  e.message = c:_mask(e.message)
  if type(e.state) == "string" then e.state = c:_mask(e.state) end
  if type(e.version) == "string" then e.version = c:_mask(e.version) end
  return e
end

local function wait(c, app, id, opts, name, d)
  check(app, "string", "app", name, d + 1)
  check(id, "string", "id", name, d + 1)
  opts = options(opts, WAIT_OPTIONS, "opts", name, d + 1)
  local states = wait_states(opts, name, d + 1)
  local timeout = opts.timeout or Machines.DEFAULT_WAIT_TIMEOUT
  local grace = opts.not_found_grace or Machines.DEFAULT_NOT_FOUND_GRACE
  nonnegative(timeout, "timeout", name, d + 1)
  nonnegative(grace, "not_found_grace", name, d + 1)
  local version = opts.version
  if version == true then error(("fly: %s: opts.version must be a string or false"):format(name), d + 1) end
  if version == false or version == "" then version = nil end
  local wants_destroyed = wanted(states, "destroyed")
  local deadline = now() + timeout
  local first_404, last_err, failures = nil, nil, 0
  while true do
    local left = deadline - now()
    if left <= 0 then break end
    local poll = math.min(Machines.MAX_POLL, math.max(1, math.ceil(left)))
    local p = {
      app_name = app, machine_id = id, state = states, timeout = poll,
      version = version, from_event_id = opts.from_event_id,
    }
    -- the HTTP timeout stays above the server's, but never past the overall deadline
    local http_timeout = math.min(poll + 10, left + 0.25)
    local res, err = call(c, "Machines_wait", p, { timeout = http_timeout, deadline = left + 0.25 }, d + 1)
    if res then
      local st, ver = type(res) == "table" and res.state, type(res) == "table" and res.version
      if type(st) ~= "string" then st = states[1] end
      if type(ver) ~= "string" or ver == "" then ver = version end
      return st, ver
    end
    local pause, cut = 0, err.status == nil and err.code == "timeout" and now() >= deadline
    if cut then -- luacheck: ignore 542
      -- the overall deadline cut this poll short: nothing failed, time is up
    elseif err.status == 404 then
      if wants_destroyed then return "destroyed", version end
      local t = now()
      first_404 = first_404 or t
      if t - first_404 >= grace or t >= deadline then return nil, err end
      pause = math.min(0.25, grace - (t - first_404))
    elseif own_408(err) then -- not there yet: poll again, unless this version is gone
      first_404, failures = nil, 0
      if version then
        local m = show(c, app, id, deadline, d + 1)
        local gone = m and other_version(id, states, version, m)
        if gone then return nil, masked(c, gone) end
      end
    elseif transient(err) then
      first_404, failures = nil, failures + 1
      pause = math.min(5, 0.1 * 2 ^ (failures - 1)) * (0.5 + math.random() / 2)
    else
      return nil, err
    end
    if not cut then last_err = err end
    if pause > 0 then
      local t = now()
      if t + pause >= deadline then -- no time for another poll: the wait ends at its deadline
        c:sleep(math.max(0, deadline - t))
        if err.status == 404 then return nil, err end -- the timeout ends the grace
        break
      end
      c:sleep(pause)
    end
  end
  -- the overall timeout: report the state the machine is in now
  local m, gone = show(c, app, id, deadline, d + 1)
  if not m and wants_destroyed and gone and gone.status == 404 then return "destroyed", version end
  if m and version then
    local e = other_version(id, states, version, m, timeout)
    if e then return nil, masked(c, e) end
  end
  local last = m and m.state or nil
  -- there now (a timeout of 0, or reached as the time ran out): that is the answer
  if type(last) == "string" and wanted(states, last) then
    local ver = m.instance_id
    if type(ver) ~= "string" or ver == "" then ver = version end
    return last, ver
  end
  local cause = last_err and last_err.status ~= 408 and last_err or nil
  return nil, masked(c, Error.new {
    code = "timeout", operation = "Machines_wait", retryable = true, state = last, cause = cause,
    message = ("machine %s did not reach %s within %gs (state: %s)%s"):format(
      id, table.concat(states, " or "), timeout, tostring(last or "unknown"),
      cause and (", last error: " .. tostring(cause)) or ""),
  })
end

--- Waits until a machine reaches a state, looping the API's long-poll.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `state` or `states` (default "started"; several allowed),
-- `timeout` (overall seconds, default 300), `version` (the machine's `instance_id`),
-- `from_event_id`, `not_found_grace` (seconds a 404 is tolerated, default 5)
-- @treturn string the state reached
-- @treturn string the machine version, when known
-- @return or nil, fly.Error (`code = "timeout"` with `err.state`, the last state seen;
-- `code = "superseded"` when the machine runs a newer version than `opts.version`)
function Machines:wait(app, id, opts)
  if not resource.is_namespace(self) then resource.dot_call("machines:wait", 2) end
  local s, v = wait(self.client, app, id, opts, "machines:wait", 2)
  return s, v
end

--- Waits until this machine reaches a state, scoped to its version (`m.instance_id`).
-- @param[opt] state a state or an array of states (default "started")
-- @tparam[opt] table opts `timeout`, `version` (false: any version), `from_event_id`,
-- `not_found_grace`
-- @treturn string the state reached (also set as `m.state`)
-- @treturn string the version
-- @return or nil, fly.Error
function Machine:wait(state, opts)
  local c, ctx = owner(self, "machine:wait")
  if type(state) == "table" and state[1] == nil and opts == nil then state, opts = nil, state end
  check(opts, "?table", "opts", "machine:wait", 2)
  local o = merge(opts)
  if state ~= nil then o.states, o.state = state, nil end
  if o.version == nil and type(self.instance_id) == "string" and self.instance_id ~= "" then
    o.version = self.instance_id
  end
  local s, v = wait(c, ctx.app, self.id, o, "machine:wait", 2)
  if s and s ~= "destroyed" then
    rawset(self, "state", s)
    if ctx.view then rawset(ctx.view, "state", s) end
  end
  return s, v
end

---------------------------------------------------------------------------- with_lease

-- Copies an error, giving it another code.
local function recode(err, code)
  return Error.new(merge(err, { code = code, cause = err }))
end

local LEASE_OPTIONS = { ttl = "number", description = "string", wait = "number" }

-- Not bounded by the client's deadline: a lease left held blocks everyone until its TTL ends.
local RELEASE_OPTS = { deadline = math.huge }

local function release(c, app, id, nonce, d)
  return call(c, "Machines_release_lease", { app_name = app, machine_id = id, lease_nonce = nonce }, RELEASE_OPTS,
    d + 1)
end

-- Asks for the lease. Inside a task (`holder`) the request is made by a task of its own, so
-- that cancelling the holder never abandons a grant in flight: the holder's cleanup waits for
-- the answer and releases what was granted.
local function acquire(c, app, id, body, d, holder)
  local params = { app_name = app, machine_id = id, body = body }
  if not holder or not compat.can_yield() then -- (a join could not wait where no yield works)
    return call(c, "Machines_create_lease", params, nil, d + 1)
  end
  local asking = c:spawn(call, c, "Machines_create_lease", params, nil, 1)
  loop.shield(asking) -- closing the client lets it finish: the cleanup below waits for its grant
  local hook = loop.on_cancel(holder, function()
    local granted = parse_lease((asking:join()))
    if type(granted) == "table" and granted.nonce then release(c, app, id, granted.nonce, 1) end
  end)
  local lease, err = asking:join()
  loop.off_cancel(holder, hook)
  return lease, err
end

-- Runs fn(leased, lease) while holding a lease; see the README, Leases. `base` is the
-- Machine with_lease was called on (nil from the namespace): `leased` is a view of it.
local function with_lease(c, app, id, opts, fn, base, name, d)
  check(app, "string", "app", name, d + 1)
  check(id, "string", "id", name, d + 1)
  opts = options(opts, LEASE_OPTIONS, "opts", name, d + 1)
  check(fn, "function", "fn", name, d + 1)
  local ttl, why = lease_ttl(opts.ttl, "opts.ttl")
  if not ttl then error(("fly: %s: %s"):format(name, why), d + 1) end
  local patience = opts.wait or 0
  nonnegative(patience, "wait", name, d + 1)
  local give_up = now() + patience
  local body = { ttl = ttl, description = opts.description or "fly-machines (Lua)" }
  local holder = loop.current(c)
  local lease, err
  while true do
    lease, err = acquire(c, app, id, body, d + 1, holder)
    if lease then break end
    if err.status ~= 409 then return nil, err end
    local left = give_up - now()
    if left <= 0 then return nil, recode(err, "lease_held") end
    c:sleep(math.min(0.5, left))
  end
  lease = parse_lease(lease)
  local nonce = type(lease) == "table" and lease.nonce
  if type(nonce) ~= "string" or nonce == "" then -- nothing to hold it by: fn never runs unprotected
    return nil, Error.new {
      code = "protocol", operation = "Machines_create_lease", retryable = false,
      message = ("the lease answer for machine %s carries no nonce: the lease cannot be used or released "
        .. "(a lease the server granted expires after its ttl, %gs)"):format(id, ttl),
    }
  end
  -- The refresher, and whether its refresh is on its way. Stopped before the release: a refresh
  -- on its way is let end first (the server could take the lease again with it, after the
  -- release), where this can wait for it.
  local refresher, refreshing, stopping = nil, false, false
  local function stop_refresher()
    stopping = true
    if not refresher then return end
    if not refreshing then
      refresher:cancel()
    elseif loop.current(c) and not compat.can_yield() then
      -- a task where no yield works (a C function's callback; a pcall on Lua 5.1) drives the
      -- loop from here, as a call there does
      while refresher:status() == "running" do loop.drive(c, 0.05) end
    else
      refresher:join() -- (yields inside a task, drives the loop outside any)
    end
  end
  -- from here a task cancelled never gets back: release from a task then
  local hook = holder and loop.on_cancel(holder, function()
    stop_refresher()
    release(c, app, id, nonce, 1)
  end)
  local fields
  if base then
    fields = merge(base)
  else
    local m, gerr = call(c, "Machines_show", { app_name = app, machine_id = id }, nil, d + 1)
    if not m then
      if hook then loop.off_cancel(holder, hook) end
      release(c, app, id, nonce, d + 1)
      return nil, gerr
    end
    fields = m
  end
  local leased = resource.bind(Machine, fields, c, { app = app, nonce = nonce, lease = lease, view = base })
  local interval = math.max((ttl - 1) / 3, 0.2)
  local refresh = { app_name = app, machine_id = id, lease_nonce = nonce, body = { ttl = ttl } }
  local refresh_opts = { deadline = interval } -- the next refresh comes then: not the client's deadline
  refresher = c:spawn(function()
    while not stopping do
      c:sleep(interval)
      refreshing = true
      local fresh = parse_lease((call(c, "Machines_create_lease", refresh, refresh_opts, 1)))
      refreshing = false
      if type(fresh) == "table" and fresh.expires_at then lease.expires_at = fresh.expires_at end
    end
  end)
  loop.background(c, refresher) -- not one of the tasks client:run waits for
  local results = pack(compat.pcall(fn, leased, lease))
  stop_refresher()
  release(c, app, id, nonce, d + 1)
  -- (until the release is done, a cancel still releases: this one may not have gone out)
  if hook then loop.off_cancel(holder, hook) end
  if not results[1] then error(results[2], 0) end
  return unpack(results, 2, results.n)
end

--- Runs `fn(leased, lease)` holding a lease on the machine, refreshing it while fn runs and
-- always releasing it.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `ttl` (default 15), `description`, `wait` (seconds to keep trying
-- while someone else holds the lease, default 0)
-- @tparam function fn gets a Machine whose calls carry the nonce, and the lease
-- @return what fn returns, or nil, fly.Error (`code = "lease_held"` when the lease stayed taken)
-- @raise what fn raises (after the release)
function Machines:with_lease(app, id, opts, fn)
  if not resource.is_namespace(self) then resource.dot_call("machines:with_lease", 2) end
  if type(opts) == "function" and fn == nil then opts, fn = nil, opts end
  local res = pack(with_lease(self.client, app, id, opts, fn, nil, "machines:with_lease", 2))
  return unpack(res, 1, res.n)
end

--- Runs `fn(leased, lease)` holding a lease on this machine (see Machines:with_lease).
-- `leased` is a view of this machine whose calls carry the nonce: what changes it in place
-- (`leased:update`, `leased:refresh`, `leased:wait`) changes this machine too.
-- @tparam[opt] table opts `ttl`, `description`, `wait`
-- @tparam function fn
function Machine:with_lease(opts, fn)
  local c, ctx = owner(self, "machine:with_lease")
  if type(opts) == "function" and fn == nil then opts, fn = nil, opts end
  local res = pack(with_lease(c, ctx.app, self.id, opts, fn, ctx.view or self, "machine:with_lease", 2))
  return unpack(res, 1, res.n)
end

---------------------------------------------------------------------------- other object methods

--- Reloads this machine from the API, in place.
-- @treturn Machine this machine, or nil, fly.Error
function Machine:refresh(extra)
  if type(extra) == "table" then resource.no_options("machine:refresh") end -- (a number: client:map's index)
  local c, ctx = owner(self, "machine:refresh")
  check(self.id, "string", "id", "machine:refresh", 2)
  local fresh, err = call(c, "Machines_show", { app_name = ctx.app, machine_id = self.id }, nil, 2)
  if type(fresh) ~= "table" then return nil, err end
  return resource.settle(self, fresh)
end

--- The app this machine belongs to (from the binding, not a JSON field).
-- @treturn string
function Machine:app()
  local _, ctx = owner(self, "machine:app")
  return ctx.app
end

--- The lease nonce this object's calls carry (inside with_lease), or nil.
-- @treturn string
function Machine:lease_nonce()
  local _, ctx = owner(self, "machine:lease_nonce")
  return ctx.nonce
end

Machines.Machine = Machine
return Machines
