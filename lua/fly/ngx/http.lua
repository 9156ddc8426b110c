--- One HTTP/1.1 exchange over an nginx cosocket (OpenResty): connect (through the
-- cosocket keep-alive pool), TLS with SNI and verification, send one request, read one
-- response with limits, put the connection back in the pool when it can be reused.
-- `require "fly.ngx.http"`.
--
-- It never repeats a request on its own, with one exception that only a request the caller
-- marks `safe` gets: a connection taken from the pool may have been closed by the server
-- while it sat there. nginx drops pooled connections whose peer closed as soon as it sees the
-- close, but the close can still be in flight when the connection is taken, and a cosocket
-- has no zero-timeout peek to find out before writing (a short read timeout would only add
-- latency, the race stays). So:
--
-- * a request that is not safe to repeat never takes a pooled connection: it always gets a
--   fresh one, which is closed after the response (`Connection: close`); whatever fails
--   after its first byte was written is reported with `sent = true`;
-- * a safe request may take a pooled connection; when that connection fails before any
--   byte of the response arrived (write error, or closed while waiting for the status
--   line), the request is sent once more on a fresh connection.
local phase = require "fly.ngx.phase"

local M = {}

local ngx = rawget(_G, "ngx")
local concat = table.concat
local floor, min = math.floor, math.min

--- Defaults for `request`'s options (seconds and bytes).
M.defaults = {
  connect_timeout = 10,       -- TCP connect and TLS handshake
  timeout = 60,               -- the whole attempt: connect, send, and read the response
  max_header = 64 * 1024,     -- status line and headers (also the trailers of a chunked body)
  max_body = 64 * 1024 * 1024,
  keepalive_timeout = 60,     -- how long an idle connection stays in the pool
}

local function opt(opts, name)
  local v = opts[name]
  if v == nil then return M.defaults[name] end
  return v
end

local function fail(code, message, sent)
  return nil, { code = code, message = message, sent = sent and true or false }
end

local function ms(seconds)
  if seconds < 0.001 then return 1 end
  return floor(seconds * 1000)
end

local function remaining(deadline)
  return deadline - ngx.now()
end

-- The code for a cosocket error message.
local function io_code(err)
  if err == "timeout" then return "timeout" end
  return "reset"
end

-- Every setting that makes two connections interchangeable goes into the pool name.
local function pool_name(req, opts, verify, server_name)
  local tls = req.scheme == "https"
  return concat({ "fly", req.scheme, req.host, tostring(req.port), opts.address or "",
    tls and server_name or "", tls and (verify and "verify" or "insecure") or "" }, "|")
end

local DEFAULT_PORT = { http = 80, https = 443 }

-- The request as a list of strings for sock:send.
local function format(req, keep)
  local host = req.host
  if req.port ~= DEFAULT_PORT[req.scheme] then host = host .. ":" .. tostring(req.port) end
  local out = { req.method, " ", req.target, " HTTP/1.1\r\nHost: ", host, "\r\n" }
  local n = 6
  local headers = req.headers
  if headers then
    for i = 1, #headers do
      out[n + 1], out[n + 2] = headers[i], "\r\n"
      n = n + 2
    end
  end
  local body = req.body
  if body or req.method == "POST" or req.method == "PUT" or req.method == "PATCH" then
    n = n + 1
    out[n] = "Content-Length: " .. (body and #body or 0) .. "\r\n"
  end
  if not keep then
    n = n + 1
    out[n] = "Connection: close\r\n"
  end
  out[n + 1] = "\r\n"
  if body and #body > 0 then out[n + 2] = body end
  return out
end

-- Reads from a receiveuntil iterator up to its pattern, at most limit bytes; returns the
-- data, or nil, err, partial (err "too_large" past the limit).
local function read_until(sock, it, limit, deadline)
  local first, parts, n = nil, nil, 0 -- most often it all comes in one piece: no table then
  while true do
    local left = remaining(deadline)
    if left <= 0 then return nil, "timeout", parts and concat(parts) or first or "" end
    sock:settimeout(ms(left))
    local data, err, partial = it(limit - n + 1)
    if not data then
      local got = parts and concat(parts) or first or ""
      if err then return nil, err, got .. (partial or "") end
      return got
    end
    n = n + #data
    if n > limit then return nil, "too_large" end
    if parts then
      parts[#parts + 1] = data
    elseif first then
      parts = { first, data }
    else
      first = data
    end
  end
end

local function receive(sock, what, deadline)
  local left = remaining(deadline)
  if left <= 0 then return nil, "timeout" end
  sock:settimeout(ms(left))
  return sock:receive(what)
end

local byte, sub, find, lower = string.byte, string.sub, string.find, string.lower

-- Whether byte b is a space or a tab.
local function blank(b) return b == 32 or b == 9 end

-- Parses a response head; returns status, version, headers (lower-case names, repeated
-- ones joined with ", "), lines ({"Name: value", ...}), or nil, message. Lines end at CR or
-- LF; plain finds instead of patterns with captures: this runs for every response.
local function parse_head(head)
  local minor, status = head:match("^HTTP/1%.([01]) (%d%d%d)")
  if not status then return nil, "not an HTTP/1.x status line" end
  local headers, lines = {}, {}
  local len = #head
  local pos = find(head, "[\r\n]", 13) or len + 1
  while pos <= len do
    local b = byte(head, pos)
    if b == 13 or b == 10 then
      pos = pos + 1
    else
      local stop = (find(head, "[\r\n]", pos) or len + 1) - 1
      local colon = find(head, ":", pos, true)
      if not colon or colon > stop or colon == pos or find(sub(head, pos, colon - 1), "%s") then
        return nil, "malformed header line"
      end
      local name = sub(head, pos, colon - 1)
      local i, j = colon + 1, stop
      while i <= j and blank(byte(head, i)) do i = i + 1 end
      while j >= i and blank(byte(head, j)) do j = j - 1 end
      local value = sub(head, i, j)
      local key = lower(name)
      local prev = headers[key]
      headers[key] = prev and (prev .. ", " .. value) or value
      lines[#lines + 1] = name .. ": " .. value
      pos = stop + 1
    end
  end
  return tonumber(status), minor == "1" and "1.1" or "1.0", headers, lines
end

-- Reads a chunked body (RFC 9112 7.1): sizes with optional extensions, data, CRLF, the last
-- chunk, then trailer lines up to the empty line; trailers are read and dropped.
local function read_chunked(sock, deadline, max_body, max_header)
  local line_it = sock:receiveuntil("\r\n")
  local parts, total = {}, 0
  while true do
    local line, err = read_until(sock, line_it, 1024, deadline)
    if not line then return nil, err == "too_large" and "protocol" or err, "chunk size line" end
    local hex = line:match("^(%x+)[ \t]*;?") or line:match("^(%x+)$")
    if not hex then return nil, "protocol", "bad chunk size line" end
    local size = tonumber(hex, 16)
    if size == 0 then break end
    if total + size > max_body then return nil, "too_large" end
    local data
    data, err = receive(sock, size, deadline)
    if not data then return nil, err, "chunk data" end
    local crlf
    crlf, err = receive(sock, 2, deadline)
    if not crlf then return nil, err, "chunk end" end
    if crlf ~= "\r\n" then return nil, "protocol", "chunk not followed by CRLF" end
    total = total + size
    parts[#parts + 1] = data
  end
  local trailer_bytes = 0
  while true do
    local line, err = read_until(sock, line_it, max_header - trailer_bytes, deadline)
    if not line then return nil, err == "too_large" and "too_large" or err, "trailers" end
    if line == "" then break end
    trailer_bytes = trailer_bytes + #line + 2
  end
  return concat(parts)
end

-- Reads until the server closes, at most max_body bytes.
local function read_to_close(sock, deadline, max_body)
  local parts, n = {}, 0
  while true do
    local left = remaining(deadline)
    if left <= 0 then return nil, "timeout" end
    sock:settimeout(ms(left))
    local data, err = sock:receiveany(65536)
    if not data then
      if err == "closed" then return concat(parts) end
      return nil, err
    end
    n = n + #data
    if n > max_body then return nil, "too_large" end
    parts[#parts + 1] = data
  end
end

local function has_token(value, token)
  if not value then return false end
  for t in value:lower():gmatch("[^,%s]+") do
    if t == token then return true end
  end
  return false
end

-- Connects (and shakes hands for TLS); returns sock, reused times, or nil, err.
local function open(req, opts, deadline, fresh)
  local verify = not opts.insecure
  local server_name = opts.server_name or req.host
  local pool = pool_name(req, opts, verify, server_name)
  if fresh then pool = "fly-once|" .. pool end
  local sock = ngx.socket.tcp()
  local ct = min(opt(opts, "connect_timeout"), remaining(deadline))
  if ct <= 0 then return fail("timeout", "the attempt's time ran out before connecting", false) end
  sock:settimeouts(ms(ct), ms(remaining(deadline)), ms(remaining(deadline)))
  local ok, err = sock:connect(opts.address or req.host, req.port,
    { pool = pool, pool_size = opts.pool_size })
  if not ok then
    local code = "connect"
    if err == "timeout" then code = "timeout"
    elseif err:find("resolve", 1, true) or err:find("resolver", 1, true) then code = "resolve" end
    return fail(code, ("cannot connect to %s:%s: %s"):format(opts.address or req.host, req.port, err), false)
  end
  local reused = sock:getreusedtimes() or 0
  if req.scheme == "https" and reused == 0 then
    ok, err = sock:sslhandshake(false, server_name, verify)
    if ok and not sock:getreusedtimes() then
      -- lua-nginx-module 0.10.23 with resty.core: a verification that fails after the handshake
      -- yielded may be reported as success on a socket it already closed
      ok, err = nil, "the connection was closed during verification"
    end
    if not ok then
      -- the cosocket is closed already; closing it again here breaks the next verifying
      -- handshake in this worker (lua-nginx-module 0.10.23: it then "succeeds" on a dead socket)
      return fail(err == "timeout" and "timeout" or "tls",
        ("TLS handshake with %s failed: %s"):format(server_name, err), false)
    end
  end
  return sock, reused
end

-- One exchange on an open connection. On failure the second result also says whether the
-- connection was a pooled one that failed before any byte of the response came (stale).
local function exchange(sock, req, opts, deadline, keep)
  local left = remaining(deadline)
  if left <= 0 then return fail("timeout", "the attempt's time ran out before sending", false) end
  sock:settimeout(ms(left))
  local ok, err = sock:send(format(req, keep))
  if not ok then
    local res, e = fail(io_code(err), "sending the request failed: " .. err, true)
    e.stale = true
    return res, e
  end
  local max_header = opt(opts, "max_header")
  local head_it = sock:receiveuntil("\r\n\r\n")
  local head, status, version, headers, lines
  for _ = 1, 10 do -- interim 1xx responses come before the final one
    local partial
    head, err, partial = read_until(sock, head_it, max_header, deadline)
    if not head then
      if err == "too_large" then return fail("too_large", "the response head is larger than max_header", true) end
      local res, e = fail(io_code(err), "reading the response head failed: " .. err, true)
      e.stale = err ~= "timeout" and (partial == nil or partial == "") and status == nil
      return res, e
    end
    status, version, headers, lines = parse_head(head)
    if not status then return fail("protocol", "malformed response: " .. version, true) end
    if status >= 200 or status == 101 then break end
  end
  if status < 200 then return fail("protocol", "no final response after interim ones", true) end

  local max_body = opt(opts, "max_body")
  local body, ctx
  local framed = true
  local te, cl = headers["transfer-encoding"], headers["content-length"]
  if req.method == "HEAD" or status == 204 or status == 304 then
    body = ""
  elseif te and not has_token(te, "identity") then
    if te:lower():match("chunked%s*$") then
      body, err, ctx = read_chunked(sock, deadline, max_body, max_header)
    else
      framed = false
      body, err = read_to_close(sock, deadline, max_body)
    end
  elseif cl then
    local n = cl:match("^%d+$") and tonumber(cl)
    if not n then return fail("protocol", "bad Content-Length: " .. cl, true) end
    if n > max_body then
      return fail("too_large", "the response body (" .. n .. " bytes) is larger than max_body", true)
    end
    if n > 0 then
      body, err = receive(sock, n, deadline)
    else
      body = ""
    end
  else
    framed = false
    body, err = read_to_close(sock, deadline, max_body)
  end
  if not body then
    if err == "too_large" then return fail("too_large", "the response body is larger than max_body", true) end
    if err == "protocol" then return fail("protocol", "malformed chunked body: " .. tostring(ctx), true) end
    return fail(io_code(err), "reading the response body failed: " .. err .. (ctx and (" (" .. ctx .. ")") or ""), true)
  end
  local reusable = keep and framed and version == "1.1" and not has_token(headers["connection"], "close")
  return { status = status, headers = headers, header_lines = lines, body = body }, reusable
end

local function check_req(req)
  if type(req) ~= "table" then error("fly.ngx.http: request must be a table", 3) end
  for _, k in ipairs { "method", "scheme", "host", "target" } do
    if type(req[k]) ~= "string" then error("fly.ngx.http: request." .. k .. " must be a string", 3) end
  end
  if req.scheme ~= "http" and req.scheme ~= "https" then
    error("fly.ngx.http: request.scheme must be http or https", 3)
  end
  if type(req.port) ~= "number" then error("fly.ngx.http: request.port must be a number", 3) end
  if req.body ~= nil and type(req.body) ~= "string" then error("fly.ngx.http: request.body must be a string", 3) end
  for _, line in ipairs(req.headers or {}) do
    if type(line) ~= "string" or line:find("[\r\n]") or not line:find("^[^:%s]+:") then
      error("fly.ngx.http: bad header line " .. string.format("%q", tostring(line)), 3)
    end
  end
  if (req.method .. req.target .. req.host):find("[%s%c]") then
    error("fly.ngx.http: method, target and host must not hold spaces or control characters", 3)
  end
end

--- Sends one request and reads its response.
-- @tparam table req `method`, `scheme` (`"http"` or `"https"`), `host` (Host header, SNI and
--   certificate name), `port`, `target` (path and query), `headers` (list of `"Name: value"`
--   lines; Host, Content-Length and Connection are added here), `body` (string or nil), `safe`
--   (true when sending it twice is harmless)
-- @tparam[opt] table opts `timeout` (seconds for the whole attempt), `connect_timeout`,
--   `insecure` (true: no certificate or host name verification), `server_name` (SNI and
--   verification name, default `host`), `address` (connect here instead of `host`),
--   `max_header`, `max_body` (bytes), `keepalive_timeout` (seconds), `pool_size`
-- @treturn table `{ status, headers = {lower-case name = value}, header_lines = {"Name: value"},
--   body, reused = times the connection was used before }`
-- @return or nil and an error `{ code, message, sent }`: code `"connect"`, `"resolve"`,
--   `"tls"`, `"timeout"`, `"reset"`, `"protocol"` or `"too_large"`; `sent` false when the
--   request cannot have reached the server
function M.request(req, opts)
  phase.check(2)
  check_req(req)
  return M.send(req, opts)
end

--- `request` without its checks, for a caller that made them already (fly.ngx.loop: the phase
-- checked, the request written by the core).
function M.send(req, opts)
  opts = opts or {}
  local deadline = ngx.now() + opt(opts, "timeout")
  local keep = req.safe == true
  local sock, reused = open(req, opts, deadline, not keep)
  if not sock then return nil, reused end
  local res, r2 = exchange(sock, req, opts, deadline, keep)
  if not res and r2.stale and reused > 0 then
    -- a pooled connection the server had closed; only a safe request gets here
    sock:close()
    sock, reused = open(req, opts, deadline, true)
    if not sock then
      reused.sent = true -- the first try may have been written
      return nil, reused
    end
    keep = false
    res, r2 = exchange(sock, req, opts, deadline, keep)
  end
  if not res then
    r2.stale = nil
    sock:close()
    return nil, r2
  end
  res.reused = reused
  if r2 then
    sock:setkeepalive(ms(opt(opts, "keepalive_timeout")))
  else
    sock:close()
  end
  return res
end

return M
