-- emu.machine_extras: read-mostly machine endpoints.
--   Machines_list_events      GET  …/events?limit=N (default 20, max 50; newest first)
--   Machines_list_versions    GET  …/versions -> [{ version, user_config }] newest first
--   Machines_list_processes   GET  …/ps?sort_by=pid|cpu|rss|rtime|stime|command&order=asc|desc
--                             (a fixed process table while started, [] otherwise)
--   Machines_exec             POST …/exec { command = {…} } or { cmd = "…" }
--                             -> { stdout, stderr, exit_code }; deterministic fake shell:
--                             echo [-n] ARGS, true, false, cat (echoes stdin), hostname (machine
--                             id), pwd, ls (a fixed tree), env (config.env sorted, then
--                             FLY_MACHINE_ID), exit N, sleep N (really sleeps, capped by timeout),
--                             sh -c "…" (see "exec" below); otherwise 127.
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
-- A deterministic fake shell. `sh -c "…"` strings run as simple commands separated by `;` or
-- newlines, with '…' and "…" quoting, backslash escapes, `$VAR`, `${VAR}` and `$?` (from the
-- machine's config.env and FLY_MACHINE_ID; unset variables expand to nothing, unquoted
-- expansions are split into words), `NAME=value` assignments, `# comments` and `exit N`.
-- Anything else a shell would do (pipes, redirection, `&&`, `||`, `&`, subshells, command
-- substitution, control flow, other parameter expansions) is refused before anything runs:
-- exit code 2 and a stderr line naming the construct.

local function split_words(s)
  local out = {}
  -- minimal word splitting with single/double quotes (the legacy `cmd` field)
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

local UNSUPPORTED_WORDS = {
  ["if"] = true, ["then"] = true, ["else"] = true, ["elif"] = true, ["fi"] = true,
  ["for"] = true, ["while"] = true, ["until"] = true, ["do"] = true, ["done"] = true,
  ["case"] = true, ["esac"] = true, ["function"] = true, ["select"] = true,
  ["{"] = true, ["}"] = true, ["!"] = true, ["[["] = true,
}

local SHELL_HELP = "the emulator's shell runs simple commands separated by ';', with quoting, "
  .. "$VAR and exit N"

local function unsupported(what)
  return nil, ("unsupported by the emulator's shell: %s (%s)"):format(what, SHELL_HELP)
end

-- A `$` expansion at s[j]; returns the part and the index after it, or nil, error.
local function dollar(s, j, quoted)
  local c = s:sub(j + 1, j + 1)
  if c == "{" then
    local close = s:find("}", j + 2, true)
    if not close then return nil, "syntax error: missing '}'" end
    local name = s:sub(j + 2, close - 1)
    if name ~= "?" and not name:match("^[%a_][%w_]*$") then
      return unsupported("parameter expansion '${" .. name .. "}'")
    end
    return { var = name, quoted = quoted }, close + 1
  elseif c == "(" then
    return unsupported(s:sub(j + 2, j + 2) == "(" and "arithmetic '$(('" or "command substitution '$('")
  elseif c:match("^[%a_]$") then
    local name = s:match("^[%a_][%w_]*", j + 1)
    return { var = name, quoted = quoted }, j + 1 + #name
  elseif c == "?" then
    return { var = "?", quoted = quoted }, j + 2
  elseif c ~= "" and c:match("^[%d#@%*!%$%-]$") then
    return unsupported("special parameter '$" .. c .. "'")
  end
  return { lit = "$", quoted = quoted }, j + 1
end

local OPERATORS = {
  ["|"] = "pipe '|'", ["||"] = "'||'", ["&"] = "background job '&'", ["&&"] = "'&&'",
  [">"] = "redirection '>'", [">>"] = "redirection '>>'", ["<"] = "redirection '<'",
  ["<<"] = "here-document '<<'", ["("] = "subshell '('", [")"] = "subshell ')'",
  ["`"] = "command substitution '`'", [";;"] = "';;'",
}

-- Parses a script into commands, each a list of words, each word a list of parts
-- ({ lit = text } or { var = name }, with `quoted`); or nil, error.
local function parse(s)
  local cmds, words, parts = {}, {}, nil
  local function add(p)
    parts = parts or {}
    parts[#parts + 1] = p
  end
  local function end_word()
    if parts then words[#words + 1] = parts end
    parts = nil
  end
  local function end_command()
    end_word()
    if #words > 0 then cmds[#cmds + 1] = words end
    words = {}
  end
  local i, n = 1, #s
  while i <= n do
    local c = s:sub(i, i)
    local two = s:sub(i, i + 1)
    if c == " " or c == "\t" then
      end_word()
      i = i + 1
    elseif two == ";;" or OPERATORS[two] then
      return unsupported(OPERATORS[two])
    elseif c == ";" or c == "\n" then
      end_command()
      i = i + 1
    elseif OPERATORS[c] then
      return unsupported(OPERATORS[c])
    elseif c == "#" and not parts then
      i = s:find("\n", i, true) or n + 1
    elseif c == "'" then
      local close = s:find("'", i + 1, true)
      if not close then return nil, "syntax error: unterminated quoted string" end
      add({ lit = s:sub(i + 1, close - 1), quoted = true })
      i = close + 1
    elseif c == '"' then
      add({ lit = "", quoted = true })
      i = i + 1
      while true do
        if i > n then return nil, "syntax error: unterminated quoted string" end
        c = s:sub(i, i)
        if c == '"' then
          i = i + 1
          break
        elseif c == "\\" and s:sub(i + 1, i + 1):match('^[%$`"\\\n]$') then
          if s:sub(i + 1, i + 1) ~= "\n" then add({ lit = s:sub(i + 1, i + 1), quoted = true }) end
          i = i + 2
        elseif c == "$" then
          local p, nxt = dollar(s, i, true)
          if not p then return nil, nxt end
          add(p)
          i = nxt
        elseif c == "`" then
          return unsupported(OPERATORS[c])
        else
          local j = s:find('[\\"%$`]', i) or n + 1
          add({ lit = s:sub(i, j - 1), quoted = true })
          i = j
        end
      end
    elseif c == "\\" then
      local nc = s:sub(i + 1, i + 1)
      if nc ~= "\n" then add({ lit = nc, quoted = true }) end
      i = i + 2
    elseif c == "$" then
      local p, nxt = dollar(s, i, false)
      if not p then return nil, nxt end
      add(p)
      i = nxt
    else
      local j = s:find("[ \t;\n|&<>()`'\"\\%$]", i) or n + 1
      add({ lit = s:sub(i, j - 1), quoted = false })
      i = j
    end
  end
  end_command()
  for _, cmd in ipairs(cmds) do
    local first = cmd[1]
    if #first == 1 and first[1].lit and not first[1].quoted and UNSUPPORTED_WORDS[first[1].lit] then
      return unsupported("'" .. first[1].lit .. "'")
    end
  end
  return cmds
end

-- Expands a word into fields: unquoted expansions split on blanks; an unquoted word that
-- expands to nothing is no field, a quoted empty one is one.
local function expand(word, vars, fields)
  local cur, has = {}, false
  local function push()
    fields[#fields + 1] = table.concat(cur)
    cur, has = {}, false
  end
  for _, p in ipairs(word) do
    if p.var and not p.quoted then
      local text = vars[p.var] or ""
      if text:match("^%s") and has then push() end
      local k = 0
      for f in text:gmatch("%S+") do
        k = k + 1
        if k > 1 then push() end
        cur[#cur + 1] = f
        has = true
      end
      if text:match("%s$") and has then push() end
    else
      local text = p.var and (vars[p.var] or "") or p.lit
      cur[#cur + 1] = text
      if p.quoted or text ~= "" then has = true end
    end
  end
  if has then push() end
  return fields
end

-- An assignment word (NAME=value): the name and the expanded value, else nil.
local function assignment(word, vars)
  local first = word[1]
  local name, rest = (not first.quoted and first.lit or ""):match("^([%a_][%w_]*)=(.*)$")
  if not name then return nil end
  local value = { rest }
  for k = 2, #word do
    local p = word[k]
    value[#value + 1] = p.var and (vars[p.var] or "") or p.lit
  end
  return name, table.concat(value)
end

-- The machine's environment: config.env and FLY_MACHINE_ID.
local function machine_env(m)
  local env = {}
  if type(m.config.env) == "table" then
    for k, v in pairs(m.config.env) do env[tostring(k)] = tostring(v) end
  end
  env.FLY_MACHINE_ID = m.id
  return env
end

local run

-- Runs a `sh -c` script; returns stdout, stderr, exit code.
local function run_script(script, ctx)
  local cmds, err = parse(script)
  if not cmds then return "", "sh: " .. err .. "\n", 2 end
  local vars = machine_env(ctx.m)
  vars["?"] = "0"
  local out, errs, status = {}, {}, 0
  for _, words in ipairs(cmds) do
    local argv, w = {}, 1
    while words[w] do
      local name, value = assignment(words[w], vars)
      if not name then break end
      vars[name] = value
      w = w + 1
    end
    for k = w, #words do expand(words[k], vars, argv) end
    status = 0
    if argv[1] == "exit" then
      if argv[2] == nil then return table.concat(out), table.concat(errs), tonumber(vars["?"]) end
      local code = argv[2]:match("^%d+$") and tonumber(argv[2])
      if not code then
        errs[#errs + 1] = "sh: exit: Illegal number: " .. argv[2] .. "\n"
        return table.concat(out), table.concat(errs), 2
      end
      return table.concat(out), table.concat(errs), code % 256
    elseif argv[1] then
      local o, e
      o, e, status = run(argv, ctx)
      out[#out + 1] = o
      errs[#errs + 1] = e
    end
    vars["?"] = tostring(status)
  end
  return table.concat(out), table.concat(errs), status
end

-- A fixed file tree for ls.
local FILES = {
  ["/"] = { "app", "bin", "dev", "etc", "home", "lib", "proc", "root", "sys", "tmp", "usr", "var" },
  ["/app"] = { "server" },
}

local COMMANDS = {
  echo = function(args)
    local first, nl = 2, "\n"
    if args[2] == "-n" then first, nl = 3, "" end
    return table.concat(args, " ", first) .. nl, "", 0
  end,
  ["true"] = function() return "", "", 0 end,
  ["false"] = function() return "", "", 1 end,
  cat = function(_, ctx) return ctx.stdin or "", "", 0 end,
  hostname = function(_, ctx) return ctx.m.id .. "\n", "", 0 end,
  pwd = function() return "/\n", "", 0 end,
  ls = function(args)
    local out, errs, code = {}, {}, 0
    local dirs = {}
    for k = 2, #args do dirs[#dirs + 1] = args[k] end
    if #dirs == 0 then dirs[1] = "/" end
    for _, d in ipairs(dirs) do
      local key = d == "/" and d or d:gsub("/+$", "")
      if d:sub(1, 1) == "-" then
        return "", "ls: options are not supported by the emulator's shell\n", 2
      elseif FILES[key] then
        if #dirs > 1 then out[#out + 1] = d .. ":\n" end
        out[#out + 1] = table.concat(FILES[key], "\n") .. "\n"
      else
        errs[#errs + 1] = "ls: cannot access '" .. d .. "': No such file or directory\n"
        code = 2
      end
    end
    return table.concat(out), table.concat(errs), code
  end,
  env = function(_, ctx)
    local env, keys, lines = machine_env(ctx.m), {}, {}
    for k in pairs(env) do
      if k ~= "FLY_MACHINE_ID" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    keys[#keys + 1] = "FLY_MACHINE_ID"
    for _, k in ipairs(keys) do lines[#lines + 1] = k .. "=" .. env[k] .. "\n" end
    return table.concat(lines), "", 0
  end,
  exit = function(args) return "", "", (tonumber(args[2]) or 0) % 256 end,
  sleep = function(args, ctx)
    local secs = math.min(tonumber(args[2]) or 0, ctx.timeout)
    if secs > 0 and ngx then ngx.sleep(secs) end
    return "", "", 0
  end,
  sh = function(args, ctx)
    if args[2] == "-c" and args[3] then return run_script(args[3], ctx) end
    return "", "sh: only sh -c \"…\" is supported (no interactive shells or script files)\n", 2
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
