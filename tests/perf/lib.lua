-- Shared by the wrk scripts: random keys from the keyspace, the 100-byte value, base64.
-- Settings come from the environment (compare.sh sets them):
--   PERF_KEYS        how many keys (key:000000000000 .. key:%012d of KEYS-1)
--   PERF_VALUE_SIZE  bytes per written value (default 100)
--   PERF_TARGETS     optional "host:port,host:port,...": wrk thread i connects to the
--                    ((i - 1) % n + 1)-th of them instead of the URL's address, so the
--                    threads take turns over several servers (etcd.sh: the members)
local lib = {}

lib.keys = tonumber(os.getenv("PERF_KEYS") or "10000")
lib.value_size = tonumber(os.getenv("PERF_VALUE_SIZE") or "100")

local alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
local chars = {}
for i = 0, lib.value_size - 1 do
  local j = (i % #alphabet) + 1
  chars[#chars + 1] = alphabet:sub(j, j)
end
-- The same printable value helper.py writes: URL-safe, so webdis can take it in a path.
lib.value = table.concat(chars)

function lib.key()
  return string.format("key:%012d", math.random(0, lib.keys - 1))
end

local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function lib.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64:sub(c1 + 1, c1 + 1) .. b64:sub(c2 + 1, c2 + 1)
      .. (b and b64:sub(c3 + 1, c3 + 1) or "=") .. (c and b64:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- Give every wrk thread its own random sequence (and, with PERF_TARGETS, its server).
-- setup() runs in wrk's main Lua state, init() in each thread's, where thread:set put
-- the global perf_thread.
local threads = 0
local targets = nil
function lib.setup(thread)
  threads = threads + 1
  thread:set("perf_thread", threads)
  local list = os.getenv("PERF_TARGETS") or ""
  if list ~= "" then
    if not targets then
      targets = {}
      for host, port in list:gmatch("([^,:]+):(%d+)") do
        targets[#targets + 1] = wrk.lookup(host, port)[1]
      end
    end
    thread.addr = targets[(threads - 1) % #targets + 1]
  end
end

function lib.init()
  math.randomseed(os.time() * 1000 + (rawget(_G, "perf_thread") or 0) * 7919)
end

return lib
