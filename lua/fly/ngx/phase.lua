--- Where nginx lets the client work: cosockets (and so API calls) exist only in some
-- request phases of lua-nginx-module. `require "fly.ngx.phase"`.
--
-- Allowed: `rewrite`, `server_rewrite`, `access`, `content`, `timer` (an `ngx.timer.at`
-- callback), `ssl_cert`, `ssl_session_fetch`, `ssl_client_hello`. Everywhere else (`init`,
-- `init_worker`, `set`, `header_filter`, `body_filter`, `log`, `balancer`,
-- `ssl_session_store`, `exit_worker`) nginx cannot suspend the Lua code while a socket
-- waits, so a call there raises a programmer error that names the phase and points at
-- `ngx.timer.at`, whose callbacks run where cosockets work.
local M = {}

local ALLOWED = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

--- The phase nginx is in, or nil outside nginx.
-- @treturn string|nil the name `ngx.get_phase()` gives
function M.current()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then return nil end
  return ngx.get_phase()
end

--- Whether cosockets can be used in the current phase.
-- @treturn boolean usable
-- @treturn string|nil the phase (nil outside nginx)
function M.cosockets(phase)
  phase = phase or M.current()
  return ALLOWED[phase] == true, phase
end

--- Raises a programmer error unless cosockets can be used here.
-- @tparam[opt=2] number level where the error points, as if the function calling `check`
--   had called `error(message, level)`: 2 (the default) blames that function's caller
function M.check(level)
  local ok, phase = M.cosockets()
  if ok then return end
  local where = phase and ("nginx's '" .. phase .. "' phase") or "this Lua state (not inside nginx)"
  error("fly: API calls (and the sleeps and tasks around them) need nginx cosockets, which " .. where
    .. " does not allow; "
    .. "make the call from a rewrite, access or content handler, or run it in a timer: "
    .. "ngx.timer.at(0, function() ... end)", (level or 2) + 1)
end

return M
