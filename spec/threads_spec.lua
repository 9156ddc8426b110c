-- Several Lua states on several threads, as in a game server: rate-limit
-- buckets are shared by the whole process, everything else stays per state.
local H = require "helper"

describe("Lua states on threads", function()
  before_each(H.reset)

  it("share rate-limit buckets, so together they stay within the limit", function()
    local c = H.client()
    local name = H.app(c)
    H.config { rate_limits = { enabled = true, scale = 20 } }
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
      local index = ...
      local fly = require "fly"
      local c = assert(fly.new { token = %q, base_url = %q, rate_limit = { scale = 20 } })
      for _ = 1, 6 do assert(c.apps:get(%q)) end
      c:close()
      -- loading the module again in the same state is harmless
      package.loaded["fly.core"] = nil
      assert(require("fly.core").now() > 0, index)
    ]]):format(H.TOKEN, H.plain_url(), name))
    f:close()
    local bin = os.getenv("FLY_SPEC_THREADS") or (H.ROOT .. "/build/spec/threads")
    local ok = H.sh(("%s 4 %s"):format(bin, script))
    os.remove(script)
    assert.is_true(ok)
    local stats = H.stats()
    assert.equals(24, stats.executed.Apps_show)
    assert.equals(0, stats.rate_limited)
  end)
end)
