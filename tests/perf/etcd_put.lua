-- etcd 3.4 JSON gateway: POST /v3/kv/put {"key": base64, "value": base64}.
-- PERF_ETCD_PREFIX (default none) goes before each key, e.g. "gw/".
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "lib.lua")
local headers = { ["Content-Type"] = "application/json" }
local value = lib.base64(lib.value)
local prefix = os.getenv("PERF_ETCD_PREFIX") or ""

setup = lib.setup
init = lib.init

request = function()
  local body = '{"key":"' .. lib.base64(prefix .. lib.key()) .. '","value":"' .. value .. '"}'
  return wrk.format("POST", "/v3/kv/put", headers, body)
end
