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

-- status: the answer's, for a failure that keeps it (too_large)
local function fail(code, message, sent, status)
  return nil, { code = code, message = message, sent = sent and true or false, status = status }
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

local byte, sub, find, lower = string.byte, string.sub, string.find, string.lower

-- Reads what the socket has (at least one byte, at most `max`) and appends it to `buf`;
-- returns the longer buffer, or nil, err.
local function more(sock, buf, deadline, max)
  local left = remaining(deadline)
  if left <= 0 then return nil, "timeout" end
  sock:settimeout(ms(left))
  local data, err = sock:receiveany(max)
  if not data then return nil, err end
  return buf .. data
end

-- Reads exactly n bytes.
local function receive(sock, n, deadline)
  local left = remaining(deadline)
  if left <= 0 then return nil, "timeout" end
  sock:settimeout(ms(left))
  return sock:receive(n)
end

-- Reads a response head: the bytes up to the empty line that ends it, at most `limit` of
-- them. Most often the head and the body come in one read: what came after the head is
-- returned too. Returns head, rest; or nil, err, got (what came before the failure).
local function read_head(sock, buf, deadline, limit)
  local from = 1
  while true do
    local e = find(buf, "\r\n\r\n", from, true)
    if e then
      if e - 1 > limit then return nil, "too_large", buf end
      return sub(buf, 1, e + 1), sub(buf, e + 4)
    end
    if #buf > limit + 3 then return nil, "too_large", buf end
    from = #buf > 3 and #buf - 2 or 1
    local more_buf, err = more(sock, buf, deadline, 65536)
    if not more_buf then return nil, err, buf end
    buf = more_buf
  end
end

-- Where the line from `pos` ends in `head` (its first CR or LF; len + 1: at the end). Plain
-- finds (which LuaJIT compiles) rather than a pattern.
local function line_end(head, pos, len)
  local cr = find(head, "\r", pos, true) or len + 1
  local lf = find(head, "\n", pos, true) or len + 1
  return cr < lf and cr or lf
end

-- Whether byte b is a space or a tab.
local function blank(b) return b == 32 or b == 9 end

-- Parses a response head; returns status, version, headers (lower-case names, repeated
-- ones joined with ", "), or nil, message. Given a table `lines`, also fills it with the
-- header lines as "Name: value". Lines end at CR or LF; plain finds instead of patterns with
-- captures: this runs for every response.
local function parse_head(head, lines)
  local minor, status = head:match("^HTTP/1%.([01]) (%d%d%d)")
  if not status then return nil, "not an HTTP/1.x status line" end
  local headers = {}
  local len = #head
  local pos = line_end(head, 13, len) + 1
  while pos <= len do
    local b = byte(head, pos)
    if b == 13 or b == 10 then
      pos = pos + 1
    else
      local stop = line_end(head, pos, len) - 1
      local colon = find(head, ":", pos, true)
      if not colon or colon > stop or colon == pos then return nil, "malformed header line" end
      local name = sub(head, pos, colon - 1)
      if find(name, " ", 1, true) or find(name, "\t", 1, true) then return nil, "malformed header line" end
      local i, j = colon + 1, stop
      while i <= j and blank(byte(head, i)) do i = i + 1 end
      while j >= i and blank(byte(head, j)) do j = j - 1 end
      local value = sub(head, i, j)
      local key = lower(name)
      local prev = headers[key]
      headers[key] = prev and (prev .. ", " .. value) or value
      if lines then lines[#lines + 1] = name .. ": " .. value end
      pos = stop + 1
    end
  end
  return tonumber(status), minor == "1" and "1.1" or "1.0", headers
end

-- A response's header lines, made from its head when first asked for (`res.header_lines`).
local Response = {
  __index = function(res, k)
    if k ~= "header_lines" then return nil end
    local lines = {}
    parse_head(rawget(res, "head"), lines)
    rawset(res, "header_lines", lines)
    return lines
  end,
}

-- Reads a chunked body (RFC 9112 7.1) that starts in `buf`: sizes with optional extensions,
-- data, CRLF, the last chunk, then trailer lines up to the empty line; trailers are read and
-- dropped. Returns the body and whether bytes came after it, or nil, err, context.
local function read_chunked(sock, buf, deadline, max_body, max_header)
  local pos = 1
  -- the next line (without its CRLF), at most `limit` bytes
  local function line(limit)
    while true do
      local e = find(buf, "\r\n", pos, true)
      if e then
        if e - pos > limit then return nil, "too_large" end
        local l = sub(buf, pos, e - 1)
        pos = e + 2
        return l
      end
      if #buf - pos > limit then return nil, "too_large" end
      if pos > 1 then buf, pos = sub(buf, pos), 1 end
      local more_buf, err = more(sock, buf, deadline, 65536)
      if not more_buf then return nil, err end
      buf = more_buf
    end
  end
  -- the next n bytes
  local function take(n)
    local have = #buf - pos + 1
    if have >= n then
      local data = sub(buf, pos, pos + n - 1)
      pos = pos + n
      return data
    end
    local rest, err = receive(sock, n - have, deadline)
    if not rest then return nil, err end
    local data = sub(buf, pos) .. rest
    buf, pos = "", 1
    return data
  end
  local parts, total = {}, 0
  while true do
    local size_line, err = line(1024)
    if not size_line then return nil, err == "too_large" and "protocol" or err, "chunk size line" end
    local hex = size_line:match("^(%x+)[ \t]*;?") or size_line:match("^(%x+)$")
    if not hex then return nil, "protocol", "bad chunk size line" end
    local size = tonumber(hex, 16)
    if size == 0 then break end
    if total + size > max_body then return nil, "too_large" end
    local data
    data, err = take(size)
    if not data then return nil, err, "chunk data" end
    local crlf
    crlf, err = take(2)
    if not crlf then return nil, err, "chunk end" end
    if crlf ~= "\r\n" then return nil, "protocol", "chunk not followed by CRLF" end
    total = total + size
    parts[#parts + 1] = data
  end
  local trailer_bytes = 0
  while true do
    local trailer, err = line(max_header - trailer_bytes)
    if not trailer then return nil, err, "trailers" end
    if trailer == "" then break end
    trailer_bytes = trailer_bytes + #trailer + 2
  end
  return concat(parts), pos <= #buf
end

-- Reads until the server closes, at most max_body bytes (`buf`: what came already).
local function read_to_close(sock, buf, deadline, max_body)
  local parts, n = { buf }, #buf
  if n > max_body then return nil, "too_large" end
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

local connect_options = {}

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
  connect_options.pool, connect_options.pool_size = pool, opts.pool_size -- read by connect at once
  local ok, err = sock:connect(opts.address or req.host, req.port, connect_options)
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

-- One exchange on an open connection (its timeouts set by `open`). On failure the second
-- result also says whether the connection was a pooled one that failed before any byte of the
-- response came (stale).
local function exchange(sock, req, opts, deadline, keep)
  if remaining(deadline) <= 0 then return fail("timeout", "the attempt's time ran out before sending", false) end
  local ok, err = sock:send(format(req, keep))
  if not ok then
    local res, e = fail(io_code(err), "sending the request failed: " .. err, true)
    e.stale = true
    return res, e
  end
  local max_header = opt(opts, "max_header")
  local buf, head, status, version, headers = ""
  for i = 1, 10 do -- interim 1xx responses come before the final one
    local rest, got
    head, rest, got = read_head(sock, buf, deadline, max_header)
    if not head then
      err = rest
      if err == "too_large" then return fail("too_large", "the response head is larger than max_header", true) end
      local res, e = fail(io_code(err), "reading the response head failed: " .. err, true)
      e.stale = err ~= "timeout" and got == "" and i == 1
      return res, e
    end
    buf = rest
    status, version, headers = parse_head(head)
    if not status then return fail("protocol", "malformed response: " .. version, true) end
    if status >= 200 or status == 101 then break end
  end
  if status < 200 then return fail("protocol", "no final response after interim ones", true) end

  local max_body = opt(opts, "max_body")
  local body, ctx
  local framed, extra = true, false
  local te, cl = headers["transfer-encoding"], headers["content-length"]
  if req.method == "HEAD" or status == 204 or status == 304 then
    body, extra = "", buf ~= ""
  elseif te and not has_token(te, "identity") then
    if te:lower():match("chunked%s*$") then
      body, err, ctx = read_chunked(sock, buf, deadline, max_body, max_header)
      if body then extra = err end
    else
      framed = false
      body, err = read_to_close(sock, buf, deadline, max_body)
    end
  elseif cl then
    local n = cl:match("^%d+$") and tonumber(cl)
    if not n then return fail("protocol", "bad Content-Length: " .. cl, true) end
    if n > max_body then
      return fail("too_large", "the response body (" .. n .. " bytes) is larger than max_body", true, status)
    end
    local have = #buf
    if have >= n then
      body, extra = have == n and buf or sub(buf, 1, n), have > n
    else
      body, err = receive(sock, n - have, deadline)
      if body then body = buf .. body end
    end
  else
    framed = false
    body, err = read_to_close(sock, buf, deadline, max_body)
  end
  if not body then
    if err == "too_large" then return fail("too_large", "the response body is larger than max_body", true, status) end
    if err == "protocol" then return fail("protocol", "malformed chunked body: " .. tostring(ctx), true) end
    if err == "closed" then -- before its length or last chunk: cut short, as libcurl's "partial file"
      return fail("protocol", "the response body was cut short: the server closed the connection"
        .. (ctx and (" (" .. ctx .. ")") or ""), true)
    end
    return fail(io_code(err), "reading the response body failed: " .. err .. (ctx and (" (" .. ctx .. ")") or ""), true)
  end
  -- bytes after the response (a server that sent more than it framed): not a connection to reuse
  local reusable = keep and framed and not extra and version == "1.1"
    and not has_token(headers["connection"], "close")
  return setmetatable({ status = status, head = head, headers = headers, body = body }, Response), reusable
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
-- @treturn table `{ status, head (the status line and header lines as received), headers =
--   {lower-case name = value}, header_lines = {"Name: value"}, body, reused = times the
--   connection was used before }`
-- @return or nil and an error `{ code, message, sent, status }`: code `"connect"`, `"resolve"`,
--   `"tls"`, `"timeout"`, `"reset"`, `"protocol"` (also a body cut short) or `"too_large"`;
--   `sent` false when the request cannot have reached the server; `status` the answer's, for
--   `"too_large"`
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
