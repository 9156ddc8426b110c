--- What the tasks of every driver share (`fly.loop`, and `fly.ngx.loop` inside nginx): the
-- `fly.Task` class's name, status and result, and the checks `join` makes of its arguments.
-- Each driver adds how a task runs, joins and is cancelled.
-- @module fly.task
local Error = require "fly.error"
local unpack = require("fly.compat").unpack

local task = {}

--- A new Task class (metatable), with `__tostring`, `status` and `result`.
-- @treturn table the class
function task.class()
  local Task = { __name = "fly.Task" }
  Task.__index = Task

  function Task:__tostring()
    return ("fly.Task{%s}: %s"):format(self._status, self._id)
  end

  --- "running", "done", "failed" or "cancelled".
  function Task:status()
    task.check_self(self, "status")
    return self._status
  end

  --- The task's outcome once it has finished: what its function returned; for a task that
  -- raised, `nil, err` (code "task_failed", the raised value in `err.cause`); for a cancelled
  -- one `nil, err` (code "cancelled"); for one still running `nil, err` (code "running").
  function Task:result()
    task.check_self(self, "result")
    if self._status == "running" then
      return nil, Error.new { code = "running", message = "the task has not finished" }
    end
    return unpack(self._results, 1, self._results.n)
  end

  return Task
end

--- Raises (at the caller of the Task method `name`) when it was called with '.' instead of ':'.
function task.check_self(t, name)
  if type(t) ~= "table" then
    error(("fly: task:%s: call it with ':' (task:%s(...)), not '.'"):format(name, name), 3)
  end
end

--- Raises (at the caller of `join`) on a timeout that is not a number, or when the task
-- running the join (`current`) is the task joined.
function task.check_join(joined, timeout, current)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
    error("fly: join: timeout must be a number (got " .. (timeout ~= timeout and "NaN" or type(timeout)) .. ")", 3)
  end
  if current == joined then error("fly: a task cannot join itself", 3) end
end

--- The error of a cancelled task whose call `req` (or nil) was abandoned, after `req:cancel()`:
-- `may_have_run` when the call had gone out (`sending`: the transport was carrying it) or
-- had got an answer that does not say it was refused, since the server may carry it out (or
-- did) all the same.
-- @param[opt] req the request the task waited for
-- @tparam[opt] boolean sending the transport was sending it when the task was cancelled
function task.cancelled(req, sending)
  local may_have_run = sending or nil
  if req then
    local ok, res = pcall(req.result, req)
    if ok and type(res) == "table" and not res.timer then
      local status = res.status
      if res.may_have_run or (status and (status < 400 or status >= 500 or status == 408)) then
        may_have_run = true
      end
    end
  end
  return Error.new { code = "cancelled", message = "the task was cancelled", retryable = false,
    may_have_run = may_have_run }
end

-- Adds `fn` to the set t[field] (made the first time); returns its key.
local function add(t, field, fn)
  local set = t[field] or {}
  t[field] = set
  local key = {}
  set[key] = fn
  return key
end

local function remove(t, field, key)
  if t[field] then t[field][key] = nil end
end

--- Registers `fn` to run, as a task of its own, if `t` is cancelled before it unregisters it: for
-- cleanups a cancelled task can no longer do itself (a lease to release).
-- @return a key for task.off_cancel
function task.on_cancel(t, fn) return add(t, "_on_cancel", fn) end

--- Unregisters what task.on_cancel registered.
function task.off_cancel(t, key) remove(t, "_on_cancel", key) end

--- Registers `fn` to run at once, inside `t:cancel()`, if `t` is cancelled before it unregisters
-- it: for tasks that `t` runs and that go with it (`client:map`'s workers). `fn` returns true when
-- something it stopped may have reached the server, which the cancelled task's error then says.
-- @return a key for task.uncascade
function task.cascade(t, fn) return add(t, "_cascade", fn) end

--- Unregisters what task.cascade registered.
function task.uncascade(t, key) remove(t, "_cascade", key) end

--- Runs, once, what was registered with task.cascade for the cancelled task `t`, whose error is
-- `err`: sets `err.may_have_run` when one of them says so.
function task.run_cascade(t, err)
  local fns = t._cascade
  t._cascade = nil
  for _, fn in pairs(fns or {}) do
    if fn() then err.may_have_run = true end
  end
end

local cancelling = false -- inside a cancel (the tasks that go with a task are cancelled there too)

--- Task:cancel for both drivers: `cancel(t)` cancels the task; then, unless this cancel runs
-- inside another, `stop()` stops the running task if it is among those cancelled (it raises
-- there).
-- @treturn boolean what `cancel` returned: false when the task had finished
function task.cancel(t, cancel, stop)
  if cancelling then return cancel(t) end
  cancelling = true
  local ok, did = pcall(cancel, t)
  cancelling = false
  if not ok then error(did, 0) end
  stop()
  return did
end

--- Cancels, with `cancel`, every task in the set `tasks` but for shielded ones unless `all`.
-- The list is taken first: cancelling adds to the set (cleanups start as tasks of their own).
function task.cancel_all(tasks, cancel, all)
  local list = {}
  for t in pairs(tasks) do
    if all or not t._shielded then list[#list + 1] = t end
  end
  for i = 1, #list do cancel(list[i]) end
end

--- Makes `t` one of the library's own tasks, which `client:run` and `client:poll` do not count
-- as unfinished (a lease's refresher, which ends with its `with_lease`): `st.background` counts
-- them, and the driver's `finish` takes it off.
function task.background(st, t)
  if t._status ~= "running" or t._background then return end
  t._background = true
  st.background = st.background + 1
end

--- Shields a task from the first cancel of a closing client: a cleanup waits for its answer
-- (a lease being granted), so the close lets it finish; the close's last cancel takes it too.
function task.shield(t) t._shielded = true end

--- The error a task that did not finish in time gives its joiner.
function task.timeout()
  return Error.new { code = "timeout", message = "the task did not finish in time" }
end

return task
