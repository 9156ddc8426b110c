-- Emulates the Fly Machines API app secrets:
--   Secrets_list, Secrets_update, Secret_get, Secret_create, Secret_delete.
--
-- State: state.table("secrets")[app_name] = {app_id, items = {[NAME] = {name, value, digest,
-- created_at, updated_at, version}}}. Every change bumps the app's secrets version, kept in
-- state.table("secret_versions")[app_name] and shared with the secret keys module
-- (secretkeys.lua), as both live in the same store on Fly. Values are returned only with
-- show_secrets=true; min_version keeps only entries changed at or after that version.

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"

local M = {}

-- the app's secrets (a fresh set when the app was deleted and created again)
local function app_secrets(app_name) return util.app_items("secrets", app_name) end

local function current_version(app_name) return state.table("secret_versions")[app_name] or 0 end

local function bump_version(app_name)
  local versions = state.table("secret_versions")
  versions[app_name] = (versions[app_name] or 0) + 1
  return versions[app_name]
end

-- two small polynomial hashes -> 16 hex digits (stands in for Fly's value digest)
local function digest(s)
  return string.format("%08x%08x", util.hash32(s, 5381, 33), util.hash32(s, 2166136, 131))
end

local function valid_name(name)
  return type(name) == "string" and #name <= 256 and name:match("^[A-Za-z_][A-Za-z0-9_]*$") ~= nil
end

-- min_version query: nil when absent, false when malformed
local function min_version(req)
  local v = util.qval(req.query and req.query.min_version)
  if v == nil or v == "" then return nil end
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < 0 then return false end
  return n
end

local function render(s, show)
  return {
    name = s.name,
    digest = s.digest,
    created_at = s.created_at,
    updated_at = s.updated_at,
    value = show and s.value or nil,
  }
end

local function sorted(app_name, min)
  local list = {}
  for _, s in pairs(app_secrets(app_name)) do
    if not min or s.version >= min then list[#list + 1] = s end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

local function set_value(app_name, name, value, version, now)
  local secrets = app_secrets(app_name)
  local s = secrets[name]
  if not s then
    s = { name = name, created_at = now }
    secrets[name] = s
  end
  s.value, s.digest, s.updated_at, s.version = value, digest(value), now, version
  return s
end

---------------------------------------------------------------------------- handlers

local function list(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local min = min_version(req)
  if min == false then return util.err(400, "min_version must be a non-negative integer") end
  local show = util.qbool(req.query and req.query.show_secrets)
  local out = {}
  for i, s in ipairs(sorted(app_name, min)) do out[i] = render(s, show) end
  return 200, { secrets = util.arr(out) }
end

-- {"values": {"NAME": "value", "OTHER": null}}: a null value unsets the secret
local function update(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local values = type(req.body) == "table" and req.body.values
  if type(values) ~= "table" then return util.err(400, "values is required and must be an object") end
  for name, value in pairs(values) do
    if not valid_name(name) then return util.err(400, "invalid secret name: " .. tostring(name)) end
    if value ~= cjson.null and type(value) ~= "string" then
      return util.err(400, "value of " .. name .. " must be a string or null")
    end
  end
  local version = bump_version(app_name)
  local now = util.now_iso()
  local secrets = app_secrets(app_name)
  for name, value in pairs(values) do
    if value == cjson.null then secrets[name] = nil
    else set_value(app_name, name, value, version, now) end
  end
  local out = {}
  for i, s in ipairs(sorted(app_name)) do out[i] = render(s, false) end
  return 200, { secrets = util.arr(out), version = version, Version = version }
end

local function get(req)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local min = min_version(req)
  if min == false then return util.err(400, "min_version must be a non-negative integer") end
  local s = app_secrets(app_name)[name]
  if not s or (min and s.version < min) then return util.err(404, "secret not found") end
  return 200, render(s, util.qbool(req.query and req.query.show_secrets))
end

local function create(req)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  if not valid_name(name) then return util.err(400, "invalid secret name: " .. tostring(name)) end
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local value = type(req.body) == "table" and req.body.value
  if type(value) ~= "string" then return util.err(400, "value is required and must be a string") end
  local version = bump_version(app_name)
  local s = set_value(app_name, name, value, version, util.now_iso())
  local out = render(s, false)
  out.version, out.Version = version, version
  return 201, out
end

local function delete(req)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local secrets = app_secrets(app_name)
  if not secrets[name] then return util.err(404, "secret not found") end
  secrets[name] = nil
  local version = bump_version(app_name)
  return 200, { version = version, Version = version }
end

M.current_version = current_version
M.bump_version = bump_version   -- shared with secretkeys.lua (one version per app)
M.min_version = min_version

local base = "/v1/apps/{app_name}/secrets"
M.routes = {
  { op = "Secrets_list", method = "GET", path = base, handler = list },
  { op = "Secrets_update", method = "POST", path = base, handler = update },
  { op = "Secret_get", method = "GET", path = base .. "/{secret_name}", handler = get },
  { op = "Secret_create", method = "POST", path = base .. "/{secret_name}", handler = create },
  { op = "Secret_delete", method = "DELETE", path = base .. "/{secret_name}", handler = delete },
}

return M
