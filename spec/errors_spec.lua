-- fly.Error: every field, and one readable line.
local H = require "helper"
local fly = require "fly"

describe("fly.Error", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)

  it("has every field for an HTTP error", function()
    local res, err = c.apps:get("missing-app")
    assert.is_nil(res)
    assert.equals(fly.Error, getmetatable(err))
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
    assert.is_string(err.message)
    assert.is_string(err.request_id)
    assert.is_false(err.retryable)
    assert.equals("GET", err.method)
    assert.equals("/v1/apps/missing-app", err.path)
    assert.equals("Apps_show", err.operation)
    assert.equals(1, err.attempts)
    assert.matches('"error"', err.body)
  end)

  it("takes the code from the body's status", function()
    local name = H.app(c)
    local res, err = c.apps:create { app_name = name, org_slug = "personal" }
    assert.is_nil(res)
    assert.equals(422, err.status)
    assert.equals("name_taken", err.code)
    local line = tostring(err)
    assert.matches("^fly: 422 name_taken POST /v1/apps: .+ %(request_id=" .. err.request_id:gsub("%p", "%%%0")
      .. "%)$", line)
    assert.is_nil(line:find("\n"))
  end)

  it("describes transport failures with a code and no status", function()
    local dead = assert(fly.new { token = "t", base_url = "http://127.0.0.1:9", retry = false })
    local res, err = dead.apps:get("x")
    assert.is_nil(res)
    assert.is_nil(err.status)
    assert.equals("connect", err.code)
    assert.is_true(err.retryable)
    assert.equals("GET", err.method)
    assert.equals("/v1/apps/x", err.path)
    assert.matches("^fly: connect GET /v1/apps/x: ", tostring(err))
  end)

  it("times out with code timeout", function()
    H.fault { method = "GET", path = "/v1/apps/slow", kind = "delay", delay = 3, count = 5 }
    local res, err = c:call("Apps_show", { app_name = "slow" }, { timeout = 0.3, attempts = 1 })
    assert.is_nil(res)
    assert.equals("timeout", err.code)
  end)
end)
