--- client.volumes: the volumes of an app.
-- @module fly.volumes
local resource = require "fly.resource"

local call, check = resource.call, resource.check

--- A Volume as the API returns it, with methods. It remembers its app.
local Volume = resource.class("fly.Volume")

local Volumes = { __name = "fly.volumes" }
Volumes.__index = Volumes

--- The operation each method calls.
Volumes.operations = {
  list = "Volumes_list",
  create = "Volumes_create",
  get = "Volumes_get_by_id",
  update = "Volumes_update",
  destroy = "Volume_delete",
  extend = "Volumes_extend",
  list_snapshots = "Volumes_list_snapshots",
  create_snapshot = "createVolumeSnapshot",
}

local function bind(res, client, app)
  return resource.bind(Volume, res, client, { app = app })
end

-- The operations, shared by the namespace and the objects. `level` is given to
-- resource.call: 3 puts a programmer error at the line that called the public method.

local function get(client, app, id, level)
  local res, err = call(client, "Volumes_get_by_id", { app_name = app, volume_id = id }, nil, level)
  return bind(res, client, app), err
end

local function update(client, app, id, body, level)
  local res, err = call(client, "Volumes_update", { app_name = app, volume_id = id, body = body }, nil, level)
  return bind(res, client, app), err
end

local function destroy(client, app, id, level)
  local res, err = call(client, "Volume_delete", { app_name = app, volume_id = id }, nil, level)
  return bind(res, client, app), err
end

-- size_gb: a number, or the whole request body
local function extend(client, app, id, size_gb, method, level)
  local body = size_gb
  if type(size_gb) == "number" then
    body = { size_gb = size_gb }
  elseif type(size_gb) ~= "table" then
    error(("fly: %s: size_gb must be a number (got %s)"):format(method, type(size_gb)), level)
  end
  local res, err = call(client, "Volumes_extend", { app_name = app, volume_id = id, body = body }, nil, level)
  if type(res) == "table" then bind(res.volume, client, app) end
  return res, err
end

local function snapshots(client, app, id, level)
  local res, err = call(client, "Volumes_list_snapshots", { app_name = app, volume_id = id }, nil, level)
  return res, err
end

local function create_snapshot(client, app, id, level)
  local res, err = call(client, "createVolumeSnapshot", { app_name = app, volume_id = id }, nil, level)
  return res, err
end

--- Lists the volumes of an app (destroyed ones are not listed).
-- @tparam string app the app's name
-- @tparam[opt] table params `summary` (boolean: leave out the block and byte figures)
-- @treturn table an array of Volume, or nil, fly.Error
function Volumes:list(app, params)
  check(app, "string", "app", "volumes:list")
  if params ~= nil then check(params, "table", "params", "volumes:list") end
  local res, err = call(self.client, "Volumes_list", resource.merge(params, { app_name = app }), nil, 2)
  if type(res) == "table" then resource.bind_all(Volume, res, self.client, { app = app }) end
  return res, err
end

--- Creates a volume.
-- @tparam string app the app's name
-- @tparam table body `name` and `region` (required by the API), `size_gb`, `encrypted`,
-- `snapshot_id`, `source_volume_id`, `snapshot_retention`, `auto_backup_enabled`, … (the API's
-- CreateVolumeRequest)
-- @treturn Volume or nil, fly.Error
function Volumes:create(app, body)
  check(app, "string", "app", "volumes:create")
  check(body, "table", "body", "volumes:create")
  local res, err = call(self.client, "Volumes_create", { app_name = app, body = body }, nil, 2)
  return bind(res, self.client, app), err
end

--- Gets one volume.
-- @tparam string app the app's name
-- @tparam string id the volume's id (`vol_…`)
-- @treturn Volume or nil, fly.Error (404 `not_found`)
function Volumes:get(app, id)
  check(app, "string", "app", "volumes:get")
  check(id, "string", "id", "volumes:get")
  local res, err = get(self.client, app, id, 3)
  return res, err
end

--- Updates a volume's settings.
-- @tparam string app the app's name
-- @tparam string id the volume's id
-- @tparam table body `auto_backup_enabled`, `snapshot_retention`
-- @treturn Volume the updated volume, or nil, fly.Error
function Volumes:update(app, id, body)
  check(app, "string", "app", "volumes:update")
  check(id, "string", "id", "volumes:update")
  check(body, "table", "body", "volumes:update")
  local res, err = update(self.client, app, id, body, 3)
  return res, err
end

--- Destroys a volume and its data.
-- @tparam string app the app's name
-- @tparam string id the volume's id
-- @treturn Volume the destroyed volume (`state == "destroyed"`), or nil, fly.Error
function Volumes:destroy(app, id)
  check(app, "string", "app", "volumes:destroy")
  check(id, "string", "id", "volumes:destroy")
  local res, err = destroy(self.client, app, id, 3)
  return res, err
end

--- Extends a volume.
-- @tparam string app the app's name
-- @tparam string id the volume's id
-- @tparam number|table size_gb the new size in GB (larger than the current one), or the
-- request body `{ size_gb = n }`
-- @treturn table `{ needs_restart = bool, volume = Volume }`, or nil, fly.Error
function Volumes:extend(app, id, size_gb)
  check(app, "string", "app", "volumes:extend")
  check(id, "string", "id", "volumes:extend")
  local res, err = extend(self.client, app, id, size_gb, "volumes:extend", 3)
  return res, err
end

--- Lists the snapshots of a volume.
-- @tparam string app the app's name
-- @tparam string id the volume's id
-- @treturn table an array of VolumeSnapshot (`id`, `created_at`, `size`, `status`, …), or nil,
-- fly.Error
function Volumes:list_snapshots(app, id)
  check(app, "string", "app", "volumes:list_snapshots")
  check(id, "string", "id", "volumes:list_snapshots")
  local res, err = snapshots(self.client, app, id, 3)
  return res, err
end

--- Takes a snapshot of a volume.
-- @tparam string app the app's name
-- @tparam string id the volume's id
-- @return true, or nil, fly.Error
function Volumes:create_snapshot(app, id)
  check(app, "string", "app", "volumes:create_snapshot")
  check(id, "string", "id", "volumes:create_snapshot")
  local res, err = create_snapshot(self.client, app, id, 3)
  return res, err
end

--- Reloads this volume from the API, in place.
-- @treturn Volume this volume, or nil, fly.Error
function Volume:refresh()
  local client, ctx = resource.owner(self)
  local res, err = get(client, ctx.app, self.id, 3)
  if not res then return nil, err end
  return resource.replace_fields(self, res)
end

--- Updates this volume's settings.
-- @tparam table body `auto_backup_enabled`, `snapshot_retention`
-- @treturn Volume the updated volume (a new object), or nil, fly.Error
function Volume:update(body)
  check(body, "table", "body", "volume:update")
  local client, ctx = resource.owner(self)
  local res, err = update(client, ctx.app, self.id, body, 3)
  return res, err
end

--- Destroys this volume.
-- @treturn Volume the destroyed volume, or nil, fly.Error
function Volume:destroy()
  local client, ctx = resource.owner(self)
  local res, err = destroy(client, ctx.app, self.id, 3)
  return res, err
end

--- Extends this volume.
-- @tparam number|table size_gb the new size in GB, or `{ size_gb = n }`
-- @treturn table `{ needs_restart = bool, volume = Volume }`, or nil, fly.Error
function Volume:extend(size_gb)
  local client, ctx = resource.owner(self)
  local res, err = extend(client, ctx.app, self.id, size_gb, "volume:extend", 3)
  return res, err
end

--- Lists this volume's snapshots.
-- @treturn table an array of VolumeSnapshot, or nil, fly.Error
function Volume:list_snapshots()
  local client, ctx = resource.owner(self)
  local res, err = snapshots(client, ctx.app, self.id, 3)
  return res, err
end

--- Takes a snapshot of this volume.
-- @return true, or nil, fly.Error
function Volume:create_snapshot()
  local client, ctx = resource.owner(self)
  local res, err = create_snapshot(client, ctx.app, self.id, 3)
  return res, err
end

Volumes.Volume = Volume
return Volumes
