--- client.apps: Fly Apps.
-- @module fly.apps
local resource = require "fly.resource"

--- A Fly App as the API returns it, with methods.
local App = resource.class("fly.App")

local Apps = { __name = "fly.apps" }
Apps.__index = Apps

--- The operation each method calls (filled by the declarations below).
Apps.operations = {}

local function bind(res, client) return resource.bind(App, res, client) end

-- Each entry: `{ method, operationId, … }` (see resource.declare); App objects have
-- `destroy` from here and `refresh` below.
resource.declare(Apps, {
  name = "apps", class = App, object = "app", operations = Apps.operations,
  path = { "name" }, params = { name = "app_name" },
  identity = function(a) return a.name end,
}, {
  --- `list(params)`: the apps of an organization; `org_slug` (required), `app_role` ->
  -- `{ total_apps = n, apps = { App, … } }`
  { "list", "Apps_list", path = {}, args = { "params:table" },
    build = function(p, _, params) for k, v in next, params do p[k] = v end end,
    result = function(res, client)
      if type(res) == "table" then resource.bind_all(App, res.apps, client) end
      return res
    end },
  --- `create(params)`: `app_name`, `org_slug` (required), `network`, and any other field the API
  -- accepts in the request body -> the API's answer (`true` when it has no body)
  { "create", "Apps_create", path = {}, args = { "params:table" },
    build = function(p, _, params) p.body = params end, result = bind },
  --- `get(name)`: one app -> App
  { "get", "Apps_show", result = bind, object = false },
  --- `destroy(name)`: deletes an app and its machines -> true
  { "destroy", "Apps_delete" },
  --- `create_deploy_token(name, body)`: e.g. `{ expiry = "720h" }` -> `{ token = "FlyV1 …" }`
  { "create_deploy_token", "App_create_deploy_token", args = { "body:?table" },
    build = function(p, _, body) p.body = body or {} end, object = false },
})

--- Reloads this app from the API, in place.
-- @treturn App this app, or nil, fly.Error
function App:refresh(extra)
  if type(extra) == "table" then resource.no_options("app:refresh") end -- (a number: client:map's index)
  local client = resource.owner(self, "app:refresh")
  resource.check(self.name, "string", "name", "app:refresh", 2)
  local res, err = resource.call(client, "Apps_show", { app_name = self.name }, nil, 2)
  if type(res) ~= "table" then return nil, err end
  return resource.replace_fields(self, res)
end

Apps.App = App
return Apps
