--- client.secrets: an app's secrets (environment values given to its machines).
-- Listings show each secret's name and digest; values only with `show_secrets = true`.
-- @module fly.secrets
local resource = require "fly.resource"

local Secrets = { __name = "fly.secrets" }
Secrets.__index = Secrets

--- The operation each method calls (filled by the declarations below).
Secrets.operations = {}

-- Each entry: `{ method, operationId, … }` (see resource.declare): the app's name first, then
-- the secret's name (but for `list` and `update`).
resource.declare(Secrets, {
  name = "secrets", operations = Secrets.operations,
  path = { "app", "name" }, params = { app = "app_name", name = "secret_name" },
}, {
  --- `list(app, params)`: `show_secrets` (include the values), `min_version` (only secrets
  -- changed at or after that version) -> `{ secrets = { { name, digest, created_at, updated_at,
  -- value? }, … } }`
  { "list", "Secrets_list", path = { "app" }, params = true },
  --- `update(app, values)`: sets and unsets several secrets in one version; name → value (a
  -- string), or `fly.null` to unset -> `{ secrets = { … }, version = n }`
  { "update", "Secrets_update", path = { "app" }, args = { "values:table" },
    build = function(p, _, values) p.body = { values = values } end },
  --- `get(app, name, params)`: `show_secrets`, `min_version` -> `{ name, digest, created_at,
  -- updated_at, value? }` (404)
  { "get", "Secret_get", params = true },
  --- `set(app, name, value)`: creates or replaces one secret; the value, or the body
  -- `{ value = "…" }` -> `{ name, digest, created_at, updated_at, version }`
  { "set", "Secret_create", args = { "value:string|table" },
    build = function(p, _, v) p.body = type(v) == "string" and { value = v } or v end },
  --- `delete(app, name)` -> `{ version = n }` (404 when there is none)
  { "delete", "Secret_delete" },
})

return Secrets
