--- client.tokens: OIDC and KMS tokens, and what a token is and may do.
-- @module fly.tokens
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Tokens = { __name = "fly.tokens" }
Tokens.__index = Tokens

--- The operation each method calls.
Tokens.operations = {
  request_oidc = "Tokens_request_OIDC",
  request_kms = "Tokens_request_Kms",
  get_current = "CurrentToken_show",
  authenticate = "Tokens_authenticate",
  authorize = "Tokens_authorize",
}

--- Requests an OIDC token (a JWT naming the organization, app and machine).
-- @tparam[opt] table body `aud` (the audience, default `https://fly.io/<org>`),
-- `aws_principal_tags` (boolean)
-- @treturn string the token, or nil, fly.Error
function Tokens:request_oidc(body)
  if body ~= nil then check(body, "table", "body", "tokens:request_oidc") end
  local res, err = call(self.client, "Tokens_request_OIDC", { body = body or {} }, nil, 2)
  return res, err
end

--- Requests a token for Fly's KMS (Petsem).
-- @treturn string the token (`FlyV1 fm2_…`), or nil, fly.Error
function Tokens:request_kms()
  local res, err = call(self.client, "Tokens_request_Kms", nil, nil, 2)
  return res, err
end

--- Describes the token this client uses.
-- @treturn table `{ tokens = { { token_id, org_slug, organization, apps, user? }, … } }`, or nil,
-- fly.Error (401)
function Tokens:get_current()
  local res, err = call(self.client, "CurrentToken_show", nil, nil, 2)
  return res, err
end

--- Verifies the tokens of an Authorization header.
-- @tparam string|table header the header value (`"FlyV1 fm2_…"`), or the body `{ header = … }`
-- @treturn table an array of VerifiedToken, or nil, fly.Error (400 when none verifies)
function Tokens:authenticate(header)
  local body = header
  if type(header) == "string" then
    body = { header = header }
  elseif type(header) ~= "table" then
    error(("fly: tokens:authenticate: header must be a string or a table (got %s)"):format(type(header)), 2)
  end
  local res, err = call(self.client, "Tokens_authenticate", { body = body }, nil, 2)
  return res, err
end

--- Checks whether the tokens of a header grant an access.
-- @tparam table body `header` (the Authorization header value) and `access` (a TokenAccess:
-- `action`, `org_slug`, `app_name`, `machine_id`, …)
-- @treturn table `{ access = …, verified_token = … }`, or nil, fly.Error (400 when not allowed)
function Tokens:authorize(body)
  check(body, "table", "body", "tokens:authorize")
  local res, err = call(self.client, "Tokens_authorize", { body = body }, nil, 2)
  return res, err
end

return Tokens
