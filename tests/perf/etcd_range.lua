-- etcd 3.4 JSON gateway: POST /v3/kv/range {"key": base64}, one random key; etcd's
-- default, a linearizable read. PERF_ETCD_PREFIX (default none) goes before each key.
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "lib.lua")
local headers = { ["Content-Type"] = "application/json" }
local prefix = os.getenv("PERF_ETCD_PREFIX") or ""

setup = lib.setup
init = lib.init

request = function()
  return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. lib.base64(prefix .. lib.key()) .. '"}')
end
