-- Leases: acquire, show, refresh, release, and with_lease (refresh while fn runs, release always).
local H = require "helper"
local fly = require "fly"

describe("machine leases", function()
  local c, app, m
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
    m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    assert.equals("started", (m:wait("started", { timeout = 10 })))
  end)
  after_each(function() c:close() end)

  it("acquires, shows, refreshes and releases a lease", function()
    local lease = assert(c.machines:acquire_lease(app, m.id, { ttl = 10, description = "spec" }))
    assert.is_string(lease.nonce)
    assert.equals("spec", lease.description)
    assert.is_number(lease.expires_at)
    assert.is_string(lease.owner)
    assert.equals(m.instance_id, lease.version)
    local shown = assert(c.machines:get_lease(app, m.id))
    assert.equals("spec", shown.description)
    assert.is_nil(shown.nonce)
    local refreshed = assert(c.machines:refresh_lease(app, m.id, lease.nonce, 60))
    assert.equals(lease.nonce, refreshed.nonce)
    assert.is_true(refreshed.expires_at > lease.expires_at)
    assert.equals(lease.nonce, H.stats().last_request.headers["fly-machine-lease-nonce"])
    assert.is_true(c.machines:release_lease(app, m.id, lease.nonce))
    local none, err = c.machines:get_lease(app, m.id)
    assert.is_nil(none)
    assert.equals(404, err.status)
  end)

  it("releases the lease even when the rate limit holds the release past the client's deadline", function()
    -- releases go one per 2 s here; the client gives every call 0.5 s
    local d = H.client { deadline = 0.5, rate_limit = { Machines_release_lease = { rate = 0.5, burst = 1 } } }
    for _ = 1, 2 do
      assert.equals("ran", (d.machines:with_lease(app, m.id, { ttl = 30 }, function() return "ran" end)))
      assert.is_nil((c.machines:get_lease(app, m.id))) -- released, not left to its TTL
    end
    d:close()
  end)

  it("works through Machine objects", function()
    local lease = assert(m:acquire_lease { ttl = 5 })
    assert.is_string(assert(m:get_lease()).owner)
    assert(m:refresh_lease(lease.nonce, 5))
    assert(m:release_lease(lease.nonce))
    assert.is_nil((m:get_lease()))
  end)

  it("parses the flat response shape too", function()
    H.fault { method = "POST", op = "Machines_create_lease", kind = "status", status = 201, count = 1,
      body = { nonce = "abc123", expires_at = 1700000000, owner = "me@example.com", version = "v1",
               description = "flat" } }
    local lease = assert(m:acquire_lease())
    assert.same({ nonce = "abc123", expires_at = 1700000000, owner = "me@example.com", version = "v1",
                  description = "flat" }, lease)
    assert.same(lease, c.machines.parse_lease { status = "success", data = lease, message = "", code = "" })
  end)

  it("answers 409 when someone else holds the lease, and mutations need the nonce", function()
    local other = H.client()
    local held = assert(other.machines:acquire_lease(app, m.id, { ttl = 30 }))
    local lease, err = m:acquire_lease()
    assert.is_nil(lease)
    assert.equals(409, err.status)
    local res, serr = m:stop()
    assert.is_nil(res)
    assert.equals(409, serr.status)
    -- with the nonce it goes through
    assert(c.machines:cordon(app, m.id, { lease_nonce = held.nonce }))
    assert.equals(held.nonce, H.stats().last_request.headers["fly-machine-lease-nonce"])
    assert(other.machines:release_lease(app, m.id, held.nonce))
    other:close()
  end)

  describe("with_lease", function()
    it("gives fn a Machine whose calls carry the nonce, then releases", function()
      local seen
      local a, b = m:with_lease({ ttl = 10 }, function(leased, lease)
        seen = lease.nonce
        assert.equals("fly.Machine", getmetatable(leased).__name)
        assert.equals(m.id, leased.id)
        assert.equals(m.config.image, leased.config.image)
        assert.equals(lease.nonce, leased:lease_nonce())
        -- someone without the nonce is refused
        local res, err = c.machines:stop(app, m.id)
        assert.is_nil(res)
        assert.equals(409, err.status)
        assert(leased:update { image = "nginx", env = { UNDER_LEASE = "yes" } })
        assert.equals(lease.nonce, H.stats().last_request.headers["fly-machine-lease-nonce"])
        assert(leased:set_metadata("owner", "spec"))
        return "done", 42
      end)
      assert.equals("done", a)
      assert.equals(42, b)
      assert.is_string(seen)
      local none, err = m:get_lease()
      assert.is_nil(none)
      assert.equals(404, err.status)
      assert.equals("yes", m:refresh().config.env.UNDER_LEASE)
      assert.equals("spec", m:get_metadata_key("owner"))
    end)

    it("keeps the machine it was called on true: leased and m are one machine's view", function()
      local old = m.instance_id
      local updated = assert(m:with_lease({ ttl = 10 }, function(leased)
        return leased:update { image = "nginx", env = { AFTER = "lease" } }
      end))
      assert.are_not.equal(old, m.instance_id)
      assert.equals(updated.instance_id, m.instance_id)
      assert.equals("lease", m.config.env.AFTER)
      assert.is_nil(m:lease_nonce()) -- m itself never carries the nonce
      -- the wait is scoped to the new version and returns as soon as it runs
      local t0 = fly.now()
      local state, version = m:wait("started", { timeout = 30 })
      assert.equals("started", state)
      assert.equals(m.instance_id, version)
      assert.is_true(fly.now() - t0 < 10)
      -- and the next common sequence too
      assert(m:stop())
      assert.equals("stopped", (m:wait("stopped", { timeout = 30 })))
      assert.equals("stopped", m.state)
      -- waits and refreshes inside reach m as well
      m:with_lease(function(leased)
        assert(leased:start())
        assert.equals("started", (leased:wait("started", { timeout = 10 })))
        assert.equals("started", m.state)
        assert(leased:refresh())
        assert.equals(leased.updated_at, m.updated_at)
      end)
    end)

    it("works from the namespace, fetching the machine", function()
      local state = c.machines:with_lease(app, m.id, { ttl = 5, description = "ns" }, function(leased)
        assert.equals("ns", assert(leased:get_lease()).description)
        assert(leased:stop())
        return leased:wait("stopped", { timeout = 10 })
      end)
      assert.equals("stopped", state)
      assert.is_nil((m:get_lease()))
    end)

    it("refreshes the lease while fn runs longer than the TTL", function()
      local before = H.stats().requests.Machines_create_lease or 0
      local ok = m:with_lease({ ttl = 2 }, function(leased, lease)
        local first_expiry = lease.expires_at
        c:sleep(3)
        -- the lease is still ours: a mutation through leased succeeds
        assert(leased:set_metadata("long", "yes"))
        assert.is_true(lease.expires_at > first_expiry)
        return true
      end)
      assert.is_true(ok)
      local refreshes = H.stats().requests.Machines_create_lease - before - 1
      assert.is_true(refreshes >= 2, "refreshes: " .. refreshes)
      assert.is_nil((m:get_lease()))
      assert.equals("yes", m:get_metadata_key("long"))
    end)

    it("refreshes from a background task when used inside a task", function()
      local before = H.stats().requests.Machines_create_lease or 0
      local other_calls = 0
      local holder = c:spawn(function()
        return m:with_lease({ ttl = 2 }, function(leased)
          c:sleep(3) -- yields: only the background refresher keeps the lease alive
          return leased:set_metadata("from-task", "yes")
        end)
      end)
      c:spawn(function()
        for _ = 1, 5 do
          assert(c.machines:get(app, m.id))
          other_calls = other_calls + 1
          c:sleep(0.2)
        end
      end)
      assert.is_true(c:run(30))
      assert.is_true(holder:result())
      assert.equals(5, other_calls)
      assert.is_true(H.stats().requests.Machines_create_lease - before - 1 >= 2)
      assert.is_nil((m:get_lease()))
    end)

    it("releases when the task holding it is cancelled", function()
      local holder = c:spawn(function()
        return m:with_lease({ ttl = 2 }, function() c:sleep(30) end)
      end)
      local deadline = fly.now() + 10
      while not m:get_lease() and fly.now() < deadline do c:poll(0.05) end
      assert.truthy(m:get_lease())
      assert.is_true(holder:cancel())
      assert.is_true(c:run(10)) -- the refresher stops and the release task runs
      assert.is_nil((m:get_lease()))
      assert(m:stop()) -- no lease in the way
    end)

    it("releases a lease granted after the task asking for it was cancelled", function()
      -- the server takes 0.5 s to grant it; the task is cancelled meanwhile
      H.fault { op = "Machines_create_lease", kind = "delay", delay = 0.5, count = 1 }
      local entered = false
      local holder = c:spawn(function()
        return m:with_lease({ ttl = 30 }, function() entered = true end)
      end)
      c:poll(0.1) -- the request for the lease is on its way
      assert.is_true(holder:cancel())
      local granted_by = fly.now() + 0.5
      assert.is_true(c:run(10)) -- the grant comes back, and is released
      if fly.now() < granted_by then c:sleep(granted_by - fly.now() + 0.2) end
      assert.is_false(entered)
      assert.is_nil((m:get_lease()))
      assert(m:stop()) -- no lease in the way
    end)

    it("releases when the client closes while a task holds it", function()
      local closing = H.client()
      local cm = assert(closing.machines:get(app, m.id))
      local inside = false
      closing:spawn(function()
        return cm:with_lease({ ttl = 30 }, function()
          inside = true
          closing:sleep(30)
        end)
      end)
      local deadline = fly.now() + 10
      while not inside and fly.now() < deadline do closing:poll(0.05) end
      assert.is_true(inside)
      assert.truthy(m:get_lease())
      closing:close() -- cancels the task; its release runs before the client goes
      assert.is_true(closing:is_closed())
      local none, err = m:get_lease()
      assert.is_nil(none)
      assert.equals(404, err.status)
    end)

    it("releases a lease granted after the client closed while the task asked for it", function()
      -- the server takes 0.5 s to grant it; the client closes meanwhile: its request is let finish
      -- (the task asking for it is the one close lets run), and the grant is released
      local closing = H.client()
      local cm = assert(closing.machines:get(app, m.id))
      H.fault { op = "Machines_create_lease", kind = "delay", delay = 0.5, count = 1 }
      closing:spawn(function() return cm:with_lease({ ttl = 30 }, function() closing:sleep(30) end) end)
      local granted_by = fly.now() + 0.5
      local deadline = fly.now() + 5
      repeat closing:poll(0.02) until H.stats().requests.Machines_create_lease or fly.now() > deadline
      assert.equals(1, H.stats().requests.Machines_create_lease) -- the request for the lease is there
      closing:close()
      if fly.now() < granted_by then c:sleep(granted_by - fly.now() + 0.3) end -- (were it abandoned)
      local none, err = m:get_lease()
      assert.is_nil(none)
      assert.equals(404, err.status)
    end)

    it("releases when the task is cancelled, or its client closed, while the release waits to go out",
      function()
      for _, how in ipairs { "cancel", "close" } do
        -- one release a 5 s: the first with_lease takes the token, the second's release waits
        local slow = H.client { rate_limit = { Machines_release_lease = { rate = 0.2, burst = 1 } } }
        local sm = assert(slow.machines:get(app, m.id))
        assert.equals("first", (sm:with_lease(function() return "first" end)))
        local holder = slow:spawn(function() return sm:with_lease({ ttl = 30 }, function() return "fn" end) end)
        local deadline = fly.now() + 10
        while not m:get_lease() and fly.now() < deadline do slow:poll(0.05) end
        slow:poll(0.2) -- fn has returned: the release waits for its token
        assert.equals("running", holder:status())
        if how == "cancel" then
          assert.is_true(holder:cancel())
          assert.is_true(slow:run(10)) -- the cleanup's release
        end
        slow:close()
        local none, err = m:get_lease()
        assert.is_nil(none, how)
        assert.equals(404, err.status)
      end
    end)

    it("lets a refresh on its way end before the release (it could take the lease again after it)", function()
      -- ttl 4: a refresh every second; the server takes 0.5 s over the first, which is on its
      -- way when fn returns. Released at once, the refresh landing after would hold the lease again
      for _, where in ipairs { "outside tasks", "in a task", "in a task, inside a C function's callback" } do
        local function go()
          return m:with_lease({ ttl = 4 }, function()
            H.fault { op = "Machines_create_lease", kind = "delay", delay = 0.5, count = 1 }
            c:sleep(1.2)
            return "done"
          end)
        end
        if where == "outside tasks" then
          assert.equals("done", (go()))
        else
          local out
          local t = c:spawn(function()
            if where == "in a task" then out = go() else ("x"):gsub("x", function() out = go() end) end
          end)
          assert.is_true(c:run(10))
          assert.equals("done", t:status())
          assert.equals("done", out)
        end
        c:sleep(0.6) -- past when that refresh reached the server
        local none, err = m:get_lease()
        assert.is_nil(none, where)
        assert.equals(404, err.status)
      end
    end)

    it("is not a task client:run waits for: run inside fn returns when fn's tasks are done", function()
      local out = m:with_lease({ ttl = 15 }, function(leased)
        local t = c:spawn(function() return leased:set_metadata("k", "v") end)
        assert.is_true(c:run(10)) -- the refresher runs, but is not waited for
        assert.equals("done", t:status())
        assert.equals(0, c:poll())
        return "ok"
      end)
      assert.equals("ok", out)
    end)

    it("takes opts or not from the namespace too, and names a bad ttl or wait", function()
      assert.equals("bare", (c.machines:with_lease(app, m.id, function() return "bare" end)))
      for _, case in ipairs {
        { { ttl = 0 / 0 }, "machines:with_lease: opts.ttl must be a finite number of seconds above 0 %(got NaN%)" },
        { { ttl = math.huge }, "opts.ttl must be a finite number of seconds above 0 %(got inf" },
        { { wait = 0 / 0 }, "machines:with_lease: opts.wait must be a number >= 0 %(got NaN%)" },
      } do
        H.raises(case[2], function() c.machines:with_lease(app, m.id, case[1], function() end) end)
      end
      H.raises("machines:acquire_lease: opts.ttl must be a finite number of seconds above 0 %(got %-1%)",
        function() c.machines:acquire_lease(app, m.id, { ttl = -1 }) end)
      H.raises("machines:refresh_lease: ttl must be a finite number of seconds above 0 %(got NaN%)",
        function() c.machines:refresh_lease(app, m.id, "nonce", 0 / 0) end)
    end)

    it("releases and re-raises when fn raises, with the original error value", function()
      local boom = setmetatable({}, { __tostring = function() return "boom" end })
      local ok, err = pcall(m.with_lease, m, { ttl = 5 }, function() error(boom) end)
      assert.is_false(ok)
      assert.equals(boom, err)
      local none, lerr = m:get_lease()
      assert.is_nil(none)
      assert.equals(404, lerr.status)
      ok, err = pcall(c.machines.with_lease, c.machines, app, m.id, nil, function() error("plain", 0) end)
      assert.is_false(ok)
      assert.equals("plain", err)
      assert.is_nil((m:get_lease()))
    end)

    it("passes fn's nil, err through and releases", function()
      local res, err = m:with_lease(function(leased)
        assert(leased:exec("true"))
        return nil, "why not"
      end)
      assert.is_nil(res)
      assert.equals("why not", err)
      assert.is_nil((m:get_lease()))
    end)

    it("fails with lease_held when someone else holds it", function()
      local other = H.client()
      local held = assert(other.machines:acquire_lease(app, m.id, { ttl = 30 }))
      local called = false
      local res, err = m:with_lease({ ttl = 5 }, function() called = true end)
      assert.is_nil(res)
      assert.is_false(called)
      assert.is_true(fly.Error.is(err))
      assert.equals("lease_held", err.code)
      assert.equals(409, err.status)
      -- waiting a little: still held
      local t0 = fly.now()
      res, err = m:with_lease({ ttl = 5, wait = 0.6 }, function() called = true end)
      assert.is_nil(res)
      assert.equals("lease_held", err.code)
      assert.is_true(fly.now() - t0 >= 0.6)
      assert.is_false(called)
      assert(other.machines:release_lease(app, m.id, held.nonce))
      other:close()
    end)

    it("waits for a lease that another holder releases", function()
      local other = H.client()
      local held = assert(other.machines:acquire_lease(app, m.id, { ttl = 30 }))
      c:spawn(function()
        c:sleep(0.5)
        assert(c.machines:release_lease(app, m.id, held.nonce))
      end)
      local res = m:with_lease({ ttl = 5, wait = 10 }, function(leased) return leased:lease_nonce() end)
      assert.is_string(res)
      assert.are_not.equal(held.nonce, res)
      other:close()
    end)
  end)
end)
