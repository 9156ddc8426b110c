--- Inside the spec nginx: a scripted HTTP server on the raw request socket, so a spec
-- controls every byte a client reads (split writes, pauses, chunked framing, closed
-- keep-alive connections). A script is a list of steps stored in the `fly_spec` shared dict
-- under a name (any worker may serve it); `GET|POST /__script/NAME` plays it:
--   {"send", "bytes"}   write bytes
--   {"sleep", seconds}  pause
--   {"request"}         read the next request on the connection (head and Content-Length body)
--   {"close"}           end (nginx closes the connection)
-- Every request read is counted (`script.count(name)`) and the last one kept (`script.last`).
local cjson = require "cjson.safe"

local ngx = rawget(_G, "ngx")

local M = {}

local function dict() return ngx.shared.fly_spec end

--- Stores a script under name and resets its counters.
function M.define(name, steps)
  assert(dict():set("script:" .. name, assert(cjson.encode(steps))))
  dict():set("count:" .. name, 0)
  dict():delete("last:" .. name)
end

--- Number of requests the script's connections have read.
function M.count(name) return dict():get("count:" .. name) or 0 end

--- The last request read: head and body as one string.
function M.last(name) return dict():get("last:" .. name) end

local function record(name, raw)
  dict():incr("count:" .. name, 1, 0)
  dict():set("last:" .. name, raw)
end

local function read_request(sock)
  local head, err = sock:receiveuntil("\r\n\r\n")()
  if not head then return nil, err end
  local len = tonumber(head:lower():match("\ncontent%-length:%s*(%d+)")) or 0
  local body = ""
  if len > 0 then
    body, err = sock:receive(len)
    if not body then return nil, err end
  end
  return head .. "\r\n\r\n" .. body
end

--- Content handler for `location /__script/`.
function M.serve()
  local name = ngx.var.uri:match("^/__script/(.+)$")
  local steps = name and cjson.decode(dict():get("script:" .. name) or "null")
  if not steps then
    ngx.status = 404
    ngx.say("no script ", name)
    return
  end
  local head = ngx.req.raw_header()
  local len = tonumber(ngx.var.http_content_length) or 0
  local sock = assert(ngx.req.socket(true))
  sock:settimeouts(5000, 5000, 5000)
  local body = len > 0 and sock:receive(len) or ""
  record(name, head .. (body or ""))
  for _, step in ipairs(steps) do
    local op = step[1]
    if op == "send" then
      if not sock:send(step[2]) then return end
    elseif op == "sleep" then
      ngx.sleep(step[2])
    elseif op == "request" then
      local raw = read_request(sock)
      if not raw then return end
      record(name, raw)
    elseif op == "close" then
      return
    else
      error("unknown script step " .. tostring(op))
    end
  end
end

return M
