--- client.secretkeys: an app's secret keys (keys that machines use through `/.fly/kms`
-- without seeing them): HMAC, NaCl, ES256 and AES keys that sign, verify, encrypt and decrypt.
--
-- Byte fields (`value`, `plaintext`, `ciphertext`, `associated_data`, `signature`,
-- `public_key`) travel as base64 strings, as Fly's Go client sends them, or as arrays of
-- integers (0-255), as the API description shows them; an answer uses the form of the request.
-- @module fly.secretkeys
local resource = require "fly.resource"

local Secretkeys = { __name = "fly.secretkeys" }
Secretkeys.__index = Secretkeys

--- The operation each method calls (filled by the declarations below).
Secretkeys.operations = {}

local function body(p, _, b) p.body = b end

-- Each entry: `{ method, operationId, … }` (see resource.declare); every method takes the
-- app's name and the key's name first (but `list`, the app's only).
resource.declare(Secretkeys, {
  name = "secretkeys", operations = Secretkeys.operations,
  path = { "app", "name" }, params = { app = "app_name", name = "secret_name" },
}, {
  --- `list(app, params)`: `types` (a comma-separated string or an array of key types, e.g.
  -- `{ "hs256", "nacl_box" }`), `min_version` ->
  -- `{ secret_keys = { { name, type, public_key?, created_at, updated_at }, … } }`
  { "list", "Secretkeys_list", path = { "app" }, params = true }, -- (the core joins an array of types)
  --- `get(app, name, params)`: one key, never its material; `min_version` ->
  -- `{ name, type, public_key?, created_at, updated_at }` (404)
  { "get", "Secretkey_get", params = true },
  --- `set(app, name, body)`: creates or replaces a key with the given material,
  -- `{ type = "hs256", value = <bytes> }` (types: hs256, hs384, hs512, nacl_auth, nacl_box,
  -- nacl_secretbox, nacl_sign, es256, xaes256gcm) -> `{ name, type, public_key?, created_at,
  -- updated_at, version }`
  { "set", "Secretkey_set", args = { "body:table" }, build = body },
  --- `delete(app, name)` -> `{ version = n }` (404)
  { "delete", "Secretkey_delete" },
  --- `generate(app, name, key_type)`: creates or replaces a key with random material made by
  -- Fly; the type (`"nacl_box"`) or the body `{ type = … }` -> as `set`
  { "generate", "Secretkey_generate", args = { "key_type:string|table" },
    build = function(p, _, t) p.body = type(t) == "string" and { type = t } or t end },
  --- `encrypt(app, name, body, params)`: `{ plaintext = <bytes>, associated_data = <bytes>? }`
  -- with xaes256gcm, nacl_secretbox, nacl_box; `min_version` -> `{ ciphertext = <bytes> }`
  -- (400 when the key cannot encrypt)
  { "encrypt", "Secretkey_encrypt", args = { "body:table" }, params = true, build = body },
  --- `decrypt(app, name, body, params)`: `{ ciphertext = <bytes>, associated_data = <bytes>? }`;
  -- `min_version` -> `{ plaintext = <bytes> }` (400 when authentication fails)
  { "decrypt", "Secretkey_decrypt", args = { "body:table" }, params = true, build = body },
  --- `sign(app, name, body, params)`: `{ plaintext = <bytes> }` with hs256, hs384, hs512,
  -- nacl_auth, nacl_sign, es256; `min_version` -> `{ signature = <bytes> }`
  { "sign", "Secretkey_sign", args = { "body:table" }, params = true, build = body },
  --- `verify(app, name, body, params)`: `{ plaintext = <bytes>, signature = <bytes> }`;
  -- `min_version` -> true when the signature is valid (400 when it is not)
  { "verify", "Secretkey_verify", args = { "body:table" }, params = true, build = body },
})

return Secretkeys
