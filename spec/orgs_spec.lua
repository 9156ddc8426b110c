-- client.orgs: organization-wide listings, one page or all of them through the iterators.
local H = require "helper"
local fly = require "fly"

describe("client.orgs", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)
  after_each(function() c:close() end)

  -- n machines (through client:call: the machines namespace is not this spec's business)
  local function machines(app, n)
    local ids = {}
    for i = 1, n do
      local m = assert(c:call("Machines_create", { app_name = app, body = { config = { image = "nginx" } } }))
      ids[i] = m.id
    end
    return ids
  end

  local function set(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
  end

  describe("machines", function()
    it("gives one page (org_page_size) with next_cursor, and the next page by cursor", function()
      local a, b = H.app(c), H.app(c)
      machines(a, 2)
      machines(b, 1)
      local page = assert(c.orgs:list_machines("personal"))
      assert.equals(2, #page.machines)
      assert.is_string(page.next_cursor)
      assert.is_string(page.machines[1].app_name)
      local rest = assert(c.orgs:list_machines("personal", { cursor = page.next_cursor }))
      assert.equals(1, #rest.machines)
      assert.is_nil(rest.next_cursor)
    end)

    it("gives Machine objects of their app (when the machines namespace is loaded)", function()
      local a = H.app(c)
      local id = machines(a, 1)[1]
      local m = assert(c.orgs:list_machines("personal")).machines[1]
      assert.equals(id, m.id)
      assert.equals(a, m.app_name)
      assert.equals(a, m:app())
      assert.equals("fly.Machine", getmetatable(m).__name)
      local fresh = assert(m:refresh())
      assert.equals(id, fresh.id)
    end)

    it("each_machine follows next_cursor through every page", function()
      H.config { org_page_size = 2 }
      local a, b = H.app(c), H.app(c)
      local want = machines(a, 3)
      for _, id in ipairs(machines(b, 2)) do want[#want + 1] = id end
      local before = H.stats().requests.Machines_org_list or 0
      local got = {}
      for m, err in c.orgs:each_machine("personal", { limit = 100 }) do
        assert.is_nil(err)
        assert.truthy(m)
        got[#got + 1] = m.id
      end
      assert.equals(5, #got)
      assert.same(set(want), set(got))
      assert.equals(before + 3, H.stats().requests.Machines_org_list)
    end)

    it("each_machine works inside a task, page by page, while other tasks run", function()
      local a = H.app(c)
      machines(a, 5)
      local n, other = 0, 0
      c:spawn(function()
        for m, err in c.orgs:each_machine("personal") do
          assert(m, err)
          n = n + 1
        end
      end)
      c:spawn(function()
        for _ = 1, 3 do
          assert(c.platform:list_regions())
          other = other + 1
        end
      end)
      assert.is_true(c:run(10))
      assert.equals(5, n)
      assert.equals(3, other)
    end)

    it("each_machine passes the filters on every page", function()
      local a = H.app(c)
      machines(a, 3)
      local n = 0
      for m in c.orgs:each_machine("personal", { summary = true }) do
        n = n + 1
        assert.is_nil(m.config)
      end
      assert.equals(3, n)
      assert.matches("summary=true", H.stats().last_request.uri)
      n = 0
      for _ in c.orgs:each_machine("personal", { region = "nowhere" }) do n = n + 1 end
      assert.equals(0, n)
    end)

    it("each_machine goes past an empty page that still has a next_cursor", function()
      local a = H.app(c)
      machines(a, 3)
      -- limit is advisory: a page may be empty while more remain. "7c30" is the emulator's
      -- cursor for "from the start" (hex of "|0").
      H.fault { op = "Machines_org_list", kind = "status", status = 200, count = 1,
        body = { machines = fly.array(), next_cursor = "7c30" } }
      local n = 0
      for m, err in c.orgs:each_machine("personal") do
        assert.is_nil(err)
        assert.truthy(m)
        n = n + 1
      end
      assert.equals(3, n)
    end)

    it("an unknown organization answers 404, and the iterator gives false, err", function()
      local r, err = c.orgs:list_machines("no-such-org")
      assert.is_nil(r)
      assert.equals(404, err.status)
      assert.equals("not_found", err.code)
      local steps = {}
      for m, e in c.orgs:each_machine("no-such-org") do steps[#steps + 1] = { m, e } end
      assert.equals(1, #steps)
      assert.is_false(steps[1][1])
      assert.is_true(fly.Error.is(steps[1][2]))
      assert.equals(404, steps[1][2].status)
    end)

    it("a failure on a later page ends the loop with false, err after the items so far", function()
      local a = H.app(c)
      machines(a, 5)
      local got, failure = {}, nil
      for m, err in c.orgs:each_machine("personal") do
        if not m then
          failure = err
        else
          got[#got + 1] = m.id
          if #got == 2 then
            H.fault { op = "Machines_org_list", kind = "status", status = 400, count = 1,
              body = { error = "invalid cursor", status = "invalid_argument" } }
          end
        end
      end
      assert.equals(2, #got)
      assert.equals(400, failure.status)
      assert.equals("invalid_argument", failure.code)
    end)

    it("a repeated cursor ends the loop with a protocol error instead of looping forever", function()
      H.fault { op = "Machines_org_list", kind = "status", status = 200, count = 0,
        body = { machines = { { id = "m1", app_name = "x" } }, next_cursor = "same" } }
      local steps = 0
      local last_err
      for m, err in c.orgs:each_machine("personal") do
        steps = steps + 1
        if not m then last_err = err end
        assert.is_true(steps < 10)
      end
      H.control("DELETE", "faults")
      assert.equals("protocol", last_err.code)
    end)

    it("does not quote a repeated cursor (the server's text) in its error", function()
      H.fault { op = "Machines_org_list", kind = "status", status = 200, count = 0,
        body = { machines = {}, next_cursor = "x\27[2J\nfly: forged line" } }
      local last_err
      for m, err in c.orgs:each_machine("personal") do
        if not m then last_err = err end
      end
      H.control("DELETE", "faults")
      assert.equals("protocol", last_err.code)
      assert.is_nil(last_err.message:find("[%c]"), last_err.message)
      assert.is_nil(tostring(last_err):find("forged", 1, true), tostring(last_err))
    end)
  end)

  describe("volumes", function()
    local function volumes(app, n)
      for i = 1, n do
        assert(c.volumes:create(app, { name = "v" .. i, region = "iad" }))
      end
    end

    it("gives one page and Volume objects of their app", function()
      local a = H.app(c)
      volumes(a, 3)
      local page = assert(c.orgs:list_volumes("personal"))
      assert.equals(2, #page.volumes)
      assert.is_string(page.next_cursor)
      local v = page.volumes[1]
      assert.equals(a, v.app_name)
      assert.equals("fly.Volume", getmetatable(v).__name)
      assert.is_true(v:create_snapshot())
      assert.equals(1, #assert(v:list_snapshots()))
    end)

    it("each_volume covers all apps of the org, and include_deleted shows destroyed ones", function()
      local a, b = H.app(c), H.app(c)
      volumes(a, 2)
      volumes(b, 3)
      local n = 0
      for v, err in c.orgs:each_volume("personal") do
        assert.is_nil(err)
        n = n + 1
        assert.is_string(v.app_name)
      end
      assert.equals(5, n)

      local list = assert(c.volumes:list(a))
      assert(list[1]:destroy())
      n = 0
      for _ in c.orgs:each_volume("personal") do n = n + 1 end
      assert.equals(4, n)
      local destroyed = 0
      for v in c.orgs:each_volume("personal", { include_deleted = true }) do
        if v.state == "destroyed" then destroyed = destroyed + 1 end
      end
      assert.equals(1, destroyed)
    end)

    it("each_volume with limit 1 asks one page per volume", function()
      local a = H.app(c)
      volumes(a, 3)
      local before = H.stats().requests.Volumes_org_list or 0
      local n = 0
      for _ in c.orgs:each_volume("personal", { limit = 1 }) do n = n + 1 end
      assert.equals(3, n)
      -- three pages: the last one has no next_cursor
      assert.equals(before + 3, H.stats().requests.Volumes_org_list)
    end)
  end)

  it("raises programmer errors at the caller's line (and at the loop for parameters)", function()
    H.raises("orgs_spec%.lua:%d+: fly: orgs:list_machines: org must be a string",
      function() c.orgs:list_machines(nil) end)
    H.raises("orgs_spec%.lua:%d+: fly: orgs:list_volumes: params must be a table",
      function() c.orgs:list_volumes("personal", "x") end)
    H.raises("orgs_spec%.lua:%d+: fly: orgs:each_volume: org must be a string", function() c.orgs:each_volume(1) end)
    H.raises("orgs_spec%.lua:%d+: fly: orgs:list_machines: unknown parameter 'page' "
      .. "%(it takes cursor, include_deleted, limit, region, ",
      function() c.orgs:list_machines("personal", { page = 2 }) end)
    H.raises("orgs_spec%.lua:%d+: fly: orgs:each_machine: unknown parameter 'page' %(it takes cursor, ",
      function()
        for _ in c.orgs:each_machine("personal", { page = 2 }) do end
      end)
  end)
end)
