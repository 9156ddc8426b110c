--- client.machines: Fly Machines, with waits, leases, metadata and memory.
--
-- Every method of the namespace takes the app name and (but for `list` and
-- `create`) the machine id first: `client.machines:start(app, id, opts)`.
-- `get`, `list`, `create` and `update` return Machine objects: the API's
-- Machine tables with methods bound to the client and the app
-- (`m:start()`, `m:wait("started")`, `m:with_lease(opts, fn)`, …).
-- @module fly.machines
local core = require "fly.core"
local json = require "fly.json"
local Error = require "fly.error"
local resource = require "fly.resource"
local loop = require "fly.loop"

local call, check, owner, merge = resource.call, resource.check, resource.owner, resource.merge
local now = core.now
local null = json.null
local pack, unpack = require("fly.compat").pack, require("fly.compat").unpack

--- The namespace (`client.machines`).
local Machines = { __name = "fly.machines" }
Machines.__index = Machines

--- A Fly Machine as the API returns it, with methods.
local Machine = resource.class("fly.Machine")

--- Which method calls which operation (every operation of tag "Machines").
Machines.operations = {
  list = "Machines_list",
  create = "Machines_create",
  get = "Machines_show",
  update = "Machines_update",
  destroy = "Machines_delete",
  start = "Machines_start",
  stop = "Machines_stop",
  restart = "Machines_restart",
  signal = "Machines_signal",
  suspend = "Machines_suspend",
  cordon = "Machines_cordon",
  uncordon = "Machines_uncordon",
  list_events = "Machines_list_events",
  list_processes = "Machines_list_processes",
  list_versions = "Machines_list_versions",
  wait = "Machines_wait",
  exec = "Machines_exec",
  get_lease = "Machines_show_lease",
  acquire_lease = "Machines_create_lease",
  refresh_lease = "Machines_create_lease",
  release_lease = "Machines_release_lease",
  get_metadata = "Machines_show_metadata",
  get_metadata_key = "Machines_get_metadata_key",
  set_metadata = "Machines_upsert_metadata",
  update_metadata = "Machines_update_metadata",
  patch_metadata = "Machines_patch_metadata",
  delete_metadata = "Machines_delete_metadata",
  get_memory = "Machines_get_memory",
  set_memory_limit = "Machines_set_memory_limit",
  reclaim_memory = "Machines_reclaim_memory",
}

--- Default lease TTL in seconds (flyctl uses 13–15).
Machines.DEFAULT_LEASE_TTL = 15
--- Default overall timeout of a wait, seconds.
Machines.DEFAULT_WAIT_TIMEOUT = 300
--- Longest server-side long-poll the API accepts, seconds.
Machines.MAX_POLL = 60
--- How long a wait tolerates 404 (eventual consistency after create), seconds.
Machines.DEFAULT_NOT_FOUND_GRACE = 5

-- Operations that change a machine: they carry the lease nonce when one is held
-- (API-NOTES: every mutating call on a leased machine must send it).
local MUTATING = {}
for _, op in ipairs(core.operations()) do
  if op.tag == "Machines" and op.method ~= "GET" and op.id ~= "Machines_create" then
    MUTATING[op.id] = true
  end
end

-- Depth convention: every internal function takes `d`, how many levels above
-- it the user's call is (1 = its caller). check/invoke are given d + 1.

local function invoke(client, op, params, copts, nonce, d)
  if nonce ~= nil and MUTATING[op] then params.lease_nonce = nonce end
  local res, err = call(client, op, params, copts, d + 1)
  return res, err
end

local function need(app, id, name, d)
  check(app, "string", "app", name, d + 1)
  if id ~= false then check(id, "string", "id", name, d + 1) end
end

-- Checks an options table against the keys a method accepts.
local function options(opts, allowed, name, d)
  if opts == nil then return {} end
  check(opts, "table", "opts", name, d + 1)
  for k in pairs(opts) do
    if not allowed[k] then
      error(("fly: %s: unknown option '%s'"):format(name, tostring(k)), d + 1)
    end
  end
  return opts
end

local function set(...)
  local t = {}
  for _, k in ipairs { ... } do t[k] = true end
  return t
end

local NONCE_ONLY = set("lease_nonce")

local function bind_machine(client, res, app, nonce)
  if type(res) ~= "table" then return res end
  return resource.bind(Machine, res, client, { app = app, nonce = nonce })
end

local replace_fields = resource.replace_fields

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

local I = {}  -- implementations shared by the namespace and Machine objects

function I.list(c, app, params, d)
  local name = "machines:list"
  need(app, false, name, d + 1)
  if params ~= nil then check(params, "table", "params", name, d + 1) end
  local res, err = invoke(c, "Machines_list", merge(params, { app_name = app }), nil, nil, d + 1)
  if type(res) == "table" then
    for i = 1, #res do bind_machine(c, res[i], app) end
  end
  return res, err
end

function I.create(c, app, body, d)
  local name = "machines:create"
  need(app, false, name, d + 1)
  check(body, "table", "body", name, d + 1)
  local res, err = invoke(c, "Machines_create", { app_name = app, body = body }, nil, nil, d + 1)
  if type(res) == "table" then
    local nonce = res.nonce
    if type(nonce) ~= "string" or nonce == "" then nonce = nil end
    bind_machine(c, res, app, nonce)
  end
  return res, err
end

function I.get(c, app, id, params, nonce, d)
  local name = "machines:get"
  need(app, id, name, d + 1)
  params = options(params, set("include_leases"), name, d + 1)
  local p = { app_name = app, machine_id = id, include_leases = params.include_leases }
  local res, err = invoke(c, "Machines_show", p, nil, nil, d + 1)
  return bind_machine(c, res, app, nonce), err
end

function I.update(c, app, id, body, opts, nonce, d)
  local name = "machines:update"
  need(app, id, name, d + 1)
  check(body, "table", "body", name, d + 1)
  if rawget(body, "config") == nil then body = { config = body } end -- a bare config
  opts = options(opts, NONCE_ONLY, name, d + 1)
  nonce = opts.lease_nonce or nonce
  local res, err = invoke(c, "Machines_update", { app_name = app, machine_id = id, body = body }, nil,
    nonce, d + 1)
  return bind_machine(c, res, app, nonce), err
end

function I.destroy(c, app, id, opts, nonce, d)
  local name = "machines:destroy"
  need(app, id, name, d + 1)
  opts = options(opts, set("force", "lease_nonce"), name, d + 1)
  local res, err = invoke(c, "Machines_delete", { app_name = app, machine_id = id, force = opts.force }, nil,
    opts.lease_nonce or nonce, d + 1)
  return res, err
end

-- start, suspend, cordon, uncordon: no parameters but the lease nonce.
local function simple_action(method, op)
  return function(c, app, id, opts, nonce, d)
    local name = "machines:" .. method
    need(app, id, name, d + 1)
    opts = options(opts, NONCE_ONLY, name, d + 1)
    local res, err = invoke(c, op, { app_name = app, machine_id = id }, nil, opts.lease_nonce or nonce, d + 1)
    return res, err
  end
end
I.start = simple_action("start", "Machines_start")
I.suspend = simple_action("suspend", "Machines_suspend")
I.cordon = simple_action("cordon", "Machines_cordon")
I.uncordon = simple_action("uncordon", "Machines_uncordon")

-- A stop timeout goes as a Go duration: numbers are seconds.
local function duration(v)
  if type(v) == "number" then return ("%gs"):format(v) end
  return v
end

function I.stop(c, app, id, opts, nonce, d)
  local name = "machines:stop"
  need(app, id, name, d + 1)
  opts = options(opts, set("signal", "timeout", "lease_nonce"), name, d + 1)
  if opts.signal ~= nil then check(opts.signal, "string", "opts.signal", name, d + 1) end
  local body = { signal = opts.signal, timeout = duration(opts.timeout) }  -- always a JSON body
  local res, err = invoke(c, "Machines_stop", { app_name = app, machine_id = id, body = body }, nil,
    opts.lease_nonce or nonce, d + 1)
  return res, err
end

function I.restart(c, app, id, opts, nonce, d)
  local name = "machines:restart"
  need(app, id, name, d + 1)
  opts = options(opts, set("signal", "timeout", "lease_nonce"), name, d + 1)
  local p = { app_name = app, machine_id = id, signal = opts.signal, timeout = opts.timeout }
  local res, err = invoke(c, "Machines_restart", p, nil, opts.lease_nonce or nonce, d + 1)
  return res, err
end

function I.signal(c, app, id, sig, opts, nonce, d)
  local name = "machines:signal"
  need(app, id, name, d + 1)
  check(sig, "string", "signal", name, d + 1)
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local res, err = invoke(c, "Machines_signal", { app_name = app, machine_id = id, body = { signal = sig } },
    nil, opts.lease_nonce or nonce, d + 1)
  return res, err
end

-- events, processes, versions: reads with optional query parameters.
local function read(method, op, allowed)
  return function(c, app, id, params, d)
    local name = "machines:" .. method
    need(app, id, name, d + 1)
    params = options(params, allowed, name, d + 1)
    local res, err = invoke(c, op, merge(params, { app_name = app, machine_id = id }), nil, nil, d + 1)
    return res, err
  end
end
I.list_events = read("list_events", "Machines_list_events", set("limit"))
I.list_processes = read("list_processes", "Machines_list_processes", set("sort_by", "order"))
I.list_versions = read("list_versions", "Machines_list_versions", {})

-- A command: a string runs under `sh -c`, an array runs as it is, a table
-- with `command` or `cmd` is the whole request.
local function exec_request(cmd, name, d)
  if type(cmd) == "string" then return { command = { "sh", "-c", cmd } } end
  check(cmd, "table", "command", name, d + 1)
  if cmd.command ~= nil or cmd.cmd ~= nil then return cmd end
  if #cmd == 0 then error(("fly: %s: command must not be empty"):format(name), d + 1) end
  return { command = cmd }
end

function I.exec(c, app, id, cmd, opts, nonce, d)
  local name = "machines:exec"
  need(app, id, name, d + 1)
  local body = exec_request(cmd, name, d + 1)
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local copts
  if type(body.timeout) == "number" then copts = { timeout = body.timeout + 10 } end
  local res, err = invoke(c, "Machines_exec", { app_name = app, machine_id = id, body = body }, copts,
    opts.lease_nonce or nonce, d + 1)
  return res, err
end

---------------------------------------------------------------------------- wait

local WAIT_OPTIONS = set("state", "states", "timeout", "version", "from_event_id", "not_found_grace")

local function wait_states(opts, name, d)
  local s = opts.states or opts.state or "started"
  if type(s) == "string" then return { s } end
  check(s, "table", "opts.states", name, d + 1)
  if #s == 0 then error(("fly: %s: states must not be empty"):format(name), d + 1) end
  for i = 1, #s do check(s[i], "string", "each state", name, d + 1) end
  return s
end

-- Waits until the machine reaches one of the states: loops the long-poll
-- under an overall deadline (see the README, Waiting).
function I.wait(c, app, id, opts, d)
  local name = "machines:wait"
  need(app, id, name, d + 1)
  opts = options(opts, WAIT_OPTIONS, name, d + 1)
  local states = wait_states(opts, name, d + 1)
  local timeout = opts.timeout or Machines.DEFAULT_WAIT_TIMEOUT
  check(timeout, "number", "opts.timeout", name, d + 1)
  local grace = opts.not_found_grace or Machines.DEFAULT_NOT_FOUND_GRACE
  check(grace, "number", "opts.not_found_grace", name, d + 1)
  local version = opts.version
  if version == false then version = nil end
  if version ~= nil then check(version, "string", "opts.version", name, d + 1) end
  local wants_destroyed = false
  for _, s in ipairs(states) do
    if s == "destroyed" then wants_destroyed = true end
  end
  local deadline = now() + timeout
  local first_404
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
    local res, err = invoke(c, "Machines_wait", p, { timeout = http_timeout, attempts = 1 }, nil, d + 1)
    if res then
      local st, ver = type(res) == "table" and res.state, type(res) == "table" and res.version
      if type(st) ~= "string" then st = states[1] end
      if type(ver) ~= "string" or ver == "" then ver = version end
      return st, ver
    end
    if err.status == 404 then
      if wants_destroyed then return "destroyed", version end
      local t = now()
      first_404 = first_404 or t
      if t - first_404 >= grace then return nil, err end
      local pause = math.min(0.25, deadline - t, grace - (t - first_404))
      if pause > 0 then c:sleep(pause) end
    elseif err.status == 408 or (err.status == nil and err.code == "timeout") then -- luacheck: ignore 542
      -- not there yet: poll again
    else
      return nil, err
    end
  end
  -- the overall timeout: report the state the machine is in now
  local m = invoke(c, "Machines_show", { app_name = app, machine_id = id }, { attempts = 1 }, nil, d + 1)
  local last = type(m) == "table" and m.state or nil
  return nil, Error.new {
    code = "timeout", operation = "Machines_wait", retryable = true, state = last,
    message = ("machine %s did not reach %s within %gs (state: %s)"):format(
      id, table.concat(states, " or "), timeout, tostring(last or "unknown")),
  }
end

---------------------------------------------------------------------------- leases

function I.get_lease(c, app, id, d)
  need(app, id, "machines:get_lease", d + 1)
  local res, err = invoke(c, "Machines_show_lease", { app_name = app, machine_id = id }, nil, nil, d + 1)
  return parse_lease(res), err
end

local function lease_body(opts, name, d)
  opts = options(opts, set("ttl", "description"), name, d + 1)
  local ttl = opts.ttl or Machines.DEFAULT_LEASE_TTL
  check(ttl, "number", "opts.ttl", name, d + 1)
  if opts.description ~= nil then check(opts.description, "string", "opts.description", name, d + 1) end
  return { ttl = math.ceil(ttl), description = opts.description }
end

function I.acquire_lease(c, app, id, opts, d)
  local name = "machines:acquire_lease"
  need(app, id, name, d + 1)
  local body = lease_body(opts, name, d + 1)
  local res, err = invoke(c, "Machines_create_lease", { app_name = app, machine_id = id, body = body }, nil,
    nil, d + 1)
  return parse_lease(res), err
end

function I.refresh_lease(c, app, id, nonce, ttl, d)
  local name = "machines:refresh_lease"
  need(app, id, name, d + 1)
  check(nonce, "string", "nonce", name, d + 1)
  local body = lease_body({ ttl = ttl }, name, d + 1)
  local res, err = invoke(c, "Machines_create_lease", { app_name = app, machine_id = id, body = body }, nil,
    nonce, d + 1)
  return parse_lease(res), err
end

function I.release_lease(c, app, id, nonce, d)
  local name = "machines:release_lease"
  need(app, id, name, d + 1)
  check(nonce, "string", "nonce", name, d + 1)
  local res, err = invoke(c, "Machines_release_lease", { app_name = app, machine_id = id }, nil, nonce, d + 1)
  return res, err
end

-- Copies an error, giving it another code.
local function recode(err, code)
  local e = merge(err, { code = code, cause = err })
  return Error.new(e)
end

-- Runs fn(leased, lease) while holding a lease; see the README, Leases.
function I.with_lease(c, app, id, opts, fn, base, d)
  local name = "machines:with_lease"
  need(app, id, name, d + 1)
  opts = options(opts, set("ttl", "description", "wait"), name, d + 1)
  check(fn, "function", "fn", name, d + 1)
  local ttl = opts.ttl or Machines.DEFAULT_LEASE_TTL
  local patience = opts.wait or 0
  check(patience, "number", "opts.wait", name, d + 1)
  local give_up = now() + patience
  local lease_opts = { ttl = ttl, description = opts.description or "fly-machines (Lua)" }
  local lease, err
  while true do
    lease, err = I.acquire_lease(c, app, id, lease_opts, d + 1)
    if lease then break end
    if err.status ~= 409 then return nil, err end
    local left = give_up - now()
    if left <= 0 then return nil, recode(err, "lease_held") end
    c:sleep(math.min(0.5, left))
  end
  local nonce = lease.nonce
  local fields
  if base then
    fields = merge(base)
  else
    local m, gerr = I.get(c, app, id, nil, nil, d + 1)
    if not m then
      I.release_lease(c, app, id, nonce, d + 1)
      return nil, gerr
    end
    fields = m
  end
  local leased = resource.bind(Machine, fields, c, { app = app, nonce = nonce, lease = lease })
  local interval = math.max((math.ceil(ttl) - 1) / 3, 0.2)
  local refresher = c:spawn(function()
    while true do
      c:sleep(interval)
      local fresh = I.refresh_lease(c, app, id, nonce, ttl, 1)
      if fresh and fresh.expires_at then lease.expires_at = fresh.expires_at end
    end
  end)
  -- a task cancelled inside fn never gets back here: release from a task then
  local holder = loop.current(c)
  local hook = holder and loop.on_cancel(holder, function()
    refresher:cancel()
    I.release_lease(c, app, id, nonce, 1)
  end)
  local results = pack(pcall(fn, leased, lease))
  if hook then loop.off_cancel(holder, hook) end
  refresher:cancel()
  I.release_lease(c, app, id, nonce, d + 1)
  if not results[1] then error(results[2], 0) end
  return unpack(results, 2, results.n)
end

---------------------------------------------------------------------------- metadata

function I.get_metadata(c, app, id, d)
  need(app, id, "machines:get_metadata", d + 1)
  local res, err = invoke(c, "Machines_show_metadata", { app_name = app, machine_id = id }, nil, nil, d + 1)
  return res, err
end

function I.get_metadata_key(c, app, id, key, d)
  local name = "machines:get_metadata_key"
  need(app, id, name, d + 1)
  check(key, "string", "key", name, d + 1)
  local res, err = invoke(c, "Machines_get_metadata_key", { app_name = app, machine_id = id, key = key }, nil,
    nil, d + 1)
  if type(res) == "table" then res = res.value end
  return res, err
end

function I.set_metadata(c, app, id, key, value, opts, nonce, d)
  local name = "machines:set_metadata"
  need(app, id, name, d + 1)
  check(key, "string", "key", name, d + 1)
  check(value, "string", "value", name, d + 1)
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local p = { app_name = app, machine_id = id, key = key, body = { value = value } }
  local res, err = invoke(c, "Machines_upsert_metadata", p, nil, opts.lease_nonce or nonce, d + 1)
  return res, err
end

local function many(method, op)
  return function(c, app, id, metadata, opts, nonce, d)
    local name = "machines:" .. method
    need(app, id, name, d + 1)
    check(metadata, "table", "metadata", name, d + 1)
    opts = options(opts, set("machine_version", "lease_nonce"), name, d + 1)
    local body = { metadata = metadata, machine_version = opts.machine_version }
    local res, err = invoke(c, op, { app_name = app, machine_id = id, body = body }, nil,
      opts.lease_nonce or nonce, d + 1)
    return res, err
  end
end
I.update_metadata = many("update_metadata", "Machines_update_metadata")
I.patch_metadata = many("patch_metadata", "Machines_patch_metadata")

function I.delete_metadata(c, app, id, key, opts, nonce, d)
  local name = "machines:delete_metadata"
  need(app, id, name, d + 1)
  check(key, "string", "key", name, d + 1)
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local res, err = invoke(c, "Machines_delete_metadata", { app_name = app, machine_id = id, key = key }, nil,
    opts.lease_nonce or nonce, d + 1)
  return res, err
end

---------------------------------------------------------------------------- memory

function I.get_memory(c, app, id, d)
  need(app, id, "machines:get_memory", d + 1)
  local res, err = invoke(c, "Machines_get_memory", { app_name = app, machine_id = id }, nil, nil, d + 1)
  return res, err
end

function I.set_memory_limit(c, app, id, limit_mb, opts, nonce, d)
  local name = "machines:set_memory_limit"
  need(app, id, name, d + 1)
  check(limit_mb, "number", "limit_mb", name, d + 1)
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local p = { app_name = app, machine_id = id, body = { limit_mb = math.tointeger(limit_mb) or limit_mb } }
  local res, err = invoke(c, "Machines_set_memory_limit", p, nil, opts.lease_nonce or nonce, d + 1)
  return res, err
end

function I.reclaim_memory(c, app, id, amount_mb, opts, nonce, d)
  local name = "machines:reclaim_memory"
  need(app, id, name, d + 1)
  if amount_mb ~= nil then check(amount_mb, "number", "amount_mb", name, d + 1) end
  opts = options(opts, NONCE_ONLY, name, d + 1)
  local body = { amount_mb = amount_mb and (math.tointeger(amount_mb) or amount_mb) }
  local res, err = invoke(c, "Machines_reclaim_memory", { app_name = app, machine_id = id, body = body }, nil,
    opts.lease_nonce or nonce, d + 1)
  return res, err
end

---------------------------------------------------------------------------- the namespace

--- Lists the machines of an app.
-- @tparam string app
-- @tparam[opt] table params `include_deleted`, `include_leases`, `region`, `state`, `summary`
-- (booleans / strings) and `metadata = { key = value }` (sent as `metadata.key=value`)
-- @treturn {Machine,...} or nil, fly.Error
function Machines:list(app, params)
  local r, e = I.list(self.client, app, params, 2)
  return r, e
end

--- Creates a machine.
-- @tparam string app
-- @tparam table body the request: `config` (with `image`), `region`, `name`, `skip_launch`,
-- `lease_ttl`, … (a machine created with `lease_ttl` comes back holding that lease)
-- @treturn Machine or nil, fly.Error
function Machines:create(app, body)
  local r, e = I.create(self.client, app, body, 2)
  return r, e
end

--- Gets one machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table params `include_leases`
-- @treturn Machine or nil, fly.Error
function Machines:get(app, id, params)
  local r, e = I.get(self.client, app, id, params, nil, 2)
  return r, e
end

--- Updates a machine's configuration (a new version; a running machine is replaced).
-- @tparam string app
-- @tparam string id
-- @tparam table body the request: `config` (the whole new config), `current_version`,
-- `skip_launch`, `region`, `name`, …; or a bare config (a table without `config`)
-- @tparam[opt] table opts `lease_nonce`
-- @treturn Machine or nil, fly.Error
function Machines:update(app, id, body, opts)
  local r, e = I.update(self.client, app, id, body, opts, nil, 2)
  return r, e
end

--- Destroys a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `force` (true: also a running machine), `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:destroy(app, id, opts)
  local r, e = I.destroy(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Starts a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `lease_nonce`
-- @return the API's answer (true or a table), or nil, fly.Error
function Machines:start(app, id, opts)
  local r, e = I.start(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Stops a machine. Always sends a JSON body.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `signal` (e.g. "SIGTERM"), `timeout` (seconds, or a Go duration
-- string such as "30s"), `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:stop(app, id, opts)
  local r, e = I.stop(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Restarts a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `signal`, `timeout` (seconds or a Go duration), `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:restart(app, id, opts)
  local r, e = I.restart(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Sends a signal to a machine's process.
-- @tparam string app
-- @tparam string id
-- @tparam string signal e.g. "SIGUSR1"
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:signal(app, id, signal, opts)
  local r, e = I.signal(self.client, app, id, signal, opts, nil, 2)
  return r, e
end

--- Suspends a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:suspend(app, id, opts)
  local r, e = I.suspend(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Cordons a machine (the proxy sends it no traffic).
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:cordon(app, id, opts)
  local r, e = I.cordon(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Uncordons a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:uncordon(app, id, opts)
  local r, e = I.uncordon(self.client, app, id, opts, nil, 2)
  return r, e
end

--- Lists a machine's events, newest first.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table params `limit`
-- @treturn table events, or nil, fly.Error
function Machines:list_events(app, id, params)
  local r, e = I.list_events(self.client, app, id, params, 2)
  return r, e
end

--- Lists the processes running in a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table params `sort_by` (pid, cpu, rss, rtime, stime, command), `order` (asc, desc)
-- @treturn table processes, or nil, fly.Error
function Machines:list_processes(app, id, params)
  local r, e = I.list_processes(self.client, app, id, params, 2)
  return r, e
end

--- Lists a machine's versions, newest first.
-- @tparam string app
-- @tparam string id
-- @treturn table `{ { version, user_config }, … }`, or nil, fly.Error
function Machines:list_versions(app, id)
  local r, e = I.list_versions(self.client, app, id, nil, 2)
  return r, e
end

--- Waits until a machine reaches a state, looping the API's long-poll.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `state` or `states` (default "started"; several allowed),
-- `timeout` (overall seconds, default 300), `version` (the machine's `instance_id`),
-- `from_event_id`, `not_found_grace` (seconds a 404 is tolerated, default 5)
-- @treturn string the state reached
-- @treturn string the machine version, when known
-- @return or nil, fly.Error (`code = "timeout"` with `err.state`, the last state seen)
function Machines:wait(app, id, opts)
  local s, v = I.wait(self.client, app, id, opts, 2)
  return s, v
end

--- Runs a command in a machine.
-- @tparam string app
-- @tparam string id
-- @param command a string (run by `sh -c`), an array of arguments, or the whole request
-- (`{ command = {…}, stdin =, timeout =, container = }`)
-- @tparam[opt] table opts `lease_nonce`
-- @treturn table `{ stdout, stderr, exit_code }`, or nil, fly.Error
function Machines:exec(app, id, command, opts)
  local r, e = I.exec(self.client, app, id, command, opts, nil, 2)
  return r, e
end

--- Shows the lease held on a machine.
-- @tparam string app
-- @tparam string id
-- @treturn table `{ nonce?, expires_at, owner, version, description }`, or nil, fly.Error
-- (404 when there is none)
function Machines:get_lease(app, id)
  local r, e = I.get_lease(self.client, app, id, 2)
  return r, e
end

--- Acquires a lease on a machine.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] table opts `ttl` (seconds, default 15), `description`
-- @treturn table `{ nonce, expires_at, owner, version, description }`, or nil, fly.Error
-- (409 when someone else holds one)
function Machines:acquire_lease(app, id, opts)
  local r, e = I.acquire_lease(self.client, app, id, opts, 2)
  return r, e
end

--- Extends a lease you hold.
-- @tparam string app
-- @tparam string id
-- @tparam string nonce
-- @tparam[opt] number ttl seconds from now (default 15)
-- @treturn table the lease, or nil, fly.Error
function Machines:refresh_lease(app, id, nonce, ttl)
  local r, e = I.refresh_lease(self.client, app, id, nonce, ttl, 2)
  return r, e
end

--- Releases a lease you hold.
-- @tparam string app
-- @tparam string id
-- @tparam string nonce
-- @return true, or nil, fly.Error
function Machines:release_lease(app, id, nonce)
  local r, e = I.release_lease(self.client, app, id, nonce, 2)
  return r, e
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
  local res = pack(I.with_lease(self.client, app, id, opts, fn, nil, 2))
  return unpack(res, 1, res.n)
end

--- The machine's metadata.
-- @tparam string app
-- @tparam string id
-- @treturn table `{ key = value, … }`, or nil, fly.Error
function Machines:get_metadata(app, id)
  local r, e = I.get_metadata(self.client, app, id, 2)
  return r, e
end

--- One metadata value.
-- @tparam string app
-- @tparam string id
-- @tparam string key
-- @treturn string the value, or nil, fly.Error (404 when the key is not set)
function Machines:get_metadata_key(app, id, key)
  local r, e = I.get_metadata_key(self.client, app, id, key, 2)
  return r, e
end

--- Sets one metadata key.
-- @tparam string app
-- @tparam string id
-- @tparam string key
-- @tparam string value
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:set_metadata(app, id, key, value, opts)
  local r, e = I.set_metadata(self.client, app, id, key, value, opts, nil, 2)
  return r, e
end

--- Sets many metadata keys at once (PUT).
-- @tparam string app
-- @tparam string id
-- @tparam table metadata `{ key = value, … }` (`fly.null` or "" removes a key)
-- @tparam[opt] table opts `machine_version` (412 when the machine has another), `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:update_metadata(app, id, metadata, opts)
  local r, e = I.update_metadata(self.client, app, id, metadata, opts, nil, 2)
  return r, e
end

--- Sets many metadata keys at once (PATCH); same parameters as update_metadata.
-- @tparam string app
-- @tparam string id
-- @tparam table metadata
-- @tparam[opt] table opts `machine_version`, `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:patch_metadata(app, id, metadata, opts)
  local r, e = I.patch_metadata(self.client, app, id, metadata, opts, nil, 2)
  return r, e
end

--- Deletes one metadata key.
-- @tparam string app
-- @tparam string id
-- @tparam string key
-- @tparam[opt] table opts `lease_nonce`
-- @return true, or nil, fly.Error
function Machines:delete_metadata(app, id, key, opts)
  local r, e = I.delete_metadata(self.client, app, id, key, opts, nil, 2)
  return r, e
end

--- The machine's memory limit and availability.
-- @tparam string app
-- @tparam string id
-- @treturn table `{ limit_mb, available_mb }`, or nil, fly.Error
function Machines:get_memory(app, id)
  local r, e = I.get_memory(self.client, app, id, 2)
  return r, e
end

--- Sets the machine's memory limit.
-- @tparam string app
-- @tparam string id
-- @tparam number limit_mb
-- @tparam[opt] table opts `lease_nonce`
-- @treturn table `{ limit_mb, available_mb }`, or nil, fly.Error
function Machines:set_memory_limit(app, id, limit_mb, opts)
  local r, e = I.set_memory_limit(self.client, app, id, limit_mb, opts, nil, 2)
  return r, e
end

--- Asks the machine to give memory back.
-- @tparam string app
-- @tparam string id
-- @tparam[opt] number amount_mb
-- @tparam[opt] table opts `lease_nonce`
-- @treturn table `{ actual_mb }`, or nil, fly.Error
function Machines:reclaim_memory(app, id, amount_mb, opts)
  local r, e = I.reclaim_memory(self.client, app, id, amount_mb, opts, nil, 2)
  return r, e
end

---------------------------------------------------------------------------- Machine objects

-- The client, app and lease nonce a Machine was bound with (raises at the user's line
-- when the object is not bound).
local function ctx(m)
  local ok, c, context = pcall(owner, m)
  if not ok then error("fly: this object is not bound to a client", 3) end
  return c, context.app, context.nonce
end

--- Starts this machine.
-- @return true, or nil, fly.Error
function Machine:start()
  local c, app, nonce = ctx(self)
  local r, e = I.start(c, app, self.id, nil, nonce, 2)
  return r, e
end

--- Stops this machine.
-- @tparam[opt] table opts `signal`, `timeout`
-- @return true, or nil, fly.Error
function Machine:stop(opts)
  local c, app, nonce = ctx(self)
  local r, e = I.stop(c, app, self.id, opts, nonce, 2)
  return r, e
end

--- Restarts this machine.
-- @tparam[opt] table opts `signal`, `timeout`
-- @return true, or nil, fly.Error
function Machine:restart(opts)
  local c, app, nonce = ctx(self)
  local r, e = I.restart(c, app, self.id, opts, nonce, 2)
  return r, e
end

--- Sends a signal to this machine.
-- @tparam string signal
-- @return true, or nil, fly.Error
function Machine:signal(signal)
  local c, app, nonce = ctx(self)
  local r, e = I.signal(c, app, self.id, signal, nil, nonce, 2)
  return r, e
end

--- Suspends this machine.
-- @return true, or nil, fly.Error
function Machine:suspend()
  local c, app, nonce = ctx(self)
  local r, e = I.suspend(c, app, self.id, nil, nonce, 2)
  return r, e
end

--- Destroys this machine.
-- @tparam[opt] table opts `force`
-- @return true, or nil, fly.Error
function Machine:destroy(opts)
  local c, app, nonce = ctx(self)
  local r, e = I.destroy(c, app, self.id, opts, nonce, 2)
  return r, e
end

--- Cordons this machine.
-- @return true, or nil, fly.Error
function Machine:cordon()
  local c, app, nonce = ctx(self)
  local r, e = I.cordon(c, app, self.id, nil, nonce, 2)
  return r, e
end

--- Uncordons this machine.
-- @return true, or nil, fly.Error
function Machine:uncordon()
  local c, app, nonce = ctx(self)
  local r, e = I.uncordon(c, app, self.id, nil, nonce, 2)
  return r, e
end

--- Updates this machine: a config table is sent as `{ config = … }`, a table with a
-- `config` key as the whole request. The object takes the new fields.
-- @tparam table config_or_request
-- @treturn Machine this machine, or nil, fly.Error
function Machine:update(config_or_request)
  local c, app, nonce = ctx(self)
  check(config_or_request, "table", "config", "machine:update", 2)
  local fresh, err = I.update(c, app, self.id, config_or_request, nil, nonce, 2)
  if not fresh then return nil, err end
  return replace_fields(self, fresh)
end

--- Reloads this machine from the API, in place.
-- @treturn Machine this machine, or nil, fly.Error
function Machine:refresh()
  local c, app = ctx(self)
  local fresh, err = I.get(c, app, self.id, nil, nil, 2)
  if not fresh then return nil, err end
  return replace_fields(self, fresh)
end

--- Waits until this machine reaches a state (scoped to its version when known).
-- @param[opt] state a state or an array of states (default "started")
-- @tparam[opt] table opts `timeout`, `version` (false: any version), `from_event_id`,
-- `not_found_grace`
-- @treturn string the state reached
-- @treturn string the version
-- @return or nil, fly.Error
function Machine:wait(state, opts)
  local c, app = ctx(self)
  if type(state) == "table" and state[1] == nil and opts == nil then state, opts = nil, state end
  if opts ~= nil then check(opts, "table", "opts", "machine:wait", 2) end
  local o = merge(opts)
  if state ~= nil then o.states, o.state = state, nil end
  if o.version == nil and type(self.instance_id) == "string" and self.instance_id ~= "" then
    o.version = self.instance_id
  end
  local s, v = I.wait(c, app, self.id, o, 2)
  if s and s ~= "destroyed" then rawset(self, "state", s) end
  return s, v
end

--- This machine's events, newest first.
-- @tparam[opt] table params `limit`
function Machine:list_events(params)
  local c, app = ctx(self)
  local r, e = I.list_events(c, app, self.id, params, 2)
  return r, e
end

--- This machine's processes.
-- @tparam[opt] table params `sort_by`, `order`
function Machine:list_processes(params)
  local c, app = ctx(self)
  local r, e = I.list_processes(c, app, self.id, params, 2)
  return r, e
end

--- This machine's versions, newest first.
function Machine:list_versions()
  local c, app = ctx(self)
  local r, e = I.list_versions(c, app, self.id, nil, 2)
  return r, e
end

--- Runs a command in this machine.
-- @param command a string (run by `sh -c`), an array, or the whole request
-- @treturn table `{ stdout, stderr, exit_code }`, or nil, fly.Error
function Machine:exec(command)
  local c, app, nonce = ctx(self)
  local r, e = I.exec(c, app, self.id, command, nil, nonce, 2)
  return r, e
end

--- The lease held on this machine.
function Machine:get_lease()
  local c, app = ctx(self)
  local r, e = I.get_lease(c, app, self.id, 2)
  return r, e
end

--- Acquires a lease on this machine.
-- @tparam[opt] table opts `ttl`, `description`
function Machine:acquire_lease(opts)
  local c, app = ctx(self)
  local r, e = I.acquire_lease(c, app, self.id, opts, 2)
  return r, e
end

--- Extends a lease on this machine.
-- @tparam string nonce
-- @tparam[opt] number ttl
function Machine:refresh_lease(nonce, ttl)
  local c, app = ctx(self)
  local r, e = I.refresh_lease(c, app, self.id, nonce, ttl, 2)
  return r, e
end

--- Releases a lease on this machine.
-- @tparam string nonce
function Machine:release_lease(nonce)
  local c, app = ctx(self)
  local r, e = I.release_lease(c, app, self.id, nonce, 2)
  return r, e
end

--- Runs `fn(leased, lease)` holding a lease on this machine (see Machines:with_lease).
-- `leased` is a copy of this machine whose calls carry the nonce.
-- @tparam[opt] table opts `ttl`, `description`, `wait`
-- @tparam function fn
function Machine:with_lease(opts, fn)
  local c, app = ctx(self)
  if type(opts) == "function" and fn == nil then opts, fn = nil, opts end
  local res = pack(I.with_lease(c, app, self.id, opts, fn, self, 2))
  return unpack(res, 1, res.n)
end

--- This machine's metadata.
function Machine:get_metadata()
  local c, app = ctx(self)
  local r, e = I.get_metadata(c, app, self.id, 2)
  return r, e
end

--- One metadata value of this machine.
-- @tparam string key
function Machine:get_metadata_key(key)
  local c, app = ctx(self)
  local r, e = I.get_metadata_key(c, app, self.id, key, 2)
  return r, e
end

--- Sets one metadata key of this machine.
-- @tparam string key
-- @tparam string value
function Machine:set_metadata(key, value)
  local c, app, nonce = ctx(self)
  local r, e = I.set_metadata(c, app, self.id, key, value, nil, nonce, 2)
  return r, e
end

--- Sets many metadata keys of this machine (PUT).
-- @tparam table metadata
-- @tparam[opt] table opts `machine_version`
function Machine:update_metadata(metadata, opts)
  local c, app, nonce = ctx(self)
  local r, e = I.update_metadata(c, app, self.id, metadata, opts, nonce, 2)
  return r, e
end

--- Sets many metadata keys of this machine (PATCH).
-- @tparam table metadata
-- @tparam[opt] table opts `machine_version`
function Machine:patch_metadata(metadata, opts)
  local c, app, nonce = ctx(self)
  local r, e = I.patch_metadata(c, app, self.id, metadata, opts, nonce, 2)
  return r, e
end

--- Deletes one metadata key of this machine.
-- @tparam string key
function Machine:delete_metadata(key)
  local c, app, nonce = ctx(self)
  local r, e = I.delete_metadata(c, app, self.id, key, nil, nonce, 2)
  return r, e
end

--- This machine's memory limit and availability.
function Machine:get_memory()
  local c, app = ctx(self)
  local r, e = I.get_memory(c, app, self.id, 2)
  return r, e
end

--- Sets this machine's memory limit.
-- @tparam number limit_mb
function Machine:set_memory_limit(limit_mb)
  local c, app, nonce = ctx(self)
  local r, e = I.set_memory_limit(c, app, self.id, limit_mb, nil, nonce, 2)
  return r, e
end

--- Asks this machine to give memory back.
-- @tparam[opt] number amount_mb
function Machine:reclaim_memory(amount_mb)
  local c, app, nonce = ctx(self)
  local r, e = I.reclaim_memory(c, app, self.id, amount_mb, nil, nonce, 2)
  return r, e
end

--- The app this machine belongs to (from the binding, not a JSON field).
-- @treturn string
function Machine:app()
  local _, app = ctx(self)
  return app
end

--- The lease nonce this object's calls carry (inside with_lease), or nil.
-- @treturn string
function Machine:lease_nonce()
  local _, _, nonce = ctx(self)
  return nonce
end

Machines.Machine = Machine
return Machines
