--- client.platform: Fly's regions and simulated machine placement.
-- @module fly.platform
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Platform = { __name = "fly.platform" }
Platform.__index = Platform

--- The operation each method calls.
Platform.operations = {
  list_regions = "Platform_regions_get",
  get_placements = "Platform_placements_post",
}

--- Lists Fly's regions.
-- @treturn table `{ nearest = "iad", regions = { { code, name, latitude, longitude, … }, … } }`,
-- or nil, fly.Error
function Platform:list_regions()
  local res, err = call(self.client, "Platform_regions_get", nil, nil, 2)
  return res, err
end

--- Simulates the placement of machines: which regions could take how many.
-- @tparam table body `org_slug` (required), `count`, `region` (a region expression such as
-- `"ams,fra"` or `"any"`), `compute` (a MachineGuest), `volume_name`, `weights`
-- @treturn table `{ regions = { { region, count, concurrency }, … } }`, or nil, fly.Error
function Platform:get_placements(body)
  check(body, "table", "body", "platform:get_placements")
  local res, err = call(self.client, "Platform_placements_post", { body = body }, nil, 2)
  return res, err
end

return Platform
