-- client.volumes and Volume objects.
local H = require "helper"
local compat = require "fly.compat"
local fly = require "fly"

describe("client.volumes", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  local function new_volume(fields)
    local body = { name = "data", region = "iad", size_gb = 1 }
    for k, v in pairs(fields or {}) do body[k] = v end
    return assert(c.volumes:create(app, body))
  end

  it("creates a volume that shows up in the list and can be read back", function()
    local v = new_volume { size_gb = 3 }
    assert.equals("fly.Volume", getmetatable(v).__name)
    assert.matches("^vol_", v.id)
    assert.equals("data", v.name)
    assert.equals("iad", v.region)
    assert.equals(3, compat.tointeger(v.size_gb))
    assert.equals(tostring(v), "fly.Volume{" .. v.id .. "}")

    local list = assert(c.volumes:list(app))
    assert.equals(1, #list)
    assert.equals(v.id, list[1].id)
    assert.equals("fly.Volume", getmetatable(list[1]).__name)
    assert.is_not_nil(list[1].blocks)

    local summary = assert(c.volumes:list(app, { summary = true }))
    assert.equals(v.id, summary[1].id)
    assert.is_nil(summary[1].blocks)

    local got = assert(c.volumes:get(app, v.id))
    assert.equals(v.id, got.id)
    assert.equals("fly.Volume", getmetatable(got).__name)
  end)

  it("updates a volume's settings", function()
    local v = new_volume()
    local u = assert(c.volumes:update(app, v.id, { snapshot_retention = 10, auto_backup_enabled = false }))
    assert.equals(10, compat.tointeger(u.snapshot_retention))
    assert.is_false(u.auto_backup_enabled)
    assert.equals(10, compat.tointeger(assert(c.volumes:get(app, v.id)).snapshot_retention))
  end)

  it("extends a volume: the size grows and it needs a restart", function()
    local v = new_volume { size_gb = 1 }
    local res = assert(c.volumes:extend(app, v.id, 5))
    assert.is_true(res.needs_restart)
    assert.equals(5, compat.tointeger(res.volume.size_gb))
    assert.equals("fly.Volume", getmetatable(res.volume).__name)
    assert.equals(5, compat.tointeger(assert(c.volumes:get(app, v.id)).size_gb))
    -- the body form works too
    res = assert(c.volumes:extend(app, v.id, { size_gb = 6 }))
    assert.equals(6, compat.tointeger(res.volume.size_gb))
  end)

  it("refuses to shrink a volume with a 400", function()
    local v = new_volume { size_gb = 4 }
    local res, err = c.volumes:extend(app, v.id, 2)
    assert.is_nil(res)
    assert.is_true(fly.Error.is(err))
    assert.equals(400, err.status)
    assert.equals("bad_request", err.code)
    assert.equals("Volumes_extend", err.operation)
  end)

  it("lists snapshots after create_snapshot", function()
    local v = new_volume()
    assert.same({}, assert(c.volumes:list_snapshots(app, v.id)))
    assert.is_true(c.volumes:create_snapshot(app, v.id))
    assert.is_true(c.volumes:create_snapshot(app, v.id))
    local snaps = assert(c.volumes:list_snapshots(app, v.id))
    assert.equals(2, #snaps)
    assert.matches("^vs_", snaps[1].id)
    assert.is_string(snaps[1].created_at)
  end)

  it("destroys a volume: it leaves the list and get answers 404", function()
    local v = new_volume()
    local gone = assert(c.volumes:destroy(app, v.id))
    assert.equals("destroyed", gone.state)
    assert.same({}, assert(c.volumes:list(app)))
    local res, err = c.volumes:get(app, v.id)
    assert.is_nil(res)
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
  end)

  it("answers 404 for an unknown app or volume and 400 for a bad body", function()
    local res, err = c.volumes:list("no-such-app")
    assert.is_nil(res)
    assert.equals(404, err.status)
    res, err = c.volumes:get(app, "vol_missing")
    assert.is_nil(res)
    assert.equals(404, err.status)
    res, err = c.volumes:create(app, { name = "data" }) -- no region
    assert.is_nil(res)
    assert.equals(400, err.status)
  end)

  it("is reachable through client:call with the same results", function()
    local v = assert(c:call("Volumes_create", { app_name = app, body = { name = "raw", region = "ams" } }))
    assert.equals(v.id, assert(c.volumes:get(app, v.id)).id)
  end)

  describe("Volume objects", function()
    it("refresh, update, extend, snapshots, create_snapshot and destroy through their app", function()
      local v = new_volume { size_gb = 2 }
      local fresh = assert(v:refresh())
      assert.equals(v, fresh) -- in place, like every object's refresh
      assert.equals("fly.Volume", getmetatable(fresh).__name)

      local u = assert(v:update { snapshot_retention = 7 })
      assert.equals(7, compat.tointeger(u.snapshot_retention))

      local ext = assert(v:extend(4))
      assert.is_true(ext.needs_restart)
      assert.equals(4, compat.tointeger(ext.volume.size_gb))
      assert.equals(2, compat.tointeger(v.size_gb)) -- the object itself is the answer it came from

      assert.is_true(v:create_snapshot())
      assert.equals(1, #assert(v:list_snapshots()))

      local gone = assert(v:destroy())
      assert.equals("destroyed", gone.state)
      local res, err = v:refresh()
      assert.is_nil(res)
      assert.equals(404, err.status)
    end)

    it("keep exactly the API's fields", function()
      local v = new_volume()
      for k in pairs(v) do assert.is_string(k) end
      assert.is_nil(rawget(v, "app"))
      assert.is_nil(rawget(v, "client"))
      local json = require "fly.json"
      local again = json.decode(json.encode(v))
      assert.equals(v.id, again.id)
    end)
  end)

  describe("programmer errors", function()
    it("raise at the caller's line, naming the method and argument", function()
      H.raises("volumes_spec%.lua:%d+: fly: volumes:get: id must be a string %(got number%)",
        function() c.volumes:get(app, 42) end)
      H.raises("volumes_spec%.lua:%d+: fly: volumes:create: body must be a table", function() c.volumes:create(app) end)
      H.raises("volumes_spec%.lua:%d+: fly: volumes:extend: size_gb must be a number",
        function() c.volumes:extend(app, "vol_x", "big") end)
      H.raises("volumes_spec%.lua:%d+: fly: volumes:list: unknown parameter 'bogus' %(it takes summary%)",
        function() c.volumes:list(app, { bogus = 1 }) end)
      H.raises("volumes_spec%.lua:%d+: fly: Volumes_get_by_id: parameter 'volume_id' must not be empty",
        function() c.volumes:get(app, "") end)
    end)

    it("raise at the caller's line from object methods too", function()
      local v = new_volume()
      H.raises("volumes_spec%.lua:%d+: fly: volume:update: body must be a table", function() v:update("x") end)
      H.raises("volumes_spec%.lua:%d+: fly: volume:extend: size_gb must be a number", function() v:extend(nil) end)
      H.raises("volumes_spec%.lua:%d+: fly: cannot encode", function() v:update { f = print } end)
      H.raises("volumes_spec%.lua:%d+: fly: volume:refresh: called on a table that is no object of a client",
        function() fly.namespaces.volumes.Volume.refresh({ id = "x" }) end)
    end)
  end)
end)
