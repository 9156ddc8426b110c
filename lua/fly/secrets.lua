--- client.secrets: an app's secrets (environment values given to its machines).
-- Listings show each secret's name and digest; values only with `show_secrets = true`.
-- @module fly.secrets
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Secrets = { __name = "fly.secrets" }
Secrets.__index = Secrets

--- The operation each method calls.
Secrets.operations = {
  list = "Secrets_list",
  update = "Secrets_update",
  get = "Secret_get",
  set = "Secret_create",
  delete = "Secret_delete",
}

--- Lists an app's secrets.
-- @tparam string app the app's name
-- @tparam[opt] table params `show_secrets` (boolean: include the values), `min_version`
-- (only secrets changed at or after that version)
-- @treturn table `{ secrets = { { name, digest, created_at, updated_at, value? }, … } }`, or nil,
-- fly.Error
function Secrets:list(app, params)
  check(app, "string", "app", "secrets:list")
  if params ~= nil then check(params, "table", "params", "secrets:list") end
  local res, err = call(self.client, "Secrets_list", resource.merge(params, { app_name = app }), nil, 2)
  return res, err
end

--- Sets and unsets several secrets in one version.
-- @tparam string app the app's name
-- @tparam table values name → value (a string), or `fly.null` to unset that secret
-- @treturn table `{ secrets = { … }, version = n }`, or nil, fly.Error
function Secrets:update(app, values)
  check(app, "string", "app", "secrets:update")
  check(values, "table", "values", "secrets:update")
  local res, err = call(self.client, "Secrets_update", { app_name = app, body = { values = values } }, nil, 2)
  return res, err
end

--- Gets one secret.
-- @tparam string app the app's name
-- @tparam string name the secret's name
-- @tparam[opt] table params `show_secrets`, `min_version`
-- @treturn table `{ name, digest, created_at, updated_at, value? }`, or nil, fly.Error (404)
function Secrets:get(app, name, params)
  check(app, "string", "app", "secrets:get")
  check(name, "string", "name", "secrets:get")
  if params ~= nil then check(params, "table", "params", "secrets:get") end
  local res, err = call(self.client, "Secret_get",
    resource.merge(params, { app_name = app, secret_name = name }), nil, 2)
  return res, err
end

--- Creates or replaces one secret.
-- @tparam string app the app's name
-- @tparam string name the secret's name
-- @tparam string|table value the value, or the request body `{ value = "…" }`
-- @treturn table `{ name, digest, created_at, updated_at, version }`, or nil, fly.Error
function Secrets:set(app, name, value)
  check(app, "string", "app", "secrets:set")
  check(name, "string", "name", "secrets:set")
  local body = value
  if type(value) == "string" then
    body = { value = value }
  elseif type(value) ~= "table" then
    error(("fly: secrets:set: value must be a string or a table (got %s)"):format(type(value)), 2)
  end
  local res, err = call(self.client, "Secret_create", { app_name = app, secret_name = name, body = body }, nil, 2)
  return res, err
end

--- Deletes one secret.
-- @tparam string app the app's name
-- @tparam string name the secret's name
-- @treturn table `{ version = n }`, or nil, fly.Error (404 when there is none)
function Secrets:delete(app, name)
  check(app, "string", "app", "secrets:delete")
  check(name, "string", "name", "secrets:delete")
  local res, err = call(self.client, "Secret_delete", { app_name = app, secret_name = name }, nil, 2)
  return res, err
end

return Secrets
