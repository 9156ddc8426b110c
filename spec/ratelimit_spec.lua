-- Client-side rate limiting to Fly's published limits (C core token buckets).
local H = require "helper"
local fly = require "fly"
local core = require "fly.core"

-- The emulator enforces the same limits, `scale` times faster so the suite stays quick.
local SCALE = 20

local function limited_client(extra)
  local opts = { rate_limit = { scale = SCALE } }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return H.client(opts)
end

describe("rate limiting", function()
  before_each(function()
    H.reset()
    H.config { rate_limits = { enabled = true, scale = SCALE } }
  end)

  it("paces a burst on one key so the server never answers 429", function()
    local c = limited_client()
    local name = H.app(c)
    local results = c:map({}, function() end)
    assert.same({}, results)
    local list = {}
    for i = 1, 12 do list[i] = i end
    local ok = c:map(list, function() return c.apps:get(name) ~= nil end)
    for i = 1, 12 do assert.is_true(ok[i]) end
    local stats = H.stats()
    assert.equals(0, stats.rate_limited)
    assert.equals(12, stats.executed.Apps_show)
  end)

  it("shares buckets between clients with the same base URL and token", function()
    local a, b = limited_client(), limited_client()
    local name = H.app(a)
    local done = 0
    for _, client in ipairs { a, b } do
      for _ = 1, 8 do
        client:spawn(function()
          assert(client.apps:get(name))
          done = done + 1
        end)
      end
    end
    local deadline = fly.now() + 30
    while (a:poll(0.01) + b:poll(0.01)) > 0 and fly.now() < deadline do end
    assert.equals(16, done)
    assert.equals(0, H.stats().rate_limited)
  end)

  it("shares buckets whichever way the same token is given", function()
    -- admission only: the same credential, with or without its scheme and blanks, is one owner
    local rl = { margin = 0, Apps_show = { rate = 1, burst = 1 } }
    local app = "forms-" .. core.now()
    local first = H.client { token = "tok-forms", rate_limit = rl }
    local t0 = core.now()
    -- (each request is held: one collected unsent would give its token back)
    local held = { first:_build("Apps_show", { app_name = app }) } -- the one token: the next comes 1 s later
    for _, form in ipairs { "Bearer tok-forms", " tok-forms ", "bearer  tok-forms" } do
      local c = H.client { token = form, rate_limit = rl }
      held[#held + 1] = c:_build("Apps_show", { app_name = app })
      local wait = held[#held]:_ready_at() - t0
      assert.is_true(wait > 0.5, ("%q got a bucket of its own"):format(form))
      c:close()
    end
    first:close()
  end)

  it("keeps separate buckets per machine (or app) and per action", function()
    local c = limited_client()
    local names = { H.app(c), H.app(c), H.app(c) }
    H.reset()
    H.config { rate_limits = { enabled = true, scale = SCALE } }
    -- three apps x three gets each: all within their own bursts, none waits
    local list = {}
    for i = 1, 9 do list[i] = names[(i - 1) % 3 + 1] end
    local t0 = fly.now()
    c:map(list, function(name) return c:call("Apps_show", { app_name = name }) end)
    assert.equals(0, H.stats().rate_limited)
    assert.is_true(fly.now() - t0 < 2.5 / SCALE * 10) -- generous: no key waited for a refill
  end)

  it("without client-side limits, gets 429s and retries them until they pass", function()
    local c = H.client { rate_limit = false, retry = { attempts = 10, base = 0.01, cap = 0.2 } }
    local name = H.app(c)
    local list = {}
    for i = 1, 10 do list[i] = i end
    local res, errs = c:map(list, function() return c.apps:get(name) end)
    for i = 1, 10 do
      assert.is_nil(errs[i])
      assert.equals(name, res[i].name)
    end
    assert.is_true(H.stats().rate_limited > 0)
  end)

  it("counts retries against the bucket too", function()
    local c = limited_client { retry = { attempts = 4, base = 0.001, cap = 0.001 } }
    local name = H.app(c)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 3 }
    local res, errs = c:map({ 1, 2, 3 }, function() return c.apps:get(name) end)
    for i = 1, 3 do
      assert.is_nil(errs[i])
      assert.equals(name, res[i].name)
    end
    assert.equals(0, H.stats().rate_limited)
  end)

  it("fails at once when the rate-limit wait would pass the deadline", function()
    local c = H.client { rate_limit = { Apps_show = { rate = 0.01, burst = 1 } } }
    local name = H.app(c)
    assert(c.apps:get(name))
    local t0 = fly.now()
    local res, err = c:call("Apps_show", { app_name = name }, { deadline = 5 })
    assert.is_nil(res)
    assert.equals("timeout", err.code)
    assert.is_true(fly.now() - t0 < 4)
  end)

  it("allows a full burst again after an idle period", function()
    -- rate 2/s here: waiting for even one refill would take 0.5 s
    local c = H.client { rate_limit = { scale = 2 } }
    local name = H.app(c)
    H.reset()
    H.config { rate_limits = { enabled = true, scale = 2 } }
    H.app(c, name)
    for _ = 1, 3 do assert(c.apps:get(name)) end       -- the burst
    c:sleep(1.6)                                         -- idle: the bucket refills
    local t0 = fly.now()
    for _ = 1, 3 do assert(c.apps:get(name)) end       -- a whole burst again
    assert.is_true(fly.now() - t0 < 0.45)               -- without waiting for a refill
    assert.equals(0, H.stats().rate_limited)
  end)

  it("keeps each request a margin behind its token: the edge of the bucket waits, a full bucket does not",
    function()
      -- admission only (nothing is sent): how long after now each request may go, to within the
      -- microseconds an admission takes; `since`: the time since the previous admission, which
      -- the bucket refilled meanwhile (what a busy machine's pauses add). Each request is held:
      -- one collected unsent would give its token back.
      local last
      local held = {}
      local function ready(c, app)
        local t0 = core.now()
        local since = last and t0 - last or 0
        last = t0
        held[#held + 1] = c:_build("Apps_show", { app_name = app })
        return held[#held]:_ready_at() - t0, since
      end
      local AT_ONCE = 0.1 -- generous: a busy machine may pause the admission itself
      local function near(want, d) assert.is_true(math.abs(d - want) < AT_ONCE, ("%f, not %f"):format(d, want)) end
      local c = H.client { rate_limit = { margin = 0.5, Apps_show = { rate = 1, burst = 3 } } }
      local app = "edge-" .. core.now()
      -- a bucket full since it was made: its tokens came long ago
      assert.is_true(ready(c, app) < AT_ONCE)
      -- the next token came 1 s ago
      assert.is_true(ready(c, app) < AT_ONCE)
      -- the last one comes now (as the previous request went): the request keeps the margin
      local d, since = ready(c, app)
      near(math.max(0, 0.5 - since), d)
      -- an empty bucket: the next token in 1 s, the margin after it
      d, since = ready(c, app)
      near(1.5 - since, d)
      -- a bucket that has been full for longer than the margin: a burst goes at once but for
      -- its last request, which takes the last token and keeps the margin
      local fast = H.client { rate_limit = { margin = 0.2, Apps_show = { rate = 4, burst = 3 } } }
      app = "refilled-" .. core.now()
      for _ = 1, 3 do ready(fast, app) end
      fast:sleep(1.1)                                    -- full again after 0.75 s
      assert.is_true(ready(fast, app) < AT_ONCE)
      assert.is_true(ready(fast, app) < AT_ONCE)         -- its token came 0.25 s ago
      d, since = ready(fast, app)                         -- its token comes now
      near(math.max(0, 0.2 - since), d)
    end)

  it("leaves the token of a call that fails because its wait would pass its deadline", function()
    -- admission only: each call fails at once, and none may take a token the next call needs
    local c = H.client { rate_limit = { margin = 0, Apps_show = { rate = 1, burst = 1 } } }
    local app = "deadline-" .. core.now()
    local t0 = core.now()
    local first = c:_build("Apps_show", { app_name = app }) -- the one token: the next comes 1 s later
    for _ = 1, 5 do
      local res = c:_build("Apps_show", { app_name = app }, { deadline = 0.3 }):result()
      assert.equals("timeout", res.code)
    end
    local ready = c:_build("Apps_show", { app_name = app }):_ready_at() - t0
    assert.is_true(ready < 2, ready) -- 6 s when each failed call had kept a token
    -- the first went at once; held to here (collected unsent, it would give its token back)
    assert.is_true(first:_ready_at() - t0 < 0.5)
    c:close()
  end)

  it("gives back the token of a call cancelled before it went out", function()
    local c = H.client { rate_limit = { margin = 0, Apps_show = { rate = 0.5, burst = 1 } } }
    local app = "refund-" .. core.now()
    local t0 = core.now()
    c:_submit("Apps_show", { app_name = app }) -- the token: the next comes 2 s later
    local second = c:_submit("Apps_show", { app_name = app })
    second:cancel()
    -- the next call takes the token the cancelled one gave back: 2 s after the first, not 4
    local ready = c:_build("Apps_show", { app_name = app }):_ready_at() - t0
    assert.is_true(ready < 3, ready)
    c:close()
  end)

  it("takes a limit out of the way when its burst is as large as its rate, not by its rate alone", function()
    -- admission only, as above: how long after now each request may go
    local requests = {} -- each is held: one collected unsent would give its token back
    local function ready(c, app)
      requests[#requests + 1] = c:_build("Apps_show", { app_name = app })
      return requests[#requests]:_ready_at() - core.now()
    end
    local open = H.client { rate_limit = { margin = 0.5, Apps_show = { rate = 1e9, burst = 1e9 } } }
    local app = "open-" .. core.now()
    for i = 1, 50 do
      local d = ready(open, app)
      assert.is_true(d < 0.1, ("request %d waits %f s"):format(i, d))
    end
    -- the same rate with a small burst: each token came just before it is taken, so the margin
    -- holds back about every second request (README: rate limits, the margin)
    local fast = H.client { rate_limit = { margin = 0.5, Apps_show = { rate = 1e9, burst = 10 } } }
    app = "fast-" .. core.now()
    local held = 0
    for _ = 1, 4 do
      if ready(fast, app) > 0.3 then held = held + 1 end
    end
    assert.is_true(held >= 1, "no request kept the margin")
    open:close()
    fast:close()
  end)

  it("counts a request from when it goes: a burst that waited to connect pushes the next ones back #timing",
    function()
      -- the server counts a request when it arrives. A fresh client's first requests wait for
      -- the connection (here: a resolver that takes 0.3 s, an LD_PRELOAD; across a real network,
      -- the TCP and TLS handshakes), so the burst arrives that much later, and the requests
      -- after it must go that much later too, or they arrive before the server's bucket refilled.
      -- Under TLS (HTTP/2) the first requests after the burst start before it is sent (0.22 s):
      -- they wait on the one connection being opened, and must not go out with the burst
      local resolver = H.ROOT .. "/build/spec/slow-resolver.so"
      assert(io.open(resolver), resolver .. " is missing: `make build/spec/slow-resolver.so` (make test builds it)")
      H.config { rate_limits = { enabled = true, scale = 1 } } -- Machines_show: 5/s, burst 10
      local setup = H.client()
      local app = H.app(setup)
      local id = assert(setup.machines:create(app, { config = { image = "nginx" } })).id
      setup:close()
      local url = (H.TLS and H.url() or H.plain_url()):gsub("^(https?://)[^:/]+", "%1slow.fly.test")
      local out = H.child(([[
        local fly = require "fly"
        local c = assert(fly.new { token = %q, base_url = %q, rate_limit = { margin = 0.05 }, timeout = 10,
          insecure = true })
        local list = {}
        for i = 1, 13 do list[i] = i end -- ten at once, then one every 0.2 s
        local results = c:map(list, function() return c.machines:get(%q, %q) end, { concurrency = 13 })
        local ok = 0
        for i = 1, 13 do if results[i] then ok = ok + 1 end end
        print("ok " .. ok)
        c:close()
      ]]):format(H.TOKEN, url, app, id), {
        LD_PRELOAD = resolver, FLY_SPEC_SLOW_HOST = "slow.fly.test",
        FLY_SPEC_SLOW_MS = "300", ASAN_OPTIONS = (os.getenv("ASAN_OPTIONS") or "") .. ":verify_asan_link_order=0" })
      assert.matches("resolve slow%.fly%.test", out)
      assert.matches("ok 13\n", out)
      local stats = H.stats()
      assert.equals(13, stats.executed.Machines_show)
      assert.equals(0, stats.rate_limited)
    end)

  it("raises on bad rate_limit options", function()
    assert.has_error(function() H.client { rate_limit = { Machines_strat = { rate = 1, burst = 1 } } } end)
    assert.has_error(function() H.client { rate_limit = { Machines_start = 5 } } end)
    assert.has_error(function() H.client { rate_limit = { scale = 0 } } end)
    assert.has_error(function() H.client { rate_limit = { Machines_start = { rate = 0, burst = 1 } } } end)
    assert.has_error(function() H.client { rate_limit = { margin = 1.5 } } end,
      "fly: rate_limit.margin must be between 0 and 1 (seconds)")
    -- an override gives both numbers, finite (a missing one was taken as 1: a burst of 1 for
    -- `{ rate = 5 }`, tighter than Fly's)
    local both = "fly: rate_limit.Machines_start needs both rate > 0 and burst >= 1 (finite numbers)"
    for _, o in ipairs { { rate = 5 }, { burst = 5 }, {}, { rate = math.huge, burst = 3 },
      { rate = 1, burst = math.huge }, { rate = 0 / 0, burst = 3 }, { rate = 1e300, burst = 2, scale = 1e10 } } do
      local scale = o.scale
      o.scale = nil
      assert.has_error(function() H.client { rate_limit = { scale = scale, Machines_start = o } } end, both)
    end
    assert.has_error(function() H.client { rate_limit = { Machines_start = 5 } } end,
      "fly: rate_limit.Machines_start must be a table { rate = r, burst = b } (got number)")
    assert.has_error(function() H.client { rate_limit = { scale = math.huge } } end,
      "fly: rate_limit.scale must be a finite number > 0")
    assert.has_error(function() H.client { rate_limit = { Machines_patch_metadata = { rate = 1, burst = 1 } } } end,
      "fly: rate_limit: 'Machines_patch_metadata' counts as 'Machines_update_metadata': give the limit there")
  end)

  it("drops idle buckets so memory stays bounded", function()
    local c = H.client { rate_limit = { scale = 1000 } }
    H.config { rate_limits = { enabled = false } }
    local before = core.bucket_count() -- other specs' buckets still refilling
    for i = 1, 700 do c:call("Apps_show", { app_name = "idle-" .. i }) end
    -- each bucket is full again within milliseconds and kept a second more (the margin's
    -- reach); bucket_count sweeps first
    c:sleep(1.1)
    assert.is_true(core.bucket_count() < before + 100, core.bucket_count())
    -- a published limit's bucket holds more than a second of tokens: the margin never reaches
    -- past a full one, so it goes as soon as it is full (0.2 s after its call for
    -- Machines_show, not 1.2 s)
    local published = H.client { rate_limit = {} }
    for i = 1, 700 do published:call("Machines_show", { app_name = "idle", machine_id = "m" .. i }) end
    published:close()
    c:sleep(0.5)
    assert.is_true(core.bucket_count() < before + 100, core.bucket_count())
    c:close()
  end)

  it("keeps a bucket that has been full as long as the margin may still count from its last token",
    function()
      -- burst 1: the token taken next came when the bucket filled, 0.1 s after the first call,
      -- and the margin (1 s) counts from there: dropping the bucket once full would let the
      -- next call go at once
      local c = H.client { rate_limit = { margin = 1, Apps_show = { rate = 10, burst = 1 } } }
      local app = "kept-" .. core.now()
      local t0 = core.now()
      local first = c:_build("Apps_show", { app_name = app })
      c:sleep(0.3)
      core.bucket_count() -- sweeps
      local ready = c:_build("Apps_show", { app_name = app }):_ready_at() - t0
      assert.is_true(ready > 1, ready) -- 1.1 s after the first call
      -- the first went at once; held to here (collected unsent, it would give its token back)
    assert.is_true(first:_ready_at() - t0 < 0.5)
      c:close()
    end)

  it("keeps every bucket apart while thousands refill at once", function()
    -- one token per app, back in 1,000 s: each app's first call takes it, and its bucket is
    -- still refilling when its second call comes however slow the run (valgrind), so that one
    -- must find the same bucket among thousands (the table starts with 1,024 slots and
    -- doubles twice on the way). Those buckets stay for the rest of the process.
    local c = H.client { rate_limit = { Apps_show = { rate = 0.001, burst = 1 } } }
    H.config { rate_limits = { enabled = false } }
    local n = 2100
    for i = 1, n do
      local _, err = c:call("Apps_show", { app_name = "grow-" .. i })
      assert.equals("not_found", err.code) -- no such app: the call went out all the same
    end
    assert.is_true(core.bucket_count() >= n, core.bucket_count())
    -- requests the emulator received (a safe call may have been sent twice on a slow run:
    -- the count is taken here)
    local received = H.stats().requests.Apps_show
    assert.is_true(received >= n, received)
    for i = 1, n do
      local res, err = c:call("Apps_show", { app_name = "grow-" .. i }, { deadline = 1 })
      assert.is_nil(res)
      assert.equals("timeout", err.code) -- refused at once: the wait would pass the deadline
    end
    assert.equals(received, H.stats().requests.Apps_show) -- none of them went out
  end)
end)
