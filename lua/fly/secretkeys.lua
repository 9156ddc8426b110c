--- client.secretkeys: an app's secret keys (keys that machines use through `/.fly/kms`
-- without seeing them): HMAC, NaCl, ES256 and AES keys that sign, verify, encrypt and decrypt.
--
-- Byte fields (`value`, `plaintext`, `ciphertext`, `associated_data`, `signature`,
-- `public_key`) travel as base64 strings, as Fly's Go client sends them, or as arrays of
-- integers (0-255), as the API description shows them; an answer uses the form of the request.
-- @module fly.secretkeys
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Secretkeys = { __name = "fly.secretkeys" }
Secretkeys.__index = Secretkeys

--- The operation each method calls.
Secretkeys.operations = {
  list = "Secretkeys_list",
  get = "Secretkey_get",
  set = "Secretkey_set",
  delete = "Secretkey_delete",
  generate = "Secretkey_generate",
  encrypt = "Secretkey_encrypt",
  decrypt = "Secretkey_decrypt",
  sign = "Secretkey_sign",
  verify = "Secretkey_verify",
}

-- app and key name checked, params (optional) merged with them; `level` 3 raises at the
-- line that called the method that called this
local function path_params(app, name, params, method, level)
  level = level or 3
  check(app, "string", "app", method, level)
  check(name, "string", "name", method, level)
  if params ~= nil then check(params, "table", "params", method, level) end
  return resource.merge(params, { app_name = app, secret_name = name })
end

-- encrypt, decrypt, sign and verify: a body and the optional min_version
local function crypto(self, op, method, app, name, body, params)
  local p = path_params(app, name, params, method, 4)
  check(body, "table", "body", method, 3)
  p.body = body
  local res, err = call(self.client, op, p, nil, 3)
  return res, err
end

--- Lists an app's secret keys.
-- @tparam string app the app's name
-- @tparam[opt] table params `types` (a comma-separated string or an array of key types, e.g.
-- `{ "hs256", "nacl_box" }`), `min_version`
-- @treturn table `{ secret_keys = { { name, type, public_key?, created_at, updated_at }, … } }`,
-- or nil, fly.Error
function Secretkeys:list(app, params)
  check(app, "string", "app", "secretkeys:list")
  if params ~= nil then check(params, "table", "params", "secretkeys:list") end
  local p = resource.merge(params, { app_name = app })
  if type(p.types) == "table" then p.types = table.concat(p.types, ",") end
  local res, err = call(self.client, "Secretkeys_list", p, nil, 2)
  return res, err
end

--- Gets one secret key (never its material).
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam[opt] table params `min_version`
-- @treturn table `{ name, type, public_key?, created_at, updated_at }`, or nil, fly.Error (404)
function Secretkeys:get(app, name, params)
  local p = path_params(app, name, params, "secretkeys:get")
  local res, err = call(self.client, "Secretkey_get", p, nil, 2)
  return res, err
end

--- Creates or replaces a secret key with the given material.
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam table body `{ type = "hs256", value = <bytes> }`; types: hs256, hs384, hs512,
-- nacl_auth, nacl_box, nacl_secretbox, nacl_sign, es256, xaes256gcm
-- @treturn table `{ name, type, public_key?, created_at, updated_at, version }`, or nil, fly.Error
function Secretkeys:set(app, name, body)
  local p = path_params(app, name, nil, "secretkeys:set")
  check(body, "table", "body", "secretkeys:set")
  p.body = body
  local res, err = call(self.client, "Secretkey_set", p, nil, 2)
  return res, err
end

--- Deletes a secret key.
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @treturn table `{ version = n }`, or nil, fly.Error (404)
function Secretkeys:delete(app, name)
  local p = path_params(app, name, nil, "secretkeys:delete")
  local res, err = call(self.client, "Secretkey_delete", p, nil, 2)
  return res, err
end

--- Creates or replaces a secret key with random material made by Fly.
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam string|table key_type the key type (`"nacl_box"`), or the body `{ type = … }`
-- @treturn table `{ name, type, public_key?, created_at, updated_at, version }`, or nil, fly.Error
function Secretkeys:generate(app, name, key_type)
  local p = path_params(app, name, nil, "secretkeys:generate")
  if type(key_type) == "string" then
    p.body = { type = key_type }
  elseif type(key_type) == "table" then
    p.body = key_type
  else
    error(("fly: secretkeys:generate: key_type must be a string or a table (got %s)"):format(type(key_type)), 2)
  end
  local res, err = call(self.client, "Secretkey_generate", p, nil, 2)
  return res, err
end

--- Encrypts with a key (xaes256gcm, nacl_secretbox, nacl_box).
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam table body `{ plaintext = <bytes>, associated_data = <bytes>? }`
-- @tparam[opt] table params `min_version`
-- @treturn table `{ ciphertext = <bytes> }`, or nil, fly.Error (400 when the key cannot encrypt)
function Secretkeys:encrypt(app, name, body, params)
  local res, err = crypto(self, "Secretkey_encrypt", "secretkeys:encrypt", app, name, body, params)
  return res, err
end

--- Decrypts with a key.
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam table body `{ ciphertext = <bytes>, associated_data = <bytes>? }`
-- @tparam[opt] table params `min_version`
-- @treturn table `{ plaintext = <bytes> }`, or nil, fly.Error (400 when authentication fails)
function Secretkeys:decrypt(app, name, body, params)
  local res, err = crypto(self, "Secretkey_decrypt", "secretkeys:decrypt", app, name, body, params)
  return res, err
end

--- Signs with a key (hs256, hs384, hs512, nacl_auth, nacl_sign, es256).
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam table body `{ plaintext = <bytes> }`
-- @tparam[opt] table params `min_version`
-- @treturn table `{ signature = <bytes> }`, or nil, fly.Error
function Secretkeys:sign(app, name, body, params)
  local res, err = crypto(self, "Secretkey_sign", "secretkeys:sign", app, name, body, params)
  return res, err
end

--- Verifies a signature made with a key.
-- @tparam string app the app's name
-- @tparam string name the key's name
-- @tparam table body `{ plaintext = <bytes>, signature = <bytes> }`
-- @tparam[opt] table params `min_version`
-- @return true when the signature is valid, or nil, fly.Error (400 when it is not)
function Secretkeys:verify(app, name, body, params)
  local res, err = crypto(self, "Secretkey_verify", "secretkeys:verify", app, name, body, params)
  return res, err
end

return Secretkeys
