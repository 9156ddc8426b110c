-- The rockspec installs every module, and the installed module loads from anywhere.
local H = require "helper"

describe("the rock", function()
  it("installs with luarocks and loads from another directory", function()
    local tree = os.tmpname()
    os.remove(tree)
    local rockspec = H.ROOT .. "/rockspec/fly-machines-scm-1.rockspec"
    local cmd = ("cd %s && luarocks --lua-version=5.4 --tree=%s make --deps-mode=none %s >/dev/null 2>&1")
      :format(H.ROOT, tree, rockspec)
    assert.is_true(os.execute(cmd))
    local check = ([[cd /tmp && env -u LD_PRELOAD ]]
      .. [[LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;/usr/share/lua/5.4/?.lua' ]]
      .. [[LUA_CPATH='%s/lib/lua/5.4/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so' lua5.4 -e '
        local fly = require "fly"
        for f in io.popen("ls %s/lua/fly"):lines() do require("fly." .. f:gsub("%%.lua$", "")) end
        print(fly._VERSION, package.searchpath("fly.core", package.cpath))' 2>&1]])
      :format(tree, tree, tree, H.ROOT)
    local p = io.popen(check)
    local out = p:read("a")
    p:close()
    os.execute("rm -rf " .. tree)
    assert.matches("^%d+%.%d+%.%d+\t" .. tree:gsub("%p", "%%%0") .. "/lib/lua/5%.4/fly/core%.so\n$", out)
  end)
end)
