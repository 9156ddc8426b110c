-- client.platform: regions and placements.
local H = require "helper"
local compat = require "fly.compat"

describe("client.platform", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)
  after_each(function() c:close() end)

  it("lists the regions and the nearest one", function()
    H.config { nearest_region = "ams" }
    local res = assert(c.platform:list_regions())
    assert.equals("ams", res.nearest)
    assert.is_true(#res.regions > 5)
    local codes = {}
    for _, r in ipairs(res.regions) do codes[r.code] = true end
    assert.is_true(codes.iad)
    assert.is_true(codes.ams)
  end)

  it("places machines over a region expression", function()
    local res = assert(c.platform:get_placements { org_slug = "personal", count = 4, region = "ams,fra" })
    local total, where = 0, {}
    for _, p in ipairs(res.regions) do
      total = total + p.count
      where[p.region] = true
    end
    assert.equals(4, compat.tointeger(total))
    for r in pairs(where) do assert.is_true(r == "ams" or r == "fra") end
  end)

  it("answers 400 for an unknown region or a missing org_slug", function()
    local r, err = c.platform:get_placements { org_slug = "personal", region = "atlantis" }
    assert.is_nil(r)
    assert.equals(400, err.status)
    r, err = c.platform:get_placements { count = 1 }
    assert.is_nil(r)
    assert.equals(400, err.status)
  end)

  it("reports capacity errors with the API's code", function()
    H.config { placement_region_limit = 1 }
    local r, err = c.platform:get_placements { org_slug = "personal", count = 5, region = "iad" }
    assert.is_nil(r)
    assert.equals("insufficient_capacity", err.code)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("platform_spec%.lua:%d+: fly: platform:get_placements: body must be a table",
      function() c.platform:get_placements("iad") end)
  end)
end)
