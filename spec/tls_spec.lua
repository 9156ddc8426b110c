-- TLS: verification is on by default; ca_file trusts a given CA; insecure turns it off.
-- A throwaway nginx serves HTTPS on 127.0.0.1 with a self-signed certificate made here.
local fly = require "fly"
local H = require "helper"

local function sh(cmd)
  assert(H.sh(cmd), "failed: " .. cmd)
end

local function start_tls_server()
  local dir = os.tmpname()
  os.remove(dir)
  sh("mkdir -p " .. dir)
  sh(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1")
    :format(dir, dir))
  for _ = 1, 20 do
    local port = math.random(20000, 60000)
    local f = assert(io.open(dir .. "/nginx.conf", "w"))
    f:write(([[
      worker_processes 1;
      pid %s/nginx.pid;
      error_log %s/error.log;
      events { worker_connections 64; }
      http {
        access_log off;
        client_body_temp_path %s/tmp; proxy_temp_path %s/tmp; fastcgi_temp_path %s/tmp;
        uwsgi_temp_path %s/tmp; scgi_temp_path %s/tmp;
        server {
          listen 127.0.0.1:%d ssl;
          ssl_certificate %s/cert.pem;
          ssl_certificate_key %s/key.pem;
          location / { default_type application/json; return 200 '{"name":"tls-app"}'; }
        }
      }
    ]]):format(dir, dir, dir, dir, dir, dir, dir, port, dir, dir))
    f:close()
    if H.sh(("nginx -p %s -c %s/nginx.conf -e %s/error.log 2>/dev/null"):format(dir, dir, dir)) then
      local url = "https://127.0.0.1:" .. port
      return url, dir, function()
        os.execute(("kill $(cat %s/nginx.pid) 2>/dev/null; sleep 0.2; rm -rf %s"):format(dir, dir))
      end
    end
  end
  error("could not start the TLS server")
end

describe("TLS", function()
  local url, dir, stop
  setup(function()
    math.randomseed(os.time())
    url, dir, stop = start_tls_server()
    -- wait until it answers
    for _ = 1, 50 do
      if H.sh(("curl -sk -o /dev/null %s/"):format(url)) then break end
      os.execute("sleep 0.1")
    end
  end)
  teardown(function() stop() end)

  it("verifies the server by default and fails with code tls on an untrusted certificate", function()
    local c = assert(fly.new { token = "t", base_url = url, retry = false, rate_limit = false })
    local res, err = c.apps:get("tls-app")
    assert.is_nil(res)
    assert.equals("tls", err.code)
    assert.is_nil(err.status)
  end)

  it("trusts the CA given as ca_file", function()
    local c = assert(fly.new { token = "t", base_url = url, ca_file = dir .. "/cert.pem", rate_limit = false })
    assert.equals("tls-app", assert(c.apps:get("tls-app")).name)
  end)

  it("skips verification only when insecure = true is given", function()
    local c = assert(fly.new { token = "t", base_url = url, insecure = true, rate_limit = false })
    assert.equals("tls-app", assert(c.apps:get("tls-app")).name)
  end)
end)
