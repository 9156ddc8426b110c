--- Rate limiting under Fly's real published limits, against the emulator
-- enforcing the same limits: 30 metadata updates on one machine, 100 gets of
-- one machine and 20 starts over 20 machines, all submitted at once.
-- Prints the 429s received (target 0), the total time and the theoretical
-- minimum the limits allow (target: within 5% of it).
local fly = require "fly"
local E = require "emulator"

E.control("POST", "reset")
E.control("POST", "config", { rate_limits = { enabled = false }, delays = { transition = 0 } })
local setup = E.setup_client()
local ids = E.machines(setup, "bench-limits", 21)
local target, starts = ids[1], { require("fly.compat").unpack(ids, 2, 21) }
setup:close()

-- the real limits from now on, on both sides
E.control("POST", "config", { rate_limits = { enabled = true, scale = 1 } })
local client = assert(fly.new { token = E.TOKEN, base_url = E.URL })

local jobs = {}
for i = 1, 30 do
  jobs[#jobs + 1] = { "Machines_upsert_metadata",
    { app_name = "bench-limits", machine_id = target, key = "k" .. i, body = { value = tostring(i) } } }
end
for _ = 1, 100 do
  jobs[#jobs + 1] = { "Machines_show", { app_name = "bench-limits", machine_id = target } }
end
for _, id in ipairs(starts) do
  jobs[#jobs + 1] = { "Machines_start", { app_name = "bench-limits", machine_id = id } }
end

-- the minimum: per bucket, (n - burst) / rate once the burst is spent
local function minimum(n, rate, burst) return n > burst and (n - burst) / rate or 0 end
local floor = math.max(minimum(30, 1, 3), minimum(100, 5, 10), minimum(1, 1, 3))

local t0 = fly.now()
local _, errs = client:map(jobs, function(job) return client:call(job[1], job[2]) end,
  { concurrency = #jobs })
local total = fly.now() - t0
local failed = 0
for i = 1, #jobs do if errs[i] then failed = failed + 1 end end
local stats = E.control("GET", "stats")

print(("  requests:            %d (%d failed)"):format(#jobs, failed))
print(("  429s received:       %d (target 0)"):format(stats.rate_limited))
print(("  total time:          %.2f s"):format(total))
print(("  theoretical minimum: %.2f s"):format(floor))
print(("  overhead:            %.1f%% (target <= 5%%)"):format((total / floor - 1) * 100))
client:close()
if failed > 0 then os.exit(1) end
