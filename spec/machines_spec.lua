-- client.machines and Machine objects: every operation, objects, arguments.
local H = require "helper"
local fly = require "fly"
local json = require "fly.json"
local cjson = require "cjson"

local function uri() return H.stats().last_request.uri end

describe("client.machines", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  local function new_machine(body)
    local m = assert(c.machines:create(app, body or { config = { image = "nginx" } }))
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    return m
  end

  it("maps a method to every Machines operation", function()
    local ops = c.machines.operations
    local seen = {}
    for method, id in pairs(ops) do
      assert.is_function(c.machines[method], method)
      seen[id] = true
    end
    local n = 0
    for _, op in ipairs(fly.operations()) do
      if op.tag == "Machines" then
        n = n + 1
        assert.is_true(seen[op.id] == true, op.id)
      end
    end
    assert.equals(29, n)
  end)

  it("creates a machine and returns a Machine object with plain fields", function()
    local m = assert(c.machines:create(app, { config = { image = "nginx", env = { A = "1" } }, region = "ams" }))
    assert.equals("fly.Machine", getmetatable(m).__name)
    assert.is_string(m.id)
    assert.equals("ams", m.region)
    assert.equals(256, m.config.guest.memory_mb)
    assert.equals("1", m.config.env.A)
    assert.equals(app, m:app())
    assert.is_nil(m:lease_nonce())
    assert.matches("^fly%.Machine{" .. m.id .. "}$", tostring(m))
    assert.is_nil(rawget(m, "start"))
  end)

  it("encodes a Machine back to the same JSON", function()
    local m = assert(c.machines:get(app, new_machine().id))
    local raw = assert(c:call("Machines_show", { app_name = app, machine_id = m.id }))
    assert.is_nil(getmetatable(raw))
    assert.same(cjson.decode(json.encode(raw)), cjson.decode(json.encode(m)))
    local text = json.encode(m)
    assert.is_nil(text:find("with_lease", 1, true))
  end)

  it("gets a machine, with leases on request", function()
    local m = new_machine()
    local got = assert(c.machines:get(app, m.id))
    assert.equals(m.id, got.id)
    assert.equals("started", got.state)
    assert.equals("fly.Machine", getmetatable(got).__name)
    local lease = assert(m:acquire_lease { ttl = 10, description = "spec" })
    got = assert(c.machines:get(app, m.id, { include_leases = true }))
    assert.matches("include_leases=true", uri())
    assert.equals("spec", got.lease.description)
    assert(m:release_lease(lease.nonce))
  end)

  it("answers nil, err for a machine that does not exist", function()
    local m, err = c.machines:get(app, "nope")
    assert.is_nil(m)
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
    assert.equals("Machines_show", err.operation)
  end)

  it("lists machines with filters, as Machine objects", function()
    local a = new_machine { config = { image = "nginx", metadata = { role = "web" } }, region = "ams" }
    local b = new_machine { config = { image = "nginx", metadata = { role = "worker" } }, region = "ord" }
    local all = assert(c.machines:list(app))
    assert.equals(2, #all)
    assert.equals("fly.Machine", getmetatable(all[1]).__name)
    local web = assert(c.machines:list(app, { metadata = { role = "web" } }))
    assert.equals(1, #web)
    assert.equals(a.id, web[1].id)
    assert.matches("metadata%.role=web", uri())
    local ord = assert(c.machines:list(app, { region = "ord", state = "started", summary = true }))
    assert.equals(1, #ord)
    assert.equals(b.id, ord[1].id)
    assert.is_nil(ord[1].config)
    assert.matches("region=ord", uri())
    assert.matches("summary=true", uri())
    assert(b:destroy { force = true })
    assert.equals("destroyed", (b:wait("destroyed", { timeout = 10 })))
    assert.equals(1, #assert(c.machines:list(app)))
    assert.equals(2, #assert(c.machines:list(app, { include_deleted = true, include_leases = true })))
    -- list results have working methods
    assert.equals(a.id, assert(c.machines:list(app))[1]:refresh().id)
  end)

  it("updates a machine through the namespace and through the object", function()
    local m = new_machine()
    local v1 = m.instance_id
    local u = assert(c.machines:update(app, m.id, { config = { image = "nginx", env = { X = "1" } } }))
    assert.equals("fly.Machine", getmetatable(u).__name)
    assert.are_not.equal(v1, u.instance_id)
    assert.equals("1", u.config.env.X)
    -- a config table is sent as { config = … }; the object takes the new fields
    local same = assert(m:update { image = "nginx", env = { Y = "2" } })
    assert.equals(m, same)
    assert.equals("2", m.config.env.Y)
    assert.is_nil(m.config.env.X)
    assert.are_not.equal(u.instance_id, m.instance_id)
    -- a table with `config` is the whole request
    local res, err = m:update { config = { image = "nginx" }, current_version = "not-the-version" }
    assert.is_nil(res)
    assert.equals(412, err.status)
    assert.equals("started", (m:wait("started", { timeout = 10 })))
  end)

  it("sends a stop timeout in seconds as a Go duration, in plain decimals", function()
    local bodies = {}
    local t = H.client { trace_bodies = true,
      trace = function(e) if e.kind == "start" then bodies[#bodies + 1] = e.body end end }
    local m = new_machine()
    for _, case in ipairs { { 30, "30s" }, { 0.5, "0.5s" }, { 1e6, "1000000s" }, { 2.5e-5, "0.000025s" },
                            { "1m30s", "1m30s" } } do
      bodies = {}
      assert(t.machines:stop(app, m.id, { timeout = case[1] }))
      assert.equals(case[2], require("fly.json").decode(bodies[1]).timeout)
      assert.equals("stopped", (m:wait("stopped", { timeout = 10 })))
      assert(t.machines:start(app, m.id))
      assert.equals("started", (m:wait("started", { timeout = 10 })))
    end
    -- NaN and the infinities have no duration: nothing is sent
    local sent = H.stats().requests
    for _, v in ipairs { 0 / 0, math.huge, -math.huge } do
      H.raises("machines:stop: opts.timeout must be a finite number of seconds %(got ",
        function() t.machines:stop(app, m.id, { timeout = v }) end)
      H.raises("Machines_restart: parameter 'timeout' must be a finite number %(got ",
        function() t.machines:restart(app, m.id, { timeout = v }) end)
    end
    assert.same(sent, H.stats().requests)
    -- a wait's own times: a negative or NaN one is a mistake, not an instant timeout
    H.raises("machines:wait: opts.timeout must be a number >= 0 %(got NaN%)",
      function() t.machines:wait(app, m.id, { timeout = 0 / 0 }) end)
    H.raises("machine:wait: opts.timeout must be a number >= 0 %(got %-1%)",
      function() m:wait("started", { timeout = -1 }) end)
    H.raises("machines:wait: opts.not_found_grace must be a number >= 0 %(got NaN%)",
      function() t.machines:wait(app, m.id, { not_found_grace = 0 / 0 }) end)
    t:close()
  end)

  it("stops (always with a JSON body), starts, restarts, suspends", function()
    local m = new_machine()
    assert(c.machines:stop(app, m.id))
    assert.equals("application/json", H.stats().last_request.headers["content-type"])
    assert.equals("stopped", (m:wait("stopped", { timeout = 10 })))
    assert(c.machines:start(app, m.id))
    local sent = H.stats().last_request
    assert.matches("/start$", sent.uri)
    assert.is_nil(sent.headers["content-type"]) -- no body, no type (libcurl would give a form's)
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    assert(m:stop { signal = "SIGTERM", timeout = 5 })
    assert.equals("stopped", (m:wait("stopped", { timeout = 10 })))
    assert(m:start())
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    local res, err = m:stop { signal = "SIGNOPE" }
    assert.is_nil(res)
    assert.equals(400, err.status)
    assert(c.machines:restart(app, m.id, { signal = "SIGTERM", timeout = 3 }))
    assert.matches("/restart%?timeout=3&signal=SIGTERM$", uri())
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    assert(m:restart())
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    assert(m:suspend())
    assert.equals("suspended", (m:wait("suspended", { timeout = 10 })))
    assert(c.machines:start(app, m.id))
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    assert(c.machines:suspend(app, m.id))
    assert.equals("suspended", (m:wait("suspended", { timeout = 10 })))
  end)

  it("sends signals", function()
    local m = new_machine()
    assert(c.machines:signal(app, m.id, "SIGUSR1"))
    assert.equals("started", m:refresh().state)
    assert(m:signal("SIGKILL"))
    assert.equals("stopped", (m:wait("stopped", { timeout = 10 })))
  end)

  it("cordons and uncordons", function()
    local m = new_machine()
    assert(c.machines:cordon(app, m.id))
    assert.is_true(m:refresh().cordoned)
    assert(m:uncordon())
    assert.is_false(m:refresh().cordoned)
    assert(m:cordon())
    assert.is_true(m:refresh().cordoned)
    assert(c.machines:uncordon(app, m.id))
    assert.is_false(m:refresh().cordoned)
  end)

  it("destroys: a running machine only with force", function()
    local m = new_machine()
    local res, err = m:destroy()
    assert.is_nil(res)
    assert.equals(412, err.status)
    assert(c.machines:destroy(app, m.id, { force = true }))
    assert.matches("force=true", uri())
    assert.equals("destroyed", (m:wait("destroyed", { timeout = 10 })))
    local other = new_machine()
    assert(other:stop())
    assert.equals("stopped", (other:wait("stopped", { timeout = 10 })))
    assert(other:destroy())
    assert.equals("destroyed", (c.machines:wait(app, other.id, { state = "destroyed", timeout = 10 })))
    local gone, gerr = other:refresh()
    assert.is_nil(gone)
    assert.equals(404, gerr.status)
  end)

  it("refreshes an object in place", function()
    local m = new_machine()
    assert(c.machines:stop(app, m.id))
    c.machines:wait(app, m.id, { state = "stopped", timeout = 10 })
    assert.equals("started", m.state)
    assert.equals(m, m:refresh())
    assert.equals("stopped", m.state)
  end)

  it("lists events, processes and versions", function()
    local m = new_machine()
    local events = assert(c.machines:list_events(app, m.id, { limit = 2 }))
    assert.equals(2, #events)
    assert.matches("limit=2", uri())
    assert.equals("started", events[1].status)
    assert.is_true(#assert(m:list_events()) >= 3)
    local ps = assert(c.machines:list_processes(app, m.id, { sort_by = "rss", order = "desc" }))
    assert.is_true(#ps > 1)
    assert.is_true(ps[1].rss >= ps[2].rss)
    assert.matches("sort_by=rss&order=desc", uri())
    assert.equals(1, assert(m:list_processes())[1].pid)
    assert(m:update { image = "nginx:2" })
    local versions = assert(c.machines:list_versions(app, m.id))
    assert.equals(2, #versions)
    assert.equals(m.instance_id, versions[1].version)
    assert.equals(2, #assert(m:list_versions()))
  end)

  it("runs commands: a string under sh -c, an array, or a whole request", function()
    local m = new_machine { config = { image = "nginx", env = { GREETING = "hi" } } }
    local r = assert(c.machines:exec(app, m.id, "echo hello"))
    assert.equals("hello\n", r.stdout)
    assert.equals(0, r.exit_code)
    r = assert(m:exec { "echo", "a", "b" })
    assert.equals("a b\n", r.stdout)
    r = assert(m:exec { command = { "cat" }, stdin = "piped", timeout = 5 })
    assert.equals("piped", r.stdout)
    r = assert(m:exec "exit 3")
    assert.equals(3, r.exit_code)
    r = assert(m:exec "hostname")
    assert.equals(m.id .. "\n", r.stdout)
    assert.has_error(function() m:exec {} end, "fly: machine:exec: command must not be empty")
    assert.has_error(function() c.machines:exec(app, m.id, {}) end, "fly: machines:exec: command must not be empty")
  end)

  it("is reachable by operationId through client:call", function()
    local m = new_machine()
    local raw = assert(c:call("Machines_list", { app_name = app }))
    assert.equals(m.id, raw[1].id)
    assert(c:call("Machines_stop", { app_name = app, machine_id = m.id }))
    assert.equals("stopped", (m:wait("stopped", { timeout = 10 })))
  end)

  it("raises programmer errors at the caller's line", function()
    local m = new_machine()
    local cases = {
      function() c.machines:get(nil, "x") end,
      function() c.machines:get(app, 42) end,
      function() c.machines:list(42) end,
      function() c.machines:list(app, { bogus = true }) end,
      function() c.machines:create(app, "x") end,
      function() c.machines:start(app, m.id, { bogus = 1 }) end,
      function() c.machines:stop(app, m.id, "now") end,
      function() c.machines:signal(app, m.id, 9) end,
      function() c.machines:wait(app, m.id, { states = 3 }) end,
      function() c.machines:wait(app, m.id, { bogus = 1 }) end,
      function() c.machines:set_metadata(app, m.id, "k", 1) end,
      function() c.machines:refresh_lease(app, m.id, nil) end,
      function() c.machines:with_lease(app, m.id, {}, "not a function") end,
      function() m:signal(42) end,
      function() m:update("nginx") end,
      function() m:exec(42) end,
      function() m:wait("started", { bogus = 1 }) end,
      function() m:set_memory_limit("lots") end,
      function() m:with_lease({ ttl = "x" }, function() end) end,
      function() m.start({}) end,
      function() m:start { bogus = 1 } end,
      function() m:stop { signal = 9 } end,
      function() m:set_metadata("k") end,
      function() m:refresh_lease(nil) end,
    }
    for i, f in ipairs(cases) do
      local ok, err = pcall(f)
      assert.is_false(ok, "case " .. i)
      assert.matches("machines_spec%.lua:%d+: fly: ", err, 1, false, "case " .. i)
    end
  end)

  it("names the method, the argument and what was wrong, in both forms", function()
    local m = new_machine()
    local before = H.stats().total
    H.raises("machines_spec%.lua:%d+: fly: machines:start: id must be a string %(got number%)$",
      function() c.machines:start(app, 42) end)
    H.raises("machines_spec%.lua:%d+: fly: machine:start: unknown option 'bogus'$",
      function() m:start { bogus = 1 } end)
    H.raises("machines_spec%.lua:%d+: fly: machines:stop: opts%.signal must be a string %(got number%)$",
      function() c.machines:stop(app, m.id, { signal = 9 }) end)
    H.raises("machines_spec%.lua:%d+: fly: machine:set_metadata: value must be a string %(got nil%)$",
      function() m:set_metadata("k") end)
    H.raises("machines_spec%.lua:%d+: fly: machine:exec: command must be a string or a table %(got number%)$",
      function() m:exec(42) end)
    H.raises("machines_spec%.lua:%d+: fly: machines:with_lease: fn must be a function %(got string%)$",
      function() c.machines:with_lease(app, m.id, nil, "x") end)
    H.raises("machines_spec%.lua:%d+: fly: machine:wait: opts%.timeout must be a number %(got string%)$",
      function() m:wait("started", { timeout = "soon" }) end)
    H.raises("machines_spec%.lua:%d+: fly: machines:list: unknown parameter 'bogus' %(it takes include_deleted, ",
      function() c.machines:list(app, { bogus = true }) end)
    assert.equals(before, H.stats().total) -- nothing was sent
  end)

  it("keeps object bindings in the client's own state, collected with the client", function()
    local id = new_machine().id
    -- in a coroutine of its own, so that no stale stack slot keeps the client alive (LuaJIT)
    local function use_and_drop()
      local other = H.client()
      local m = assert(other.machines:get(app, id))
      local bindings = other:_state().bindings
      assert.equals(getmetatable(m), bindings[getmetatable(m).class][app])
      other:close()
      return setmetatable({ other, m }, { __mode = "v" })
    end
    local probe = coroutine.wrap(use_and_drop)()
    collectgarbage()
    collectgarbage()
    assert.is_nil(probe[1])
    assert.is_nil(probe[2])
  end)
end)
