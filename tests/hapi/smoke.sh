#!/usr/bin/env bash
# Smoke checks of a running HAPI test server with curl (JSON read with python3).
# Usage: tests/hapi/smoke.sh [BASE_URL]   (default http://127.0.0.1:${HAPI_PORT:-8080}/fhir)
# Creates resources with random identifiers; does not clean up.
set -u
BASE="${1:-http://127.0.0.1:${HAPI_PORT:-8080}/fhir}"
CT='Content-Type: application/fhir+json'
RUN="smoke-$$-$RANDOM"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
pass=0; fail=0

check() { # check NAME CONDITION-RESULT(0/1) DETAIL
	if [ "$2" = 0 ]; then pass=$((pass+1)); echo "ok   $1"; else fail=$((fail+1)); echo "FAIL $1 -- $3"; fi
}
# req METHOD PATH [BODY] [extra curl args...] -> sets CODE, writes body to $TMP/body, headers to $TMP/hdr
req() {
	local m="$1" p="$2" body="${3:-}"; shift 3 2>/dev/null || shift $#
	local url="$p"; [[ "$p" == http* ]] || url="$BASE$p"
	if [ -n "$body" ]; then
		CODE=$(curl -s -g -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' -X "$m" -H "$CT" --data-binary "$body" "$@" "$url")
	else
		CODE=$(curl -s -g -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' -X "$m" "$@" "$url")
	fi
}
js() { python3 -c "import json,sys; d=json.load(open('$TMP/body')); print($1)" 2>/dev/null; }
hdr() { grep -i "^$1:" "$TMP/hdr" | head -1 | cut -d' ' -f2- | tr -d '\r'; }

req GET /metadata
check "metadata -> CapabilityStatement" $([ "$CODE" = 200 ] && [ "$(js "d['resourceType']")" = CapabilityStatement ]; echo $?) "$CODE"

# create / read / update / vread / history / delete
req POST /Patient "{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:smoke\",\"value\":\"$RUN\"}]}"
PID=$(js "d['id']")
check "create Patient" $([ "$CODE" = 201 ] && [ -n "$PID" ]; echo $?) "$CODE"
req GET "/Patient/$PID"
check "read" $([ "$CODE" = 200 ] && [ "$(hdr ETag)" = 'W/"1"' ]; echo $?) "$CODE $(hdr ETag)"
req PUT "/Patient/$PID" "{\"resourceType\":\"Patient\",\"id\":\"$PID\",\"active\":true}" -H 'If-Match: W/"1"'
check "update with current If-Match" $([ "$CODE" = 200 ] && [ "$(hdr ETag)" = 'W/"2"' ]; echo $?) "$CODE"
req PUT "/Patient/$PID" "{\"resourceType\":\"Patient\",\"id\":\"$PID\",\"active\":false}" -H 'If-Match: W/"1"'
check "update with stale If-Match -> 409/412" $([[ "$CODE" = 409 || "$CODE" = 412 ]]; echo $?) "$CODE"
req GET "/Patient/$PID"
check "stale update did not overwrite" $([ "$(js "d['meta']['versionId']")" = 2 ] && [ "$(js "d['active']")" = True ]; echo $?) "$(cat "$TMP/body")"
req GET "/Patient/$PID/_history/1"
check "vread v1" $([ "$CODE" = 200 ] && [ "$(js "d['meta']['versionId']")" = 1 ]; echo $?) "$CODE"
req GET "/Patient/$PID/_history"
check "instance _history" $([ "$CODE" = 200 ] && [ "$(js "len(d['entry'])")" = 2 ]; echo $?) "$CODE"
req GET "/Patient/_history?_count=1"
check "type _history" $([ "$CODE" = 200 ]; echo $?) "$CODE"
req PUT "/Patient/$RUN-client" "{\"resourceType\":\"Patient\",\"id\":\"$RUN-client\"}"
check "client-assigned id (PUT create)" $([ "$CODE" = 201 ]; echo $?) "$CODE"
NUM="9$RANDOM$RANDOM"
req PUT "/Basic/$NUM" "{\"resourceType\":\"Basic\",\"id\":\"$NUM\",\"code\":{\"text\":\"n\"}}"
check "client-assigned numeric id" $([ "$CODE" = 201 ]; echo $?) "$CODE"

# conditional create / update, token search
B1="{\"resourceType\":\"Basic\",\"identifier\":[{\"system\":\"urn:smoke\",\"value\":\"$RUN-b\"}],\"code\":{\"coding\":[{\"system\":\"urn:smoke-code\",\"code\":\"$RUN-a\"}]}}"
req POST /Basic "$B1" -H "If-None-Exist: identifier=urn:smoke|$RUN-b"
BID=$(js "d['id']")
check "conditional create (new) -> 201" $([ "$CODE" = 201 ]; echo $?) "$CODE"
req POST /Basic "$B1" -H "If-None-Exist: identifier=urn:smoke|$RUN-b"
check "conditional create (exists) -> 200 same id" $([ "$CODE" = 200 ] && [[ "$(hdr Location)" == *"/Basic/$BID/"* ]]; echo $?) "$CODE $(hdr Location)"
req PUT "/Basic?identifier=urn:smoke|$RUN-b" "${B1//$RUN-a/$RUN-c}"
check "conditional update (match) -> 200 v2" $([ "$CODE" = 200 ] && [ "$(js "d['id']")" = "$BID" ] && [ "$(js "d['meta']['versionId']")" = 2 ]; echo $?) "$CODE"
req PUT "/Basic?identifier=urn:smoke|$RUN-b2" "${B1//$RUN-b/$RUN-b2}"
check "conditional update (no match) -> 201" $([ "$CODE" = 201 ]; echo $?) "$CODE"
req GET "/Basic?identifier=urn:smoke|$RUN-b"
check "search identifier=system|value" $([ "$(js "d['total']")" = 1 ]; echo $?) "$(js "d.get('total')")"
req GET "/Basic?code=urn:smoke-code|$RUN-c"
check "search code (sees update at once)" $([ "$(js "d['total']")" = 1 ]; echo $?) "$(js "d.get('total')")"
req GET "/Basic?code=urn:smoke-code|$RUN-a&identifier=urn:smoke|$RUN-b"
check "search old code -> 0" $([ "$(js "d['total']")" = 0 ]; echo $?) "$(js "d.get('total')")"

# batch of 25, then paging with _count=10
ENTRIES=$(python3 -c "import json; print(json.dumps([{'request':{'method':'POST','url':'Observation'},'resource':{'resourceType':'Observation','status':'final','code':{'coding':[{'system':'urn:smoke-page','code':'$RUN'}]}}} for i in range(25)]))")
req POST "" "{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":$ENTRIES}"
check "batch (25 creates)" $([ "$CODE" = 200 ] && [ "$(js "sum(e['response']['status'].startswith('201') for e in d['entry'])")" = 25 ]; echo $?) "$CODE"
req GET "/Observation?code=urn:smoke-page|$RUN&_count=10"
n=$(js "len(d.get('entry',[]))"); next=$(js "[l['url'] for l in d['link'] if l['relation']=='next'][0]"); seen=$n; pages=1
check "paging: first page 10, total 25" $([ "$n" = 10 ] && [ "$(js "d.get('total')")" = 25 ]; echo $?) "n=$n total=$(js "d.get('total')")"
check "paging: next link on server base" $([[ "$next" == "$BASE"* ]]; echo $?) "$next"
while [ -n "$next" ] && [ $pages -lt 10 ]; do
	req GET "$next"; seen=$((seen + $(js "len(d.get('entry',[]))"))); pages=$((pages+1))
	next=$(js "([l['url'] for l in d['link'] if l['relation']=='next']+[''])[0]")
done
check "paging: 3 pages, 25 results" $([ $pages = 3 ] && [ $seen = 25 ]; echo $?) "pages=$pages seen=$seen"

# transaction: atomic on failure, and success
TX_BAD="{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[
 {\"request\":{\"method\":\"POST\",\"url\":\"Patient\"},\"resource\":{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:smoke-tx\",\"value\":\"$RUN\"}]}},
 {\"request\":{\"method\":\"PUT\",\"url\":\"Patient/$PID\",\"ifMatch\":\"W/\\\"1\\\"\"},\"resource\":{\"resourceType\":\"Patient\",\"id\":\"$PID\"}}]}"
req POST "" "$TX_BAD"
check "transaction with failing entry -> 4xx" $([[ "$CODE" = 4* ]]; echo $?) "$CODE"
req GET "/Patient?identifier=urn:smoke-tx|$RUN"
check "failed transaction wrote nothing" $([ "$(js "d['total']")" = 0 ]; echo $?) "$(js "d.get('total')")"
TX_OK="{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[
 {\"fullUrl\":\"urn:uuid:$(python3 -c 'import uuid;print(uuid.uuid4())')\",\"request\":{\"method\":\"POST\",\"url\":\"Patient\",\"ifNoneExist\":\"identifier=urn:smoke-tx|$RUN\"},\"resource\":{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:smoke-tx\",\"value\":\"$RUN\"}]}},
 {\"request\":{\"method\":\"PUT\",\"url\":\"Basic?identifier=urn:smoke|$RUN-tx\"},\"resource\":{\"resourceType\":\"Basic\",\"identifier\":[{\"system\":\"urn:smoke\",\"value\":\"$RUN-tx\"}],\"code\":{\"text\":\"t\"}}}]}"
req POST "" "$TX_OK"
check "transaction ok -> transaction-response" $([ "$CODE" = 200 ] && [ "$(js "d['type']")" = transaction-response ]; echo $?) "$CODE"

# AuditEvent create + $validate
AE='{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110110"},"action":"R","recorded":"2024-01-01T10:00:00Z","outcome":"0","agent":[{"who":{"display":"smoke"},"requestor":true}],"source":{"observer":{"display":"smoke"}}}'
req POST /AuditEvent "$AE"
check "create AuditEvent" $([ "$CODE" = 201 ]; echo $?) "$CODE"
req POST '/AuditEvent/$validate' "$AE"
check "\$validate AuditEvent (valid) -> no errors" $([ "$CODE" = 200 ] && [ "$(js "sum(i['severity'] in ('error','fatal') for i in d['issue'])")" = 0 ]; echo $?) "$CODE"
req POST '/AuditEvent/$validate' '{"resourceType":"AuditEvent","action":"R"}'
check "\$validate AuditEvent (invalid) -> error issues" $([ "$(js "sum(i['severity']=='error' for i in d['issue'])")" -gt 0 ]; echo $?) "$CODE"

# delete (a referenced resource: referential integrity on delete is off)
req POST /Observation "{\"resourceType\":\"Observation\",\"status\":\"final\",\"code\":{\"text\":\"r\"},\"subject\":{\"reference\":\"Patient/$PID\"}}"
req DELETE "/Patient/$PID"
check "delete referenced Patient" $([ "$CODE" = 200 ] || [ "$CODE" = 204 ]; echo $?) "$CODE"
req GET "/Patient/$PID"
check "read deleted -> 410" $([ "$CODE" = 410 ]; echo $?) "$CODE"
req GET "/Patient?identifier=urn:smoke|$RUN"
check "search after delete -> 0" $([ "$(js "d['total']")" = 0 ]; echo $?) "$(js "d.get('total')")"
req DELETE "/Observation?code=urn:smoke-page|$RUN"
check "conditional delete of many" $([ "$CODE" = 200 ]; echo $?) "$CODE"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
