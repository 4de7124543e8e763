-- wrk script: a small non-streaming chat completion; prints a JSON summary.
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark"}],"temperature":0.2,"user":"bench-user@example.com"}'
wrk.headers["Content-Type"] = "application/json"
-- Ignored unless the target has keys (the security run of bench/run.sh).
wrk.headers["Authorization"] = "Bearer sk-bench-client"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
