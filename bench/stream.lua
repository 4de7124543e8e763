-- wrk script: a streamed chat completion (64 tokens from the mock upstream).
-- MODEL picks the route (an OpenAI-format or an Anthropic-format target);
-- USAGE=1 asks for the usage chunk (the pure passthrough path).
-- ENDPOINT=responses sends the same stream as a Responses API request.
local model = os.getenv("MODEL") or "stream-openai"
local usage = os.getenv("USAGE") == "1" and ',"stream_options":{"include_usage":true}' or ""
wrk.method = "POST"
if os.getenv("ENDPOINT") == "responses" then
  wrk.path = "/v1/responses"
  wrk.body = '{"model":"' .. model .. '","stream":true,"input":"Stream to the benchmark"}'
else
  wrk.body = '{"model":"' .. model .. '","stream":true' .. usage .. ',"messages":[{"role":"user","content":"Stream to the benchmark"}]}'
end
wrk.headers["Content-Type"] = "application/json"

-- The JSON summary, from bench/summary.lua (found beside this script).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")
