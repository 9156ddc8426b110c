-- emu.stats: request accounting for specs (GET /__emulator/stats). Lives in
-- state.table("__stats"), so POST /__emulator/reset clears it.
--
-- Shape returned by stats.snapshot():
--   { requests = { [operationId] = n },   requests received per operation (also 401/429/faulted)
--     executed = { [operationId] = n },   times the handler really ran
--     total = n,                          /v1 (non-control) requests received
--     connections = n,                    TCP connections (requests with connection_requests == 1;
--                                         an HTTP/2 connection counts once, not per stream)
--     protocols = { ["2.0"] = n, ["1.1"] = n },  requests per HTTP version
--     schemes = { https = n, http = n },  requests per scheme
--     last_auth_scheme = "Bearer" | "FlyV1" | nil,
--     last_request = { method, uri (raw $request_uri), headers (all but authorization),
--                      http_version ("2.0", "1.1"), scheme ("https", "http"), connection (nginx's
--                      connection serial number), connection_requests },
--     rate_limited = n,                   429s sent by the rate limiter
--     statuses = { ["200"] = n, … },      statuses sent (faults included; closes count as "444")
--     faults_applied = n,
--     lifetime = { ["METHOD /path/{template}"] = n } }  handler runs since the emulator
--                                         started: NOT cleared by reset (the coverage spec
--                                         reads it at the end of a full suite)
-- Unmatched paths count under operation "_not_found" / "_method_not_allowed".
local state = require "emu.state"

local stats = {}

-- Survives resets: module-level, not in a state table.
local lifetime = {}

local function get()
  local s = state.table("__stats")
  if not s.requests then
    s.requests, s.executed, s.statuses, s.protocols, s.schemes = {}, {}, {}, {}, {}
    s.total, s.connections, s.rate_limited, s.faults_applied = 0, 0, 0, 0
  end
  return s
end

local function bump(t, k)
  t[k] = (t[k] or 0) + 1
end

function stats.request(op, method, uri, headers)
  local s = get()
  s.total = s.total + 1
  bump(s.requests, op)
  local nreq = ngx.var.connection_requests
  if nreq == "1" then s.connections = s.connections + 1 end
  local version = ("%.1f"):format(ngx.req.http_version() or 0)
  local scheme = ngx.var.scheme
  bump(s.protocols, version)
  bump(s.schemes, scheme)
  local h = {}
  for k, v in pairs(headers) do
    if k ~= "authorization" then h[k] = v end
  end
  s.last_request = { method = method, uri = uri, headers = h, http_version = version, scheme = scheme,
                     connection = tonumber(ngx.var.connection), connection_requests = tonumber(nreq) }
end

function stats.auth_scheme(scheme)
  get().last_auth_scheme = scheme
end

function stats.executed(op, route)
  bump(get().executed, op)
  bump(lifetime, route or op)
end

function stats.status(code)
  bump(get().statuses, tostring(code))
end

function stats.rate_limited()
  local s = get()
  s.rate_limited = s.rate_limited + 1
end

function stats.fault()
  local s = get()
  s.faults_applied = s.faults_applied + 1
end

function stats.snapshot()
  local s = get()
  s.lifetime = lifetime
  return s
end

return stats
