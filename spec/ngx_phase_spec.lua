-- fly.ngx.phase: which nginx phases allow cosockets, checked against what nginx really does in
-- each phase, and the programmer error for the others.
local harness = require "nginx.harness"

-- In a phase: what fly.ngx.phase claims, whether a cosocket really connects, and check's error.
local PROBE = [[
  local phase = require "fly.ngx.phase"
  local claim, name = phase.cosockets()
  local real = pcall(function()
    local s = ngx.socket.tcp()
    assert(s:connect("127.0.0.1", @PORT@))
    s:close()
  end)
  local _, err = pcall(phase.check)
  ngx.shared.fly_spec:set("phase:" .. name, tostring(claim) .. "|" .. tostring(real) .. "|" .. tostring(err))
]]

describe("fly.ngx.phase #nginx", function()
  local n
  setup(function()
    local probe = PROBE
    n = harness.start {
      workers = 1,
      http = ([[
        init_by_lua_block { %s }
        init_worker_by_lua_block { %s ngx.timer.at(0, function() %s end) }
        upstream probe_balancer {
          server 127.0.0.1:@PORT@;
          balancer_by_lua_block { %s }
        }
      ]]):format(probe, probe, probe, probe),
      server = ([[
        location = /phases {
          set_by_lua_block $x { %s return "" }
          rewrite_by_lua_block { %s }
          access_by_lua_block { %s }
          content_by_lua_block { %s ngx.say("ok") }
          header_filter_by_lua_block { %s }
          body_filter_by_lua_block { %s }
          log_by_lua_block { %s }
        }
        location = /balanced { proxy_pass http://probe_balancer/__health; }
      ]]):format(probe, probe, probe, probe, probe, probe, probe),
    }
  end)
  teardown(function() if n then n:stop() end end)

  it("knows where cosockets work, as nginx does", function()
    assert.equal(200, (n:request("GET", "/phases")))
    assert.equal(200, (n:request("GET", "/balanced")))
    local results = n:run [[
      ngx.sleep(0.05) -- the log phase of the requests above
      local out = {}
      for _, k in ipairs(ngx.shared.fly_spec:get_keys(0)) do
        if k:find("^phase:") then out[k:sub(7)] = ngx.shared.fly_spec:get(k) end
      end
      return out
    ]]
    local expect_allowed = { rewrite = true, access = true, content = true, timer = true }
    for _, name in ipairs { "init", "init_worker", "timer", "set", "rewrite", "access", "content",
                            "header_filter", "body_filter", "log", "balancer" } do
      local r = results[name]
      assert.is_string(r, "no result from phase " .. name)
      local claim, real, err = r:match("^(%a+)|(%a+)|(.*)$")
      assert.equal(real, claim, "fly.ngx.phase is wrong about " .. name)
      assert.equal(tostring(expect_allowed[name] == true), claim, name)
      if claim == "true" then
        assert.equal("nil", err)
      else
        assert.truthy(err:find("nginx's '" .. name .. "' phase", 1, true), err)
        assert.truthy(err:find("ngx.timer.at", 1, true), err)
      end
    end
  end)

  it("raises outside nginx too", function()
    local phase = require "fly.ngx.phase"
    assert.is_false((phase.cosockets()))
    assert.has_error(function() phase.check() end)
  end)
end)
