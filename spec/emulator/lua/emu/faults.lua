-- emu.faults: injected failures (POST /__emulator/faults), kept in state.table("__faults").
--
-- A fault: { method = "POST"?, path = "/v1/apps/x/machines"?, op = "Machines_create"?,
--            count = 1 (0 or negative = forever), seconds =, kind = "status", status =,
--            delay =, body =, retry_after = }
--   seconds the fault lasts this long after it is added, then is gone (count, when given,
--           may end it sooner; without count it hits every matching request meanwhile)
--   method  matches the request method (any when absent)
--   path    matches the percent-decoded request path: equal, or as an anchored Lua pattern
--   op      matches the operationId (any when absent)
-- kinds (applied by the router):
--   status        answer `status` (default 500) with Fly's error body, or `body` (table -> JSON,
--                 string -> text/plain); Retry-After: retry_after when given; after `delay`
--                 seconds when given. Handler not run.
--   delay         sleep `delay` seconds, then handle normally
--   close         drop the TCP connection without an answer: shutdown of the socket (FIN both
--                 ways, no TLS close_notify), under HTTP/1.1 and HTTP/2 alike (there every
--                 stream on the connection dies, no GOAWAY). Handler not run.
--   truncate      handle normally, announce a longer Content-Length, send half, close
--   malformed     200, application/json, garbage body. Handler not run.
--   stall         send status (default 200) + headers, flush, sleep `delay` (default 30) s, close
--   status_after  handle normally (state changes!), then answer like `status`
--   close_after   handle normally (state changes!), then drop the connection like `close`
--   reset         ngx.exit(444): HTTP/2 resets only this stream (RST_STREAM PROTOCOL_ERROR, the
--                 connection lives on); HTTP/1.1 closes the connection. Handler not run.
--   reset_after   handle normally, then like `reset`
-- The first matching fault with count left is used (one fault per request).
local state = require "emu.state"

local faults = {}

faults.KINDS = { status = true, delay = true, close = true, truncate = true, malformed = true,
                 stall = true, status_after = true, close_after = true, reset = true,
                 reset_after = true }

local function list() return state.table("__faults") end

function faults.add(f)
  if type(f) ~= "table" then return nil, "fault must be a JSON object" end
  f.kind = f.kind or "status"
  if not faults.KINDS[f.kind] then return nil, "unknown fault kind " .. tostring(f.kind) end
  if f.path ~= nil and type(f.path) ~= "string" then return nil, "path must be a string" end
  if f.path and not pcall(string.find, "", "^" .. f.path .. "$") then
    return nil, "path is not a valid Lua pattern"
  end
  if f.seconds ~= nil then
    local s = tonumber(f.seconds)
    if not s or s <= 0 then return nil, "seconds must be a positive number" end
    f.expires = ngx.now() + s
  end
  f.count = tonumber(f.count) or (f.expires and 0 or 1)
  if f.method then f.method = tostring(f.method):upper() end
  local l = list()
  l[#l + 1] = f
  return #l
end

function faults.clear()
  local l = list()
  for i = #l, 1, -1 do l[i] = nil end
end

function faults.all()
  return list()
end

local function path_matches(pattern, path)
  if pattern == nil or pattern == path then return true end
  local ok, found = pcall(string.find, path, "^" .. pattern .. "$")
  return ok and found ~= nil
end

-- The fault to apply to this request (consumed), or nil.
function faults.take(method, path, op)
  local l = list()
  local now = ngx.now()
  for i = #l, 1, -1 do -- the faults whose time is over are gone
    if l[i].expires and l[i].expires <= now then table.remove(l, i) end
  end
  for i, f in ipairs(l) do
    if (not f.method or f.method == method) and (not f.op or f.op == op)
       and path_matches(f.path, path) then
      if f.count > 0 then
        f.count = f.count - 1
        if f.count == 0 then table.remove(l, i) end
      end
      return f
    end
  end
  return nil
end

-- The connection's socket, found through the request struct (LuaJIT FFI): r->connection->fd.
-- An HTTP/2 stream's connection is a copy of the real one, so its fd is the real socket. The
-- offsets (r->connection after the 32-bit signature, c->fd after three pointers) are checked:
-- the fd's two ends must be this request's remote and server ports.
local ffi_ok, ffi = pcall(require, "ffi")
if ffi_ok then
  pcall(ffi.cdef, [[
    int shutdown(int sockfd, int how);
    int getpeername(int sockfd, void *addr, unsigned int *addrlen);
    int getsockname(int sockfd, void *addr, unsigned int *addrlen);
  ]])
end

local function port_of(fn, fd)
  local buf = ffi.new("uint8_t[128]")
  local len = ffi.new("unsigned int[1]", 128)
  if fn(fd, buf, len) ~= 0 then return nil end
  return buf[2] * 256 + buf[3]   -- sockaddr_in / sockaddr_in6: family (2 bytes), port (network order)
end

local function request_fd()
  if not ffi_ok then return nil, "no FFI" end
  local r = require("resty.core.base").get_request()
  if not r then return nil, "no request" end
  local c = ffi.cast("void **", ffi.cast("uint8_t *", r) + 8)[0]
  if c == nil then return nil, "no connection" end
  local fd = ffi.cast("int *", ffi.cast("uint8_t *", c) + 3 * ffi.sizeof("void *"))[0]
  if fd < 0 then return nil, "no socket" end
  if port_of(ffi.C.getpeername, fd) ~= tonumber(ngx.var.remote_port)
     or port_of(ffi.C.getsockname, fd) ~= tonumber(ngx.var.server_port) then
    return nil, "the socket found is not this request's"
  end
  return fd
end

--- Drops this request's TCP connection: shutdown(fd, SHUT_RDWR) (the client reads EOF, no
-- TLS close_notify, no HTTP/2 GOAWAY), then finishes the request without an answer. nginx
-- still owns the fd and closes it when it sees the shut-down socket.
function faults.drop_connection()
  local fd, err = request_fd()
  if not fd then
    ngx.log(ngx.ERR, "emulator: cannot drop the connection: ", err)
    return ngx.exit(444)
  end
  ffi.C.shutdown(fd, 2)
  return ngx.exit(444)
end

return faults
