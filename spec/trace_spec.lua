-- The trace hook and FLY_DEBUG: one event for each attempt's start and end,
-- each rate-limit wait and each retry decision, delivered in order before the
-- call returns; never the token; bodies only when asked for.
local H = require "helper"
local fly = require "fly"
local core = require "fly.core"
local trace = require "fly.trace"

local FAST = { attempts = 3, base = 0.01, cap = 0.02 }

-- A client whose hook appends every event to the returned list.
local function traced(opts)
  local events = {}
  local o = { retry = FAST, trace = function(e) events[#events + 1] = e end }
  for k, v in pairs(opts or {}) do o[k] = v end
  return H.client(o), events
end

-- The kinds of a list of events, as one string: "start finish".
local function kinds(events, call)
  local out = {}
  for _, e in ipairs(events) do
    if not call or e.call == call then out[#out + 1] = e.kind end
  end
  return table.concat(out, " ")
end

-- Every string in the events, joined: what a log of them would show.
local function dump(events)
  local out = {}
  local function walk(v)
    if type(v) == "table" then
      for k, x in pairs(v) do walk(k) walk(x) end
    else
      out[#out + 1] = tostring(v)
    end
  end
  walk(events)
  return table.concat(out, "\n")
end

describe("the trace hook", function()
  local c, events, name
  before_each(function()
    H.reset()
    c, events = traced()
    name = H.app(c)
    for i = #events, 1, -1 do events[i] = nil end
  end)
  after_each(function() c:close() end)

  it("sees each attempt's start and finish, with what it got and how long it took", function()
    assert(c.apps:get(name))
    assert.equals("start finish", kinds(events))
    local s, f = events[1], events[2]
    for _, e in ipairs { s, f } do
      assert.equals("Apps_show", e.operation)
      assert.equals("GET", e.method)
      assert.equals("/v1/apps/" .. name, e.path)
      assert.equals(1, e.attempt)
      assert.equals(s.call, e.call)
      assert.equals(0, e.wait)
      assert.is_number(e.time)
    end
    assert.equals(200, f.status)
    assert.is_nil(f.code)
    assert.is_false(f.retryable)
    assert.is_true(f.seconds > 0 and f.seconds < 5)
    assert.is_true(f.time >= s.time)
    assert.matches("^%w", f.request_id)
    assert.is_nil(f.body)
    assert.is_nil(s.body)
    assert.is_nil(s.headers)
    -- the next call has the next number
    assert(c.apps:get(name))
    assert.equals(s.call + 1, events[3].call)
  end)

  it("counts libcurl's own resend of a safe call whose reused connection dropped", function()
    -- over HTTP/1.1: there libcurl sends the request again on a new connection
    local h1, ev = traced { base_url = H.listener("FLY_EMULATOR_H1_URL") or H.plain_url() }
    assert(h1.apps:get(name)) -- the connection is now warm
    local before = H.stats().requests.Apps_show
    H.fault { op = "Apps_show", kind = "close" }
    for i = #ev, 1, -1 do ev[i] = nil end
    assert(h1.apps:get(name))
    assert.equals("start finish", kinds(ev)) -- one attempt, no retry
    assert.equals(200, ev[2].status)
    assert.equals(1, ev[2].attempt)
    assert.equals(1, ev[2].resends)
    assert.equals(before + 2, H.stats().requests.Apps_show) -- the server got it twice
    assert(h1.apps:get(name))
    assert.is_nil(ev[4].resends) -- sent once
    -- an attempt cut short after libcurl resent it says so too
    H.fault { op = "Apps_show", kind = "close" }
    H.fault { op = "Apps_show", kind = "stall", delay = 5 } -- what the resend meets
    for i = #ev, 1, -1 do ev[i] = nil end
    before = H.stats().requests.Apps_show
    local t = h1:spawn(function() return h1.apps:get(name) end)
    local deadline = fly.now() + 5
    while H.stats().requests.Apps_show < before + 2 and fly.now() < deadline do h1:poll(0.05) end
    t:cancel()
    h1:poll(0)
    assert.equals("start finish", kinds(ev))
    assert.equals("cancelled", ev[2].code)
    assert.equals(1, ev[2].resends)
    h1:close()
  end)

  it("delivers a call's events before the call returns, also inside tasks", function()
    local seen = {}
    local t = c:spawn(function()
      local app = assert(c.apps:get(name))
      seen[1] = kinds(events)
      return app.name
    end)
    assert.equals(name, (t:join(10)))
    assert.equals("start finish", seen[1])
    local _, err = c.apps:get("missing-" .. name)
    assert.equals(404, err.status)
    assert.equals("start finish start finish", kinds(events))
    assert.equals(404, events[4].status)
  end)

  it("sees each retry decision with its wait, and the wait before the next attempt", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 2 }
    assert(c.apps:get(name))
    assert.equals("start finish retry start finish retry start finish", kinds(events))
    assert.same({ 1, 1, 1, 2, 2, 2, 3, 3 }, (function()
      local a = {}
      for i, e in ipairs(events) do a[i] = e.attempt end
      return a
    end)())
    local r1 = events[3]
    assert.equals(503, events[2].status)
    assert.is_true(events[2].retryable)
    assert.equals(503, r1.status)
    assert.is_true(r1.wait >= 0 and r1.wait <= FAST.cap * 1.5)
    assert.equals(r1.wait, events[4].wait) -- the next attempt says what it waited for
    assert.equals(r1.wait, events[5].wait)
    assert.equals(200, events[8].status)
  end)

  it("sees a transport failure's code, and gives up when no attempt is left", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "close", count = 0 }
    local _, err = c.apps:get(name)
    assert.equals("reset", err.code)
    assert.equals("start finish retry start finish retry start finish giveup", kinds(events))
    assert.equals("reset", events[2].code)
    assert.is_nil(events[2].status)
    assert.is_number(events[2].seconds)
    local g = events[9]
    assert.equals("reset", g.code)
    assert.equals(3, g.attempt)
    assert.is_true(g.retryable)
  end)

  it("gives up with the attempt's own answer when a retry would not fit before the deadline", function()
    -- each 503 takes 0.6 s: after the first, 0.4 s of the 1 s deadline are left
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, delay = 0.6, count = 0 }
    local _, err = c:call("Apps_show", { app_name = name }, { deadline = 1 })
    assert.equals(503, err.status)
    assert.equals("start finish giveup", kinds(events))
    assert.equals(503, events[3].status)
    assert.equals(1, events[3].attempt)
    assert.is_true(events[2].seconds >= 0.6)
  end)

  it("does not give up on a failure that is never retried: the finish says it all", function()
    H.fault { method = "POST", path = "/v1/apps", kind = "status_after", status = 503, count = 1 }
    local _, err = c.apps:create { app_name = H.name(), org_slug = "personal" }
    assert.equals(503, err.status)
    assert.equals("start finish", kinds(events))
    assert.is_false(events[2].retryable)
  end)

  it("sees a rate-limit wait before the first attempt", function()
    local paced, seen = traced { rate_limit = { Apps_show = { rate = 5, burst = 1 }, margin = 0 } }
    assert(paced.apps:get(name))
    assert(paced.apps:get(name))
    assert.equals("start finish wait start finish", kinds(seen))
    local w = seen[3]
    assert.equals("Apps_show", w.operation)
    assert.equals(1, w.attempt)
    assert.is_true(w.wait > 0.05 and w.wait <= 0.2, tostring(w.wait))
    assert.equals(w.wait, seen[4].wait)
    assert.equals(w.wait, seen[5].wait)
    assert.equals(w.call, seen[5].call)
    -- a wait past the call's deadline: the call gives up without an attempt
    local _, err = paced:call("Apps_show", { app_name = name }, { deadline = 0.01 })
    assert.equals("timeout", err.code)
    assert.equals("wait giveup", kinds(seen, seen[#seen].call))
    assert.equals("timeout", seen[#seen].code)
    assert.equals(0, seen[#seen].attempt)
    paced:close()
  end)

  it("closes an attempt cut short by a cancel", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "stall", delay = 5, count = 1 }
    local t = c:spawn(function() return c.apps:get(name) end)
    local deadline = fly.now() + 5
    while kinds(events) ~= "start" and fly.now() < deadline do c:poll(0.05) end
    assert.equals("start", kinds(events))
    t:cancel()
    c:poll(0)
    assert.equals("start finish", kinds(events))
    assert.equals("cancelled", events[2].code)
    assert.equals(1, events[2].attempt)
    -- closing the client ends what is in flight: the hook sees those attempts end too
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "stall", delay = 5, count = 1 }
    c:spawn(function() return c.apps:get(name) end)
    deadline = fly.now() + 5
    while #events < 3 and fly.now() < deadline do c:poll(0.05) end
    c:close()
    assert.equals("start finish start finish", kinds(events))
    assert.equals("cancelled", events[4].code)
  end)

  it("gives up when a call waiting for its retry is cancelled", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 429, retry_after = 30,
      count = 1 }
    local t = c:spawn(function() return c.apps:get(name) end)
    local deadline = fly.now() + 5
    while kinds(events) ~= "start finish retry" and fly.now() < deadline do c:poll(0.05) end
    t:cancel()
    c:poll(0)
    assert.equals("start finish retry giveup", kinds(events))
    assert.equals("cancelled", events[4].code)
    assert.is_false(events[4].retryable)
    assert.equals(1, events[4].attempt)
  end)

  it("never shows the token; bodies and headers only with trace_bodies, never Authorization", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 1 }
    assert(c.apps:get(name))
    assert.is_nil(dump(events):find(H.TOKEN, 1, true))
    assert.is_nil(dump(events):find("Authorization", 1, true))

    local b, seen = traced { trace_bodies = true }
    local other = H.name()
    assert(b.apps:create { app_name = other, org_slug = "personal" })
    assert.equals("start finish", kinds(seen))
    assert.matches('"app_name"%s*:%s*"' .. other:gsub("%-", "%%-") .. '"', seen[1].body)
    assert.is_table(seen[1].headers)
    local names = {}
    for _, h in ipairs(seen[1].headers) do names[h:match("^[^:]+")] = true end
    assert.is_true(names["User-Agent"] and names["Content-Type"] and true)
    assert.is_nil(names.Authorization)
    assert.is_nil(names.Expect) -- ("Expect:" tells libcurl to send none: not a line sent)
    assert(b.apps:get(other))
    assert.equals("start finish start finish", kinds(seen))
    assert.matches('"name"%s*:%s*"' .. other:gsub("%-", "%%-") .. '"', seen[4].body)
    assert.is_nil(seen[3].body) -- a GET sends none
    assert.is_nil(dump(seen):find(H.TOKEN, 1, true))
    assert.is_nil(dump(seen):lower():find("authorization", 1, true))
    b:close()
  end)

  it("counts what it had to drop when nobody takes the events", function()
    local paced = H.client { rate_limit = { Apps_show = { rate = 1, burst = 1 } }, trace = function() end }
    for _ = 1, 4100 do paced:_submit("Apps_show", { app_name = name }) end
    local got = paced:_trace()
    assert.equals(4097, #got)
    assert.equals("wait", got[1].kind)
    assert.equals("dropped", got[4097].kind)
    assert.equals(4099 - 4096, got[4097].count)
    assert.is_nil(paced:_trace())
    paced:close()
  end)

  it("drops nothing when thousands of tasks' calls end in one turn, or a close cancels them", function()
    local counts = {}
    local hook = function(e) counts[e.kind] = (counts[e.kind] or 0) + 1 end
    -- 2100 tasks whose calls cannot go in time (deadline shorter than the rate-limit wait): each
    -- fails as it is made, with a wait and a giveup event, all in one turn of the loop
    local busy = H.client { rate_limit = { Apps_show = { rate = 0.01, burst = 1 } }, trace = hook }
    assert(busy.apps:get(name)) -- takes the one token: the next comes in 100 s
    for _ = 1, 2100 do
      busy:spawn(function() return busy:call("Apps_show", { app_name = name }, { deadline = 0.01 }) end)
    end
    assert.is_true(busy:run(30))
    assert.is_nil(counts.dropped)
    assert.equals(2100, counts.giveup)
    -- 4200 tasks waiting for their rate-limit slot when the client closes: each gives up
    counts = {}
    for _ = 1, 4200 do busy:spawn(function() return busy.apps:get(name) end) end
    busy:poll(0, math.huge) -- every task makes its call (no budget)
    busy:close()
    assert.is_nil(counts.dropped)
    assert.equals(4200, counts.giveup)
  end)

  it("records nothing for a client without a hook", function()
    local plain = H.client()
    assert(plain.apps:get(name))
    assert.is_nil(plain:_trace())
    plain:close()
  end)

  it("raises on a wrong option", function()
    H.raises("option 'trace' must be a function", function() fly.new { token = "t", trace = true } end)
    H.raises("'trace_bodies' needs a trace hook", function() fly.new { token = "t", trace_bodies = true } end)
  end)

  it("gives the same events for a request carried over the seam", function()
    c:close() -- luasocket speaks plain HTTP: this one goes to the emulator's plain listener
    c, events = traced { base_url = H.plain_url() }
    local http = require "socket.http"
    local ltn12 = require "ltn12"
    local function carry(req)
      while not req:done() do
        local w = req:_wire()
        local headers = {}
        for _, line in ipairs(w.headers) do
          local k, v = line:match("^([^:]+):%s*(.*)$")
          if v ~= "" then headers[k:lower()] = v end
        end
        local out = {}
        local _, status, rh = http.request { url = w.url, method = w.method, headers = headers,
          sink = ltn12.sink.table(out) }
        local verdict, at = req:_complete(status, rh, table.concat(out))
        trace.drain(c)
        if verdict == "retry" then require("socket").sleep(math.max(0, at - core.now())) end
      end
    end
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 1 }
    assert(c.apps:get(name))
    local via_curl = kinds(events)
    for i = #events, 1, -1 do events[i] = nil end
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 1 }
    carry(c:_build("Apps_show", { app_name = name }))
    assert.equals(via_curl, kinds(events))
    assert.equals("start finish retry start finish", via_curl)
    assert.equals(503, events[2].status)
    assert.is_number(events[2].seconds)
    assert.equals(200, events[5].status)
    -- a request id with control characters (a proxy's forgery) comes escaped, as in errors
    for i = #events, 1, -1 do events[i] = nil end
    local req = c:_build("Apps_show", { app_name = name }, { attempts = 1 })
    req:_wire()
    req:_complete(503, { ["fly-request-id"] = "\27[2K\rfly: GET /forged 200" }, "{}")
    trace.drain(c)
    assert.equals("start finish giveup", kinds(events)) -- (a 503 with no attempt left)
    assert.equals("\\x1b[2K\\rfly: GET /forged 200", events[2].request_id)
  end)
end)

describe("a hook that raises", function()
  it("does not break the call, is reported once per process naming the hook, and keeps being called", function()
    H.reset()
    local out = H.child(([[
      local fly = require "fly"
      local n = 0
      local function hook() n = n + 1; error("boom " .. n) end
      local c = assert(fly.new { token = %q, base_url = %q, rate_limit = false, trace = hook })
      assert(c.apps:create { app_name = "hooked", org_slug = "personal" })
      assert(c.apps:get("hooked"))
      c:close()
      c = assert(fly.new { token = %q, base_url = %q, rate_limit = false, trace = hook }) -- the same hook
      assert(c.apps:get("hooked"))
      print("calls ok, hook called " .. n .. " times")
    ]]):format(H.TOKEN, H.plain_url(), H.TOKEN, H.plain_url()))
    assert.matches("calls ok, hook called 6 times", out)
    local _, reports = out:gsub("the trace hook %([^)]+:%d+%) raised an error", "")
    assert.equals(1, reports, out)
    assert.matches("boom 1", out)
    assert.is_nil(out:find("boom 2", 1, true))
  end)

  it("a C function is a hook like any other", function()
    local setup = H.client()
    local name = H.app(setup)
    setup:close()
    local c = H.client { trace = type } -- (a C function cannot be a coroutine's body on Lua 5.1)
    assert.equals(name, assert(c.apps:get(name)).name)
    c:close()
  end)

  it("even with an error that cannot be shown, or by yielding: the call goes on, and so does tracing",
    function()
    H.reset()
    local out = H.child(([[
      local fly = require "fly"
      local function client(hook)
        return assert(fly.new { token = %q, base_url = %q, rate_limit = false, trace = hook })
      end
      local n = 0
      local unshowable = setmetatable({}, { __tostring = function() error("tostring fails") end })
      local c = client(function() n = n + 1; error(unshowable) end)
      assert(c.apps:create { app_name = "hooked", org_slug = "personal" })
      assert(c.apps:get("hooked"))
      print("calls ok, hook called " .. n .. " times")
      -- a hook that yields, inside the program's own coroutine: it is stopped, not the code traced
      local m = 0
      local y = client(function() m = m + 1; coroutine.yield("from the hook") end)
      local co = coroutine.create(function() return y.apps:get("hooked") end)
      local ok, app = coroutine.resume(co)
      print("resumed " .. tostring(ok) .. " " .. coroutine.status(co) .. " " .. tostring(app.name))
      assert(y.apps:get("hooked"))
      print("yielding hook called " .. m .. " times")
      -- C functions as hooks: each is a hook of its own (known by its address)
      for _, f in ipairs { error, coroutine.yield } do assert(client(f).apps:get("hooked")) end
    ]]):format(H.TOKEN, H.plain_url()))
    assert.matches("calls ok, hook called 4 times", out)
    assert.matches("raised an error %(reported once; it is still called%): a table that cannot be shown", out)
    assert.matches("resumed true dead hooked", out)
    assert.matches("yielding hook called 4 times", out)
    assert.matches("raised an error %(reported once; it is still called%): it yielded", out)
    local _, c_reports = out:gsub("the trace hook %(a C function, [^)]+%) raised an error", "")
    assert.equals(2, c_reports, out)
  end)
end)

describe("FLY_DEBUG=1", function()
  it("prints the status and the failure code together for an answer that was refused", function()
    local setup = H.client()
    local name = H.app(setup)
    setup:close()
    local c = H.client { max_body = 64, trace = trace.debug_line } -- the printer FLY_DEBUG installs
    local lines, saved = {}, io.stderr
    rawset(io, "stderr", { write = function(_, ...) lines[#lines + 1] = table.concat { ... } end })
    local ok, err = pcall(c.apps.get, c.apps, name) -- the App is longer than 64 bytes
    rawset(io, "stderr", saved)
    c:close()
    assert(ok, err)
    assert.matches("^fly: GET /v1/apps/%S+ 200 too_large [%d.]+ms attempt 1 ", lines[1])
  end)

  it("prints one line per attempt on stderr: method, path, status, time, attempt, wait, resends, request id",
    function()
    H.reset()
    local code = ([[
      local fly = require "fly"
      local c = assert(fly.new { token = %q, base_url = %q, rate_limit = false,
        retry = { attempts = 3, base = 0.01, cap = 0.02 } })
      assert(c.apps:create { app_name = "dbg", org_slug = "personal" })
      local ok = c.apps:get("dbg")
      io.stdout:write("result ", ok.name, "\n")
    ]]):format(H.TOKEN, H.plain_url())
    H.fault { method = "GET", path = "/v1/apps/dbg", kind = "status", status = 503, count = 1 }
    -- then the retry's connection (the same, kept alive) drops: libcurl sends it again
    H.fault { method = "GET", path = "/v1/apps/dbg", kind = "close", count = 1 }
    local out = H.child(code, { FLY_DEBUG = "1" })
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      if l:find("^fly: ") then lines[#lines + 1] = l end
    end
    assert.equals(3, #lines, out)
    assert.matches("^fly: POST /v1/apps 201 [%d.]+ms attempt 1 wait 0%.0ms request_id %S+$", lines[1])
    assert.matches("^fly: GET /v1/apps/dbg 503 [%d.]+ms attempt 1 wait 0%.0ms request_id %S+$", lines[2])
    assert.matches("^fly: GET /v1/apps/dbg 200 [%d.]+ms attempt 2 wait [%d.]+ms resent 1 request_id %S+$", lines[3])
    assert.matches("result dbg", out)
    assert.is_nil(out:find(H.TOKEN, 1, true))
    -- unset, empty or 0: silent
    H.reset()
    for _, v in ipairs { "0", "" } do
      out = H.child(code, { FLY_DEBUG = v })
      assert.is_nil(out:find("fly: ", 1, true), out)
      H.reset()
    end
  end)
end)
