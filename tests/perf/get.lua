-- GET PREFIX{random key}: kv (/kv/), webdis (/GET/), nginx and Varnish (/kv/), and the
-- trivial nginx `return 200` (which ignores the path). PERF_PREFIX picks the prefix.
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "lib.lua")
local prefix = os.getenv("PERF_PREFIX") or "/kv/"

setup = lib.setup
init = lib.init

request = function()
  return wrk.format("GET", prefix .. lib.key())
end
