-- emu.util: small helpers shared by every emulator module (LuaJIT / Lua 5.1 semantics).
--
--   util.now()               current time in seconds (float), refreshed (ngx.update_time)
--   util.now_ms()            current time in integer milliseconds
--   util.now_iso([t])        RFC 3339 UTC timestamp with Z, e.g. "2025-01-02T03:04:05Z"
--   util.now_epoch()         current time in whole seconds (ngx.time(), cached per request)
--   util.hex(n)              n random lowercase hex characters
--   util.machine_id()        14 lowercase hex characters, like Fly machine ids
--   util.ulid()              26-char Crockford base32 ULID, strictly increasing per process
--   util.err(status, message, code)
--                            -> status, { error = message, status = code or "unknown" }
--                            (Fly's error body; handlers simply `return util.err(404, "…")`)
--   util.json_body(req, required)
--                            -> body (table) or nil, status, errbody
--                            400 when the body is not JSON (or not an object), and when
--                            `required` and no body was sent.
--   util.body_object(req)    -> body (table) or nil, message (no body counts as an error)
--   util.truthy(v)           query-string boolean: true, "true", "1", "yes", "True"
--   util.qval(v)             one query value as a string (a repeated one: the last; "?flag"
--                            without a value: "true"), or nil
--   util.qbool(v)            query-string boolean: "true", "1", "t", "TRUE", "True" (and "?flag")
--   util.app_exists(name)    whether the app exists (state.table("apps"))
--   util.app_items(table_name, app_name)
--                            the app's bucket in state.table(table_name): a fresh one when the
--                            app was deleted and created again (buckets remember the app id)
--   util.hex_encode(s) / util.hex_decode(s)
--                            bytes <-> lowercase hex (decode: nil when s is not hex)
--   util.hash32(s, h0, mul)  small polynomial string hash modulo 2^32: h = h * mul + byte
--   util.array(t)            marks t (or a new table) as a JSON array: encodes "[]" when empty
--   util.arr(t)              t when it has array items, else the shared empty JSON array
--   util.empty_array         shared immutable empty array value
--   util.json_encode(v)      cjson.encode that honours array marks
--   util.json_decode(s)      cjson.decode that keeps "[]" as marked empty arrays; nil, err on error
--   util.copy(v)             deep copy (keeps array marks)
--
-- The Debian lua-cjson (2.1.0) has no cjson.empty_array / array_mt; this module installs
-- compatible names on the cjson table (cjson.empty_array, cjson.array_mt,
-- cjson.empty_array_mt, cjson.encode_empty_table_as_object as a no-op) so code written for
-- the OpenResty fork works when its bodies are encoded by the router (util.json_encode).
local cjson = require "cjson"
local state = require "emu.state"

local util = {}

local floor, random, concat = math.floor, math.random, table.concat

---------------------------------------------------------------------------- time

function util.now()
  if ngx then
    ngx.update_time()
    return ngx.now()
  end
  return os.time()
end

function util.now_ms()
  return floor(util.now() * 1000)
end

function util.now_iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t or util.now()))
end

function util.now_epoch()
  if ngx and ngx.time then return ngx.time() end
  return os.time()
end

---------------------------------------------------------------------------- ids

local seeded = false
local function seed()
  if seeded then return end
  seeded = true
  local pid = (ngx and ngx.worker and ngx.worker.pid()) or 0
  math.randomseed(floor(util.now() * 1000) % 2147483647 + pid * 7919)
  for _ = 1, 10 do random() end
end

local HEX = "0123456789abcdef"
function util.hex(n)
  seed()
  local out = {}
  for i = 1, n do
    local k = random(1, 16)
    out[i] = HEX:sub(k, k)
  end
  return concat(out)
end

function util.machine_id()
  return util.hex(14)
end

local B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
local last_ms, last_rand = -1, nil

local function encode_time(ms)
  local out = {}
  for i = 10, 1, -1 do
    local d = ms % 32
    out[i] = B32:sub(d + 1, d + 1)
    ms = floor(ms / 32)
  end
  return concat(out)
end

-- Increment a 16-digit base32 array in place (monotonic ULIDs within one millisecond).
local function increment(digits)
  for i = 16, 1, -1 do
    if digits[i] < 31 then
      digits[i] = digits[i] + 1
      return
    end
    digits[i] = 0
  end
end

function util.ulid()
  seed()
  local ms = util.now_ms()
  if ms <= last_ms then
    ms = last_ms
    increment(last_rand)
  else
    last_rand = {}
    for i = 1, 16 do last_rand[i] = random(0, 31) end
    last_rand[1] = random(0, 15) -- leave room for increments
  end
  last_ms = ms
  local out = { encode_time(ms) }
  for i = 1, 16 do
    local d = last_rand[i]
    out[i + 1] = B32:sub(d + 1, d + 1)
  end
  return concat(out)
end

---------------------------------------------------------------------------- errors / requests

function util.err(status, message, code)
  return status, { error = message, status = code or "unknown" }
end

function util.truthy(v)
  if type(v) == "table" then v = v[#v] end
  return v == true or v == "true" or v == "1" or v == "yes" or v == "True"
end

-- one query value as a string ("?flag" without a value counts as "true"), or nil
function util.qval(v)
  if type(v) == "table" then v = v[#v] end
  if v == true then return "true" end
  if type(v) ~= "string" then return nil end
  return v
end

-- a boolean query flag ("?summary" without a value counts as true)
function util.qbool(v)
  v = util.qval(v)
  return v == "true" or v == "1" or v == "t" or v == "TRUE" or v == "True"
end

-- The request's JSON object body, or nil + message (a missing body is an error too).
function util.body_object(req)
  if req.bad_json then return nil, "invalid JSON in request body" end
  if type(req.body) ~= "table" then return nil, "request body must be a JSON object" end
  return req.body
end

-- Decoded JSON object body of a request, or nil + error response.
function util.json_body(req, required)
  if req.bad_json or (req.body ~= nil and type(req.body) ~= "table") then
    return nil, util.err(400, "invalid JSON request body", "invalid_argument")
  end
  if req.body == nil and required then
    return nil, util.err(400, "request body is required (EOF)", "invalid_argument")
  end
  return req.body or {}
end

---------------------------------------------------------------------------- apps

function util.app_exists(name) return state.table("apps")[name] ~= nil end

-- The app's items in state.table(table_name) (a fresh set when the app was deleted and
-- created again): all[app_name] = { app_id = …, items = … }.
function util.app_items(table_name, app_name)
  local all = state.table(table_name)
  local app = state.table("apps")[app_name]
  local app_id = app and app.id
  local b = all[app_name]
  if not b or b.app_id ~= app_id then
    b = { app_id = app_id, items = {} }
    all[app_name] = b
  end
  return b.items
end

---------------------------------------------------------------------------- bytes

function util.hex_encode(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function util.hex_decode(s)
  if #s % 2 == 1 or s:find("[^0-9a-fA-F]") then return nil end
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

function util.hash32(s, h0, mul)
  local h = h0
  for i = 1, #s do h = (h * mul + s:byte(i)) % 4294967296 end
  return h
end

---------------------------------------------------------------------------- JSON

local array_mt = { __jsontype = "array" }
util.array_mt = array_mt

function util.array(t)
  return setmetatable(t or {}, array_mt)
end

util.empty_array = setmetatable({}, {
  __jsontype = "array",
  __newindex = function() error("util.empty_array is immutable", 2) end,
})

local function is_array_marked(t)
  local mt = getmetatable(t)
  return mt ~= nil and mt.__jsontype == "array"
end
util.is_array = is_array_marked

-- OpenResty cjson compatibility names (see header).
cjson.empty_array = cjson.empty_array or util.empty_array
cjson.array_mt = cjson.array_mt or array_mt
cjson.empty_array_mt = cjson.empty_array_mt or array_mt
cjson.encode_empty_table_as_object = cjson.encode_empty_table_as_object or function() end

-- t itself when it has array items (unmarked), else the shared empty JSON array (not t).
function util.arr(t)
  if #t > 0 then return t end
  return cjson.empty_array or util.empty_array
end

local PLACEHOLDER = "@@emu-empty-array-7f3c@@"

-- Copy v replacing marked empty arrays with a placeholder string.
local function prepare(v, depth)
  if type(v) ~= "table" then return v end
  if depth > 100 then error("JSON value nested too deeply") end
  if next(v) == nil then
    if is_array_marked(v) then return PLACEHOLDER end
    return v
  end
  local out = {}
  for k, x in pairs(v) do out[k] = prepare(x, depth + 1) end
  return out
end

function util.json_encode(v)
  local s = cjson.encode(prepare(v, 0))
  -- lua-cjson 2.1.0 escapes every slash as backslash-slash; undo it. Output holds only escaped
  -- pairs (backslash-backslash, backslash-slash), so each backslash-slash match is a slash.
  if s:find("\\/", 1, true) then s = s:gsub("\\/", "/") end
  if s:find(PLACEHOLDER, 1, true) then
    s = s:gsub('"' .. PLACEHOLDER:gsub("%p", "%%%0") .. '"', "[]")
  end
  return s
end

-- Replace "[]" outside JSON strings by the placeholder string, so decoding keeps them arrays.
local function mark_empty_arrays(s)
  if not s:find("%[%s*%]") then return s end
  local out, pos, n = {}, 1, #s
  while pos <= n do
    local i = s:find('["%[]', pos)
    if not i then break end
    if s:sub(i, i) == '"' then
      local j = i + 1
      while true do
        local k = s:find('["\\]', j)
        if not k then j = n + 1; break end
        if s:sub(k, k) == "\\" then j = k + 2 else j = k + 1; break end
      end
      out[#out + 1] = s:sub(pos, j - 1)
      pos = j
    else
      local e = s:match("^%[%s*%]()", i)
      if e then
        out[#out + 1] = s:sub(pos, i - 1)
        out[#out + 1] = '"' .. PLACEHOLDER .. '"'
        pos = e
      else
        out[#out + 1] = s:sub(pos, i)
        pos = i + 1
      end
    end
  end
  out[#out + 1] = s:sub(pos)
  return concat(out)
end

local function restore(v)
  if v == PLACEHOLDER then return util.array() end
  if type(v) ~= "table" then return v end
  local arr = #v > 0
  for k, x in pairs(v) do v[k] = restore(x) end
  if arr then setmetatable(v, array_mt) end
  return v
end

function util.json_decode(s)
  local ok, v = pcall(cjson.decode, mark_empty_arrays(s))
  if not ok then return nil, tostring(v) end
  return restore(v)
end

function util.copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = util.copy(x) end
  return setmetatable(out, is_array_marked(v) and array_mt or getmetatable(v))
end

return util
