-- The loop driven from outside: poll's work budget (a poll fits in a frame) and a host
-- event loop woken by the sockets libcurl reports, whatever their descriptor numbers.
local H = require "helper"
local fly = require "fly"
local socket = require "socket"

describe("poll", function()
  local c, name
  before_each(function()
    H.reset()
    c = H.client()
    name = H.app(c)
  end)
  after_each(function() c:close() end)

  -- n tasks, each getting the app once; records in which poll each one got its answer
  local function getters(n, resumed_in, polls)
    local tasks = {}
    for i = 1, n do
      tasks[i] = c:spawn(function()
        local app = assert(c.apps:get(name))
        resumed_in[i] = polls[1]
        return app.name
      end)
    end
    return tasks
  end

  it("does a little of everything per call within its budget, and loses nothing", function()
    local n = 40
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "delay", delay = 0.2, count = n }
    local resumed_in, polls = {}, { 0 }
    local tasks = getters(n, resumed_in, polls)
    assert.equals(n, c:poll(0, math.huge)) -- no limit: every request starts now
    socket.sleep(0.6)                       -- every answer arrives meanwhile
    polls[1] = 1
    c:poll(0, 0)
    local first = 0
    for i = 1, n do if resumed_in[i] then first = first + 1 end end
    assert.is_true(first <= 2) -- a zero budget does the least it can: most answers wait
    assert.equals(0, c:timeout())    -- and a host loop is told to come back at once
    polls[1] = 2
    local deadline = fly.now() + 20
    while c:poll(0.05, 0) > 0 do
      polls[1] = polls[1] + 1
      assert(fly.now() < deadline, "the tasks did not finish")
    end
    local per_poll = {}
    for i = 1, n do
      assert.equals("done", tasks[i]:status())
      assert.equals(name, tasks[i]:result())
      local p = resumed_in[i]
      per_poll[p] = (per_poll[p] or 0) + 1
    end
    for p, k in pairs(per_poll) do
      assert(k <= 2, ("%d tasks resumed in poll %d with a zero budget"):format(k, p))
    end
    assert.is_true(polls[1] >= n / 4)
  end)

  it("resumes at most two tasks in a poll with a zero budget, and every kind of work still progresses", function()
    -- three kinds of work at once: tasks that yield on their own (ready again at every
    -- poll), answers to resume, and requests to start; each resume is a unit
    local n, stop, resumes = 12, false, 0
    for _ = 1, 3 do
      c:spawn(function()
        while not stop do
          resumes = resumes + 1
          coroutine.yield()
        end
      end)
    end
    local tasks = {}
    for i = 1, n do
      tasks[i] = c:spawn(function()
        resumes = resumes + 1
        for _ = 1, 2 do
          assert(c.apps:get(name))
          resumes = resumes + 1
        end
      end)
    end
    local deadline, polls = fly.now() + 20, 0
    local done
    repeat
      local before = resumes
      c:poll(0.01, 0)
      polls = polls + 1
      assert(resumes - before <= 2, ("%d tasks resumed in poll %d with a zero budget"):format(resumes - before, polls))
      done = true
      for i = 1, n do done = done and tasks[i]:status() == "done" end
      assert(fly.now() < deadline, "the requests starved")
    until done
    stop = true
    assert.is_true(c:run(10))
    for i = 1, n do assert.equals("done", tasks[i]:status()) end
  end)

  it("starts what is ready oldest first, a retried call at its first place", function()
    -- a call that got a 429 and three timers made after it, all due at once: with a zero
    -- budget the retry goes first, then the timers one by one, in the order they were made
    local starts, retried = {}, false
    local traced = H.client { trace = function(e)
      if e.kind == "start" then starts[#starts + 1] = e.call end
      if e.kind == "retry" then retried = true end
    end }
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 429, retry_after = 1, count = 1 }
    local first = traced:_submit("Apps_show", { app_name = name })
    local timers = {}
    for i = 1, 3 do timers[i] = traced:_timer(1.5) end -- made after the call: younger
    local deadline = fly.now() + 10
    while not retried do -- the call's first attempt got a 429: its retry waits a second
      traced:poll(0.01, math.huge)
      assert(fly.now() < deadline, "the call was not retried")
    end
    assert.same({ 1 }, starts)
    -- the retry went back to the queue while the timers waited in it: it takes its first place
    assert.is_false(timers[1]:done(), "the 429 came after the timers ended: nothing left to order")
    socket.sleep(math.max(first:_ready_at(), timers[3]:_ready_at()) - fly.now() + 0.05) -- all due
    traced:poll(0, 0) -- a zero budget: one or two units, the oldest first
    assert.same({ 1, 1 }, starts)
    repeat
      traced:poll(0.01, 0)
      for i = 2, 3 do
        assert(not timers[i]:done() or timers[i - 1]:done(), ("timer %d ended before timer %d"):format(i, i - 1))
      end
      assert(fly.now() < deadline, "the calls did not finish")
    until first:done() and timers[1]:done() and timers[2]:done() and timers[3]:done()
    assert.equals(name, first:success().name)
    traced:close()
  end)

  it("starves nothing: requests finish while other tasks keep the loop busy", function()
    local stop = false
    for _ = 1, 5 do
      c:spawn(function()
        local x = 0
        while not stop do
          for k = 1, 20000 do x = x + k end -- a slow task that yields after each slice
          coroutine.yield()
        end
      end)
    end
    local resumed_in, polls = {}, { 0 }
    local tasks = getters(10, resumed_in, polls)
    local deadline = fly.now() + 20
    local done
    repeat
      c:poll(0, 0)
      done = true
      for i = 1, 10 do done = done and tasks[i]:status() == "done" end
      assert(fly.now() < deadline, "the requests starved")
    until done
    stop = true
    assert.is_true(c:run(10))
    for i = 1, 10 do assert.equals(name, tasks[i]:result()) end
  end)

  it("keeps its default budget small and run() unlimited", function()
    assert.equals(0.0005, fly.POLL_BUDGET)
    local resumed_in, polls = {}, { 0 }
    local tasks = getters(20, resumed_in, polls)
    assert.is_true(c:run(20))
    for i = 1, 20 do assert.equals(name, tasks[i]:result()) end
    getters(5, resumed_in, polls)
    local deadline = fly.now() + 20
    while c:poll(0.05) > 0 do assert(fly.now() < deadline) end
  end)

  it("waits for the next rate-limit slot instead of spinning once libcurl's timer has run", function()
    -- five gets of one app from a fresh client: three go at once (each on a new connection), two
    -- wait about 1 s and 2 s for their slots
    local fresh = H.client { rate_limit = {} } -- paced, as by default
    local app = H.app(fresh) -- its connection is warm
    local tasks = {}
    for i = 1, 5 do tasks[i] = fresh:spawn(function() return assert(fresh.apps:get(app)).name end) end
    local polls, cpu0 = 0, os.clock()
    local deadline = fly.now() + 30
    while fresh:poll(0.5) > 0 do
      polls = polls + 1
      assert(fly.now() < deadline)
    end
    fresh:close()
    for i = 1, 5 do assert.equals(app, tasks[i]:result()) end
    -- a poll returns when something happened or its timeout ends: a few dozen, not 100,000s
    assert.is_true(polls < 200, ("%d polls, %.2f s of processor time"):format(polls, os.clock() - cpu0))
  end)

  it("waits its whole timeout when the client has nothing pending, as poll(2) does", function()
    local t0 = fly.now()
    assert.equals(0, c:poll(0.1))
    assert.is_true(fly.now() - t0 >= 0.09, "an idle poll(0.1) returned at once")
    t0 = fly.now()
    assert.equals(0, c:poll(0))
    assert.is_true(fly.now() - t0 < 5) -- generous: poll(0) never waits
  end)

  it("never leave an answer that came while its request started waiting", function()
    -- on a reused connection a quick server can answer before the step that
    -- starts the request returns: the step must take that answer, not wait on
    -- the sockets for something else
    local gets = 0
    local t = c:spawn(function()
      for _ = 1, 20 do
        assert(c.apps:get(name))
        gets = gets + 1
      end
    end)
    H.fault { method = "GET", path = "/v1/apps/slow-one", kind = "delay", delay = 1, count = 1 }
    local _, err = c.apps:get("slow-one") -- a plain call: drives the loop until it is done
    assert.equals(404, err.status)
    assert.equals(20, gets)
    assert.is_true(c:run(10))
    assert.equals("done", t:status())
  end)

  it("tell a host loop to come back at once only when work is left over", function()
    -- a task that sleeps 0.2 s at a time, next to a call whose answer does not come while
    -- the spec runs: a poll that resumes the task uses up a zero budget, but leaves nothing
    -- over (libcurl has nothing to hand out), so the host's next wake-up is the task's
    -- timer, not at once (0)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "delay", delay = 30, count = 1 }
    local slow = c:spawn(function() return assert(c.apps:get(name)).name end)
    local naps = 0
    local sleeper = c:spawn(function()
      for _ = 1, 3 do
        c:sleep(0.2)
        naps = naps + 1
      end
    end)
    local deadline = fly.now() + 10
    while naps < 3 do
      local before = naps
      c:poll(0, 0)
      if naps > before then -- this poll resumed the sleeper
        local t = c:timeout()
        if naps < 3 then assert.is_true(t > 0, t) end -- its next nap, about 0.2 s away
      else
        socket.sleep(0.01)
      end
      assert(fly.now() < deadline, "the sleeper did not wake three times in time")
    end
    assert.equals("done", sleeper:status())
    assert.equals("running", slow:status()) -- its answer has not come: nothing was left over
    slow:cancel()
  end)

  it("count the budget from the end of the wait #timing", function()
    -- twenty tasks wait for one that sleeps 0.3 s: they are all ready at the
    -- same moment, the end of the poll's wait
    local sleeper = c:spawn(function() c:sleep(0.3) end)
    local woke = 0
    for _ = 1, 20 do
      c:spawn(function()
        sleeper:join()
        woke = woke + 1
      end)
    end
    c:poll(0, math.huge) -- every task starts waiting
    local deadline = fly.now() + 5
    while woke == 0 do
      c:poll(2, 0.2) -- waits about 0.3 s, then has 0.2 s for 20 wake-ups
      assert(fly.now() < deadline)
    end
    assert.equals(20, woke)
  end)

  it("raise on a wrong budget", function()
    H.raises("budget must be a number", function() c:poll(0, "1") end)
    H.raises("budget must be >= 0", function() c:poll(0, -1) end)
    H.raises("budget must be a number %(got NaN%)", function() c:poll(0, 0 / 0) end)
    H.raises("poll: timeout must be a number %(got NaN%)", function() c:poll(0 / 0) end)
    H.raises("run: timeout must be a number %(got NaN%)", function() c:run(0 / 0) end)
    assert.equals(0, c:poll(0, math.huge))
    local default = fly.POLL_BUDGET
    for _, bad in ipairs { -1, "abc", 0 / 0 } do
      fly.POLL_BUDGET = bad
      local ok, err = pcall(c.poll, c, 0)
      fly.POLL_BUDGET = default
      assert.is_false(ok)
      assert.matches("fly: poll: fly.POLL_BUDGET must be a number >= 0", err, 1, true)
    end
    assert.equals(0, c:poll(0))
  end)
end)

describe("sockets", function()
  before_each(H.reset)

  it("name the descriptors libcurl waits on, and none when nothing runs", function()
    local c = H.client()
    local name = H.app(c)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "delay", delay = 0.3, count = 2 }
    for _ = 1, 2 do c:spawn(function() assert(c.apps:get(name)) end) end
    local seen = {}
    local deadline = fly.now() + 10
    while c:poll(0.02) > 0 do
      for fd, mode in pairs(c:sockets()) do
        assert.is_true(fd == math.floor(fd) and fd >= 0)
        assert.is_truthy(({ r = true, w = true, rw = true })[mode])
        seen[fd] = true
      end
      assert(fly.now() < deadline)
    end
    assert.is_not_nil(next(seen))
    c:close()
  end)

  -- Run in a child process whose descriptor limit allows more than FD_SETSIZE (1024):
  -- select-based fd sets cannot hold the numbers its connections get.
  it("wake a luv loop for connections numbered past 1024", function()
    local c = H.client()
    local name = H.app(c)
    c:close()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "delay", delay = 0.2, count = 4 }
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([=[
local fly, uv = require "fly", require "luv"
local URL, CA, NAME, TOKEN = ...
local held = {}
for i = 1, 1100 do held[i] = assert(io.open("/dev/null")) end
local c = assert(fly.new { token = TOKEN, base_url = URL, ca_file = CA ~= "" and CA or nil, rate_limit = false })
local results = {}
for i = 1, 4 do c:spawn(function() results[i] = assert(c.apps:get(NAME)).name end) end
local polls, timer, lowest, woken = {}, uv.new_timer(), math.huge, 0
local step
local function sync()
  for fd, p in pairs(polls) do p:stop(); p:close(); polls[fd] = nil end
  for fd, mode in pairs(c:sockets()) do
    if fd < lowest then lowest = fd end
    local p = uv.new_socket_poll(fd)
    polls[fd] = p
    p:start(mode, function() woken = woken + 1; step() end)
  end
  local t = c:timeout()
  timer:stop()
  if t then timer:start(math.max(1, math.ceil(t * 1000)), 0, function() step() end) end
end
step = function()
  if c:poll(0) == 0 then return uv.stop() end
  sync()
end
local guard = uv.new_timer()
guard:start(10000, 0, function() uv.stop() end)
step()
uv.run()
guard:close(); timer:close()
for _, p in pairs(polls) do p:close() end
uv.run("nowait")
print(table.concat(results, ","), lowest, woken)
]=])
    f:close()
    local lua = os.getenv("FLY_SPEC_LUA") or "lua5.4"
    local cmd = ("ulimit -n 4096 2>/dev/null || true; exec %s %s '%s' '%s' '%s' '%s' 2>&1"):format(
      lua, script, H.url(), H.ca_file() or "", name, H.TOKEN)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    os.remove(script)
    local names, lowest, woken = out:match("^(%S+)\t(%d+)\t(%d+)\n$")
    assert(names, out)
    assert.equals(("%s,%s,%s,%s"):format(name, name, name, name), names)
    assert.is_true(tonumber(lowest) >= 1024) -- every socket it waited on was past FD_SETSIZE
    assert.is_true(tonumber(woken) > 0)      -- and their events woke it
  end)
end)
