--- JSON for request and response bodies.
--
-- Decoding is the C core's (csrc/json.c): integer literals become integers
-- and arrays carry the `fly.array` mark, so what is read encodes back the
-- same. Encoding is done here, in plain Lua: a table marked with `fly.array`
-- is sent as a JSON array even when it is empty; integers are written with
-- all their digits; floats with the fewest significant digits (15, 16 or
-- 17) that read back as the same float. Strings pass through byte for byte
-- (UTF-8 included) except `"`, `\` and control characters, which are escaped.
-- @module fly.json
local compat = require "fly.compat"
local core = require "fly.core"

local json = {}

local array_mt = core.array_mt
local is_integer = compat.is_integer
local format, find, gsub, char = string.format, string.find, string.gsub, string.char
local concat = table.concat
local huge = math.huge

--- The JSON null value: the light userdata NULL, as the decoder returns it
-- (the same value as `cjson.null`, for code that also uses lua-cjson).
json.null = core.decode("null")

--- Marks a table as a JSON array (so `{}` is sent as `[]`).
-- @tparam[opt] table t the table to mark; a new one when nil
-- @treturn table t
function json.array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then error("fly.array: expected a table, got " .. type(t), 2) end
  return setmetatable(t, array_mt)
end

--- Whether a table is marked as an array.
function json.is_array(t)
  return getmetatable(t) == array_mt
end

-- What each byte that cannot appear raw in a JSON string becomes.
local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t" }
for i = 0, 31 do
  local c = char(i)
  if not escapes[c] then escapes[c] = format("\\u%04x", i) end
end
local needs_escape = '[%z\1-\31"\\]'

local function quote(s)
  if find(s, needs_escape) then s = gsub(s, needs_escape, escapes) end
  return '"' .. s .. '"'
end

-- Member names repeat from object to object: their quoted forms are kept,
-- up to a bound (names come from the application's data too).
local quoted_names, quoted_count = {}, 0

local function quote_name(k)
  local q = quoted_names[k]
  if q then return q end
  q = quote(k)
  if quoted_count >= 4096 then quoted_names, quoted_count = {}, 0 end
  quoted_names[k], quoted_count = q, quoted_count + 1
  return q
end

-- A number as JSON text. Raises on NaN and infinities.
local function number(v)
  if is_integer(v) then
    if v == 0 and 1 / v < 0 then return "-0" end -- a whole double (no integer subtype)
    return format("%d", v)
  end
  if v ~= v or v == huge or v == -huge then
    error("fly: cannot encode " .. (v ~= v and "NaN" or tostring(v)) .. " as JSON", 0)
  end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then
    s = format("%.16g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
  end
  -- the C library writes (and reads) the locale's decimal point
  if find(s, "[^%d.eE+%-]") then s = gsub(s, "[^%deE+%-]", ".") end
  return s
end

local encode_value

local function encode_table(t, out, n, depth)
  if depth > 100 then error("fly: cannot encode a table nested more than 100 levels", 0) end
  local marked = getmetatable(t) == array_mt
  local len, count, max = #t, 0, 0
  for k in next, t do
    count = count + 1
    if type(k) == "number" and is_integer(k) and k > 0 then
      if k > max then max = k end
    elseif marked or len > 0 then
      error("fly: cannot encode a table with both array and object keys", 0)
    end
  end
  if marked or (count > 0 and max == count) then
    n = n + 1
    out[n] = "["
    for i = 1, max do
      if i > 1 then
        n = n + 1
        out[n] = ","
      end
      n = encode_value(t[i], out, n, depth + 1)
    end
    n = n + 1
    out[n] = "]"
    return n
  end
  if max > 0 then error("fly: cannot encode a sparse array", 0) end
  n = n + 1
  out[n] = "{"
  local first = true
  for k, v in next, t do
    if type(k) ~= "string" then
      error("fly: cannot encode a table key of type " .. type(k), 0)
    end
    if not first then
      n = n + 1
      out[n] = ","
    end
    first = false
    out[n + 1] = quote_name(k)
    out[n + 2] = ":"
    n = encode_value(v, out, n + 2, depth + 1)
  end
  n = n + 1
  out[n] = "}"
  return n
end

-- Appends v's JSON to out[n+1 ...]; returns the new n.
encode_value = function(v, out, n, depth)
  local t = type(v)
  if t == "string" then
    out[n + 1] = quote(v)
  elseif t == "table" then
    return encode_table(v, out, n, depth)
  elseif t == "number" then
    out[n + 1] = number(v)
  elseif t == "boolean" then
    out[n + 1] = v and "true" or "false"
  elseif v == json.null then
    out[n + 1] = "null"
  else
    error("fly: cannot encode a value of type " .. t .. " as JSON", 0)
  end
  return n + 1
end

--- Encodes a Lua value as JSON. Raises on values JSON cannot hold.
-- @param v a table, string, number, boolean or `json.null`
-- @treturn string
function json.encode(v)
  local out = {}
  encode_value(v, out, 0, 0)
  return concat(out)
end

--- Decodes JSON text as responses are decoded: integers for integer
-- literals that fit in 64 bits, floats for the rest, `fly.array`-marked
-- arrays, `json.null` for null; of two equal member names the last wins.
-- @tparam string s
-- @return the value, or nil and a message when `s` is not JSON
function json.decode(s)
  return core.decode(s)
end

return json
