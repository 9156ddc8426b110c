--- client.volumes: the volumes of an app.
-- @module fly.volumes
local resource = require "fly.resource"

--- A Volume as the API returns it, with methods. It remembers its app.
local Volume = resource.class("fly.Volume")

local Volumes = { __name = "fly.volumes" }
Volumes.__index = Volumes

--- The operation each method calls (filled by the declarations below).
Volumes.operations = {}

local function bind(res, client, p)
  return resource.bind(Volume, res, client, { app = p.app_name })
end

-- Each entry: `{ method, operationId, … }` (see resource.declare). The namespace form takes
-- `app, id` first (`app` only where `path` says so); Volume objects take the rest and answer
-- a new object, leaving themselves as they were (but `refresh`, below).
resource.declare(Volumes, {
  name = "volumes", class = Volume, object = "volume", operations = Volumes.operations,
  path = { "app", "id" }, params = { app = "app_name", id = "volume_id" },
  identity = function(v, ctx) return ctx.app, v.id end,
}, {
  --- `list(app, params)`: the app's volumes (destroyed ones are not listed); `summary` (leave
  -- out the block and byte figures) -> {Volume, …}
  { "list", "Volumes_list", path = { "app" }, params = true,
    result = function(res, client, p) return resource.bind_all(Volume, res, client, { app = p.app_name }) end },
  --- `create(app, body)`: `name`, `region` (required by the API), `size_gb`, `encrypted`,
  -- `snapshot_id`, `source_volume_id`, `snapshot_retention`, `auto_backup_enabled`, … -> Volume
  { "create", "Volumes_create", path = { "app" }, args = { "body:table" },
    build = function(p, _, body) p.body = body end, result = bind },
  --- `get(app, id)`: one volume -> Volume (404 `not_found`)
  { "get", "Volumes_get_by_id", result = bind, object = false },
  --- `update(app, id, body)`: `auto_backup_enabled`, `snapshot_retention` -> the updated Volume
  { "update", "Volumes_update", args = { "body:table" }, build = function(p, _, body) p.body = body end,
    result = bind },
  --- `destroy(app, id)`: destroys the volume and its data -> the Volume (`state == "destroyed"`)
  { "destroy", "Volume_delete", result = bind },
  --- `extend(app, id, size_gb)`: the new size in GB (larger), or the body `{ size_gb = n }` ->
  -- `{ needs_restart = bool, volume = Volume }`
  { "extend", "Volumes_extend", args = { "size_gb:number|table" },
    build = function(p, _, size)
      p.body = type(size) == "number" and { size_gb = size } or size
    end,
    result = function(res, client, p)
      if type(res) == "table" then bind(res.volume, client, p) end
      return res
    end },
  --- `list_snapshots(app, id)` -> an array of VolumeSnapshot (`id`, `created_at`, `size`, `status`, …)
  { "list_snapshots", "Volumes_list_snapshots" },
  --- `create_snapshot(app, id)`: takes a snapshot now -> true
  { "create_snapshot", "createVolumeSnapshot" },
})

--- Reloads this volume from the API, in place.
-- @treturn Volume this volume, or nil, fly.Error
function Volume:refresh(extra)
  if type(extra) == "table" then resource.no_options("volume:refresh") end -- (a number: client:map's index)
  local client, ctx = resource.owner(self, "volume:refresh")
  resource.check(self.id, "string", "id", "volume:refresh", 2)
  local res, err = resource.call(client, "Volumes_get_by_id", { app_name = ctx.app, volume_id = self.id }, nil, 2)
  if type(res) ~= "table" then return nil, err end
  return resource.replace_fields(self, res)
end

Volumes.Volume = Volume
return Volumes
