-- Tasks inside nginx that nginx ends, or that are cancelled from where nginx lets no thread be
-- killed (one worker, against the emulator): the token a killed task held goes back, a
-- per-worker client does not wait for tasks nginx ended, a cancel from the log phase wakes the
-- task, and joined tasks do not pile up in a long handler.
local harness = require "nginx.harness"
local H = require "helper"
local socket = require "socket"

-- The emulator's plain HTTP/1.1 listener (the same state as H.url(), also under FLY_SPEC_TLS).
local function emulator() return H.plain_url() or H.url() end

describe("tasks nginx ends #nginx", function()
  local n, c

  setup(function()
    n = harness.start {
      workers = 1,
      main = ("env FLY_API_TOKEN=%s; env FLY_API_HOSTNAME=%s;"):format(H.TOKEN, emulator()),
      http = "lua_shared_dict fly_limits 1m;",
      server = [[
        location = /spawn-exit {
          content_by_lua_block {
            _G.per_worker = _G.per_worker or assert(require("fly").new())
            _G.per_worker:spawn(function() _G.per_worker:sleep(30) end)
            ngx.say("spawned")
            ngx.exit(200)
          }
        }
        location = /join-sleeper {
          content_by_lua_block {
            local c = assert(require("fly").new())
            local start = ngx.now()
            _G.sleeper = c:spawn(function() c:sleep(3) end)
            local _, err = _G.sleeper:join()
            ngx.update_time()
            ngx.say(("%.2f %s"):format(ngx.now() - start, err and err.code))
          }
        }
        location = /cancel-in-log {
          content_by_lua_block { ngx.say("ok") }
          log_by_lua_block { _G.sleeper:cancel() }
        }
      ]],
    }
  end)
  teardown(function() if n then n:stop() end end)

  before_each(function()
    H.reset()
    c = H.client { base_url = emulator() }
  end)
  after_each(function() c:close() end)

  it("gives back the token of a task killed while it waited its turn", function()
    local app = H.app(c)
    local took = n:run(([[
      local c = assert(require("fly").new())
      for _ = 1, 3 do assert(c.apps:get(%q)) end -- Get App allows 3 at once, then 1 a second
      local waiting = c:spawn(function() return c.apps:get(%q) end) -- its turn in 1 s
      ngx.sleep(0.1)
      assert(waiting:cancel()) -- the handler spawned it: nginx kills its light thread
      local start = ngx.now()
      assert(c.apps:get(%q)) -- the turn the killed task gave back
      ngx.update_time()
      return ngx.now() - start
    ]]):format(app, app, app))
    -- its turn comes about 0.9 s later; had the killed task kept its own, about 1.9 s
    assert.is_true(took < 1.5, ("the next call waited %.2f s"):format(took))
    assert.equals(4, H.stats().requests.Apps_show) -- the killed task's call never went out
  end)

  it("a per-worker client does not wait for a task whose request nginx ended", function()
    local status = n:request("GET", "/spawn-exit")
    assert.equals(200, status)
    local count, finished, task_status = n:run [[
      local c = _G.per_worker
      local count = require("fly.loop").count(c)
      return count, c:run(2), "ran"
    ]]
    assert.equals(0, count)
    assert.is_true(finished)
    assert.equals("ran", task_status)
  end)

  it("a cancel from the log phase, where no kill works, wakes the sleeping task", function()
    local start = socket.gettime()
    local p = assert(io.popen(("curl -s '%s/join-sleeper'"):format(n.url)))
    socket.sleep(0.3)
    assert.equals(200, (n:request("GET", "/cancel-in-log")))
    local out = p:read("*a") -- nginx answers once the request's light threads have ended
    p:close()
    local took = socket.gettime() - start
    assert.equals("cancelled", out:match("^%S+ (%S+)"))
    assert.is_true(took < 2, ("the task slept on: the request took %.2f s"):format(took))
  end)

  it("frees the light threads of joined tasks in a long handler", function()
    local grew = n:run [[
      local c = assert(require("fly").new())
      local function kb() collectgarbage(); collectgarbage(); return collectgarbage("count") end
      for i = 1, 100 do assert(c:spawn(function() return i end):join()) end
      local before = kb()
      for i = 1, 5000 do assert(c:spawn(function() return i end):join()) end
      return kb() - before
    ]]
    -- about 1 KB a task when they pile up
    assert.is_true(grew < 1024, ("the heap grew %.0f KB over 5000 joined tasks"):format(grew))
  end)
end)
