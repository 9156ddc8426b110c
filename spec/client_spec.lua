-- fly.new, options, authentication, connections and the client's lifecycle.
local H = require "helper"
local fly = require "fly"

describe("fly.new", function()
  before_each(H.reset)

  it("takes the token from FLY_API_TOKEN, then FLY_ACCESS_TOKEN", function()
    local code = [[
      local fly = require "fly"
      local c, err = fly.new { base_url = os.getenv("URL") }
      print(c and "client" or tostring(err))
      print(select(2, c.apps:get("nope")).status)
    ]]
    assert.matches("client\n404", H.child(code, { FLY_API_TOKEN = H.TOKEN, URL = H.plain_url() }))
    assert.matches("client\n404", H.child(code, { FLY_ACCESS_TOKEN = H.TOKEN, URL = H.plain_url() }))
    -- FLY_API_TOKEN wins over FLY_ACCESS_TOKEN
    assert.matches("client\n404", H.child(code, { FLY_API_TOKEN = H.TOKEN, FLY_ACCESS_TOKEN = "wrong",
      URL = H.plain_url() }))
    assert.matches("client\n401", H.child(code, { FLY_API_TOKEN = "wrong", FLY_ACCESS_TOKEN = H.TOKEN,
      URL = H.plain_url() }))
  end)

  it("takes the base URL from FLY_API_HOSTNAME, then the public endpoint", function()
    local code = [[
      local fly = require "fly"
      print(fly.new({ token = "t" }):base_url())
    ]]
    assert.equals("https://api.machines.dev\n", H.child(code))
    assert.equals(H.url() .. "\n", H.child(code, { FLY_API_HOSTNAME = H.url() }))
    assert.matches('base_url needs a scheme: http:// or https:// %(got "127%.0%.0%.1:4280" %(from FLY_API_HOSTNAME%)%)',
      H.child(code, { FLY_API_HOSTNAME = "127.0.0.1:4280" }))
    assert.equals("http://_api.internal:4280", fly.INTERNAL_BASE_URL)
  end)

  it("returns nil and an error naming both variables when there is no token", function()
    local out = H.child([[
      local fly = require "fly"
      local c, err = fly.new()
      print(c, getmetatable(err) == fly.Error, err.code, tostring(err))
    ]])
    assert.matches("^nil\ttrue\tno_token\t", out)
    assert.matches("FLY_API_TOKEN", out)
    assert.matches("FLY_ACCESS_TOKEN", out)
  end)

  it("raises on unknown options and wrong types", function()
    assert.has_error(function() fly.new { token = "t", tokn = "x" } end, "fly.new: unknown option 'tokn'")
    assert.has_error(function() fly.new { token = 42 } end, "fly.new: option 'token' must be a string (got number)")
    assert.has_error(function() fly.new { token = "t", timeout = "5" } end)
    assert.has_error(function() fly.new { token = "t", insecure = "yes" } end)
    assert.has_error(function() fly.new { token = "t", timeout = -1 } end)
    assert.has_error(function() fly.new "token" end)
    assert.has_error(function() fly.new { token = "t", base_url = "ftp://x" } end)
    -- a URL without a scheme is an error, not a guess
    H.raises("^[^:]+_spec%.lua:%d+: fly%.new: base_url needs a scheme: http:// or https:// "
      .. '%(got "127%.0%.0%.1:4280"%)$', function() fly.new { token = "t", base_url = "127.0.0.1:4280" } end)
    H.raises("needs a scheme", function() fly.new { token = "t", base_url = "api.machines.dev" } end)
    -- a token given as base_url (or with it, or in a URL's credentials) is not quoted
    local token = "fm2_lJPECAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    for _, bad in ipairs { token, "https//" .. token:sub(5, 20), "http://x/?t=" .. token,
                           "http://x:" .. token .. "@api.machines.dev", "http://user:pass@api.machines.dev" } do
      local ok, err = pcall(fly.new, { token = token, base_url = bad })
      assert.is_false(ok)
      assert.matches("fly%.new: base_url ", err)
      assert.is_nil(err:find(token:sub(5, 16), 1, true))
    end
    for _, bad in ipairs { "http://user:s3cr3t@api.machines.dev", "http://user:s3cr3t@host/?x",
                           "ftp://user:s3cr3t@host/" } do
      local ok, err = pcall(fly.new, { token = "t", base_url = bad })
      assert.is_false(ok)
      assert.matches("base_url must not hold credentials %(user:password@%)", err)
      assert.is_nil(err:find("s3cr3t", 1, true)) -- (not quoted)
    end
    H.raises('needs a scheme: http:// or https:// %(got a value holding the token, not shown%)',
      function() fly.new { token = token, base_url = token } end)
    assert.has_error(function() fly.new { token = "t", headers = { ["X-A"] = "1\r\nX-B: 2" } } end)
    -- the token and user agent say what is wrong with them (the token itself never shows)
    assert.has_error(function() fly.new { token = "t\nX-B: 2" } end, "fly: the token contains a line break")
    assert.has_error(function() fly.new { token = "t\0u" } end, "fly: the token contains a NUL byte")
    assert.has_error(function() fly.new { token = "t", user_agent = "ua\0" } end,
      "fly: user_agent contains a NUL byte")
    -- the retry table: a misspelt key is an error, not a silent default
    assert.has_error(function() fly.new { token = "t", retry = { attmpts = 2 } } end,
      "fly: retry: unknown option 'attmpts' (options are attempts, base, cap, max_wait)")
    assert.has_error(function() fly.new { token = "t", retry = { attempts = 0 } } end,
      "fly: retry.attempts must be a whole number >= 1")
    assert.has_error(function() fly.new { token = "t", retry = { base = -1 } } end,
      "fly: retry.base, retry.cap and retry.max_wait must be >= 0")
    assert.has_error(function() fly.new { token = "t", retry = { cap = {} } } end)
    -- inside retry and rate_limit too: a number is a number (not a numeric string), keys are known
    for _, case in ipairs {
      { { retry = { attempts = "4" } }, "fly: retry.attempts must be a number (got string)" },
      { { retry = { attempts = 1.5 } }, "fly: retry.attempts must be a whole number >= 1" },
      { { retry = { base = "0.1" } }, "fly: retry.base must be a number (got string)" },
      { { rate_limit = { scale = "2" } }, "fly: rate_limit.scale must be a number (got string)" },
      { { rate_limit = { margin = "0.1" } }, "fly: rate_limit.margin must be a number (got string)" },
      { { rate_limit = { redis_timeout = "1" } }, "fly: rate_limit.redis_timeout must be a number (got string)" },
      { { rate_limit = { Machines_start = { rate = "1", burst = 3 } } },
        "fly: rate_limit.Machines_start.rate must be a number (got string)" },
      { { rate_limit = { Machines_start = { rate = 1, burst = 3, foo = 1 } } },
        "fly: rate_limit.Machines_start: unknown option 'foo' (options are rate, burst)" },
    } do
      local opts = case[1]
      opts.token = "t"
      local ok, err = pcall(fly.new, opts)
      assert.is_false(ok)
      assert.matches(case[2], err, 1, true)
    end
  end)
end)

describe("authorization", function()
  after_each(function() H.config { token = H.TOKEN } end)

  local function scheme_seen(token, server_token)
    H.reset()
    H.config { token = server_token }
    local c = H.client { token = token }
    local app, err = c.apps:get("none")
    c:close()
    return H.stats().last_auth_scheme, err and err.status or app
  end

  it("sends macaroon tokens as FlyV1", function()
    local macaroon = "fm2_lJPECAAAAAAAAA,fm2_lJPEtokenpart"
    assert.same({ "FlyV1", 404 }, { scheme_seen(macaroon, macaroon) })
    assert.same({ "FlyV1", 404 }, { scheme_seen("FlyV1 " .. macaroon, macaroon) })
    assert.same({ "FlyV1", 404 }, { scheme_seen("fm1r_abc", "fm1r_abc") })
    assert.same({ "FlyV1", 404 }, { scheme_seen("fm1a_abc", "fm1a_abc") })
    -- a Bearer prefix on a macaroon is dropped, never doubled
    assert.same({ "FlyV1", 404 }, { scheme_seen("Bearer " .. macaroon, macaroon) })
  end)

  it("sends other tokens as Bearer, never doubled", function()
    assert.same({ "Bearer", 404 }, { scheme_seen("personal-token", "personal-token") })
    assert.same({ "Bearer", 404 }, { scheme_seen("Bearer personal-token", "personal-token") })
  end)

  it("gets a 401 with a wrong token", function()
    H.reset()
    local c = H.client { token = "wrong" }
    local app, err = c.apps:get("x")
    assert.is_nil(app)
    assert.equals(401, err.status)
    assert.equals("unauthorized", err.code)
  end)
end)

describe("the client", function()
  before_each(H.reset)

  it("sends its User-Agent, Accept and extra headers", function()
    local c = H.client { headers = { ["X-Extra"] = "yes" } }
    c.apps:get("x")
    local h = H.stats().last_request.headers
    assert.matches("^fly%-machines/" .. fly._VERSION:gsub("%.", "%%.") .. " %(libcurl/[%d.]+; "
      .. _VERSION:gsub("%p", "%%%0") .. "%)$", h["user-agent"])
    assert.equals("application/json", h["accept"])
    assert.equals("yes", h["x-extra"])
    local c2 = H.client { user_agent = "my-tool/1.0" }
    c2.apps:get("x")
    assert.equals("my-tool/1.0", H.stats().last_request.headers["user-agent"])
  end)

  it("reuses one keep-alive connection for 50 sequential calls", function()
    local c = H.client()
    local name = H.app(c)
    for _ = 1, 50 do
      local app = assert(c.apps:get(name))
      assert.equals(name, app.name)
    end
    local stats = H.stats()
    assert.equals(51, stats.total)
    assert.equals(1, stats.connections)
  end)

  it("raises at the caller's line for a method called with '.', an argument too many, a wrong option type",
    function()
    local c = H.client()
    local app = H.app(c)
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local t = c:spawn(function() return 1 end)
    for _, case in ipairs {
      { function() c.apps.get(app) end, "fly: apps:get: call it with ':'" },
      { function() c.poll(0) end, "fly: client:poll: call it with ':'" },
      { function() c.call("Apps_show", { app_name = app }) end, "fly: client:call: call it with ':'" },
      { function() c.close() end, "fly: client:close: call it with ':'" },
      { function() m.start() end, "fly: machine:start: call it with ':'" },
      { function() m.wait("started") end, "fly: machine:wait: call it with ':'" },
      { function() t.join() end, "fly: task:join: call it with ':'" },
      { function() c.machines:get_metadata(app, m.id, "role") end,
        "fly: machines:get_metadata: one argument too many (argument 3, string: it takes app, id)" },
      { function() c.ips:list(app, { bogus = 1 }) end,
        "fly: ips:list: one argument too many (argument 2, a table: it takes app)" },
      { function() m:list_versions { limit = 1 } end,
        "fly: machine:list_versions: one argument too many (argument 1, a table: it takes none)" },
      { function() c.machines:destroy(app, m.id, { force = "yes" }) end,
        "fly: machines:destroy: opts.force must be a boolean (got string)" },
      { function() c.machines:update_metadata(app, m.id, { a = "1" }, { machine_version = {} }) end,
        "fly: machines:update_metadata: opts.machine_version must be a string (got table)" },
      { function() c.machines:list(app, { foo = 1 }) end,
        "fly: machines:list: unknown parameter 'foo' (it takes include_deleted, include_leases, metadata, "
        .. "region, state, summary)" },
      { function() c.apps.create { app_name = "x", org_slug = "personal" } end, "fly: apps:create: call it with ':'" },
      { function() m:refresh { force = true } end,
        "fly: machine:refresh: one argument too many (argument 1, a table: it takes none)" },
      { function() c:call("Apps_create", { body = 5 }) end,
        "fly: Apps_create: body must be a table (sent as JSON) or a string (got number)" },
    } do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.matches("^[^:]*client_spec%.lua:%d+: ", err)
      assert.matches(case[2], err, 1, true)
    end
    assert.equals("started", (m:wait("started")))
    assert(c.machines:destroy(app, m.id, { force = true }))
    c:run()
    c:close()
  end)

  it("closes idempotently and raises on calls after close", function()
    local c = H.client()
    assert.is_false(c:is_closed())
    c:close()
    c:close()
    assert.is_true(c:is_closed())
    assert.has_error(function() c.apps:get("x") end, "fly: client is closed")
    assert.has_error(function() c:call("Apps_show", { app_name = "x" }) end)
    assert.matches("^fly%.Client{closed}", tostring(c))
    for _, use in ipairs {
      function() c:run() end, function() c:poll(0) end, function() c:sleep(0) end, function() c:timeout() end,
      function() c:sockets() end, function() c:map({}, print) end, function() c:spawn(print) end,
    } do
      local ok, err = pcall(use)
      assert.is_false(ok)
      assert.matches("client_spec%.lua:%d+: fly: client is closed", err)
    end
  end)

  it("closes at the end of a <close> block (Lua 5.4)", function()
    if _VERSION < "Lua 5.4" then return pending("no <close> variables before Lua 5.4") end
    local chunk = load [[
      local H = ...
      local c <close> = H.client()
      assert(c.apps:get("x") == nil)
      return c
    ]]
    local c = chunk(H)
    assert.is_true(c:is_closed())
  end)

  it("shows its base URL but never the token", function()
    local secret = "fm2_" .. ("s3cr3t"):rep(8)
    H.config { token = secret }
    local c = H.client { token = secret }
    local s = tostring(c)
    assert.matches("^fly%.Client{" .. H.url():gsub("%p", "%%%0") .. "}: ", s)
    local _, err = c.apps:get("missing")
    H.config { token = H.TOKEN }
    local bad, err2 = H.client({ token = secret }).apps:get("x")
    assert.is_nil(bad)
    for _, text in ipairs { s, tostring(err), tostring(err2), err2.body, err2.message } do
      assert.is_nil(text:find("s3cr3t", 1, true))
    end
  end)

  it("does not follow redirects", function()
    H.fault { method = "GET", path = "/v1/apps/redirected", kind = "status", status = 302, count = 1,
      headers = { location = "http://127.0.0.2:1/elsewhere" } }
    local c = H.client()
    local res, err = c.apps:get("redirected")
    assert.is_nil(res)
    assert.equals(302, err.status)
  end)
end)
