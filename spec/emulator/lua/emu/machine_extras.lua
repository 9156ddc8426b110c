-- emu.machine_extras: read-mostly machine endpoints.
--   Machines_list_events      GET  …/events?limit=N (default 20, max 50; newest first)
--   Machines_list_versions    GET  …/versions -> [{ version, user_config }] newest first
--   Machines_list_processes   GET  …/ps?sort_by=pid|cpu|rss|rtime|stime|command&order=asc|desc
--                             (a fixed process table while started, [] otherwise)
--   Machines_exec             POST …/exec { command = {…} } or { cmd = "…" }
--                             -> { stdout, stderr, exit_code }; deterministic fake shell:
--                             echo ARGS, true, false, cat (echoes stdin), hostname (machine id),
--                             env (config.env, sorted), exit N, sleep N (really sleeps,
--                             capped by timeout), sh -c "…" (runs the string); otherwise 127.
--                             The machine must be started (412 otherwise).
--   Machines_get_memory       GET  …/memory -> { limit_mb, available_mb }
--   Machines_set_memory_limit PUT  …/memory { limit_mb } -> memory response
--   Machines_reclaim_memory   POST …/memory/reclaim { amount_mb } -> { actual_mb }
local util = require "emu.util"
local store = require "emu.machine_store"

local M = {}

local function events(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local limit = tonumber(req.query.limit) or 20
  if limit < 1 then limit = 20 end
  if limit > 50 then limit = 50 end
  return 200, store.events_newest_first(m, math.floor(limit))
end

local function versions(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local out = util.array()
  for i = #m.versions, 1, -1 do
    local v = m.versions[i]
    out[#out + 1] = { version = v.version, user_config = v.config }
  end
  return 200, out
end

---------------------------------------------------------------------------- ps

local SORT_KEYS = { pid = true, cpu = true, rss = true, rtime = true, stime = true,
                    command = true }

local function process_table(m)
  local cmd = "/app/server"
  local init = type(m.config.init) == "table" and m.config.init
  if init and type(init.cmd) == "table" and #init.cmd > 0 then
    cmd = table.concat(init.cmd, " ")
  end
  return {
    { pid = 1, command = "/.fly/init", cpu = 0, rss = 4096, rtime = 120, stime = 30,
      directory = "/", listen_sockets = util.array() },
    { pid = 313, command = "/.fly/hallpass", cpu = 1, rss = 12288, rtime = 80, stime = 10,
      directory = "/", listen_sockets = util.array({ { proto = "tcp", address = "[fdaa::3]:22" } }) },
    { pid = 314, command = cmd, cpu = 3, rss = 65536, rtime = 450, stime = 60,
      directory = "/app",
      listen_sockets = util.array({ { proto = "tcp", address = "0.0.0.0:8080" } }) },
  }
end

local function ps(req)
  local sort_by = req.query.sort_by or "pid"
  local order = req.query.order or "asc"
  if not SORT_KEYS[sort_by] then
    return util.err(400, "invalid_argument: invalid sort_by " .. tostring(sort_by),
                    "invalid_argument")
  end
  if order ~= "asc" and order ~= "desc" then
    return util.err(400, "invalid_argument: invalid order " .. tostring(order), "invalid_argument")
  end
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  if m.state ~= "started" then return 200, util.array() end
  local procs = process_table(m)
  table.sort(procs, function(a, b)
    if a[sort_by] == b[sort_by] then return a.pid < b.pid end
    if order == "desc" then return a[sort_by] > b[sort_by] end
    return a[sort_by] < b[sort_by]
  end)
  return 200, util.array(procs)
end

---------------------------------------------------------------------------- exec

local function split_words(s)
  local out = {}
  -- minimal shell word splitting with single/double quotes
  local i, n = 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c:match("%s") then
      i = i + 1
    else
      local word = {}
      while i <= n and not s:sub(i, i):match("%s") do
        c = s:sub(i, i)
        if c == "'" or c == '"' then
          local j = s:find(c, i + 1, true) or (n + 1)
          word[#word + 1] = s:sub(i + 1, j - 1)
          i = j + 1
        else
          word[#word + 1] = c
          i = i + 1
        end
      end
      out[#out + 1] = table.concat(word)
    end
  end
  return out
end

local run

local COMMANDS = {
  echo = function(args) return table.concat(args, " ", 2) .. "\n", "", 0 end,
  ["true"] = function() return "", "", 0 end,
  ["false"] = function() return "", "", 1 end,
  cat = function(_, ctx) return ctx.stdin or "", "", 0 end,
  hostname = function(_, ctx) return ctx.m.id .. "\n", "", 0 end,
  pwd = function() return "/\n", "", 0 end,
  env = function(_, ctx)
    local keys, lines = {}, {}
    local env = type(ctx.m.config.env) == "table" and ctx.m.config.env or {}
    for k in pairs(env) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do lines[#lines + 1] = k .. "=" .. tostring(env[k]) .. "\n" end
    lines[#lines + 1] = "FLY_MACHINE_ID=" .. ctx.m.id .. "\n"
    return table.concat(lines), "", 0
  end,
  exit = function(args) return "", "", tonumber(args[2]) or 0 end,
  sleep = function(args, ctx)
    local secs = math.min(tonumber(args[2]) or 0, ctx.timeout)
    if secs > 0 and ngx then ngx.sleep(secs) end
    return "", "", 0
  end,
  sh = function(args, ctx)
    if args[2] == "-c" and args[3] then return run(split_words(args[3]), ctx) end
    return "", "sh: interactive shells are not supported\n", 2
  end,
}
COMMANDS.bash = COMMANDS.sh

run = function(argv, ctx)
  local name = argv[1]
  local f = COMMANDS[name] or COMMANDS[(name or ""):match("[^/]+$") or ""]
  if not f then
    return "", tostring(name) .. ": command not found\n", 127
  end
  return f(argv, ctx)
end

local function exec(req)
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  local argv
  if type(body.command) == "table" and #body.command > 0 then
    argv = {}
    for i, a in ipairs(body.command) do argv[i] = tostring(a) end
  elseif type(body.cmd) == "string" and body.cmd ~= "" then
    argv = split_words(body.cmd)
  end
  if not argv or #argv == 0 then
    return util.err(400, "invalid_argument: command is required", "invalid_argument")
  end
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  if m.state ~= "started" then
    return util.err(412, "failed_precondition: machine is not started (state '" .. m.state .. "')")
  end
  local timeout = tonumber(body.timeout) or 60
  local stdout, stderr, code = run(argv, { m = m, stdin = body.stdin, timeout = timeout })
  return 200, { stdout = stdout, stderr = stderr, exit_code = code }
end

---------------------------------------------------------------------------- memory

local function limit_of(m)
  local guest = type(m.config.guest) == "table" and m.config.guest or {}
  local max = tonumber(guest.memory_mb) or 256
  return m.memory_limit_mb or max, max
end

local function memory_response(m)
  local limit = limit_of(m)
  return { limit_mb = limit, available_mb = math.max(0, limit - 64) }
end

local function get_memory(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  return 200, memory_response(m)
end

local function set_memory(req)
  local body, bst, beb = util.json_body(req, true)
  if not body then return bst, beb end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  local want = tonumber(body.limit_mb)
  local _, max = limit_of(m)
  if not want or want < 1 or want > max then
    return util.err(400, string.format("invalid_argument: limit_mb must be between 1 and %d", max),
                    "invalid_argument")
  end
  m.memory_limit_mb = math.floor(want)
  return 200, memory_response(m)
end

local function reclaim(req)
  local body, bst, beb = util.json_body(req, false)
  if not body then return bst, beb end
  local m, st, eb = store.find_writable(req)
  if not m then return st, eb end
  local amount = tonumber(body.amount_mb) or 0
  if amount < 0 then
    return util.err(400, "invalid_argument: amount_mb must not be negative", "invalid_argument")
  end
  local available = memory_response(m).available_mb
  return 200, { actual_mb = math.floor(math.min(amount, available)) }
end

local PM = "/v1/apps/{app_name}/machines/{machine_id}"
M.routes = {
  { op = "Machines_list_events", method = "GET", path = PM .. "/events", handler = events },
  { op = "Machines_list_versions", method = "GET", path = PM .. "/versions", handler = versions },
  { op = "Machines_list_processes", method = "GET", path = PM .. "/ps", handler = ps },
  { op = "Machines_exec", method = "POST", path = PM .. "/exec", handler = exec },
  { op = "Machines_get_memory", method = "GET", path = PM .. "/memory", handler = get_memory },
  { op = "Machines_set_memory_limit", method = "PUT", path = PM .. "/memory", handler = set_memory },
  { op = "Machines_reclaim_memory", method = "POST", path = PM .. "/memory/reclaim",
    handler = reclaim },
}

return M
