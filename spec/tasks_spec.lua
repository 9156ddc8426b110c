-- Tasks: many calls at once on one libcurl loop, for scripts, game loops and event loops.
local H = require "helper"
local fly = require "fly"

describe("tasks", function()
  local c, name
  before_each(function()
    H.reset()
    c = H.client()
    name = H.app(c)
  end)
  after_each(function() c:close() end)

  local function slow(path, seconds, count)
    H.fault { method = "GET", path = path, kind = "delay", delay = seconds, count = count or 1 }
  end

  it("run calls concurrently and return their results", function()
    slow("/v1/apps/" .. name, 0.5, 5)
    local tasks = {}
    for i = 1, 5 do
      tasks[i] = c:spawn(function(k)
        local app = assert(c.apps:get(name))
        return app.name, k
      end, i)
    end
    local t0 = fly.now()
    assert.is_true(c:run(30))
    assert.is_true(fly.now() - t0 < 2.4) -- five 0.5 s requests overlapped, not queued
    for i = 1, 5 do
      assert.equals("done", tasks[i]:status())
      assert.same({ name, i }, { tasks[i]:result() })
    end
  end)

  it("progress while a plain call outside any task waits", function()
    local steps = 0
    local t = c:spawn(function()
      for _ = 1, 3 do
        assert(c.apps:get(name))
        steps = steps + 1
      end
      return "finished"
    end)
    slow("/v1/apps/slow-one", 0.5)
    local res, err = c.apps:get("slow-one")
    assert.is_nil(res)
    assert.equals(404, err.status)
    assert.equals(3, steps)
    assert.equals("finished", t:join(5))
  end)

  it("poll(0) never blocks and counts unfinished tasks", function()
    H.fault { method = "GET", path = "/v1/apps/stalled", kind = "stall", delay = 5, count = 1 }
    local t = c:spawn(function() return c:call("Apps_show", { app_name = "stalled" }, { timeout = 3 }) end)
    local t0 = fly.now()
    local n
    for _ = 1, 20 do n = c:poll(0) end
    assert.equals(1, n)
    assert.is_true(fly.now() - t0 < 1)
    t:cancel()
    assert.equals(0, c:poll(0))
    assert.equals("cancelled", t:status())
  end)

  it("say whether a cancelled task's call in flight may have been carried out", function()
    H.fault { method = "POST", path = "/v1/apps", kind = "stall", delay = 2, count = 1 }
    local before = H.stats().requests.Apps_create or 0
    local t = c:spawn(function() return c.apps:create { app_name = H.name(), org_slug = "personal" } end)
    local sent = fly.now() + 5 -- until the server has it
    while (H.stats().requests.Apps_create or 0) == before and fly.now() < sent do c:poll(0.01) end
    t:cancel()
    local _, err = t:result()
    assert.equals("cancelled", err.code)
    assert.is_false(err.retryable)
    assert.is_true(err.may_have_run) -- it had gone out: the server may run it
    -- one cancelled while its call waits for its rate-limit slot: nothing went out
    local paced = H.client { rate_limit = { Apps_show = { rate = 0.1, burst = 1 } } }
    local first = paced:spawn(function() return paced.apps:get(name) end)
    local queued = paced:spawn(function() return paced.apps:get(name) end) -- 10 s behind the first
    first:join(10)
    queued:cancel()
    local _, err2 = queued:result()
    assert.equals("cancelled", err2.code)
    assert.is_nil(err2.may_have_run)
    paced:close()
  end)

  it("keep a task's error in the task without stopping the others", function()
    local bad = c:spawn(function() error("boom") end)
    local good = c:spawn(function() return assert(c.apps:get(name)).name end)
    assert.is_true(c:run(10))
    assert.equals("failed", bad:status())
    local res, err = bad:result()
    assert.is_nil(res)
    assert.equals("task_failed", err.code)
    assert.matches("boom", err.message)
    assert.matches("boom", bad.traceback)
    assert.equals(name, good:result())
  end)

  it("join from another task, with a timeout", function()
    slow("/v1/apps/" .. name, 0.3)
    local inner = c:spawn(function() return assert(c.apps:get(name)).name end)
    local outer = c:spawn(function()
      local r = inner:join()
      return "saw " .. r
    end)
    assert.equals("saw " .. name, outer:join(10))
    -- a stalled answer: the server never runs it, so nothing leaks into later specs
    H.fault { method = "GET", path = "/v1/apps/long-one", kind = "stall", delay = 2, count = 1 }
    local long = c:spawn(function() return c.apps:get("long-one") end)
    local waiter = c:spawn(function() return long:join(0.2) end)
    local res, err = waiter:join(10)
    assert.is_nil(res)
    assert.equals("timeout", err.code)
    long:cancel()
    local res2, err2 = long:join()
    assert.is_nil(res2)
    assert.equals("cancelled", err2.code)
  end)

  it("never wake a task early after a join whose timer and task end together", function()
    for _ = 1, 5 do
      local x
      local a = c:spawn(function()
        x:join(0.1)
        local t0 = fly.now()
        c:sleep(0.5)
        return fly.now() - t0
      end)
      x = c:spawn(function() c:sleep(0.1) end)
      assert.is_true(c:run(10))
      assert.is_true(a:result() >= 0.45)
    end
  end)

  it("report a running task's result as not finished", function()
    local t = c:spawn(function() c:sleep(0.2) end)
    local res, err = t:result()
    assert.is_nil(res)
    assert.equals("running", err.code)
    assert.is_true(c:run(5))
  end)

  it("sleep without blocking other tasks", function()
    local order = {}
    c:spawn(function() c:sleep(0.3); order[#order + 1] = "sleeper" end)
    c:spawn(function() assert(c.apps:get(name)); order[#order + 1] = "caller" end)
    assert.is_true(c:run(5))
    assert.same({ "caller", "sleeper" }, order)
  end)

  it("all wake when more finish at once than one step can hand back (Lua 5.1 and LuaJIT: about 8000)",
    function()
    local N, woke = 9000, 0
    for _ = 1, N do
      c:spawn(function() c:sleep(0.05); woke = woke + 1 end)
    end
    c:poll(0, math.huge) -- every task starts and sleeps
    local t0 = fly.now()
    repeat until fly.now() - t0 > 0.2 -- without the loop: then their timers are all due in one step
    assert.is_true(c:run(30))
    assert.equals(N, woke)
  end)

  it("wait for a rate limit without blocking other tasks", function()
    local rl = H.client { rate_limit = { Apps_show = { rate = 2, burst = 1 } } }
    local order = {}
    rl:spawn(function()
      assert(rl.apps:get(name))
      assert(rl.apps:get(name)) -- waits ~0.5 s for its token
      order[#order + 1] = "limited"
    end)
    rl:spawn(function()
      assert(rl:call("Apps_list", { org_slug = "personal" }))
      order[#order + 1] = "free"
    end)
    assert.is_true(rl:run(10))
    assert.same({ "free", "limited" }, order)
    rl:close()
  end)

  it("map keeps input order, reports errors by index and respects concurrency", function()
    local names = { name, "missing-1", name, "missing-2", name }
    local active, peak = 0, 0
    local res, errs = c:map(names, function(n)
      active = active + 1
      if active > peak then peak = active end
      local app, err = c.apps:get(n)
      active = active - 1
      return app and app.name, err
    end, { concurrency = 2 })
    assert.same({ name, nil, name, nil, name }, { res[1], res[2], res[3], res[4], res[5] })
    assert.equals(404, errs[2].status)
    assert.equals(404, errs[4].status)
    assert.is_nil(errs[1])
    assert.equals(2, peak)
    local _, raised = c:map({ 1 }, function() error("inside map") end)
    assert.matches("inside map", raised[1].message)
    -- a second value beside a result is not an error
    local ok, none = c:map({ 1, 2 }, function(i) return i * 10, "extra" end)
    assert.same({ 10, 20 }, ok)
    assert.same({}, none)
    assert.has_error(function() c:map({ 1 }, print, { concurrency = 0 }) end)
    assert.has_error(function() c:map({ 1 }, print, { concurrency = 1.5 }) end)
  end)

  it("map inside a task: cancelling the task cancels its workers, and no further item starts", function()
    slow("/v1/apps/" .. name, 0.3, 12)
    local before = H.stats().requests.Apps_show or 0
    local items = {}
    for i = 1, 12 do items[i] = i end
    local parent = c:spawn(function()
      return c:map(items, function() return c.apps:get(name) end, { concurrency = 3 })
    end)
    local t0 = fly.now()
    while (H.stats().requests.Apps_show or 0) - before < 3 and fly.now() - t0 < 10 do c:poll(0.01) end
    assert.is_true(parent:cancel())
    local sent = (H.stats().requests.Apps_show or 0) - before
    assert.equals(3, sent)
    local _, err = parent:result()
    assert.equals("cancelled", err.code)
    assert.is_true(err.may_have_run) -- its workers' calls had gone out
    t0 = fly.now()
    while fly.now() - t0 < 1.5 do c:poll(0.05) end -- five times what each call takes
    assert.equals(sent, (H.stats().requests.Apps_show or 0) - before)
    assert.is_true(c:run(0)) -- no task left: the workers were cancelled
    -- workers that made a call and sleep now, none in flight: still may_have_run
    parent = c:spawn(function()
      return c:map({ 1, 2 }, function()
        assert(c.apps:get(name))
        c:sleep(30)
      end)
    end)
    t0 = fly.now()
    while (H.stats().requests.Apps_show or 0) - before < sent + 2 and fly.now() - t0 < 10 do c:poll(0.01) end
    t0 = fly.now()
    while fly.now() - t0 < 1 do c:poll(0.05) end -- the gets (0.3 s each) are done: both sleep
    assert.is_true(parent:cancel())
    assert.is_true(select(2, parent:result()).may_have_run)
    -- workers that made no call yet: not
    parent = c:spawn(function() return c:map({ 1, 2 }, function() c:sleep(30) end) end)
    c:poll(0.05)
    assert.is_true(parent:cancel())
    assert.is_nil(select(2, parent:result()).may_have_run)
  end)

  it("raise on a sleep or join time that is not a number, NaN included", function()
    H.raises("sleep: seconds must be a number %(got string%)", function() c:sleep("1") end)
    H.raises("sleep: seconds must be a number %(got NaN%)", function() c:sleep(0 / 0) end)
    local t = c:spawn(function() end)
    H.raises("join: timeout must be a number %(got NaN%)", function() t:join(0 / 0) end)
    assert.is_true(c:run(10))
  end)

  it("survive forced garbage collection between every step", function()
    slow("/v1/apps/" .. name, 0.05, 0)
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = c:spawn(function()
        local app = assert(c.apps:get(name))
        c:sleep(0.01)
        return #app.name
      end)
    end
    local deadline = fly.now() + 30
    while c:poll(0.005) > 0 and fly.now() < deadline do
      collectgarbage("collect")
      collectgarbage("step")
    end
    for i = 1, 20 do assert.equals(#name, tasks[i]:result()) end
  end)

  it("are cancelled cleanly when the client closes with requests in flight", function()
    local other = H.client()
    H.fault { method = "GET", path = "/v1/apps/hang", kind = "stall", delay = 5, count = 0 }
    local tasks = {}
    for i = 1, 5 do tasks[i] = other:spawn(function() return other.apps:get("hang") end) end
    other:poll(0.1)
    other:close()
    for i = 1, 5 do assert.equals("cancelled", tasks[i]:status()) end
    assert.has_error(function() other:poll(0) end, "fly: client is closed")
    H.reset()
  end)

  it("can be driven by a host event loop (luv) through timeout() and sockets()", function()
    local uv = require "luv"
    slow("/v1/apps/" .. name, 0.2, 3)
    local results = {}
    for i = 1, 3 do
      c:spawn(function() results[i] = assert(c.apps:get(name)).name end)
    end
    local polls, timer = {}, uv.new_timer()
    local step
    -- libcurl may close a socket and open another under the same number, so
    -- the watchers are made anew after every step
    local function sync()
      for fd, p in pairs(polls) do
        p:stop()
        p:close()
        polls[fd] = nil
      end
      for fd, mode in pairs(c:sockets()) do
        local p = uv.new_socket_poll(fd)
        polls[fd] = p
        p:start(mode == "rw" and "rw" or mode, function() step() end)
      end
      local t = c:timeout()
      timer:stop()
      if t then timer:start(math.max(1, math.ceil(t * 1000)), 0, function() step() end) end
    end
    local steps = 0
    step = function()
      steps = steps + 1
      if c:poll(0) == 0 then
        uv.stop()
        return
      end
      sync()
    end
    local guard = uv.new_timer()
    guard:start(10000, 0, function() uv.stop() end)
    step()
    uv.run()
    guard:close()
    timer:close()
    for _, p in pairs(polls) do p:close() end
    uv.run("nowait")
    assert.same({ name, name, name }, results)
    assert.is_true(steps < 1000) -- woken by events, not spinning
  end)

  it("let run() return when one of them closes the client", function()
    local closer = H.client()
    closer:spawn(function() closer:sleep(5) end)
    closer:spawn(function() closer:close() end)
    local ok, res = pcall(closer.run, closer, 3)
    assert(ok, res)
    assert.is_true(res)
    assert.is_true(closer:is_closed())
  end)

  it("hand a cancelled call's giveup to the trace hook before run() returns", function()
    local events = {}
    local traced = H.client { rate_limit = {}, trace = function(e)
      if e.kind == "giveup" then events[#events + 1] = e.code end
    end }
    local app = H.app(traced)
    local tasks = {}
    for i = 1, 5 do tasks[i] = traced:spawn(function() return traced.apps:get(app) end) end
    for _ = 1, 10 do traced:poll(0.01) end -- three got their answer; two wait for the rate limit
    assert.is_true(tasks[4]:cancel())
    assert.is_true(tasks[5]:cancel())
    assert.is_true(traced:run(3))
    assert.same({ "cancelled", "cancelled" }, events)
    traced:close()
  end)

  it("stop where they cancel themselves: nothing after it runs, no call of theirs goes out", function()
    local after = false
    local t
    t = c:spawn(function()
      t:cancel()
      after = true
      assert(c.machines:create(name, { config = { image = "nginx" } }))
    end)
    -- one that catches the stop and goes on: its calls raise, and are not sent
    local caught, second
    local u
    u = c:spawn(function()
      caught = select(2, pcall(u.cancel, u))
      second = select(2, pcall(c.machines.create, c.machines, name, { config = { image = "nginx" } }))
    end)
    -- a worker of map cancelling the task that runs the map ("abort on the first error")
    local parent
    parent = c:spawn(function()
      return c:map({ 1, 2, 3 }, function(i)
        if i == 1 then parent:cancel() end
        return c.machines:create(name, { config = { image = "nginx" } })
      end, { concurrency = 2 })
    end)
    assert.is_true(c:run(10))
    for _, task in ipairs { t, u, parent } do
      assert.equals("cancelled", task:status())
      assert.equals("cancelled", select(2, task:result()).code)
    end
    assert.is_false(after)
    assert.equals("cancelled", caught.code)
    assert.equals("cancelled", second.code)
    assert.is_nil(H.stats().requests.Machines_create)
    assert.equals(0, #assert(c.machines:list(name)))
  end)

  it("drop a joining task's timer when it is cancelled", function()
    local long = c:spawn(function() c:sleep(30) end)
    local joiner = c:spawn(function() return long:join(20) end)
    c:poll(0)
    c:poll(0)
    joiner:cancel()
    long:cancel()
    assert.equals(0, c:poll(0))
    assert.is_nil(c:timeout()) -- nothing left to wake up for
  end)

  it("refuse to drive the loop from inside one of its tasks", function()
    local t = c:spawn(function() c:run(1) end)
    c:run(5)
    assert.equals("failed", t:status())
    assert.matches("cannot drive the loop from inside", select(2, t:result()).message)
  end)

  it("raise on misuse", function()
    assert.has_error(function() c:spawn("not a function") end)
    assert.has_error(function() c:map("x", print) end)
    local t
    t = c:spawn(function() return t:join() end)
    c:run(5)
    assert.equals("failed", t:status())
  end)

  -- a client dropped with tasks still waiting (a timer, a call in flight,
  -- a task inside a protected call) goes away with them, on every Lua
  it("are collected with a client dropped while they wait", function()
    local probe = setmetatable({}, { __mode = "v" })
    local function drop()
      local d = H.client()
      slow("/v1/apps/" .. name, 5)
      probe.client, probe.ns = d, d.apps
      probe.sleeper = d:spawn(function() d:sleep(60) end)
      probe.caller = d:spawn(function() return d.apps:get(name) end)
      probe.mapper = d:spawn(function() return d:map({ 1, 2 }, function() d:sleep(60) end) end)
      probe.co = probe.sleeper._co
      d:poll(0)
      d:poll(0)
      assert.equals(5, d:poll(0))
    end
    drop()
    -- overwrite the stack slots drop's frame used (LuaJIT may still see what they held)
    local filler = {}
    for i = 1, 200 do filler[i] = i end
    assert.equals(200, select("#", require("fly.compat").unpack(filler, 1, 200)))
    -- and LuaJIT's compiled traces, which may hold a function of drop's (a task's body, a
    -- worker) as a constant, and its upvalues with it
    if rawget(_G, "jit") then jit.flush() end -- luacheck: ignore 113
    for _ = 1, 4 do collectgarbage("collect") end
    for _, what in ipairs { "client", "ns", "sleeper", "caller", "mapper", "co" } do
      assert.is_nil(probe[what], what .. " was not collected")
    end
  end)
end)
