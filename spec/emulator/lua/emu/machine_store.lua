-- emu.machine_store: lookups, lease checks and JSON rendering shared by the machine modules.
--
-- Machine record (state.table("machines")[id]):
--   id, name, app_name, region, seq, state, config, version (== instance_id), versions
--   ({ version, config, created_at } oldest first), events (oldest first), steps (pending
--   lifecycle steps, see emu/lifecycle.lua), lease ({ nonce, expires_at, owner, description,
--   version } or nil), cordoned, private_ip, created_at/created_t, updated_at/updated_t,
--   destroyed_t, memory_limit_mb.
--
--   store.app(name)            app record or nil
--   store.find(req[, opts])    machine for req.params (app_name, machine_id) or nil, status, body
--                              (404 for unknown app/machine; destroyed machines are gone unless
--                              opts.include_destroyed)
--   store.active_lease(m)      the unexpired lease or nil (expired leases are dropped)
--   store.lease_guard(m, req)  nil, or an error response when a lease is held and the request
--                              lacks its nonce (409 — API-NOTES: "A lease held by someone else
--                              answers 409")
--   store.find_writable(req)   store.find then store.lease_guard: the machine or nil, status, body
--   store.render(m, opts)      Machine JSON: opts.summary, opts.include_lease, opts.nonce
--   store.machines_of(app)     non-destroyed machines of an app ordered by creation
--   store.touch(m)             bump updated_at
local util = require "emu.util"
local state = require "emu.state"
local lifecycle = require "emu.lifecycle"

local store = {}

local apps = state.table("apps")
local machines = state.table("machines")
store.apps, store.machines = apps, machines

function store.app(name)
  return apps[name]
end

function store.find(req, opts)
  local p = req.params
  if not apps[p.app_name] then
    return nil, util.err(404, "app not found")
  end
  local m = machines[p.machine_id]
  if not m or m.app_name ~= p.app_name then
    return nil, util.err(404, "machine not found")
  end
  lifecycle.settle(m)
  if m.state == "destroyed" and not (opts and opts.include_destroyed) then
    return nil, util.err(404, "machine not found")
  end
  return m
end

function store.active_lease(m)
  local l = m.lease
  if l and l.expires_at <= util.now() then
    m.lease = nil
    l = nil
  end
  return l
end

local function nonce_of(req)
  local v = req.headers["fly-machine-lease-nonce"]
  if type(v) == "table" then v = v[1] end
  return v
end
store.nonce_of = nonce_of

function store.lease_guard(m, req)
  local l = store.active_lease(m)
  if not l then return nil end
  if nonce_of(req) == l.nonce then return nil end
  return util.err(409, string.format(
    "machine %s is currently leased by %s (%s), lease expires at %s; " ..
    "send its nonce in the fly-machine-lease-nonce header",
    m.id, l.owner, l.description or "", util.now_iso(l.expires_at)))
end

-- The machine a request may change: found (404 otherwise) and not leased by someone else (409).
function store.find_writable(req)
  local m, st, eb = store.find(req)
  if not m then return nil, st, eb end
  local gst, geb = store.lease_guard(m, req)
  if gst then return nil, gst, geb end
  return m
end

function store.touch(m)
  local t = util.now()
  m.updated_t = t
  m.updated_at = util.now_iso(t)
end

function store.machines_of(app_name, include_destroyed)
  local out = {}
  for _, m in pairs(machines) do
    if m.app_name == app_name then
      lifecycle.settle(m)
      if include_destroyed or m.state ~= "destroyed" then out[#out + 1] = m end
    end
  end
  table.sort(out, function(a, b) return a.seq < b.seq end)
  return out
end

-- Parse "registry/repository:tag@digest" into Fly's ImageRef shape.
local function image_ref(image)
  if type(image) ~= "string" then return nil end
  local rest, digest = image:match("^(.-)@(.*)$")
  rest = rest or image
  local registry, repo = rest:match("^([^/]+)/(.+)$")
  if not (registry and (registry:find("[%.:]") or registry == "localhost")) then
    registry, repo = "docker-hub-mirror.fly.io", rest
    if not repo:find("/") then repo = "library/" .. repo end
  end
  local r, tag = repo:match("^(.*):([^/:]+)$")
  if r then repo = r else tag = "latest" end
  return {
    registry = registry,
    repository = repo,
    tag = tag,
    digest = digest or ("sha256:" .. util.hex(64)),
    labels = {},
  }
end
store.image_ref = image_ref

local function events_newest_first(m, limit)
  local out = util.array()
  for i = #m.events, 1, -1 do
    out[#out + 1] = m.events[i]
    if limit and #out >= limit then break end
  end
  return out
end
store.events_newest_first = events_newest_first

function store.render(m, opts)
  opts = opts or {}
  lifecycle.settle(m)
  local out = {
    id = m.id,
    name = m.name,
    state = m.state,
    region = m.region,
    instance_id = m.version,
    private_ip = m.private_ip,
    created_at = m.created_at,
    updated_at = m.updated_at,
    image_ref = m.image_ref,
    cordoned = m.cordoned and true or false,
  }
  if not opts.summary then
    out.config = m.config
    out.events = events_newest_first(m, 10)
    out.checks = util.array()
    out.host_status = "ok"
    if opts.nonce then out.nonce = opts.nonce end
  end
  if opts.include_lease then
    local l = store.active_lease(m)
    if l then
      out.lease = { owner = l.owner, description = l.description, expires_at = l.expires_at }
    end
  end
  return out
end

return store
