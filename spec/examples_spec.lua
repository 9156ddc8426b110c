-- Every example runs to the end against the emulator.
local H = require "helper"

describe("the examples", function()
  for file in io.popen("ls " .. H.ROOT .. "/examples/*.lua"):lines() do
    it("run: " .. file:match("[^/]+$"), function()
      H.reset()
      local cmd = ("cd %s && FLY_API_HOSTNAME=%s FLY_API_TOKEN=%s %s %s 2>&1"):format(H.ROOT, H.plain_url(), H.TOKEN,
        os.getenv("FLY_SPEC_LUA") or "lua5.4", file)
      local out, ok = H.capture(cmd)
      assert(ok, out)
    end)
  end
end)
