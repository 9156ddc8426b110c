#!/bin/sh
# spec/emulator/smoke.sh [URL]
#
# Curl-based smoke test of the emulator. Without URL it starts its own instance (run) and stops
# it at the end. Prints one line per failed check; exits non-zero when anything failed.
# Needs only sh, curl, sed, grep.
set -u

here=$(cd "$(dirname "$0")" && pwd)
own=0
if [ $# -ge 1 ]; then
  U=$1
else
  U=$("$here/run") || { echo "smoke: emulator did not start" >&2; exit 1; }
  own=1
  echo "smoke: started $U" >&2
fi
TOKEN=${FLY_EMULATOR_TOKEN:-emulator-token}
fails=0 checks=0
tmp=$(mktemp -d)
cleanup() { [ $own = 1 ] && "$here/stop" "$U"; rm -rf "$tmp"; }
trap cleanup EXIT

# req METHOD PATH [BODY] [curl args…] -> sets STATUS, BODY
req() {
  m=$1 p=$2; shift 2
  data=""
  if [ $# -ge 1 ]; then data=$1; shift; fi
  if [ -n "$data" ]; then
    STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -X "$m" -H "Authorization: Bearer $TOKEN" \
             -H 'Content-Type: application/json' --data-binary "$data" "$@" "$U$p")
  else
    STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -X "$m" -H "Authorization: Bearer $TOKEN" \
             "$@" "$U$p")
  fi
  BODY=$(cat "$tmp/body")
}
ctl() { curl -s -X "$1" "$U/__emulator/$2" ${3:+--data-binary "$3"} > "$tmp/ctl"; cat "$tmp/ctl"; }

fail() { fails=$((fails + 1)); echo "FAIL: $*"; }
status() { checks=$((checks + 1)); [ "$STATUS" = "$1" ] || fail "$2: status $STATUS, want $1 ($BODY)"; }
has() { checks=$((checks + 1)); case $BODY in *"$1"*) ;; *) fail "$2: body lacks $1 ($BODY)" ;; esac; }
lacks() { checks=$((checks + 1)); case $BODY in *"$1"*) fail "$2: body has $1 ($BODY)" ;; esac; }
field() { printf '%s' "$BODY" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -1; }
mid() { printf '%s' "$BODY" | grep -o '"id":"[0-9a-f]\{14\}"' | head -1 | cut -d'"' -f4; }

ctl POST reset >/dev/null
ctl POST config '{"delays":{"transition":0.05}}' >/dev/null

# --- auth, routing
STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' "$U/v1/apps?org_slug=x"); BODY=$(cat "$tmp/body")
status 401 "no auth"; has '"status":"unauthorized"' "no auth body"
STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -H "Authorization: Bearer wrong" "$U/v1/apps?org_slug=x"); BODY=$(cat "$tmp/body")
status 401 "bad token"; has '"status":"unauthorized"' "bad token body"
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: FlyV1 $TOKEN" "$U/v1/apps?org_slug=x"); BODY=""
status 200 "FlyV1 scheme"
case $(ctl GET stats) in *'"last_auth_scheme":"FlyV1"'*) ;; *) fail "stats last_auth_scheme";; esac
req GET /v1/apps; status 400 "apps list without org_slug"
req GET /v1/nope; status 404 "unknown route"; has '"error"' "404 body"
req PUT /v1/apps; status 405 "wrong method"
STATUS=$(curl -s -D "$tmp/h" -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$U/v1/apps?org_slug=x")
checks=$((checks + 1)); grep -qi '^fly-request-id: ' "$tmp/h" || fail "fly-request-id header"

# --- apps
req POST /v1/apps '{"app_name":"smoke-app","org_slug":"personal"}'; status 201 "create app"
req POST /v1/apps '{"app_name":"smoke-app","org_slug":"personal"}'; status 422 "duplicate app"
has '"status":"name_taken"' "name_taken"
req POST /v1/apps '{not json'; status 400 "bad json"
req POST /v1/apps '{"app_name":"other","org_slug":"acme"}'; status 201 "create app 2"
req GET '/v1/apps?org_slug=personal'; status 200 "list apps"
has '"total_apps":1' "list apps only org"; has '"name":"smoke-app"' "list apps name"
req GET /v1/apps/smoke-app; status 200 "show app"; has '"slug":"personal"' "app org"
req GET /v1/apps/a%2Fb; status 404 "encoded slash is one segment"
req POST /v1/apps/smoke-app/deploy_token '{}'; status 200 "deploy token"; has '"token":"FlyV1 fm2_' "token shape"

# --- machines
A=/v1/apps/smoke-app/machines
req POST $A '{"config":{}}'; status 400 "create without image"
req POST $A '{"config":{"image":"nginx:1","metadata":{"role":"web"}},"region":"ams","name":"web-1"}'
status 200 "create machine"; has '"state":"created"' "create state"; M=$(mid); P=$A/$M
V1=$(field instance_id)
checks=$((checks + 1)); [ ${#M} = 14 ] || fail "machine id length ($M)"
checks=$((checks + 1)); [ ${#V1} = 26 ] || fail "instance_id length ($V1)"
req GET "$P/wait?state=started&timeout=5"; status 200 "wait started"; has '"ok":true' "wait ok"
EV=$(field event_id)
req GET "$P"; status 200 "show"; has '"state":"started"' "started"; lacks '"lease"' "no lease"
req GET "$P/wait?timeout=61"; status 400 "wait timeout > 60"
req GET "$P/wait?state=nope"; status 400 "wait bad state"
req GET "$A?metadata.role=web&summary=true"; has "$M" "metadata filter"; lacks '"config"' "summary"
req GET "$A?metadata.role=db"; status 200 "metadata filter none"
checks=$((checks + 1)); [ "$BODY" = "[]" ] || fail "empty list is [] ($BODY)"
req GET "$A?state=stopped"; checks=$((checks + 1)); [ "$BODY" = "[]" ] || fail "state filter"
req POST "$P/stop"; status 400 "stop without body"
# background wait sees the transition while other requests are served
curl -s -o "$tmp/wait" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  "$U$P/wait?state=stopped&timeout=5&from_event_id=$EV" > "$tmp/wait.status" &
wpid=$!
sleep 0.2
req POST "$P/stop" '{}'; status 200 "stop"
wait $wpid
STATUS=$(cat "$tmp/wait.status"); BODY=$(cat "$tmp/wait"); status 200 "long-poll wait stopped"
has '"state":"stopped"' "waited state"
ctl POST config '{"wait_max":1}' >/dev/null
req GET "$P/wait?state=started&timeout=10"; status 408 "wait not reached -> 408"
ctl POST config '{"wait_max":60}' >/dev/null

# update
req POST "$P" '{"config":{"image":"nginx:2"}}'; status 200 "update"
V2=$(field instance_id)
checks=$((checks + 1)); if [ "$V2" = "$V1" ] || [ ${#V2} != 26 ]; then fail "update changes version"; fi
req POST "$P" '{}'; status 400 "update without config"
req GET "$P/versions"; has "$V1" "versions old"; has "$V2" "versions new"
req GET "$P/wait?state=started&timeout=5&version=$V2"; status 200 "wait started after update"

# leases
req GET "$P/lease"; status 404 "no lease"
req POST "$P/lease" '{"ttl":30,"description":"smoke"}'; status 201 "lease create"
has '"status":"success"' "lease wrapped"; NONCE=$(field nonce)
req POST "$P/lease" '{"ttl":30}'; status 409 "lease held"
req POST "$P/restart"; status 409 "mutation without nonce"
req POST "$P/restart" "" -H "fly-machine-lease-nonce: $NONCE"; status 200 "mutation with nonce"
req POST "$P/lease" '{"ttl":60}' -H "fly-machine-lease-nonce: $NONCE"; status 201 "lease refresh"
req GET "$A/$M?include_leases=true"; has '"lease"' "include_leases"
req DELETE "$P/lease"; status 400 "release without nonce"
req DELETE "$P/lease" "" -H "fly-machine-lease-nonce: $NONCE"; status 200 "release"
req POST "$P/lease" '{"ttl":1}'; status 201 "short lease"
sleep 1.1
req POST "$P/cordon"; status 200 "lease expired"

# metadata
req POST "$P/metadata/foo" '{"value":"bar"}'; status 204 "metadata upsert"
req GET "$P/metadata/foo"; status 200 "metadata get"; has '"value":"bar"' "metadata value"
req GET "$P/metadata/nope"; status 404 "metadata missing key"
req PATCH "$P/metadata" '{"metadata":{"foo":null,"x":"1"}}'; status 204 "metadata patch"
req PUT "$P/metadata" "{\"metadata\":{\"y\":\"2\"},\"machine_version\":\"$V1\"}"; status 412 "metadata version"
req PUT "$P/metadata" "{\"metadata\":{\"y\":\"2\"},\"machine_version\":\"$V2\"}"; status 204 "metadata put"
req GET "$P/metadata"; has '"y":"2"' "metadata y"; lacks '"foo"' "metadata foo removed"
req DELETE "$P/metadata/y"; status 204 "metadata delete"

# exec, ps, events, memory, signal
req GET "$P/wait?state=started&timeout=5"; status 200 "started again"
req POST "$P/exec" '{"command":["echo","hi","there"]}'; status 200 "exec"
has '"stdout":"hi there\n"' "exec echo"; has '"exit_code":0' "exec exit 0"
req POST "$P/exec" '{"cmd":"false"}'; has '"exit_code":1' "exec false"
req GET "$P/ps?sort_by=pid&order=asc"; status 200 "ps"; has '"pid":1' "ps pid 1"
req GET "$P/events?limit=2"; status 200 "events"
req GET "$P/memory"; status 200 "memory"; has '"limit_mb":256' "memory limit"
req PUT "$P/memory" '{"limit_mb":128}'; has '"limit_mb":128' "set memory"
req POST "$P/memory/reclaim" '{"amount_mb":10}'; has '"actual_mb":10' "reclaim"
req POST "$P/signal" '{"signal":"SIGUSR1"}'; status 200 "signal"
req POST "$P/suspend"; status 200 "suspend"
req GET "$P/wait?state=suspended&timeout=5"; status 200 "wait suspended"
req POST "$P/start"; status 200 "start"
req GET "$P/wait?state=started&timeout=5"; status 200 "wait started 3"

# delete
req DELETE "$P"; status 412 "delete running"
req DELETE "$P?force=true"; status 200 "force delete"
req GET "$P/wait?state=destroyed&timeout=5"; status 200 "wait destroyed"
req GET "$P"; status 404 "destroyed machine is gone"
req GET "$P/wait?state=destroyed&timeout=5"; status 404 "wait on destroyed machine"
req GET "$A?include_deleted=true"; has "$M" "include_deleted"

# skip_launch, eventual consistency
ctl POST config '{"wait_404_after_create":0.5}' >/dev/null
req POST "$A" '{"config":{"image":"x"},"skip_launch":true}'; has '"state":"created"' "skip_launch"
M2=$(mid)
req GET "$A/$M2/wait?state=settled&timeout=1"; status 404 "wait 404 right after create"
sleep 0.6
req GET "$A/$M2/wait?state=settled&timeout=1"; status 200 "wait settled later"
ctl POST config '{"wait_404_after_create":0}' >/dev/null

# faults
ctl POST faults '{"method":"GET","path":"/v1/apps/smoke%-app","kind":"status","status":503,"retry_after":1}' >/dev/null
req GET /v1/apps/smoke-app; status 503 "fault status"
req GET /v1/apps/smoke-app; status 200 "fault used once"
ctl POST faults '{"op":"Machines_create","kind":"status_after","status":502}' >/dev/null
req POST "$A" '{"config":{"image":"x"}}'; status 502 "ambiguous failure"
case $(ctl GET stats) in *'"Machines_create":4'*) ;; *) fail "executed counts ($(cat "$tmp/ctl"))";; esac
ctl POST faults '{"op":"Apps_show","kind":"close"}' >/dev/null
req GET /v1/apps/smoke-app; status 000 "fault close"
ctl POST faults '{"op":"Apps_show","kind":"malformed"}' >/dev/null
req GET /v1/apps/smoke-app; status 200 "malformed"; has 'garbage' "malformed body"
ctl DELETE faults >/dev/null

# rate limits
ctl POST config '{"rate_limits":{"enabled":true}}' >/dev/null
for _ in 1 2 3; do req GET "/v1/apps/smoke-app"; done; status 200 "burst 3"
req GET "/v1/apps/smoke-app"; status 429 "rate limited"; has '"status":"rate_limited"' "429 body"
ctl POST config '{"rate_limits":{"enabled":false}}' >/dev/null

# app delete removes machines
req DELETE /v1/apps/smoke-app; status 202 "delete app"
req GET /v1/apps/smoke-app; status 404 "app gone"
req GET "$A/$M2"; status 404 "machines of deleted app gone"

ctl POST reset >/dev/null
req GET '/v1/apps?org_slug=acme'; has '"total_apps":0' "reset empties apps"

echo "smoke: $checks checks, $fails failed"
[ $fails = 0 ]
