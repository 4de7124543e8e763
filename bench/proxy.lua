-- wrk script for bench/proxy.py: a ~1 KB chat completion request (system
-- prompt, a user turn, `user` and `metadata`), streamed when STREAM=1 (then
-- asking for the usage chunk, so every proxy forwards the bytes as they come).
local model = os.getenv("MODEL") or "bench"
local stream = os.getenv("STREAM") == "1"
local system = string.rep("You are a careful assistant for the benchmark team. Answer briefly and cite the runbook. ", 6)
local user = "Summarise yesterday's incident for bench-user@example.com: the gateway's p99 rose after the deploy "
  .. "of build 4812, retries doubled on the EU pool, and the on-call paged twice before the rollback finished. "
  .. "List the three follow-ups we agreed on and who owns each one."
wrk.method = "POST"
wrk.body = '{"model":"' .. model .. '",'
  .. (stream and '"stream":true,"stream_options":{"include_usage":true},' or '')
  .. '"messages":[{"role":"system","content":"' .. system .. '"},'
  .. '{"role":"user","content":"' .. user .. '"}],'
  .. '"temperature":0.2,"max_tokens":256,"user":"bench-user@example.com","metadata":{"team":"bench"}}'
wrk.headers["Content-Type"] = "application/json"
-- Ignored unless the target has keys (the production-shaped Sluice).
wrk.headers["Authorization"] = "Bearer sk-bench-client"
-- SDK=1: also the headers the official openai Python SDK sends (captured
-- from it), Accept-Encoding among them.
if os.getenv("SDK") == "1" then
  local sdk = {
    ["Accept-Encoding"] = "gzip, deflate", ["Accept"] = "application/json",
    ["User-Agent"] = "OpenAI/Python 3.57.0", ["X-Stainless-Lang"] = "python",
    ["X-Stainless-Package-Version"] = "3.57.0", ["X-Stainless-OS"] = "Linux",
    ["X-Stainless-Arch"] = "x64", ["X-Stainless-Runtime"] = "CPython",
    ["X-Stainless-Runtime-Version"] = "3.11.7", ["X-Stainless-Async"] = "false",
    ["X-Stainless-Retry-Count"] = "0", ["X-Stainless-Read-Timeout"] = "600",
  }
  for k, v in pairs(sdk) do wrk.headers[k] = v end
end

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")
