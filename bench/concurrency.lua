--- Concurrency on one libcurl loop: 200 starts over 200 machines with 100 ms
-- of added latency per request, sequential versus client:map (default
-- concurrency). Prints both times and the speedup (target >= 15x), and the
-- memory held per in-flight request.
local fly = require "fly"
local E = require "emulator"

local N = 200
E.control("POST", "reset")
E.control("POST", "config", { rate_limits = { enabled = false }, delays = { transition = 0 } })
local setup = E.setup_client()
local seq_ids = E.machines(setup, "bench-seq", N)
local map_ids = E.machines(setup, "bench-map", N)
setup:close()
E.control("POST", "faults", { method = "POST", path = "/v1/apps/[^/]+/machines/[^/]+/start", kind = "delay",
  delay = 0.1, count = 0 })

local client = assert(fly.new { token = E.TOKEN, base_url = E.URL })

local t0 = fly.now()
for _, id in ipairs(seq_ids) do assert(client.machines:start("bench-seq", id)) end
local sequential = fly.now() - t0

t0 = fly.now()
local _, errs = client:map(map_ids, function(id) return client.machines:start("bench-map", id) end)
local mapped = fly.now() - t0
for i = 1, N do assert(errs[i] == nil, tostring(errs[i])) end

print(("  sequential:  %d starts in %.2f s"):format(N, sequential))
print(("  client:map:  %d starts in %.2f s (default concurrency)"):format(N, mapped))
print(("  speedup:     %.1fx (target >= 15x)"):format(sequential / mapped))

-- memory: N requests held in flight at once (each stalls 1 s at the server)
E.control("POST", "faults", { method = "GET", path = "/v1/apps/bench%-map/machines/[^/]+", kind = "delay",
  delay = 1, count = 0 })
collectgarbage("collect")
local lua0, rss0 = collectgarbage("count"), E.rss_kib()
for _, id in ipairs(map_ids) do
  client:spawn(function() return client:call("Machines_show", { app_name = "bench-map", machine_id = id }) end)
end
local deadline = fly.now() + 0.5
while fly.now() < deadline do client:poll(0.05) end
collectgarbage("collect")
local lua1, rss1 = collectgarbage("count"), E.rss_kib()
assert(client:run(30))
print(("  memory per in-flight request: %.1f KiB Lua heap, %.1f KiB resident (%d in flight)")
  :format((lua1 - lua0) / N, (rss1 - rss0) / N, N))
client:close()
