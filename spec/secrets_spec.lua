-- client.secrets: values go in, digests come out (values only with show_secrets).
local H = require "helper"
local compat = require "fly.compat"
local fly = require "fly"

describe("client.secrets", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  it("sets a secret and lists its digest but not its value", function()
    local s = assert(c.secrets:set(app, "DATABASE_URL", "postgres://x"))
    assert.equals("DATABASE_URL", s.name)
    assert.is_string(s.digest)
    assert.is_nil(s.value)
    assert.is_number(s.version)

    local list = assert(c.secrets:list(app))
    assert.equals(1, #list.secrets)
    assert.equals("DATABASE_URL", list.secrets[1].name)
    assert.equals(s.digest, list.secrets[1].digest)
    assert.is_nil(list.secrets[1].value)
  end)

  it("shows values only with show_secrets", function()
    assert(c.secrets:set(app, "TOKEN", { value = "s3cret" }))
    local list = assert(c.secrets:list(app, { show_secrets = true }))
    assert.equals("s3cret", list.secrets[1].value)
    local one = assert(c.secrets:get(app, "TOKEN"))
    assert.is_nil(one.value)
    one = assert(c.secrets:get(app, "TOKEN", { show_secrets = true }))
    assert.equals("s3cret", one.value)
  end)

  it("updates several secrets in one version and unsets with fly.null", function()
    assert(c.secrets:set(app, "OLD", "x"))
    local res = assert(c.secrets:update(app, { A = "1", B = "2", OLD = fly.null }))
    assert.is_number(res.version)
    local names = {}
    for _, s in ipairs(res.secrets) do names[#names + 1] = s.name end
    assert.same({ "A", "B" }, names)
    -- min_version keeps what changed at or after that version
    local newer = assert(c.secrets:list(app, { min_version = compat.tointeger(res.version) }))
    assert.equals(2, #newer.secrets)
    local later = assert(c.secrets:list(app, { min_version = compat.tointeger(res.version) + 1 }))
    assert.equals(0, #later.secrets)
  end)

  it("deletes a secret; a second delete and a get answer 404", function()
    assert(c.secrets:set(app, "GONE", "x"))
    local res = assert(c.secrets:delete(app, "GONE"))
    assert.is_number(res.version)
    local r, err = c.secrets:delete(app, "GONE")
    assert.is_nil(r)
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
    r, err = c.secrets:get(app, "GONE")
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("answers 400 for an invalid secret name and 404 for an unknown app", function()
    local r, err = c.secrets:set(app, "1-bad name", "x")
    assert.is_nil(r)
    assert.equals(400, err.status)
    r, err = c.secrets:list("no-such-app")
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("secrets_spec%.lua:%d+: fly: secrets:set: value must be a string or a table",
      function() c.secrets:set(app, "X", 42) end)
    H.raises("secrets_spec%.lua:%d+: fly: secrets:update: values must be a table",
      function() c.secrets:update(app, nil) end)
    H.raises("secrets_spec%.lua:%d+: fly: secrets:get: unknown parameter 'nope' %(it takes min_version, show_secrets%)",
      function() c.secrets:get(app, "X", { nope = true }) end)
    H.raises("secrets_spec%.lua:%d+: fly: secrets:delete: app must be a string",
      function() c.secrets:delete(nil, "X") end)
  end)
end)
