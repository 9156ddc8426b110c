--- JSON for request and response bodies.
--
-- Decoding is the C core's (csrc/json.c): whole numbers become integers and
-- arrays carry the `fly.array` mark, so what is read encodes back the same.
-- Encoding walks tables in Lua so that a table marked with `fly.array` is
-- sent as a JSON array even when it is empty, which cjson 2.1 cannot
-- express; strings and numbers are written by lua-cjson (a private instance,
-- so the application's cjson settings are left alone).
-- @module fly.json
local cjson = require("cjson.safe").new()
local core = require "fly.core"
local is_integer = require("fly.compat").is_integer

local json = {}

local array_mt = core.array_mt

--- The JSON null value (`cjson.null`): decoded nulls compare equal to it.
json.null = cjson.null

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

local encode_value

local function encode_table(t, out, depth)
  if depth > 100 then error("fly: cannot encode a table nested more than 100 levels", 0) end
  local n, count, max = #t, 0, 0
  for k in next, t do
    count = count + 1
    if is_integer(k) and k > 0 then
      if k > max then max = k end
    elseif getmetatable(t) == array_mt or n > 0 then
      error("fly: cannot encode a table with both array and object keys", 0)
    end
  end
  if getmetatable(t) == array_mt or (count > 0 and max == count) then
    out[#out + 1] = "["
    for i = 1, max do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[i], out, depth + 1)
    end
    out[#out + 1] = "]"
    return
  end
  if max > 0 then error("fly: cannot encode a sparse array", 0) end
  out[#out + 1] = "{"
  local first = true
  for k, v in next, t do
    if type(k) ~= "string" then
      error("fly: cannot encode a table key of type " .. type(k), 0)
    end
    if not first then out[#out + 1] = "," end
    first = false
    out[#out + 1] = cjson.encode(k)
    out[#out + 1] = ":"
    encode_value(v, out, depth + 1)
  end
  out[#out + 1] = "}"
end

encode_value = function(v, out, depth)
  local t = type(v)
  if t == "table" then
    encode_table(v, out, depth)
  elseif t == "string" or t == "boolean" or v == cjson.null then
    out[#out + 1] = cjson.encode(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("fly: cannot encode " .. tostring(v) .. " as JSON", 0)
    end
    out[#out + 1] = is_integer(v) and ("%d"):format(v) or cjson.encode(v)
  else
    error("fly: cannot encode a value of type " .. t .. " as JSON", 0)
  end
end

--- Encodes a Lua value as JSON. Raises on values JSON cannot hold.
-- @param v a table, string, number, boolean or `json.null`
-- @treturn string
function json.encode(v)
  local out = {}
  encode_value(v, out, 0)
  return table.concat(out)
end

--- Decodes JSON text as responses are decoded: integers for whole numbers,
-- `fly.array`-marked arrays, `json.null` for null.
-- @tparam string s
-- @return the value, or nil and a message when `s` is not JSON
function json.decode(s)
  return core.decode(s)
end

return json
