-- A throwaway redis-server for the specs (spec/redis/start and stop): `start([port, dir])`,
-- `stop([keep])`, `cli(args)` -> redis-cli's output; the running one's `port` and `dir`.
local H = require "helper"

local server = {}

-- What a command printed.
local function sh(cmd) return (H.capture(cmd)) end

function server.start(port, dir)
  local out = sh(H.ROOT .. "/spec/redis/start" .. (port and (" " .. port .. " " .. dir) or ""))
  local p, d = out:match("^(%d+) (%S+)")
  assert(p, "redis-server did not start: " .. out)
  server.port, server.dir = p, d
end

function server.stop(keep)
  sh(H.ROOT .. "/spec/redis/stop " .. (keep and "--keep " or "") .. server.dir)
end

function server.cli(args)
  return (sh(("redis-cli -h 127.0.0.1 -p %s %s 2>&1"):format(server.port, args)))
end

return server
