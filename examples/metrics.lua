--- Metrics from the trace hook: per-operation latency counts, retries and
-- rate-limit waits, gathered while some ordinary work runs, then printed as
-- a table (and in Prometheus' text format, ready for a scrape endpoint).
--
-- Against the emulator: `spec/emulator/with-emulator lua5.4 examples/metrics.lua`.
-- Against Fly: FLY_API_TOKEN=… FLY_ORG=… lua5.4 examples/metrics.lua
local fly = require "fly"

-- Upper bounds of the latency buckets, in seconds.
local BOUNDS = { 0.005, 0.025, 0.1, 0.5, 2.5 }

-- by operation: { buckets = { count per bound, +Inf last }, count, sum, failed, retries, waits, waited }
local metrics = {}

local function of(op)
  local m = metrics[op]
  if not m then
    local buckets = {}
    for i = 1, #BOUNDS + 1 do buckets[i] = 0 end
    m = { buckets = buckets, count = 0, sum = 0, failed = 0, retries = 0, waits = 0, waited = 0 }
    metrics[op] = m
  end
  return m
end

-- The hook: called for every event of every call (see README, "Seeing what it does").
local function record(e)
  if not e.operation then return end -- dropped, limiter: events of no call
  local m = of(e.operation)
  if e.kind == "finish" then
    m.count = m.count + 1
    m.sum = m.sum + (e.seconds or 0)
    local i = 1
    while BOUNDS[i] and (e.seconds or 0) > BOUNDS[i] do i = i + 1 end
    m.buckets[i] = m.buckets[i] + 1
    if e.code or (e.status and e.status >= 400) then m.failed = m.failed + 1 end
  elseif e.kind == "retry" then
    m.retries = m.retries + 1
    m.waited = m.waited + e.wait
  elseif e.kind == "wait" then
    m.waits = m.waits + 1
    m.waited = m.waited + e.wait
  end
end

local client = assert(fly.new { trace = record })
local org = os.getenv("FLY_ORG") or "personal"
local app = os.getenv("FLY_APP") or ("metrics-" .. os.time())

-- Some work: an app, a few machines created and listed in parallel, then gone.
assert(client.apps:create { app_name = app, org_slug = org })
local ok, err = pcall(function()
  local names = { "a", "b", "c" }
  local machines, errors = client:map(names, function(name)
    return client.machines:create(app, { name = name, config = { image = "nginx" } })
  end)
  for i in pairs(errors) do error(errors[i]) end
  for _ = 1, 5 do assert(client.machines:list(app)) end
  for _, m in ipairs(machines) do assert(m:wait("started", { timeout = 60 })) end
  local _, missing = client.apps:get(app .. "-missing") -- a 404 counts as a failed attempt
  assert(missing and missing.status == 404, "expected a 404")
end)
client.apps:destroy(app)
if not ok then error(err, 0) end

-- The table: attempts per latency bucket, per operation.
local ops = {}
for op in pairs(metrics) do ops[#ops + 1] = op end
table.sort(ops)
local header = { ("%-22s"):format("operation") }
for _, b in ipairs(BOUNDS) do header[#header + 1] = ("%7s"):format("<" .. b * 1000 .. "ms") end
header[#header + 1] = ("%7s %6s %6s %7s %6s %6s"):format("more", "count", "mean", "failed", "retry", "waits")
print(table.concat(header, " "))
for _, op in ipairs(ops) do
  local m = metrics[op]
  local row = { ("%-22s"):format(op) }
  for i = 1, #BOUNDS + 1 do row[#row + 1] = ("%7d"):format(m.buckets[i]) end
  row[#row + 1] = ("%6d %5.1fms %6d %6d %6d"):format(m.count, m.count > 0 and m.sum / m.count * 1000 or 0,
    m.failed, m.retries, m.waits)
  print(table.concat(row, " "))
end

-- The same counts as a Prometheus histogram (cumulative buckets).
print()
print("# TYPE fly_attempt_seconds histogram")
for _, op in ipairs(ops) do
  local m, cumulative = metrics[op], 0
  for i = 1, #BOUNDS + 1 do
    cumulative = cumulative + m.buckets[i]
    print(('fly_attempt_seconds_bucket{operation="%s",le="%s"} %d'):format(op, BOUNDS[i] or "+Inf", cumulative))
  end
  print(('fly_attempt_seconds_sum{operation="%s"} %.6f'):format(op, m.sum))
  print(('fly_attempt_seconds_count{operation="%s"} %d'):format(op, m.count))
end

-- Every call above made at least one attempt, and each attempt was counted.
assert(metrics.Apps_create and metrics.Apps_create.count >= 1, "no attempt was recorded")
assert(metrics.Machines_list.count >= 5)
assert(metrics.Apps_show.failed >= 1)
client:close()
