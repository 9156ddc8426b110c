-- client.certificates: hostnames move from awaiting_configuration to ready; listings page.
local H = require "helper"
local compat = require "fly.compat"
local fly = require "fly"

local PEM_CHAIN = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
local PEM_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"

describe("client.certificates", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  it("requests an ACME certificate that becomes ready after a check", function()
    local cert = assert(c.certificates:request_acme(app, "www.example.com"))
    assert.equals("www.example.com", cert.hostname)
    assert.equals("awaiting_configuration", cert.status)
    assert.is_true(cert.acme_requested)
    assert.equals("pending_ownership", cert.certificates[1].status)

    local checked = assert(c.certificates:check(app, "www.example.com"))
    assert.equals("ready", checked.status)
    assert.is_true(checked.configured)
    assert.is_table(checked.dns_records)

    local got = assert(c.certificates:get(app, "www.example.com"))
    assert.equals("ready", got.status)
    assert.equals("active", got.certificates[1].status)
  end)

  it("stays awaiting_configuration until DNS is seen, per cert_checks_to_ready", function()
    H.config { cert_checks_to_ready = 2 }
    assert(c.certificates:request_acme(app, { hostname = "api.example.com" }))
    local first = assert(c.certificates:check(app, "api.example.com"))
    assert.equals("awaiting_configuration", first.status)
    assert.equals("dns_not_configured", first.validation_errors[1].code)
    assert.equals("ready", assert(c.certificates:check(app, "api.example.com")).status)
  end)

  it("uploads a custom certificate, then removes each kind", function()
    local cert = assert(c.certificates:upload_custom(app,
      { hostname = "shop.example.com", fullchain = PEM_CHAIN, private_key = PEM_KEY }))
    assert.equals("custom", cert.certificates[1].source)
    assert.equals("awaiting_configuration", cert.status)
    assert(c.certificates:check(app, "shop.example.com"))
    assert.equals("ready", assert(c.certificates:get(app, "shop.example.com")).status)

    assert(c.certificates:request_acme(app, "shop.example.com"))
    local after_acme = assert(c.certificates:delete_acme(app, "shop.example.com"))
    assert.is_false(after_acme.acme_requested)
    local after_custom = assert(c.certificates:delete_custom(app, "shop.example.com"))
    assert.is_string(after_custom.warning)
    local r, err = c.certificates:get(app, "shop.example.com")
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("deletes a hostname; deleting it again answers 404", function()
    assert(c.certificates:request_acme(app, "gone.example.com"))
    assert.is_true(c.certificates:delete(app, "gone.example.com"))
    local r, err = c.certificates:delete(app, "gone.example.com")
    assert.is_nil(r)
    assert.equals(404, err.status)
    assert.equals("not_found", err.code)
  end)

  it("answers 422 for an invalid or repeated hostname", function()
    local r, err = c.certificates:request_acme(app, "not a hostname")
    assert.is_nil(r)
    assert.equals(422, err.status)
    assert.equals("unprocessable", err.code)
    assert(c.certificates:request_acme(app, "a.example.com"))
    r, err = c.certificates:request_acme(app, "a.example.com")
    assert.is_nil(r)
    assert.equals(422, err.status)
    r, err = c.certificates:upload_custom(app, { hostname = "b.example.com", fullchain = "x", private_key = "y" })
    assert.is_nil(r)
    assert.equals(422, err.status)
  end)

  describe("listing", function()
    local hosts = {}
    before_each(function()
      hosts = {}
      for i = 1, 5 do
        hosts[i] = ("h%d.example.com"):format(i)
        assert(c.certificates:request_acme(app, hosts[i]))
      end
      assert(c.certificates:request_acme(app, "other.test.org"))
    end)

    it("gives one page with next_cursor, and filters", function()
      local page = assert(c.certificates:list(app, { limit = 2 }))
      assert.equals(2, #page.certificates)
      assert.equals(6, compat.tointeger(page.total_count))
      assert.is_string(page.next_cursor)
      local second = assert(c.certificates:list(app, { limit = 2, cursor = page.next_cursor }))
      assert.are_not.equal(page.certificates[1].hostname, second.certificates[1].hostname)
      local filtered = assert(c.certificates:list(app, { filter = "test.org" }))
      assert.equals(1, #filtered.certificates)
      assert.is_nil(filtered.next_cursor)
    end)

    it("each follows the cursors to the end", function()
      local seen, requests = {}, H.stats().requests.App_Certificates_list or 0
      for cert, err in c.certificates:each(app, { limit = 2, filter = "example.com" }) do
        assert.is_nil(err)
        seen[#seen + 1] = cert.hostname
      end
      assert.same(hosts, seen)
      assert.equals(requests + 3, H.stats().requests.App_Certificates_list)
    end)

    it("each with no certificates ends at once", function()
      local n = 0
      for _ in c.certificates:each(app, { filter = "nothing-matches" }) do n = n + 1 end
      assert.equals(0, n)
    end)

    it("each ends with false, err when a page fails", function()
      local items, failure = {}, nil
      local first = true
      for cert, err in c.certificates:each(app, { limit = 2 }) do
        if not cert then
          failure = err
        else
          items[#items + 1] = cert.hostname
          if first then
            first = false
            H.fault { method = "GET", path = "/v1/apps/" .. app .. "/certificates", kind = "status",
              status = 404, count = 1 }
          end
        end
      end
      assert.equals(2, #items)
      assert.is_true(fly.Error.is(failure))
      assert.equals(404, failure.status)
    end)

    it("each raises programmer errors at the line of the loop", function()
      H.raises("certificates_spec%.lua:%d+: fly: certificates:each: unknown parameter 'bogus' %(it takes cursor, ",
        function()
          for _ in c.certificates:each(app, { bogus = 1 }) do end
        end)
      H.raises("certificates_spec%.lua:%d+: fly: certificates:each: app must be a string",
        function() c.certificates:each(42) end)
    end)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("certificates_spec%.lua:%d+: fly: certificates:request_acme: hostname must be",
      function() c.certificates:request_acme(app, 5) end)
    H.raises("certificates_spec%.lua:%d+: fly: certificates:check: hostname must be a string",
      function() c.certificates:check(app, nil) end)
    H.raises("certificates_spec%.lua:%d+: fly: App_Certificates_custom_delete: parameter 'hostname'",
      function() c.certificates:delete_custom(app, "") end)
    H.raises("certificates_spec%.lua:%d+: fly: certificates:upload_custom: body must be a table",
      function() c.certificates:upload_custom(app, "pem") end)
  end)
end)
