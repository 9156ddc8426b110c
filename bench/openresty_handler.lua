--- The handler of bench/openresty.conf.in (GET /client, /client-tls): one client.apps:get call
-- with the worker's client for that base URL, made at its first request (FLY_API_TOKEN from the
-- environment; rate limiting off: the row measures the transport, not Fly's pacing of one app).
local fly = require "fly"

local ngx = rawget(_G, "ngx")

local M = {}

local clients = {}

--- Content handler: answers the app's name, or 502 with the error.
function M.get(base_url)
  local client = clients[base_url]
  if not client then
    client = assert(fly.new { base_url = base_url, rate_limit = false })
    clients[base_url] = client
  end
  local app, err = client.apps:get("bench-app")
  if not app then
    ngx.status = 502
    return ngx.say(tostring(err))
  end
  ngx.say(app.name)
end

--- Content handler: the same request written by hand on a bare cosocket (no checks, no
-- timeouts, no JSON): the most any Lua client inside nginx can get.
function M.bare(host, port)
  local sock = ngx.socket.tcp()
  assert(sock:connect(host, port))
  assert(sock:send("GET /v1/apps/bench-app HTTP/1.1\r\nHost: " .. host .. "\r\nAccept: application/json\r\n\r\n"))
  local head = assert(sock:receiveuntil("\r\n\r\n")())
  local body = assert(sock:receive(tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)"))))
  sock:setkeepalive(60000)
  ngx.say(body:match('"name":"([^"]*)"'))
end

return M
