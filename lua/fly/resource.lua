--- What every resource namespace shares: calling an operation, turning the
-- outcome into a result or a fly.Error, and objects (Machine, App, …) whose
-- methods live in a metatable so that their fields stay plain JSON data.
-- @module fly.resource
local json = require "fly.json"
local Error = require "fly.error"
local loop = require "fly.loop"
local core = require "fly.core"

local submit = core.Client._submit
local response, result = core.request_mt.methods.response, core.request_mt.methods.result
local decode = json.decode

local resource = {}

local unpack = table.unpack

-- Turns a finished request into the value or error a user sees.
local function outcome(req)
  local status, body, ctype = response(req)
  if status and status >= 200 and status < 300 then
    if body == "" then return true end
    if (ctype and ctype:find("json", 1, true)) or (not ctype and body:find("^%s*[{%[]")) then
      local value, why = decode(body)
      if value ~= nil then return value end
      local err = Error.from_result(result(req))
      err.code, err.message, err.retryable = "protocol", "the response is not valid JSON: " .. tostring(why), false
      return nil, err
    end
    return body
  end
  local res = result(req)
  if res.code then return nil, Error.from_result(res) end
  local is_json = ctype ~= nil and ctype:find("json", 1, true) ~= nil
  return nil, Error.from_result(res, is_json and decode(body) or nil)
end
resource.outcome = outcome

--- Submits an operation and waits for it (yielding inside a task).
-- Programmer errors are raised at `level` (relative to the caller of this
-- function's caller chain, as `error` counts).
-- @return the decoded result, or nil and a fly.Error
function resource.call(client, op, params, opts, level)
  level = (level or 1) + 1
  if params ~= nil and type(params) ~= "table" then
    error(("fly: %s: params must be a table (got %s)"):format(op, type(params)), level)
  end
  if params and type(rawget(params, "body")) == "table" then
    local ok, body = pcall(json.encode, rawget(params, "body"))
    if not ok then error(body, level) end
    local copy = {}
    for k, v in next, params do copy[k] = v end
    copy.body = body
    params = copy
  end
  local ok, req = pcall(submit, client, op, params, opts)
  if not ok then error(req, level) end
  loop.await(client, req)
  return outcome(req)
end

-- Objects remember their client (and app) here, not in their fields.
local owners = setmetatable({}, { __mode = "k" })

--- Makes a class for API objects: `kind` names it ("fly.Machine"), methods go
-- in the returned table.
function resource.class(kind)
  local class = { __name = kind }
  class.__index = class
  class.__tostring = function(self)
    local id = rawget(self, "id") or rawget(self, "name") or "?"
    return ("%s{%s}"):format(kind, tostring(id))
  end
  return class
end

--- Gives a decoded table a class and remembers its client and context.
function resource.bind(class, value, client, context)
  if type(value) ~= "table" then return value end
  owners[value] = { client = client, context = context }
  return setmetatable(value, class)
end

--- The client and context an object was bound with.
function resource.owner(obj)
  local o = owners[obj]
  if not o then error("fly: this object is not bound to a client", 3) end
  return o.client, o.context
end

--- Binds every element of an array.
function resource.bind_all(class, list, client, context)
  if type(list) == "table" then
    for i = 1, #list do resource.bind(class, list[i], client, context) end
  end
  return list
end

--- Checks an argument and raises a clear error at the user's call.
function resource.check(value, want, name, method, level)
  if type(value) ~= want then
    error(("fly: %s: %s must be a %s (got %s)"):format(method, name, want, type(value)), (level or 2) + 1)
  end
  return value
end

--- Copies a table (one level), optionally adding fields.
function resource.merge(base, extra)
  local t = {}
  if base then for k, v in pairs(base) do t[k] = v end end
  if extra then for k, v in pairs(extra) do t[k] = v end end
  return t
end

--- Splits per-call options (timeout, deadline, attempts) out of a params table.
local CALL_OPTIONS = { timeout = true, deadline = true, attempts = true }
function resource.split_options(params)
  local opts, rest
  for k in pairs(params) do
    if CALL_OPTIONS[k] then
      opts = opts or {}
      rest = rest or resource.merge(params)
      opts[k] = params[k]
      rest[k] = nil
    end
  end
  return rest or params, opts
end

resource.unpack = unpack
return resource
