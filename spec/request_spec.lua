-- fly.Request in the core: lifetime after close, parameters written exactly,
-- safety classes, and the seam a second transport uses (_build, _wire,
-- _complete, _failed) giving the same results as the libcurl transport.
local H = require "helper"
local core = require "fly.core"
local compat = require "fly.compat"
local http = require "socket.http"
local ltn12 = require "ltn12"

-- The wire form sent over luasocket: a transport outside the core.
local function exchange(w)
  local headers = {}
  for _, line in ipairs(w.headers) do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if v ~= "" then headers[k:lower()] = v end
  end
  if w.body then headers["content-length"] = tostring(#w.body) end
  local out = {}
  local _, status, rh = http.request {
    url = w.url, method = w.method, headers = headers, sink = ltn12.sink.table(out),
    source = w.body and ltn12.source.string(w.body) or nil,
  }
  return status, rh, table.concat(out)
end

local function carry(req)
  while not req:done() do
    local status, rh, body = exchange(req:_wire())
    local verdict, at = req:_complete(status, rh, body)
    if verdict == "retry" then
      local left = at - core.now()
      if left > 0 then require("socket").sleep(left) end
    end
  end
  return req
end

local function outcome(req)
  local r = req:result()
  return { status = r.status, code = r.code, retryable = r.retryable, attempts = r.attempts,
    path = r.path, operation = r.operation, body = r.body, content_type = r.content_type,
    retry_after = r.retry_after, success = { req:success() } }
end

describe("fly.Request", function()
  local c
  before_each(function()
    H.reset()
    c = H.client { retry = { attempts = 3, base = 0.01, cap = 0.02 } }
  end)
  after_each(function() c:close() end)

  describe("lifetime", function()
    it("stays readable after __close; __close of a live request cancels it", function()
      local name = H.app(c)
      local req = c:_submit("Apps_show", { app_name = name })
      c:_wait(req)
      local before = outcome(req)
      core.request_mt.__close(req)
      assert.same(before, outcome(req))
      assert.equals(name, (req:success()).name)

      local live = c:_submit("Apps_show", { app_name = name })
      core.request_mt.__close(live)
      assert.is_true(live:done())
      assert.equals("cancelled", live:result().code)
      assert.is_nil(live:success())
      assert.equals("", live:result().body)
      live:cancel()
    end)
  end)

  describe("parameters", function()
    local function query(params)
      params.app_name, params.machine_id = "a", "m"
      return c:_build("Machines_wait", params):_wire().target:match("%?(.*)$")
    end

    it("writes integers exactly and floats so they read back identical", function()
      assert.equals("timeout=60", query { timeout = 60 })
      assert.equals("timeout=0.1", query { timeout = 0.1 })
      assert.equals("timeout=1.2345678901234567", query { timeout = 1.2345678901234567 })
      assert.equals("timeout=9007199254740992", query { timeout = 2 ^ 53 })
      assert.equals("timeout=-3", query { timeout = -3.0 })
      if compat.has_integers then
        assert.equals("timeout=9007199254740993", query { timeout = load("return 9007199254740993")() })
        assert.equals("timeout=123456789012345678", query { timeout = load("return 123456789012345678")() })
      end
      for _, v in ipairs { 0.1, 1 / 3, 2 ^ 60 + 2 ^ 10, 1e-300, 123.456, 5e-324 } do
        local text = query({ timeout = v }):match("^timeout=(.*)$"):gsub("%%2B", "+")
        assert.equals(v, tonumber(text))
      end
    end)

    it("raises on a table that is not an array as a query value, naming the parameter", function()
      H.raises("parameter 'state' must be a value or an array of values", function()
        c:call("Machines_wait", { app_name = "a", machine_id = "m", state = { x = 1 } })
      end)
      H.raises("parameter 'state' must be a value or an array of values", function()
        c:call("Machines_wait", { app_name = "a", machine_id = "m", state = { "started", x = 1 } })
      end)
      assert.equals("state=started&state=stopped", query { state = { "started", "stopped" } })
    end)
  end)

  describe("safety classes", function()
    local by_id = {}
    for _, op in ipairs(core.operations()) do by_id[op.id] = op end

    it("are written per operation", function()
      for _, op in pairs(by_id) do
        assert.is_truthy(({ safe = true, with_lease = true, never = true })[op.safety], op.id)
        if op.method == "GET" or op.method == "PUT" or op.method == "DELETE" then
          assert.equals("safe", op.safety, op.id)
        end
      end
      for _, id in ipairs { "Machines_start", "Machines_stop", "Machines_suspend", "Machines_cordon",
        "Machines_uncordon", "Machines_wait" } do
        assert.equals("safe", by_id[id].safety, id)
      end
      for _, id in ipairs { "Machines_update", "Machines_create_lease" } do
        assert.equals("with_lease", by_id[id].safety, id)
      end
      for _, id in ipairs { "Machines_create", "Machines_exec", "Machines_signal", "Machines_restart",
        "Apps_create", "Secret_create", "Volumes_create", "createVolumeSnapshot", "App_IPAssignments_create",
        "App_Certificates_acme_create", "Tokens_request_OIDC" } do
        assert.equals("never", by_id[id].safety, id)
      end
    end)

    it("decide what the wire form calls safe", function()
      local p = { app_name = "a", machine_id = "m" }
      assert.is_true(c:_build("Machines_stop", p):_wire().safe)
      assert.is_false(c:_build("Machines_update", p):_wire().safe)
      assert.is_false(c:_build("Machines_create_lease", p):_wire().safe)
      local n = { app_name = "a", machine_id = "m", lease_nonce = "n" }
      assert.is_true(c:_build("Machines_update", n):_wire().safe)
      assert.is_true(c:_build("Machines_create_lease", n):_wire().safe)
      assert.is_false(c:_build("Machines_signal", n):_wire().safe)
      assert.is_false(c:_build("Machines_restart", n):_wire().safe)
    end)

    it("never repeat a request that is not safe after an ambiguous failure, nonce or not", function()
      local n = { app_name = "a", machine_id = "m", lease_nonce = "n" }
      local req = c:_build("Machines_exec", n)
      assert.equals("done", req:_failed("timeout", "timed out", true))
      assert.is_false(req:result().retryable)
      req = c:_build("Machines_restart", n)
      assert.equals("done", (req:_complete(502, nil, "")))
      assert.equals(1, req:result().attempts)
      -- not sent at all, or 429 (not executed): retried whatever the class
      req = c:_build("Machines_exec", n)
      assert.equals("retry", (req:_failed("connect", "refused", false)))
      assert.equals("retry", (req:_complete(429, { ["Retry-After"] = "0" }, "")))
      local verdict, at = req:_complete(429, nil, "")
      assert.equals("done", verdict) -- attempts = 3 used up
      assert.is_nil(at)
      assert.equals(429, req:result().status)
      -- the same through the libcurl transport
      H.fault { method = "POST", path = "/v1/apps/a/machines/m/restart", kind = "status", status = 502, count = 3 }
      local res, err = c:call("Machines_restart", n)
      assert.is_nil(res)
      assert.equals(502, err.status)
      assert.equals(1, err.attempts)
      assert.is_false(err.retryable)
      -- safe: retried after an ambiguous failure
      req = c:_build("Machines_update", n)
      verdict, at = req:_failed("reset", "reset", true)
      assert.equals("retry", verdict)
      assert.is_true(at >= core.now() - 1 and at == req:_ready_at())
    end)
  end)

  describe("the transport seam", function()
    -- luasocket speaks plain HTTP: here the client uses the emulator's plain listener
    before_each(function()
      c:close()
      c = H.client { base_url = H.plain_url(), retry = { attempts = 3, base = 0.01, cap = 0.02 } }
    end)

    it("gives the same results and errors as the libcurl transport", function()
      local name = H.app(c)
      local cases = {
        { "Apps_show", { app_name = name } },
        { "Apps_show", { app_name = "missing-" .. name } },
        { "Apps_list", { org_slug = "personal" } },
        { "Machines_list", { app_name = name, include_deleted = true, metadata = { k = "v" } } },
        { "Apps_show", { app_name = "bad/." } },
      }
      for _, case in ipairs(cases) do
        local a = c:_submit(case[1], case[2])
        c:_wait(a)
        local b = carry(c:_build(case[1], case[2]))
        assert.same(outcome(a), outcome(b))
      end
      -- a body, and a failure the server reports with JSON
      local body = require("cjson").encode { app_name = name, org_slug = "personal" }
      local a = c:_submit("Apps_create", { body = body })
      c:_wait(a)
      local b = carry(c:_build("Apps_create", { body = body }))
      assert.same(outcome(a), outcome(b))
      assert.equals(a:result().status, b:result().status)
    end)

    it("takes exec's answer labelled application/octet-stream as the API describes, and no other's", function()
      local answer = '{"exit_code":0,"stdout":"hi\\n","stderr":""}'
      local bytes = { ["Content-Type"] = "application/octet-stream" }
      local req = c:_build("Machines_exec", { app_name = "a", machine_id = "m", body = '{"command":["true"]}' })
      assert.equals("done", (req:_complete(200, bytes, answer)))
      local res = req:success()
      assert.equals(0, res.exit_code)
      assert.equals("hi\n", res.stdout)
      -- an operation that returns JSON only: a protocol failure, as before (retried: it is safe)
      req = c:_build("Apps_show", { app_name = "a" })
      assert.equals("retry", (req:_complete(200, bytes, '{"name":"a"}')))
      req:cancel()
      -- exec's octet-stream answer must still be a JSON object
      req = c:_build("Machines_exec", { app_name = "a", machine_id = "m", body = '{"command":["true"]}' })
      assert.equals("done", (req:_complete(200, bytes, "hi\n")))
      assert.equals("protocol", req:result().code)
      assert.is_false(req:result().retryable)
      for _, op in ipairs(core.operations()) do
        if op.id == "Machines_exec" then assert.equals("json", op.returns) end
      end
    end)

    it("retries through the same policy", function()
      local name = H.app(c)
      local path = "/v1/apps/" .. name
      H.fault { method = "GET", path = path, kind = "status", status = 503, count = 2 }
      local a = c:_submit("Apps_show", { app_name = name })
      c:_wait(a)
      H.fault { method = "GET", path = path, kind = "status", status = 503, count = 2 }
      local b = carry(c:_build("Apps_show", { app_name = name }))
      assert.equals(3, b:result().attempts)
      assert.same(outcome(a), outcome(b))
      -- 429 with Retry-After, for a call that is never repeated otherwise, until attempts run out
      local body = require("cjson").encode { app_name = H.name(), org_slug = "personal" }
      local paced = H.client { base_url = H.plain_url(), rate_limit = { scale = 20 },
        retry = { attempts = 3, base = 0.01, cap = 0.02 } }
      H.fault { method = "POST", path = "/v1/apps", kind = "status", status = 429, retry_after = 0, count = 3 }
      a = paced:_submit("Apps_create", { body = body })
      paced:_wait(a)
      H.fault { method = "POST", path = "/v1/apps", kind = "status", status = 429, retry_after = 0, count = 3 }
      b = carry(paced:_build("Apps_create", { body = body }))
      paced:close()
      assert.equals(429, b:result().status)
      assert.equals(0, b:result().retry_after)
      assert.same(outcome(a), outcome(b))
    end)

    it("describes the wire form", function()
      local w = c:_build("Apps_create", { body = "{}" }):_wire()
      assert.equals("POST", w.method)
      assert.equals(H.plain_url() .. "/v1/apps", w.url)
      assert.equals("http", w.scheme)
      assert.equals("127.0.0.1", w.host)
      assert.equals(tonumber(H.plain_url():match(":(%d+)$")), w.port)
      assert.equals("/v1/apps", w.target)
      assert.equals("{}", w.body)
      assert.is_false(w.safe)
      assert.is_true(w.timeout > 0)
      local seen = {}
      for _, h in ipairs(w.headers) do seen[h:match("^([^:]+)")] = true end
      assert.is_true(seen.Authorization and seen["Content-Type"] and seen["User-Agent"] and true)
    end)

    it("leaves admission to the transport when asked: _rate, _admit, the bucket's part in retries", function()
      local paced = H.client { rate_limit = true, retry = { attempts = 3, base = 0.01, cap = 0.02 } }
      -- the core's own bucket for Get App (1/s, burst 3) is never touched by external requests
      for _ = 1, 5 do
        local req = paced:_build("Apps_show", { app_name = "ext" }, nil, 1, true)
        assert.is_true(req:_ready_at() <= core.now())
      end
      local req = paced:_build("Apps_show", { app_name = "ext" }, nil, 1, true)
      local key, rate, burst, margin = req:_rate()
      assert.matches("|Apps_show|ext$", key)
      assert.equals(1, rate)
      assert.equals(3, burst)
      assert.is_true(margin >= 0)
      local verdict, at = req:_admit(0.5)
      assert.equals("ready", verdict)
      assert.is_true(at >= core.now() + 0.4 and at == req:_ready_at())
      -- a retry says what the transport's bucket must do
      local v, _, bucket = req:_complete(429, { ["retry-after"] = "0" }, "")
      assert.equals("retry", v)
      assert.equals("penalize", bucket)
      v, _, bucket = req:_complete(503, nil, "")
      assert.equals("retry", v)
      assert.equals("reserve", bucket)
      -- the core's bucket is whole: a request it admits is ready at once
      assert.is_true(paced:_build("Apps_show", { app_name = "ext" }):_ready_at() <= core.now())
      -- a wait past the deadline ends it: a timeout before the first attempt ...
      req = paced:_build("Apps_show", { app_name = "ext" }, { deadline = 0.2 }, 1, true)
      assert.equals("done", req:_admit(1))
      assert.equals("timeout", req:result().code)
      assert.is_true(req:result().retryable)
      -- ... the last attempt's outcome after one
      req = paced:_build("Apps_show", { app_name = "ext" }, { deadline = 1.5 }, 1, true)
      assert.equals("retry", (req:_complete(429, nil, "")))
      assert.equals("done", req:_admit(2))
      assert.equals(429, req:result().status)
      paced:close()
      -- not limited: no bucket, no bucket action
      req = c:_build("Apps_show", { app_name = "ext" }, nil, 1, true)
      assert.is_nil(req:_rate())
      assert.equals(2, select("#", req:_complete(503, nil, "")))
    end)

    it("reports a response too large as final, whatever the safety class", function()
      local req = c:_build("Apps_show", { app_name = "x" })
      assert.equals("done", req:_failed("too_large", "the response body is larger than max_body", true))
      assert.equals("too_large", req:result().code)
      assert.is_false(req:result().retryable)
    end)

    it("leaves Host, Content-Length, Connection and empty headers to the transport", function()
      local hc = H.client { headers = { Host = "elsewhere", Connection = "close", ["X-Extra"] = "1" } }
      local w = hc:_build("Apps_create", { body = "{}" }):_wire()
      hc:close()
      for _, h in ipairs(w.headers) do
        local name, value = h:match("^([^:]+):%s*(.*)$")
        assert.is_nil(({ host = true, ["content-length"] = true, connection = true })[name:lower()], h)
        assert.is_true(value ~= "", h)
      end
      assert.equals("number", type(w.port))
      assert.is_false(w.insecure)
      assert.is_true(w.connect_timeout > 0)
      local v6 = H.client { base_url = "http://[::1]:8080/prefix" }
      w = v6:_build("Apps_show", { app_name = "x" }):_wire()
      v6:close()
      assert.equals("[::1]", w.host)
      assert.equals(8080, w.port)
      assert.equals("/prefix/v1/apps/x", w.target)
    end)

    it("refuses reports on a request the libcurl loop carries, and keeps a cancellation", function()
      local req = c:_submit("Apps_show", { app_name = "x" })
      H.raises("carried by the libcurl transport", function() req:_complete(200, nil, "") end)
      req:cancel()
      local b = c:_build("Apps_show", { app_name = "x" })
      b:cancel()
      assert.equals("done", b:_complete(200, nil, "{}"))
      assert.equals("cancelled", b:result().code)
      H.raises("bad argument", function() c:_build("Apps_show", { app_name = "x" }):_failed("weird") end)
    end)
  end)
end)
