--- The OpenResty pieces of the client, for use inside nginx with its Lua module:
-- `http` (one HTTP/1.1 exchange over cosockets), `limiter` (rate-limit buckets shared by the
-- workers through `lua_shared_dict fly_limits`), `phase` (where cosockets can be used) and
-- `loop` (the driver `require "fly"` uses inside nginx: calls and tasks).
-- Loading them outside nginx is harmless; using them there raises.
return {
  http = require "fly.ngx.http",
  limiter = require "fly.ngx.limiter",
  phase = require "fly.ngx.phase",
  loop = require "fly.ngx.loop",
}
