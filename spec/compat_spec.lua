-- fly.compat: the one place the differences between Lua 5.1-5.4 and LuaJIT are handled.
local compat = require "fly.compat"

describe("fly.compat", function()
  it("packs and unpacks with nils and the count", function()
    local t = compat.pack(1, nil, 3, nil)
    assert.equals(4, t.n)
    assert.same({ 1, nil, 3, nil }, { compat.unpack(t, 1, t.n) })
    assert.equals(4, select("#", compat.unpack(t, 1, t.n)))
  end)

  it("knows whole numbers", function()
    assert.equals(3, compat.tointeger(3))
    assert.equals(3, compat.tointeger(3.0))
    assert.is_nil(compat.tointeger(3.5))
    assert.is_nil(compat.tointeger("3"))
    assert.is_nil(compat.tointeger(math.huge))
    assert.is_nil(compat.tointeger(0 / 0))
    assert.is_true(compat.is_integer(0))
    assert.is_true(compat.is_integer(2147483648))
    assert.is_false(compat.is_integer(1.5))
    assert.is_false(compat.is_integer("1"))
    -- 1.0 is a float where Lua has integers, a whole double elsewhere
    assert.equals(not compat.has_integers, compat.is_integer(1.0))
  end)

  it("pcall lets the function yield, and running sees the enclosing coroutine", function()
    local co
    co = coroutine.create(function()
      assert.equals(co, compat.running())
      local ok, a, b = compat.pcall(function(x)
        assert.equals(co, compat.running())
        assert.is_true(compat.can_yield())
        local got = coroutine.yield("waiting")
        return x, got
      end, "x")
      assert.is_true(ok)
      local failed, err = compat.pcall(function() coroutine.yield("again") error("boom", 0) end)
      assert.is_false(failed)
      assert.equals("boom", err)
      return a, b
    end)
    assert.same({ true, "waiting" }, { coroutine.resume(co) })
    assert.same({ true, "again" }, { coroutine.resume(co, "resumed") })
    assert.same({ true, "x", "resumed" }, { coroutine.resume(co) })
    assert.is_nil(compat.running())
    assert.is_false(compat.can_yield())
    local ok, err = compat.pcall(error, "outside", 0)
    assert.is_false(ok)
    assert.equals("outside", err)
  end)

  -- in each place, can_yield says whether a yield from there works
  local places = {
    body = function(probe) probe() end,
    ["for iterator"] = function(probe)
      for _ in function(_, done) if done then return nil end probe() return 1 end do end
    end,
    ["for body"] = function(probe) for _ in pairs { 1 } do probe() end end,
    ["pcall"] = function(probe) pcall(probe) end,
    ["compat.pcall"] = function(probe) compat.pcall(probe) end,
    ["sort comparator"] = function(probe)
      local done = false
      table.sort({ 2, 1 }, function(a, b)
        if not done then done = true probe() end
        return a < b
      end)
    end,
    ["metamethod"] = function(probe) local _ = setmetatable({}, { __index = function() probe() end }).x end,
  }
  for name, place in pairs(places) do
    it("can_yield tells whether a yield works: " .. name, function()
      local said
      local co = coroutine.create(function()
        place(function()
          said = compat.can_yield()
          coroutine.yield("yielded")
        end)
      end)
      local ok, res = coroutine.resume(co)
      assert.is_boolean(said)
      -- a pcall that cannot pass the yield on catches its error itself
      local yielded = ok and res == "yielded"
      if name == "metamethod" and _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
        -- Lua 5.1 cannot yield out of a metamethod, and nothing tells that it runs in one
        assert.is_false(yielded)
        return pending("Lua 5.1: a wait inside a metamethod raises, as documented")
      end
      assert.equals(yielded, said, name .. ": " .. tostring(res))
    end)
  end
  it("can_yield is false on the main thread", function()
    assert.is_false(compat.can_yield())
  end)

  it("close_coroutine closes suspended coroutines where the Lua can", function()
    local closed = false
    local co = coroutine.create(function() coroutine.yield() closed = true end)
    coroutine.resume(co)
    compat.close_coroutine(co)
    assert.is_false(closed)
    assert.is_true(coroutine.status(co) == "dead" or coroutine.status(co) == "suspended")
  end)
end)
