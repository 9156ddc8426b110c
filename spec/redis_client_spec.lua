-- rate_limit.redis: real clients in several OS processes (spec/redis/client.lua) share their
-- buckets through a throwaway redis-server (spec/redis/start), against the emulator with its
-- rate limits on; Redis away or restarted never fails a call.
local H = require "helper"
local socket = require "socket"

local LUA = os.getenv("FLY_SPEC_LUA") or "lua5.4"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local server = require "redis.server" -- a throwaway redis-server
local start, stop, cli = server.start, server.stop, server.cli

local function url() return "redis://127.0.0.1:" .. server.port end

local function touch(path)
  assert(io.open(path, "w")):close()
end

local function read(file)
  local f = io.open(file)
  local s = f and f:read("*a") or ""
  if f then f:close() end
  return s
end

-- Starts spec/redis/client.lua in the background: `count` starts of the machine, with
-- `rate_limit` (a Lua table constructor) as the client's option.
local function spawn(app, machine, count, rate_limit, pause_after, go_file)
  local file = os.tmpname()
  local env = ("FLY_SPEC_RATE_LIMIT=%q FLY_SPEC_CA=%q"):format(rate_limit, H.ca_file() or "")
  local args = ("%s %s %s %s %d %s %s"):format(H.url(), H.TOKEN, app, machine, count, pause_after or "",
    go_file or "")
  os.execute(("(env %s %s %s/spec/redis/client.lua %s > %s 2>&1; echo \"exit $?\" >> %s) "
    .. "</dev/null >/dev/null 2>&1 &"):format(env, LUA, H.ROOT, args, file, file))
  return { file = file }
end

local function wait_for(h, pattern, seconds)
  local deadline = socket.gettime() + (seconds or 60)
  while not read(h.file):find(pattern) do
    assert(socket.gettime() < deadline, "timed out waiting for " .. pattern .. " in:\n" .. read(h.file))
    socket.sleep(0.02)
  end
end

-- Waits for the process; returns { calls = { {n, at, ok} }, ok = n, out = text, code = status }.
local function finish(h)
  wait_for(h, "exit %d+\n")
  local out = read(h.file)
  os.remove(h.file)
  local r = { calls = {}, out = out, code = tonumber(out:match("exit (%d+)\n")) }
  for n, at, status in out:gmatch("call (%d+) (%S+) (%a+)") do
    r.calls[#r.calls + 1] = { n = tonumber(n), at = tonumber(at), ok = status == "ok" }
  end
  r.ok = tonumber(out:match("done (%d+)"))
  return r
end

-- Runs `procs` processes of `count` starts each; returns their results and the seconds
-- from the first call's end to the last's. `may_fail`: calls may fail (429s past the attempts).
local function fleet(app, machine, procs, count, rate_limit, may_fail)
  local hs, rs = {}, {}
  for i = 1, procs do hs[i] = spawn(app, machine, count, rate_limit) end
  local first, last = math.huge, 0
  for i = 1, procs do
    rs[i] = finish(hs[i])
    assert.equals(0, rs[i].code, rs[i].out)
    if not may_fail then assert.equals(count, rs[i].ok, rs[i].out) end
    for _, c in ipairs(rs[i].calls) do
      first, last = math.min(first, c.at), math.max(last, c.at)
    end
  end
  return rs, last - first
end

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

describe("rate_limit.redis", function()
  local app
  local machines = {}
  setup(function()
    start()
    H.reset()
    local c = H.client()
    app = H.app(c)
    for i = 1, 6 do machines[i] = assert(c.machines:create(app, { config = { image = "nginx" } })).id end
    c:close()
  end)
  teardown(function()
    stop()
    H.reset()
  end)
  after_each(function() H.config { rate_limits = { enabled = false } } end)

  it("keeps three processes starting one machine within the server's limits: zero 429s #timing", function()
    -- Machines_start is 1/s with a burst of 3; scaled by 20 on both sides: 15 starts past the
    -- burst take at least 0.75 s
    H.config { rate_limits = { enabled = true, scale = 20 } }
    local before = H.stats().rate_limited
    -- every process pacing itself alone: together they exceed the limit
    fleet(app, machines[1], 3, 6, "{ scale = 20 }", true)
    local alone = H.stats().rate_limited - before
    assert.is_true(alone > 0, "the emulator should have answered 429s")
    before = H.stats().rate_limited
    local rs, took = fleet(app, machines[2], 3, 6, ("{ scale = 20, redis = %q }"):format(url()))
    assert.equals(0, H.stats().rate_limited - before)
    assert.is_true(took >= 0.75 - 0.05, "too fast for one bucket: " .. took)
    assert.is_true(took < 10, "took " .. took .. " s")
    for _, r in ipairs(rs) do assert.is_nil(r.out:find("fly: the shared rate limiter", 1, true), r.out) end
  end)

  it("applies per-action overrides and scale, in keys that carry no token #timing", function()
    -- Machines_start overridden to 0.5/s, burst 1, scaled by 20: 10/s, one at a time, so 8
    -- starts from two processes take at least 0.7 s (the default limit would allow 0.25 s)
    local rl = ("{ scale = 20, redis = %q, Machines_start = { rate = 0.5, burst = 1 } }"):format(url())
    local _, took = fleet(app, machines[3], 2, 4, rl)
    assert.is_true(took >= 0.7 - 0.05, "too fast for the override: " .. took)
    assert.is_true(took < 10, "took " .. took .. " s")
    -- one more start on that bucket at 0.01/s: its key then lives 100 s, long enough to read
    -- however slowly this runs (the fleet's keys vanish 0.1 s after their last start)
    local probe = H.client { rate_limit = { redis = url(), Machines_start = { rate = 0.01, burst = 1 } } }
    probe.machines:start(app, machines[3])
    probe:close()
    local keys = cli("--scan --pattern 'fly:rl:*'")
    assert.matches("fly:rl:%x+:Machines_start:" .. machines[3], keys)
    assert.equals(32, #keys:match("fly:rl:(%x+):Machines_start:" .. machines[3]))
    assert.is_nil(keys:find(H.TOKEN, 1, true))
    -- the key holds the bucket until it would be full again (1 / 0.01 s) and a second more
    local ttl = tonumber(cli("pttl " .. keys:match("(fly:rl:%x+:Machines_start:" .. machines[3] .. ")")))
    assert.is_true(ttl > 50000 and ttl <= 101000, "ttl " .. tostring(ttl))
  end)

  it("never fails a call when Redis stops mid-run, says so once, and uses Redis again after a restart",
    function()
      local go = os.tmpname()
      os.remove(go)
      local rl = ("{ scale = 20, redis = %q, redis_retry = 0.3 }"):format(url())
      local hs = {}
      for i = 1, 3 do hs[i] = spawn(app, machines[4], 12, rl, 3, go) end
      for i = 1, 3 do wait_for(hs[i], "paused") end
      stop(true)
      touch(go)
      for i = 1, 3 do wait_for(hs[i], "call 6 ") end
      start(server.port, server.dir)
      for i = 1, 3 do
        local r = finish(hs[i])
        assert.equals(0, r.code, r.out)
        assert.equals(12, r.ok, r.out)
        assert.equals(1, count(r.out, "is unavailable"), r.out)
        assert.matches("redis://127%.0%.0%.1:%d+/0 is unavailable", r.out)
      end
      os.remove(go)
      -- back on Redis: the bucket is there again (a slow limit keeps the key a while)
      local c = H.client { rate_limit = { redis = url(), Machines_start = { rate = 0.1, burst = 1 } } }
      assert(c.machines:start(app, machines[4]))
      c:close()
      assert.matches("Machines_start:" .. machines[4], cli("--scan --pattern 'fly:rl:*'"))
    end)

  it("reloads the script after NOSCRIPT (SCRIPT FLUSH) without falling back", function()
    local go = os.tmpname()
    os.remove(go)
    local h = spawn(app, machines[5], 6, ("{ scale = 20, redis = %q }"):format(url()), 3, go)
    wait_for(h, "paused")
    local function calls(cmd)
      return tonumber(cli("info commandstats"):match("cmdstat_" .. cmd .. ":calls=(%d+)")) or 0
    end
    assert.matches("OK", cli("script flush"))
    local evals, evalshas = calls("eval"), calls("evalsha")
    touch(go)
    local r = finish(h)
    os.remove(go)
    assert.equals(0, r.code, r.out)
    assert.equals(6, r.ok, r.out)
    assert.is_nil(r.out:find("unavailable", 1, true), r.out)
    -- NOSCRIPT once, then the whole script once, then the script by its SHA again
    assert.equals(evals + 1, calls("eval"))
    assert.equals(evalshas + 3, calls("evalsha"))
  end)

  it("serves plain calls, tasks, poll and host loops with Redis on", function()
    local c = H.client { rate_limit = { scale = 20, redis = url() } }
    local m = machines[6]
    assert(c.machines:start(app, m))
    local results = {}
    for i = 1, 5 do c:spawn(function() results[i] = assert(c.machines:start(app, m)) end) end
    -- while admissions wait for Redis, its socket is one of the loop's
    local fds = 0
    for _ in pairs(c:sockets()) do fds = fds + 1 end
    assert.is_true(fds >= 1)
    assert.is_true(c:timeout() <= 0.1)
    local deadline = socket.gettime() + 10
    while c:poll(0.05) > 0 do assert.is_true(socket.gettime() < deadline) end
    assert.equals(5, #results)
    c:close()
  end)

  it("tells its trace hook, instead of stderr, when Redis goes away and when it is back", function()
    local events = {}
    local c = H.client { rate_limit = { scale = 20, redis = url(), redis_retry = 0.2 },
      trace = function(e) if e.kind == "limiter" then events[#events + 1] = e end end }
    assert(c.apps:get(app))
    stop(true)
    assert(c.apps:get(app)) -- finds the connection gone: the local bucket admits it
    assert.equals(1, #events)
    start(server.port, server.dir)
    c:sleep(0.3)
    assert(c.apps:get(app)) -- through Redis again
    c:close()
    assert.equals(2, #events)
    assert.is_false(events[1].available)
    assert.matches("^fly: the shared rate limiter at redis://127%.0%.0%.1:%d+/0 is unavailable %(", events[1].message)
    assert.is_true(events[2].available)
    assert.matches("is available again$", events[2].message)
    assert.is_number(events[2].time)
    assert.is_nil(events[2].operation) -- an event of no call
  end)

  it("takes a host name, resolved when the client is made", function()
    local c = H.client { rate_limit = { redis = "redis://localhost:" .. server.port,
      Machines_start = { rate = 0.1, burst = 1 } } }
    assert(c.machines:start(app, machines[5]))
    c:close()
    assert.matches("Machines_start:" .. machines[5], cli("--scan --pattern 'fly:rl:*'"))
  end)

  it("survives its Lua state being closed while a reconnection's resolution runs", function()
    -- a host (spec/threads.c) runs the script in a state of its own, closes it (which unloads
    -- the core) and goes on for 2 s; the resolver (an LD_PRELOAD) takes 1 s for the name
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
      local fly = require "fly"
      local c = assert(fly.new { token = %q, base_url = %q,
        rate_limit = { redis = "redis://slow.fly.test:%d", redis_retry = 0.1 } })
      assert(c.apps:get(%q))
      os.execute("redis-cli -h 127.0.0.1 -p %d CLIENT KILL TYPE normal >/dev/null")
      assert(c.apps:get(%q)) -- finds the connection gone: Redis is down for 0.1 s
      os.execute("sleep 0.3")
      assert(c.apps:get(%q)) -- reconnects: the name is resolved on a thread
      c:close()
    ]]):format(H.TOKEN, H.plain_url(), server.port, app, server.port, app, app))
    f:close()
    local bin = os.getenv("FLY_SPEC_THREADS") or (H.ROOT .. "/build/spec/threads")
    local out = sh(("env LD_PRELOAD=%s/build/spec/slow-resolver.so FLY_SPEC_SLOW_HOST=slow.fly.test "
      .. "FLY_SPEC_SLOW_MS=1000 ASAN_OPTIONS=\"$ASAN_OPTIONS:verify_asan_link_order=0\" %s 1 %s 2 2>&1; "
      .. "echo \"exit $?\""):format(H.ROOT, bin, script))
    os.remove(script)
    assert.matches("exit 0\n$", out)
    assert.matches("is unavailable", out)
  end)

  it("lets a host event loop drive admissions through timeout() and sockets()", function()
    -- which of this process's descriptors is the connection to Redis: /proc/net/tcp names the
    -- peer of each socket inode
    local pid = assert(io.open("/proc/self/stat")):read("*l"):match("^(%d+)")
    local function is_redis(fd)
      local inode = sh(("readlink /proc/%s/fd/%d 2>/dev/null"):format(pid, fd)):match("socket:%[(%d+)%]")
      if not inode then return false end
      for line in io.lines("/proc/net/tcp") do
        local rport, ino = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) %x+ %x+:%x+ %x+:%x+ %x+ +%d+ +%d+ (%d+)")
        if ino == inode then return tonumber(rport, 16) == tonumber(server.port) end
      end
      return false
    end
    local c = H.client { rate_limit = { scale = 20, redis = url() } }
    local done = 0
    for _ = 1, 6 do
      c:spawn(function()
        assert(c.machines:start(app, machines[6]))
        done = done + 1
      end)
    end
    -- the host's loop: wait on the sockets for at most timeout(), then one step
    local seen, steps = false, 0
    local deadline = socket.gettime() + 10
    while c:poll(0) > 0 do
      steps = steps + 1
      assert.is_true(socket.gettime() < deadline)
      for fd in pairs(c:sockets()) do seen = seen or is_redis(fd) end
      local t = c:timeout()
      assert.is_not_nil(t)
      socket.sleep(math.min(t, 0.01))
    end
    assert.equals(6, done)
    assert.is_true(seen, "the Redis socket was never one of sockets()")
    c:close()
  end)

  it("takes no token in Redis for a call its wait there would push past its deadline", function()
    -- one token a second; the first call makes the bucket's key, then the bucket in Redis is
    -- set 5 s behind (as other processes' calls would leave it) while this process's own bucket
    -- is full again: calls that may wait only 0.3 s fail, and must leave Redis's bucket as it was
    local name = "deadline-" .. math.floor(socket.gettime() * 1000)
    local c = H.client { rate_limit = { redis = url(), margin = 0, Apps_show = { rate = 1, burst = 1 } } }
    c:call("Apps_show", { app_name = name })
    local key = cli("--scan --pattern 'fly:rl:*:Apps_show:" .. name .. "'"):match("(%S+)")
    assert.is_string(key)
    socket.sleep(1.1)
    local s, us = cli("time"):match("(%d+)%s+(%d+)")
    local tat = ("%.0f"):format(tonumber(s) * 1e6 + tonumber(us) + 5e6)
    cli(("set %s %s px 60000"):format(key, tat))
    for _ = 1, 5 do
      local res, err = c:call("Apps_show", { app_name = name }, { deadline = 0.3 })
      assert.is_nil(res)
      assert.equals("timeout", err.code)
    end
    assert.equals(tat, cli("get " .. key):match("(%d+)")) -- 5 s later when each had kept a token
    c:close()
  end)

  it("empties the bucket in Redis after a 429 that is the call's answer", function()
    local name = "answer429-" .. math.floor(socket.gettime() * 1000)
    local limits = { redis = url(), margin = 0, Apps_show = { rate = 1, burst = 3 } }
    local c = H.client { retry = false, rate_limit = limits }
    c:call("Apps_show", { app_name = name })
    local key = cli("--scan --pattern 'fly:rl:*:Apps_show:" .. name .. "'"):match("(%S+)")
    assert.is_string(key)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 429, count = 1 }
    local res, err = c:call("Apps_show", { app_name = name })
    assert.is_nil(res)
    assert.equals(429, err.status)
    -- two tokens taken would leave the bucket 2 s behind; emptied, it is 3 s (burst / rate) behind
    local ahead
    local deadline = socket.gettime() + 0.5 -- (the penalty goes out unanswered: it may still be on its way)
    repeat
      local s, us = cli("time"):match("(%d+)%s+(%d+)")
      ahead = (tonumber(cli("get " .. key):match("(%d+)")) or 0) - (tonumber(s) * 1e6 + tonumber(us))
    until ahead > 2.6e6 or socket.gettime() > deadline
    -- (and no token taken by the penalty: that would leave it 4 s behind)
    assert.is_true(ahead > 2.6e6 and ahead < 3.5e6, ("the bucket is %.0f us behind"):format(ahead))
    c:close()
  end)

  it("gives Redis back the token of a call that never went out", function()
    local function key_of(name)
      return (cli("--scan --pattern 'fly:rl:*:Apps_show:" .. name .. "'"):match("(%S+)"))
    end
    local function server_now()
      local s, us = cli("time"):match("(%d+)%s+(%d+)")
      return tonumber(s) * 1e6 + tonumber(us)
    end
    local limits = { redis = url(), margin = 0, Apps_show = { rate = 1, burst = 1 } }
    -- refused connections: each call takes a token in Redis and gives it back, so the bucket
    -- ends about full (with the tokens kept, 3 s behind, and the calls would wait for them)
    local name = "refused-" .. math.floor(socket.gettime() * 1000)
    local refused = H.client { base_url = "http://127.0.0.1:1", retry = false, rate_limit = limits }
    for _ = 1, 3 do
      local res, err = refused:call("Apps_show", { app_name = name })
      assert.is_nil(res)
      assert.equals("connect", err.code)
    end
    local key = key_of(name)
    assert.is_string(key)
    local ahead = tonumber(cli("get " .. key):match("(%d+)")) - server_now()
    assert.is_true(ahead < 0.5e6, ("the bucket is %.0f us behind"):format(ahead))
    refused:close()
    -- a call cancelled while it waits for its time, and one cancelled before Redis answered:
    -- the bucket, set 3 s behind, is where it was
    name = "cancelled-" .. math.floor(socket.gettime() * 1000)
    local c = H.client { rate_limit = limits }
    c:call("Apps_show", { app_name = name })
    key = key_of(name)
    assert.is_string(key)
    socket.sleep(1.1) -- this process's own bucket is full again
    local tat = ("%.0f"):format(server_now() + 3e6)
    cli(("set %s %s px 60000"):format(key, tat))
    local req = c:_submit("Apps_show", { app_name = name })
    c:_step(0.3) -- Redis answers: 3 s to wait, the token taken
    assert.equals(("%.0f"):format(tonumber(tat) + 1e6), cli("get " .. key):match("(%d+)"))
    req:cancel()
    assert.equals(tat, cli("get " .. key):match("(%d+)"))
    req = c:_submit("Apps_show", { app_name = name })
    req:cancel() -- its admission is on its way
    c:_step(0.3) -- the answer comes, and the token goes back
    assert.equals(tat, cli("get " .. key):match("(%d+)"))
    c:_submit("Apps_show", { app_name = name })
    c:close() -- with the admission on its way
    assert.equals(tat, cli("get " .. key):match("(%d+)"))
  end)

  it("reads an answer that came while the loop did not look before calling Redis unavailable", function()
    -- a call waits for its time (the bucket 3 s behind); another's admission is answered while
    -- the program is busy past redis_timeout; then the first is cancelled, which gives its token
    -- back at once: the waiting answer is read, not taken for a Redis that stopped answering
    local name = "busy-" .. math.floor(socket.gettime() * 1000)
    local warned = {}
    local c = H.client { rate_limit = { redis = url(), margin = 0, Apps_show = { rate = 1, burst = 1 } },
      trace = function(e) if e.kind == "limiter" then warned[#warned + 1] = e.message end end }
    c:call("Apps_show", { app_name = name })
    local key = cli("--scan --pattern 'fly:rl:*:Apps_show:" .. name .. "'"):match("(%S+)")
    assert.is_string(key)
    local s, us = cli("time"):match("(%d+)%s+(%d+)")
    cli(("set %s %.0f px 60000"):format(key, tonumber(s) * 1e6 + tonumber(us) + 3e6))
    local waiting = c:_submit("Apps_show", { app_name = name })
    c:_step(0.2) -- answered: it waits about 3 s
    c:_submit("Apps_show", { app_name = name .. "-other" }) -- answered at once, not read yet
    socket.sleep(0.3) -- busy, past redis_timeout (0.1 s)
    waiting:cancel()
    c:_step(0.05)
    c:_submit("Apps_show", { app_name = name .. "-later" })
    c:_step(0.05)
    assert.same({}, warned)
    assert.is_string(cli("--scan --pattern 'fly:rl:*:Apps_show:" .. name .. "-later'"):match("(%S+)"))
    c:close()
  end)

  it("reads every answer that came while the loop did not look, however many, before judging", function()
    -- 3,000 admissions on one bucket (a place each, 1 a second: none starts), answered while the
    -- program is busy past redis_timeout: more answers than one read of hiredis's takes
    local name = "batch-" .. math.floor(socket.gettime() * 1000)
    local warned = {}
    local c = H.client { rate_limit = { redis = url(), Apps_show = { rate = 1, burst = 1 } },
      trace = function(e) if e.kind == "limiter" then warned[#warned + 1] = e.message end end }
    for _ = 1, 3000 do c:_submit("Apps_show", { app_name = name }) end
    socket.sleep(0.3)
    c:_step(0)
    c:call("Apps_show", { app_name = name .. "-after" }) -- (a call that returns tells the trace hook)
    assert.same({}, warned)
    c:close()
  end)

  it("falls back when Redis does not answer or is not there, and rejects bad URLs at fly.new", function()
    local c = H.client { rate_limit = { redis = url() } }
    assert(c.apps:get(app))
    local pid = assert(io.open(server.dir .. "/redis.pid")):read("*l")
    os.execute("kill -STOP " .. pid)
    local t0 = socket.gettime()
    local ok, err = pcall(function()
      for _ = 1, 3 do assert(c.apps:get(app)) end
    end)
    local took = socket.gettime() - t0
    os.execute("kill -CONT " .. pid)
    assert(ok, err)
    assert.is_true(took < 5, "the fallback took " .. took .. " s")
    c:close()
    c = H.client { rate_limit = { redis = "redis://127.0.0.1:1" } }
    assert(c.apps:get(app))
    c:close()
    local fly = require "fly"
    for _, bad in ipairs { "http://127.0.0.1:6379", "redis://h:0", "unix://relative.sock" } do
      H.raises("fly: redis URL", function() fly.new { token = "t", rate_limit = { redis = bad } } end)
    end
    H.raises("redis_client_spec.lua:%d+: fly: redis URL", function()
      fly.new { token = "t", rate_limit = { redis = "redis://:hunter2@h:x" } }
    end)
    ok, err = pcall(fly.new, { token = "t", rate_limit = { redis = "redis://:hunter2@h:x" } })
    assert.is_false(ok)
    assert.is_nil(err:find("hunter2", 1, true))
    H.raises("rate_limit.redis must be a string", function() fly.new { token = "t", rate_limit = { redis = 1 } } end)
    H.raises("must be > 0", function()
      fly.new { token = "t", rate_limit = { redis = url(), redis_timeout = 0 } }
    end)
  end)
end)
