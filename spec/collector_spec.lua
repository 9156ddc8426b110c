-- The Lua collector and a blocking call: the collection a call would soon
-- need is done while the call waits for the server, never when the program
-- stopped the collector, and finalizers that run there may use the client.
local H = require "helper"
local core = require "fly.core"

local submit, wait = core.Client._submit, core.Client._wait
local success, result = core.request_mt.methods.success, core.request_mt.methods.result

-- Lua 5.4 takes a collector step as a hint (LUA_GCSTEP with a size steps only when one is
-- due that soon); the step of 5.1, 5.2 and LuaJIT always works, and 5.3's incremental steps
-- come several a call: the client hints only on 5.4.
local hints = _VERSION == "Lua 5.4" and not rawget(_G, "jit")

local newproxy = rawget(_G, "newproxy") -- Lua 5.1 and LuaJIT, whose tables take no __gc

-- Makes garbage that runs `fn` when it is collected.
local function finalized(fn)
  if newproxy then
    getmetatable(newproxy(true)).__gc = fn
  else
    setmetatable({}, { __gc = fn })
  end
end

-- A busy collector, whatever the run's heap: on Lua 5.4 a young collection at each 1% of
-- growth (every few calls), elsewhere incremental cycles that begin as the last one ends;
-- returns what puts the previous settings back.
local function busy_collector()
  if _VERSION == "Lua 5.4" then
    local mode = collectgarbage("incremental") -- a fresh generational state (no "bad collection" mode)
    collectgarbage("generational", 1, 100)
    collectgarbage("step") -- a young collection, which sets when the next is due (entering does not)
    return function()
      collectgarbage("generational", 20, 100) -- Lua's defaults
      collectgarbage(mode)
    end
  end
  local pause = collectgarbage("setpause", 100)
  return function() collectgarbage("setpause", pause) end
end

describe("the collector during a blocking call", function()
  local c, name, restore
  before_each(function()
    H.reset()
    c = H.client()
    name = H.app(c)
    restore = busy_collector()
  end)
  after_each(function()
    collectgarbage("restart")
    restore()
    c:close()
  end)

  -- Makes `n` calls to Apps_show, each with a finalizer made garbage just before it
  -- waits, and counts in `seen` the finalizers that ran while a request was in flight
  -- (`during`) and the others (`after`, also those that run later); `probe(req)` runs in
  -- each finalizer with the request then in flight (nil when none is).
  local function calls(n, seen, probe)
    local current
    for _ = 1, n do
      if c:is_closed() then break end
      local req = submit(c, "Apps_show", { app_name = name })
      finalized(function()
        if current and not current:done() then seen.during = seen.during + 1 else seen.after = seen.after + 1 end
        if probe then probe(current) end
      end)
      current = req
      wait(c, req)
      current = nil
      if not c:is_closed() then assert(success(req)) end
      -- (a request cut off by close is cancelled: the spec that closes looks at it)
    end
    return seen
  end
  local function counts() return { during = 0, after = 0 } end
  -- Every call waits for its answer (5 ms late): however slow this process or quick the
  -- emulator, no answer is there before the call has begun to wait for it.
  local function late_answers() H.fault { op = "Apps_show", kind = "delay", delay = 0.005, count = 100000 } end

  it("collects while the call waits for the server, not after the answer (Lua 5.4)", function()
    if not hints then return pending("the client gives the collector hints on Lua 5.4 only") end
    late_answers()
    local seen = calls(200, counts())
    local during, after = seen.during, seen.after
    -- the calls make garbage at a steady rate: once the client has seen one call's worth,
    -- every collection that falls due comes in a wait
    assert.is_true(during > 0, "no finalizer ran during a wait")
    assert.is_true(during > 4 * after, ("%d finalizers ran during a wait, %d after"):format(during, after))
  end)

  it("leaves a stopped collector stopped", function()
    calls(50, counts()) -- the client has seen calls: a step would be hinted if the collector ran
    collectgarbage("collect")
    collectgarbage("stop")
    local seen = calls(300, counts())
    assert.same({ during = 0, after = 0 }, seen)
    collectgarbage("restart")
    collectgarbage("collect")
    collectgarbage("collect")
    assert.same({ during = 0, after = 300 }, seen) -- they were garbage all along
  end)

  it("lets a finalizer that runs during the wait close the client: the call is cancelled", function()
    if not hints then return pending("the client gives the collector hints on Lua 5.4 only") end
    late_answers()
    local closed_in
    calls(200, counts(), function(req)
      if req and not closed_in then
        closed_in = req
        c:close()
      end
    end)
    assert.is_not_nil(closed_in, "no finalizer ran during a wait")
    assert.is_true(closed_in:done())
    assert.is_nil(success(closed_in))
    assert.equals("cancelled", result(closed_in).code)
    assert.is_true(c:is_closed())
  end)

  it("lets a finalizer that runs during the wait make a call on the same client", function()
    if not hints then return pending("the client gives the collector hints on Lua 5.4 only") end
    late_answers()
    local nested = 0
    local during = calls(200, counts(), function(req)
      if req and nested < 5 then
        nested = nested + 1
        local app = assert(c.apps:get(name))
        assert(app.name == name)
      end
    end).during
    assert.is_true(during > 0, "no finalizer ran during a wait")
    assert.equals(5, nested)
    assert.is_truthy(c.apps:get(name))
  end)
end)

-- Every table reachable from `v`, each once; raises when one is reached twice.
local function tables_of(v, seen)
  seen = seen or {}
  if type(v) ~= "table" then return seen end
  assert(not seen[v], "a table is reached twice")
  seen[v] = true
  for _, x in pairs(v) do tables_of(x, seen) end
  return seen
end

describe("tables made while a call waits", function()
  local c, app, id
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
    local m = assert(c.machines:create(app, {
      config = {
        image = "nginx", env = { A = "1", B = "2" }, guest = { cpus = 1, memory_mb = 256, cpu_kind = "shared" },
        services = { { protocol = "tcp", internal_port = 8080, ports = { { port = 80 }, { port = 443 } } } },
      },
      region = "ams",
    }))
    assert.equals("started", (m:wait("started", { timeout = 10 }))) -- it changes no more
    id = m.id
  end)
  after_each(function() c:close() end)

  -- The Machine as the emulator sends it, decoded by lua-cjson: what each result must equal.
  local function truth()
    local http, ltn12, cjson = require "socket.http", require "ltn12", require "cjson"
    local out = {}
    local _, status = http.request {
      url = ("%s/v1/apps/%s/machines/%s"):format(H.plain_url(), app, id), sink = ltn12.sink.table(out),
      headers = { authorization = "Bearer " .. H.TOKEN },
    }
    assert(status == 200, "the emulator did not answer")
    return cjson.decode(table.concat(out))
  end

  it("go to one result each: no table is in two results, and each holds its own members", function()
    local all, results = {}, {}
    for i = 1, 60 do
      local m = assert(c.machines:get(app, id))
      for t in pairs(tables_of(m)) do
        assert(not all[t], "a table is in two results")
        all[t] = i
      end
      results[i] = m
    end
    local want = truth()
    for i = 1, 60 do assert.same(want, results[i]) end
  end)

  it("make arrays that hold exactly their elements, with room to spare or not", function()
    local json = require "fly.json"
    -- every array in v: its length is its count of elements, nothing follows the last, and an
    -- element appended goes right after it
    local function check_arrays(v)
      if type(v) ~= "table" then return end
      local n = 0
      for _, x in pairs(v) do
        n = n + 1
        check_arrays(x)
      end
      if json.is_array(v) then
        assert.equals(n, #v)
        assert.is_nil(v[n + 1])
        v[n + 1] = "more"
        assert.equals(n + 1, #v)
        v[n + 1] = nil
        assert.equals(n, #v)
      end
    end
    local shapes = { "[1,2,3]", "[[1],[2,3],[4,5,6],[7,8,9,10,11]]", '[{"a":[true]},["x","y","z"],[]]' }
    for _, text in ipairs(shapes) do
      json.decode(text) -- the next wait makes tables of these sizes ahead
      for _ = 1, 3 do
        assert.truthy(c.apps:get(app)) -- a blocking call: its wait makes them
        local v = json.decode(text)     -- takes what the App's decode left
        assert.equals(text, json.encode(v))
        check_arrays(v)
      end
    end
  end)

  it("go to one result each also when a finalizer decodes during the wait", function()
    local json = require "fly.json"
    local mine, theirs = {}, {}
    local restore = busy_collector()
    local ok, err = pcall(function()
      -- (Lua 5.1 and LuaJIT take no hints: their cycles come when they come)
      for i = 1, 3000 do
        if #theirs >= 3 then break end
        finalized(function()
          theirs[#theirs + 1] = json.decode('{"a":{"b":1,"c":{"d":[{"e":1,"f":2}]}},"g":{"h":"i"}}')
        end)
        mine[i] = assert(c.machines:get(app, id))
      end
    end)
    restore()
    assert(ok, err)
    assert.is_true(#theirs > 0, "no finalizer ran")
    local all, want = {}, truth()
    for _, v in ipairs(mine) do
      assert.same(want, v)
      tables_of(v, all)
    end
    for _, v in ipairs(theirs) do
      assert.equals(1, v.a.c.d[1].e)
      assert.equals("i", v.g.h)
      tables_of(v, all)
    end
  end)
end)
