-- client:call: parameters, percent-encoding, bodies and results.
local H = require "helper"
local fly = require "fly"

describe("client:call", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)
  after_each(function() c:close() end)

  it("raises on an unknown operation, naming it", function()
    assert.has_error(function() c:call("Apps_explode", {}) end, "fly: unknown operation 'Apps_explode'")
    assert.has_error(function() c:call(42) end)
  end)

  it("raises on a missing required parameter, naming it", function()
    assert.has_error(function() c:call("Apps_show", {}) end,
      "fly: Apps_show: missing required parameter 'app_name'")
    assert.has_error(function() c:call("Apps_list", {}) end,
      "fly: Apps_list: missing required parameter 'org_slug'")
    assert.has_error(function() c:call("Machines_release_lease", { app_name = "a", machine_id = "m" }) end,
      "fly: Machines_release_lease: missing required parameter 'lease_nonce'")
  end)

  it("raises on an unknown parameter, naming it", function()
    assert.has_error(function() c:call("Apps_show", { app_name = "a", app = "b" }) end,
      "fly: Apps_show: unknown parameter 'app'")
    assert.has_error(function() c:call("Apps_show", { app_name = "a", body = {} }) end,
      "fly: Apps_show: this operation takes no body")
  end)

  it("raises on parameters of the wrong type or empty path parameters", function()
    assert.has_error(function() c:call("Apps_show", { app_name = {} }) end)
    assert.has_error(function() c:call("Apps_show", { app_name = "" }) end,
      "fly: Apps_show: parameter 'app_name' must not be empty")
    assert.has_error(function() c:call("Apps_show", "a") end)
    assert.has_error(function() c.apps:get(42) end, "fly: apps:get: name must be a string (got number)")
    assert.has_error(function()
      c:call("Machines_release_lease", { app_name = "a", machine_id = "m", lease_nonce = "n\r\nX-Evil: 1" })
    end, "fly: Machines_release_lease: parameter 'lease_nonce' contains a line break")
    assert.has_error(function()
      c:call("Machines_release_lease", { app_name = "a", machine_id = "m", lease_nonce = "n\0" })
    end, "fly: Machines_release_lease: parameter 'lease_nonce' contains a NUL byte")
    -- a blank header value would not be sent at all (an update outside any lease would then be
    -- taken for one under it, and repeated): blank as libcurl counts it
    for _, blank in ipairs { "", " ", "\t ", "\v", " \f\t" } do
      assert.has_error(function()
        c:call("Machines_update", { app_name = "a", machine_id = "m", lease_nonce = blank, body = {} })
      end, "fly: Machines_update: parameter 'lease_nonce' must not be " .. (blank == "" and "empty" or "blank"))
    end
    assert.has_error(function() c.machines:update("a", "m", {}, { lease_nonce = "" }) end,
      "fly: Machines_update: parameter 'lease_nonce' must not be empty")
  end)

  it("reads params and options raw: no user code runs inside the core", function()
    local ran = false
    local proxy = setmetatable({}, { __index = function(_, k)
      ran = true
      c:close()
      return k == "app_name" and "x" or nil
    end })
    assert.has_error(function() c:call("Apps_show", proxy) end,
      "fly: Apps_show: missing required parameter 'app_name'")
    assert.is_false(ran)
    assert.is_false(c:is_closed())
    local _, err = c:call("Apps_show", { app_name = "x" }, setmetatable({}, { __index = function()
      ran = true
    end }))
    assert.equals(404, err.status)
    assert.is_false(ran)
  end)

  it("sends {} for an operation whose body is omitted", function()
    local res, err = c:call("Apps_create")
    assert.is_nil(res)
    assert.equals(400, err.status)
    local h = H.stats().last_request.headers
    assert.equals("2", h["content-length"])
    assert.equals("application/json", h["content-type"])
  end)

  it("raises on bad call options and accepts unbounded ones", function()
    assert.has_error(function() c:call("Apps_show", { app_name = "x" }, { timeout = 0 }) end)
    assert.has_error(function() c:call("Apps_show", { app_name = "x" }, { deadline = -1 }) end)
    assert.has_error(function() c:call("Apps_show", { app_name = "x" }, { attempts = 0 }) end)
    assert.has_error(function() c:call("Apps_show", { app_name = "x" }, "fast") end)
    local ok, err = pcall(function() c:call("Apps_show", { app_name = "x" }, { timout = 1 }) end)
    assert.is_false(ok)
    assert.matches("call_spec%.lua:%d+: fly: Apps_show: unknown option 'timout'", err)
    ok, err = pcall(function() c:call("Apps_show", { app_name = "x" }, { timeout = "1" }) end)
    assert.is_false(ok)
    assert.matches("call_spec%.lua:%d+: fly: Apps_show: option 'timeout' must be a number", err)
    local _, failure = c:call("Apps_show", { app_name = "x" }, { timeout = math.huge, deadline = math.huge,
      attempts = math.huge })
    assert.equals(404, failure.status)
    local huge = H.client { timeout = math.huge, retry = { attempts = math.huge } }
    assert.equals(404, select(2, huge.apps:get("x")).status)
    assert.has_error(function() H.client { headers = { "X-A: b" } } end, "fly: headers must map names to strings")
  end)

  it("reports programmer errors at the caller's line", function()
    local ok, err = pcall(function() c:call("Apps_show", {}) end)
    assert.is_false(ok)
    assert.matches("call_spec%.lua:%d+: fly: Apps_show", err)
    ok, err = pcall(function() c.apps:get(nil) end)
    assert.is_false(ok)
    assert.matches("call_spec%.lua:%d+: fly: apps:get", err)
  end)

  local hostile = {
    { "a/b", "/v1/apps/a%2Fb" },
    { "../x", "/v1/apps/..%2Fx" },
    { "..", "/v1/apps/%2E%2E" },
    { ".", "/v1/apps/%2E" },
    { "x?y#z", "/v1/apps/x%3Fy%23z" },
    { "a\r\nX-Evil: 1", "/v1/apps/a%0D%0AX-Evil%3A%201" },
    { "sp ace%", "/v1/apps/sp%20ace%25" },
    { "ünï", "/v1/apps/%C3%BCn%C3%AF" },
  }
  for _, case in ipairs(hostile) do
    it(("sends the app name %q as exactly one path segment"):format(case[1]), function()
      local res, err = c.apps:get(case[1])
      assert.is_nil(res)
      assert.equals(404, err.status)
      local last = H.stats().last_request
      assert.equals(case[2], last.uri)
      assert.is_nil(last.headers["x-evil"])
      assert.equals(case[2], err.path)
    end)
  end

  it("finds an app whose name needs escaping", function()
    local name = "we/ird ?#name"
    assert(c.apps:create { app_name = name, org_slug = "personal" })
    local app = assert(c.apps:get(name))
    assert.equals(name, app.name)
  end)

  it("sends query parameters, escaped, and repeats arrays", function()
    c:call("Apps_list", { org_slug = "per sonal&x=1" })
    assert.equals("/v1/apps?org_slug=per%20sonal%26x%3D1", H.stats().last_request.uri)
    c:call("Machines_list", { app_name = "a", include_deleted = true, metadata = { ["k y"] = "v" } })
    assert.equals("/v1/apps/a/machines?include_deleted=true&metadata.k%20y=v", H.stats().last_request.uri)
    c:call("Machines_wait", { app_name = "a", machine_id = "m", state = { "started", "stopped" }, timeout = 1 })
    assert.equals("/v1/apps/a/machines/m/wait?timeout=1&state=started&state=stopped",
      H.stats().last_request.uri)
  end)

  it("joins an array with commas for a parameter the API reads as one comma-separated list", function()
    local app = H.app(c)
    local started = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local stopped = assert(c.machines:create(app, { config = { image = "nginx" }, skip_launch = true }))
    assert(c.machines:wait(app, started.id, { state = "started" }))
    local function ids(list)
      local t = {}
      for _, m in ipairs(list) do t[#t + 1] = m.id end
      table.sort(t)
      return t
    end
    local both = { started.id, stopped.id }
    table.sort(both)
    assert.same(both, ids(assert(c.machines:list(app, { state = { "started", "created" } }))))
    assert.matches("state=started,created$", H.stats().last_request.uri)
    assert.same({ started.id }, ids(assert(c.machines:list(app, { state = { "started" } }))))
    assert.same(both, ids(assert(c.machines:list(app, { state = "started,created" }))))
    local page = assert(c.orgs:list_machines("personal", { state = { "created", "started" } }))
    assert.matches("state=created,started", H.stats().last_request.uri)
    assert.is_true(#page.machines >= 2)
    c:call("Secretkeys_list", { app_name = app, types = { "hs256", "nacl_box" } })
    assert.matches("types=hs256,nacl_box$", H.stats().last_request.uri)
    local kinds = {}
    for _, op in ipairs(require("fly").operations()) do
      for _, p in ipairs(op.params) do
        if p["in"] == "query_list" then kinds[#kinds + 1] = op.id .. "." .. p.name end
      end
    end
    table.sort(kinds)
    assert.same({ "Machines_list.state", "Machines_org_list.state", "Secretkeys_list.types", "Volumes_org_list.state" },
      kinds)
  end)

  it("sends a table body as JSON and a string body as it is", function()
    local name = H.name()
    assert.is_true(c:call("Apps_create", { body = { app_name = name, org_slug = "personal" } }))
    local res, err = c:call("Apps_create", { body = "{not json" })
    assert.is_nil(res)
    assert.equals(400, err.status)
    assert.equals(name, c.apps:get(name).name)
  end)

  it("returns true for a success without a body and decoded JSON otherwise", function()
    local name = H.app(c)
    local app = c:call("Apps_show", { app_name = name })
    assert.equals(name, app.name)
    assert.equals("fly.App", getmetatable(c.apps:get(name)).__name)
    assert.is_true(c.apps:destroy(name))
  end)

  it("gives the JSON null as fly.null", function()
    H.fault { method = "GET", path = "/v1/apps/nully", kind = "status", status = 200, count = 1,
      body = { name = "nully", network = require("cjson").null } }
    local app = assert(c.apps:get("nully"))
    assert.equals(fly.null, app.network)
  end)

  it("turns a response that is not the JSON it claims into a protocol error", function()
    H.fault { method = "GET", path = "/v1/apps/garbage", kind = "malformed", count = 10 }
    local res, err = c.apps:get("garbage")
    assert.is_nil(res)
    assert.equals("protocol", err.code)
    assert.equals(200, err.status)
    assert.equals(1, err.attempts) -- found when decoded, after the call
    assert.is_true(err.retryable) -- a get: calling again may fix it
    -- a create is not safe to repeat: the same answer says so
    H.fault { method = "POST", path = "/v1/apps", kind = "malformed", count = 1 }
    res, err = c.apps:create { app_name = H.name("garbled"), org_slug = "personal" }
    assert.is_nil(res)
    assert.equals("protocol", err.code)
    assert.is_false(err.retryable)
  end)

  it("turns a truncated response into a transport failure: protocol over HTTP/1.1, reset over HTTP/2", function()
    H.fault { method = "GET", path = "/v1/apps/cut", kind = "truncate", count = 10 }
    local res, err = c.apps:get("cut")
    assert.is_nil(res)
    -- HTTP/2 cuts the stream off (RST_STREAM); HTTP/1.1 ends the body short
    assert.equals(H.TLS and "reset" or "protocol", err.code)
    assert.is_nil(err.status)
  end)
end)

describe("fly.array and JSON bodies", function()
  local json = require "fly.json"

  it("sends an empty array marked with fly.array as []", function()
    assert.equals("[]", json.encode(fly.array {}))
    assert.equals('{"cmd":[]}', json.encode { cmd = fly.array() })
    assert.equals("{}", json.encode {})
    assert.equals('[1,2,"x"]', json.encode(fly.array { 1, 2, "x" }))
    assert.equals("null", json.encode(fly.null))
  end)

  it("raises on what JSON cannot hold", function()
    assert.has_error(function() json.encode { 1, 2, x = 3 } end)
    assert.has_error(function() json.encode { [1] = 1, [3] = 3 } end)
    assert.has_error(function() json.encode { f = print } end)
    assert.has_error(function() json.encode(0 / 0) end)
    assert.has_error(function() fly.array "x" end)
  end)

  it("raises at the caller when a body cannot be encoded", function()
    local c = H.client()
    local ok, err = pcall(function() c.apps:create { app_name = "x", org_slug = "p", bad = print } end)
    assert.is_false(ok)
    assert.matches("call_spec%.lua:%d+: fly: cannot encode", err)
  end)
end)
