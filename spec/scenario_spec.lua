-- A user's whole workflow, written from the README alone, as it runs on every
-- Lua (`make test LUA=luajit`, `LUA=lua5.1`, …): an app, machines created and
-- awaited concurrently with map, an update under a lease, stop and start,
-- metadata, exec, faults on the way, destroy.
local H = require "helper"
local fly = require "fly"

describe("a whole workflow", function()
  before_each(H.reset)

  it("runs from app to destroy, with faults on the way", function()
    local client = H.client { retry = { attempts = 4, base = 0.01, cap = 0.05 } }
    local app = H.name("scenario")
    assert(client.apps:create { app_name = app, org_slug = "personal" })

    -- three machines, created and awaited at once; the server is slow to answer two creates
    H.fault { method = "POST", path = "/v1/apps/" .. app .. "/machines", kind = "delay", delay = 0.3, count = 2 }
    local names = { "web-1", "web-2", "web-3" }
    local machines, errors = client:map(names, function(name)
      local m, err = client.machines:create(app, { name = name, config = { image = "nginx",
        env = { ROLE = name } } })
      if not m then return nil, err end
      local state, werr = m:wait("started", { timeout = 30 })
      if not state then return nil, werr end
      return m
    end)
    assert.same({}, errors)
    assert.equals(2, H.stats().faults_applied)
    assert.equals(3, #machines)
    for i, m in ipairs(machines) do assert.equals(names[i], m.name) end

    -- an update under a lease, then a wait for the new version
    local m = machines[1]
    local version = assert(m:with_lease({ ttl = 10 }, function(leased)
      local config = {}
      for k, v in pairs(leased.config) do config[k] = v end
      config.env = { ROLE = "leader" }
      local updated, err = leased:update(config)
      if not updated then return nil, err end
      return updated.instance_id
    end))
    assert.equals("started", (client.machines:wait(app, m.id, { state = "started", version = version,
      timeout = 30 })))
    assert(m:refresh())
    assert.equals("leader", m.config.env.ROLE)
    assert.is_nil((m:get_lease()))

    -- stop and start, with a dropped connection on a get on the way (a safe call: retried)
    assert(m:stop())
    assert.equals("stopped", (m:wait("stopped", { timeout = 30 })))
    H.fault { method = "GET", path = "/v1/apps/" .. app .. "/machines/" .. m.id, kind = "close", count = 1 }
    H.fault { method = "GET", path = "/v1/apps/" .. app .. "/machines/" .. m.id, kind = "status", status = 503,
      count = 1 }
    assert.equals("stopped", assert(client.machines:get(app, m.id)).state)
    assert.equals(4, H.stats().faults_applied)
    assert(m:start())
    assert.equals("started", (m:wait("started", { timeout = 30 })))

    -- metadata
    assert(m:set_metadata("tier", "gold"))
    assert.equals("gold", m:get_metadata_key("tier"))
    assert.equals("gold", assert(m:get_metadata()).tier)

    -- exec
    local out = assert(m:exec({ "echo", "hello" }))
    assert.equals("hello", (out.stdout:gsub("%s+$", "")))
    assert.equals(0, out.exit_code)

    -- a call not safe to repeat (restart), answered ambiguously, is not repeated
    H.fault { method = "POST", path = "/v1/apps/" .. app .. "/machines/" .. machines[2].id .. "/restart",
      kind = "close_after", count = 1 }
    local ok, err = machines[2]:restart()
    assert.is_nil(ok)
    assert.is_false(err.retryable)
    assert.equals(5, H.stats().faults_applied)
    assert.equals(1, H.stats().executed.Machines_restart) -- sent once
    assert.equals("started", (machines[2]:wait("started", { timeout = 30, version = false })))

    -- destroy everything, waiting concurrently
    local _, derrs = client:map(machines, function(machine)
      local done, e = machine:destroy { force = true }
      if not done then return nil, e end
      return machine:wait("destroyed", { timeout = 30 })
    end)
    assert.same({}, derrs)
    assert(client.apps:destroy(app))
    local gone, gerr = client.apps:get(app)
    assert.is_nil(gone)
    assert.equals(404, gerr.status)
    assert.is_true(fly.Error.is(gerr))
    client:close()
  end)
end)
