-- Waiting for machine states: the long-poll loop, its timeouts, 408, 404 and versions.
local H = require "helper"
local fly = require "fly"

local function last_uri() return H.stats().last_request.uri end

describe("machines:wait", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  local function started()
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    assert.equals("started", (m:wait("started", { timeout = 10 })))
    return m
  end

  it("returns the state reached and the version", function()
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local state, version = c.machines:wait(app, m.id, { state = "started", timeout = 10 })
    assert.equals("started", state)
    assert.equals(m.instance_id, version)
    -- the default state is "started"
    state, version = c.machines:wait(app, m.id)
    assert.equals("started", state)
    assert.equals(m.instance_id, version)
  end)

  it("passes the machine's version from an object, and opts.version / from_event_id as given", function()
    local m = started()
    assert.equals("started", (m:wait()))
    assert.matches("version=" .. m.instance_id, last_uri())
    assert.equals("started", (m:wait("started", { version = false })))
    assert.is_nil(last_uri():find("version=", 1, true))
    local events = assert(m:list_events())
    assert(m:stop())
    local state = c.machines:wait(app, m.id, { state = "stopped", from_event_id = events[1].id, timeout = 10 })
    assert.equals("stopped", state)
    assert.matches("from_event_id=" .. events[1].id, last_uri())
  end)

  it("sends an integer server timeout of at most 60 s and never beyond the time left", function()
    local m = started()
    assert.equals("started", (c.machines:wait(app, m.id, { timeout = 500 })))
    assert.matches("timeout=60", last_uri())
    assert.equals("started", (c.machines:wait(app, m.id, { timeout = 2.5 })))
    assert.matches("timeout=3", last_uri())
    assert.equals("started", (c.machines:wait(app, m.id, { timeout = 0.2 })))
    assert.matches("timeout=1", last_uri())
  end)

  it("keeps waiting after 408 until the state is reached", function()
    H.config { wait_max = 0.3, delays = { start = 1.2 } }
    local m = assert(c.machines:create(app, { config = { image = "nginx" }, skip_launch = true }))
    assert(m:start())
    local state = m:wait("started", { timeout = 20 })
    assert.equals("started", state)
    local stats = H.stats()
    assert.is_true(stats.requests.Machines_wait >= 2)
    assert.is_true((stats.statuses["408"] or 0) >= 1)
  end)

  it("sets each request's HTTP timeout above the long-poll's", function()
    local slow = H.client { timeout = 1 }
    H.config { delays = { start = 2 } }
    local m = assert(slow.machines:create(app, { config = { image = "nginx" }, skip_launch = true }))
    assert(m:start())
    assert.equals("started", (m:wait("started", { timeout = 15 })))
    assert.equals(1, H.stats().requests.Machines_wait)
    slow:close()
  end)

  it("ends with a timeout error carrying the last state seen", function()
    H.config { delays = { stop = 30 } }
    local m = started()
    assert(m:stop())
    local t0 = fly.now()
    local state, err = m:wait("stopped", { timeout = 1.5 })
    local took = fly.now() - t0
    assert.is_nil(state)
    assert.is_true(fly.Error.is(err))
    assert.equals("timeout", err.code)
    assert.equals("stopping", err.state)
    assert.matches("did not reach stopped", err.message)
    assert.is_nil(err.cause) -- the deadline ended the last poll: no failure to report
    assert.is_nil(err.message:find("last error", 1, true))
    assert.is_true(took >= 1.5)
    assert.is_true(took < 1.5 + 5)  -- generous: the deadline is honoured, not the speed
  end)

  it("masks the client's credentials in the state and version its errors quote from the server", function()
    local secret = "wait-secret-token-0123456789"
    H.config { token = secret }
    local sc = H.client { token = secret, rate_limit = false }
    local m = assert(sc.machines:create(app, { config = { image = "nginx" } }))
    -- the server answers the machine's state and version with the token; its waits never end
    H.fault { op = "Machines_show", status = 200, count = 0,
      body = { id = m.id, state = secret, instance_id = "01" .. secret } }
    H.fault { op = "Machines_wait", status = 408, count = 0, body = { error = "not yet" } }
    local state, err = sc.machines:wait(app, m.id, { state = "started", timeout = 1, version = "01AAAA" })
    sc:close()
    assert.is_nil(state)
    for _, text in ipairs { err.message, tostring(err), tostring(err.state), tostring(err.version) } do
      assert.is_nil(text:find("secret-token", 1, true), text)
    end
  end)

  it("accepts several target states", function()
    local m = started()
    assert(m:stop())
    local state = m:wait({ "suspended", "stopped" }, { timeout = 10 })
    assert.equals("stopped", state)
    assert.matches("state=suspended&state=stopped", last_uri())
    assert.equals("stopped", (c.machines:wait(app, m.id, { states = { "failed", "stopped" }, timeout = 10 })))
  end)

  it("tolerates 404 for a while after create", function()
    H.config { wait_404_after_create = 1 }
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local state = m:wait("started", { timeout = 10 })
    assert.equals("started", state)
    assert.is_true((H.stats().statuses["404"] or 0) >= 1)
  end)

  it("gives up on 404 once the grace period is over", function()
    H.config { wait_404_after_create = 30 }
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    local state, err = m:wait("started", { timeout = 10, not_found_grace = 0.5 })
    assert.is_nil(state)
    assert.equals(404, err.status)
    local _, err2 = c.machines:wait(app, "no-such-machine", { timeout = 10, not_found_grace = 0.2 })
    assert.equals(404, err2.status)
  end)

  it("treats 404 as success when waiting for destroyed", function()
    local m = started()
    assert(m:destroy { force = true })
    assert.equals("destroyed", (m:wait("destroyed", { timeout = 10 })))
    -- the machine is gone for good: still success
    assert.equals("destroyed", (c.machines:wait(app, m.id, { state = "destroyed", timeout = 5 })))
    assert.is_true((H.stats().statuses["404"] or 0) >= 1)
  end)

  it("returns errors that waiting again cannot change at once", function()
    local m = started()
    local before = H.stats().requests.Machines_wait
    H.fault { op = "Machines_wait", kind = "status", status = 400, count = 1 }
    local state, err = m:wait("started", { timeout = 10 })
    assert.is_nil(state)
    assert.equals(400, err.status)
    assert.equals(before + 1, H.stats().requests.Machines_wait)
  end)

  it("retries transient failures within its deadline: 5xx, a proxy's 408, a dropped connection", function()
    local m = started()
    local before = H.stats().requests.Machines_wait
    -- more 502s in a row than one call's own attempts, then a proxy's 408 (not the API's JSON
    -- error), then a connection closed without an answer
    H.fault { op = "Machines_wait", kind = "status", status = 502, count = 6 }
    H.fault { op = "Machines_wait", kind = "status", status = 408, body = "proxy timeout", count = 1 }
    H.fault { op = "Machines_wait", kind = "close", count = 1 }
    local state, version = m:wait("started", { timeout = 60 })
    assert.equals("started", state)
    assert.equals(m.instance_id, version)
    assert.equals(before + 9, H.stats().requests.Machines_wait)
  end)

  it("ends a wait whose failures persist with a timeout carrying the last failure", function()
    local m = started()
    H.fault { op = "Machines_wait", kind = "status", status = 503, count = 0 }
    local t0 = fly.now()
    local state, err = m:wait("stopped", { timeout = 1.5 })
    local took = fly.now() - t0
    assert.is_nil(state)
    assert.equals("timeout", err.code)
    assert.equals("started", err.state)
    assert.equals(503, err.cause.status)
    assert.matches("last error: fly: 503", err.message)
    assert.is_true(took >= 1.5 - 0.05 and took < 1.5 + 5, "took " .. took)
    -- the machine in the state waited for when the time is up: that is the answer
    state = assert(m:wait("started", { timeout = 0.5 }))
    assert.equals("started", state)
  end)

  it("reads the machine by WAIT_READ_GRACE past its deadline, whatever the client's timeout", function()
    local m = started()
    -- the API's 408 at once, so a wait scoped to a version reads the machine after each one,
    -- and a read that takes 30 s (the client's timeout is 10 s)
    H.fault { op = "Machines_wait", kind = "status", status = 408, count = 0 }
    H.fault { op = "Machines_show", kind = "delay", delay = 30, count = 0 }
    local Machines = require "fly.machines"
    local grace = Machines.WAIT_READ_GRACE
    Machines.WAIT_READ_GRACE = 1
    local t0 = fly.now()
    local ok, state, err = pcall(m.wait, m, "stopped", { timeout = 1 })
    local took = fly.now() - t0
    Machines.WAIT_READ_GRACE = grace
    assert(ok, state)
    assert.is_nil(state)
    assert.equals("timeout", err.code)
    -- the read after the 408 ends by the grace, the last read 1 s later
    assert.is_true(took < 1 + 1 + 1 + 2, "took " .. took)
  end)

  it("answers a wait of timeout 0 from the machine's state now", function()
    local m = started()
    local before = H.stats().requests.Machines_wait or 0
    local state, version = m:wait("started", { timeout = 0 })
    assert.equals("started", state)
    assert.equals(m.instance_id, version)
    local _, err = m:wait("stopped", { timeout = 0 })
    assert.equals("timeout", err.code)
    assert.equals("started", err.state)
    assert.equals(before, H.stats().requests.Machines_wait or 0) -- no long-poll: a get
    -- a machine gone is destroyed now
    assert(c.machines:destroy(app, m.id, { force = true }))
    assert.equals("destroyed", (c.machines:wait(app, m.id, { state = "destroyed", timeout = 10 })))
    local stop = fly.now() + 10
    while c.machines:get(app, m.id) and fly.now() < stop do c:sleep(0.1) end -- until the API says 404
    assert.equals("destroyed", (c.machines:wait(app, m.id, { state = "destroyed", timeout = 0 })))
  end)

  it("returns the 404 of a missing machine when the timeout ends before the grace", function()
    local t0 = fly.now()
    local state, err = c.machines:wait(app, "no-such-machine", { timeout = 0.6, not_found_grace = 30 })
    local took = fly.now() - t0
    assert.is_nil(state)
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
    assert.is_true(took >= 0.5 and took < 0.6 + 5, "took " .. took)
  end)

  describe("versions", function()
    it("follows the object: after m:update, m:wait waits for the new version", function()
      local m = started()
      local old = m.instance_id
      assert(m:update { image = "nginx", env = { V = "2" } })
      assert.are_not.equal(old, m.instance_id)
      local state, version = m:wait("started", { timeout = 10 })
      assert.equals("started", state)
      assert.equals(m.instance_id, version)
    end)

    it("says when the version waited for was replaced by a newer one, and how to wait for any", function()
      local m = started()
      local stale = assert(c.machines:get(app, m.id))
      local fresh = assert(c.machines:update(app, m.id, { image = "nginx", env = { V = "2" } }))
      assert.equals("started", (fresh:wait("started", { timeout = 10 })))
      -- at the deadline
      local state, err = stale:wait("started", { timeout = 1.2 })
      assert.is_nil(state)
      assert.equals("superseded", err.code)
      assert.equals(fresh.instance_id, err.version)
      assert.equals(stale.instance_id, err.waited_version)
      assert.equals("started", err.state)
      assert.matches("version = false", err.message)
      assert.is_nil(err.message:find("did not reach", 1, true))
      -- as soon as a long-poll ends, well before a long timeout
      H.config { wait_max = 0.3 }
      local t0 = fly.now()
      state, err = stale:wait("started", { timeout = 60 })
      assert.is_nil(state)
      assert.equals("superseded", err.code)
      assert.is_true(fly.now() - t0 < 10)
      -- any version: fine
      assert.equals("started", (stale:wait("started", { version = false, timeout = 10 })))
    end)

    it("says when the state was reached at another version than the one asked for", function()
      local m = started()
      local state, err = c.machines:wait(app, m.id, { version = "not-a-version", timeout = 1.2 })
      assert.is_nil(state)
      assert.equals("timeout", err.code)
      assert.equals(m.instance_id, err.version)
      assert.matches("reached started at version " .. m.instance_id .. ", not at version not%-a%-version",
        err.message)
      assert.matches("version = false", err.message)
    end)
  end)

  it("reaches a failed machine when asked to", function()
    local m = assert(c.machines:create(app, { config = { image = "emulator/fail" } }))
    assert.equals("failed", (m:wait({ "started", "failed" }, { timeout = 10 })))
  end)

  it("runs inside tasks, several at once", function()
    local a, b = started(), started()
    assert(a:stop())
    assert(b:stop())
    local ta = c:spawn(function() return a:wait("stopped", { timeout = 10 }) end)
    local tb = c:spawn(function() return b:wait("stopped", { timeout = 10 }) end)
    assert.equals("stopped", (ta:join()))
    assert.equals("stopped", (tb:join()))
    assert.equals("stopped", a.state)
  end)
end)
