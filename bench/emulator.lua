--- What the emulator benchmarks share: the emulator's control endpoints and
-- setup through a client without limits.
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local fly = require "fly"

local E = {}

E.URL = assert(os.getenv("FLY_API_HOSTNAME"), "run through spec/emulator/with-emulator")
E.TOKEN = assert(os.getenv("FLY_API_TOKEN"))

--- Calls a control endpoint; returns the decoded answer.
function E.control(method, path, body)
  local out, src = {}, body and cjson.encode(body)
  local _, status = http.request {
    url = E.URL .. "/__emulator/" .. path, method = method, sink = ltn12.sink.table(out),
    source = src and ltn12.source.string(src),
    headers = src and { ["content-type"] = "application/json", ["content-length"] = #src },
  }
  assert(status == 200, "control " .. path .. " failed: " .. tostring(status))
  return cjson.decode(table.concat(out))
end

--- A client for setting things up: no client-side limits (the emulator's are off then).
function E.setup_client()
  return assert(fly.new { token = E.TOKEN, base_url = E.URL, rate_limit = false })
end

--- Creates an app and `n` machines in state "created" (startable); returns app name and ids.
function E.machines(client, app, n)
  assert(client.apps:create { app_name = app, org_slug = "personal" })
  local ids = client:map((function()
    local t = {}
    for i = 1, n do t[i] = i end
    return t
  end)(), function(i)
    local m = assert(client:call("Machines_create", {
      app_name = app, body = { name = "m" .. i, skip_launch = true, config = { image = "nginx" } } }))
    return m.id
  end)
  return ids
end

--- Resident memory of this process, in KiB.
function E.rss_kib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

return E
