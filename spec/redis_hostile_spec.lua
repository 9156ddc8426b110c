-- The shared rate limiter against servers that speak Redis's protocol badly
-- (spec/redis/hostile.lua), and the client's loop around it: every admission
-- ends (granted by Redis, or by the local bucket with a warning), the process
-- never aborts, its memory stays bounded, no password reaches a message, and
-- a call's deadline holds while Redis is slow to answer.
local H = require "helper"
local socket = require "socket"

local DRIVER = os.getenv("FLY_SPEC_REDIS_DRIVER") or (H.ROOT .. "/build/spec/redis-driver")

-- Starts the hostile server in `mode`: { url, stop }.
local function hostile(mode)
  local p = assert(io.popen(("exec lua5.4 %s/spec/redis/hostile.lua %s"):format(H.ROOT, mode)))
  local port, pid = (p:read("*l") or ""):match("^(%d+) (%d+)$")
  assert(port, "the hostile server did not start")
  return {
    url = "redis://127.0.0.1:" .. port,
    stop = function()
      os.execute("kill " .. pid)
      p:close()
    end,
  }
end

-- Runs the driver (spec/redis/driver.c) for `count` admissions on one bucket, its resident
-- memory's peak reported: { grants = { source... }, warnings = {...}, ok (exit status 0), out, kb }.
local function drive(url, count)
  local out, ok = H.capture(("timeout 60 %s --timeout 2 %s hostile-%d 20 3 %d 2>&1"):format(DRIVER, url, os.time(),
    count))
  local r = { grants = {}, warnings = {}, out = out, ok = ok, kb = tonumber(out:match("maxrss (%d+)")) }
  for src in out:gmatch("grant %d+ %S+ (%a+)") do r.grants[#r.grants + 1] = src end
  for w in out:gmatch("warning ([^\n]+)") do r.warnings[#r.warnings + 1] = w end
  return r
end

-- #driver: the driver is a C program built apart from the core (see spec/redis_spec.lua).
describe("the shared rate limiter against a server that is not a sound Redis #driver", function()
  local server
  after_each(function() if server then server.stop() end server = nil end)

  local function falls_back(mode, warning)
    server = hostile(mode)
    local r = drive(server.url, 5)
    assert.is_true(r.ok, r.out)
    assert.equals(5, #r.grants, r.out)
    for _, src in ipairs(r.grants) do assert.equals("local", src, r.out) end
    assert.matches(warning, r.warnings[1] or "", 1, true)
    return r
  end

  it("two answers to one command: falls back, where hiredis aborted the process", function()
    falls_back("double", "an answer to no command")
  end)

  it("answers before any command, as the connection opens: falls back", function()
    falls_back("greeting", "an answer to no command")
  end)

  it("a delay of 285,000 years: falls back instead of waiting for it", function()
    falls_back("huge", "EVALSHA: a delay of 9000000000000000000 us")
  end)

  it("an answer announced as 2 GB: falls back at once, its bytes never buffered", function()
    local r = falls_back("endless", "an answer longer than any the limiter asks for")
    assert.is_true(r.kb < 64 * 1024, ("resident memory reached %d KB"):format(r.kb))
  end)

  it("an AUTH error that quotes the password: the message keeps only its code", function()
    server = hostile("auth-echo")
    local r = drive(server.url:gsub("^redis://", "redis://:hunter2secret@"), 2)
    assert.is_true(r.ok, r.out)
    assert.matches("AUTH: refused (ERR)", r.warnings[1] or "", 1, true)
    assert.is_nil(r.out:find("hunter2", 1, true))
  end)
end)

describe("a client whose shared limiter is slow to answer", function()
  local server
  after_each(function() if server then server.stop() end server = nil end)

  it("keeps the call's deadline while it waits for Redis", function()
    server = hostile("silent")
    local c = H.client { deadline = 0.3, rate_limit = { redis = server.url, redis_timeout = 3 } }
    local app = H.app(H.client())
    local t0 = socket.gettime()
    local got, err = c.apps:get(app)
    local took = socket.gettime() - t0
    c:close()
    assert.is_nil(got)
    assert.equals("timeout", err.code)
    assert.matches("did not answer before the deadline", err.message)
    assert.is_true(took < 2, ("the call took %.2f s"):format(took))
  end)
end)

describe("a client of a real Redis with exactly as many sockets as its poll has room for", function()
  local server = require "redis.server" -- a throwaway redis-server
  setup(function() server.start() end)
  teardown(function() server.stop() end)

  it("reads Redis's answer as it comes, not at the limiter's timeout", function()
    local setup_client = H.client()
    local slow = {}
    for i = 1, 16 do slow[i] = H.app(setup_client) end
    local fast = H.app(setup_client)
    setup_client:close()
    H.fault { op = "Apps_show", kind = "delay", delay = 3, count = 16 }
    local c = H.client { rate_limit = { redis = "redis://127.0.0.1:" .. server.port, redis_timeout = 3 } }
    for i = 1, 16 do c:spawn(function() return c.apps:get(slow[i]) end) end
    c:run(0.5) -- 16 calls in flight, a socket each
    local t0 = socket.gettime()
    assert(c.apps:get(fast))
    local took = socket.gettime() - t0
    c:close()
    -- (unwatched, the answer was read when libcurl's timer next woke the loop, about 1 s on)
    assert.is_true(took < 0.5, ("the call took %.2f s"):format(took))
  end)
end)
