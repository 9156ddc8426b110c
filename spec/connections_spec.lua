-- Connections: HTTP/2 over TLS, HTTP/1.1 without it, reuse of warm connections, the server
-- closing idle keep-alive connections, and the emulator's counters of connections and
-- executions these specs rest on. The TLS listeners come from the suite's emulator under
-- FLY_SPEC_TLS=1, else from a TLS emulator started here.
local H = require "helper"
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"

-- An emulator instance: its listener list and control calls over its plain listener.
local function instance(env)
  local E = { env = env }
  function E.control(method, path, body)
    local out, src = {}, body ~= nil and cjson.encode(body) or nil
    local _, status = http.request {
      url = env.FLY_EMULATOR_PLAIN_URL .. "/__emulator/" .. path, method = method,
      sink = ltn12.sink.table(out), source = src and ltn12.source.string(src) or nil,
      headers = src and { ["content-type"] = "application/json", ["content-length"] = #src } or nil,
    }
    assert(status == 200, "emulator control " .. path .. " failed")
    return cjson.decode(table.concat(out))
  end
  function E.client(url, opts)
    local o = { base_url = url or env.FLY_EMULATOR_URL, ca_file = env.FLY_EMULATOR_CA }
    for k, v in pairs(opts or {}) do o[k] = v end
    return H.client(o)
  end
  return E
end

-- The keep-alive timers of this process's established TCP connections to `port`, read from
-- /proc (Linux): `{ timer = "tr" (2: the keep-alive timer runs, 0: none), left = seconds }`.
local function tcp_timers(port)
  local mine = {}
  local p = assert(io.popen("readlink /proc/$PPID/fd/* 2>/dev/null")) -- $PPID: this process
  for l in p:lines() do
    local inode = l:match("^socket:%[(%d+)%]$")
    if inode then mine[inode] = true end
  end
  p:close()
  local out = {}
  for _, f in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    local h = io.open(f)
    for l in h and h:lines() or function() end do
      local rport, st, tr, when, inode =
        l:match("^%s*%d+: %x+:%x+ %x+:(%x+) (%x+) %x+:%x+ (%x+):(%x+) %x+%s+%d+%s+%d+ (%d+)")
      if rport and tonumber(rport, 16) == port and st == "01" and mine[inode] then
        out[#out + 1] = { timer = tonumber(tr, 16), left = tonumber(when, 16) / 100 } -- USER_HZ ticks
      end
    end
    if h then h:close() end
  end
  return out
end

local function suite_instance()
  local env = {}
  for _, k in ipairs { "FLY_EMULATOR_URL", "FLY_EMULATOR_CA", "FLY_EMULATOR_PLAIN_URL", "FLY_EMULATOR_H1_URL",
                       "FLY_EMULATOR_IDLE_URL", "FLY_EMULATOR_IDLE_H1_URL", "FLY_EMULATOR_IDLE_TIMEOUT",
                       "FLY_EMULATOR_GOAWAY_URL", "FLY_EMULATOR_GOAWAY_AFTER" } do
    env[k] = H.listener(k)
  end
  return instance(env)
end

local function tls_instance()
  if H.TLS then return suite_instance(), function() end end
  local p = assert(io.popen(H.ROOT .. "/spec/emulator/run --tls --env"))
  local env = {}
  for line in p:lines() do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then env[k] = v end
  end
  p:close()
  assert(env.FLY_EMULATOR_URL, "the TLS emulator did not start")
  return instance(env), function() os.execute(H.ROOT .. "/spec/emulator/stop " .. env.FLY_EMULATOR_URL) end
end

-- seconds, from nginx's "300ms"
local function idle_seconds(env)
  local n, unit = env.FLY_EMULATOR_IDLE_TIMEOUT:match("^(%d+)(%a*)$")
  return tonumber(n) / (unit == "ms" and 1000 or 1)
end

local function sleep(s)
  require("socket").sleep(s)
end

local function executed(E, op)
  return E.control("GET", "stats").executed[op] or 0
end

-- The cases every listener kind must pass: idle keep-alive connections closed by the server.
local function idle_cases(name, get_E, idle_key)
  describe(name, function()
    local E, c, app
    before_each(function()
      E = get_E()
      E.control("POST", "reset")
      E.control("POST", "config", { delays = { transition = 0 } })
      c = E.client(E.env[idle_key])
      app = H.app(c)
    end)
    after_each(function() c:close() end)

    it("a connection the server closed while idle costs a reconnect, not an error, for an unsafe call", function()
      assert(c.apps:get(app))                       -- a warm connection to the idle listener
      sleep(idle_seconds(E.env) * 2 + 0.2)          -- the server closes it meanwhile
      local before = E.control("GET", "stats")
      local m, err = c.machines:create(app, { config = { image = "nginx" } })
      assert.is_nil(err)
      assert.truthy(m.id)
      local after = E.control("GET", "stats")
      assert.equals((before.executed.Machines_create or 0) + 1, after.executed.Machines_create)
      assert.equals((before.requests.Machines_create or 0) + 1, after.requests.Machines_create)
      assert.equals(1, #assert(c.machines:list(app)))
    end)

    it("the reconnect is not an attempt: a client without retries gets no error either", function()
      local once = E.client(E.env[idle_key], { retry = false })
      assert(once.apps:get(app))
      sleep(idle_seconds(E.env) * 2 + 0.2)
      local before = E.control("GET", "stats")
      local m, err = once.machines:create(app, { config = { image = "nginx" } })
      once:close()
      assert.is_nil(err)
      assert.truthy(m.id)
      local after = E.control("GET", "stats")
      assert.equals((before.requests.Machines_create or 0) + 1, after.requests.Machines_create)
      assert.equals((before.executed.Machines_create or 0) + 1, after.executed.Machines_create)
    end)

    it("the reconnect holds after the client has had more than 64 connections at once", function()
      -- 100 calls at once (each held 0.5 s by the server): over HTTP/1.1, 100 connections
      local many = E.client(E.env[idle_key], { retry = false, rate_limit = false })
      local list = {}
      for i = 1, 100 do list[i] = i end
      E.control("POST", "faults", { op = "Machines_show", kind = "delay", delay = 0.5, count = 100 })
      local _, errs = many:map(list, function(i) return many.machines:get(app, "nope" .. i) end,
        { concurrency = 100 })
      for i = 1, 100 do assert.equals("not_found", errs[i].code, tostring(errs[i])) end
      sleep(idle_seconds(E.env) * 2 + 0.2) -- the server closes them all meanwhile
      for k = 1, 2 do -- each on a connection the server closed, or on the new one the last opened
        local before = E.control("GET", "stats")
        local m, err = many.machines:create(app, { config = { image = "nginx" } })
        assert.is_nil(err, k .. ": " .. tostring(err))
        assert.truthy(m.id)
        local after = E.control("GET", "stats")
        assert.equals((before.requests.Machines_create or 0) + 1, after.requests.Machines_create)
        assert.equals((before.executed.Machines_create or 0) + 1, after.executed.Machines_create)
        sleep(idle_seconds(E.env) * 2 + 0.2)
      end
      many:close()
    end)

    it("a safe call after the idle close succeeds on a new connection", function()
      assert(c.apps:get(app))
      local before = E.control("GET", "stats")
      sleep(idle_seconds(E.env) * 2 + 0.2)
      assert(c.apps:get(app))
      local after = E.control("GET", "stats")
      assert.equals(before.connections + 1, after.connections)
      assert.equals(before.requests.Apps_show + 1, after.requests.Apps_show)
    end)
  end)
end

describe("connections", function()
  local T, stop_tls
  setup(function()
    T, stop_tls = tls_instance()
  end)
  teardown(function() stop_tls() end)

  -- creates on machines of their own, n at once, each executed once; returns the stats
  local function fan_out(client, n)
    local app = H.app(client)
    local list = {}
    for i = 1, n do list[i] = i end
    local before = T.control("GET", "stats").connections
    local ms, errs = client:map(list, function(i)
      return client.machines:create(app, { config = { image = "nginx" }, name = "f" .. i, skip_launch = true })
    end, { concurrency = n })
    for i = 1, n do
      assert.is_nil(errs[i], errs[i] and tostring(errs[i]))
      assert.equals("f" .. i, ms[i].name)
    end
    local s = T.control("GET", "stats")
    assert.equals(n, s.executed.Machines_create)
    assert.equals(n, s.requests.Machines_create)
    return s, s.connections - before
  end

  describe("over TLS", function()
    local c
    before_each(function()
      T.control("POST", "reset")
      T.control("POST", "config", { delays = { transition = 0 } })
    end)
    after_each(function() if c then c:close() end end)

    it("negotiates HTTP/2 and carries sequential calls on one connection", function()
      c = T.client()
      local app = H.app(c)
      for _ = 1, 10 do assert(c.apps:get(app)) end
      local s = T.control("GET", "stats")
      assert.equals("2.0", s.last_request.http_version)
      assert.equals("https", s.last_request.scheme)
      assert.equals(11, s.protocols["2.0"])
      assert.is_nil(s.protocols["1.1"])
      -- the create may have had its own connection; the ten gets shared one
      assert.is_true(s.connections <= 2, "connections: " .. s.connections)
      assert.equals(10, s.last_request.connection_requests - (s.connections == 1 and 1 or 0))
    end)

    it("carries calls past a connection's 100 streams on a few more connections", function()
      c = T.client()
      local _, opened = fan_out(c, 250) -- 101 connections for 200 at once without a cap
      assert.is_true(opened <= 4, "connections opened: " .. opened)
    end)

    it("opens a connection per call in flight to a TLS server without HTTP/2", function()
      c = T.client(T.env.FLY_EMULATOR_H1_URL)
      -- the server holds each create, so that all are in flight at once however slow the client
      T.control("POST", "faults", { method = "POST", path = "/v1/apps/[^/]+/machines", kind = "delay",
        delay = 0.5, count = 30 })
      local _, opened = fan_out(c, 30) -- the cap on HTTP/2 connections is lifted
      assert.is_true(opened > 4, "connections opened: " .. opened)
    end)

    it("speaks HTTP/1.1 to a TLS server without HTTP/2 and reuses its connection", function()
      c = T.client(T.env.FLY_EMULATOR_H1_URL)
      local app = H.app(c)
      for _ = 1, 10 do assert(c.apps:get(app)) end
      local s = T.control("GET", "stats")
      assert.equals("1.1", s.last_request.http_version)
      assert.equals(11, s.protocols["1.1"])
      assert.is_nil(s.protocols["2.0"])
      assert.is_true(s.connections <= 2, "connections: " .. s.connections)
    end)
  end)

  describe("past the server's streams per HTTP/2 connection (GOAWAY)", function()
    local c, app
    before_each(function()
      T.control("POST", "reset")
      T.control("POST", "config", { delays = { transition = 0 } })
      c = T.client(T.env.FLY_EMULATOR_GOAWAY_URL)
      app = H.app(c)
    end)
    after_each(function() c:close() end)

    it("sequential calls go on on new connections", function()
      local limit = tonumber(T.env.FLY_EMULATOR_GOAWAY_AFTER)
      for _ = 1, 3 * limit do assert(c.apps:get(app)) end
      local s = T.control("GET", "stats")
      assert.equals(3 * limit, s.executed.Apps_show)
      assert.equals(3 * limit, s.requests.Apps_show)
      assert.is_true(s.connections >= 3, "connections: " .. s.connections)
    end)

    it("concurrent creates each execute exactly once", function()
      local n = 4 * tonumber(T.env.FLY_EMULATOR_GOAWAY_AFTER)
      local list = {}
      for i = 1, n do list[i] = i end
      -- no retries: the streams past the GOAWAY were refused, not processed, and the protocol
      -- lets them go again on a new connection without counting an attempt
      local once = T.client(T.env.FLY_EMULATOR_GOAWAY_URL, { retry = false })
      local ms, errs = once:map(list, function(i)
        return once.machines:create(app, { config = { image = "nginx" }, name = "m" .. i, skip_launch = true })
      end, { concurrency = n })
      once:close()
      for i = 1, n do
        assert.is_nil(errs[i])
        assert.equals("m" .. i, ms[i].name)
      end
      local s = T.control("GET", "stats")
      assert.equals(n, s.executed.Machines_create)
      assert.equals(n, s.requests.Machines_create)
      assert.equals(n, #assert(c.machines:list(app)))
    end)

    it("says nothing of having run for calls whose refused streams were sent again", function()
      local n = 30
      local list = {}
      for i = 1, n do list[i] = i end
      local _, errs = c:map(list, function(i) return c.machines:get(app, "nope" .. i) end, { concurrency = n })
      local marked = 0
      for i = 1, n do
        assert.equals("not_found", errs[i].code)
        if errs[i].may_have_run then marked = marked + 1 end
      end
      -- a refused stream was not processed: its call says nothing of having run (26 of 30 did,
      -- counting every resend). A connection that closes as a stream goes out is a send that may
      -- have run, which the timing of a run can bring about for a few of them.
      assert.is_true(marked < n / 2, marked .. " of " .. n .. " say they may have run")
    end)

    it("a hundred creates at once each execute exactly once, however often their streams are refused", function()
      -- libcurl sends a refused stream again 5 times at most, then gives up: the core sends it
      -- again as a new attempt (never processed, so safe to repeat)
      fan_out(c, 100)
    end)
  end)

  describe("over plain HTTP", function()
    it("speaks HTTP/1.1 and counts connections and executions", function()
      local E = suite_instance()
      E.control("POST", "reset")
      local c = E.client(E.env.FLY_EMULATOR_PLAIN_URL)
      local app = H.app(c)
      for _ = 1, 5 do assert(c.apps:get(app)) end
      local s = E.control("GET", "stats")
      assert.equals("1.1", s.last_request.http_version)
      assert.equals("http", s.last_request.scheme)
      assert.equals(1, s.executed.Apps_create)
      assert.equals(5, s.executed.Apps_show)
      assert.is_true(s.connections >= 1 and s.connections <= 2, "connections: " .. s.connections)
      c:close()
    end)

    it("libcurl's own resend of a safe call on a reused connection that died works every time", function()
      -- libcurl counts such resends on the easy handle, across transfers, and gives up at the
      -- sixth: a handle it resent on is not reused for another call
      local E = suite_instance()
      E.control("POST", "reset")
      local c = E.client(E.env.FLY_EMULATOR_PLAIN_URL, { retry = false })
      local app = H.app(c)
      for k = 1, 8 do
        -- the next request on the warm connection finds it closed, with no answer
        E.control("POST", "faults", { op = "Apps_show", kind = "close", count = 1 })
        local before = E.control("GET", "stats")
        local got, err = c.apps:get(app)
        assert.is_nil(err, k .. ": " .. tostring(err))
        assert.equals(app, got.name)
        local after = E.control("GET", "stats")
        assert.equals(before.connections + 1, after.connections) -- the resend's new connection
      end
      c:close()
    end)

    it("probes its idle connections with TCP keep-alive (the first probe within 30 s)", function()
      local E = suite_instance()
      local c = E.client(E.env.FLY_EMULATOR_PLAIN_URL)
      assert(c.apps:get(H.app(c)))
      local timers = tcp_timers(tonumber(E.env.FLY_EMULATOR_PLAIN_URL:match(":(%d+)/?$")))
      assert.is_true(#timers >= 1, "no connection to the emulator")
      for _, t in ipairs(timers) do -- this client's, and any other one's of this process
        assert.equals(2, t.timer, "the keep-alive timer runs on an idle connection")
        assert.is_true(t.left > 0 and t.left <= 30, "first probe within 30 s: " .. t.left)
      end
      c:close()
    end)
  end)

  idle_cases("idle keep-alive close over TLS with HTTP/2", function() return T end, "FLY_EMULATOR_IDLE_URL")
  idle_cases("idle keep-alive close over TLS with HTTP/1.1", function() return T end, "FLY_EMULATOR_IDLE_H1_URL")
  idle_cases("idle keep-alive close over the suite's emulator", suite_instance, "FLY_EMULATOR_IDLE_URL")

  it("counts one execution for a create whose connection dropped after it ran", function()
    T.control("POST", "reset")
    local c = T.client(nil, { retry = false })
    local app = H.app(c)
    T.control("POST", "faults", { method = "POST", path = "/v1/apps/[^/]+/machines", kind = "close_after" })
    local m, err = c.machines:create(app, { config = { image = "nginx" } })
    assert.is_nil(m)
    assert.is_false(err.retryable)
    assert.equals(1, executed(T, "Machines_create"))
    assert.equals(1, #assert(c.machines:list(app)))
    c:close()
  end)
end)
