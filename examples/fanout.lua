--- Many machines at once: create a fleet, start it and wait for all of it in
-- parallel on one libcurl loop, then tear it down. Rate limits are respected
-- by the client itself (each machine has its own bucket).
--
-- Against the emulator: `spec/emulator/with-emulator lua5.4 examples/fanout.lua`.
-- Against Fly: FLY_API_TOKEN=… FLY_ORG=… lua5.4 examples/fanout.lua
local fly = require "fly"

local client = assert(fly.new())
local org = os.getenv("FLY_ORG") or "personal"
local app = os.getenv("FLY_APP") or ("fanout-" .. os.time())
local count = tonumber(os.getenv("FLY_COUNT") or "") or 8

assert(client.apps:create { app_name = app, org_slug = org })
print(("app %s: creating %d machines"):format(app, count))

local ok, err = pcall(function()
  local names = {}
  for i = 1, count do names[i] = ("worker-%02d"):format(i) end

  local t0 = fly.now()
  local machines, errors = client:map(names, function(name)
    local m, e = client.machines:create(app, { name = name, config = { image = "nginx" } })
    if not m then return nil, e end
    local state, werr = m:wait("started", { timeout = 120 })
    if not state then return nil, werr end
    return m
  end, { concurrency = 8 })
  for i, name in ipairs(names) do
    print(("  %-10s %s"):format(name, machines[i] and ("started " .. machines[i].id) or tostring(errors[i])))
  end
  print(("%d machines started in %.2f s"):format(#machines, fly.now() - t0))

  local _, stop_errors = client:map(machines, function(m)
    local done, e = m:stop()
    if not done then return nil, e end
    return m:wait("stopped", { timeout = 60 }) -- state, version; or nil, err
  end)
  for _, e in pairs(stop_errors) do print("  stop failed: " .. tostring(e)) end
  print(next(stop_errors) and "some did not stop" or "all stopped")
end)

client.apps:destroy(app) -- the machines go with the app
print(("app %s destroyed"):format(app))
if not ok then error(err, 0) end
