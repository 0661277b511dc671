-- PUT /kv/{random key} with a 100-byte body (kv-server directly, or through kv-proxy).
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "lib.lua")
local headers = { ["Content-Type"] = "application/octet-stream" }

setup = lib.setup
init = lib.init

request = function()
  return wrk.format("PUT", "/kv/" .. lib.key(), headers, lib.value)
end
