-- emu.wait: Machines_wait, the long-poll
--   GET …/machines/{id}/wait?state=started&timeout=10&version=…&from_event_id=…
--
-- state: repeated and/or comma-separated; started, stopped, suspended, destroyed, failed,
--        settled (= any non-transitional state); default started.
-- timeout: integer seconds 1..60 (default 60; a trailing "s" is accepted); out of range or not a
--        number -> 400 invalid_argument. The request really blocks at most config.wait_max s.
-- version (or deprecated instance_id): only that machine version counts.
-- from_event_id: only an event after that one (ULIDs compare as strings) whose status is a
--        wanted state counts.
-- 200 { ok = true, state, event_id, version } when reached; 408 with an error body when not.
-- 404 for an unknown machine, for a machine already destroyed when the wait starts (the live
-- API does this; clients treat it as success for state=destroyed), and during
-- config.wait_404_after_create seconds after create (eventual consistency).
-- Polls with ngx.sleep(config.wait_poll) so other requests keep being served.
local util = require "emu.util"
local state = require "emu.state"
local store = require "emu.machine_store"
local lifecycle = require "emu.lifecycle"

local M = {}

local VALID = { started = true, stopped = true, suspended = true, destroyed = true,
                failed = true, settled = true }

local function parse_states(q)
  local raw = q.state
  if raw == nil or raw == true then raw = { "started" } end
  if type(raw) ~= "table" then raw = { raw } end
  local want, names = {}, {}
  for _, v in ipairs(raw) do
    for s in tostring(v):gmatch("[^,%s]+") do
      if not VALID[s] then return nil, s end
      if s == "settled" then
        for k in pairs(lifecycle.SETTLED) do want[k] = true end
      else
        want[s] = true
      end
      names[#names + 1] = s
    end
  end
  if #names == 0 then want.started = true; names[1] = "started" end
  return want, table.concat(names, ",")
end

local function parse_timeout(v)
  if v == nil then return 60 end
  if type(v) == "table" then v = v[#v] end
  local n = tonumber(tostring(v):match("^(%d+)s?$") or "")
  if not n or n < 1 or n > 60 then return nil end
  return n
end

local function one(q, k)
  local v = q[k]
  if type(v) == "table" then v = v[#v] end
  if v == "" or v == true then v = nil end
  return v
end

-- Returns state, event_id when machine m satisfies the wait, nil otherwise.
local function reached(m, want, version, from_event)
  if version and m.version ~= version and m.state ~= "destroyed" then return nil end
  local last = m.events[#m.events]
  if from_event then
    for _, ev in ipairs(m.events) do
      if ev.id > from_event and want[ev.status] then return ev.status, ev.id end
    end
    return nil
  end
  if want[m.state] and not (lifecycle.pending(m) and m.state == "created") then
    return m.state, last and last.id
  end
  return nil
end

local function wait(req)
  local q = req.query
  local want, names = parse_states(q)
  if not want then
    return util.err(400, "invalid_argument: invalid state " .. tostring(names), "invalid_argument")
  end
  local timeout = parse_timeout(q.timeout)
  if not timeout then
    return util.err(400, "invalid_argument: timeout must be an integer between 1 and 60 seconds",
                    "invalid_argument")
  end
  local version = one(q, "version") or one(q, "instance_id")
  local from_event = one(q, "from_event_id")

  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local grace = tonumber(state.config.wait_404_after_create) or 0
  if grace > 0 and util.now() - m.created_t < grace then
    return util.err(404, "machine not found")
  end

  local id = m.id
  local limit = math.min(timeout, tonumber(state.config.wait_max) or 60)
  local deadline = util.now() + limit
  local step = tonumber(state.config.wait_poll) or 0.02
  while true do
    m = store.machines[id]
    if not m then return util.err(404, "machine not found") end
    lifecycle.settle(m)
    local s, ev = reached(m, want, version, from_event)
    if s then
      return 200, { ok = true, state = s, event_id = ev, version = m.version }
    end
    if m.state == "destroyed" then return util.err(404, "machine not found") end
    local left = deadline - util.now()
    if left <= 0 then break end
    ngx.sleep(math.min(step, left))
  end
  return util.err(408, string.format(
    "deadline_exceeded: machine %s did not reach state %s within %ds (current state: %s)",
    id, names, timeout, m.state))
end

M.routes = {
  { op = "Machines_wait", method = "GET",
    path = "/v1/apps/{app_name}/machines/{machine_id}/wait", handler = wait },
}

return M
