-- The shared rate limiter (csrc/redis.c) on its own, through the driver
-- (spec/redis/driver.c) against a throwaway redis-server: several OS
-- processes draw from one bucket, and Redis away, slow or wrong never stops a
-- request.
local H = require "helper"
local socket = require "socket"

local DRIVER = os.getenv("FLY_SPEC_REDIS_DRIVER") or (H.ROOT .. "/build/spec/redis-driver")

-- What cmd printed and its exit status (read from the shell: a pipe's close does not tell it
-- on Lua 5.1 and LuaJIT).
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. "\n); printf '\\nexit=%d' $?"))
  local out = p:read("*a")
  p:close()
  local text, code = out:match("^(.*)\nexit=(%d+)$")
  return text or out, tonumber(code) or -1
end

local server = require "redis.server" -- a throwaway redis-server
local start, stop, cli = server.start, server.stop, server.cli

local function url() return "redis://127.0.0.1:" .. server.port end

local n = 0
local function fresh(prefix)
  n = n + 1
  return ("%s-%d-%d"):format(prefix, os.time() % 100000, n)
end

-- The driver's output as { grants = { {n, at, source, latency} ... }, warnings, stats, key }.
local function parse(out)
  local r = { grants = {}, warnings = {}, out = out }
  for line in out:gmatch("[^\n]+") do
    local g, at, src, lat = line:match("^grant (%d+) (%S+) (%a+) (%S+)$")
    if g then
      r.grants[#r.grants + 1] = { n = tonumber(g), at = tonumber(at), source = src, latency = tonumber(lat) }
    elseif line:find("^warning ") then
      r.warnings[#r.warnings + 1] = line:sub(9)
    elseif line:find("^stats ") then
      r.stats = {}
      for k, v in line:gmatch("(%w+)=(%d+)") do r.stats[k] = tonumber(v) end
    elseif line:find("^key ") then
      r.key = line:sub(5)
    end
  end
  return r
end

local function run(args)
  local out, code = sh(DRIVER .. " " .. args .. " 2>&1")
  local r = parse(out)
  r.code = code
  return r
end

-- Starts the driver in the background (`env`: variables for it, "NAME=value ..."); returns
-- a handle to wait on.
local function spawn(args, env)
  local file = os.tmpname()
  -- nothing of the background job may hold busted's output open
  os.execute(("(env %s %s %s > %s 2>&1; echo \"exit $?\" >> %s) </dev/null >/dev/null 2>&1 &"):format(
    env or "", DRIVER, args, file, file))
  return { file = file }
end

local function touch(path)
  assert(io.open(path, "w")):close()
end

local function read(h)
  local f = io.open(h.file)
  local s = f and f:read("*a") or ""
  if f then f:close() end
  return s
end

-- Waits (generously) until the handle's output matches pattern.
local function wait_for(h, pattern, seconds)
  local deadline = socket.gettime() + (seconds or 30)
  while not read(h):find(pattern) do
    assert(socket.gettime() < deadline, "timed out waiting for " .. pattern .. " in:\n" .. read(h))
    socket.sleep(0.02)
  end
end

local function finish(h)
  wait_for(h, "exit %d+\n")
  local out = read(h)
  os.remove(h.file)
  local r = parse(out)
  r.code = tonumber(out:match("exit (%d+)\n"))
  return r
end

local function all_grants(results)
  local g = {}
  for _, r in ipairs(results) do
    for _, x in ipairs(r.grants) do g[#g + 1] = x end
  end
  table.sort(g, function(a, b) return a.at < b.at end)
  return g
end

-- The grants, in time order, as a token bucket (rate, burst) would let them
-- go: the deficit they run up in tokens (0 when they conform). Answers travel
-- back from Redis with some latency, so callers allow a fraction of a token.
local function excess(grants, rate, burst)
  local tokens, last, worst = burst, grants[1].at, 0
  for _, g in ipairs(grants) do
    tokens = math.min(burst, tokens + (g.at - last) * rate)
    last = g.at
    tokens = tokens - 1
    if -tokens > worst then worst = -tokens end
  end
  return worst
end

-- #driver: what runs here is the driver, a C program built apart from the core (plain, or
-- under ASan by `make check-redis-asan`); the TLS, sanitizer and valgrind runs of the
-- suite, whose build of the core it never loads, leave it out.
describe("the shared rate limiter (Redis) #driver", function()
  setup(function() start() end)
  teardown(function() stop() end)

  it("spaces the grants of several processes on one bucket as one bucket would", function()
    local key = fresh("shared")
    local hs = {}
    for i = 1, 3 do hs[i] = spawn(("%s %s 20 3 6"):format(url(), key)) end
    local rs = {}
    for i = 1, 3 do
      rs[i] = finish(hs[i])
      assert.equals(0, rs[i].code, rs[i].out)
      assert.equals(6, #rs[i].grants)
      assert.same({}, rs[i].warnings)
      assert.equals(6, rs[i].stats.granted)
    end
    local g = all_grants(rs)
    assert.equals(18, #g)
    for _, x in ipairs(g) do assert.equals("redis", x.source) end
    -- 3 at once, then one every 50 ms: 15 more take 0.75 s
    assert.is_true(g[18].at - g[1].at >= 0.75 - 0.03, "too fast: " .. (g[18].at - g[1].at))
    assert.is_true(g[18].at - g[1].at < 10, "far too slow")
    assert.is_true(excess(g, 20, 3) < 0.6, "more than the bucket allows: " .. excess(g, 20, 3))
  end)

  it("keeps three processes starting one machine within the emulator's limits: zero 429s", function()
    H.reset()
    local c = H.client()
    local app = H.app(c)
    local m1 = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local m2 = assert(c.machines:create(app, { config = { image = "nginx" } }))
    c:close()
    -- Machines_start is 1/s with a burst of 3; the scale makes it 20/s
    H.config { rate_limits = { enabled = true, scale = 20 } }
    local function starts(machine, redis)
      -- the driver speaks plain HTTP: the emulator's plain listener
      local start_url = ("%s/v1/apps/%s/machines/%s/start"):format(H.plain_url(), app, machine.id)
      local before = H.stats().rate_limited
      local hs, rs = {}, {}
      local key = fresh("start")
      for i = 1, 3 do hs[i] = spawn(("--http %s %s %s %s 20 3 6"):format(start_url, H.TOKEN, redis, key)) end
      local t0 = socket.gettime()
      local statuses = 0
      for i = 1, 3 do
        rs[i] = finish(hs[i])
        assert.equals(0, rs[i].code, rs[i].out)
        for _ in rs[i].out:gmatch("http %d+ %d+") do statuses = statuses + 1 end
      end
      assert.equals(18, statuses)
      return H.stats().rate_limited - before, socket.gettime() - t0, all_grants(rs)
    end
    local ok, err = pcall(function()
      -- every process pacing itself alone: together they exceed the limit
      assert.is_true(starts(m1, "redis://127.0.0.1:1") > 0, "the emulator should have answered 429s")
      -- through one Redis: none, and close to the 0.75 s minimum
      local limited, took, g = starts(m2, url())
      assert.equals(0, limited)
      for _, x in ipairs(g) do assert.equals("redis", x.source) end
      assert.is_true(g[18].at - g[1].at >= 0.75 - 0.03)
      assert.is_true(took < 10, "took " .. took .. " s")
    end)
    H.reset()
    assert(ok, err)
  end)

  it("reserves at once: admissions sent together queue behind each other", function()
    local key = fresh("batch")
    local a, b = spawn(("--batch %s %s 20 2 8"):format(url(), key)), spawn(("--batch %s %s 20 2 8"):format(url(), key))
    local ra, rb = finish(a), finish(b)
    assert.equals(0, ra.code, ra.out)
    assert.equals(0, rb.code, rb.out)
    local g = all_grants { ra, rb }
    assert.equals(16, #g)
    for _, x in ipairs(g) do assert.equals("redis", x.source) end
    assert.is_true(g[16].at - g[1].at >= 14 / 20 - 0.03, "too fast: " .. (g[16].at - g[1].at))
    assert.is_true(excess(g, 20, 2) < 0.6)
  end)

  it("can be freed with admissions in flight", function()
    local r = run(("--batch --abandon %s %s 20 3 50"):format(url(), fresh("abandoned")))
    assert.equals(0, r.code, r.out)
    assert.matches("abandoned", r.out)
    r = run(("--batch --abandon %s %s 20 3 50"):format("redis://127.0.0.1:1", fresh("abandoned")))
    assert.equals(0, r.code, r.out)
  end)

  it("applies the limit it is given (overrides and scale are inputs)", function()
    local r = run(("%s %s 10 1 5"):format(url(), fresh("slow")))
    assert.equals(0, r.code, r.out)
    assert.is_true(r.grants[5].at - r.grants[1].at >= 0.4 - 0.03)
    assert.is_true(excess(r.grants, 10, 1) < 0.6)
    -- a bigger burst lets that many go at once
    r = run(("%s %s 1 5 5"):format(url(), fresh("burst")))
    assert.equals(0, r.code, r.out)
    assert.is_true(r.grants[5].at - r.grants[1].at < 0.5)
  end)

  it("empties the bucket after a 429 (penalize), as the local buckets do", function()
    local key = fresh("penalized")
    local r = run(("--penalize 1 %s %s 20 3 4"):format(url(), key))
    assert.equals(0, r.code, r.out)
    for i = 2, 4 do
      assert.is_true(r.grants[i].at - r.grants[i - 1].at >= 0.05 - 0.01, "no burst after a 429")
    end
  end)

  it("agrees with the local buckets (ratelimit.c) on every ready time, 429s included", function()
    -- requests come faster than the rate on average, so most of them wait
    local r = run(("--compare --jitter 0.05 --penalize 5 %s %s 20 2 30"):format(url(), fresh("compare")))
    assert.equals(0, r.code, r.out)
    local compared = 0
    for d in r.out:gmatch("compare %d+ (%S+)") do
      compared = compared + 1
      -- Redis reads its clock a round trip earlier than the local bucket does
      assert.is_true(math.abs(tonumber(d)) < 0.015, "Redis and the local bucket differ by " .. d .. " s")
    end
    assert.equals(30, compared)
    assert.is_true(r.grants[30].at - r.grants[1].at >= (30 - 2) / 20 - 0.03)
  end)

  it("names buckets from a hash of base URL and token, never the token, and lets idle ones expire", function()
    local token = "FlyV1 fm2_secret-token-" .. fresh("t")
    local r = run(("--owner http://api.example %q %s %s 20 3 5"):format(token, url(), "app-1"))
    assert.equals(0, r.code, r.out)
    assert.matches("^fly:rl:%x+:machine_start:app%-1$", r.key)
    assert.equals(32, #r.key:match("^fly:rl:(%x+)"))
    local keys = cli("--scan")
    assert.is_nil(keys:find("secret", 1, true))
    assert.is_nil(keys:find("FlyV1", 1, true))
    -- the key lives until its bucket would be full again, and a second more
    local ttl = tonumber(cli("pttl " .. r.key))
    assert.is_true(ttl == -2 or (ttl > 0 and ttl <= 1250), "ttl " .. tostring(ttl))
    -- a bucket that holds more than a second of tokens (as every published limit does) is
    -- let go as soon as it is full: no margin reaches back to its oldest token
    local wide = run(("--owner http://api.example %q %s app-2 5 10 1"):format(token, url()))
    assert.equals(0, wide.code, wide.out)
    local wide_ttl = tonumber(cli("pttl " .. wide.key))
    assert.is_true(wide_ttl == -2 or (wide_ttl > 0 and wide_ttl <= 250), "ttl " .. tostring(wide_ttl))
    socket.sleep(1.3)
    assert.equals("0", cli("exists " .. r.key):match("%d+"))
    -- same owner, same key; another token, another key
    local again = run(("--owner http://api.example %q %s app-1 20 3 1"):format(token, url()))
    assert.equals(r.key, again.key)
    local other = run(("--owner http://api.example %q %s app-1 20 3 1"):format(token .. "x", url()))
    assert.is_not.equals(r.key, other.key)
  end)

  it("reloads the script after NOSCRIPT (SCRIPT FLUSH mid-run)", function()
    local go = os.tmpname()
    os.remove(go)
    local h = spawn(("--pause 3 %s %s %s 20 3 8"):format(go, url(), fresh("flush")))
    wait_for(h, "paused")
    assert.matches("OK", cli("script flush"))
    touch(go)
    local r = finish(h)
    os.remove(go)
    assert.equals(0, r.code, r.out)
    assert.equals(8, #r.grants)
    for _, x in ipairs(r.grants) do assert.equals("redis", x.source) end
    assert.equals(1, r.stats.reloads)
    assert.equals(0, r.stats["local"])
    assert.same({}, r.warnings)
  end)

  it("reloads the script once per admission in flight after NOSCRIPT", function()
    local go = os.tmpname()
    os.remove(go)
    local h = spawn(("--batch --pause 0 %s %s %s 20 3 6"):format(go, url(), fresh("flush-batch")))
    wait_for(h, "paused")
    socket.sleep(0.1) -- connected, the script loaded
    assert.matches("OK", cli("script flush"))
    touch(go)
    local r = finish(h)
    os.remove(go)
    assert.equals(0, r.code, r.out)
    for _, x in ipairs(r.grants) do assert.equals("redis", x.source) end
    assert.equals(6, r.stats.reloads)
    assert.is_true(excess(r.grants, 20, 3) < 0.6)
  end)

  it("uses a Unix socket and a database number", function()
    local key = fresh("unix")
    local r = run(("'unix://%s/redis.sock?db=3' %s 20 3 4"):format(server.dir, key))
    assert.equals(0, r.code, r.out)
    for _, x in ipairs(r.grants) do assert.equals("redis", x.source) end
    assert.equals(4, r.stats.granted)
    local url_db = run(("%s/5 %s 1 1 1"):format(url(), key))
    assert.equals("redis", url_db.grants[1].source)
    assert.matches("^%d+", cli("-n 5 pttl " .. key))
    assert.is_true(tonumber(cli("-n 5 pttl " .. key)) > 0)
  end)

  it("falls back to the local bucket for a wrong answer (a key of another type), and says so", function()
    local key = fresh("wrongtype")
    cli("hset " .. key .. " a b")
    local r = run(("%s %s 20 3 5"):format(url(), key))
    assert.equals(0, r.code, r.out)
    assert.equals(5, #r.grants)
    for _, x in ipairs(r.grants) do assert.equals("local", x.source) end
    assert.equals(1, #r.warnings)
    assert.matches("unavailable .*WRONGTYPE", r.warnings[1])
    assert.is_true(excess(r.grants, 20, 3) < 0.6) -- the local bucket still paces
    cli("del " .. key)
  end)

  it("falls back when authentication fails, and authenticates with the URL's password", function()
    assert.matches("OK", cli("config set requirepass s3cret-pw"))
    local ok, err = pcall(function()
      local r = run(("%s %s 20 3 2"):format(url(), fresh("noauth")))
      assert.equals(0, r.code, r.out)
      for _, x in ipairs(r.grants) do assert.equals("local", x.source) end
      assert.equals(1, #r.warnings)
      assert.matches("unavailable", r.warnings[1])
      r = run(("redis://:wrong%%40pw@127.0.0.1:%s %s 20 3 2"):format(server.port, fresh("badauth")))
      assert.equals(0, r.code, r.out)
      assert.equals("local", r.grants[1].source)
      assert.is_nil(r.out:find("wrong@pw", 1, true))
      r = run(("redis://:s3cret%%2Dpw@127.0.0.1:%s %s 20 3 2"):format(server.port, fresh("auth")))
      assert.equals(0, r.code, r.out)
      for _, x in ipairs(r.grants) do assert.equals("redis", x.source) end
      assert.same({}, r.warnings)
      assert.is_nil(r.out:find("s3cret", 1, true))
    end)
    sh(("redis-cli -h 127.0.0.1 -p %s -a s3cret-pw --no-auth-warning config set requirepass ''"):format(server.port))
    assert(ok, err)
  end)

  it("falls back after a short timeout when Redis does not answer, and comes back", function()
    local pid = assert(io.open(server.dir .. "/redis.pid")):read("*l")
    local go = os.tmpname()
    os.remove(go)
    local h = spawn(("--retry 0.2 --pause 3 %s %s %s 20 3 12"):format(go, url(), fresh("hung")))
    wait_for(h, "paused")
    os.execute("kill -STOP " .. pid)
    local t0 = socket.gettime()
    local ok, err = pcall(function()
      touch(go)
      wait_for(h, "grant 8 ")
    end)
    local stalled = socket.gettime() - t0
    os.execute("kill -CONT " .. pid)
    assert(ok, err)
    local r = finish(h)
    os.remove(go)
    assert.equals(0, r.code, r.out)
    assert.equals(12, #r.grants)
    assert.matches("no answer within 100 ms", r.warnings[1])
    assert.equals("local", r.grants[4].source)
    assert.is_true(stalled < 5, "the fallback took " .. stalled .. " s")
    assert.is_true(excess(r.grants, 20, 3) < 1.6)
  end)

  it("keeps granting when Redis stops mid-run, says so once, and uses Redis again after a restart", function()
    local go = os.tmpname()
    os.remove(go)
    local key = fresh("restarted")
    local hs = {}
    for i = 1, 3 do
      hs[i] = spawn(("--retry 0.3 --pause 2 %s %s %s 20 3 40"):format(go, url(), key))
    end
    for i = 1, 3 do wait_for(hs[i], "paused") end
    stop(true)
    touch(go)
    for i = 1, 3 do wait_for(hs[i], "grant 6 ") end
    start(server.port, server.dir)
    local rs = {}
    for i = 1, 3 do
      rs[i] = finish(hs[i])
      local r = rs[i]
      assert.equals(0, r.code, r.out)
      assert.equals(40, #r.grants)
      assert.equals("local", r.grants[3].source)
      assert.equals("redis", r.grants[40].source)
      assert.equals(2, #r.warnings, r.out)
      assert.matches("unavailable", r.warnings[1])
      assert.matches("available again", r.warnings[2])
      assert.equals(0, r.stats.down)
    end
    os.remove(go)
  end)

  it("keeps the latest news whole when more come between two looks at it", function()
    -- Redis stops answering three times while the driver runs (CLIENT PAUSE), the third time
    -- until after the driver's end, and the driver looks at the limiter's news only then:
    -- five messages, of which the limiter keeps what fits without splitting an outage from
    -- its recovery, so what is told still begins with an outage and ends in the current state
    local h = spawn(("--retry 0.05 --hold-warnings %s %s 20 3 80"):format(url(), fresh("outages")))
    -- at 20 grants a second the pauses start 1.25 s apart, and the last one outlasts the 25
    -- grants left (local ones, at the same pace)
    for _, p in ipairs { { 5, 400 }, { 30, 400 }, { 55, 3500 } } do
      wait_for(h, ("grant %d "):format(p[1]))
      assert.equals("OK", cli(("client pause %d all"):format(p[2])):match("%u+"))
    end
    local r = finish(h)
    -- from another connection this waits for the pause to end (Redis 7.0): nothing here can
    -- fail before it, so the next spec finds Redis answering
    assert.equals("OK", cli("client unpause"):match("%u+"))
    assert.equals(0, r.code, r.out)
    assert.equals(80, #r.grants)
    local outages, source = 0, "redis" -- stretches of grants from the local buckets
    for _, g in ipairs(r.grants) do
      if g.source == "local" and source == "redis" then outages = outages + 1 end
      source = g.source
    end
    assert.equals(3, outages, r.out)
    assert.equals(1, r.stats.down)
    assert.equals(3, #r.warnings, r.out) -- the first outage and its recovery made room
    assert.matches("unavailable", r.warnings[1])
    assert.matches("available again", r.warnings[2])
    assert.matches("unavailable", r.warnings[3])
  end)

  -- Runs the driver (`retry`, `count` grants at 20/s, burst 3) against Redis by a name the
  -- resolver it is given (spec/redis/slow-resolver.c, `env`: its settings) makes slow, and
  -- restarts Redis while the driver is paused after 2 grants, which closes its connection.
  local function reconnect_slowly(retry, count, env)
    local go = os.tmpname()
    os.remove(go)
    local h = spawn(("--retry %s --pause 2 %s redis://slow.fly.test:%d %s 20 3 %d"):format(retry, go,
      server.port, fresh("slow"), count), ("LD_PRELOAD=%s/build/spec/slow-resolver.so "
      .. "FLY_SPEC_SLOW_HOST=slow.fly.test ASAN_OPTIONS=\"$ASAN_OPTIONS:verify_asan_link_order=0\" %s")
      :format(H.ROOT, env))
    wait_for(h, "paused")
    stop(true)
    start(server.port, server.dir)
    touch(go)
    local r = finish(h)
    os.remove(go)
    return r
  end

  it("resolves a host name on a thread of its own when it reconnects: no admission waits for it", function()
    -- the resolution takes 1 s (and answers 127.0.0.1)
    local r = reconnect_slowly(10, 60, "FLY_SPEC_SLOW_MS=1000")
    assert.equals(0, r.code, r.out)
    assert.equals(60, #r.grants)
    -- connecting at the start may wait for the resolver; reconnecting from the loop never does
    assert.matches("^resolve slow%.fly%.test main\n", r.out)
    assert.matches("\nresolve slow%.fly%.test thread\n", r.out)
    assert.is_nil(r.out:find("\nresolve slow%.fly%.test main\n"), r.out)
    for _, g in ipairs(r.grants) do
      assert.is_true(g.latency < 300000, ("grant %d waited %d us for its answer"):format(g.n, g.latency))
    end
    assert.equals("local", r.grants[6].source)
    -- a resolution slower than an admission may wait counts as Redis unavailable until it ends
    -- (not until the next retry, 10 s later)
    assert.equals("redis", r.grants[60].source, r.out)
    assert.equals(2, #r.warnings, r.out)
    assert.matches("unavailable %(resolving slow%.fly%.test takes longer than 100 ms%)", r.warnings[1])
    assert.matches("available again", r.warnings[2])
  end)

  it("tells why when a slow resolution then fails", function()
    local r = reconnect_slowly(0.2, 30, "FLY_SPEC_SLOW_MS=300 FLY_SPEC_SLOW_FAIL_FROM=2")
    assert.equals(0, r.code, r.out)
    assert.equals(30, #r.grants)
    assert.equals("local", r.grants[30].source)
    assert.equals(2, #r.warnings, r.out)
    assert.matches("unavailable %(resolving slow%.fly%.test takes longer than 100 ms%)", r.warnings[1])
    assert.matches("unavailable %(cannot resolve slow%.fly%.test: ", r.warnings[2])
  end)

  it("rejects bad URLs with a message that never shows the password", function()
    for _, bad in ipairs {
      "http://127.0.0.1:6379", "redis://", "redis://:6379", "redis://h:0", "redis://h:99999", "redis://h:x",
      "redis://h/x", "redis://[::1", "unix://relative.sock", "unix:///tmp/r.sock?foo=1", "unix:///tmp/r.sock?db=x",
      "redis://:%zz@h", "redis://nocolon@h",
    } do
      local r = run(("%q k 1 1 1"):format(bad))
      assert.equals(2, r.code, bad)
      assert.matches("redis%-driver: redis URL", r.out, 1)
    end
    local r = run("'redis://:hunter2@h:bad' k 1 1 1")
    assert.equals(2, r.code)
    assert.is_nil(r.out:find("hunter2", 1, true))
    -- a Redis that is not there is no error: the limiter starts down
    r = run("redis://127.0.0.1:1 k 20 3 2")
    assert.equals(0, r.code, r.out)
    assert.equals(1, #r.warnings)
    assert.matches("redis://127%.0%.0%.1:1/0 is unavailable", r.warnings[1])
  end)
end)
