-- wrk script: one /v1/predict example of BENCH_VALUES floats (env) for model
-- BENCH_MODEL; prints a JSON summary like chat.lua.
local n = tonumber(os.getenv("BENCH_VALUES") or "4")
local vals = {}
for i = 1, n do vals[i] = string.format("%.3f", ((i * 37) % 100) / 50 - 1) end
wrk.method = "POST"
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "m") .. '","data":[' .. table.concat(vals, ",") .. ']}'
wrk.headers["Content-Type"] = "application/json"

-- The JSON summary, from bench/summary.lua (found beside this script).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "../summary.lua")
