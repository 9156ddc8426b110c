-- A process of a fleet, for spec/redis_client_spec.lua and the benchmark: a real client whose
-- rate limits are shared through Redis, starting one machine again and again.
--
--   lua spec/redis/client.lua BASE_URL TOKEN APP MACHINE COUNT [PAUSE_AFTER GO_FILE]
--
-- FLY_SPEC_RATE_LIMIT: the client's rate_limit option, as a Lua table constructor (e.g.
-- `{ redis = "redis://127.0.0.1:6379", scale = 20 }`). FLY_SPEC_CA: a CA file.
-- After PAUSE_AFTER calls it prints "paused" and waits (at most 60 s) until GO_FILE exists.
-- Output, a line each: "call <n> <wall-clock seconds> ok" or "call <n> <seconds> err <code>
-- <message>", "paused", and at the end "done <calls that succeeded>"; the client's warnings go to
-- stderr.
local fly = require "fly"
local socket = require "socket"

local base, token, app, machine, count, pause_after, go_file = ...
count = tonumber(count)
pause_after = tonumber(pause_after)
local load_string = rawget(_G, "loadstring") or load
local rate_limit = assert(load_string("return " .. (os.getenv("FLY_SPEC_RATE_LIMIT") or "{}")))()
local ca = os.getenv("FLY_SPEC_CA")
local client = assert(fly.new {
  token = token, base_url = base, rate_limit = rate_limit, timeout = 10, ca_file = ca ~= "" and ca or nil,
})

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local ok = 0
for i = 1, count do
  local res, err = client.machines:start(app, machine)
  if res then
    ok = ok + 1
    io.write(("call %d %.6f ok\n"):format(i, socket.gettime()))
  else
    io.write(("call %d %.6f err %s %s\n"):format(i, socket.gettime(), tostring(err.code), tostring(err.message)))
  end
  io.flush()
  if i == pause_after then
    io.write("paused\n")
    io.flush()
    local give_up = socket.gettime() + 60
    while not exists(go_file) and socket.gettime() < give_up do socket.sleep(0.01) end
  end
end
io.write(("done %d\n"):format(ok))
client:close()
