-- emu.metadata: machine metadata (stored in the machine's config.metadata).
--   Machines_show_metadata     GET    …/metadata           -> 200 { key = value, … }
--   Machines_update_metadata   PUT and PATCH …/metadata    body { metadata = {…},
--                              machine_version = "…"? } -> 204; null or "" values remove keys;
--                              412 when machine_version is given and is not the current version
--   Machines_get_metadata_key  GET    …/metadata/{key}     -> 200 { value } | 404
--   Machines_upsert_metadata   POST   …/metadata/{key}     body { value } -> 204
--   Machines_delete_metadata   DELETE …/metadata/{key}     -> 204
-- Metadata changes do not create a new machine version. Mutations honour leases (409).
local cjson = require "cjson"
local util = require "emu.util"
local store = require "emu.machine_store"

local M = {}

local function meta_of(m)
  if type(m.config.metadata) ~= "table" then m.config.metadata = {} end
  return m.config.metadata
end

local function show(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  return 200, util.copy(meta_of(m))
end

local function update_many(req)
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  if body.metadata ~= nil and body.metadata ~= cjson.null and type(body.metadata) ~= "table" then
    return util.err(400, "invalid_argument: metadata must be an object", "invalid_argument")
  end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  local want = body.machine_version
  if type(want) == "string" and want ~= "" and want ~= m.version then
    return util.err(412, "machine version mismatch: current version is " .. m.version)
  end
  local md = meta_of(m)
  for k, v in pairs(type(body.metadata) == "table" and body.metadata or {}) do
    if v == cjson.null or v == "" then
      md[k] = nil
    elseif type(v) ~= "string" then
      return util.err(400, "invalid_argument: metadata values must be strings",
                      "invalid_argument")
    else
      md[k] = v
    end
  end
  store.touch(m)
  return 204
end

local function get_key(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local v = meta_of(m)[req.params.key]
  if v == nil then return util.err(404, "metadata key not found") end
  return 200, { value = v }
end

local function upsert(req)
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  if type(body.value) ~= "string" then
    return util.err(400, "invalid_argument: value must be a string", "invalid_argument")
  end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  meta_of(m)[req.params.key] = body.value
  store.touch(m)
  return 204
end

local function delete(req)
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  meta_of(m)[req.params.key] = nil
  store.touch(m)
  return 204
end

local P = "/v1/apps/{app_name}/machines/{machine_id}/metadata"
M.routes = {
  { op = "Machines_show_metadata", method = "GET", path = P, handler = show },
  { op = "Machines_update_metadata", method = "PUT", path = P, handler = update_many },
  { op = "Machines_update_metadata", method = "PATCH", path = P, handler = update_many },
  { op = "Machines_get_metadata_key", method = "GET", path = P .. "/{key}", handler = get_key },
  { op = "Machines_upsert_metadata", method = "POST", path = P .. "/{key}", handler = upsert },
  { op = "Machines_delete_metadata", method = "DELETE", path = P .. "/{key}", handler = delete },
}

return M
