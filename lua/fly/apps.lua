--- client.apps: Fly Apps.
-- @module fly.apps
local resource = require "fly.resource"

local call, check = resource.call, resource.check

--- A Fly App as the API returns it, with methods.
local App = resource.class("fly.App")

local Apps = { __name = "fly.apps" }
Apps.__index = Apps

--- The operation each method calls.
Apps.operations = {
  list = "Apps_list",
  create = "Apps_create",
  get = "Apps_show",
  destroy = "Apps_delete",
  create_deploy_token = "App_create_deploy_token",
}

--- Lists the apps of an organization.
-- @tparam table params `org_slug` (required), `app_role` (optional)
-- @treturn table `{ total_apps = n, apps = { App, … } }`, or nil, fly.Error
function Apps:list(params)
  check(params, "table", "params", "apps:list")
  local res, err = call(self.client, "Apps_list", params, nil, 2)
  if res and type(res) == "table" then resource.bind_all(App, res.apps, self.client) end
  return res, err
end

--- Creates an app.
-- @tparam table params `app_name`, `org_slug` (required), `network` (optional), and any other
-- field the API accepts in the request body
-- @return the API's answer (`true` when it has no body), or nil, fly.Error
function Apps:create(params)
  check(params, "table", "params", "apps:create")
  local res, err = call(self.client, "Apps_create", { body = params }, nil, 2)
  if type(res) == "table" then resource.bind(App, res, self.client) end
  return res, err
end

--- Gets one app.
-- @tparam string name
-- @treturn App or nil, fly.Error
function Apps:get(name)
  check(name, "string", "name", "apps:get")
  local res, err = call(self.client, "Apps_show", { app_name = name }, nil, 2)
  return resource.bind(App, res, self.client), err
end

--- Deletes an app and its machines.
-- @tparam string name
-- @return true, or nil, fly.Error
function Apps:destroy(name)
  check(name, "string", "name", "apps:destroy")
  local res, err = call(self.client, "Apps_delete", { app_name = name }, nil, 2)
  return res, err
end

--- Creates a deploy token for an app.
-- @tparam string name
-- @tparam[opt] table body e.g. `{ expiry = "720h" }`
-- @treturn table `{ token = "FlyV1 …" }`, or nil, fly.Error
function Apps:create_deploy_token(name, body)
  check(name, "string", "name", "apps:create_deploy_token")
  if body ~= nil then check(body, "table", "body", "apps:create_deploy_token") end
  local res, err = call(self.client, "App_create_deploy_token", { app_name = name, body = body or {} }, nil, 2)
  return res, err
end

--- Reloads this app from the API, in place.
-- @treturn App this app, or nil, fly.Error
function App:refresh()
  local client = resource.owner(self)
  local res, err = client.apps:get(self.name)
  if not res then return nil, err end
  return resource.replace_fields(self, res)
end

--- Deletes this app.
function App:destroy()
  local client = resource.owner(self)
  return client.apps:destroy(self.name)
end

Apps.App = App
return Apps
