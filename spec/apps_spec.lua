-- client.apps and App objects.
local H = require "helper"
local compat = require "fly.compat"
local json = require "fly.json"

describe("client.apps", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)

  it("creates, lists by org, gets and destroys apps", function()
    local a = H.name()
    assert.is_true(c.apps:create { app_name = a, org_slug = "personal", network = "net-1" })
    assert.is_true(c.apps:create { app_name = H.name(), org_slug = "other-org" })
    local res = assert(c.apps:list { org_slug = "personal" })
    assert.equals(1, #res.apps)
    assert.equals(1, res.total_apps)
    assert.equals(a, res.apps[1].name)
    assert.equals("fly.App", getmetatable(res.apps[1]).__name)
    local app = assert(c.apps:get(a))
    assert.equals("personal", app.organization.slug)
    assert.is_true(compat.is_integer(app.machine_count)) -- JSON 0, not 0.0 (an integer where Lua has them)
    assert.equals("net-1", app.network)
    assert.is_true(c.apps:destroy(a))
    local gone, err = c.apps:get(a)
    assert.is_nil(gone)
    assert.equals(404, err.status)
    local _, err2 = c.apps:destroy(a)
    assert.equals(404, err2.status)
  end)

  it("answers 400 for a create without the required fields", function()
    local res, err = c.apps:create { app_name = H.name() }
    assert.is_nil(res)
    assert.equals(400, err.status)
  end)

  it("needs org_slug to list, and raises without it", function()
    assert.has_error(function() c.apps:list {} end, "fly: Apps_list: missing required parameter 'org_slug'")
    assert.has_error(function() c.apps:list "personal" end)
  end)

  it("creates a deploy token for an app", function()
    local a = H.app(c)
    local res = assert(c.apps:create_deploy_token(a, { expiry = "720h" }))
    assert.matches("^FlyV1 fm2_", res.token)
    assert(c.apps:create_deploy_token(a))
    local _, err = c.apps:create_deploy_token("no-such-app")
    assert.equals(404, err.status)
  end)

  it("gives App objects methods that are not fields", function()
    local a = H.app(c)
    local app = assert(c.apps:get(a))
    local encoded = json.decode(json.encode(app))
    for k, v in pairs(encoded) do
      if type(v) ~= "table" then assert.equals(app[k], v) end
    end
    assert.is_nil(rawget(app, "refresh"))
    local again = assert(app:refresh())
    assert.equals(app, again) -- in place
    assert.matches("^fly%.App{", tostring(app))
    assert.is_true(app:destroy())
    assert.is_nil((c.apps:get(a)))
  end)
end)
