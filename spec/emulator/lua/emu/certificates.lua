-- Emulates the Fly Machines API TLS certificates of an app:
--   App_Certificates_list (filter, cursor, limit; cursor paginated with next_cursor),
--   App_Certificates_acme_create, App_Certificates_custom_create, App_Certificates_show,
--   App_Certificates_delete, App_Certificates_acme_delete, App_Certificates_custom_delete,
--   App_Certificates_check.
--
-- Life of a hostname: created "awaiting_configuration" (DNS not yet pointing at the app,
-- Let's Encrypt certificate "pending_validation"); each check re-reads DNS; after
-- state.config.cert_checks_to_ready checks (default 1) DNS is configured, the ACME
-- certificates (ecdsa + rsa) are issued and the status is "ready". An uploaded custom
-- certificate is "active" at once; the hostname becomes "ready" once DNS is configured.
--
-- State: state.table("certificates")[app_name] = {app_id, items = {[hostname] = record}}
-- (see new_record).

local state = require "emu.state"
local util = require "emu.util"

local M = {}

local DAY = 86400

local function iso_in(seconds) return os.date("!%Y-%m-%dT%H:%M:%SZ", util.now_epoch() + seconds) end

-- the app's certificates (a fresh set when the app was deleted and created again)
local function app_certs(app_name) return util.app_items("certificates", app_name) end

local function valid_hostname(h)
  if type(h) ~= "string" or #h > 253 or h:find("%.%.") then return false end
  if not h:match("^[%*a-z0-9][a-z0-9%-%.]*%.[a-z][a-z0-9%-]*$") then return false end
  if h:find("%*", 2) then return false end -- a wildcard only as the first label
  for label in h:gmatch("[^%.]+") do
    if #label > 63 or label:sub(1, 1) == "-" or label:sub(-1) == "-" then return false end
  end
  return true
end

local function app_addresses(app_name)
  local a, aaaa = {}, {}
  local ok, ips = pcall(require, "emu.ips")
  for _, r in ipairs(ok and ips.app_ips(app_name) or {}) do
    if not r.egress and r.type ~= "private_v6" then
      if r.ip:find(":") then aaaa[#aaaa + 1] = r.ip else a[#a + 1] = r.ip end
    end
  end
  return a, aaaa
end

local function new_record(hostname)
  local now = util.now_iso()
  return {
    hostname = hostname,
    created_at = now,
    updated_at = now,
    acme_requested = false,
    fly_issued = false,   -- Let's Encrypt certificates issued
    fly_issued_at = nil,
    custom = nil,         -- {type, issuer, created_at, expires_at}
    configured = false,   -- DNS points at the app
    checks = 0,
  }
end

local function status_of(c)
  if c.configured and (c.fly_issued or c.custom) then return "ready" end
  if c.configured then return "awaiting_certificates" end
  return "awaiting_configuration"
end

local function entries(c)
  local list = {}
  if c.acme_requested then
    local e = { source = "fly", issuer = "Let's Encrypt", created_at = c.fly_issued_at or c.created_at }
    if c.fly_issued then
      e.status = "active"
      e.expires_at = c.fly_expires_at
      e.issued = {
        { type = "ecdsa", certificate_authority = "lets_encrypt", expires_at = c.fly_expires_at },
        { type = "rsa", certificate_authority = "lets_encrypt", expires_at = c.fly_expires_at },
      }
    else
      e.status = c.configured and "pending_validation" or "pending_ownership"
      e.issued = util.arr({})
    end
    list[#list + 1] = e
  end
  if c.custom then
    list[#list + 1] = {
      source = "custom", status = "active", issuer = c.custom.issuer,
      created_at = c.custom.created_at, expires_at = c.custom.expires_at,
      issued = { { type = c.custom.type, certificate_authority = c.custom.issuer, expires_at = c.custom.expires_at } },
    }
  end
  return util.arr(list)
end

local function detail(app_name, c)
  local app = state.table("apps")[app_name] or {}
  local a, aaaa = app_addresses(app_name)
  local org = app.org_slug or (type(app.organization) == "table" and app.organization.slug) or "personal"
  return {
    hostname = c.hostname,
    status = status_of(c),
    configured = c.configured,
    acme_requested = c.acme_requested,
    certificates = entries(c),
    dns_requirements = {
      a = util.arr(a),
      aaaa = util.arr(aaaa),
      cname = app_name .. ".fly.dev",
      acme_challenge = { name = "_acme-challenge." .. c.hostname,
                         target = c.hostname .. "." .. app_name .. ".flydns.net" },
      ownership = { name = "_fly-ownership." .. c.hostname, app_value = "app-" .. tostring(app.id or app_name),
        org_value = "org-" .. org },
    },
    validation = {
      alpn_configured = c.configured, http_configured = c.configured,
      dns_configured = false, ownership_txt_configured = false,
    },
    validation_errors = util.arr({}),
  }
end

local function summary(c)
  return {
    hostname = c.hostname,
    status = status_of(c),
    configured = c.configured,
    acme_requested = c.acme_requested,
    acme_alpn_configured = c.configured,
    acme_http_configured = c.configured,
    acme_dns_configured = false,
    ownership_txt_configured = false,
    has_custom_certificate = c.custom ~= nil,
    has_fly_certificate = c.fly_issued,
    created_at = c.created_at,
    updated_at = c.updated_at,
  }
end

local function find_cert(req)
  local app_name = req.params.app_name
  if not state.table("apps")[app_name] then return nil, "app not found" end
  local c = app_certs(app_name)[(req.params.hostname or ""):lower()]
  if not c then return nil, "certificate not found" end
  return c
end

-- the request's hostname and body, or nil, status, message
local function hostname_from_body(req)
  if req.bad_json then return nil, 400, "invalid JSON in request body" end
  local body = type(req.body) == "table" and req.body or {}
  local h = type(body.hostname) == "string" and body.hostname:lower() or nil
  if not h or h == "" then return nil, 422, "hostname is required" end
  if not valid_hostname(h) then return nil, 422, "hostname " .. h .. " is not a valid domain name" end
  if h:match("%.fly%.dev$") then return nil, 422, "fly.dev hostnames are managed by Fly.io" end
  return h, body
end

---------------------------------------------------------------------------- handlers

local function list(req)
  local app_name = req.params.app_name
  if not state.table("apps")[app_name] then return util.err(404, "app not found") end
  local q = req.query or {}
  local limit = 25
  local lq = util.qval(q.limit)
  if lq ~= nil and lq ~= "" then
    limit = tonumber(lq)
    if not limit or limit ~= math.floor(limit) or limit < 1 then
      return util.err(400, "limit must be a positive integer")
    end
    limit = math.min(limit, 500)
  end
  local after
  local cq = util.qval(q.cursor)
  if cq ~= nil and cq ~= "" then
    after = util.hex_decode(cq)
    if not after then return util.err(400, "invalid cursor") end
  end
  local filter = util.qval(q.filter)
  filter = filter and filter:lower() or nil

  local matching = {}
  for host, c in pairs(app_certs(app_name)) do
    if not filter or host:find(filter, 1, true) then matching[#matching + 1] = c end
  end
  table.sort(matching, function(x, y) return x.hostname < y.hostname end)

  local page, more = {}, false
  for _, c in ipairs(matching) do
    if not after or c.hostname > after then
      if #page == limit then more = true; break end
      page[#page + 1] = summary(c)
    end
  end
  local out = { certificates = util.arr(page), total_count = #matching }
  if more then out.next_cursor = util.hex_encode(page[#page].hostname) end
  return 200, out
end

local function acme_create(req)
  local app_name = req.params.app_name
  if not state.table("apps")[app_name] then return util.err(404, "app not found") end
  local h, status, msg = hostname_from_body(req)
  if not h then return util.err(status, msg) end
  local certs = app_certs(app_name)
  local c = certs[h]
  if c and c.acme_requested then
    return util.err(422, "a certificate for " .. h .. " already exists on this app")
  end
  c = c or new_record(h)
  c.acme_requested = true
  c.updated_at = util.now_iso()
  certs[h] = c
  return 201, detail(app_name, c)
end

local function custom_create(req)
  local app_name = req.params.app_name
  if not state.table("apps")[app_name] then return util.err(404, "app not found") end
  local h, body, msg = hostname_from_body(req)
  if not h then return util.err(body, msg) end -- here body is the error status
  if type(body.fullchain) ~= "string" or not body.fullchain:find("-----BEGIN CERTIFICATE-----", 1, true) then
    return util.err(422, "fullchain must be a PEM encoded certificate chain")
  end
  if type(body.private_key) ~= "string" or not body.private_key:find("PRIVATE KEY-----", 1, true) then
    return util.err(422, "private_key must be a PEM encoded private key")
  end
  local certs = app_certs(app_name)
  local c = certs[h] or new_record(h)
  local now = util.now_iso()
  c.custom = {
    type = body.private_key:find("EC PRIVATE KEY", 1, true) and "ecdsa" or "rsa",
    issuer = "Custom CA", created_at = now, expires_at = iso_in(365 * DAY),
  }
  c.updated_at = now
  certs[h] = c
  return 201, detail(app_name, c)
end

local function show(req)
  local c, msg = find_cert(req)
  if not c then return util.err(404, msg) end
  return 200, detail(req.params.app_name, c)
end

local function delete(req)
  local c, msg = find_cert(req)
  if not c then return util.err(404, msg) end
  app_certs(req.params.app_name)[c.hostname] = nil
  return 204, nil
end

-- drop one kind of certificate; the hostname goes away when nothing is left
local function remove_kind(req, kind)
  local c, msg = find_cert(req)
  if not c then return util.err(404, msg) end
  local app_name = req.params.app_name
  if kind == "acme" then
    if not c.acme_requested then return util.err(404, "no ACME certificate for " .. c.hostname) end
    c.acme_requested, c.fly_issued, c.fly_issued_at, c.fly_expires_at = false, false, nil, nil
  else
    if not c.custom then return util.err(404, "no custom certificate for " .. c.hostname) end
    c.custom = nil
  end
  c.updated_at = util.now_iso()
  local out = detail(app_name, c)
  if not c.acme_requested and not c.custom then
    app_certs(app_name)[c.hostname] = nil
    if kind == "custom" then
      out.warning = "no certificate is left for " .. c.hostname .. "; request an ACME certificate to keep serving TLS"
    end
  end
  return 200, out
end

local function acme_delete(req) return remove_kind(req, "acme") end
local function custom_delete(req) return remove_kind(req, "custom") end

local function check(req)
  local c, msg = find_cert(req)
  if not c then return util.err(404, msg) end
  local app_name = req.params.app_name
  c.checks = c.checks + 1
  local needed = tonumber(state.config.cert_checks_to_ready) or 1
  if c.checks >= needed then
    c.configured = true
    if c.acme_requested and not c.fly_issued then
      c.fly_issued, c.fly_issued_at, c.fly_expires_at = true, util.now_iso(), iso_in(90 * DAY)
    end
  end
  c.updated_at = util.now_iso()
  local out = detail(app_name, c)
  local a, aaaa = app_addresses(app_name)
  out.dns_records = {
    a = util.arr(c.configured and a or {}),
    aaaa = util.arr(c.configured and aaaa or {}),
    cname = util.arr(c.configured and #a == 0 and #aaaa == 0 and { app_name .. ".fly.dev" } or {}),
    resolved_addresses = util.arr(c.configured and (#a > 0 and a or aaaa) or {}),
    acme_challenge_cname = "",
    ownership_txt = "",
    soa = "ns1.dns-provider.example. hostmaster.dns-provider.example.",
  }
  if not c.configured then
    out.validation_errors = {
      { code = "dns_not_configured", message = "No A/AAAA or CNAME record for " .. c.hostname .. " points to this app",
        remediation = "Add a CNAME record for " .. c.hostname .. " pointing to " .. app_name .. ".fly.dev",
        timestamp = util.now_iso() },
    }
  end
  return 200, out
end

local base = "/v1/apps/{app_name}/certificates"
local one = base .. "/{hostname}"
M.routes = {
  { op = "App_Certificates_list", method = "GET", path = base, handler = list },
  { op = "App_Certificates_acme_create", method = "POST", path = base .. "/acme", handler = acme_create },
  { op = "App_Certificates_custom_create", method = "POST", path = base .. "/custom", handler = custom_create },
  { op = "App_Certificates_show", method = "GET", path = one, handler = show },
  { op = "App_Certificates_delete", method = "DELETE", path = one, handler = delete },
  { op = "App_Certificates_acme_delete", method = "DELETE", path = one .. "/acme", handler = acme_delete },
  { op = "App_Certificates_custom_delete", method = "DELETE", path = one .. "/custom", handler = custom_delete },
  { op = "App_Certificates_check", method = "POST", path = one .. "/check", handler = check },
}

return M
