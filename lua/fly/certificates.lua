--- client.certificates: an app's TLS certificates, by hostname.
-- A hostname is `awaiting_configuration` until its DNS points at the app, then
-- `awaiting_certificates` until a certificate is issued (ACME) or uploaded (custom), then `ready`;
-- `check` re-reads DNS and re-validates.
-- @module fly.certificates
local resource = require "fly.resource"
local pages = require "fly.pages"

local call, check = resource.call, resource.check

local Certificates = { __name = "fly.certificates" }
Certificates.__index = Certificates

--- The operation each method calls.
Certificates.operations = {
  list = "App_Certificates_list",
  request_acme = "App_Certificates_acme_create",
  upload_custom = "App_Certificates_custom_create",
  get = "App_Certificates_show",
  delete = "App_Certificates_delete",
  delete_acme = "App_Certificates_acme_delete",
  delete_custom = "App_Certificates_custom_delete",
  check = "App_Certificates_check",
}

-- the operations that take an app and a hostname
local function by_hostname(self, op, method, app, hostname)
  check(app, "string", "app", method, 3)
  check(hostname, "string", "hostname", method, 3)
  local res, err = call(self.client, op, { app_name = app, hostname = hostname }, nil, 3)
  return res, err
end

--- Lists one page of an app's certificates (see `each` for all of them).
-- @tparam string app the app's name
-- @tparam[opt] table params `filter` (hostname substring), `cursor` (a previous page's
-- `next_cursor`), `limit` (per page, default 25, at most 500)
-- @treturn table `{ certificates = { CertificateSummary, … }, total_count = n, next_cursor = s? }`,
-- or nil, fly.Error
function Certificates:list(app, params)
  check(app, "string", "app", "certificates:list")
  if params ~= nil then check(params, "table", "params", "certificates:list") end
  local res, err = call(self.client, "App_Certificates_list", resource.merge(params, { app_name = app }), nil, 2)
  return res, err
end

--- Iterates over all of an app's certificates, following `next_cursor` from page to page.
--
--     for cert, err in client.certificates:each(app, { filter = "example.com" }) do
--       if not cert then error(tostring(err)) end
--       print(cert.hostname, cert.status)
--     end
-- @tparam string app the app's name
-- @tparam[opt] table params `filter`, `limit` (page size), `cursor` (where to start)
-- @treturn function an iterator giving each CertificateSummary; on a failure it gives
-- `false, err` once and ends
function Certificates:each(app, params)
  check(app, "string", "app", "certificates:each")
  if params ~= nil then check(params, "table", "params", "certificates:each") end
  local client, first = self.client, params and params.cursor
  return pages.iterate(function(cursor, level)
    local res, err = call(client, "App_Certificates_list",
      resource.merge(params, { app_name = app, cursor = cursor or first }), nil, level)
    return res, err
  end, "certificates")
end

--- Requests a Let's Encrypt (ACME) certificate for a hostname.
-- @tparam string app the app's name
-- @tparam string|table hostname the hostname, or the body `{ hostname = … }`
-- @treturn table the CertificateDetail (`status`, `dns_requirements`, `certificates`, …), or nil,
-- fly.Error (422 for an invalid or already requested hostname)
function Certificates:request_acme(app, hostname)
  check(app, "string", "app", "certificates:request_acme")
  local body = hostname
  if type(hostname) == "string" then
    body = { hostname = hostname }
  elseif type(hostname) ~= "table" then
    error(("fly: certificates:request_acme: hostname must be a string or a table (got %s)")
      :format(type(hostname)), 2)
  end
  local res, err = call(self.client, "App_Certificates_acme_create", { app_name = app, body = body }, nil, 2)
  return res, err
end

--- Uploads a custom certificate for a hostname.
-- @tparam string app the app's name
-- @tparam table body `hostname`, `fullchain` (PEM certificate chain), `private_key` (PEM)
-- @treturn table the CertificateDetail, or nil, fly.Error (422)
function Certificates:upload_custom(app, body)
  check(app, "string", "app", "certificates:upload_custom")
  check(body, "table", "body", "certificates:upload_custom")
  local res, err = call(self.client, "App_Certificates_custom_create", { app_name = app, body = body }, nil, 2)
  return res, err
end

--- Gets a hostname's certificate details.
-- @tparam string app the app's name
-- @tparam string hostname
-- @treturn table the CertificateDetail, or nil, fly.Error (404)
function Certificates:get(app, hostname)
  local res, err = by_hostname(self, "App_Certificates_show", "certificates:get", app, hostname)
  return res, err
end

--- Removes a hostname and all its certificates.
-- @tparam string app the app's name
-- @tparam string hostname
-- @return true, or nil, fly.Error (404)
function Certificates:delete(app, hostname)
  local res, err = by_hostname(self, "App_Certificates_delete", "certificates:delete", app, hostname)
  return res, err
end

--- Removes a hostname's ACME certificates (the hostname goes when nothing is left).
-- @tparam string app the app's name
-- @tparam string hostname
-- @treturn table the CertificateDetail, or nil, fly.Error (404)
function Certificates:delete_acme(app, hostname)
  local res, err = by_hostname(self, "App_Certificates_acme_delete", "certificates:delete_acme", app, hostname)
  return res, err
end

--- Removes a hostname's custom certificate (the hostname goes when nothing is left).
-- @tparam string app the app's name
-- @tparam string hostname
-- @treturn table the CertificateDetail (with a `warning` when no certificate is left), or nil,
-- fly.Error (404)
function Certificates:delete_custom(app, hostname)
  local res, err = by_hostname(self, "App_Certificates_custom_delete", "certificates:delete_custom", app, hostname)
  return res, err
end

--- Checks a hostname's DNS and re-validates its certificates.
-- @tparam string app the app's name
-- @tparam string hostname
-- @treturn table the CertificateCheckResponse (`status`, `configured`, `dns_records`,
-- `validation_errors`, …), or nil, fly.Error (404)
function Certificates:check(app, hostname)
  local res, err = by_hostname(self, "App_Certificates_check", "certificates:check", app, hostname)
  return res, err
end

return Certificates
