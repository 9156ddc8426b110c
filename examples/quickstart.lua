--- A tour of the client: an app, a machine through its life, a lease, and cleanup.
--
-- Against the emulator: `make demo`. Against Fly: set FLY_API_TOKEN (and
-- FLY_ORG, default "personal") and run `lua5.4 examples/quickstart.lua`.
-- Whatever fails, the machine and the app are destroyed at the end.
local fly = require "fly"

local client = assert(fly.new())
local org = os.getenv("FLY_ORG") or "personal"
local app_name = os.getenv("FLY_APP") or ("quickstart-" .. os.time())
local image = os.getenv("FLY_IMAGE") or "nginx"

local function step(fmt, ...)
  io.write(("  %-34s"):format(fmt:format(...)))
  io.flush()
end

-- Prints "ok" and returns the results, or raises the error (caught below, after cleanup).
local function check(res, ...)
  if res == nil then
    print("failed")
    error(select(1, ...) or "failed", 0)
  end
  print("ok")
  return res, ...
end

-- Like check, but prints the value instead of "ok".
local function show(res, ...)
  if res == nil then
    print("failed")
    error(select(1, ...) or "failed", 0)
  end
  print(tostring(res))
  return res, ...
end

print(("fly-machines %s talking to %s"):format(fly._VERSION, client:base_url()))

local app_created, machine

local function tour()
  step("create app %s", app_name)
  check(client.apps:create { app_name = app_name, org_slug = org })
  app_created = true

  step("create a machine (%s)", image)
  machine = check(client.machines:create(app_name, {
    config = { image = image, guest = { cpu_kind = "shared", cpus = 1, memory_mb = 256 } },
  }))
  print(("    id %s, name %s, region %s, state %s"):format(machine.id, machine.name, machine.region,
    machine.state))

  step("wait until started")
  show(machine:wait("started", { timeout = 120 }))

  step("list machines")
  local list = check(client.machines:list(app_name))
  for _, m in ipairs(list) do
    print(("    - %s %s %s %s"):format(m.id, m.name, m.region, m.state))
  end

  step("exec hostname")
  local out = check(machine:exec("hostname"))
  print(("    stdout: %s (exit code %d)"):format(out.stdout:gsub("%s+$", ""), out.exit_code or -1))

  step("update under a lease")
  local version, nonce = check(machine:with_lease({ ttl = 15, description = "quickstart" }, function(leased, lease)
    local config = {}
    for k, v in pairs(leased.config) do config[k] = v end
    config.env = { QUICKSTART = "leased" }
    local updated, err = leased:update(config)
    if not updated then return nil, err end
    return updated.instance_id, lease.nonce
  end))
  print(("    lease %s…, new version %s"):format(nonce:sub(1, 8), version))

  step("wait until started again")
  show(client.machines:wait(app_name, machine.id, { state = "started", version = version, timeout = 120 }))
  machine:refresh()
  print(("    env QUICKSTART=%s"):format(tostring(machine.config.env and machine.config.env.QUICKSTART)))

  step("stop")
  check(machine:stop())

  step("wait until stopped")
  show(machine:wait("stopped", { timeout = 120 }))

  step("destroy the machine")
  check(machine:destroy())

  step("wait until destroyed")
  show(machine:wait("destroyed", { timeout = 120 }))
  machine = nil

  step("destroy app %s", app_name)
  check(client.apps:destroy(app_name))
  app_created = false
end

local ok, err = pcall(tour)
if not ok then
  print("  error: " .. tostring(err))
  print("  cleaning up")
  if machine then
    local done, derr = machine:destroy { force = true }
    print(("    destroy machine %s: %s"):format(machine.id, done and "ok" or tostring(derr)))
    if done then machine:wait("destroyed", { timeout = 60 }) end
  end
  if app_created then
    local done, derr = client.apps:destroy(app_name)
    print(("    destroy app %s: %s"):format(app_name, done and "ok" or tostring(derr)))
  end
end

client:close()
print(ok and "done" or "failed")
os.exit(ok and 0 or 1)
