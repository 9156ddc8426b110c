-- emu.machines: machine CRUD and lifecycle actions.
--   Machines_list, Machines_create, Machines_show, Machines_update, Machines_delete,
--   Machines_start, Machines_stop, Machines_restart, Machines_signal, Machines_suspend,
--   Machines_cordon, Machines_uncordon.
-- Leases, metadata, wait and the rest live in emu/leases.lua, emu/metadata.lua, emu/wait.lua,
-- emu/machine_extras.lua. Also exported for other modules: M.render (= store.render),
-- M.settle (= lifecycle.settle).
--
-- Errors: invalid state for an action answers 412 (Fly's "failed_precondition"), e.g. destroy
-- of a running machine without force=true: "unable to destroy machine, not currently stopped,
-- suspended or failed". A held lease without its nonce answers 409 (see machine_store).
local util = require "emu.util"
local state = require "emu.state"
local store = require "emu.machine_store"
local lifecycle = require "emu.lifecycle"

local machines = store.machines
local counters = state.table("__counters")

local M = { render = store.render, settle = lifecycle.settle }

local ADJ = { "red", "blue", "green", "quiet", "ancient", "bold", "calm", "dry", "late", "misty",
              "proud", "snowy", "young", "wild", "still", "broken", "summer", "winter" }
local NOUN = { "frost", "river", "sun", "leaf", "moon", "paper", "field", "rain", "shape",
               "wave", "wind", "cloud", "dew", "pine", "star", "flower", "sea", "snow" }

local function gen_name()
  return ADJ[math.random(#ADJ)] .. "-" .. NOUN[math.random(#NOUN)] .. "-" ..
         tostring(math.random(1000, 9999))
end

local function new_id()
  local id
  repeat id = util.machine_id() until not machines[id]
  return id
end

local SIGNALS = {}
for s in ("SIGABRT SIGALRM SIGFPE SIGHUP SIGILL SIGINT SIGKILL SIGPIPE SIGQUIT SIGSEGV " ..
          "SIGTERM SIGTRAP SIGUSR1 SIGUSR2"):gmatch("%S+") do SIGNALS[s] = true end

local RUNNING = { started = true, starting = true, replacing = true }

-- Validate a config from a create/update body; fill Fly's guest defaults.
local function check_config(body)
  local cfg = body.config
  if type(cfg) ~= "table" then
    return nil, util.err(400, "invalid_argument: config is required", "invalid_argument")
  end
  if type(cfg.image) ~= "string" or cfg.image == "" then
    return nil, util.err(400, "invalid_argument: config.image is required", "invalid_argument")
  end
  cfg = util.copy(cfg)
  if type(cfg.guest) ~= "table" then
    cfg.guest = { cpu_kind = "shared", cpus = 1, memory_mb = 256 }
  end
  return cfg
end

local function add_version(m, cfg)
  m.version = util.ulid()
  m.config = cfg
  m.image_ref = store.image_ref(cfg.image)
  m.versions[#m.versions + 1] = { version = m.version, config = util.copy(cfg),
                                  created_at = util.now_iso() }
end

local function new_lease(m, ttl, description)
  m.lease = {
    nonce = util.hex(12),
    expires_at = math.floor(util.now()) + ttl,
    owner = "emulator@fly.io",
    description = description or "",
    version = m.version,
  }
  return m.lease
end
M.new_lease = new_lease

---------------------------------------------------------------------------- list

local function metadata_filters(query)
  local f = {}
  for k, v in pairs(query) do
    local key = type(k) == "string" and k:match("^metadata%.(.+)$")
    if key then f[key] = type(v) == "table" and v[#v] or v end
  end
  return f
end

local function matches(m, q, states, meta)
  if q.region and m.region ~= q.region then return false end
  if states and not states[m.state] then return false end
  local md = type(m.config) == "table" and m.config.metadata or {}
  for k, v in pairs(meta) do
    if md[k] ~= v then return false end
  end
  return true
end

local function list(req)
  if not store.app(req.params.app_name) then return util.err(404, "app not found") end
  local q = req.query
  local states
  if type(q.state) == "string" and q.state ~= "" then
    states = {}
    for s in q.state:gmatch("[^,%s]+") do states[s] = true end
  end
  local meta = metadata_filters(q)
  local opts = { summary = util.truthy(q.summary), include_lease = util.truthy(q.include_leases) }
  local out = util.array()
  for _, m in ipairs(store.machines_of(req.params.app_name, util.truthy(q.include_deleted))) do
    if matches(m, q, states, meta) then out[#out + 1] = store.render(m, opts) end
  end
  return 200, out
end

---------------------------------------------------------------------------- create / show / update

local function create(req)
  local app = store.app(req.params.app_name)
  if not app then return util.err(404, "app not found") end
  local body, st, eb = util.json_body(req, true)
  if not body then return st, eb end
  local cfg, cst, ceb = check_config(body)
  if not cfg then return cst, ceb end
  counters.machines = (counters.machines or 0) + 1
  local now = util.now()
  local m = {
    id = new_id(),
    name = type(body.name) == "string" and body.name ~= "" and body.name or gen_name(),
    app_name = app.name,
    region = type(body.region) == "string" and body.region ~= "" and body.region or "ord",
    seq = counters.machines,
    state = "created",
    versions = {},
    events = {},
    steps = {},
    cordoned = false,
    private_ip = string.format("fdaa:0:%s:a7b:%s:%s:%s:2", util.hex(4), util.hex(3),
                               util.hex(4), util.hex(4)),
    created_t = now,
    created_at = util.now_iso(now),
    updated_t = now,
    updated_at = util.now_iso(now),
  }
  add_version(m, cfg)
  machines[m.id] = m
  local nonce
  if tonumber(body.lease_ttl) and tonumber(body.lease_ttl) > 0 then
    nonce = new_lease(m, math.floor(tonumber(body.lease_ttl)), "created with lease").nonce
  end
  lifecycle.create(m, util.truthy(body.skip_launch))
  return 200, store.render(m, { nonce = nonce })
end

local function show(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  return 200, store.render(m, { include_lease = util.truthy(req.query.include_leases) })
end

local function update(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  local gst, geb = store.lease_guard(m, req)
  if gst then return gst, geb end
  if type(body.current_version) == "string" and body.current_version ~= ""
     and body.current_version ~= m.version then
    return util.err(412, "machine version mismatch: current version is " .. m.version)
  end
  local cfg, cst, ceb = check_config(body)
  if not cfg then return cst, ceb end
  if m.state == "destroying" then
    return util.err(412, "unable to update machine in state 'destroying'")
  end
  local was_running = RUNNING[m.state] or m.state == "created" and lifecycle.pending(m)
  if type(body.name) == "string" and body.name ~= "" then m.name = body.name end
  if type(body.region) == "string" and body.region ~= "" then m.region = body.region end
  add_version(m, cfg)
  lifecycle.update(m, was_running, util.truthy(body.skip_launch))
  local nonce
  if tonumber(body.lease_ttl) and tonumber(body.lease_ttl) > 0 and not store.active_lease(m) then
    nonce = new_lease(m, math.floor(tonumber(body.lease_ttl)), "updated with lease").nonce
  end
  return 200, store.render(m, { nonce = nonce })
end

---------------------------------------------------------------------------- delete

local DESTROYABLE = { stopped = true, suspended = true, failed = true, created = true }

local function delete(req)
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  local force = util.truthy(req.query.force) or util.truthy(req.query.kill)
  if m.state == "destroying" then return 200 end
  if not DESTROYABLE[m.state] and not force then
    return util.err(412, "failed_precondition: unable to destroy machine, not currently " ..
                         "stopped, suspended or failed")
  end
  m.lease = nil
  lifecycle.destroy(m)
  return 200
end

---------------------------------------------------------------------------- actions

local function precondition(verb, m)
  return util.err(412, string.format(
    "failed_precondition: unable to %s machine from current state: '%s'", verb, m.state))
end

local function start(req)
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  if m.state == "started" or m.state == "starting" then return 200 end
  if m.state == "destroying" or m.state == "replacing" then return precondition("start", m) end
  lifecycle.start(m)
  return 200
end

local function stop(req)
  -- The live API answers 400 when POST …/stop has no body (API-NOTES).
  if req.raw_body == nil then
    return util.err(400, "invalid_argument: request body is required (EOF)", "invalid_argument")
  end
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  if body.signal ~= nil and not SIGNALS[body.signal] then
    return util.err(400, "invalid_argument: invalid signal " .. tostring(body.signal),
                    "invalid_argument")
  end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  if m.state == "stopped" or m.state == "stopping" or m.state == "created"
     or m.state == "failed" then
    return 200
  end
  if m.state == "destroying" then return precondition("stop", m) end
  lifecycle.stop(m)
  return 200
end

local function restart(req)
  local sig = req.query.signal
  if sig ~= nil and not SIGNALS[sig] then
    return util.err(400, "invalid_argument: invalid signal " .. tostring(sig), "invalid_argument")
  end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  if m.state == "destroying" then return precondition("restart", m) end
  lifecycle.restart(m)
  return 200
end

local function signal(req)
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  if not SIGNALS[body.signal] then
    return util.err(400, "invalid_argument: invalid signal " .. tostring(body.signal),
                    "invalid_argument")
  end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  if m.state ~= "started" then return precondition("signal", m) end
  if body.signal == "SIGKILL" then
    lifecycle.run(m, "stop", {
      { state = "stopped", type = "exit", source = "flyd",
        request = { exit_event = { signal = 9, exit_code = -1 } } },
    })
  end
  return 200
end

local function suspend(req)
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  if m.state == "suspended" or m.state == "suspending" then return 200 end
  if m.state ~= "started" then return precondition("suspend", m) end
  lifecycle.suspend(m)
  return 200
end

local function cordon_fn(flag)
  return function(req)
    local m, st, eb = store.find_writable(req)
    if not m then return st, eb end
    m.cordoned = flag
    store.touch(m)
    return 200
  end
end

local function force_state(id, new_state)
  local m = machines[id]
  if not m then return false end
  lifecycle.force(m, new_state)
  return true
end
M.force_state = force_state

local P = "/v1/apps/{app_name}/machines"
local PM = P .. "/{machine_id}"
M.routes = {
  { op = "Machines_list", method = "GET", path = P, handler = list },
  { op = "Machines_create", method = "POST", path = P, handler = create },
  { op = "Machines_show", method = "GET", path = PM, handler = show },
  { op = "Machines_update", method = "POST", path = PM, handler = update },
  { op = "Machines_delete", method = "DELETE", path = PM, handler = delete },
  { op = "Machines_start", method = "POST", path = PM .. "/start", handler = start },
  { op = "Machines_stop", method = "POST", path = PM .. "/stop", handler = stop },
  { op = "Machines_restart", method = "POST", path = PM .. "/restart", handler = restart },
  { op = "Machines_signal", method = "POST", path = PM .. "/signal", handler = signal },
  { op = "Machines_suspend", method = "POST", path = PM .. "/suspend", handler = suspend },
  { op = "Machines_cordon", method = "POST", path = PM .. "/cordon", handler = cordon_fn(true) },
  { op = "Machines_uncordon", method = "POST", path = PM .. "/uncordon",
    handler = cordon_fn(false) },
}

return M
