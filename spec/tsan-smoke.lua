-- Run by `make check-tsan` in several Lua states on several threads at once
-- (spec/threads.c), against the emulator that spec/emulator/with-emulator
-- starts: every state hammers the same process-wide rate-limit buckets.
local index = ...
local fly = require "fly"
local client = assert(fly.new { rate_limit = { scale = 50 } })
for i = 1, 20 do
  local _, err = client.apps:get("shared-" .. (i % 3))
  assert(err == nil or err.status == 404, tostring(err))
end
assert(#fly.operations() == 98, index)
client:close()
