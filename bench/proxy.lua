-- wrk script for bench/proxy.py: a ~1 KB chat completion request (system
-- prompt, a user turn, `user` and `metadata`), streamed when STREAM=1 (then
-- asking for the usage chunk, so every proxy forwards the bytes as they come).
local model = os.getenv("MODEL") or "bench"
local stream = os.getenv("STREAM") == "1"
local system = string.rep("You are a careful assistant for the benchmark team. Answer briefly and cite the runbook. ", 6)
local user = "Summarise yesterday's incident for bench-user@example.com: the gateway's p99 rose after the deploy "
  .. "of build 4812, retries doubled on the EU pool, and the on-call paged twice before the rollback finished. "
  .. "List the three follow-ups we agreed on and who owns each one."
-- TURNS=N: N earlier exchanges before the user turn, as an agent resends its
-- conversation (the same as `bench/instructions.py --turns N`; the body is
-- the same in every request).
local pairs_ = {
  {"Ticket 88213: the EU pool answered 502 from 09:14 to 09:31 UTC. Who was paged?",
   "The on-call, Ana (ana.silva@example.com), was paged at 09:16 and acked at 09:18."},
  {"Pull the retry counts for build 4812 and compare them with build 4799.",
   "Build 4812 retried 2.1 times per failed call on average, build 4799 1.0 times; "
     .. "the difference is the new jitter of 250 ms."},
  {"Draft the customer note for account 3310-7781; their contact is +44 20 7946 0958.",
   "Draft: between 09:14 and 09:31 UTC on 2026-11-30 some requests failed with 502. "
     .. "Retries are now capped at 2 and we alert at a retry ratio of 1.5."},
}
local history = ""
for i = 0, (tonumber(os.getenv("TURNS") or "0") - 1) do
  local q, a = pairs_[i % 3 + 1][1], pairs_[i % 3 + 1][2]
  history = history .. '{"role":"user","content":"' .. q .. " (turn " .. i .. ')"},'
    .. '{"role":"assistant","content":"' .. a .. '"},'
end
wrk.method = "POST"
wrk.body = '{"model":"' .. model .. '",'
  .. (stream and '"stream":true,"stream_options":{"include_usage":true},' or '')
  .. '"messages":[{"role":"system","content":"' .. system .. '"},' .. history
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
