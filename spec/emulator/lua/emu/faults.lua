-- emu.faults: injected failures (POST /__emulator/faults), kept in state.table("__faults").
--
-- A fault: { method = "POST"?, path = "/v1/apps/x/machines"?, op = "Machines_create"?,
--            count = 1 (0 or negative = forever), kind = "status", status =, delay =, body =,
--            retry_after = }
--   method  matches the request method (any when absent)
--   path    matches the percent-decoded request path: equal, or as an anchored Lua pattern
--   op      matches the operationId (any when absent)
-- kinds (applied by the router):
--   status        answer `status` (default 500) with Fly's error body, or `body` (table -> JSON,
--                 string -> text/plain); Retry-After: retry_after when given. Handler not run.
--   delay         sleep `delay` seconds, then handle normally
--   close         close the connection without an answer (ngx.exit(444))
--   truncate      handle normally, announce a longer Content-Length, send half, close
--   malformed     200, application/json, garbage body. Handler not run.
--   stall         send status (default 200) + headers, flush, sleep `delay` (default 30) s, close
--   status_after  handle normally (state changes!), then answer like `status`
--   close_after   handle normally, then close without an answer
-- The first matching fault with count left is used (one fault per request).
local state = require "emu.state"

local faults = {}

faults.KINDS = { status = true, delay = true, close = true, truncate = true, malformed = true,
                 stall = true, status_after = true, close_after = true }

local function list() return state.table("__faults") end

function faults.add(f)
  if type(f) ~= "table" then return nil, "fault must be a JSON object" end
  f.kind = f.kind or "status"
  if not faults.KINDS[f.kind] then return nil, "unknown fault kind " .. tostring(f.kind) end
  if f.path ~= nil and type(f.path) ~= "string" then return nil, "path must be a string" end
  if f.path and not pcall(string.find, "", "^" .. f.path .. "$") then
    return nil, "path is not a valid Lua pattern"
  end
  f.count = tonumber(f.count) or 1
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

return faults
