-- client.postgres: Managed Postgres clusters and what lives in them.
local H = require "helper"
local fly = require "fly"

describe("client.postgres", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)
  after_each(function() c:close() end)

  -- a cluster, polled until ready (the emulator readies it on the next request)
  local function cluster(fields)
    local body = { org_slug = "personal", plan = "basic", region = "iad" }
    for k, v in pairs(fields or {}) do body[k] = v end
    local res = assert(c.postgres:create(body))
    local id = res.data.id
    for _ = 1, 10 do
      local got = assert(c.postgres:get(id))
      if got.data.status == "ready" then return id, got.data end
    end
    error("the cluster never became ready")
  end

  describe("clusters", function()
    it("are created, listed, read and destroyed", function()
      local res = assert(c.postgres:create { org_slug = "personal", plan = "basic", region = "iad", name = "main-db" })
      assert.equals("creating", res.data.status)
      local id = res.data.id
      local got = assert(c.postgres:get(id))
      assert.equals("ready", got.data.status)
      assert.equals("main-db", got.data.name)
      assert.is_table(got.data.endpoints)

      local list = assert(c.postgres:list { org_slug = "personal" })
      assert.equals(1, #list.data)
      assert.equals(id, list.data[1].id)

      assert.is_true(c.postgres:destroy(id))
      local r, err = c.postgres:destroy(id)
      assert.is_nil(r)
      assert.equals(410, err.status)
      assert.equals("gone", err.code)
      r, err = c.postgres:get(id)
      assert.is_nil(r)
      assert.equals(404, err.status)
      assert.equals("not_found", err.code)
      assert.equals(0, #assert(c.postgres:list { org_slug = "personal" }).data)
      assert.equals(1, #assert(c.postgres:list { org_slug = "personal", include_deleted = true }).data)
    end)

    it("answer 422 with the Postgres error body for a bad plan or a taken name", function()
      local r, err = c.postgres:create { org_slug = "personal", plan = "huge", region = "iad" }
      assert.is_nil(r)
      assert.equals(422, err.status)
      assert.equals("unprocessable", err.code)
      assert.matches("plan must be one of", err.message)
      cluster { name = "taken" }
      r, err = c.postgres:create { org_slug = "personal", plan = "basic", region = "iad", name = "taken" }
      assert.is_nil(r)
      assert.equals(422, err.status)
      r, err = c.postgres:list { org_slug = "no-such-org" }
      assert.is_nil(r)
      assert.equals(404, err.status)
    end)

    it("fork into a new cluster with the same databases", function()
      local id = cluster { name = "src" }
      assert(c.postgres:create_database(id, "app_db"))
      local fork = assert(c.postgres:fork(id))
      assert.equals("src-fork", fork.data.name)
      local named = assert(c.postgres:fork(id, { name = "copy" }))
      assert.equals("copy", named.data.name)
      local dbs = assert(c.postgres:list_databases(named.data.id))
      local names = {}
      for _, d in ipairs(dbs.data) do names[d.name] = true end
      assert.is_true(names.app_db)
    end)

    it("back up, list backups and restore from one", function()
      local id = cluster { name = "prod" }
      assert.is_true(c.postgres:create_backup(id, "full"))
      local r, err = c.postgres:create_backup(id, { type = "incr" })
      assert.is_nil(r)
      assert.equals(409, err.status)
      assert.equals("conflict", err.code)
      local backups = assert(c.postgres:list_backups(id))
      assert.equals(1, #backups.data)
      assert.equals("completed", backups.data[1].status)
      local restored = assert(c.postgres:restore(id, { backup_id = backups.data[1].id, name = "prod-restored" }))
      assert.equals("prod-restored", restored.data.name)
      r, err = c.postgres:restore(id, {})
      assert.is_nil(r)
      assert.equals(422, err.status)
    end)

    it("attach to an app and detach from it", function()
      local id = cluster()
      local app = H.app(c)
      local res = assert(c.postgres:create_attachment(id, app))
      assert.equals(app, res.data.app_name)
      assert.equals(app, assert(c.postgres:get(id)).data.attached_apps[1].name)
      assert.is_true(c.postgres:delete_attachment(id, app))
      local r, err = c.postgres:delete_attachment(id, app)
      assert.is_nil(r)
      assert.equals(404, err.status)
      assert(c.postgres:create_attachment(id, { app_name = app }))
    end)
  end)

  describe("databases and extensions", function()
    it("create, list and destroy databases", function()
      local id = cluster()
      local res = assert(c.postgres:create_database(id, "orders"))
      assert.equals("orders", res.data.name)
      assert(c.postgres:create_database(id, { name = "audit" }))
      local names = {}
      for _, d in ipairs(assert(c.postgres:list_databases(id)).data) do names[#names + 1] = d.name end
      assert.same({ "audit", "fly-db", "orders" }, names)
      local r, err = c.postgres:create_database(id, "orders")
      assert.is_nil(r)
      assert.equals(422, err.status)
      assert.equals("orders", assert(c.postgres:destroy_database(id, "orders")).data.name)
      r, err = c.postgres:destroy_database(id, "orders")
      assert.is_nil(r)
      assert.equals(404, err.status)
      r, err = c.postgres:create_database(id, "postgres")
      assert.is_nil(r)
      assert.equals(400, err.status)
    end)

    it("enable, list and disable extensions (force drops dependents)", function()
      local id = cluster()
      local function installed(name)
        for _, e in ipairs(assert(c.postgres:list_extensions(id, "fly-db")).data) do
          if e.name == name then return e.installed ~= fly.null end
        end
      end
      assert.is_false(installed("citext"))
      assert.is_true(c.postgres:enable_extension(id, "fly-db", "citext"))
      assert.is_true(installed("citext"))
      local r, err = c.postgres:enable_extension(id, "fly-db", "citext")
      assert.is_nil(r)
      assert.equals(409, err.status)

      assert.is_true(c.postgres:enable_extension(id, "fly-db", { name = "earthdistance" }))
      assert.is_true(installed("cube"))
      r, err = c.postgres:disable_extension(id, "fly-db", "cube")
      assert.is_nil(r)
      assert.equals(400, err.status)
      assert.is_true(c.postgres:disable_extension(id, "fly-db", "cube", { force = true }))
      assert.is_false(installed("cube"))
      assert.is_false(installed("earthdistance"))
      assert.is_true(c.postgres:disable_extension(id, "fly-db", "citext"))
      assert.is_false(installed("citext"))
    end)
  end)

  describe("users", function()
    it("create, list, change role, read credentials, rotate and delete", function()
      local id = cluster()
      local res = assert(c.postgres:create_user(id, { username = "reporter", role = "reader" }))
      assert.same({ username = "reporter", role = "reader" }, res.data)
      local users = {}
      for _, u in ipairs(assert(c.postgres:list_users(id)).data) do users[u.username] = u.role end
      assert.same({ ["fly-user"] = "schema_admin", reporter = "reader" }, users)

      assert.is_true(c.postgres:update_user_role(id, "reporter", "writer"))
      assert(c.postgres:update_user_role(id, "reporter", { role = "writer" }))
      users = {}
      for _, u in ipairs(assert(c.postgres:list_users(id)).data) do users[u.username] = u.role end
      assert.equals("writer", users.reporter)

      local cred = assert(c.postgres:get_credentials(id, "reporter"))
      assert.equals("reporter", cred.data.username)
      local rotated = assert(c.postgres:rotate_password(id, "reporter", { kill_sessions = true }))
      assert.are_not.equal(cred.data.password, rotated.data.password)
      assert.equals(rotated.data.password, assert(c.postgres:get_credentials(id, "reporter")).data.password)
      assert(c.postgres:rotate_password(id, "reporter"))

      assert.is_true(c.postgres:delete_user(id, "reporter"))
      local r, err = c.postgres:get_credentials(id, "reporter")
      assert.is_nil(r)
      assert.equals(404, err.status)
    end)

    it("refuses duplicates and bad roles", function()
      local id = cluster()
      local r, err = c.postgres:create_user(id, { username = "fly-user", role = "reader" })
      assert.is_nil(r)
      assert.equals(409, err.status)
      r, err = c.postgres:update_user_role(id, "fly-user", "owner")
      assert.is_nil(r)
      assert.equals(422, err.status)
    end)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("postgres_spec%.lua:%d+: fly: postgres:get: id must be a string", function() c.postgres:get(nil) end)
    H.raises("postgres_spec%.lua:%d+: fly: postgres:list: params must be a table", function() c.postgres:list() end)
    H.raises("postgres_spec%.lua:%d+: fly: Postgres_list: missing required parameter 'org_slug'",
      function() c.postgres:list {} end)
    H.raises("postgres_spec%.lua:%d+: fly: postgres:create_backup: type must be a string or a table",
      function() c.postgres:create_backup("x", 1) end)
    H.raises("postgres_spec%.lua:%d+: fly: postgres:disable_extension: name must be a string",
      function() c.postgres:disable_extension("x", "db", nil) end)
    H.raises("postgres_spec%.lua:%d+: fly: postgres:rotate_password: body must be a table",
      function() c.postgres:rotate_password("x", "u", "now") end)
    H.raises("postgres_spec%.lua:%d+: fly: postgres:fork: body must be a table", function() c.postgres:fork("x", 1) end)
  end)
end)
