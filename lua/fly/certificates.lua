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

--- The operation each method calls (filled by the declarations below).
Certificates.operations = {}

-- Each entry: `{ method, operationId, … }` (see resource.declare): the app's name first, then
-- the hostname (but for `list`, `request_acme` and `upload_custom`).
resource.declare(Certificates, {
  name = "certificates", operations = Certificates.operations,
  path = { "app", "hostname" }, params = { app = "app_name", hostname = "hostname" },
}, {
  --- `list(app, params)`: one page of the app's certificates (see `each` for all); `filter`
  -- (hostname substring), `cursor` (a previous page's `next_cursor`), `limit` (per page, default
  -- 25, at most 500) -> `{ certificates = { CertificateSummary, … }, total_count = n, next_cursor = s? }`
  { "list", "App_Certificates_list", path = { "app" }, params = true },
  --- `request_acme(app, hostname)`: a Let's Encrypt (ACME) certificate; the hostname or the body
  -- `{ hostname = … }` -> the CertificateDetail (`status`, `dns_requirements`, `certificates`, …;
  -- 422 for an invalid or already requested hostname)
  { "request_acme", "App_Certificates_acme_create", path = { "app" }, args = { "hostname:string|table" },
    build = function(p, _, h) p.body = type(h) == "string" and { hostname = h } or h end },
  --- `upload_custom(app, body)`: `hostname`, `fullchain` (PEM certificate chain), `private_key`
  -- (PEM) -> the CertificateDetail (422)
  { "upload_custom", "App_Certificates_custom_create", path = { "app" }, args = { "body:table" },
    build = function(p, _, body) p.body = body end },
  --- `get(app, hostname)` -> the CertificateDetail (404)
  { "get", "App_Certificates_show" },
  --- `delete(app, hostname)`: removes a hostname and all its certificates -> true (404)
  { "delete", "App_Certificates_delete" },
  --- `delete_acme(app, hostname)`: removes its ACME certificates (the hostname goes when nothing
  -- is left) -> the CertificateDetail (404)
  { "delete_acme", "App_Certificates_acme_delete" },
  --- `delete_custom(app, hostname)`: removes its custom certificate -> the CertificateDetail
  -- (with a `warning` when no certificate is left; 404)
  { "delete_custom", "App_Certificates_custom_delete" },
  --- `check(app, hostname)`: re-reads DNS and re-validates -> the CertificateCheckResponse
  -- (`status`, `configured`, `dns_records`, `validation_errors`, …; 404)
  { "check", "App_Certificates_check" },
})

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
  if not resource.is_namespace(self) then resource.dot_call("certificates:each", 2) end
  check(app, "string", "app", "certificates:each")
  if params ~= nil then check(params, "table", "params", "certificates:each") end
  resource.check_params("App_Certificates_list", params, "certificates:each", 2, { "app_name" })
  local client, first = self.client, params and params.cursor
  return pages.iterate(function(cursor, level)
    local res, err = call(client, "App_Certificates_list",
      resource.merge(params, { app_name = app, cursor = cursor or first }), nil, level)
    return res, err
  end, "certificates")
end

return Certificates
