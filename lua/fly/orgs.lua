--- client.orgs: organization-wide listings of machines and volumes.
-- Both are cursor paginated: `list_machines` and `list_volumes` give one page, `each_machine` and
-- `each_volume` iterate over all of them (see fly.pages).
-- @module fly.orgs
local resource = require "fly.resource"
local pages = require "fly.pages"
local Volumes = require "fly.volumes"
local Machines = require "fly.machines"

local call, check = resource.call, resource.check

local Orgs = { __name = "fly.orgs" }
Orgs.__index = Orgs

--- The operation each method calls (filled by the declarations below).
Orgs.operations = {}

-- Volumes and machines of a page become Volume and Machine objects of their app.
local function bind_volumes(page, client)
  if type(page) ~= "table" or type(page.volumes) ~= "table" then return end
  for _, v in ipairs(page.volumes) do
    if type(v) == "table" and type(v.app_name) == "string" then
      resource.bind(Volumes.Volume, v, client, { app = v.app_name })
    end
  end
end

local function bind_machines(page, client)
  if type(page) ~= "table" or type(page.machines) ~= "table" then return end
  for _, m in ipairs(page.machines) do
    if type(m) == "table" and type(m.app_name) == "string" then
      resource.bind(Machines.Machine, m, client, { app = m.app_name })
    end
  end
end

local LISTS = {
  machines = { op = "Machines_org_list", bind = bind_machines },
  volumes = { op = "Volumes_org_list", bind = bind_volumes },
}

local function page(client, what, org, params, level)
  local l = LISTS[what]
  local res, err = call(client, l.op, resource.merge(params, { org_slug = org }), nil, level)
  l.bind(res, client)
  return res, err
end

local function each(self, what, method, org, params)
  check(org, "string", "org", method, 3)
  if params ~= nil then check(params, "table", "params", method, 3) end
  resource.check_params(LISTS[what].op, params, method, 3, { "org_slug" })
  local client, first = self.client, params and params.cursor
  return pages.iterate(function(cursor, level)
    -- page() adds a frame between resource.call and this function
    local res, err = page(client, what, org, resource.merge(params, { cursor = cursor or first }), level + 1)
    return res, err
  end, what)
end

-- Each entry: `{ method, operationId, … }` (see resource.declare): the organization's slug
-- first, then the query parameters.
resource.declare(Orgs, {
  name = "orgs", operations = Orgs.operations, path = { "org" }, params = { org = "org_slug" },
}, {
  --- `list_machines(org, params)`: one page of the machines in all the organization's apps;
  -- `include_deleted`, `region`, `state` (comma-separated: created, started, stopped, suspended),
  -- `summary` (leave out config), `updated_after` (RFC 3339), `cursor` (a previous page's
  -- `next_cursor`), `limit` (advisory: pages may be shorter) -> `{ machines = { OrgMachine, … },
  -- next_cursor = s?, last_machine_id, last_updated_at }` (404 for an unknown organization)
  { "list_machines", "Machines_org_list", params = true,
    result = function(res, client) bind_machines(res, client) return res end },
  --- `list_volumes(org, params)`: one page of the volumes in all its apps; `include_deleted`,
  -- `region`, `state`, `summary`, `updated_after`, `cursor`, `limit` -> `{ volumes = { Volume, … },
  -- next_cursor = s?, last_volume_id, last_updated_at }`
  { "list_volumes", "Volumes_org_list", params = true,
    result = function(res, client) bind_volumes(res, client) return res end },
})

--- Iterates over all of an organization's machines, following `next_cursor`.
--
--     for m, err in client.orgs:each_machine("personal", { limit = 100 }) do
--       if not m then error(tostring(err)) end
--       print(m.app_name, m.id, m.state)
--     end
-- @tparam string org the organization's slug
-- @tparam[opt] table params as for `list_machines`; `limit` is the page size, `cursor` where to start
-- @treturn function an iterator giving each OrgMachine; on a failure it gives `false, err`
-- once and ends
function Orgs:each_machine(org, params)
  if not resource.is_namespace(self) then resource.dot_call("orgs:each_machine", 2) end
  return (each(self, "machines", "orgs:each_machine", org, params))
end

--- Iterates over all of an organization's volumes, following `next_cursor`.
-- @tparam string org the organization's slug
-- @tparam[opt] table params as for `volumes`
-- @treturn function an iterator giving each Volume; on a failure it gives `false, err` once
-- and ends
function Orgs:each_volume(org, params)
  if not resource.is_namespace(self) then resource.dot_call("orgs:each_volume", 2) end
  return (each(self, "volumes", "orgs:each_volume", org, params))
end

return Orgs
