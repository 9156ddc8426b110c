rockspec_format = "3.0"
package = "fly-machines"
version = "scm-1"
source = {
  url = "git+file://./",
}
description = {
  summary = "A client for the Fly.io Machines API: C core on libcurl, Lua layer on top",
  detailed = [[
Every operation of the Machines API, with rate limiting to Fly's published
limits, safe retries, waits, leases, and tasks on one libcurl multi loop.
]],
  license = "MIT",
}
-- JSON is the core's own (csrc/json.c, lua/fly/json.lua): no Lua dependency but the Lua itself.
dependencies = {
  "lua >= 5.1",
}
external_dependencies = {
  -- found by its library: Debian keeps curl/curl.h in a multiarch include
  -- directory that the compiler searches by itself
  CURL = { library = "curl" },
  -- the shared rate limiter (rate_limit.redis): Debian's libhiredis-dev, and OpenSSL's libcrypto
  -- (libssl-dev) for SHA-256 and SHA-1
  HIREDIS = { library = "hiredis" },
  CRYPTO = { library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    ["fly"] = "lua/fly/init.lua",
    ["fly.apps"] = "lua/fly/apps.lua",
    ["fly.certificates"] = "lua/fly/certificates.lua",
    ["fly.ips"] = "lua/fly/ips.lua",
    ["fly.machines"] = "lua/fly/machines.lua",
    ["fly.orgs"] = "lua/fly/orgs.lua",
    ["fly.pages"] = "lua/fly/pages.lua",
    ["fly.platform"] = "lua/fly/platform.lua",
    ["fly.postgres"] = "lua/fly/postgres.lua",
    ["fly.secretkeys"] = "lua/fly/secretkeys.lua",
    ["fly.secrets"] = "lua/fly/secrets.lua",
    ["fly.tokens"] = "lua/fly/tokens.lua",
    ["fly.volumes"] = "lua/fly/volumes.lua",
    ["fly.compat"] = "lua/fly/compat.lua",
    ["fly.error"] = "lua/fly/error.lua",
    ["fly.json"] = "lua/fly/json.lua",
    ["fly.loop"] = "lua/fly/loop.lua",
    ["fly.resource"] = "lua/fly/resource.lua",
    ["fly.task"] = "lua/fly/task.lua",
    ["fly.trace"] = "lua/fly/trace.lua",
    ["fly.ngx"] = "lua/fly/ngx/init.lua",
    ["fly.ngx.http"] = "lua/fly/ngx/http.lua",
    ["fly.ngx.limiter"] = "lua/fly/ngx/limiter.lua",
    ["fly.ngx.loop"] = "lua/fly/ngx/loop.lua",
    ["fly.ngx.phase"] = "lua/fly/ngx/phase.lua",
    ["fly.ngx.redis"] = "lua/fly/ngx/redis.lua",
    ["fly.core"] = {
      sources = { "csrc/module.c", "csrc/util.c", "csrc/ops.c", "csrc/operations.c", "csrc/build.c",
        "csrc/ratelimit.c", "csrc/classify.c", "csrc/request.c", "csrc/trace.c", "csrc/client.c", "csrc/curl.c",
        "csrc/json.c", "csrc/redis.c" },
      incdirs = { "csrc", "$(CURL_INCDIR)", "$(HIREDIS_INCDIR)", "$(CRYPTO_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(HIREDIS_LIBDIR)", "$(CRYPTO_LIBDIR)" },
      -- ssl: which protocol a TLS connection chose (ALPN), see csrc/curl.c; hiredis and crypto:
      -- the rate limits shared through Redis (csrc/redis.c)
      libraries = { "curl", "ssl", "hiredis", "crypto", "pthread", "m" },
    },
  },
  -- the emulator command; it finds the emulator's files in the rock's directory
  -- (TREE/lib/luarocks/rocks-*/fly-machines/VERSION/spec/emulator)
  install = {
    bin = { ["fly-emulator"] = "bin/fly-emulator" },
  },
  copy_directories = { "spec/emulator" },
}
