--- The trace hook: what the core recorded about each call, handed to the
-- functions given to `fly.new{ trace = … }` (and to the FLY_DEBUG printer).
--
-- The core queues small events in C as a call goes through its steps (no Lua
-- runs meanwhile); `trace.drain` takes them after each step of the loop and
-- calls the hooks with each event, in order, before the results they describe
-- are returned. A transport that carries requests itself (over the request
-- seam) calls `trace.drain(client)` after each `req:_complete` or `req:_failed`.
-- @module fly.trace
local core = require "fly.core"
local escape = require("fly.error")._escape

local take = core.Client._trace
local client_state = core.Client._state
local co_create, co_resume, co_status = coroutine.create, coroutine.resume, coroutine.status

local trace = {}

-- Writes one line of the library's own: inside nginx to its error log at `level` ("WARN",
-- "ERR": nginx adds the time, the worker and the request), elsewhere to stderr.
local function emit(level, line)
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.log) == "function" and ngx[level] then
    ngx.log(ngx[level], line)
  else
    io.stderr:write(line, "\n")
  end
end

--- The FLY_DEBUG printer: one line per attempt on stderr (inside nginx: its error log, at level
-- warn), and the shared rate limiter's news.
-- @tparam table event a `finish` or `limiter` event (others are ignored)
function trace.debug_line(event)
  if event.kind == "limiter" then
    if event.message then emit("WARN", escape(event.message)) end
    return
  end
  if event.kind ~= "finish" then return end
  local outcome = event.status and (event.code and (event.status .. " " .. event.code) or tostring(event.status))
    or event.code or "?"
  emit("WARN", ("fly: %s %s %s %.1fms attempt %d wait %.1fms%s%s"):format(
    event.method, event.path or "?", outcome, (event.seconds or 0) * 1000, event.attempt,
    (event.wait or 0) * 1000, event.resends and (" resent " .. event.resends) or "",
    event.request_id and (" request_id " .. event.request_id) or ""))
end

--- Whether FLY_DEBUG asks for the debug lines (set, and neither empty nor "0").
function trace.debug_wanted()
  local v = os.getenv("FLY_DEBUG")
  return v ~= nil and v ~= "" and v ~= "0"
end

--- Sets the hooks of a new client (called by fly.new).
-- @param client the client, made with `trace = true` in the core
-- @tparam table hooks `{ { fn = f, name = "…" }, … }`
function trace.install(client, hooks)
  for _, h in ipairs(hooks) do
    local fn = h.fn
    h.run = function(event) return fn(event) end -- (a coroutine's body: a C function may not be one)
  end
  client_state(client).trace = { hooks = hooks, queue = {}, busy = false }
end

-- The hooks whose error was reported in this Lua state, by name (where the function is
-- defined): an nginx worker making a client, and a hook closure, per request reports a broken
-- hook once, not once per request.
local reported = {}

-- Calls a hook (`h.run`: see trace.install), outside nginx in a coroutine of its own: a hook
-- that yields stops there (as an error), and never suspends the code whose call is traced.
-- Inside nginx a hook runs on the light thread (some phases have no coroutines, and one that
-- waits on a cosocket is resumed by nginx).
local function call_hook(h, event)
  if rawget(_G, "ngx") then return pcall(h.fn, event) end
  local co = co_create(h.run)
  local ok, err = co_resume(co, event)
  if ok and co_status(co) ~= "dead" then return false, "it yielded (a hook must return without yielding)" end
  return ok, err
end

-- Calls every hook with one event; a hook that raises is reported once (naming it) on
-- stderr, or nginx's error log, and keeps being called.
local function call_hooks(hooks, event)
  for i = 1, #hooks do
    local h = hooks[i]
    local ok, err = call_hook(h, event)
    if not ok and not reported[h.name] then
      reported[h.name] = true
      local shown, text = pcall(tostring, err) -- (its __tostring may raise too)
      emit("ERR", ("fly: the %s raised an error (reported once; it is still called): %s"):format(
        h.name, shown and escape(text) or ("a " .. type(err) .. " that cannot be shown")))
    end
  end
end

--- Hands the events the core queued for `client` to its hooks. Costs one
-- call into C when nothing is queued, and nothing more for a client without
-- hooks. A hook that makes calls on the client itself drains again: those
-- events join the queue and are delivered after the current ones, in order.
function trace.drain(client)
  local events = take(client)
  if not events then return end
  local st = client_state(client).trace
  if not st then return end
  local queue = st.queue
  for i = 1, #events do
    local e = events[i]
    if e.request_id then e.request_id = escape(e.request_id) end -- (the server's text, as in errors)
    queue[#queue + 1] = e
  end
  if st.busy then return end -- an outer drain is delivering: it delivers these too
  st.busy = true
  local i = 1
  while queue[i] do
    call_hooks(st.hooks, queue[i])
    queue[i] = false -- delivered; the slot stays so nested drains append after
    i = i + 1
  end
  st.queue = {}
  st.busy = false
end

return trace
