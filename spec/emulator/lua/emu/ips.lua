-- Emulates the Fly Machines API IP assignments of an app:
--   App_IPAssignments_list, App_IPAssignments_create, App_IPAssignments_delete.
--
-- Types (IPAssignmentType): v4 (dedicated anycast IPv4), v6 (anycast IPv6), shared_v4
-- (the app's address on a shared IPv4, at most one per app), private_v6 (Flycast, inside
-- the org's network), egress_v4 / egress_v6 (regional egress, region required) and
-- egress_pair (both egress families: the answer carries ip_pair and ip = null).
--
-- State: state.table("ips")[app_name] = {app_id, items = array of {ip, type, region,
-- service_name, shared, egress, network, created_at}}; state.table("ips_seq").n numbers the allocations so
-- addresses stay unique across apps. certificates.lua reads the list for DNS requirements.

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"

local M = {}

local TYPES = { "v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6", "egress_pair" }
local TYPE_SET = {}
for _, t in ipairs(TYPES) do TYPE_SET[t] = true end

-- the app's IP assignments (an array) (a fresh set when the app was deleted and created again)
function M.app_ips(app_name) return util.app_items("ips", app_name) end

local function next_seq()
  local seq = state.table("ips_seq")
  seq.n = (seq.n or 0) + 1
  return seq.n
end

local function small_hash(s)
  local h = 0
  for i = 1, #s do h = (h * 31 + s:byte(i)) % 65521 end
  return h
end

-- a fresh address of the given family
local function v4_address(first_octets)
  local n = next_seq()
  return string.format("%s.%d.%d", first_octets, math.floor(n / 254) % 256, n % 254 + 1)
end

local function v6_address(prefix)
  local n = next_seq()
  return string.format("%s%x:%x:0", prefix, 0x10 + math.floor(n / 65536), n % 65536)
end

local function private_v6_address(app)
  local org = app.org_slug or (type(app.organization) == "table" and app.organization.slug) or "personal"
  local n = next_seq()
  return string.format("fdaa:0:%x:0:1::%x", small_hash(org), n)
end

local function shared_v4_address(app_name)
  return string.format("66.241.124.%d", small_hash(app_name) % 250 + 2)
end

local function record(app_name, fields)
  fields.created_at = util.now_iso()
  table.insert(M.app_ips(app_name), fields)
  return fields
end

local function render(r)
  return {
    ip = r.ip,
    region = r.region,
    service_name = r.service_name,
    shared = r.shared,
    egress = r.egress,
    created_at = r.created_at,
  }
end

---------------------------------------------------------------------------- handlers

local function list(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local out = {}
  for i, r in ipairs(M.app_ips(app_name)) do out[i] = render(r) end
  return 200, { ips = util.arr(out) }
end

local function create(req)
  local app_name = req.params.app_name
  local app = state.table("apps")[app_name]
  if not app then return util.err(404, "app not found") end
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local body = type(req.body) == "table" and req.body or {}
  local ip_type = body.type
  if not TYPE_SET[ip_type] then
    return util.err(400, "type must be one of " .. table.concat(TYPES, ", "))
  end
  for _, k in ipairs { "region", "service_name", "network", "org_slug" } do
    if body[k] ~= nil and type(body[k]) ~= "string" then return util.err(400, k .. " must be a string") end
  end
  local region = body.region ~= "" and body.region or nil
  local service = body.service_name ~= "" and body.service_name or nil
  local egress = ip_type:sub(1, 7) == "egress_"
  if egress and not region then return util.err(400, "region is required for egress IP addresses") end

  if ip_type == "shared_v4" then
    for _, r in ipairs(M.app_ips(app_name)) do
      if r.type == "shared_v4" then return util.err(400, "app already has a shared IPv4 address") end
    end
  end

  local base = { region = region or "global", service_name = service, egress = egress, shared = false }
  if ip_type == "egress_pair" then
    local v4 = record(app_name, { ip = v4_address("209.177"), type = "egress_v4", region = region,
      service_name = service, egress = true, shared = false })
    local v6 = record(app_name, { ip = v6_address("2a09:8280:e616::"), type = "egress_v6", region = region,
      service_name = service, egress = true, shared = false })
    return 200, { ip = cjson.null, ip_pair = { v4 = v4.ip, v6 = v6.ip }, region = region,
      service_name = service, egress = true, shared = false, created_at = v4.created_at }
  elseif ip_type == "v4" then base.ip = v4_address("137.66")
  elseif ip_type == "shared_v4" then base.ip, base.shared = shared_v4_address(app_name), true
  elseif ip_type == "v6" then base.ip = v6_address("2a09:8280:1::")
  elseif ip_type == "private_v6" then base.ip, base.network = private_v6_address(app), body.network
  elseif ip_type == "egress_v4" then base.ip = v4_address("209.177")
  elseif ip_type == "egress_v6" then base.ip = v6_address("2a09:8280:e616::")
  end
  base.type = ip_type
  return 200, render(record(app_name, base))
end

local function delete(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local wanted = (req.params.ip or ""):lower()
  local ips = M.app_ips(app_name)
  for i, r in ipairs(ips) do
    if r.ip:lower() == wanted then
      table.remove(ips, i)
      return 204, nil
    end
  end
  return util.err(404, "ip address " .. tostring(req.params.ip) .. " not found")
end

local base = "/v1/apps/{app_name}/ip_assignments"
M.routes = {
  { op = "App_IPAssignments_list", method = "GET", path = base, handler = list },
  { op = "App_IPAssignments_create", method = "POST", path = base, handler = create },
  { op = "App_IPAssignments_delete", method = "DELETE", path = base .. "/{ip}", handler = delete },
}

return M
