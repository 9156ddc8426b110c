--- Differences between Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT, handled once.
--
-- Every other module of fly uses these instead of testing the Lua version
-- itself. Nothing here changes the global environment.
-- @module fly.compat
local compat = {}

local unpack = table.unpack or rawget(_G, "unpack")
local math_type = math.type
local floor, huge = math.floor, math.huge

--- Whether numbers have an integer subtype (Lua 5.3 and later).
compat.has_integers = math_type ~= nil

--- `table.pack`: the arguments in a table, with their count in `n`.
compat.pack = table.pack or function(...)
  return { n = select("#", ...), ... }
end

--- `table.unpack` (`unpack` on Lua 5.1 and LuaJIT).
compat.unpack = unpack

--- Whether `v` is a whole number a JSON integer can carry exactly: an integer
-- on Lua 5.3+, a whole double of magnitude at most 2^53 elsewhere.
-- @param v any value
-- @treturn boolean
function compat.is_integer(v)
  if math_type then return math_type(v) == "integer" end
  return type(v) == "number" and v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992
end

--- `math.tointeger`: `v` as an integer when it has an exact integer value,
-- else nil. On Lua 5.1 and LuaJIT the result is a whole double (exact up to 2^53).
-- @param v any value
-- @return number or nil
function compat.tointeger(v)
  if math.tointeger then
    if type(v) ~= "number" then return nil end -- 5.4.0-5.4.2 accept strings
    return math.tointeger(v)
  end
  if type(v) == "number" and v == floor(v) and v > -huge and v < huge then return v end
  return nil
end

--- `load` for a chunk in a string (`loadstring` where `load` takes only functions: Lua 5.1).
-- @tparam string s the chunk
-- @tparam[opt] string name its name in messages
-- @return the function, or nil and a message
function compat.load(s, name)
  local loadstring = rawget(_G, "loadstring")
  if loadstring then return loadstring(s, name) end
  return load(s, name)
end

--- Closes a suspended coroutine where the Lua can (5.4); elsewhere leaves
-- it to the collector.
function compat.close_coroutine(co)
  if coroutine.close and coroutine.status(co) == "suspended" then coroutine.close(co) end
end

-- Lua 5.1 (not LuaJIT) cannot yield across pcall: a protected call made
-- inside a task would fail when the call waits. There, pcall runs the
-- function in a coroutine of its own and passes its yields through to the
-- enclosing coroutine, which `compat.running` still reports as the running one.
local yields_across_pcall = not (_VERSION == "Lua 5.1" and not rawget(_G, "jit"))
-- inner coroutine -> enclosing one; weak both ways, so that it keeps neither
-- alive (Lua 5.1 has no ephemerons)
local outer_of = setmetatable({}, { __mode = "kv" })

--- `coroutine.running()`, seen through `compat.pcall`'s own coroutines: the
-- coroutine a task runs in, or nil on the main thread.
function compat.running()
  local co, main = coroutine.running()
  if main then return nil end
  while co and outer_of[co] do co = outer_of[co] end
  return co
end

-- Whether the frames of `co` (nil: the running coroutine, from the caller
-- of the caller on) from `level` on let it yield. Lua 5.1 yields across no
-- C function and not out of a generic-for iterator; Lua 5.2 across pcall
-- and xpcall only.
local function frames_yield(co, level)
  while true do
    local info = co and debug.getinfo(co, level, "Snf") or debug.getinfo(level + 1, "Snf")
    if not info then return true end
    if info.what == "C" then
      if not yields_across_pcall or (info.func ~= pcall and info.func ~= xpcall) then return false end
    elseif info.name == "(for generator)" and not yields_across_pcall then
      return false
    end
    level = level + 1
  end
end

--- Whether the code calling it can yield to the task it runs in: false on
-- the main thread and where a C function the Lua cannot yield across (a
-- `table.sort` comparator, …; on Lua 5.1 also pcall and generic-for
-- iterators) lies between it and the task.
-- @function can_yield
if coroutine.isyieldable then -- Lua 5.3+, LuaJIT 2.1: exact
  local isyieldable = coroutine.isyieldable
  compat.can_yield = function() return isyieldable() end
else
  compat.can_yield = function()
    local co = coroutine.running()
    if not co then return false end
    -- this coroutine from the caller on, then each enclosing one (Lua 5.1's
    -- pcall) from the frame above the resume that runs the inner one
    if not frames_yield(nil, 2) then return false end
    local outer = outer_of[co]
    while outer do
      local level = 0
      while (debug.getinfo(outer, level, "S") or {}).what == "C" do level = level + 1 end
      if not frames_yield(outer, level) then return false end
      outer = outer_of[outer]
    end
    return true
  end
end

if yields_across_pcall then
  compat.pcall = pcall
else
  local create, resume, status, yield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
  local function pass(co, ok, ...)
    if not ok then return false, ... end
    if status(co) == "dead" then return true, ... end
    return pass(co, resume(co, yield(...)))
  end
  --- `pcall` that the function may yield through (a coroutine of its own on Lua 5.1).
  function compat.pcall(fn, ...)
    local outer = coroutine.running()
    if not outer then return pcall(fn, ...) end
    local co = create(fn)
    outer_of[co] = outer
    return pass(co, resume(co, ...))
  end
end

return compat
