-- The operation table in the C core.
local fly = require "fly"

describe("the operation table", function()
  local ops = fly.operations()

  it("lists all 98 operations of the API, each once", function()
    assert.equals(98, #ops)
    local seen, routes = {}, {}
    for _, op in ipairs(ops) do
      assert.is_nil(seen[op.id], op.id)
      seen[op.id] = true
      local route = op.method .. " " .. op.path
      assert.is_nil(routes[route], route)
      routes[route] = true
      assert.matches("^/v1/", op.path)
    end
    assert.is_true(seen.Machines_update_metadata and seen.Machines_patch_metadata)
  end)

  it("declares every path parameter of each template, as required", function()
    for _, op in ipairs(ops) do
      local declared = {}
      for _, p in ipairs(op.params) do
        if p["in"] == "path" then
          declared[p.name] = true
          assert.is_true(p.required, op.id .. " " .. p.name)
          assert.truthy(op.path:find("{" .. p.name .. "}", 1, true), op.id .. " " .. p.name)
        end
      end
      for name in op.path:gmatch("{([^}]+)}") do assert.is_true(declared[name], op.id .. " " .. name) end
    end
  end)

  it("marks GET, PUT and DELETE as idempotent and the rest not", function()
    for _, op in ipairs(ops) do
      local m = op.method
      assert.equals(m == "GET" or m == "PUT" or m == "DELETE", op.idempotent, op.id)
    end
  end)

  it("names the lease nonce header lease_nonce", function()
    for _, op in ipairs(ops) do
      for _, p in ipairs(op.params) do
        if p["in"] == "header" then
          assert.equals("lease_nonce", p.name)
          assert.equals("fly-machine-lease-nonce", p.wire)
        end
      end
    end
  end)

  it("carries Fly's published rate limits and their keys", function()
    local by_id = {}
    for _, op in ipairs(ops) do by_id[op.id] = op end
    assert.same({ "get_machine", 5, 10, "machine_id" }, {
      by_id.Machines_show.rate_class, by_id.Machines_show.rate, by_id.Machines_show.burst,
      by_id.Machines_show.scope })
    assert.same({ "default", 1, 3, "machine_id" }, {
      by_id.Machines_start.rate_class, by_id.Machines_start.rate, by_id.Machines_start.burst,
      by_id.Machines_start.scope })
    assert.equals("app_name", by_id.Machines_create.scope)
    assert.equals("app_delete", by_id.Apps_delete.rate_class)
    assert.is_nil(by_id.Apps_delete.scope)
    assert.near(100 / 60, by_id.Apps_delete.rate, 1e-9)
    assert.equals("Machines_update_metadata", by_id.Machines_patch_metadata.action)
  end)
end)
