-- The fly-emulator command, as a user gets it: installed with the rock into a private tree and
-- run from another directory.
local H = require "helper"

-- Runs a shell command; returns its output (stdout and stderr) and exit status.
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"status=$?\""))
  local out = p:read("*a")
  p:close()
  local text, status = out:match("^(.-)status=(%d+)\n$")
  return text, tonumber(status)
end

local q = H.quote

describe("fly-emulator", function()
  local tree, bin, install_out, install_status, env

  setup(function()
    tree = os.tmpname()
    os.remove(tree)
    local ok
    install_out, ok = H.make_rock("5.4", tree)
    install_status = ok and 0 or 1
    bin = tree .. "/bin/fly-emulator"
    -- what `eval "$(luarocks path)"` sets, and nothing of this checkout
    env = ("cd / && env -u LD_PRELOAD -u FLY_API_HOSTNAME -u FLY_API_TOKEN -u FLY_EMULATOR_TOKEN "
      .. "LUA_PATH=%s LUA_CPATH=%s ")
      :format(q(tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua;;"),
              q(tree .. "/lib/lua/5.4/?.so;;"))
  end)

  teardown(function()
    if tree then os.execute("rm -rf " .. q(tree)) end
  end)

  it("installs with the rock, without a false missing-dependency message", function()
    assert.equal(0, install_status, install_out)
    assert.is_nil(install_out:find("Missing dependencies", 1, true), install_out)
    assert.matches("fly%-machines scm%-1 is now installed", install_out)
  end)

  it("runs a command against a fresh emulator, stops it, and exits with the command's status", function()
    local script = [[
      local fly = require "fly"
      local c = assert(fly.new())
      assert(c.apps:create { app_name = "cli-app", org_slug = "personal" })
      local apps = assert(c.apps:list { org_slug = "personal" }).apps
      print("url=" .. c:base_url() .. " apps=" .. #apps .. " fly=" .. package.searchpath("fly", package.path))
      os.exit(7)
    ]]
    local out, status = sh(env .. q(bin) .. " run -- lua5.4 -e " .. q(script))
    assert.equal(7, status, out)
    local url = out:match("url=(http://127%.0%.0%.1:%d+)")
    assert.truthy(url, out)
    assert.matches("apps=1 fly=" .. (tree .. "/share/lua/5.4/fly/init.lua"):gsub("%p", "%%%0"), out)
    -- stopped: its directory is gone and nothing answers
    local port = url:match("%d+$")
    local _, gone = sh("test -e " .. q((os.getenv("TMPDIR") or "/tmp") .. "/fly-emulator-" .. port))
    assert.equal(1, gone)
    local _, refused = sh("curl -s -o /dev/null --max-time 2 " .. url .. "/__emulator/health")
    assert.equal(7, refused)
  end)

  it("run passes the token it was given; the emulator accepts only that one", function()
    local script = [[
      local fly = require "fly"
      local ok = assert(fly.new()).apps:list { org_slug = "personal" }
      local _, err = assert(fly.new { token = "wrong" }).apps:list { org_slug = "personal" }
      io.write(os.getenv("FLY_API_TOKEN"), " ", tostring(ok ~= nil), " ", tostring(err.status), "\n")
    ]]
    local out, status = sh(env .. q(bin) .. " run --token s3cret -- lua5.4 -e " .. q(script))
    assert.equal(0, status, out)
    assert.matches("s3cret true 401\n", out, 1, true)
  end)

  it("start prints the URL and token, stop stops it", function()
    local out, status = sh(env .. q(bin) .. " start --token tok 2>/dev/null")
    assert.equal(0, status, out)
    local url = out:match("^FLY_API_HOSTNAME=(http://127%.0%.0%.1:%d+)\nFLY_API_TOKEN=tok\n$")
    assert.truthy(url, out)
    local _, up = sh("curl -fs -o /dev/null --max-time 5 " .. url .. "/__emulator/health")
    assert.equal(0, up)
    local sout, sstatus = sh(env .. q(bin) .. " stop " .. url)
    assert.equal(0, sstatus, sout)
    local _, refused = sh("curl -s -o /dev/null --max-time 2 " .. url .. "/__emulator/health")
    assert.equal(7, refused)
  end)

  it("env prints export lines for eval; stop then finds it through FLY_API_HOSTNAME", function()
    local out, status = sh(env .. "sh -c " .. q('eval "$(' .. q(bin) .. [[ env --token "it's")"
      curl -fs -H "Authorization: Bearer $FLY_API_TOKEN" "$FLY_API_HOSTNAME/v1/apps?org_slug=personal"
      echo; echo "token=$FLY_API_TOKEN"
      ]] .. q(bin) .. [[ stop && curl -s --max-time 2 "$FLY_API_HOSTNAME/__emulator/health"
      echo "curl=$?"]]))
    assert.equal(0, status, out)
    assert.matches('"total_apps":0', out, 1, true)
    assert.matches("token=it's\n", out, 1, true)
    assert.matches("curl=7\n", out, 1, true)
  end)

  it("runs the README's first screen as written", function()
    local f = assert(io.open(H.ROOT .. "/README.md"))
    local readme = f:read("*a")
    f:close()
    local section = assert(readme:match("\n## Try it without a Fly account\n(.-)\n## "))
    local script = assert(section:match("```lua\n(.-)```"), "hello.lua")
    local commands = assert(section:match("```sh\n(.-)```"), "the shell commands")
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. q(dir)))
    f = assert(io.open(dir .. "/hello.lua", "w"))
    f:write(script)
    f:close()
    local out, status = sh(env .. "PATH=" .. q(tree .. "/bin:" .. os.getenv("PATH")) .. " sh -c "
      .. q("cd " .. q(dir) .. "\n" .. commands .. "\nfly-emulator stop"))
    os.execute("rm -rf " .. q(dir))
    assert.equal(0, status, out)
    -- two runs of the script (the second one with FLY_DEBUG=1), each printing the exec's result
    local runs = 0
    for line in out:gmatch("[^\n]*\n") do
      if line:match("^%x+\tweb\t3\n$") then runs = runs + 1 end
    end
    assert.equal(2, runs, out)
    -- FLY_DEBUG=1: one line per attempt on stderr, the exec's among them
    assert.matches("\nfly: POST /v1/apps/hello/machines/%x+/exec 200 ", out)
  end)

  it("stop without a URL stops the only emulator running, and refuses to guess between two", function()
    local tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir " .. q(tmp)))
    local e = env .. "TMPDIR=" .. q(tmp) .. " "
    local out, status = sh(e .. q(bin) .. " stop")
    assert.equal(1, status)
    assert.matches("no emulator is running", out, 1, true)
    local a = sh(e .. q(bin) .. " start 2>/dev/null"):match("http://[%d.:]+")
    local b = sh(e .. q(bin) .. " start 2>/dev/null"):match("http://[%d.:]+")
    out, status = sh(e .. q(bin) .. " stop")
    assert.equal(2, status)
    assert.matches("several emulators are running; name one: ", out, 1, true)
    assert.matches(a, out, 1, true)
    assert.matches(b, out, 1, true)
    assert.equal(0, select(2, sh(e .. q(bin) .. " stop " .. a)))
    assert.equal(0, select(2, sh(e .. q(bin) .. " stop")))
    local left = sh("ls -A " .. q(tmp))
    os.execute("rm -rf " .. q(tmp))
    assert.equal("", left)
  end)

  it("explains what it was asked wrongly", function()
    local out, status = sh(env .. q(bin) .. " run")
    assert.equal(2, status)
    assert.matches("fly%-emulator: run: no command given", out)
    out, status = sh(env .. q(bin) .. " launch")
    assert.equal(2, status)
    assert.matches("unknown command 'launch'", out, 1, true)
    out, status = sh(env .. q(bin) .. " start --port http")
    assert.equal(2, status)
    assert.matches("--port needs a number", out, 1, true)
    out, status = sh(env .. q(bin) .. " stop https://api.machines.dev")
    assert.equal(2, status)
    assert.matches("not an emulator URL", out, 1, true)
  end)

  it("says where its files are missing", function()
    local out, status = sh(env .. "FLY_EMULATOR_DIR=/nonexistent " .. q(bin) .. " start")
    assert.equal(1, status)
    assert.matches("FLY_EMULATOR_DIR=/nonexistent has no emulator", out, 1, true)
  end)
end)
