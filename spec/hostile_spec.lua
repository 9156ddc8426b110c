-- The client against a hostile server (spec/hostile/server.lua): every
-- answer ends in `nil, fly.Error` (or the intact result) within seconds,
-- with resident memory bounded.
local H = require "helper"
local fly = require "fly"

-- Under a sanitizer or valgrind (FLY_SPEC_LUA), the process is slower and
-- its memory is not the product's.
local plain = os.getenv("FLY_SPEC_LUA") == nil

-- Resident memory of a call (peak, VmHWM) must stay under this.
local MAX_RSS_MB = 256
-- A call against the hostile server must end within this (seconds); the
-- child running it is killed after KILL_AFTER.
local MAX_SECONDS, KILL_AFTER = 20, 60
if not plain then MAX_SECONDS, KILL_AFTER = 120, 300 end

local server = {}

-- Starts the server; its first line is "<port> <pid>".
local function start()
  local p = assert(io.popen(("exec %s %s/spec/hostile/server.lua %s/build/hostile"):format(
    "lua5.4", H.ROOT, H.ROOT)))
  local line = p:read("*l")
  local port, pid = (line or ""):match("^(%d+) (%d+)$")
  assert(port, "the hostile server did not start")
  server = { pipe = p, pid = pid, url = "http://127.0.0.1:" .. port }
end

local function stop()
  if server.pid then os.execute("kill " .. server.pid) end
  if server.pipe then server.pipe:close() end
  server = {}
end

local function client(opts)
  local o = { token = "hostile-token", base_url = server.url, rate_limit = false, timeout = MAX_SECONDS }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(fly.new(o))
end

-- Runs apps:get(case) in a child process (its own peak memory, killed
-- after KILL_AFTER seconds) and returns what it saw.
local function in_child(case, opts)
  local code = ([[
    local fly = require "fly"
    local o = { token = "hostile-token", base_url = %q, rate_limit = false, timeout = %d }
    for k, v in pairs(%s) do o[k] = v end
    local client = assert(fly.new(o))
    local t0 = fly.now()
    local v, err = client.apps:get(%q)
    local out = {
      elapsed = fly.now() - t0, type = type(v),
      code = err and err.code, status = err and err.status, retry_after = err and err.retry_after,
      body_len = err and err.body and #err.body, is_error = err and fly.Error.is(err) or false,
      body_size = err and err.body_size,
    }
    client:close()
    v, err = nil, nil
    local status = io.open("/proc/self/status"):read("*a")
    out.hwm_mb = tonumber(status:match("VmHWM:%%s*(%%d+)")) / 1024
    for k, x in pairs(out) do io.write(k, "=", tostring(x), "\n") end
  ]]):format(server.url, MAX_SECONDS, opts or "{}", case)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local lua = os.getenv("FLY_SPEC_LUA") or "lua5.4"
  local p = assert(io.popen(("timeout -s KILL %d %s %s 2>&1"):format(KILL_AFTER, lua, script)))
  local text = p:read("*a")
  p:close()
  os.remove(script)
  local out = {}
  for k, v in text:gmatch("(%w[%w_]*)=([^\n]*)") do
    if v == "true" or v == "false" then out[k] = v == "true" else out[k] = tonumber(v) or v end
  end
  assert(out.type, "the child did not finish: " .. text:sub(1, 400))
  return out
end

local function bounded(out)
  assert.is_true(out.elapsed < MAX_SECONDS, ("took %.1f s"):format(out.elapsed))
  if plain then
    assert.is_true(out.hwm_mb < MAX_RSS_MB, ("resident memory reached %.0f MB"):format(out.hwm_mb))
  end
end

-- No control character (ESC above all) in what a program would print or log.
local function printable(s)
  local at = s:find("[%z\1-\31\127]")
  assert.is_nil(at, ("control character %q in %q"):format(s:sub(at or 1, at or 1), s))
end

describe("a hostile server", function()
  lazy_setup(start)
  lazy_teardown(stop)

  it("is a real server: a plain answer decodes", function()
    local app = assert(client().apps:get("ok"))
    assert.equals("ok", app.id)
    assert.equals("personal", app.organization.slug)
  end)

  it("a listing that never ends, empty page after empty page: a protocol error, not a loop", function()
    local items, last = 0, nil
    for m, err in client().orgs:each_machine("endless") do
      if not m then
        last = err
        break
      end
      items = items + 1
    end
    assert.equals(0, items)
    assert.is_true(fly.Error.is(last))
    assert.equals("protocol", last.code)
    assert.matches(require("fly.pages").MAX_EMPTY_PAGES + 1 .. " empty pages in a row", last.message)
  end)

  it("a lease granted without a nonce: a protocol error, and fn never runs", function()
    local ran = false
    local v, err = client().machines:with_lease("app", "m1", { ttl = 2 }, function() ran = true end)
    assert.is_nil(v)
    assert.is_true(fly.Error.is(err))
    assert.equals("protocol", err.code)
    assert.is_false(err.retryable)
    assert.matches("carries no nonce", err.message)
    assert.is_false(ran)
  end)

  describe("cut short", function()
    it("a length, then a close before the body ends: protocol error", function()
      for _, case in ipairs { "truncated", "truncated-empty" } do
        local v, err = client().apps:get(case)
        assert.is_nil(v)
        assert.is_true(fly.Error.is(err))
        assert.equals("protocol", err.code)
      end
    end)

    it("a status line, then a close with no body, on a call that returns JSON: protocol error",
      function()
        local v, err = client().apps:get("close-after-status")
        assert.is_nil(v)
        assert.is_true(fly.Error.is(err))
        assert.equals("protocol", err.code)
      end)

    it("a body that is not the JSON it claims: protocol error", function()
      local v, err = client().apps:get("not-json")
      assert.is_nil(v)
      assert.equals("protocol", err.code)
      assert.equals(200, err.status)
    end)
  end)

  it("a chunked trailer line starting with HTTP/ leaves the result intact", function()
    local app, err = client().apps:get("trailer-http")
    assert.is_nil(err)
    assert.is_table(app)
    assert.equals("intact", app.id)
    assert.equals("personal", app.organization.slug)
  end)

  describe("a success that is not what the operation returns", function()
    for _, case in ipairs { "json-false", "json-null", "json-string", "json-as-text", "html", "long-text-type" } do
      it(case .. ": protocol error, never a fake result", function()
        local v, err = client().apps:get(case)
        assert.is_nil(v)
        assert.is_true(fly.Error.is(err))
        assert.equals("protocol", err.code)
        assert.equals(200, err.status)
      end)
    end

    it("a JSON media type over 63 characters still decodes", function()
      local app, err = client().apps:get("long-content-type")
      assert.is_nil(err)
      assert.is_table(app)
      assert.equals("long", app.id)
    end)
  end)

  describe("error text", function()
    it("escape sequences and control characters are escaped in tostring(err)", function()
      for _, case in ipairs { "control-chars", "control-chars-text" } do
        local v, err = client { retry = { attempts = 1 } }.apps:get(case)
        assert.is_nil(v)
        assert.is_true(fly.Error.is(err))
        printable(tostring(err))
        printable(err.message)
        assert.matches("red", tostring(err))
        assert.matches("end", tostring(err))
      end
    end)

    it("credentials the server sends back never reach the error's text or body", function()
      local v, err = client().apps:get("echo-token")
      assert.is_nil(v)
      assert.equals(401, err.status)
      for _, text in ipairs { tostring(err), err.message or "", err.body or "" } do
        assert.is_nil(text:find("hostile-token", 1, true), text)
      end
    end)

    it("a macaroon token's parts are masked too", function()
      local token = "FlyV1 fm2_aaaaaaaaaaaaaaaa,fm2_bbbbbbbbbbbbbbbb"
      local v, err = client { token = token }.apps:get("echo-token")
      assert.is_nil(v)
      assert.equals(401, err.status)
      for _, text in ipairs { tostring(err), err.message or "", err.body or "" } do
        assert.is_nil(text:find("fm2_aaaaaaaaaaaaaaaa", 1, true), text)
        assert.is_nil(text:find("fm2_bbbbbbbbbbbbbbbb", 1, true), text)
      end
      assert.matches("bad credentials", err.message)
    end)

    describe("credentials echoed back in other forms", function()
      -- a token with slashes (JSON may escape them), longer than a request id is kept (63 bytes)
      local token = "FlyV1 fm2_lJPE/SECRET/aaaaaaaaaaaaaaaaaaaaaaaaaaaa,fm2_bbbb/SECRET/bbbbbbbbbbbbbbbbbbbbbbbbbbbb"
      local parts = { "fm2_lJPE/SECRET/aaaa", "fm2_bbbb/SECRET/bbbb", "SECRET" }
      local function clean(texts)
        for _, text in ipairs(texts) do
          for _, part in ipairs(parts) do assert.is_nil(text:find(part, 1, true), text) end
          assert.is_nil(text:find("SECRET", 1, true), text)
        end
      end
      local function traced(case)
        local events = {}
        local c = client { token = token, retry = { attempts = 1 }, trace_bodies = true,
          trace = function(e) events[#events + 1] = e end }
        local v, err = c.apps:get(case)
        c:close()
        local texts = {}
        for _, e in ipairs(events) do
          texts[#texts + 1] = e.request_id or ""
          texts[#texts + 1] = e.body or ""
        end
        return v, err, texts
      end

      it("JSON-escaped in an error body: masked in its text, message and body", function()
        local v, err, texts = traced("echo-token-escaped")
        assert.is_nil(v)
        assert.equals(401, err.status)
        clean { tostring(err), err.message or "", err.body or "" }
        clean(texts)
        assert.matches("bad credentials", err.message)
      end)

      it("in an error whose connection drops inside the token: no head of it kept, in the error or the trace",
        function()
          local v, err, texts = traced("echo-token-cut")
          assert.is_nil(v)
          assert.equals("protocol", err.code) -- the body ended before its length, as "truncated"
          assert.matches("^{\"error\":\"bad credentials: FlyV1 %*+$", err.body)
          clean { tostring(err), err.message or "", err.body or "" }
          clean(texts)
          for _, text in ipairs(texts) do assert.is_nil(text:find("fm2_", 1, true), text) end
        end)

      it("cut short by the server, or percent-encoded: masked all the same", function()
        for _, case in ipairs { "echo-token-short", "echo-token-percent" } do
          local v, err, texts = traced(case)
          assert.is_nil(v)
          assert.equals(401, err.status)
          clean { tostring(err), err.message or "", err.body or "" }
          clean(texts)
          assert.is_nil((err.body or ""):find("fm2_", 1, true), err.body)
          assert.is_nil((err.body or ""):find("fm2%5F", 1, true), err.body)
          assert.matches("%*%*%*%*%*%*%*%*", err.body)
        end
      end)

      it("sent by the caller in a request body or header: masked in the trace's start event", function()
        local events = {}
        local c = client { token = token, retry = { attempts = 1 }, trace_bodies = true,
          headers = { ["X-Echo"] = token }, trace = function(e) events[#events + 1] = e end }
        c.tokens:authenticate(token) -- checking one's own token: the body holds it
        c:close()
        local starts = 0
        for _, e in ipairs(events) do
          if e.kind == "start" then
            starts = starts + 1
            assert.matches('^{"header":"FlyV1 %*+"}$', e.body)
            local texts = { e.body }
            for _, h in ipairs(e.headers) do texts[#texts + 1] = h end
            clean(texts)
          end
        end
        assert.equals(1, starts)
      end)

      it("given by mistake as a path parameter: masked where the path is shown", function()
        local events = {}
        local c = client { token = token, retry = { attempts = 1 }, trace = function(e) events[#events + 1] = e end }
        local v, err = c.apps:get((token:gsub("^FlyV1 ", "")))
        c:close()
        assert.is_nil(v)
        assert.equals(404, err.status) -- the server got the path as given
        assert.matches("^/v1/apps/%*+$", err.path)
        local texts = { tostring(err), err.message or "", err.path }
        for _, e in ipairs(events) do texts[#texts + 1] = e.path or "" end
        clean(texts)
      end)

      it("in a 2xx whose JSON does not parse: masked in the error's body and the trace", function()
        local v, err, texts = traced("echo-token-broken")
        assert.is_nil(v)
        assert.equals("protocol", err.code)
        clean { tostring(err), err.message or "", err.body or "" }
        clean(texts)
      end)

      it("in the request id of a success: masked in the trace and FLY_DEBUG's line", function()
        local v, _, texts = traced("echo-token-id")
        assert.equals("x", v.name)
        clean(texts)
        local lines = {}
        local c = client { token = token, trace = require("fly.trace").debug_line }
        local saved = io.stderr
        rawset(io, "stderr", { write = function(_, ...) lines[#lines + 1] = table.concat { ... } end })
        local ok, e = pcall(c.apps.get, c.apps, "echo-token-id")
        rawset(io, "stderr", saved)
        c:close()
        assert(ok, e)
        assert.matches("^fly: GET /v1/apps/echo%-token%-id 200 ", lines[1])
        clean(lines)
      end)

      it("in a body cut at max_body inside the token: no head of it kept, in the error or the trace", function()
        local events = {}
        local c = client { token = token, retry = { attempts = 1 }, max_body = 40, trace_bodies = true,
          trace = function(e) events[#events + 1] = e end }
        local v, err = c.apps:get("echo-token-broken") -- {"name":"x","token":"FlyV1 fm2_lJPE/SECR…
        c:close()
        assert.is_nil(v)
        assert.equals("too_large", err.code)
        assert.equals(40, #err.body)
        assert.equals(40, err.body_size)
        assert.matches('^{"name":"x","token":"FlyV1 %*+$', err.body)
        for _, e in ipairs(events) do
          if e.body then assert.is_nil(e.body:find("fm2_", 1, true), e.body) end
        end
      end)

      it("JSON-escaped in a body cut at max_body anywhere: no head of it kept", function()
        for cut = 28, 70 do -- {"name":"x","token":"FlyV1 f\u006d2_… : every cut inside its first part
          local c = client { token = token, retry = { attempts = 1 }, max_body = cut }
          local v, err = c.apps:get("echo-token-escaped-200")
          c:close()
          assert.is_nil(v)
          assert.equals("too_large", err.code)
          local unescaped = err.body:gsub("\\u00(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
            :gsub("\\/", "/")
          assert.is_nil(unescaped:find("fm", 1, true), ("cut at %d: %s"):format(cut, err.body))
        end
      end)

      it("in a request id longer than it is kept: no head of the token survives the cut", function()
        local v, err, texts = traced("echo-token-id-503")
        assert.is_nil(v)
        assert.equals(503, err.status)
        clean { err.request_id or "", tostring(err) }
        clean(texts)
      end)
    end)

    it("a 10 MB error body is kept to a few KiB in err.body", function()
      local out = in_child("big-error")
      assert.is_true(out.is_error)
      assert.equals(400, out.status)
      assert.is_true(out.body_len <= 4096, ("err.body holds %d bytes"):format(out.body_len))
      assert.equals(10 * 1024 * 1024 - 1, out.body_size)
      bounded(out)
    end)
  end)

  describe("unbounded answers", function()
    it("a 1 MB gzip body inflating to 1 GB: too_large, memory bounded", function()
      local out = in_child("gzip-bomb")
      assert.equals("nil", out.type)
      assert.is_true(out.is_error)
      assert.equals("too_large", out.code)
      bounded(out)
    end)

    it("a 100 MB body: too_large, memory bounded", function()
      local out = in_child("big-body")
      assert.equals("nil", out.type)
      assert.equals("too_large", out.code)
      bounded(out)
    end)

    it("30 MB of [{},{},…]: too_large, memory bounded", function()
      local out = in_child("many-objects")
      assert.equals("nil", out.type)
      assert.equals("too_large", out.code)
      bounded(out)
    end)

    it("429 with Retry-After: 86399 and no deadline: the 429 at once, with err.retry_after",
      function()
        local out = in_child("retry-after-day")
        assert.equals("nil", out.type)
        assert.equals(429, out.status)
        assert.equals(86399, out.retry_after)
        bounded(out)
      end)

    it("a Retry-After as an HTTP date a day ahead: the 429 at once", function()
      local t0 = fly.now()
      local v, err = client().apps:get("retry-after-date")
      assert.is_nil(v)
      assert.equals(429, err.status)
      assert.is_true(err.retry_after > 86000 and err.retry_after <= 86400, tostring(err.retry_after))
      assert.equals(1, err.attempts)
      assert.is_true(fly.now() - t0 < MAX_SECONDS)
    end)

    it("a Retry-After within retry.max_wait is waited for, one over it is not", function()
      local t0 = fly.now()
      local v, err = client { retry = { attempts = 2, max_wait = 1 } }.apps:get("retry-after-2")
      assert.is_nil(v)
      assert.equals(429, err.status)
      assert.equals(2, err.retry_after)
      assert.equals(1, err.attempts)
      assert.is_true(fly.now() - t0 < 1.5)
      t0 = fly.now()
      v, err = client { retry = { attempts = 2, max_wait = 5 } }.apps:get("retry-after-2")
      assert.is_nil(v)
      assert.equals(2, err.attempts)
      assert.is_true(fly.now() - t0 >= 2, "the Retry-After wait was not honoured")
    end)
  end)

  describe("max_body", function()
    it("a body over a small max_body: too_large, not retried, the head of what came kept", function()
      local v, err = client { max_body = 16 }.apps:get("ok")
      assert.is_nil(v)
      assert.is_true(fly.Error.is(err))
      assert.equals("too_large", err.code)
      assert.equals(16, #err.body)
      assert.equals(16, err.body_size)
      assert.equals(200, err.status)
      assert.is_false(err.retryable)
      assert.equals(1, err.attempts)
      assert.matches("max_body", tostring(err))
    end)

    it("is checked by fly.new", function()
      assert.has_error(function() fly.new { token = "t", base_url = server.url, max_body = 0 } end)
      assert.has_error(function() fly.new { token = "t", base_url = server.url, max_body = "1" } end)
    end)

    it("reaches another transport through the seam, which may report too_large", function()
      local c = client { max_body = 1000 }
      local req = c:_build("Apps_show", { app_name = "x" })
      assert.equals(1000, req:_wire().max_body)
      assert.equals("done", req:_failed("too_large", "the response body is larger than max_body", true))
      local res = req:result()
      assert.equals("too_large", res.code)
      assert.is_false(res.retryable)
    end)

    it("a seam report of a body over the cap is too_large", function()
      local req = client { max_body = 8 }:_build("Apps_show", { app_name = "x" })
      assert.equals("done", req:_complete(200, { ["Content-Type"] = "application/json" }, '{"id":"x","name":"y"}'))
      assert.equals("too_large", req:result().code)
    end)
  end)
end)
