-- Retries: what is retried, what never is, and transport failures.
local H = require "helper"
local fly = require "fly"

local FAST = { attempts = 4, base = 0.01, cap = 0.05 }

describe("retries", function()
  local c, name
  before_each(function()
    H.reset()
    c = H.client { retry = FAST }
    name = H.app(c)
  end)

  local function path(suffix) return "/v1/apps/" .. name .. (suffix or "") end

  for _, status in ipairs { 500, 502, 503, 504, 408 } do
    it(("retries an idempotent GET after %d and recovers"):format(status), function()
      H.fault { method = "GET", path = path(), kind = "status", status = status, count = 2 }
      local app, err = c.apps:get(name)
      assert.is_nil(err)
      assert.equals(name, app.name)
      assert.equals(3, H.stats().requests.Apps_show)
    end)
  end

  it("retries an idempotent call after the connection closes without an answer", function()
    H.fault { method = "GET", path = path(), kind = "close", count = 2 }
    assert.equals(name, assert(c.apps:get(name)).name)
  end)

  it("retries a DELETE after a 503", function()
    H.fault { method = "DELETE", path = path(), kind = "status", status = 503, count = 1 }
    assert.is_true(c.apps:destroy(name))
    assert.equals(1, H.stats().executed.Apps_delete)
  end)

  it("gives up after the configured attempts and says how many were made", function()
    H.fault { method = "GET", path = path(), kind = "status", status = 503, count = 0 }
    local app, err = c.apps:get(name)
    assert.is_nil(app)
    assert.equals(503, err.status)
    assert.equals(4, err.attempts)
    assert.is_true(err.retryable)
    assert.matches("attempts=4", tostring(err))
    local _, err1 = c:call("Apps_show", { app_name = name }, { attempts = 1 })
    assert.equals(1, err1.attempts)
  end)

  it("says when a failed call may have been carried out by an attempt that lost its answer", function()
    -- a destroy that ran and lost its answer: the retry finds the app gone
    H.fault { method = "DELETE", path = path(), kind = "close_after", count = 1 }
    local ok, err = c.apps:destroy(name)
    assert.is_nil(ok)
    assert.equals("not_found", err.code) -- sent again by the retry, or by libcurl on a new connection
    assert.is_true(err.may_have_run)
    -- it did run: the app is gone; a call that never ran says nothing of the kind
    local _, plain = c.apps:get(name)
    assert.equals("not_found", plain.code)
    assert.is_nil(plain.may_have_run)
    -- nor does one whose attempts were all answered
    H.fault { method = "GET", path = "/v1/apps/nope", kind = "status", status = 404, count = 1 }
    local _, answered = c.apps:get("nope")
    assert.is_nil(answered.may_have_run)
    -- a create cut off after it went out: not repeated, and it may have run (it did)
    H.fault { method = "POST", path = "/v1/apps", kind = "close_after", count = 1 }
    local _, lost = c.apps:create { app_name = H.name(), org_slug = "personal" }
    assert.is_false(lost.retryable)
    assert.is_true(lost.may_have_run)
  end)

  it("never repeats an update outside a lease, through the namespace or the object", function()
    local m = assert(c.machines:create(name, { config = { image = "nginx" }, skip_launch = true }))
    local mpath = "/v1/apps/" .. name .. "/machines/" .. m.id
    for _, update in ipairs {
      function() return c.machines:update(name, m.id, { config = { image = "nginx:2" } }) end,
      function() return m:update { config = { image = "nginx:3" } } end,
    } do
      H.fault { method = "POST", path = mpath, kind = "status_after", status = 502, count = 1 }
      local before = H.stats().executed.Machines_update or 0
      local res, err = update()
      assert.is_nil(res)
      assert.equals(502, err.status)
      assert.is_false(err.retryable)
      assert.equals(before + 1, H.stats().executed.Machines_update)
    end
    -- a nonce is text: false or a number is a programmer error, not a header
    assert.has_error(function() c:call("Machines_update", { app_name = name, machine_id = m.id, lease_nonce = false,
      body = {} }) end, "fly: Machines_update: parameter 'lease_nonce' must be a string (got boolean)")
  end)

  it("never repeats a create after an ambiguous failure (answer lost)", function()
    H.fault { method = "POST", path = "/v1/apps", kind = "close_after", count = 1 }
    local before = H.stats().executed.Apps_create
    local other = H.name()
    local res, err = c.apps:create { app_name = other, org_slug = "personal" }
    assert.is_nil(res)
    assert.equals("reset", err.code)
    assert.is_false(err.retryable)
    assert.equals(1, err.attempts)
    assert.equals(before + 1, H.stats().executed.Apps_create)
    -- it did happen: the app exists, once
    assert.equals(other, assert(c.apps:get(other)).name)
  end)

  it("never repeats a machine create after a 503 that came after executing it", function()
    H.fault { method = "POST", path = path("/machines"), kind = "status_after", status = 503, count = 1 }
    local res, err = c:call("Machines_create", { app_name = name, body = { config = { image = "nginx" } } })
    assert.is_nil(res)
    assert.equals(503, err.status)
    assert.is_false(err.retryable)
    assert.equals(1, H.stats().executed.Machines_create)
    local list = assert(c:call("Machines_list", { app_name = name }))
    assert.equals(1, #list)
  end)

  it("does not retry a POST after a plain 503 either", function()
    H.fault { method = "POST", path = "/v1/apps", kind = "status", status = 503, count = 1 }
    local _, err = c.apps:create { app_name = H.name(), org_slug = "personal" }
    assert.equals(503, err.status)
    assert.equals(1, err.attempts)
  end)

  it("retries a POST that carries a lease nonce", function()
    local m = assert(c:call("Machines_create", { app_name = name, body = { config = { image = "nginx" } } }))
    local lease = assert(c:call("Machines_create_lease", { app_name = name, machine_id = m.id, body = { ttl = 30 } }))
    local nonce = (lease.data or lease).nonce
    H.fault { method = "POST", path = path("/machines/" .. m.id .. "/cordon"), kind = "status", status = 503,
      count = 1 }
    local ok, err = c:call("Machines_cordon", { app_name = name, machine_id = m.id, lease_nonce = nonce })
    assert.is_nil(err)
    assert.truthy(ok)
    assert.equals(2, H.stats().requests.Machines_cordon)
  end)

  it("retries a 429 on any operation, even a create", function()
    H.fault { method = "POST", path = "/v1/apps", kind = "status", status = 429, count = 2 }
    local before = H.stats().executed.Apps_create
    local other = H.name()
    assert(c.apps:create { app_name = other, org_slug = "personal" })
    assert.equals(before + 1, H.stats().executed.Apps_create)
    assert.equals(3, H.stats().requests.Apps_create - before)
  end)

  it("waits at least Retry-After before retrying a 429", function()
    H.fault { method = "GET", path = path(), kind = "status", status = 429, count = 1, retry_after = 1 }
    local t0 = fly.now()
    assert(c.apps:get(name))
    assert.is_true(fly.now() - t0 >= 0.95)
  end)

  it("empties the bucket after a 429 that is the answer: the calls after it wait for a refill", function()
    -- start: 1 a second per machine, a burst of 3. The 429 used one token; without the penalty
    -- the next call would go at once (and meet the same limit)
    local once = H.client { retry = false, rate_limit = true }
    local retrying = H.client { retry = FAST, rate_limit = true }
    for i, case in ipairs {
      { client = once }, -- no retry: the 429 is the answer
      { client = retrying, retry_after = 120 }, -- Retry-After past retry.max_wait: returned at once
    } do
      local id = ("e28650000429%02d"):format(i)
      local start = "/v1/apps/" .. name .. "/machines/" .. id .. "/start"
      H.fault { method = "POST", path = start, kind = "status", status = 429, count = 1,
        retry_after = case.retry_after }
      local res, err = case.client.machines:start(name, id)
      assert.is_nil(res)
      assert.equals(429, err.status)
      assert.equals(1, err.attempts)
      local sent = H.stats().requests.Machines_start
      res, err = case.client:call("Machines_start", { app_name = name, machine_id = id }, { deadline = 0.3 })
      assert.is_nil(res)
      assert.equals("timeout", err.code)
      assert.matches("rate limit", err.message)
      assert.equals(sent, H.stats().requests.Machines_start) -- held back, not sent
    end
    once:close()
    retrying:close()
  end)

  it("does not send a retry with less time before the deadline than the attempt before it took", function()
    -- the 429 comes after 1 s and asks for 1 s more: a retry at 2.0-2.1 s would have 0.4-0.5 s
    -- of the 2.5 s deadline. Sent, it would be cut off after the server took it (this create is
    -- handled 1 s after it arrives): a machine made, and the call's outcome unknown.
    H.fault { op = "Machines_create", kind = "status", status = 429, retry_after = 1, delay = 1, count = 1 }
    H.fault { op = "Machines_create", kind = "delay", delay = 1, count = 1 }
    local before = H.stats().requests.Machines_create or 0
    local res, err = c:call("Machines_create", { app_name = name, body = { config = { image = "nginx" } } },
      { deadline = 2.5 })
    assert.is_nil(res)
    assert.equals(429, err.status) -- the attempt's own outcome: nothing was executed
    assert.is_true(err.retryable)
    assert.equals(1, err.attempts)
    assert.equals(before + 1, H.stats().requests.Machines_create)
    assert.is_nil(H.stats().executed.Machines_create)
    -- with the time, the same retry goes (and succeeds)
    H.control("DELETE", "faults")
    H.fault { op = "Machines_create", kind = "status", status = 429, retry_after = 1, delay = 1, count = 1 }
    local m = assert(c:call("Machines_create", { app_name = name, body = { config = { image = "nginx" } } },
      { deadline = 10 }))
    assert.is_string(m.id)
    assert.equals(before + 3, H.stats().requests.Machines_create)
  end)

  it("does not retry the wait long-poll's 408 (it means: not yet)", function()
    local m = assert(c:call("Machines_create", { app_name = name, body = { config = { image = "nginx" } } }))
    H.fault { method = "GET", path = path("/machines/" .. m.id .. "/wait"), kind = "status", status = 408,
      count = 1 }
    local res, err = c:call("Machines_wait", { app_name = name, machine_id = m.id, state = "stopped", timeout = 1 })
    assert.is_nil(res)
    assert.equals(408, err.status)
    assert.equals(1, err.attempts)
  end)

  it("retries a POST when the request never reached a server", function()
    local dead = assert(fly.new { token = "t", base_url = "http://127.0.0.1:9", retry = FAST })
    local res, err = dead.apps:create { app_name = "x", org_slug = "personal" }
    assert.is_nil(res)
    assert.equals("connect", err.code)
    assert.equals(4, err.attempts)
    assert.is_true(err.retryable)
  end)
end)

describe("transport failures", function()
  local c, name
  before_each(function()
    H.reset()
    c = H.client { retry = false }
    name = H.app(c)
  end)

  it("end a stalled response at the deadline with code timeout", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "stall", delay = 30, count = 1 }
    local t0 = fly.now()
    local res, err = c:call("Apps_show", { app_name = name }, { deadline = 1 })
    assert.is_nil(res)
    assert.equals("timeout", err.code)
    assert.is_true(fly.now() - t0 < 10)
  end)

  it("bound every attempt and the backoff by the deadline", function()
    local r = H.client { retry = { attempts = 100, base = 0.2, cap = 0.2 } }
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "status", status = 503, count = 0 }
    local t0 = fly.now()
    local res, err = r:call("Apps_show", { app_name = name }, { deadline = 1 })
    assert.is_nil(res)
    assert.is_true(err.attempts > 1 and err.attempts < 100)
    assert.is_true(fly.now() - t0 < 5)
  end)

  it("bound every call of a client made with a deadline, unless the call gives its own", function()
    local d = H.client { deadline = 1 }
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "stall", delay = 30, count = 0 }
    local t0 = fly.now()
    local res, err = d.apps:get(name) -- a namespace method: the client's deadline
    assert.is_nil(res)
    assert.equals("timeout", err.code)
    assert.is_true(fly.now() - t0 < 10)
    -- a machine wait keeps its own overall timeout past the client's deadline: every poll of
    -- this one takes 1.5 s (cut at 1 s, none would ever answer)
    local m = assert(d.machines:create(name, { config = { image = "nginx" } }))
    assert(m:wait("started", { timeout = 30 }))
    H.fault { method = "GET", path = "/v1/apps/" .. name:gsub("%p", "%%%0") .. "/machines/[^/]+/wait",
      kind = "delay", delay = 1.5, count = 0 }
    local before = H.stats().requests.Machines_wait
    assert.equals("started", (m:wait("started", { timeout = 5 })))
    assert.equals(before + 1, H.stats().requests.Machines_wait) -- one poll, answered after 1.5 s
    -- an exec given a timeout runs as long as that, not as the client's deadline
    H.fault { op = "Machines_exec", kind = "delay", delay = 1.5, count = 2 }
    assert.equals(0, assert(m:exec { command = { "true" }, timeout = 5 }).exit_code)
    local _, late = m:exec { command = { "true" } }
    assert.equals("timeout", late.code)
    -- the call's own deadline wins: math.huge lifts the client's
    H.reset()
    H.app(c, name)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "delay", delay = 1.5, count = 1 }
    assert(d:call("Apps_show", { app_name = name }, { deadline = math.huge }))
    assert.has_error(function() H.client { deadline = 0 } end, "fly.new: option 'deadline' must be > 0")
    d:close()
  end)

  it("report a closed connection as reset", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "close", count = 0 }
    local _, err = c.apps:get(name)
    assert.equals("reset", err.code)
    assert.is_nil(err.status)
  end)

  it("report malformed JSON and truncated bodies as failures, never as success", function()
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "malformed", count = 1 }
    local res, err = c.apps:get(name)
    assert.is_nil(res)
    assert.equals("protocol", err.code)
    H.fault { method = "GET", path = "/v1/apps/" .. name, kind = "truncate", count = 1 }
    res, err = c.apps:get(name)
    assert.is_nil(res)
    assert.equals(H.TLS and "reset" or "protocol", err.code) -- HTTP/2: the stream is reset
  end)
end)
