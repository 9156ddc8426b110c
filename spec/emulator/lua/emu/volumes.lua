-- Emulates the Fly Machines API volume operations of one app:
--   Volumes_list, Volumes_create, Volumes_get_by_id, Volumes_update, Volume_delete,
--   Volumes_extend, Volumes_list_snapshots, createVolumeSnapshot.
--
-- State: state.table("volumes")[volume_id] = record (flat, like machines; field app_name,
-- as apps.lua counts them). The record carries the public Volume fields plus app_name,
-- updated_at and snapshots (internal). The attachment is derived from the machines table (a
-- live machine of the app whose config.mounts names the volume); a stored
-- attached_machine_id naming a live machine is honoured too.
-- Destroyed volumes stay in the table with state "destroyed" (the org-wide listing can show
-- them with include_deleted) but disappear from the app's list and from get.

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"

local M = {}

local GiB = 1024 * 1024 * 1024
local BLOCK_SIZE = 4096
local MAX_SIZE_GB = 500

local function null_or(v) if v == nil then return cjson.null end return v end

local function is_int(v) return type(v) == "number" and v == math.floor(v) end

local volumes = state.table("volumes")

-- false for the volumes of an app that was deleted (and maybe created again since)
function M.current(vol)
  local app = state.table("apps")[vol.app_name]
  return app ~= nil and app.id == vol.app_id
end

-- the app's volumes (destroyed ones included), as an array
local function app_volumes(app_name)
  local out = {}
  for _, vol in pairs(volumes) do
    if type(vol) == "table" and vol.app_name == app_name and M.current(vol) then out[#out + 1] = vol end
  end
  return out
end

-- Known region codes come from the platform module (kept in one place); accept anything
-- when it is not available.
local function region_known(code)
  local ok, platform = pcall(require, "emu.platform")
  if not ok or type(platform.region_codes) ~= "table" then return true end
  return platform.region_codes[code] == true
end

-- The app's live machines: through emu.machine_store when present (it settles pending
-- lifecycle steps first), else straight from state.table("machines") (flat, by id).
local function live_machines(app_name)
  local ok, store = pcall(require, "emu.machine_store")
  if ok and type(store) == "table" and type(store.machines_of) == "function" then
    return store.machines_of(app_name)
  end
  local out = {}
  for _, m in pairs(state.table("machines")) do
    if type(m) == "table" and m.app_name == app_name and m.state ~= "destroyed" then out[#out + 1] = m end
  end
  return out
end

-- Which live machine mounts this volume? A machine whose config.mounts names it, else the
-- stored attached_machine_id when it names a live machine.
local function attached_machine(vol)
  local stored = vol.attached_machine_id ~= cjson.null and vol.attached_machine_id or nil
  local stored_live = false
  for _, m in ipairs(live_machines(vol.app_name)) do
    local mounts = type(m.config) == "table" and m.config.mounts
    if type(mounts) == "table" then
      for _, mount in ipairs(mounts) do
        if type(mount) == "table" and mount.volume == vol.id then return m.id end
      end
    end
    if m.id == stored then stored_live = true end
  end
  return stored_live and stored or nil
end

M.attached_machine = attached_machine

-- Public shape of a volume. summary omits the block/byte figures; with_org adds the
-- OrgVolume extras (app_name, updated_at).
function M.render(vol, summary, with_org)
  local machine_id = attached_machine(vol)
  local out = {
    id = vol.id,
    name = vol.name,
    state = vol.state,
    size_gb = vol.size_gb,
    region = vol.region,
    zone = vol.zone,
    encrypted = vol.encrypted,
    fstype = vol.fstype,
    type = vol.type,
    host_status = vol.host_status,
    created_at = vol.created_at,
    snapshot_retention = vol.snapshot_retention,
    auto_backup_enabled = vol.auto_backup_enabled,
    attached_machine_id = null_or(machine_id),
    attached_alloc_id = cjson.null,
  }
  if not summary then
    local bytes_total = vol.size_gb * GiB
    local blocks = math.floor(bytes_total / BLOCK_SIZE)
    local used_blocks = math.ceil(vol.bytes_used / BLOCK_SIZE)
    out.block_size = BLOCK_SIZE
    out.blocks = blocks
    out.blocks_free = blocks - used_blocks
    out.blocks_avail = math.max(0, blocks - used_blocks - math.floor(blocks * 0.05))
    out.bytes_total = bytes_total
    out.bytes_used = vol.bytes_used
  end
  if with_org then
    out.app_name = vol.app_name
    out.updated_at = vol.updated_at
  end
  return out
end

-- the live (not destroyed) volume, or nil plus an error response
local function find_volume(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return nil, 404, "app not found" end
  local vol = volumes[req.params.volume_id]
  if type(vol) ~= "table" or vol.app_name ~= app_name or vol.state == "destroyed" or not M.current(vol) then
    return nil, 404, "volume not found"
  end
  return vol
end

local function touch(vol) vol.updated_at = util.now_iso() end

local function find_snapshot(app_name, snapshot_id)
  for _, vol in ipairs(app_volumes(app_name)) do
    for _, snap in ipairs(vol.snapshots or {}) do
      if snap.id == snapshot_id then return snap, vol end
    end
  end
end

---------------------------------------------------------------------------- handlers

local function list(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local summary = util.qbool(req.query and req.query.summary)
  local vols = {}
  for _, vol in ipairs(app_volumes(app_name)) do
    if vol.state ~= "destroyed" then vols[#vols + 1] = vol end
  end
  table.sort(vols, function(a, b) return a.seq < b.seq end)
  local out = {}
  for i, vol in ipairs(vols) do out[i] = M.render(vol, summary) end
  return 200, util.arr(out)
end

local function validate_create(body)
  if type(body.name) ~= "string" or body.name == "" then return "name is required" end
  if #body.name > 30 or not body.name:match("^[a-z0-9_]+$") then
    return "name must be 1-30 characters: lowercase letters, digits and underscores"
  end
  if body.size_gb ~= nil and (not is_int(body.size_gb) or body.size_gb < 1 or body.size_gb > MAX_SIZE_GB) then
    return "size_gb must be an integer between 1 and " .. MAX_SIZE_GB
  end
  for _, k in ipairs { "encrypted", "require_unique_zone", "unique_zone_app_wide", "auto_backup_enabled" } do
    if body[k] ~= nil and type(body[k]) ~= "boolean" then return k .. " must be a boolean" end
  end
  if body.snapshot_retention ~= nil and (not is_int(body.snapshot_retention)
      or body.snapshot_retention < 1 or body.snapshot_retention > 60) then
    return "snapshot_retention must be an integer between 1 and 60"
  end
  if body.fstype ~= nil and body.fstype ~= "ext4" and body.fstype ~= "raw" then
    return "fstype must be ext4 or raw"
  end
end

local function create(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local body, berr = util.body_object(req)
  if not body then return util.err(400, berr) end
  local verr = validate_create(body)
  if verr then return util.err(400, verr) end

  local region, size_gb = body.region, body.size_gb
  -- fork from another volume / restore from a snapshot
  if body.source_volume_id ~= nil then
    local src = volumes[body.source_volume_id]
    if type(src) ~= "table" or src.app_name ~= app_name or src.state == "destroyed" or not M.current(src) then
      return util.err(404, "source volume not found")
    end
    region = region or src.region
    size_gb = size_gb or src.size_gb
    if size_gb < src.size_gb then return util.err(400, "size_gb must be at least the source volume's size") end
  end
  if body.snapshot_id ~= nil then
    local snap = find_snapshot(app_name, body.snapshot_id)
    if not snap then return util.err(404, "snapshot not found") end
    local min_gb = math.ceil(snap.volume_size / GiB)
    size_gb = size_gb or min_gb
    if size_gb < min_gb then return util.err(400, "size_gb must be at least the snapshot's volume size") end
  end
  if type(region) ~= "string" or region == "" then return util.err(400, "region is required") end
  if not region_known(region) then return util.err(400, "region " .. region .. " not found") end

  size_gb = size_gb or 1
  local now = util.now_iso()
  local seq = 1 -- creation order (volumes are never removed from the table, only destroyed)
  for _ in pairs(volumes) do seq = seq + 1 end
  local vol = {
    id = "vol_" .. util.hex(16),
    seq = seq,
    name = body.name,
    app_name = app_name,
    app_id = state.table("apps")[app_name].id,
    state = "created",
    size_gb = size_gb,
    region = region,
    zone = util.hex(4),
    encrypted = body.encrypted ~= false,
    fstype = body.fstype or "ext4",
    type = "local",
    host_status = "ok",
    snapshot_retention = body.snapshot_retention or 5,
    auto_backup_enabled = body.auto_backup_enabled ~= false,
    -- a restored or forked volume starts with data on it
    bytes_used = (body.snapshot_id or body.source_volume_id) and math.floor(size_gb * GiB * 0.02) or 0,
    created_at = now,
    updated_at = now,
    snapshots = {},
  }
  volumes[vol.id] = vol
  return 200, M.render(vol)
end

local function get(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  return 200, M.render(vol)
end

local function update(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  local body, berr = util.body_object(req)
  if not body then return util.err(400, berr) end
  if body.auto_backup_enabled ~= nil and type(body.auto_backup_enabled) ~= "boolean" then
    return util.err(400, "auto_backup_enabled must be a boolean")
  end
  local r = body.snapshot_retention
  if r ~= nil and (not is_int(r) or r < 1 or r > 60) then
    return util.err(400, "snapshot_retention must be an integer between 1 and 60")
  end
  if body.auto_backup_enabled ~= nil then vol.auto_backup_enabled = body.auto_backup_enabled end
  if r ~= nil then vol.snapshot_retention = r end
  touch(vol)
  return 200, M.render(vol)
end

local function destroy(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  local machine_id = attached_machine(vol)
  if machine_id then
    return util.err(400, "volume " .. vol.id .. " is attached to machine " .. machine_id
      .. "; destroy the machine first")
  end
  vol.state = "destroyed"
  vol.attached_machine_id = nil
  touch(vol)
  return 200, M.render(vol)
end

local function extend(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  local body, berr = util.body_object(req)
  if not body then return util.err(400, berr) end
  local size = body.size_gb
  if not is_int(size) then return util.err(400, "size_gb is required and must be an integer") end
  if size <= vol.size_gb then
    return util.err(400, "size_gb must be greater than the current size (" .. vol.size_gb .. " GB)")
  end
  if size > MAX_SIZE_GB then return util.err(400, "size_gb cannot exceed " .. MAX_SIZE_GB) end
  vol.size_gb = size
  touch(vol)
  return 200, { volume = M.render(vol), needs_restart = true }
end

local function render_snapshot(s)
  return {
    id = s.id, created_at = s.created_at, digest = s.digest, size = s.size,
    status = s.status, retention_days = s.retention_days, volume_size = s.volume_size,
  }
end

local function list_snapshots(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  local out = {}
  for i, s in ipairs(vol.snapshots) do out[i] = render_snapshot(s) end
  return 200, util.arr(out)
end

local function create_snapshot(req)
  local vol, status, msg = find_volume(req)
  if not vol then return util.err(status, msg) end
  local snap = {
    id = "vs_" .. util.hex(16),
    created_at = util.now_iso(),
    digest = util.hex(64),
    size = math.max(vol.bytes_used, 4096),
    status = "created",
    retention_days = vol.snapshot_retention,
    volume_size = vol.size_gb * GiB,
  }
  table.insert(vol.snapshots, snap)
  return 200, nil
end

local base = "/v1/apps/{app_name}/volumes"
M.routes = {
  { op = "Volumes_list", method = "GET", path = base, handler = list },
  { op = "Volumes_create", method = "POST", path = base, handler = create },
  { op = "Volumes_get_by_id", method = "GET", path = base .. "/{volume_id}", handler = get },
  { op = "Volumes_update", method = "PUT", path = base .. "/{volume_id}", handler = update },
  { op = "Volume_delete", method = "DELETE", path = base .. "/{volume_id}", handler = destroy },
  { op = "Volumes_extend", method = "PUT", path = base .. "/{volume_id}/extend", handler = extend },
  { op = "Volumes_list_snapshots", method = "GET", path = base .. "/{volume_id}/snapshots", handler = list_snapshots },
  { op = "createVolumeSnapshot", method = "POST", path = base .. "/{volume_id}/snapshots", handler = create_snapshot },
}

return M
