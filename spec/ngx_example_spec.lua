-- examples/openresty/nginx.conf (the README's OpenResty configuration) in a fresh nginx with
-- two workers against the emulator: only the checkout's path and the port are filled in, the
-- token and endpoint come from the environment as the configuration expects.
local harness = require "nginx.harness"
local H = require "helper"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- Runs `count` requests at once; returns the lines answered and the seconds it took.
local function concurrently(base, paths)
  local urls = {}
  for i, p in ipairs(paths) do urls[i] = ("'%s%s'"):format(base, p) end
  local start = require("socket").gettime()
  local p = assert(io.popen("curl -s --parallel --parallel-immediate --parallel-max 100 "
    .. table.concat(urls, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  local lines = {}
  for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines, require("socket").gettime() - start
end

describe("examples/openresty/nginx.conf #nginx", function()
  local prefix, base, c

  setup(function()
    local conf = read(harness.ROOT .. "/examples/openresty/nginx.conf")
    -- the modules where this system keeps them (Debian: /usr/lib/nginx/modules)
    local modules
    for _, d in ipairs { "/usr/lib/nginx/modules", "/usr/share/nginx/modules" } do
      if io.open(d .. "/ngx_http_lua_module.so") then modules = d break end
    end
    conf = conf:gsub("/usr/lib/nginx/modules", modules):gsub("/path/to/fly%-machines", harness.ROOT)
    local user = io.popen("id -u"):read("*l") == "0"
      and ("user %s %s;"):format(io.popen("id -un"):read("*l"), io.popen("id -gn"):read("*l")) or ""
    for _ = 1, 20 do
      local port = H.random_port() -- not math.random: another spec may have seeded it with a constant
      prefix = ("%s/fly-ngxexample-%d"):format(os.getenv("TMPDIR") or "/tmp", port)
      sh("rm -rf " .. prefix .. " && mkdir -p " .. prefix)
      local f = assert(io.open(prefix .. "/nginx.conf", "wb"))
      f:write((conf:gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")))
      f:close()
      local cmd = ("FLY_API_TOKEN='%s' FLY_API_HOSTNAME='%s' nginx -p %s -c %s/nginx.conf -g 'daemon on; %s' "
        .. "2>%s/start.log"):format(H.TOKEN, H.plain_url() or H.url(), prefix, prefix, user, prefix)
      if sh(cmd) then
        base = "http://127.0.0.1:" .. port
        for _ = 1, 100 do
          if select(2, require("socket.http").request(base .. "/app?name=x")) == 404 then return end
          sh("sleep 0.05")
        end
        error("the example did not answer:\n" .. (read(prefix .. "/error.log") or ""))
      end
      if not read(prefix .. "/start.log"):find("Address already in use", 1, true) then
        error("nginx did not start:\n" .. read(prefix .. "/start.log"))
      end
    end
  end)

  teardown(function()
    local pid = prefix and io.open(prefix .. "/nginx.pid")
    if pid then
      sh("kill -QUIT " .. pid:read("*l"))
      pid:close()
      sh("sleep 0.3")
    end
    if prefix then sh("rm -rf " .. prefix) end
  end)

  before_each(function()
    H.reset()
    c = H.client { base_url = H.plain_url() or H.url() }
  end)
  after_each(function() c:close() end)

  it("is the configuration the README gives", function()
    local conf = read(harness.ROOT .. "/examples/openresty/nginx.conf")
    assert.truthy(read(harness.ROOT .. "/README.md"):find("```nginx\n" .. conf .. "```", 1, true),
      "README's OpenResty configuration differs from examples/openresty/nginx.conf")
  end)

  it("serves 20 concurrent requests that each make one 200 ms call", function()
    local prefix_name = H.name("ex") .. "-"
    local paths = {}
    for i = 1, 20 do
      H.app(c, prefix_name .. i)
      paths[i] = "/app?name=" .. prefix_name .. i
    end
    H.fault { op = "Apps_show", kind = "delay", delay = 0.2, count = 20 }
    local lines, seconds = concurrently(base, paths)
    assert.equals(20, #lines)
    for _, line in ipairs(lines) do assert.matches("^" .. prefix_name:gsub("%-", "%%-") .. "%d+ deployed$", line) end
    print(("\n  examples/openresty: 20 concurrent 200 ms calls in %.2f s"):format(seconds))
  end)

  it("answers 400 with the usage when a parameter is missing", function()
    local usages = { ["/app"] = "usage: /app?name=NAME", ["/machine?app=x"] = "usage: /machine?app=NAME&id=ID" }
    for path, usage in pairs(usages) do
      local body, status = require("socket.http").request(base .. path)
      assert.equals(400, status)
      assert.equals(usage .. "\n", body)
    end
  end)

  it("draws no 429 from the server for 30 concurrent gets of one machine", function()
    local app = H.app(c)
    local m = assert(c.machines:create(app, { config = { image = "nginx" } }))
    H.config { rate_limits = { enabled = true } }
    local paths = {}
    for i = 1, 30 do paths[i] = ("/machine?app=%s&id=%s&i=%d"):format(app, m.id, i) end
    local lines = concurrently(base, paths)
    assert.equals(30, #lines)
    for _, line in ipairs(lines) do assert.matches("^" .. m.id .. " %a+$", line) end
    local stats = H.stats()
    assert.equals(0, stats.rate_limited)
    assert.equals(30, stats.requests.Machines_show)
    assert.is_nil(read(prefix .. "/error.log"):find("no lua_shared_dict", 1, true))
  end)
end)
