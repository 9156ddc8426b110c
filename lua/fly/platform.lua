--- client.platform: Fly's regions and simulated machine placement.
-- @module fly.platform
local resource = require "fly.resource"

local Platform = { __name = "fly.platform" }
Platform.__index = Platform

--- The operation each method calls (filled by the declarations below).
Platform.operations = {}

-- Each entry: `{ method, operationId, … }` (see resource.declare).
resource.declare(Platform, { name = "platform", operations = Platform.operations }, {
  --- `list_regions()` -> `{ nearest = "iad", regions = { { code, name, latitude, longitude, … }, … } }`
  { "list_regions", "Platform_regions_get" },
  --- `get_placements(body)`: simulates the placement of machines; `org_slug` (required), `count`,
  -- `region` (a region expression such as `"ams,fra"` or `"any"`), `compute` (a MachineGuest),
  -- `volume_name`, `weights` -> `{ regions = { { region, count, concurrency }, … } }`
  { "get_placements", "Platform_placements_post", args = { "body:table" },
    build = function(p, _, body) p.body = body end },
})

return Platform
