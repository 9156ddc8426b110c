--- A tour of the client: create an app, list, get, destroy it.
--
-- Against the emulator: `make demo`. Against Fly: set FLY_API_TOKEN (and
-- FLY_ORG, default "personal") and run `lua5.4 examples/quickstart.lua`.
local fly = require "fly"

local client = assert(fly.new())
local org = os.getenv("FLY_ORG") or "personal"
local app_name = os.getenv("FLY_APP") or ("quickstart-" .. os.time())

local function step(fmt, ...)
  io.write(("  %-28s"):format(fmt:format(...)))
  io.flush()
end

local function check(res, err)
  if res == nil then
    print("failed")
    print("  " .. tostring(err))
    os.exit(1)
  end
  print("ok")
  return res
end

print(("fly-machines %s talking to %s"):format(fly._VERSION, client:base_url()))

step("create app %s", app_name)
check(client.apps:create { app_name = app_name, org_slug = org })

step("list apps in %s", org)
local list = check(client.apps:list { org_slug = org })
for _, app in ipairs(list.apps) do
  print(("    - %s (%d machines)"):format(app.name, math.tointeger(app.machine_count) or 0))
end

step("get app %s", app_name)
local app = check(client.apps:get(app_name))
print(("    id %s, network %s, org %s"):format(app.id, tostring(app.network),
  app.organization and app.organization.slug or "?"))

step("destroy app %s", app_name)
check(client.apps:destroy(app_name))

step("get it again")
local gone, err = client.apps:get(app_name)
print(gone == nil and "gone" or "still there")
if err then print("    " .. tostring(err)) end

client:close()
print("done")
