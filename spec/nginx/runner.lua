--- Inside the spec nginx: runs the Lua chunk sent as the request body in the content
-- phase and answers its results as JSON, `{"ok":true,"values":[...]}` or
-- `{"ok":false,"error":"..."}`. Only the spec harness on 127.0.0.1 talks to it.
local cjson = require "cjson.safe"

local ngx = rawget(_G, "ngx")
local load_chunk = rawget(_G, "loadstring") or load

local M = {}

local function pack(...)
  return { n = select("#", ...), ... }
end

--- Content handler for `location = /__run`.
function M.run()
  ngx.req.read_body()
  local code = ngx.req.get_body_data()
  if not code then
    local file = ngx.req.get_body_file()
    local f = file and io.open(file, "rb")
    code = f and f:read("*a")
    if f then f:close() end
  end
  local chunk, lerr = load_chunk(code or "", "=spec")
  local out
  if not chunk then
    out = { ok = false, error = lerr }
  else
    local r = pack(xpcall(chunk, debug.traceback))
    if r[1] then
      local values = {}
      for i = 2, r.n do
        local v = r[i]
        if v == nil then v = cjson.null end
        values[i - 1] = v
      end
      out = { ok = true, values = values }
    else
      out = { ok = false, error = tostring(r[2]) }
    end
  end
  local body, err = cjson.encode(out)
  if not body then body = cjson.encode({ ok = false, error = "cannot encode the results: " .. err }) end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(body)
end

return M
