--- What every resource namespace shares: calling an operation, turning the
-- outcome into a result or a fly.Error, and objects (Machine, App, …) whose
-- methods live in a metatable so that their fields stay plain JSON data.
-- @module fly.resource
local json = require "fly.json"
local Error = require "fly.error"
local loop = require "fly.loop"
local core = require "fly.core"

local client_state = core.Client._state
local request_methods = core.request_mt.methods
local success, result, json_body = request_methods.success, request_methods.result, request_methods.json

local resource = {}

-- The error (or protocol failure) of a finished request that did not succeed.
local function failure(req, why)
  local res = result(req)
  if why then -- a success whose body is not the JSON it claims, found as the call returns:
    -- not retried, but calling again may fix it when the call is safe to repeat
    local err = Error.from_result(res)
    err.code, err.message, err.retryable = "protocol", "the response is not valid JSON: " .. why, res.safe == true
    return nil, err
  end
  if res.code then return nil, Error.from_result(res) end
  local ctype = res.content_type
  local decoded = ctype and ctype:find("json", 1, true) and json_body(req) or nil
  return nil, Error.from_result(res, decoded)
end


--- Submits an operation and waits for it (yielding inside a task).
-- Programmer errors are raised at `level` (relative to the caller of this
-- function's caller chain, as `error` counts). `own`: `params` is a table
-- the caller made for this call alone, so its body may be encoded in place
-- (otherwise a copy takes the encoded body: the caller's table stays as it was).
-- @return the decoded result, or nil and a fly.Error
function resource.call(client, op, params, opts, level, own)
  level = (level or 1) + 1
  if params ~= nil and type(params) ~= "table" then
    error(("fly: %s: params must be a table (got %s)"):format(op, type(params)), level)
  end
  local body = params and rawget(params, "body")
  if body ~= nil and type(body) ~= "table" and type(body) ~= "string" then
    error(("fly: %s: body must be a table (sent as JSON) or a string (got %s)"):format(op, type(body)), level)
  end
  if type(body) == "table" then
    local ok, encoded = pcall(json.encode, body)
    if not ok then error(encoded, level) end
    if not own then
      local copy = {}
      for k, v in next, params do copy[k] = v end
      params = copy
    end
    params.body = encoded
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
-- that differ only by app are shared per client, in the client's own state
-- (`client:_state()`, a table the client holds), so they go with the client;
-- a context with more than the app in it (a lease nonce) gets its own.

-- Whether a context holds nothing but the app.
local function app_only(context)
  if context == nil then return true end
  for k in next, context do
    if k ~= "app" then return false end
  end
  return true
end

local function binding(class, client, context)
  local plain = app_only(context)
  local by_app
  if plain then
    local st = client_state(client)
    local by_class = st.bindings
    if not by_class then
      by_class = {}
      st.bindings = by_class
    end
    by_app = by_class[class]
    if not by_app then
      by_app = {}
      by_class[class] = by_app
    end
    local mt = by_app[context and context.app or false]
    if mt then return mt end
  end
  local mt = {
    __index = class, __name = class.__name, __tostring = class.__tostring,
    client = client, context = context, class = class,
  }
  if plain then by_app[context and context.app or false] = mt end
  return mt
end

--- Gives a decoded table a class and remembers its client and context.
function resource.bind(class, value, client, context)
  if type(value) ~= "table" then return value end
  return setmetatable(value, binding(class, client, context))
end

--- Binds a decoded table whose context holds only the app, as
-- `bind(class, value, client, { app = app })` does, without making that
-- context table once the binding exists (the fast path of every get).
function resource.bind_app(class, value, client, app)
  if type(value) ~= "table" then return value end
  local by_class = client_state(client).bindings
  local by_app = by_class and by_class[class]
  local mt = by_app and by_app[app or false]
  if not mt then mt = binding(class, client, { app = app }) end
  return setmetatable(value, mt)
end

--- Raises the error of a method called with '.' instead of ':' (its object missing).
-- @tparam string label `"client:poll"`
-- @tparam integer level as for `error`, counted from the function calling dot_call
function resource.dot_call(label, level)
  error(("fly: %s: call it with ':' (%s(...)), not '.'"):format(label, label), level + 1)
end

--- Raises the error of a method that takes no arguments and was given a table, in the words of
-- the declared methods.
-- @tparam string label `"machine:refresh"`
function resource.no_options(label)
  error(("fly: %s: one argument too many (argument 1, a table: it takes none)"):format(label), 3)
end

--- Whether `self` is a namespace (a table holding its client): a method called with '.' gets
-- its first argument as `self`.
function resource.is_namespace(self)
  return type(self) == "table" and type(rawget(self, "client")) == "userdata"
end

--- The client and context an object was bound with; raises (at the line that
-- called the method that called this) when the object is not bound, or the
-- method (`label`) was called with '.'.
function resource.owner(obj, label)
  local mt = getmetatable(obj)
  if type(mt) ~= "table" or mt.client == nil then
    if type(obj) ~= "table" then resource.dot_call(label or "method", 3) end
    error(("fly: %s: called on a table that is no object of a client (called with '.' instead of ':'?)")
      :format(label or "method"), 3)
  end
  return mt.client, mt.context
end

--- Replaces every field of `obj` with those of `fresh`, keeping obj's
-- metatable (and so its binding): how objects refresh in place.
-- @treturn table obj
function resource.replace_fields(obj, fresh)
  if obj == fresh then return obj end
  for k in next, obj do obj[k] = nil end
  for k, v in next, fresh do obj[k] = v end
  return obj
end

--- Refreshes an object in place from `fresh`, and the object it is a view of
-- (the `view` of its context: the Machine that `with_lease` was called on),
-- so that both stay one object's view.
-- @treturn table obj
function resource.settle(obj, fresh)
  resource.replace_fields(obj, fresh)
  local mt = getmetatable(obj)
  local view = type(mt) == "table" and mt.context and mt.context.view
  if view and view ~= obj then resource.replace_fields(view, fresh) end
  return obj
end

--- Binds every element of an array.
function resource.bind_all(class, list, client, context)
  if type(list) == "table" then
    for i = 1, #list do resource.bind(class, list[i], client, context) end
  end
  return list
end

---------------------------------------------------------------------------- arguments

-- Parsed type specs: "string", "?table" (nil allowed), "string|table".
local specs = {}
local function spec_of(want)
  local s = specs[want]
  if s then return s end
  s = { optional = want:sub(1, 1) == "?", types = {} }
  local names = s.optional and want:sub(2) or want
  local text = {}
  for t in names:gmatch("[^|]+") do
    s.types[t] = true
    text[#text + 1] = (t:find("^[aeiou]") and "an " or "a ") .. t
  end
  s.text = table.concat(text, " or ")
  specs[want] = s
  return s
end

--- Checks an argument's type and raises a clear error at the user's line.
-- The one argument check of every namespace.
-- @param value the argument
-- @tparam string want a type name (`"string"`), alternatives (`"string|table"`), `?` first
-- when nil is allowed (`"?number"`)
-- @tparam string name the argument's name in the message
-- @tparam string method `"machines:start"`
-- @tparam[opt=2] integer level how many levels above check the user's call is (1: the
-- function calling check; 2, the default: that function's caller)
-- @return value
function resource.check(value, want, name, method, level)
  local t = type(value)
  if t == want then return value end
  local s = spec_of(want)
  if s.types[t] or (value == nil and s.optional) then return value end
  error(("fly: %s: %s must be %s (got %s)"):format(method, name, s.text, t), (level or 2) + 1)
end

local EMPTY = setmetatable({}, { __newindex = function() error("fly: internal: EMPTY is read-only", 2) end })
resource.EMPTY = EMPTY

--- Checks an options table: a table (or nil), every key known, every value of its type.
-- @param opts the options given
-- @tparam table allowed `{ name = type }` (types as for check)
-- @tparam string name the table's name in messages ("opts", "params")
-- @tparam string method
-- @tparam[opt=2] integer level how many levels above options the user's call is
-- @treturn table opts, or an empty (read-only) table for nil
function resource.options(opts, allowed, name, method, level)
  if opts == nil then return EMPTY end
  level = (level or 2) + 1
  if type(opts) ~= "table" then
    error(("fly: %s: %s must be a table (got %s)"):format(method, name, type(opts)), level)
  end
  for k, v in next, opts do
    local want = allowed[k]
    if not want then error(("fly: %s: unknown option '%s'"):format(method, tostring(k)), level) end
    if want ~= true then resource.check(v, want, name .. "." .. k, method, level) end
  end
  return opts
end

--- Copies a table (one level), optionally adding fields.
function resource.merge(base, extra)
  local t = {}
  if base then for k, v in pairs(base) do t[k] = v end end
  if extra then for k, v in pairs(extra) do t[k] = v end end
  return t
end

---------------------------------------------------------------------------- declared methods

-- The names of an operation's parameters, as a set (from the core's operation table).
local param_sets
local function param_names(op)
  if not param_sets then
    param_sets = {}
    for _, o in ipairs(core.operations()) do
      local set = {}
      for _, p in ipairs(o.params) do set[p.name] = true end
      param_sets[o.id] = set
    end
  end
  return assert(param_sets[op], op)
end

-- Raises the error of a params table holding a key the operation does not take.
local function unknown_param(k, takes, label, d)
  local names = {}
  for n in pairs(takes) do names[#names + 1] = n end
  table.sort(names)
  error(("fly: %s: unknown parameter '%s' (it takes %s)"):format(label, tostring(k),
    #names > 0 and table.concat(names, ", ") or "none"), d + 1)
end

--- Raises when a params table holds a key its operation does not take, in the method's words.
-- @tparam string op the operationId
-- @tparam[opt] table params
-- @tparam string label `"orgs:each_machine"`
-- @tparam integer level as for `error`, counted from the function calling check_params
-- @tparam[opt] table positional parameters the method takes by position (not shown as taken)
function resource.check_params(op, params, label, level, positional)
  local takes = param_names(op)
  for k in next, params or EMPTY do
    if not takes[k] then
      local shown = {}
      for n in pairs(takes) do shown[n] = true end
      for _, n in ipairs(positional or EMPTY) do shown[n] = nil end
      unknown_param(k, shown, label, level + 1)
    end
  end
end

--- Makes a namespace's methods, and its objects' methods, from declarations.
--
-- `ns` gets `ns:<name>(path..., args..., tail)`; with `desc.class`, the class
-- gets `obj:<name>(args..., tail)` for every method whose path is the whole
-- `desc.path` (the object supplies it), unless the entry says `object = false`.
--
-- @tparam table ns the namespace class (its instances hold `client`)
-- @tparam table desc `name` ("machines", for messages), `path` (the arguments that name
-- one object, `{ "app", "id" }`), `params` (their API parameter names, `{ app = "app_name",
-- id = "machine_id" }`), and for objects: `class`, `object` ("machine"), `identity(obj, ctx)`
-- (the object's path values), `nonce` (the set of operations that carry the lease nonce of
-- the object's context, or of `opts.lease_nonce`), `operations` (a table that gets
-- `method = operationId` for every entry)
-- @tparam table list entries `{ name, operation, path =, args =, params =, opts =, build =,
-- result =, inplace =, object = }`:
-- `path` the names of the strings the method takes first (default: desc.path), each mapped to
-- its parameter by desc.params or written `"name:parameter"`;
-- `args` the positional arguments after the path, `{ "key:string", "amount_mb:?number" }`;
-- `params` a last table merged into the request parameters: `true` (any key, the core checks
-- them) or `{ key = type }`; `opts` a last table of options `{ key = type }`, given to `build`;
-- `build(p, opts, args...)` fills the request parameters `p` (body, …) and may return the
-- call's options, or `false, why` for a programmer error; `result(res, client, p, nonce)`
-- shapes the answer (nil on failure); `inplace` (objects: the object takes the result's
-- fields and is returned); `object = false`: no object form
function resource.declare(ns, desc, list)
  local class, nonce_ops = desc.class, desc.nonce or EMPTY
  local full = desc.path or {}
  for _, e in ipairs(list) do
    local name, op = e[1], e[2]
    if desc.operations then desc.operations[name] = op end
    local path = e.path or full
    local npath, names, types = #path, {}, {}
    for i = 1, npath do names[i], types[i] = path[i], "string" end
    for _, a in ipairs(e.args or EMPTY) do
      local n, t = a:match("^([%w_]+):(%??[%w_|]+)$")
      assert(n, "bad argument declaration " .. a)
      names[#names + 1], types[#types + 1] = n, t
    end
    local nargs = #names
    local tail_spec = e.params
    if tail_spec == nil then tail_spec = e.opts end
    local pnames = {}
    for i = 1, npath do
      local n, param = path[i]:match("^([%w_]+):([%w_]+)$") -- "name:database_name"
      if n then names[i] = n else param = desc.params[path[i]] end
      pnames[i] = assert(param, "no parameter for " .. path[i])
    end
    local build, shape, merge_params = e.build, e.result, e.params ~= nil
    local carries_nonce = nonce_ops[op] and e.nonce ~= false

    assert(nargs + (tail_spec ~= nil and 1 or 0) <= 6, "too many arguments for " .. name)
    local t1, t2, t3, t4, t5, t6 = types[1], types[2], types[3], types[4], types[5], types[6]
    local pn1, pn2, pn3 = pnames[1], pnames[2], pnames[3]

    local function bad(i, v, label, d)
      resource.check(v, types[i], names[i], label, d + 1)
    end

    -- What the method takes, for the message about one argument too many: `shown` counts the
    -- path values an object supplies itself (the object form shows none of them).
    local last = nargs + (tail_spec ~= nil and 1 or 0) -- the position of the last argument taken
    local function too_many(v, label, shown, d)
      local taken = {}
      for i = shown + 1, nargs do taken[#taken + 1] = names[i] end
      if tail_spec ~= nil then taken[#taken + 1] = (merge_params and "params" or "opts") end
      error(("fly: %s: one argument too many (argument %d, %s: it takes %s)"):format(label, last - shown + 1,
        type(v) == "table" and "a table" or type(v), #taken > 0 and table.concat(taken, ", ") or "none"), d + 1)
    end

    -- The call itself: `label` names the method in messages; the user's line is `d` levels
    -- above run; a1… are the path values, the arguments and the tail table, in order (fixed
    -- parameters, not varargs: this is every call's path).
    local function run(label, d, client, ctx, a1, a2, a3, a4, a5, a6, a7)
      local extra -- nothing may come after the last argument taken (last <= 6)
      if last == 0 then extra = a1 elseif last == 1 then extra = a2 elseif last == 2 then extra = a3
      elseif last == 3 then extra = a4 elseif last == 4 then extra = a5 elseif last == 5 then extra = a6
      else extra = a7 end
      if extra ~= nil then too_many(extra, label, ctx == false and 0 or npath, d + 1) end
      if nargs > 0 then
        if type(a1) ~= t1 then bad(1, a1, label, d + 1) end
        if nargs > 1 then
          if type(a2) ~= t2 then bad(2, a2, label, d + 1) end
          if nargs > 2 then
            if type(a3) ~= t3 then bad(3, a3, label, d + 1) end
            if nargs > 3 then
              if type(a4) ~= t4 then bad(4, a4, label, d + 1) end
              if nargs > 4 and type(a5) ~= t5 then bad(5, a5, label, d + 1) end
              if nargs > 5 and type(a6) ~= t6 then bad(6, a6, label, d + 1) end
            end
          end
        end
      end
      local tail
      if tail_spec ~= nil then
        if nargs == 0 then tail = a1 elseif nargs == 1 then tail = a2 elseif nargs == 2 then tail = a3
        elseif nargs == 3 then tail = a4 elseif nargs == 4 then tail = a5 else tail = a6 end
      end
      -- the path parameters go in as the table is made, at its size
      local p
      if npath == 0 then p = {}
      elseif npath == 1 then p = { [pn1] = a1 }
      elseif npath == 2 then p = { [pn1] = a1, [pn2] = a2 }
      else p = { [pn1] = a1, [pn2] = a2, [pn3] = a3 } end
      if merge_params then
        if tail_spec == true then
          if tail ~= nil and type(tail) ~= "table" then
            resource.check(tail, "table", "params", label, d + 1)
          end
          resource.check_params(op, tail, label, d + 1, pnames) -- pnames: what it takes by position
        else
          resource.options(tail, tail_spec, "params", label, d + 1)
        end
        if tail then
          for k, v in next, tail do p[k] = v end
          if npath > 0 then -- the path wins over the params table, as before
            p[pn1] = a1
            if npath > 1 then
              p[pn2] = a2
              if npath > 2 then p[pn3] = a3 end
            end
          end
        end
        tail = EMPTY
      elseif tail_spec then
        tail = resource.options(tail, tail_spec, "opts", label, d + 1)
      else
        tail = EMPTY
      end
      local copts, why
      if build then
        if npath == 0 then copts, why = build(p, tail, a1, a2, a3, a4, a5, a6)
        elseif npath == 1 then copts, why = build(p, tail, a2, a3, a4, a5, a6)
        elseif npath == 2 then copts, why = build(p, tail, a3, a4, a5, a6)
        else copts, why = build(p, tail, a4, a5, a6) end
        if copts == false then error(("fly: %s: %s"):format(label, why), d + 1) end
      end
      local nonce
      if carries_nonce then
        nonce = tail.lease_nonce or (ctx and ctx.nonce) or nil -- ctx is false for a namespace call
        p.lease_nonce = nonce
      end
      local res, err = resource.call(client, op, p, copts, d + 1, true)
      if shape then res = shape(res, client, p, nonce) end
      return res, err
    end

    local ns_label = desc.name .. ":" .. name
    ns[name] = function(self, a, b, c, d, f, g, h)
      local client = type(self) == "table" and rawget(self, "client")
      if type(client) ~= "userdata" then resource.dot_call(ns_label, 2) end
      local res, err = run(ns_label, 2, client, false, a, b, c, d, f, g, h)
      return res, err
    end

    if class and e.object ~= false and npath == #full and npath > 0 then
      local obj_label, identity, inplace, settle = desc.object .. ":" .. name, desc.identity, e.inplace,
        resource.settle
      local owner = resource.owner
      local fn
      if npath == 1 then
        fn = function(self, a, b, c, d, f, g)
          local client, ctx = owner(self, obj_label)
          local res, err = run(obj_label, 2, client, ctx, identity(self, ctx), a, b, c, d, f, g)
          if inplace and type(res) == "table" then res = settle(self, res) end
          return res, err
        end
      else
        fn = function(self, a, b, c, d, f)
          local client, ctx = owner(self, obj_label)
          local x, y = identity(self, ctx)
          local res, err = run(obj_label, 2, client, ctx, x, y, a, b, c, d, f)
          if inplace and type(res) == "table" then res = settle(self, res) end
          return res, err
        end
      end
      class[name] = fn
    end
  end
end

return resource
