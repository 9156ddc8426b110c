--- The handler of bench/openresty.conf.in (GET /client): one client.apps:get call with the
-- worker's client, made at the first request (FLY_API_TOKEN from the environment; rate
-- limiting off: the row measures the transport, not Fly's pacing of one app).
local fly = require "fly"

local ngx = rawget(_G, "ngx")

local M = {}

local client

--- Content handler: answers the app's name, or 502 with the error.
function M.get(base_url)
  client = client or assert(fly.new { base_url = base_url, rate_limit = false })
  local app, err = client.apps:get("bench-app")
  if not app then
    ngx.status = 502
    return ngx.say(tostring(err))
  end
  ngx.say(app.name)
end

return M
