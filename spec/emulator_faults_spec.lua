-- The emulator's fault endpoint refuses what would never fire, so a test suite
-- that injects a fault knows it is in place.
local H = require "helper"

describe("the emulator's faults", function()
  before_each(H.reset)

  it("refuses an operation it does not serve, naming it and where the names are", function()
    local answer, status = H.control("POST", "faults", { op = "Machines_get_metadata", status = 429 })
    assert.equals(400, status)
    assert.equals("invalid_argument", answer.status)
    assert.matches('unknown operation "Machines_get_metadata"', answer.error, 1, true)
    assert.matches("/__emulator/routes", answer.error, 1, true)
    assert.same({}, (H.control("GET", "faults")))
  end)

  it("takes an operation of a Lua method, and the fault fires", function()
    local client = H.client()
    local op = client.machines.operations.get_metadata
    local answer, status = H.control("POST", "faults", { op = op, status = 503 })
    assert.equals(200, status, answer)
    assert.equals(1, answer.faults)
    local _, err = client:call(op, { app_name = "nope", machine_id = "nope" }, { attempts = 1 })
    assert.equals(503, err.status)
    assert.same({}, (H.control("GET", "faults")))
    client:close()
  end)

  it("lasts `seconds` when given: every matching request meanwhile, none after", function()
    local client = H.client { rate_limit = false }
    local app = H.app(client)
    local answer, status = H.control("POST", "faults", { op = "Apps_show", status = 503, seconds = 0.5 })
    assert.equals(200, status, answer)
    for _ = 1, 3 do
      local _, err = client:call("Apps_show", { app_name = app }, { attempts = 1 })
      assert.equals(503, err and err.status)
    end
    require("socket").sleep(0.6)
    assert(client:call("Apps_show", { app_name = app }, { attempts = 1 }))
    assert.same({}, (H.control("GET", "faults")))
    answer, status = H.control("POST", "faults", { op = "Apps_show", status = 503, seconds = 0 })
    assert.equals(400, status)
    assert.matches("seconds must be a positive number", answer.error, 1, true)
    client:close()
  end)

  it("drops a delayed request that outlasts a reset: it does not touch the next spec's state", function()
    -- the request arrives, sleeps 1 s, and meanwhile its client gives up and the next spec
    -- resets the emulator: when it wakes it runs nothing and counts nothing
    local client = H.client { rate_limit = false }
    local app = H.name()
    H.fault { op = "Apps_create", kind = "delay", delay = 1, count = 1 }
    local _, err = client:call("Apps_create", { body = { app_name = app, org_slug = "personal" } },
      { timeout = 0.3 })
    assert.equals("timeout", err.code)
    client:close()
    H.reset()
    require("socket").sleep(1.3)
    assert.is_nil(H.stats().executed.Apps_create)
    local check = H.client { rate_limit = false }
    local _, missing = check.apps:get(app)
    assert.equals(404, missing.status)
    check:close()
  end)
end)
