-- client.ips: assign, list and release an app's addresses.
local H = require "helper"
local fly = require "fly"

describe("client.ips", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  it("assigns addresses that show up in the list, then releases them", function()
    local v6 = assert(c.ips:assign(app, { type = "v6" }))
    assert.matches(":", v6.ip)
    local v4 = assert(c.ips:assign(app, "shared_v4"))
    assert.is_true(v4.shared)
    local list = assert(c.ips:list(app))
    assert.equals(2, #list.ips)
    assert.equals(v6.ip, list.ips[1].ip)

    assert.is_true(c.ips:release(app, v6.ip))
    list = assert(c.ips:list(app))
    assert.equals(1, #list.ips)
    assert.equals(v4.ip, list.ips[1].ip)
  end)

  it("assigns an egress pair: ip is null and ip_pair holds both", function()
    local pair = assert(c.ips:assign(app, { type = "egress_pair", region = "iad" }))
    assert.equals(fly.null, pair.ip)
    assert.is_string(pair.ip_pair.v4)
    assert.is_string(pair.ip_pair.v6)
    assert.is_true(pair.egress)
  end)

  it("passes the API's own refusals back as errors", function()
    local r, err = c.ips:assign(app, { type = "egress_v4" }) -- no region
    assert.is_nil(r)
    assert.equals(400, err.status)
    assert(c.ips:assign(app, "shared_v4"))
    r, err = c.ips:assign(app, "shared_v4")
    assert.is_nil(r)
    assert.equals(400, err.status)
    r, err = c.ips:release(app, "192.0.2.1")
    assert.is_nil(r)
    assert.equals(404, err.status)
    r, err = c.ips:list("no-such-app")
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("raises on a type outside the API's enum, naming the allowed ones, before any request", function()
    local before = H.stats().total
    H.raises("ips_spec%.lua:%d+: fly: ips:assign: type must be one of v4, v6, shared_v4, private_v6, "
      .. "egress_v4, egress_v6, egress_pair %(got \"v5\"%)", function() c.ips:assign(app, { type = "v5" }) end)
    H.raises("ips_spec%.lua:%d+: fly: ips:assign: type must be one of .* %(got nil%)",
      function() c.ips:assign(app, {}) end)
    H.raises("ips_spec%.lua:%d+: fly: ips:assign: body must be a string or a table %(got number%)",
      function() c.ips:assign(app, 4) end)
    H.raises("ips_spec%.lua:%d+: fly: ips:release: ip must be a string", function() c.ips:release(app) end)
    assert.equals(before, H.stats().total)
  end)

  it("knows the same types as the API description", function()
    assert.same({ "v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6", "egress_pair" },
      fly.namespaces.ips.TYPES)
  end)
end)
