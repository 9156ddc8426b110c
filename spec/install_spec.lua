-- The rockspec installs every module, and the installed module loads from anywhere,
-- for the Lua the suite runs under (LuaJIT takes the rock for Lua 5.1).
local H = require "helper"

-- the interpreter and the Lua version luarocks knows it by
local function target()
  local lua = (os.getenv("FLY_SPEC_LUA") or "lua5.4"):match("[^/]+$")
  if lua == "luajit" then return "luajit", "5.1" end
  local v = lua:match("^lua(5%.%d)$")
  if v then return lua, v end
  return "lua5.4", "5.4" -- a sanitizer build of Lua 5.4
end

describe("the rock", function()
  it("installs with luarocks and loads from another directory", function()
    local lua, version = target()
    local tree = os.tmpname()
    os.remove(tree)
    local log, ok = H.make_rock(version, tree)
    assert(ok, log)
    local check = ([[cd /tmp && env -u LD_PRELOAD ]]
      .. [[LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;/usr/share/lua/%s/?.lua' ]]
      .. [[LUA_CPATH='%s/lib/lua/%s/?.so;/usr/lib/x86_64-linux-gnu/lua/%s/?.so' %s -e '
        local fly = require "fly"
        for f in io.popen("ls %s/lua/fly"):lines() do require("fly." .. f:gsub("%%.lua$", "")) end
        local found -- where fly.core comes from (package.searchpath is not in Lua 5.1)
        for t in package.cpath:gmatch("[^;]+") do
          local f = io.open((t:gsub("%%?", "fly/core")))
          if f and not found then found = t:gsub("%%?", "fly/core") end
          if f then f:close() end
        end
        print(fly._VERSION, found)' 2>&1]])
      :format(tree, version, tree, version, version, tree, version, version, lua, H.ROOT)
    local out = H.capture(check)
    os.execute("rm -rf " .. tree)
    assert.matches("^%d+%.%d+%.%d+\t" .. tree:gsub("%p", "%%%0") .. "/lib/lua/" .. version:gsub("%.", "%%.")
      .. "/fly/core%.so\n$", out)
  end)
end)
