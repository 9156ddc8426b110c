-- fly.ngx.redis: the shared rate limiter on nginx cosockets (lua-resty-redis), in a real nginx
-- (spec/nginx/harness.lua) against a throwaway redis-server (spec/redis/start): the core's
-- script and key names, buckets shared across workers, NOSCRIPT, and Redis away.
local harness = require "nginx.harness"
local H = require "helper"

local server = require "redis.server" -- a throwaway redis-server
local start, stop, cli = server.start, server.stop, server.cli

-- Runs n admissions at once in light threads of one request; returns their ready times
-- (ngx.now() + wait), sorted, and whether the limiter was on Redis.
local FIRE = [[
  local function fire(url, n, key, rate, burst, opts)
    opts = opts or {}
    opts.url = url
    local lim = require("fly.ngx.redis").new(opts)
    local threads = {}
    for i = 1, n do
      threads[i] = ngx.thread.spawn(function()
        local wait = assert(lim:reserve(key, rate, burst))
        ngx.update_time()
        return ngx.now() + wait
      end)
    end
    local out = {}
    for i = 1, n do
      local ok, at = ngx.thread.wait(threads[i])
      assert(ok, at)
      out[i] = at
    end
    table.sort(out)
    return out, lim:shared()
  end
]]

-- The most tokens the times run a bucket of (rate, burst) into debt (0 when they conform).
local function excess(times, rate, burst)
  local tokens, last, worst = burst, times[1], 0
  for _, t in ipairs(times) do
    tokens = math.min(burst, tokens + (t - last) * rate)
    last = t
    tokens = tokens - 1
    if -tokens > worst then worst = -tokens end
  end
  return worst
end

describe("fly.ngx.redis #nginx", function()
  local n
  local function url() return "redis://127.0.0.1:" .. server.port end
  local function run(code) return n:run(FIRE .. code) end
  setup(function()
    start()
    n = harness.start { http = "lua_shared_dict fly_limits 1m;" }
  end)
  teardown(function()
    if n then n:stop() end
    stop()
  end)

  it("runs the core's script (the same SHA) on the core's key names", function()
    local sha = n:run [[ return require("fly.ngx.redis").sha() ]]
    -- the core loads its script when a client connects
    assert.matches("OK", cli("script flush"))
    local c = H.client { rate_limit = { redis = url() } }
    c.apps:get("no-such-app")
    c:close()
    assert.matches("1", cli("script exists " .. sha), "the core's script is not the same")
    local times, shared = run(("return fire(%q, 3, 'owner1|Machines_start|m-1', 20, 3)"):format(url()))
    assert.is_true(shared)
    assert.equals(3, #times)
    assert.matches("fly:rl:owner1:Machines_start:m%-1", cli("--scan --pattern 'fly:rl:owner1:*'"))
  end)

  it("opens no Redis connection of the core's own for clients made inside nginx", function()
    -- the transport inside nginx admits through fly.ngx.redis: a connection from the core
    -- would sit unused for each client, for each request that makes one
    local function connected() return tonumber(cli("info clients"):match("connected_clients:(%d+)")) end
    local before = connected()
    assert.is_true(n:run(([[
      local keep = {}
      for i = 1, 5 do
        keep[i] = require("fly").new { token = "t", base_url = "http://127.0.0.1:9",
          rate_limit = { redis = %q } }
      end
      package.loaded["spec.kept_clients"] = keep -- alive after this request
      ngx.sleep(0.2)
      return true
    ]]):format(url())))
    assert.equals(before, connected())
  end)

  it("spaces concurrent admissions as one bucket would", function()
    local key = "owner2|Machines_start|m-" .. os.time()
    local all, shared = run(("return fire(%q, 20, %q, 20, 3)"):format(url(), key))
    assert.is_true(shared)
    assert.equals(20, #all)
    -- 3 at once, then one every 50 ms: 17 more take 0.85 s
    assert.is_true(all[20] - all[1] >= 0.85 - 0.03, "too fast: " .. (all[20] - all[1]))
    assert.is_true(excess(all, 20, 3) < 0.6, "more than the bucket allows: " .. excess(all, 20, 3))
  end)

  it("takes the retry's token with the penalty: a 429 and its retry cost one round trip", function()
    local waits = n:run(([[
      local lim = require("fly.ngx.redis").new { url = %q }
      local key = "owner3|Machines_start|m-" .. ngx.now()
      local w = {}
      for i = 1, 3 do w[i] = lim:reserve(key, 20, 3) end
      lim:penalize(key, 20, 3)
      w[4] = lim:reserve(key, 20, 3) -- the retry
      w[5] = lim:reserve(key, 20, 3) -- the next one: one interval later
      return w
    ]]):format(url()))
    assert.equals(0, waits[1])
    -- an empty bucket: the retry waits one interval, the next one two (not three: the retry
    -- took one token, not two)
    assert.is_true(math.abs(waits[4] - 0.05) < 0.02, "retry waits " .. waits[4])
    assert.is_true(math.abs(waits[5] - 0.10) < 0.02, "next waits " .. waits[5])
  end)

  it("takes no token in Redis for a request its wait would push past its deadline", function()
    local scope = "deadline-" .. os.time() .. "-" .. math.random(1e6)
    local code = ([[
      local lim = require("fly.ngx.redis").new { url = %q }
      local waits = {}
      for i = 1, %d do waits[i] = lim:reserve("fly-spec|Apps_show|%s", 1, 1, 0, 0.3) end
      return waits, lim:shared()
    ]]):format(url(), 1, scope)
    local first, shared = run(code) -- the one token: the next comes 1 s later
    assert.is_true(shared)
    assert.is_true(first[1] < 0.3)
    local key = "fly:rl:fly-spec:Apps_show:" .. scope
    local tat = cli("get " .. key):match("(%d+)")
    assert.is_string(tat)
    local waits = run(code:gsub("for i = 1, 1 do", "for i = 1, 5 do"))
    for i = 1, 5 do assert.is_true(waits[i] > 0.3, waits[i]) end -- each would wait about 1 s
    assert.equals(tat, cli("get " .. key):match("(%d+)")) -- 5 s later when each had kept a token
  end)

  it("after a 429 empties the bucket, but takes no token for a retry that cannot go in time", function()
    local scope = "penalty-" .. os.time() .. "-" .. math.random(1e6)
    local waits = run(([[
      local lim = require("fly.ngx.redis").new { url = %q }
      local key = "fly-spec|Apps_show|%s"
      lim:penalize(key, 1, 3, 0, 0.3) -- the retry may wait 0.3 s: the bucket is 3 s behind
      return { lim:reserve(key, 1, 3, 0, 0.3) } -- the retry itself: refused, no token either
    ]]):format(url(), scope))
    assert.is_true(waits[1] > 0.3, waits[1])
    local tat = tonumber(cli("get fly:rl:fly-spec:Apps_show:" .. scope):match("(%d+)"))
    local s, us = cli("time"):match("(%d+)%s+(%d+)")
    local ahead = (tat - (tonumber(s) * 1e6 + tonumber(us))) / 1e6
    assert.is_true(ahead > 2 and ahead < 3.5, ahead) -- the penalty's 3 s; 4 s with a token taken
  end)

  it("gives back the token of a request that never went out, in Redis and the fallback", function()
    local scope = "refund-" .. os.time() .. "-" .. math.random(1e6)
    local waits = run(([[
      local lim = require("fly.ngx.redis").new { url = %q }
      local key = "fly-spec|Apps_show|%s"
      local waits = { lim:reserve(key, 1, 3), lim:reserve(key, 1, 3) } -- two of three tokens
      lim:refund(key, 1, 3) -- the second's request was cancelled
      lim:refund(key, 1, 3) -- and then the first's
      waits[3] = lim:reserve(key, 1, 3)
      return waits
    ]]):format(url(), scope))
    assert.same({ 0, 0, 0 }, waits)
    local tat = tonumber(cli("get fly:rl:fly-spec:Apps_show:" .. scope):match("(%d+)"))
    local s, us = cli("time"):match("(%d+)%s+(%d+)")
    local ahead = (tat - (tonumber(s) * 1e6 + tonumber(us))) / 1e6
    assert.is_true(ahead > 0.5 and ahead < 1.5, ahead) -- one token out: 3 s when none came back
  end)

  it("reloads the script after NOSCRIPT (SCRIPT FLUSH) and stays on Redis", function()
    assert.matches("OK", cli("script flush"))
    local times, shared = run(("return fire(%q, 4, 'owner4|Machines_start|m-1', 20, 3)"):format(url()))
    assert.is_true(shared)
    assert.equals(4, #times)
    assert.matches("1", cli("script exists " .. n:run [[ return require("fly.ngx.redis").sha() ]]))
    assert.is_nil(n:error_log():find("unavailable", 1, true))
  end)

  it("falls back to the shared dict when Redis stops, says so once, and comes back", function()
    local code = ([[
      local lim = require("fly.ngx.redis").new { url = %q, retry = 0.2 }
      local w = {}
      for i = 1, 6 do w[i] = assert(lim:reserve("owner5|Machines_start|m-1", 20, 3)) end
      return w, lim:shared()
    ]]):format(url())
    stop(true)
    local waits, shared = n:run(code)
    assert.is_false(shared)
    assert.equals(6, #waits)
    -- the fallback still paces: the 6th waits for 3 refills
    assert.is_true(waits[6] >= 0.15 - 0.02, "the fallback did not pace: " .. waits[6])
    start(server.port, server.dir)
    os.execute("sleep 0.3")
    local back
    for _ = 1, 20 do -- each worker finds it back on its own
      back = select(2, n:run(code))
      if back then break end
      os.execute("sleep 0.1")
    end
    assert.is_true(back)
    local log = n:error_log()
    local _, count = log:gsub("is unavailable", "")
    assert.is_true(count >= 1 and count <= 2, log) -- once per worker at most
    assert.is_nil(log:find("password", 1, true))
  end)

  it("goes on from where this host stood when Redis is lost: the fallback counted every request", function()
    local key = "owner6|Machines_start|m-" .. os.time()
    local code = ([[
      local lim = require("fly.ngx.redis").new { url = %q, retry = 30 }
      local w = {}
      for i = 1, %%d do w[i] = assert(lim:reserve(%q, 0.1, 3)) end -- one token every 10 s
      return w, lim:shared()
    ]]):format(url(), key)
    local waits, shared = n:run(code:format(3)) -- the burst, through Redis
    assert.is_true(shared)
    assert.equals(0, waits[3])
    stop(true)
    waits, shared = n:run(code:format(1))
    assert.is_false(shared)
    -- the fallback's bucket is as empty as Redis's: the next token comes 10 s after the burst
    assert.is_true(waits[1] > 5, "the fallback let another burst through: " .. waits[1])
    start(server.port, server.dir)
    os.execute("sleep 0.3")
  end)

  it("is what a client inside nginx with rate_limit.redis admits through, on the libcurl client's keys", function()
    local emu = H.plain_url()
    local inside = harness.start {
      main = ("env FLY_API_TOKEN=%s; env FLY_API_HOSTNAME=%s;"):format(H.TOKEN, emu),
      http = "lua_shared_dict fly_limits 1m;",
    }
    local c = H.client { base_url = emu }
    local app = H.app(c)
    c:close()
    local ok, err = pcall(function()
      local got = inside:run(([[
        local fly = require "fly"
        local c = assert(fly.new { rate_limit = { redis = %q } })
        return (assert(c.apps:get(%q))).name
      ]]):format(url(), app))
      assert.equals(app, got)
    end)
    inside:stop()
    assert(ok, err)
    local keys = cli("--scan --pattern 'fly:rl:*:Apps_show:" .. app .. "'")
    assert.matches("fly:rl:%x+:Apps_show:" .. app:gsub("%-", "%%-"), keys)
    -- a libcurl client with the same base URL and token draws from that very key
    local outside = H.client { base_url = emu, rate_limit = { redis = url() } }
    assert(outside.apps:get(app))
    outside:close()
    assert.equals(keys, cli("--scan --pattern 'fly:rl:*:Apps_show:" .. app .. "'"))
  end)

  it("rejects bad URLs", function()
    local ok, err = pcall(n.run, n, [[ return require("fly.ngx.redis").new { url = "redis://:hunter2@h:x" } ]])
    assert.is_false(ok)
    assert.matches("redis URL", err)
    assert.is_nil(err:find("hunter2", 1, true))
    ok, err = pcall(n.run, n, [[ return require("fly.ngx.redis").new { url = "http://h" } ]])
    assert.is_false(ok)
    assert.matches("redis URL", err)
  end)
end)
