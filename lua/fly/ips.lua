--- client.ips: the IP addresses assigned to an app.
-- @module fly.ips
local resource = require "fly.resource"

local Ips = { __name = "fly.ips" }
Ips.__index = Ips

--- The operation each method calls (filled by the declarations below).
Ips.operations = {}

--- The address types the API knows (its IPAssignmentType), in its order.
Ips.TYPES = { "v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6", "egress_pair" }
local TYPE_SET = {}
for _, t in ipairs(Ips.TYPES) do TYPE_SET[t] = true end

-- Each entry: `{ method, operationId, … }` (see resource.declare): the app's name first.
resource.declare(Ips, {
  name = "ips", operations = Ips.operations, path = { "app" }, params = { app = "app_name", ip = "ip" },
}, {
  --- `list(app)` -> `{ ips = { { ip, region, service_name, shared, egress, created_at }, … } }`
  { "list", "App_IPAssignments_list" },
  --- `assign(app, body)`: a new address; the type, or the body: `type` (one of `Ips.TYPES`: v4,
  -- v6, shared_v4, private_v6, egress_v4, egress_v6, egress_pair), `region` (required for egress
  -- types), `service_name`, `network`, `org_slug` -> `{ ip, region, shared, egress, created_at, … }`
  -- (for egress_pair: `ip` is fly.null and `ip_pair = { v4 = …, v6 = … }`); raises when the type
  -- is not one of the API's
  { "assign", "App_IPAssignments_create", args = { "body:string|table" },
    build = function(p, _, body)
      if type(body) == "string" then body = { type = body } end
      if not TYPE_SET[body.type] then
        return false, ("type must be one of %s (got %s)"):format(table.concat(Ips.TYPES, ", "),
          type(body.type) == "string" and ("%q"):format(body.type) or tostring(body.type))
      end
      p.body = body
    end },
  --- `release(app, ip)`: removes an address from the app -> true (404 when the app does not have it)
  { "release", "App_IPAssignments_delete", path = { "app", "ip" } },
})

return Ips
