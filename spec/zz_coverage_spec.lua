-- Coverage that cannot drift: every operation of the C operation table has a
-- resource method, an emulator handler, a spec that calls it, and a place in
-- the README's API reference. This file runs last (.busted sorts files).
local H = require "helper"
local fly = require "fly"

local ops = fly.operations()

-- operationId -> { namespace, methods... }
local function owners()
  local by_op = {}
  for ns, class in pairs(fly.namespaces) do
    assert.is_table(class.operations, "client." .. ns .. " has no operations map")
    for method, id in pairs(class.operations) do
      assert.is_function(class[method], ("client.%s:%s is in the map but not defined"):format(ns, method))
      local o = by_op[id]
      if o then
        assert.equals(o.ns, ns, id .. " is served by two namespaces")
      else
        o = { ns = ns, methods = {} }
        by_op[id] = o
      end
      o.methods[#o.methods + 1] = method
    end
  end
  return by_op
end

describe("coverage", function()
  it("gives every operation a resource method, in exactly one namespace", function()
    local by_op = owners()
    local known = {}
    for _, op in ipairs(ops) do
      known[op.id] = true
      assert.is_truthy(by_op[op.id], op.id .. " has no resource method")
    end
    for id in pairs(by_op) do assert.is_true(known[id], id .. " is not an operation") end
  end)

  it("has an emulator handler for every operation", function()
    local routes = H.control("GET", "routes")
    local served = {}
    for _, r in ipairs(routes) do served[r.method .. " " .. r.path] = true end
    for _, op in ipairs(ops) do
      assert.is_true(served[op.method .. " " .. op.path], op.id .. " has no emulator handler")
    end
  end)

  it("lists every resource method in the README's API reference", function()
    local f = assert(io.open(H.ROOT .. "/README.md"))
    local readme = f:read("*a")
    f:close()
    for ns, class in pairs(fly.namespaces) do
      for method in pairs(class.operations) do
        local ref = ns .. ":" .. method
        assert.is_truthy(readme:find(ref:gsub("%p", "%%%0") .. "%f[^%w_]"), ref .. " is missing from README.md")
      end
    end
  end)

  it("calls every operation somewhere in the suite", function()
    if not os.getenv("FLY_FULL_SUITE") then
      pending("only meaningful when spec/run runs the whole suite")
      return
    end
    local lifetime = H.stats().lifetime
    local missing = {}
    for _, op in ipairs(ops) do
      if not lifetime[op.method .. " " .. op.path] then missing[#missing + 1] = op.id end
    end
    table.sort(missing)
    assert.same({}, missing)
  end)
end)
