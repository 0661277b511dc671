-- webdis SET: GET /SET/{random key}/{100-byte value} (redis behind it does not fsync).
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "lib.lua")

setup = lib.setup
init = lib.init

request = function()
  return wrk.format("GET", "/SET/" .. lib.key() .. "/" .. lib.value)
end
