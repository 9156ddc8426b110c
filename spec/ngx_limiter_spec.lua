-- fly.ngx.limiter: rate-limit buckets shared by nginx workers through lua_shared_dict
-- fly_limits, with the core's semantics; per-worker buckets and one warning without it.
local harness = require "nginx.harness"

-- A second port with reuseport, so that the kernel spreads connections over both workers.
local ADMIT = [[
  lua_shared_dict fly_limits 1m;
  server {
    listen 127.0.0.1:@TLS_PORT@ reuseport;
    location = /admit {
      content_by_lua_block {
        -- the limiter's own clock, recorded: "ready at" is the time it reserved at plus the
        -- wait (a clock read afterwards would add however long this worker was held up)
        local at
        local lim = require("fly.ngx.limiter").new { now = function()
          ngx.update_time()
          at = ngx.now()
          return at
        end }
        local wait = lim:reserve(ngx.var.arg_key, tonumber(ngx.var.arg_rate), tonumber(ngx.var.arg_burst))
        ngx.say(ngx.worker.pid(), " ", string.format("%.6f", at + wait), " ", wait)
      }
    }
  }
]]

-- Runs n admissions at once, each from its own connection; returns { {pid, ready_at, wait} }.
local FIRE = [[
  local http = require "fly.ngx.http"
  local function fire(n, key, rate, burst)
    local threads = {}
    for i = 1, n do
      threads[i] = ngx.thread.spawn(function()
        local res = assert(http.request({ method = "GET", scheme = "http", host = "127.0.0.1",
          port = PORT, target = ("/admit?key=%s&rate=%s&burst=%s"):format(key, rate, burst), safe = false }))
        local pid, at, wait = res.body:match("^(%d+) (%S+) (%S+)")
        return { tonumber(pid), tonumber(at), tonumber(wait) }
      end)
    end
    local out = {}
    for i = 1, n do
      local ok, r = ngx.thread.wait(threads[i])
      assert(ok, r)
      out[i] = r
    end
    return out
  end
]]

describe("fly.ngx.limiter #nginx", function()
  local n
  setup(function() n = harness.start { http = ADMIT } end)
  teardown(function() if n then n:stop() end end)
  local function run(code) return n:run(FIRE:gsub("PORT", tostring(n.tls_port)) .. code) end

  it("never lets concurrent admissions from two workers exceed rate and burst", function()
    local rate, burst, count = 5, 10, 60
    local out = run(("return fire(%d, 'machine-1', %d, %d)"):format(count, rate, burst))
    assert.equal(count, #out)
    local pids, times, immediate = {}, {}, 0
    for _, r in ipairs(out) do
      pids[r[1]] = true
      times[#times + 1] = r[2]
      if r[3] == 0 then immediate = immediate + 1 end
    end
    local workers = 0
    for _ in pairs(pids) do workers = workers + 1 end
    assert.equal(2, workers, "both workers admitted requests")
    assert.is_true(immediate <= burst)
    table.sort(times)
    -- any k admissions within a window of w seconds: k <= burst + rate * w
    for a = 1, #times do
      for c = a + 1, #times do
        assert.is_true(c - a + 1 <= burst + rate * (times[c] - times[a]) + 1e-3,
          ("%d admissions within %.4f s"):format(c - a + 1, times[c] - times[a]))
      end
    end
    -- and it is not stricter than needed: the last waits about (count - burst) / rate
    assert.is_true(times[#times] - times[1] < (count - burst) / rate + 1)
  end)

  it("matches the core's bucket arithmetic, penalizes, and lets idle keys expire", function()
    local waits, after_penalty, gone = n:run [[
      local t = 1000
      local lim = require("fly.ngx.limiter").new { now = function() return t end }
      local waits = {}
      for i = 1, 5 do waits[i] = lim:reserve("k", 2, 3) end
      t = t + 1 -- two tokens back: the bucket is at -2 + 2 = 0
      local after = { lim:penalize("k", 2, 3) and lim:reserve("k", 2, 3) }
      -- with a margin: a request keeps it from the moment its token came (long ago for a
      -- bucket full since made, 1 s ago for the next, now for the third)
      for i = 6, 9 do waits[i] = lim:reserve("edge", 1, 3, 0.05) end
      local real = require("fly.ngx.limiter").new()
      local dict = ngx.shared.fly_limits
      real:reserve("idle", 100, 1)
      real:reserve("idle-wide", 5, 10)
      local stored = dict:get("idle") ~= nil and dict:get("idle-wide") ~= nil
      -- "idle-wide" is full again after 0.2 s, and holds more than a second of tokens: no
      -- margin reaches back to its oldest one, so it goes then; "idle" (burst 1) is full again
      -- after 10 ms and kept a second more, for the margin of a request taking its token
      ngx.sleep(0.4)
      local wide_gone, narrow_kept = dict:get("idle-wide") == nil, dict:get("idle") ~= nil
      ngx.sleep(0.8)
      return waits, after, stored and wide_gone and narrow_kept and dict:get("idle") == nil
    ]]
    for i, want in ipairs { 0, 0, 0, 0.5, 1, 0, 0, 0.05, 1.05 } do
      assert.is_true(math.abs(waits[i] - want) < 1e-9, ("wait %d: %.17g, not %g"):format(i, waits[i], want))
    end
    -- penalized at 0 tokens: empty (the burst's worth behind), so the next waits burst / rate
    assert.same({ 0.5 }, after_penalty)
    assert.is_true(gone)
  end)

  it("takes no token for a request its wait would push past its deadline", function()
    local waits, after = n:run [[
      local t = 2000
      local lim = require("fly.ngx.limiter").new { now = function() return t end }
      local key = "deadline-" .. ngx.now()
      lim:reserve(key, 1, 1) -- the one token: the next comes 1 s later
      local waits = {}
      for i = 1, 5 do waits[i] = lim:reserve(key, 1, 1, 0, 0.3) end -- each would wait 1 s
      t = t + 1
      return waits, lim:reserve(key, 1, 1, 0, 0.3)
    ]]
    for i = 1, 5 do assert.equals(1, waits[i]) end
    assert.equals(0, after) -- 5 s when each refused request had kept a token
  end)

  it("gives back the token of a request that never went out", function()
    local waits = n:run [[
      local t = 3000
      local lim = require("fly.ngx.limiter").new { now = function() return t end }
      local key = "refund-" .. ngx.now()
      local waits = { lim:reserve(key, 1, 1) } -- the one token: the next comes 1 s later
      lim:refund(key, 1, 1) -- its request was cancelled: the token is there again
      waits[2] = lim:reserve(key, 1, 1)
      waits[3] = lim:reserve(key, 1, 1) -- the next one waits for the refill
      lim:refund(key, 1, 1)
      lim:refund(key, 1, 1) -- never past full
      waits[4] = lim:reserve(key, 1, 1)
      waits[5] = lim:reserve(key, 1, 1)
      return waits
    ]]
    assert.same({ 0, 0, 1, 0, 1 }, waits)
  end)

  it("gives back the tokens of calls whose connection could not be made", function()
    -- 3 calls of 3 attempts each to a port nobody listens on, one token a second: each
    -- attempt takes a token and gives it back, so the bucket is full at the end (9 s behind
    -- when each kept its token, and the calls would take as long)
    local full, codes = n:run [[
      local fly = require "fly"
      local client = assert(fly.new { token = "refund-token", base_url = "http://127.0.0.1:1",
        retry = { attempts = 3, base = 0.01, cap = 0.02 },
        rate_limit = { margin = 0, Apps_show = { rate = 1, burst = 1 } } })
      local codes = {}
      for i = 1, 3 do
        local _, err = client.apps:get("refund-app")
        codes[i] = err.code
      end
      local dict, full = ngx.shared.fly_limits, nil
      ngx.update_time()
      for _, k in ipairs(dict:get_keys(0)) do
        if k:find("|Apps_show|refund-app", 1, true) and not k:find("|lock", 1, true) then
          local tat = dict:get(k) -- gone: full for long
          full = tat == nil or tat <= ngx.now() + 0.5 -- full now: not a token behind, nor 9
        end
      end
      return full, codes
    ]]
    assert.same({ "connect", "connect", "connect" }, codes)
    assert.is_true(full)
  end)

  it("waits out a lock left by a dead worker", function()
    local wait, elapsed = n:run [[
      ngx.shared.fly_limits:add("stuck|lock", true, 0.2)
      local t0 = ngx.now()
      local wait = require("fly.ngx.limiter").new():reserve("stuck", 1, 1)
      ngx.update_time()
      return wait, ngx.now() - t0
    ]]
    assert.equal(0, wait)
    assert.is_true(elapsed >= 0.15 and elapsed < 2)
  end)
end)

describe("fly.ngx.limiter without lua_shared_dict fly_limits #nginx", function()
  local n
  setup(function() n = harness.start { workers = 1 } end)
  teardown(function() if n then n:stop() end end)

  it("keeps per-worker buckets and warns once", function()
    local shared, waits = n:run [[
      local limiter = require "fly.ngx.limiter"
      local a, b = limiter.new(), limiter.new()
      -- a request that may wait only 0.3 s takes no token (the fourth, 1 s, not 2)
      return a:shared(), { a:reserve("k", 1, 2), b:reserve("k", 1, 2), a:reserve("k", 1, 2),
        a:reserve("d", 1, 1), a:reserve("d", 1, 1, 0, 0.3), a:reserve("d", 1, 1) }
    ]]
    assert.is_false(shared)
    assert.equal(0, waits[1])
    assert.is_true(waits[3] > 0.9)
    assert.is_true(waits[5] > 0.9, waits[5])
    assert.is_true(waits[6] > 0.9 and waits[6] < 1.5, waits[6])
    local _, count = n:error_log():gsub("no lua_shared_dict fly_limits", "")
    assert.equal(1, count)
  end)
end)

describe("fly.ngx.limiter on a full lua_shared_dict #nginx", function()
  local n
  setup(function() n = harness.start { workers = 1, http = "lua_shared_dict fly_small 16k;" } end)
  teardown(function() if n then n:stop() end end)

  it("says once in the error log that nginx dropped buckets to make room", function()
    local shared = n:run [[
      local lim = require("fly.ngx.limiter").new { dict = "fly_small" }
      for i = 1, 2000 do lim:reserve("k" .. i, 0.01, 1) end -- each still refilling for 100 s
      return lim:shared()
    ]]
    assert.is_true(shared)
    local _, count = n:error_log():gsub("lua_shared_dict fly_small is full", "")
    assert.equal(1, count)
  end)
end)
