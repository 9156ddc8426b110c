-- Loads the core built against LuaJIT's headers (make check-compat) and
-- drives one request to a closed local port: the core itself, without the
-- Lua 5.4 layer, works under LuaJIT (Lua 5.1 API).
local core = require "fly.core"
assert(#core.operations() == 98, "operation table")
assert(require "fly.core" == package.loaded["fly.core"])
local client = core.new {
  token = "t", base_url = "http://127.0.0.1:9", user_agent = "compat", rate_limit = false,
  retry = { attempts = 2, base = 0.01, cap = 0.01 },
}
local req = client:_submit("Apps_show", { app_name = "a/b" })
while not req:done() do client:_step(1) end
local res = req:result()
assert(res.code == "connect", tostring(res.code))
assert(res.path == "/v1/apps/a%2Fb", res.path)
assert(res.attempts == 2, tostring(res.attempts))
client:close()
print("core under " .. (jit and jit.version or _VERSION) .. ": ok")
