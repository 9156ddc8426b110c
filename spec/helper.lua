--- Shared by the specs: the emulator's URL and control endpoints, and clients
-- pointed at it. `local H = require "helper"`.
--
-- spec/run starts one emulator for the whole suite and exports its URL as
-- FLY_EMULATOR_URL; a spec file run on its own starts its own emulator here,
-- stopped when the Lua state closes. With FLY_SPEC_TLS=1 the emulator serves
-- HTTPS + HTTP/2 (spec/emulator/run --tls) and H.client trusts its CA.
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local H = {}

H.TOKEN = os.getenv("FLY_EMULATOR_TOKEN") or "emulator-token"
H.ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helper%.lua$")) or "."

H.TLS = os.getenv("FLY_SPEC_TLS") == "1"

local url = os.getenv("FLY_EMULATOR_URL")
local owned  -- keeps the stopper of an emulator started here alive until exit
local listeners  -- the emulator's env file: FLY_EMULATOR_URL, …_CA, …_PLAIN_URL, …

--- The emulator's base URL (https:// under FLY_SPEC_TLS=1), starting one if the suite did not.
function H.url()
  if not url then
    local p = assert(io.popen(H.ROOT .. "/spec/emulator/run" .. (H.TLS and " --tls" or "")))
    url = p:read("*l")
    p:close()
    assert(url and url:find("^https?://127%.0%.0%.1:%d+$"), "the emulator did not start")
    local stop = function() os.execute(H.ROOT .. "/spec/emulator/stop " .. url) end
    -- Lua 5.1 and LuaJIT run __gc only for userdata (newproxy); 5.2+ for tables too
    local newproxy = rawget(_G, "newproxy")
    owned = newproxy and newproxy(true) or {}
    if newproxy then getmetatable(owned).__gc = stop else setmetatable(owned, { __gc = stop }) end
  end
  return url
end
H._owned = function() return owned end

--- A value from the emulator's listener list (spec/emulator/README.md: `FLY_EMULATOR_CA`,
-- `FLY_EMULATOR_PLAIN_URL`, `FLY_EMULATOR_H1_URL`, `FLY_EMULATOR_IDLE_URL`, …), nil when absent.
function H.listener(name)
  if not listeners then
    local port = assert(H.url():match(":(%d+)$"))
    local path = ("%s/fly-emulator-%s/env"):format(os.getenv("TMPDIR") or "/tmp", port)
    local f = assert(io.open(path, "r"), "no listener list at " .. path)
    listeners = {}
    for line in f:lines() do
      local k, v = line:match("^([%w_]+)=(.*)$")
      if k then listeners[k] = v end
    end
    f:close()
  end
  return listeners[name]
end

--- The emulator's plain-HTTP listener (same API and state as H.url()).
function H.plain_url()
  return H.listener("FLY_EMULATOR_PLAIN_URL")
end

--- The emulator's CA file under TLS, else nil.
function H.ca_file()
  return H.listener("FLY_EMULATOR_CA")
end

--- Calls a control endpoint of the emulator (no auth); returns the decoded answer and status.
function H.control(method, path, body)
  local out = {}
  local src = body ~= nil and cjson.encode(body) or nil
  local _, status = http.request {
    url = H.plain_url() .. "/__emulator/" .. path, method = method, sink = ltn12.sink.table(out),
    source = src and ltn12.source.string(src) or nil,
    headers = src and { ["content-type"] = "application/json", ["content-length"] = #src } or nil,
  }
  local text = table.concat(out)
  local ok, decoded = pcall(cjson.decode, text)
  return ok and decoded or text, status
end

--- Empties the emulator's state, faults and config.
function H.reset()
  local _, status = H.control("POST", "reset")
  assert(status == 200, "emulator reset failed")
end

--- The emulator's counters (requests per operation, connections, …).
function H.stats()
  return (H.control("GET", "stats"))
end

--- Merges settings into the emulator's config.
function H.config(t)
  local _, status = H.control("POST", "config", t)
  assert(status == 200, "emulator config failed")
end

--- Adds a fault (see spec/emulator/README.md).
function H.fault(t)
  local _, status = H.control("POST", "faults", t)
  assert(status == 200, "emulator fault failed")
end

--- A client pointed at the emulator; rate limiting is off unless asked for. Under TLS it
-- trusts the emulator's CA (also when opts.base_url is another of its listeners).
function H.client(opts)
  local fly = require "fly"
  local o = { token = H.TOKEN, base_url = H.url(), rate_limit = false, timeout = 10, ca_file = H.ca_file() }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(fly.new(o))
end

local n = 0
--- A fresh name for an app (or anything) in this run.
function H.name(prefix)
  n = n + 1
  return ("%s-%d-%d"):format(prefix or "app", os.time() % 100000, n)
end

--- Creates an app in org "personal" and returns its name.
function H.app(client, name)
  name = name or H.name("app")
  assert(client.apps:create { app_name = name, org_slug = "personal" })
  return name
end

--- Asserts that fn fails (pcall(fn) is false) with a message matching pattern.
function H.raises(pattern, fn)
  local assert = require "luassert" -- busted's assert (the specs' global is not visible here)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.matches(pattern, err)
end

--- Runs a Lua 5.4 chunk in a child process with the given environment
-- (only these FLY_* variables set) and returns what it printed.
function H.child(code, env)
  local parts = { "env" }
  for _, k in ipairs { "FLY_API_TOKEN", "FLY_ACCESS_TOKEN", "FLY_API_HOSTNAME" } do
    parts[#parts + 1] = "-u " .. k
  end
  for k, v in pairs(env or {}) do parts[#parts + 1] = ("%s='%s'"):format(k, v) end
  local path = ("%s/lua/?.lua;%s/lua/?/init.lua;;"):format(H.ROOT, H.ROOT)
  parts[#parts + 1] = ("LUA_PATH='%s'"):format(path)
  parts[#parts + 1] = ("LUA_CPATH='%s'"):format(os.getenv("LUA_CPATH") or (H.ROOT .. "/build/?.so;;"))
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  parts[#parts + 1] = (os.getenv("FLY_SPEC_LUA") or "lua5.4") .. " " .. script .. " 2>&1"
  local p = assert(io.popen(table.concat(parts, " ")))
  local out = p:read("*a")
  p:close()
  os.remove(script)
  return out
end

--- A port number in 20000-59999 from /dev/urandom: unlike math.random, the same in no two runs.
function H.random_port()
  local f = assert(io.open("/dev/urandom", "rb"))
  local a, b = f:read(2):byte(1, 2)
  f:close()
  return 20000 + (a * 256 + b) % 40000
end

--- Runs a shell command: true when it exited with status 0 (what
-- os.execute returns for that differs between Lua versions).
function H.sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

--- Runs a shell command and returns what it printed and whether it exited
-- with status 0 (a pipe's close does not tell on Lua 5.1 and LuaJIT).
function H.capture(cmd)
  local p = assert(io.popen("(" .. cmd .. "\n); printf '\\n%d' $?"))
  local out = p:read("*a")
  p:close()
  local text, status = out:match("^(.*)\n(%d+)$")
  return text or out, status == "0"
end

--- `s` quoted for the shell, whatever it holds.
function H.quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Installs the rock into `tree` for Lua `version` ("5.1" … "5.4") with `luarocks make`;
-- returns what luarocks printed and whether it succeeded. It builds from a copy of the
-- checkout: luarocks compiles in the directory it builds in, and suites running side by side
-- (CI's lanes) may be building the rock at the same time.
function H.make_rock(version, tree)
  local src = os.tmpname()
  os.remove(src)
  local q = H.quote
  local cmd = ("mkdir -p %s/spec && cd %s && cp -R lua csrc bin rockspec %s/ && cp -R spec/emulator %s/spec/"
    .. " && cd %s && luarocks --lua-version=%s --tree=%s make --deps-mode=none rockspec/fly-machines-scm-1.rockspec")
    :format(q(src), q(H.ROOT), q(src), q(src), q(src), version, q(tree))
  local log, ok = H.capture(cmd .. " 2>&1")
  os.execute("rm -rf " .. q(src))
  return log, ok
end

return H
