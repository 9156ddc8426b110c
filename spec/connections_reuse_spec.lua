-- Unsafe calls on warm connections (#reuse): a create that runs on a reused connection which
-- then drops before any response byte executes exactly once and fails with retryable = false,
-- over HTTP/1.1 and HTTP/2; sequential and concurrent mutations share connections.
-- Tagged #reuse: `make test-reuse` runs only these (over TLS and plain HTTP); `make test` and
-- `make test-tls` run them with the rest.
local H = require "helper"
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"

local function start_tls()
  if H.TLS then
    local env = {}
    for _, k in ipairs { "FLY_EMULATOR_URL", "FLY_EMULATOR_CA", "FLY_EMULATOR_PLAIN_URL", "FLY_EMULATOR_H1_URL" } do
      env[k] = H.listener(k)
    end
    return env, function() end
  end
  local p = assert(io.popen(H.ROOT .. "/spec/emulator/run --tls --env"))
  local env = {}
  for line in p:lines() do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then env[k] = v end
  end
  p:close()
  assert(env.FLY_EMULATOR_URL, "the TLS emulator did not start")
  return env, function() os.execute(H.ROOT .. "/spec/emulator/stop " .. env.FLY_EMULATOR_URL) end
end

describe("unsafe calls on warm connections #reuse", function()
  local env, stop
  setup(function() env, stop = start_tls() end)
  teardown(function() stop() end)

  local function control(method, path, body)
    local out, src = {}, body ~= nil and cjson.encode(body) or nil
    local _, status = http.request {
      url = env.FLY_EMULATOR_PLAIN_URL .. "/__emulator/" .. path, method = method,
      sink = ltn12.sink.table(out), source = src and ltn12.source.string(src) or nil,
      headers = src and { ["content-type"] = "application/json", ["content-length"] = #src } or nil,
    }
    assert(status == 200, "emulator control " .. path .. " failed")
    return cjson.decode(table.concat(out))
  end

  local c
  before_each(function()
    control("POST", "reset")
    control("POST", "config", { delays = { transition = 0 } })
  end)
  after_each(function() if c then c:close() end end)

  for _, case in ipairs {
    { "HTTP/2 over TLS", "FLY_EMULATOR_URL", "2.0" },
    { "HTTP/1.1 over TLS", "FLY_EMULATOR_H1_URL", "1.1" },
    { "HTTP/1.1 over plain HTTP", "FLY_EMULATOR_PLAIN_URL", "1.1" },
  } do
    local name, key, version = case[1], case[2], case[3]

    it("a create whose reused connection drops after it ran executes once, not retryable: " .. name, function()
      c = H.client { base_url = env[key], ca_file = env.FLY_EMULATOR_CA }
      local app = H.app(c)
      assert(c.apps:get(app))                        -- the connection is warm
      local before = control("GET", "stats")
      control("POST", "faults", { method = "POST", path = "/v1/apps/[^/]+/machines", kind = "close_after" })
      local m, err = c.machines:create(app, { config = { image = "nginx" } })
      local after = control("GET", "stats")
      assert.is_nil(m)
      assert.equals("reset", err.code)
      assert.is_false(err.retryable)
      assert.equals(1, err.attempts)
      assert.equals(1, after.executed.Machines_create)
      assert.equals(1, after.requests.Machines_create)  -- nobody sent it again
      assert.equals(before.connections, after.connections)  -- it went on the warm connection
      assert.equals(version, after.last_request.http_version)
      assert.equals(1, #assert(c.machines:list(app)))
    end)

    it("sequential machine starts share one connection: " .. name, function()
      c = H.client { base_url = env[key], ca_file = env.FLY_EMULATOR_CA }
      local app = H.app(c)
      local ids = {}
      for i = 1, 5 do
        ids[i] = assert(c.machines:create(app, { config = { image = "nginx" }, skip_launch = true })).id
      end
      for _, id in ipairs(ids) do assert(c.machines:start(app, id)) end
      local s = control("GET", "stats")
      assert.equals(5, s.executed.Machines_start)
      assert.equals(1, s.connections)
    end)
  end

  it("100 starts at once share at most 2 HTTP/2 connections", function()
    c = H.client { base_url = env.FLY_EMULATOR_URL, ca_file = env.FLY_EMULATOR_CA }
    local app = H.app(c)
    local ids = {}
    for i = 1, 100 do
      ids[i] = assert(c.machines:create(app, { config = { image = "nginx" }, skip_launch = true })).id
    end
    local before = control("GET", "stats")
    local _, errs = c:map(ids, function(id) return c.machines:start(app, id) end, { concurrency = 100 })
    for i = 1, 100 do assert.is_nil(errs[i]) end
    local after = control("GET", "stats")
    assert.equals(100, after.executed.Machines_start)
    assert.is_true(after.connections - before.connections <= 2,
      ("connections opened: %d"):format(after.connections - before.connections))
  end)
end)
