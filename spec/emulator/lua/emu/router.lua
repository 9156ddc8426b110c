-- emu.router: the emulator's entry point (content_by_lua: require("emu.router").handle()).
--
-- router.init(token)  loads the route modules (own ones must load; the other modules are
--                     optional: absent -> skipped, present but broken -> logged at ERR level),
--                     compiles the route table and sets the default token.
-- router.handle()     serves one request:
--   /__emulator/…     control endpoints (emu/control.lua), no auth, not counted in stats
--   everything else:  match route -> count -> auth (/v1 only) -> fault -> 404/405 ->
--                     rate limit -> read body -> handler -> after-faults -> encode + send
--
-- Route modules return { routes = { { op, method, path = "/v1/apps/{app_name}", handler } } }.
-- Matching works on the raw path ($request_uri) split at "/", each segment percent-decoded
-- after splitting (so "a%2Fb" is one segment "a/b"); literal segments win over {params}.
-- Handlers get req = { op, method, params, query, body, raw_body, headers, bad_json } and return
-- status, body (table -> JSON, string -> text/plain, nil -> none), headers.
-- Every response carries a unique fly-request-id header.
local util = require "emu.util"
local state = require "emu.state"
local stats = require "emu.stats"
local faults = require "emu.faults"
local ratelimit = require "emu.ratelimit"

local router = {}

local OWN_MODULES = { "apps", "machines", "leases", "metadata", "machine_extras", "wait" }
local OPTIONAL_MODULES = { "volumes", "secrets", "secretkeys", "certificates", "ips", "orgs",
                           "platform", "tokens", "postgres" }

local templates = {}   -- { path, segs = { {lit=…} | {param=…} }, weight, methods = {GET=route} }
local by_path = {}
local initialized = false

local function log(level, ...)
  if ngx then ngx.log(level, ...) else io.stderr:write(table.concat({ ... }), "\n") end
end

---------------------------------------------------------------------------- route table

local function split(path)
  local out = {}
  for seg in (path:sub(2) .. "/"):gmatch("([^/]*)/") do out[#out + 1] = seg end
  return out
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function compile(path)
  local segs, weight = {}, 0
  for i, s in ipairs(split(path)) do
    local name = s:match("^{(.+)}$")
    segs[i] = name and { param = name } or { lit = s }
    -- literal segments earlier in the path weigh more, so literals win over params
    if not name then weight = weight + 2 ^ (40 - i) end
  end
  return segs, weight
end

local function add_route(r, module)
  if type(r) ~= "table" or type(r.path) ~= "string" or type(r.method) ~= "string"
     or type(r.handler) ~= "function" or type(r.op) ~= "string" then
    log(ngx.ERR, "emulator: module ", module, " has an invalid route entry")
    return
  end
  local t = by_path[r.path]
  if not t then
    local segs, weight = compile(r.path)
    t = { path = r.path, segs = segs, weight = weight, methods = {} }
    by_path[r.path] = t
    templates[#templates + 1] = t
  end
  local method = r.method:upper()
  if t.methods[method] then
    log(ngx.ERR, "emulator: duplicate route ", method, " ", r.path, " in ", module, " (ignored)")
    return
  end
  t.methods[method] = r
end

local function module_exists(name)
  if package.searchpath then
    return package.searchpath(name, package.path) ~= nil
  end
  return true
end

local function load_module(name, optional)
  local full = "emu." .. name
  if optional and not module_exists(full) then return end
  local ok, mod = pcall(require, full)
  if not ok then
    if optional and tostring(mod):find("module '" .. full .. "' not found", 1, true) then return end
    log(ngx.ERR, "emulator: module ", full, " failed to load: ", tostring(mod))
    if not optional then error(mod) end
    return
  end
  if type(mod) ~= "table" or type(mod.routes) ~= "table" then
    log(ngx.ERR, "emulator: module ", full, " returns no routes table")
    return
  end
  for _, r in ipairs(mod.routes) do add_route(r, full) end
end

function router.init(token)
  if initialized then return end
  initialized = true
  if token and token ~= "" then state.set_default_token(token) end
  for _, name in ipairs(OWN_MODULES) do load_module(name, false) end
  for _, name in ipairs(OPTIONAL_MODULES) do load_module(name, true) end
  table.sort(templates, function(a, b) return a.weight > b.weight end)
end

-- route, params, allowed_methods (when the path exists but not the method)
local function match(method, segs)
  local allowed, allowed_params
  for _, t in ipairs(templates) do
    if #t.segs == #segs then
      local params, ok = {}, true
      for i, s in ipairs(t.segs) do
        if s.lit then
          if s.lit ~= segs[i] then ok = false; break end
        else
          if segs[i] == "" then ok = false; break end
          params[s.param] = segs[i]
        end
      end
      if ok then
        local r = t.methods[method]
        if r then return r, params end
        if not allowed then
          allowed, allowed_params = {}, params
          for m in pairs(t.methods) do allowed[#allowed + 1] = m end
          table.sort(allowed)
        end
      end
    end
  end
  return nil, allowed_params, allowed
end

function router.routes()
  local out = {}
  for _, t in ipairs(templates) do
    for m, r in pairs(t.methods) do out[#out + 1] = { op = r.op, method = m, path = t.path } end
  end
  return out
end

---------------------------------------------------------------------------- responses

local JSON = "application/json; charset=utf-8"

-- Send a complete response. body: table -> JSON, string -> text/plain, nil -> none.
local function send(status, body, headers, reqid)
  local payload, ctype
  if type(body) == "table" then
    local ok, s = pcall(util.json_encode, body)
    if not ok then
      log(ngx.ERR, "emulator: cannot encode response: ", s)
      status, s = 500, util.json_encode({ error = "emulator: cannot encode response: " .. s,
                                          status = "unknown" })
    end
    payload, ctype = s, JSON
  elseif type(body) == "string" then
    payload, ctype = body, "text/plain; charset=utf-8"
  end
  ngx.status = status
  ngx.header["fly-request-id"] = reqid
  for k, v in pairs(headers or {}) do
    if type(k) == "string" and k:lower() == "content-type" then ctype = v else ngx.header[k] = v end
  end
  stats.status(status)
  if payload then
    ngx.header["Content-Type"] = ctype
    ngx.header["Content-Length"] = #payload
    ngx.print(payload)
  else
    if status ~= 204 and status ~= 304 then ngx.header["Content-Length"] = 0 end
    ngx.send_headers()
  end
  return ngx.exit(ngx.OK)
end
router.send = send

-- close: the TCP connection drops (under HTTP/2 too); reset: ngx.exit(444), which under
-- HTTP/2 resets only the stream.
local function close_connection()
  stats.status(444)
  return faults.drop_connection()
end

local function reset_stream()
  stats.status(444)
  return ngx.exit(444)
end

local function send_truncated(status, body, headers, reqid)
  local payload = type(body) == "table" and util.json_encode(body) or body or ""
  ngx.status = status
  ngx.header["fly-request-id"] = reqid
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  ngx.header["Content-Type"] = type(body) == "string" and "text/plain; charset=utf-8" or JSON
  ngx.header["Content-Length"] = #payload + 64
  stats.status(status)
  ngx.send_headers()
  ngx.print(payload:sub(1, math.floor(#payload / 2)))
  ngx.flush(true)
  return ngx.exit(ngx.ERROR)
end

local function fault_status(f, reqid)
  local status = tonumber(f.status) or 500
  local h = {}
  if f.retry_after ~= nil then h["Retry-After"] = tostring(f.retry_after) end
  local body = f.body
  if body == nil then
    body = { error = "emulator fault: injected status " .. status, status = "unknown" }
  end
  return send(status, body, h, reqid)
end

local function stall(f, reqid)
  ngx.status = tonumber(f.status) or 200
  ngx.header["fly-request-id"] = reqid
  ngx.header["Content-Type"] = JSON
  ngx.header["Content-Length"] = 64
  stats.status(ngx.status)
  ngx.send_headers()
  ngx.flush(true)
  ngx.sleep(tonumber(f.delay) or 30)
  return ngx.exit(ngx.ERROR)
end

-- Faults answered before (instead of) the handler. Returns true when the request is done.
local function pre_fault(f, reqid)
  local kind = f.kind
  if kind == "delay" then
    ngx.sleep(tonumber(f.delay) or 1)
    return false
  elseif kind == "status" then
    if f.delay then ngx.sleep(tonumber(f.delay) or 0) end
    fault_status(f, reqid); return true
  elseif kind == "close" then
    close_connection(); return true
  elseif kind == "reset" then
    reset_stream(); return true
  elseif kind == "malformed" then
    send(200, '{"id": "garbage', { ["Content-Type"] = JSON }, reqid); return true
  elseif kind == "stall" then
    stall(f, reqid); return true
  end
  return false
end

---------------------------------------------------------------------------- auth

local function strip_scheme(t)
  t = tostring(t or "")
  local s, rest = t:match("^(%S+)%s+(.+)$")
  if s and (s:lower() == "bearer" or s:lower() == "flyv1") then return rest end
  return t
end

local function is_macaroon(tok)
  for part in tok:gmatch("[^,]+") do
    part = part:match("^%s*(.-)%s*$")
    if part:find("^fm1r_") or part:find("^fm1a_") or part:find("^fm2_") then return true end
  end
  return false
end

-- true, or false + message. Records the scheme seen.
local function authorize(headers)
  local h = headers["authorization"]
  if type(h) == "table" then h = h[1] end
  if not h or h == "" then return false, "You must be authenticated to view this." end
  local scheme, tok = h:match("^(%S+)%s+(.-)%s*$")
  local ls = scheme and scheme:lower()
  if ls == "bearer" then
    stats.auth_scheme("Bearer")
  elseif ls == "flyv1" then
    stats.auth_scheme("FlyV1")
  else
    return false, "unsupported authorization scheme"
  end
  local ok = tok == strip_scheme(state.config.token)
             or state.table("__issued_tokens")[tok] ~= nil
  if not ok then return false, "token validation error" end
  if ls == "bearer" and state.config.strict_macaroon_scheme and is_macaroon(tok) then
    return false, "no tokens found in header"
  end
  return true
end

---------------------------------------------------------------------------- request

local function read_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if not data then
    local file = ngx.req.get_body_file()
    if file then
      local fh = io.open(file, "rb")
      if fh then data = fh:read("*a"); fh:close() end
    end
  end
  if data == "" then data = nil end
  return data
end

local function build_req(route, params, method, headers)
  local raw = read_body()
  local req = {
    op = route.op, method = method, params = params, headers = headers,
    query = ngx.req.get_uri_args(0), raw_body = raw, bad_json = false,
  }
  if raw and raw:find("%S") then
    local v = util.json_decode(raw)
    if type(v) == "table" then req.body = v else req.bad_json = true end
  end
  return req
end

-- `generation`: state.generation when the request came; a handler that waited across a reset
-- (a wait's long poll) is not counted in the next spec's stats.
local function run_handler(route, req, generation)
  local ok, status, body, headers = xpcall(route.handler, debug.traceback, req)
  if state.generation == generation then stats.executed(route.op, route.method .. " " .. route.path) end
  if not ok then
    log(ngx.ERR, "emulator: handler ", route.op, " failed: ", tostring(status))
    return 500, { error = "emulator internal error in " .. route.op, status = "unknown" }
  end
  return tonumber(status) or 200, body, headers
end

local function control(method, segs, reqid)
  local ctl = require "emu.control"
  local status, body, headers = ctl.handle(method, segs, router)
  ngx.status = status
  ngx.header["fly-request-id"] = reqid
  local payload = body ~= nil and util.json_encode(body) or nil
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  if payload then
    ngx.header["Content-Type"] = JSON
    ngx.header["Content-Length"] = #payload
    ngx.print(payload)
  else
    ngx.header["Content-Length"] = 0
    ngx.send_headers()
  end
  return ngx.exit(ngx.OK)
end

function router.handle()
  if not initialized then router.init() end
  local method = ngx.req.get_method()
  local uri = ngx.var.request_uri
  local raw_path = uri:match("^[^?#]*")
  local segs = split(raw_path)
  for i, s in ipairs(segs) do segs[i] = unescape(s) end
  local reqid = util.ulid():lower() .. "-ord"
  if segs[1] == "__emulator" then return control(method, segs, reqid) end

  local headers = ngx.req.get_headers(0)
  local route, params, allowed = match(method, segs)
  local op = route and route.op or (allowed and "_method_not_allowed" or "_not_found")
  stats.request(op, method, uri, headers)
  local generation = state.generation

  if segs[1] == "v1" then
    local ok, msg = authorize(headers)
    if not ok then return send(401, { error = msg, status = "unauthorized" }, nil, reqid) end
  end

  local f = faults.take(method, "/" .. table.concat(segs, "/"), op)
  if f then
    stats.fault()
    if pre_fault(f, reqid) then return end
    -- slept across a reset: it came from a spec that is over, and the next one's state and
    -- counts are not its to touch (it ends without an answer, as `reset` does)
    if state.generation ~= generation then return ngx.exit(444) end
  end

  if not route then
    if allowed then
      return send(405, { error = "method not allowed", status = "unknown" },
                  { Allow = table.concat(allowed, ", ") }, reqid)
    end
    return send(404, { error = "not found", status = "unknown" }, nil, reqid)
  end

  local ok, wait_s = ratelimit.take(op, params)
  if not ok then
    stats.rate_limited()
    local h
    if (state.config.rate_limits or {}).retry_after then
      h = { ["Retry-After"] = tostring(math.max(1, math.ceil(wait_s))) }
    end
    return send(429, { error = "rate limit exceeded", status = "rate_limited" }, h, reqid)
  end

  local req = build_req(route, params, method, headers)
  local status, body, rheaders = run_handler(route, req, generation)

  if f and f.kind == "status_after" then return fault_status(f, reqid) end
  if f and f.kind == "close_after" then return close_connection() end
  if f and f.kind == "reset_after" then return reset_stream() end
  if f and f.kind == "truncate" then return send_truncated(status, body, rheaders, reqid) end
  return send(status, body, rheaders, reqid)
end

return router
