-- bench/latency-proxy.lua, which the network benchmark rests on: it forwards both ways, adds
-- its round trip to every exchange (one more for a new connection's handshake) and counts the
-- connections it accepts.
local H = require "helper"
local fly = require "fly"

local RTT = 0.1

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

describe("the latency proxy", function()
  local pid, stats, out, proxy_url
  setup(function()
    stats, out = os.tmpname(), os.tmpname()
    local port = assert(H.url():match(":(%d+)$"))
    local lua = os.getenv("FLY_SPEC_LUA") or "lua5.4"
    if lua:find("/build/asan/") then lua = "lua5.4" end   -- the proxy needs lua-luv, not the sanitized core
    local cmd = "%s %s/bench/latency-proxy.lua --target 127.0.0.1:%s --rtt %d --stats %s >%s 2>&1 & echo $!"
    local p = assert(io.popen(cmd:format(lua, H.ROOT, port, RTT * 1000, stats, out)))
    pid = assert(tonumber(p:read("*l")))
    p:close()
    for _ = 1, 100 do
      local port_p = (read_file(out) or ""):match("listening 127%.0%.0%.1:(%d+)")
      if port_p then proxy_url = H.url():gsub(":%d+$", ":" .. port_p); break end
      os.execute("sleep 0.05")
    end
    assert(proxy_url, "the proxy did not start: " .. tostring(read_file(out)))
  end)
  teardown(function()
    if pid then os.execute("kill " .. pid) end
    os.remove(stats)
    os.remove(out)
  end)

  it("adds a round trip per exchange, one more for the handshake, and counts connections", function()
    H.reset()
    local c = H.client { base_url = proxy_url }
    local app = H.app(H.client())
    local t0 = fly.now()
    assert(c.apps:get(app))                 -- a new connection: handshake + request
    local first = fly.now() - t0
    assert.is_true(first >= 2 * RTT, ("first call took %.3f s"):format(first))
    for _ = 1, 3 do
      t0 = fly.now()
      assert(c.apps:get(app))
      local d = fly.now() - t0
      assert.is_true(d >= RTT and d < RTT + 5, ("a call on the warm connection took %.3f s"):format(d))
    end
    c:close()
    assert.matches("connections 1\n", read_file(stats))
    assert.equals(4, H.stats().requests.Apps_show)
  end)
end)
