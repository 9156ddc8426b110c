--- A real nginx with the Lua module for the OpenResty specs: Debian's nginx and
-- libnginx-mod-http-lua, its own prefix and ports on 127.0.0.1, two workers by default,
-- lua_package_path/cpath pointing at this checkout (the core for LuaJIT is looked up in
-- build/luajit/, see `make luajit`). `local harness = require "nginx.harness"`.
--
--   local ngx = harness.start { http = "...", server = "...", main = "...", workers = 2, tls = true }
--   ngx:run [[ return require("fly.ngx.http") ~= nil ]]   --> values returned in nginx
--   ngx:request("GET", "/path")                           --> status, body
--   ngx:stop()
--
-- Configuration snippets may use @PREFIX@, @PORT@ (the main server), @TLS_PORT@, @CERT@ and
-- @KEY@ (a self-signed certificate for localhost and 127.0.0.1, made when `tls` is set).
local H = require "helper"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local harness = {}

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/nginx/harness%.lua$")) or "."
harness.ROOT = ROOT

local Instance = {}
Instance.__index = Instance

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function modules_dir()
  for _, d in ipairs { "/usr/share/nginx/modules", "/usr/lib/nginx/modules" } do
    if read(d .. "/ngx_http_lua_module.so") then return d end
  end
  error("ngx_http_lua_module.so not found (apt-get install libnginx-mod-http-lua)")
end

local function cjson_dir()
  local p = io.popen("ls -d /usr/lib/*/lua/5.1/cjson.so /usr/local/lib/lua/5.1/cjson.so "
    .. "/usr/lib/lua/5.1/cjson.so 2>/dev/null")
  local f = p:read("*l")
  p:close()
  assert(f, "lua-cjson for Lua 5.1 not found (apt-get install lua-cjson)")
  return (f:gsub("/cjson%.so$", ""))
end

local function fill(template, vars)
  return (template:gsub("@([%u_]+)@", function(k) return vars[k] end))
end

-- Whether nothing listens on the port. The spec servers listen with reuseport, which lets a
-- second nginx bind a port another one holds and share its connections (suites run side by
-- side in CI): a plain bind, which fails on a port in use, is tried first.
local function free(port)
  local s = socket.tcp()
  local ok = s:bind("127.0.0.1", port)
  s:close()
  return ok ~= nil
end

-- A process is alive when it exists and is not a zombie (a daemon's zombie lingers until
-- the container's init reaps it).
local function alive(pid)
  if not pid then return false end
  local stat = read("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("%) (%a)")
  return state ~= "Z" and state ~= "X"
end

--- Starts nginx with the given configuration snippets; raises when it cannot.
function harness.start(opts)
  opts = opts or {}
  local template = assert(read(ROOT .. "/spec/nginx/nginx.conf.in"))
  local user_line = ""
  local id = io.popen("id -u"):read("*l")
  if id == "0" then
    user_line = ("user %s %s;"):format(io.popen("id -un"):read("*l"), io.popen("id -gn"):read("*l"))
  end
  local last_log
  for _ = 1, 20 do
    local port, tls_port = H.random_port(), H.random_port()
    while port == tls_port or not free(port) or not free(tls_port) do
      port, tls_port = H.random_port(), H.random_port()
    end
    local prefix = (os.getenv("TMPDIR") or "/tmp") .. "/fly-ngxspec-" .. port
    sh("rm -rf " .. prefix)
    assert(sh("mkdir -p " .. prefix .. "/tmp"), "cannot make " .. prefix)
    local vars = {
      PREFIX = prefix, PORT = tostring(port), TLS_PORT = tostring(tls_port),
      WORKERS = tostring(opts.workers or 2), MODULES_DIR = modules_dir(), USER_LINE = user_line,
      CERT = prefix .. "/cert.pem", KEY = prefix .. "/key.pem",
      LUA_PATH = table.concat({ ROOT .. "/lua/?.lua", ROOT .. "/lua/?/init.lua", ROOT .. "/spec/?.lua",
        "/usr/share/lua/5.1/?.lua", "/usr/share/lua/5.1/?/init.lua", ";" }, ";"),
      LUA_CPATH = ROOT .. "/build/luajit/?.so;" .. cjson_dir() .. "/?.so;;",
    }
    if opts.tls then
      assert(sh(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
        .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1")
        :format(vars.KEY, vars.CERT)), "openssl could not make a certificate")
    end
    vars.MAIN = fill(opts.main or "", vars)
    vars.HTTP = fill(opts.http or "", vars)
    vars.SERVER = fill(opts.server or "", vars)
    write(prefix .. "/nginx.conf", fill(template, vars))
    local cmd = ("nginx -p %s -c %s/nginx.conf -e %s/error.log -g 'daemon on;' 2>>%s/start.log")
      :format(prefix, prefix, prefix, prefix)
    if sh(cmd) then
      local self = setmetatable({ prefix = prefix, port = port, tls_port = tls_port,
        url = "http://127.0.0.1:" .. port, cert = vars.CERT }, Instance)
      for _ = 1, 100 do
        local status = self:request("GET", "/__health")
        if status == 200 then return self end
        sh("sleep 0.05")
      end
      last_log = read(prefix .. "/error.log")
      self:stop()
    else
      last_log = read(prefix .. "/start.log")
      sh("rm -rf " .. prefix)
      if last_log and not last_log:find("Address already in use", 1, true) then break end
    end
  end
  error("nginx did not start:\n" .. tostring(last_log))
end

--- Sends one request to the main server; returns status, body, headers (or nil, err).
function Instance:request(method, path, body, headers)
  local out = {}
  headers = headers or {}
  if body then headers["content-length"] = #body end
  local _, status, h = http.request {
    url = self.url .. path, method = method, headers = headers, sink = ltn12.sink.table(out),
    source = body and ltn12.source.string(body) or nil,
  }
  if type(status) ~= "number" then return nil, status end
  return status, table.concat(out), h
end

--- Runs a Lua chunk in a content handler inside nginx and returns its results;
-- raises with the chunk's error (and traceback) when it fails.
function Instance:run(code)
  local status, body = self:request("POST", "/__run", code)
  assert(status == 200, "nginx /__run answered " .. tostring(status) .. ": " .. tostring(body))
  local r = cjson.decode(body)
  if not r.ok then error(r.error, 2) end
  local v = r.values
  for i = 1, #v do
    if v[i] == cjson.null then v[i] = nil end
  end
  return table.unpack(v, 1, #v)
end

--- The error log so far.
function Instance:error_log() return read(self.prefix .. "/error.log") or "" end

--- The master's pid.
function Instance:pid() return tonumber(read(self.prefix .. "/nginx.pid") or "") end

--- Stops nginx (SIGTERM, then SIGKILL after 5 s) and removes the prefix.
function Instance:stop()
  local pid = self:pid()
  if alive(pid) then
    sh("kill -TERM " .. pid)
    for _ = 1, 100 do
      if not alive(pid) then break end
      sh("sleep 0.05")
    end
    if alive(pid) then sh("kill -KILL " .. pid .. " 2>/dev/null") end
  end
  if not os.getenv("FLY_KEEP_NGINX") then sh("rm -rf " .. self.prefix) end
end

return harness
