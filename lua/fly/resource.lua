--- What every resource namespace shares: calling an operation, turning the
-- outcome into a result or a fly.Error, and objects (Machine, App, …) whose
-- methods live in a metatable so that their fields stay plain JSON data.
-- @module fly.resource
local json = require "fly.json"
local Error = require "fly.error"
local loop = require "fly.loop"
local core = require "fly.core"

local request_methods = core.request_mt.methods
local success, result, json_body = request_methods.success, request_methods.result, request_methods.json

local resource = {}

-- The error (or protocol failure) of a finished request that did not succeed.
local function failure(req, why)
  local res = result(req)
  if why then -- a success whose body is not the JSON it claims
    local err = Error.from_result(res)
    err.code, err.message, err.retryable = "protocol", "the response is not valid JSON: " .. why, false
    return nil, err
  end
  if res.code then return nil, Error.from_result(res) end
  local ctype = res.content_type
  local decoded = ctype and ctype:find("json", 1, true) and json_body(req) or nil
  return nil, Error.from_result(res, decoded)
end


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
  local req = loop.submit(client, op, params, opts, level) -- raises programmer errors at `level`
  loop.await(client, req)
  local value, why = success(req)
  if value ~= nil then return value end
  return failure(req, why)
end

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

-- Objects remember their client and context in their metatable, not in their
-- fields: one metatable per binding, whose __index is the class. Bindings
-- that differ only by app are shared (client -> class -> app -> metatable);
-- a context with more than the app in it (a lease nonce) gets its own.
local shared = setmetatable({}, { __mode = "k" })

-- Whether a context holds nothing but the app.
local function app_only(context)
  if context == nil then return true end
  for k in next, context do
    if k ~= "app" then return false end
  end
  return true
end

local function binding(class, client, context)
  local app = context and context.app or false
  local plain = app_only(context)
  local by_class, by_app
  if plain then
    by_class = shared[client]
    if not by_class then
      by_class = {}
      shared[client] = by_class
    end
    by_app = by_class[class]
    if not by_app then
      by_app = {}
      by_class[class] = by_app
    end
    local mt = by_app[app]
    if mt then return mt end
  end
  local mt = {
    __index = class, __name = class.__name, __tostring = class.__tostring,
    client = client, context = context, class = class,
  }
  if plain then by_app[app] = mt end
  return mt
end

--- Gives a decoded table a class and remembers its client and context.
function resource.bind(class, value, client, context)
  if type(value) ~= "table" then return value end
  return setmetatable(value, binding(class, client, context))
end

--- The client and context an object was bound with.
function resource.owner(obj)
  local mt = getmetatable(obj)
  if type(mt) ~= "table" or mt.client == nil then
    error("fly: this object is not bound to a client", 3)
  end
  return mt.client, mt.context
end

--- Replaces every field of `obj` with those of `fresh`, keeping obj's
-- metatable (and so its binding): how objects refresh in place.
-- @treturn table obj
function resource.replace_fields(obj, fresh)
  for k in next, obj do obj[k] = nil end
  for k, v in next, fresh do obj[k] = v end
  return obj
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

return resource
