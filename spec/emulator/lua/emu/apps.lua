-- emu.apps: Apps_list, Apps_create, Apps_show, Apps_delete, App_create_deploy_token.
--
-- App record (state.table("apps")[name]):
--   { id, name, org_slug, org_name, network, created_at, seq, internal_numeric_id }
-- Deploy tokens issued here ("FlyV1 fm2_…") are remembered in state.table("__issued_tokens")
-- and accepted by the router's auth check (sent with the FlyV1 scheme).
local util = require "emu.util"
local state = require "emu.state"
local store = require "emu.machine_store"

local apps = state.table("apps")
local counters = state.table("__counters")

local M = {}

local function org_name(slug)
  local orgs = state.table("orgs")
  local o = orgs[slug]
  if type(o) == "table" and o.name then return o.name end
  if slug == "personal" then return "Personal" end
  return (slug:gsub("^%l", string.upper))
end

local function next_counter(name)
  counters[name] = (counters[name] or 0) + 1
  return counters[name]
end

local function volume_count(name)
  local n = 0
  for _, v in pairs(state.table("volumes")) do
    if type(v) == "table" and v.app_name == name and v.state ~= "destroyed"
       and v.state ~= "deleted" then
      n = n + 1
    end
  end
  return n
end

local function render(app)
  return {
    id = app.id,
    name = app.name,
    internal_numeric_id = app.internal_numeric_id,
    machine_count = #store.machines_of(app.name),
    volume_count = volume_count(app.name),
    network = app.network,
    status = "deployed",
    organization = { slug = app.org_slug, name = app.org_name,
                     internal_numeric_id = app.org_numeric_id },
  }
end
M.render = render

local function list(req)
  local org = req.query.org_slug
  if type(org) == "table" then org = org[#org] end
  if type(org) ~= "string" or org == "" then
    return util.err(400, "org_slug is required", "invalid_argument")
  end
  local found = {}
  for _, app in pairs(apps) do
    if app.org_slug == org then found[#found + 1] = app end
  end
  table.sort(found, function(a, b) return a.seq < b.seq end)
  local out = util.array()
  for i, app in ipairs(found) do out[i] = render(app) end
  return 200, { total_apps = #out, apps = out }
end

local function create(req)
  local body, st, eb = util.json_body(req, true)
  if not body then return st, eb end
  local name = body.app_name or body.name
  local org = body.org_slug
  if type(name) ~= "string" or name == "" then
    return util.err(400, "app_name is required", "invalid_argument")
  end
  if type(org) ~= "string" or org == "" then
    return util.err(400, "org_slug is required", "invalid_argument")
  end
  if apps[name] then
    return util.err(422, "Name has already been taken", "name_taken")
  end
  local seq = next_counter("apps")
  apps[name] = {
    id = util.hex(8) .. util.hex(8),
    name = name,
    org_slug = org,
    org_name = org_name(org),
    org_numeric_id = 1000 + #org,
    network = type(body.network) == "string" and body.network ~= "" and body.network or "default",
    created_at = util.now_iso(),
    seq = seq,
    internal_numeric_id = 100000 + seq,
  }
  return 201
end

local function show(req)
  local app = apps[req.params.app_name]
  if not app then return util.err(404, "app not found") end
  return 200, render(app)
end

local function delete(req)
  local name = req.params.app_name
  if not apps[name] then return util.err(404, "app not found") end
  for id, m in pairs(store.machines) do
    if m.app_name == name then store.machines[id] = nil end
  end
  apps[name] = nil
  return 202
end

local function deploy_token(req)
  local app = apps[req.params.app_name]
  if not app then return util.err(404, "app not found") end
  local body, st, eb = util.json_body(req, false)
  if not body then return st, eb end
  local raw = "fm2_" .. util.hex(48)
  state.table("__issued_tokens")[raw] = { app = app.name, expiry = body.expiry }
  return 200, { token = "FlyV1 " .. raw }
end

M.routes = {
  { op = "Apps_list", method = "GET", path = "/v1/apps", handler = list },
  { op = "Apps_create", method = "POST", path = "/v1/apps", handler = create },
  { op = "Apps_show", method = "GET", path = "/v1/apps/{app_name}", handler = show },
  { op = "Apps_delete", method = "DELETE", path = "/v1/apps/{app_name}", handler = delete },
  { op = "App_create_deploy_token", method = "POST", path = "/v1/apps/{app_name}/deploy_token",
    handler = deploy_token },
}

return M
