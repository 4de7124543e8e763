-- wrk script: a small non-streaming chat completion; prints a JSON summary.
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark"}],"temperature":0.2,"user":"bench-user@example.com"}'
wrk.headers["Content-Type"] = "application/json"
-- Ignored unless the target has keys (the security run of bench/run.sh).
wrk.headers["Authorization"] = "Bearer sk-bench-client"

-- The JSON summary, from bench/summary.lua (found beside this script).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")
