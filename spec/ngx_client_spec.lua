-- The client inside nginx (two workers, against the emulator): `require "fly"` calls over
-- cosockets without blocking a worker, rate limits shared by the workers through
-- `lua_shared_dict fly_limits`, tasks on light threads (wait, with_lease, map, cancel), TLS
-- verification, the phase error, and the same results and errors as the libcurl transport.
local harness = require "nginx.harness"
local H = require "helper"
local cjson = require "cjson"

-- The emulator's plain HTTP/1.1 listener (the same state as H.url(), also under FLY_SPEC_TLS).
local function emulator() return H.plain_url() or H.url() end

-- One call per handler request, answered as JSON: which worker, when the call ran, its outcome.
local SERVER = [[
  location = /get-app {
    content_by_lua_block {
      local fly = require "fly"
      local c = assert(fly.new())
      local start = ngx.now()
      local app, err = c.apps:get(ngx.var.arg_app .. ngx.var.arg_i)
      local stop = ngx.now()
      c:close()
      ngx.say(require("cjson").encode { pid = ngx.worker.pid(), start = start, stop = stop,
        ok = app ~= nil, err = err and tostring(err) or nil })
    }
  }
  location = /get-machine {
    content_by_lua_block {
      local fly = require "fly"
      local c = assert(fly.new())
      local m, err = c.machines:get(ngx.var.arg_app, ngx.var.arg_id)
      c:close()
      ngx.say(require("cjson").encode { pid = ngx.worker.pid(), ok = m ~= nil,
        err = err and tostring(err) or nil })
    }
  }
  location = /phase {
    header_filter_by_lua_block {
      local fly = require "fly"
      local c = assert(fly.new())
      local ok, err = pcall(function() local app = c.apps:get("x"); return app end)
      ngx.shared.fly_spec:set("phase:header_filter", tostring(ok) .. "|" .. tostring(err))
    }
    content_by_lua_block {
      ngx.timer.at(0, function()
        local fly = require "fly"
        local c = assert(fly.new())
        local app, err = c.apps:get("no-such-app")
        ngx.shared.fly_spec:set("phase:timer", tostring(app ~= nil) .. "|" .. tostring(err and err.status))
      end)
      ngx.say("ok")
    }
  }
]]

-- Runs `n` requests to `path` at once (curl --parallel); returns the decoded JSON lines.
local function concurrently(n, url, count)
  local urls = {}
  for i = 1, count do urls[i] = ("'%s&i=%d'"):format(url, i) end
  local p = assert(io.popen("curl -s --parallel --parallel-immediate --parallel-max 100 "
    .. table.concat(urls, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  local rows = {}
  for line in out:gmatch("[^\n]+") do rows[#rows + 1] = cjson.decode(line) end
  assert(#rows == count, ("%d of %d requests answered:\n%s\n%s"):format(#rows, count, out, n:error_log():sub(-3000)))
  return rows
end

-- The most calls one worker had in flight at the same time.
local function overlap(rows)
  local best = 0
  for _, a in ipairs(rows) do
    local inside = 0
    for _, b in ipairs(rows) do
      if b.pid == a.pid and b.start <= a.start and a.start < b.stop then inside = inside + 1 end
    end
    if inside > best then best = inside end
  end
  return best
end

describe("the client inside nginx #nginx", function()
  local n, c

  setup(function()
    local trust = H.ca_file() and ("lua_ssl_trusted_certificate " .. H.ca_file() .. ";") or ""
    n = harness.start {
      workers = 2,
      tls = true,
      main = ("env FLY_API_TOKEN=%s; env FLY_API_HOSTNAME=%s;"):format(H.TOKEN, emulator()),
      http = [[
        lua_shared_dict fly_limits 1m;
        init_by_lua_block {
          local fly = require "fly"
          local c = assert(fly.new())
          local ok, err = pcall(function() local app = c.apps:get("x"); return app end)
          ngx.shared.fly_spec:set("phase:init", tostring(ok) .. "|" .. tostring(err))
        }
        # the emulator behind TLS with the harness's certificate (localhost, 127.0.0.1)
        server {
          listen 127.0.0.1:@TLS_PORT@ ssl;
          ssl_certificate @CERT@;
          ssl_certificate_key @KEY@;
          location / { proxy_pass ]] .. emulator() .. [[; }
        }
      ]] .. trust,
      server = SERVER .. [[
        location = /trusted {
          lua_ssl_trusted_certificate @CERT@;
          content_by_lua_block { require("nginx.runner").run() }
        }
      ]],
    }
  end)
  teardown(function() if n then n:stop() end end)

  before_each(function()
    H.reset()
    c = H.client { base_url = emulator() }
  end)
  after_each(function() c:close() end)

  it("serves concurrent handler requests, none waiting for another's call", function()
    -- one app each: Get App is limited per app (1/s, burst 3)
    local prefix = H.name("conc") .. "-"
    for i = 1, 20 do H.app(c, prefix .. i) end
    H.fault { op = "Apps_show", kind = "delay", delay = 0.2, count = 20 }
    local rows = concurrently(n, ("%s/get-app?app=%s"):format(n.url, prefix), 20)
    for _, r in ipairs(rows) do assert.is_true(r.ok, r.err) end
    -- a worker blocked in its call would run its calls one after another
    assert.is_true(overlap(rows) > 1, "no worker had two calls in flight at once")
    assert.equals(20, H.stats().requests.Apps_show)
  end)

  it("keeps both workers within the server's rate limits (fly_limits)", function()
    local app = H.app(c)
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    H.config { rate_limits = { enabled = true } }
    local rows = concurrently(n, ("%s/get-machine?app=%s&id=%s"):format(n.url, app, m.id), 30)
    local pids, workers = {}, 0
    for _, r in ipairs(rows) do
      assert.is_true(r.ok, r.err)
      if not pids[r.pid] then workers = workers + 1 end
      pids[r.pid] = true
    end
    assert.equals(2, workers)
    local stats = H.stats()
    assert.equals(0, stats.rate_limited)
    assert.equals(30, stats.requests.Machines_show)
    assert.is_nil(n:error_log():find("no lua_shared_dict", 1, true))
  end)

  it("without lua_shared_dict fly_limits: paces per worker, and warns once", function()
    local bare = harness.start {
      workers = 1, main = ("env FLY_API_TOKEN=%s; env FLY_API_HOSTNAME=%s;"):format(H.TOKEN, emulator()),
    }
    local ok, err = pcall(function()
      local app = H.app(c)
      -- Get App: burst 3, then 1/s: the fourth call waits for the worker's own bucket
      local first, fourth = bare:run(([[
        local c = assert(require("fly").new())
        local t = {}
        for i = 1, 4 do
          assert(c.apps:get(%q))
          t[i] = ngx.now()
        end
        return t[1], t[4]
      ]]):format(app))
      assert.is_true(fourth - first >= 0.5, "the fourth call was not paced")
      local _, warnings = bare:error_log():gsub("no lua_shared_dict fly_limits", "")
      assert.equals(1, warnings)
    end)
    bare:stop()
    assert(ok, err)
  end)

  local function run(code)
    return n:run("local fly = require 'fly'; local c = assert(fly.new()); " .. code)
  end

  it("writes FLY_DEBUG's lines and a broken hook's error to the error log, the error once per worker", function()
    local dbg = harness.start {
      workers = 1,
      main = ("env FLY_API_TOKEN=%s; env FLY_API_HOSTNAME=%s; env FLY_DEBUG=1;"):format(H.TOKEN, emulator()),
    }
    local ok, err = pcall(function()
      local app = H.app(c)
      dbg:run(([[
        local fly = require "fly"
        local function hook() error("hook boom") end
        for _ = 1, 2 do -- a client per request, with the same hook
          local c = assert(fly.new { trace = hook })
          assert(c.apps:get(%q))
          c:close()
        end
      ]]):format(app))
      local log = dbg:error_log()
      local _, lines = log:gsub("%[warn%][^\n]*fly: GET /v1/apps/" .. app:gsub("%p", "%%%0") .. " 200 ", "")
      assert.equals(2, lines, log)
      local _, reports = log:gsub("%[error%][^\n]*fly: the trace hook %([^)]+%) raised an error[^\n]*hook boom", "")
      assert.equals(1, reports, log)
    end)
    dbg:stop()
    assert(ok, err)
  end)

  it("waits for a state, and maps over machines with tasks", function()
    local app = H.app(c)
    local ids = {}
    for i = 1, 4 do ids[i] = assert(c.machines:create(app, { config = { image = "nginx" } })).id end
    local states, count = run(([[
      local app, ids = %q, { %q, %q, %q, %q }
      local got, errs = c:map(ids, function(id)
        local m = assert(c.machines:get(app, id))
        return (assert(m:wait("started", { timeout = 10 })))
      end, { concurrency = 2 })
      if next(errs) then error(tostring(select(2, next(errs)))) end
      return table.concat(got, ","), #got
    ]]):format(app, ids[1], ids[2], ids[3], ids[4]))
    assert.equals("started,started,started,started", states)
    assert.equals(4, count)
  end)

  it("cancels map's workers with the task that runs map", function()
    local app = H.app(c)
    H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "delay", delay = 0.3, count = 12 }
    local before = H.stats().requests.Apps_show or 0
    local status, ran = run(([[
      local items = {}
      for i = 1, 12 do items[i] = i end
      local parent = c:spawn(function()
        return c:map(items, function() return c.apps:get(%q) end, { concurrency = 3 })
      end)
      ngx.sleep(0.1) -- the first three calls are out
      assert(parent:cancel())
      ngx.sleep(1.5) -- five times what each call takes
      local _, err = parent:result()
      return parent:status(), err.may_have_run
    ]]):format(app))
    assert.equals("cancelled", status)
    assert.is_true(ran) -- its workers' calls had gone out
    assert.equals(3, (H.stats().requests.Apps_show or 0) - before)
  end)

  it("gives the trace hook the same events as the libcurl loop, and applies max_body", function()
    local app = H.app(c)
    H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "status", status = 503, count = 1 }
    local kinds, code, status = n:run(([[
      local fly = require "fly"
      local events = {}
      local c = assert(fly.new { retry = { base = 0.01, cap = 0.02 },
        trace = function(e) events[#events + 1] = e.kind .. ":" .. tostring(e.status or e.code or "") end })
      assert(c.apps:get(%q))
      local small = assert(fly.new { max_body = 16 })
      local _, err = small.apps:get(%q)
      return table.concat(events, " "), err.code, tostring(err.status)
    ]]):format(app, app))
    assert.equals("start: finish:503 retry:503 start: finish:200", kinds)
    assert.equals("too_large", code)
    assert.equals("200", status) -- the answer's, as the libcurl transport keeps it
  end)

  it("does not send a retry that wakes with less time left than the attempt before it took", function()
    local app = H.app(c)
    -- each 503 takes 0.3 s; the hook holds the worker 0.6 s at the retry, so the retry, due at
    -- about 0.3 s of the 1 s deadline, wakes at about 0.9 s: 0.1 s left, too little
    H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "status", status = 503, delay = 0.3, count = 0 }
    local status, attempts, kinds = n:run(([[
      local fly = require "fly"
      local events = {}
      local c = assert(fly.new { retry = { base = 0.01, cap = 0.02 }, trace = function(e)
        events[#events + 1] = e.kind
        if e.kind == "retry" then
          local t = ngx.now() + 0.6
          repeat ngx.update_time() until ngx.now() >= t
        end
      end })
      local _, err = c:call("Apps_show", { app_name = %q }, { deadline = 1 })
      return tostring(err.status), tostring(err.attempts), table.concat(events, " ")
    ]]):format(app))
    H.control("DELETE", "faults")
    assert.equals("503", status)
    assert.equals("1", attempts)
    assert.equals("start finish retry giveup", kinds)
  end)

  it("empties the bucket after a 429 that is the call's answer", function()
    local app = H.app(c)
    local id = "e28650000429ff"
    H.fault { method = "POST", path = "/v1/apps/" .. app .. "/machines/" .. id .. "/start", kind = "status",
      status = 429, count = 1 }
    local first, second = n:run(([[
      local fly = require "fly"
      local c = assert(fly.new { retry = false })
      local _, err = c.machines:start(%q, %q)
      local _, err2 = c:call("Machines_start", { app_name = %q, machine_id = %q }, { deadline = 0.3 })
      return tostring(err.status), tostring(err2.code)
    ]]):format(app, id, app, id))
    assert.equals("429", first)
    assert.equals("timeout", second) -- held back for the refill: not sent
    assert.equals(1, H.stats().requests.Machines_start)
  end)

  it("holds a lease while fn runs: refreshes it, releases it, also when fn raises", function()
    local app = H.app(c)
    local code = ([[
      local m = assert(c.machines:get(%q, %q))
      local ok, err = pcall(m.with_lease, m, { ttl = 2 }, function(leased, lease)
        ngx.sleep(1.2) -- the refresher runs every (ceil(ttl) - 1) / 3 s
        if %s then error("handler failed") end
        return lease.nonce
      end)
      local after = require("fly.compat").pack(m:get_lease())
      return ok, tostring(err), after[1] == nil and after[2].status or "held"
    ]])
    local function count(op) return H.stats().requests[op] or 0 end
    for _, raise in ipairs { false, true } do
      -- a machine each: its lease calls are paced per machine (1/s, burst 3)
      local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
      assert(m:wait("started", { timeout = 10 }))
      local leases, releases = count("Machines_create_lease"), count("Machines_release_lease")
      local ok, err, after = run(code:format(app, m.id, tostring(raise)))
      assert.equals(not raise, ok)
      if raise then assert.matches("handler failed", err) end
      assert.equals(404, after)
      local made = count("Machines_create_lease") - leases
      assert.is_true(made >= 3, ("acquired and refreshed %d times (raise: %s)"):format(made, tostring(raise)))
      assert.equals(1, count("Machines_release_lease") - releases)
      -- the refresher stopped with fn
      local refreshes = count("Machines_create_lease")
      require("socket").sleep(0.6)
      assert.equals(refreshes, count("Machines_create_lease"))
    end
  end)

  it("cancels a task's call, and close cancels the client's tasks", function()
    local app = H.app(c)
    H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "delay", delay = 5, count = 1 }
    local status, code, elapsed, closed, retryable, ran, idle_ran = run(([[
      local start = ngx.now()
      local t = c:spawn(function() return c.apps:get(%q) end)
      ngx.sleep(0.1)
      assert(t:cancel())
      local _, err = t:join()
      local elapsed = ngx.now() - start
      local napper = c:spawn(function() c:sleep(30) end)
      ngx.sleep(0)
      napper:cancel()
      local _, idle = napper:join()
      local sleeper = c:spawn(function() c:sleep(30) end)
      c:close()
      return t:status(), err.code, elapsed, sleeper:status(), err.retryable, err.may_have_run, idle.may_have_run
    ]]):format(app))
    assert.equals("cancelled", status)
    assert.equals("cancelled", code)
    assert.is_false(retryable)
    assert.is_true(ran) -- the call had gone out: the server may carry it out all the same
    assert.is_nil(idle_ran) -- a task cancelled in its sleep sent nothing
    assert.is_true(elapsed < 4, "the cancelled call was waited for")
    assert.equals("cancelled", closed)
    -- cancelled by another task, which nginx does not let kill it: its sleep ends at once
    local start = require("socket").gettime()
    local statuses = run [[
      local sleeper = c:spawn(function() c:sleep(30) return "woke" end)
      local canceller = c:spawn(function() c:sleep(0.05) return sleeper:cancel() end)
      assert(canceller:join())
      sleeper:join()
      return sleeper:status() .. "," .. canceller:status()
    ]]
    assert.equals("cancelled,done", statuses)
    -- nginx answers once the handler's light threads have ended: well before the 30 s sleep
    assert.is_true(require("socket").gettime() - start < 10)
    -- of two tasks joining the same one, the one cancelled by another task wakes, not the other
    start = require("socket").gettime()
    local joined = run [[
      local long = c:spawn(function() c:sleep(30) end)
      local first = c:spawn(function() return long:join() end)
      local second = c:spawn(function() return long:join() end)
      local canceller = c:spawn(function() c:sleep(0.05) return second:cancel() end)
      assert(canceller:join())
      assert(ngx.thread.wait(second._thread)) -- its light thread ends
      local still = first:status()
      long:cancel()
      first:join()
      return still .. "," .. second:status()
    ]]
    assert.equals("running,cancelled", joined)
    assert.is_true(require("socket").gettime() - start < 10)
    -- a task that cancels itself stops there: no call of its goes out
    local self_status, after = run(([[
      local after = false
      local t
      t = c:spawn(function()
        ngx.sleep(0.01) -- (a light thread starts at once: t is set after its first yield)
        t:cancel()
        after = true
        return c.machines:create(%q, { config = { image = "nginx" } })
      end)
      t:join()
      return t:status(), tostring(after)
    ]]):format(app))
    assert.equals("cancelled", self_status)
    assert.equals("false", after)
    assert.is_nil(H.stats().requests.Machines_create)
  end)

  it("verifies TLS against lua_ssl_trusted_certificate; insecure turns it off", function()
    local code = ([[
      local fly = require "fly"
      local function get(insecure)
        local c = assert(fly.new { base_url = "https://localhost:%d", insecure = insecure })
        local res, err = c:call("Apps_list", { org_slug = "personal" })
        return res and "ok" or err.code
      end
      return get(false), get(true)
    ]]):format(n.tls_port)
    -- first without the trust store (a connection verified with it would be reused from the
    -- worker's pool: the README says to set lua_ssl_trusted_certificate once, in http {})
    assert.same({ "tls", "ok" }, { n:run(code) })
    local status, body = n:request("POST", "/trusted", code)
    assert.equals(200, status)
    assert.same({ ok = true, values = { "ok", "ok" } }, cjson.decode(body))
  end)

  it("raises a programmer error in a phase without cosockets, naming it", function()
    assert.equals(200, (n:request("GET", "/phase")))
    local got = n:run [[
      ngx.sleep(0.3)
      local d = ngx.shared.fly_spec
      return { init = d:get("phase:init"), header_filter = d:get("phase:header_filter"),
        timer = d:get("phase:timer") }
    ]]
    for _, name in ipairs { "init", "header_filter" } do
      local ok, err = assert(got[name], name):match("^(%a+)|(.*)$")
      assert.equals("false", ok)
      assert.truthy(err:find("nginx's '" .. name .. "' phase", 1, true), err)
      assert.truthy(err:find("ngx.timer.at", 1, true), err)
      -- raised at the caller's line
      assert.truthy(err:find("^" .. name .. "_by_lua%(nginx%.conf:%d+%):%d+: fly: API calls"), err)
    end
    assert.equals("false|404", got.timer)
  end)

  describe("gives the same results and errors as the libcurl transport", function()
    -- A call's outcome, comparable across transports (run here and inside nginx).
    local OUTCOME = [[
      local function outcome(client, op, params, opts)
        local ok, res, err = pcall(client.call, client, op, params, opts)
        if not ok then return { raised = tostring(res):gsub("^[^:]*:%d+: ", "") } end
        if res ~= nil then
          if type(res) == "table" then res = { id = res.id, name = res.name, n = #res } end
          return { value = res }
        end
        return { code = err.code, status = err.status, retryable = err.retryable, attempts = err.attempts,
          operation = err.operation, path = err.path, method = err.method,
          message = err.status and err.message or nil }
      end
    ]]
    local outcome = assert(require("fly.compat").load(OUTCOME .. " return outcome"))()

    local function both(setup_fn, op, params, opts, client_opts)
      setup_fn()
      local here = assert(require("fly").new(client_opts))
      local a = outcome(here, op, params, opts)
      here:close()
      setup_fn()
      local there = n:run(OUTCOME .. ([[
        local cjson = require "cjson"
        local c = assert(require("fly").new(cjson.decode(%q)))
        local opts = %s
        return cjson.encode(outcome(c, %q, cjson.decode(%q), opts))
      ]]):format(cjson.encode(client_opts), opts and ("cjson.decode(%q)"):format(cjson.encode(opts)) or "nil",
        op, cjson.encode(params or {})))
      return a, cjson.decode(there)
    end

    it("for successes, failures, retries, the never-repeated and programmer errors", function()
      local app = H.app(c)
      local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
      local base = { token = H.TOKEN, base_url = emulator(), rate_limit = false, timeout = 10,
        retry = { attempts = 3, base = 0.01, cap = 0.02 } }
      local none = function() end
      local cases = {
        { none, "Apps_show", { app_name = app } },
        { none, "Apps_show", { app_name = "missing-" .. app } },
        { none, "Apps_list", { org_slug = "personal" } },
        { none, "Machines_list", { app_name = app, include_deleted = true, metadata = { k = "v" } } },
        { none, "Apps_show", { app_name = "bad/." } },
        { none, "Apps_show", {} },
        { none, "No_such_operation", {} },
        { function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "status", status = 503,
          count = 2 } end, "Apps_show", { app_name = app } },
        { function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "status", status = 503,
          count = 5 } end, "Apps_show", { app_name = app } },
        { function() H.fault { method = "POST", path = "/v1/apps", kind = "status", status = 429, retry_after = 0,
          count = 3 } end, "Apps_create", { body = { app_name = "never-" .. app, org_slug = "personal" } } },
        { function() H.fault { method = "POST", kind = "status", status = 502, count = 3,
          path = ("/v1/apps/%s/machines/%s/restart"):format(app, m.id) } end,
          "Machines_restart", { app_name = app, machine_id = m.id } },
        { function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "delay", delay = 2, count = 1 } end,
          "Apps_show", { app_name = app }, { timeout = 0.3, attempts = 1 } },
        { function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "close", count = 1 } end,
          "Apps_show", { app_name = app } },
        -- dropped after it was sent: never repeated, not retryable
        { function() H.fault { method = "POST", kind = "close", count = 1,
          path = ("/v1/apps/%s/machines/%s/restart"):format(app, m.id) } end,
          "Machines_restart", { app_name = app, machine_id = m.id } },
        -- a body cut short (shorter than its Content-Length): protocol, retried when safe
        { function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "truncate", count = 5 } end,
          "Apps_show", { app_name = app } },
        { function() H.fault { method = "POST", kind = "truncate", count = 1,
          path = ("/v1/apps/%s/machines/%s/restart"):format(app, m.id) } end,
          "Machines_restart", { app_name = app, machine_id = m.id } },
      }
      for i, case in ipairs(cases) do
        local a, b = both(case[1], case[2], case[3], case[4], base)
        assert.same(a, b, "case " .. i .. " (" .. case[2] .. ")")
      end
      H.control("DELETE", "faults") -- what the cases above left
      -- a body over max_body: too_large, with the answer's status
      local small = { max_body = 16 }
      for k, v in pairs(base) do small[k] = v end
      local a, b = both(none, "Apps_show", { app_name = app }, nil, small)
      assert.same(a, b)
      assert.equals("too_large", b.code)
      assert.equals(200, b.status)
      -- a client's deadline bounds every call that gives none, retries and their waits included
      local bounded = { deadline = 0.5 }
      for k, v in pairs(base) do bounded[k] = v end
      a, b = both(function() H.fault { method = "GET", path = "/v1/apps/" .. app, kind = "delay", delay = 2,
        count = 0 } end, "Apps_show", { app_name = app }, nil, bounded)
      H.control("DELETE", "faults")
      -- (an attempt cut by the deadline took all the time there was: no retry follows it, on
      -- either transport, even when a timer fires a little early)
      assert.same(a, b)
      assert.equals("timeout", b.code)
      assert.equals(1, b.attempts)
      -- nothing listens: connect fails, retried, the same way
      local closed = { token = H.TOKEN, base_url = "http://127.0.0.1:9", rate_limit = false,
        retry = { attempts = 2, base = 0.01, cap = 0.02 } }
      a, b = both(none, "Apps_show", { app_name = app }, nil, closed)
      a.message, b.message = nil, nil
      assert.same(a, b)
      assert.equals("connect", b.code)
    end)
  end)
end)
