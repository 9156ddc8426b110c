--- client.ips: the IP addresses assigned to an app.
-- @module fly.ips
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Ips = { __name = "fly.ips" }
Ips.__index = Ips

--- The operation each method calls.
Ips.operations = {
  list = "App_IPAssignments_list",
  assign = "App_IPAssignments_create",
  release = "App_IPAssignments_delete",
}

--- The address types the API knows (its IPAssignmentType), in its order.
Ips.TYPES = { "v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6", "egress_pair" }
local TYPE_SET = {}
for _, t in ipairs(Ips.TYPES) do TYPE_SET[t] = true end

--- Lists an app's IP assignments.
-- @tparam string app the app's name
-- @treturn table `{ ips = { { ip, region, service_name, shared, egress, created_at }, … } }`, or
-- nil, fly.Error
function Ips:list(app)
  check(app, "string", "app", "ips:list")
  local res, err = call(self.client, "App_IPAssignments_list", { app_name = app }, nil, 2)
  return res, err
end

--- Assigns a new IP address to an app.
-- @tparam string app the app's name
-- @tparam string|table body the type, or the body: `type` (one of `Ips.TYPES`: v4, v6,
-- shared_v4, private_v6, egress_v4, egress_v6, egress_pair), `region` (required for egress
-- types), `service_name`, `network`, `org_slug`
-- @treturn table `{ ip, region, shared, egress, created_at, … }` (for egress_pair: `ip` is
-- fly.null and `ip_pair = { v4 = …, v6 = … }`), or nil, fly.Error
-- @raise when the type is not one of the API's types
function Ips:assign(app, body)
  check(app, "string", "app", "ips:assign")
  if type(body) == "string" then body = { type = body } end
  check(body, "table", "body", "ips:assign")
  if not TYPE_SET[body.type] then
    error(("fly: ips:assign: type must be one of %s (got %s)"):format(table.concat(Ips.TYPES, ", "),
      type(body.type) == "string" and ("%q"):format(body.type) or tostring(body.type)), 2)
  end
  local res, err = call(self.client, "App_IPAssignments_create", { app_name = app, body = body }, nil, 2)
  return res, err
end

--- Releases (removes) an IP address from an app.
-- @tparam string app the app's name
-- @tparam string ip the address
-- @return true, or nil, fly.Error (404 when the app does not have it)
function Ips:release(app, ip)
  check(app, "string", "app", "ips:release")
  check(ip, "string", "ip", "ips:release")
  local res, err = call(self.client, "App_IPAssignments_delete", { app_name = app, ip = ip }, nil, 2)
  return res, err
end

return Ips
