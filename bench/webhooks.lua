-- wrk script: POSTs pre-signed Flex webhooks, each thread its own share, each event once.
-- usage: wrk -t T -c C -d SECONDS -s bench/webhooks.lua URL -- REQUESTS_FILE T
-- REQUESTS_FILE: one request a line: svix-id <TAB> svix-timestamp <TAB> svix-signature <TAB> body

local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   local path, threads = args[1], tonumber(args[2])
   -- wrk calls request() once to check the script before sending anything: give it a harmless
   -- first request so that no event is skipped.
   requests, index, i = {wrk.format("GET", "/healthz")}, 0, 0
   for line in io.lines(path) do
      if i % threads == tid then
         local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         requests[#requests + 1] = wrk.format("POST", "/webhooks/flex", {
            ["svix-id"] = id, ["svix-timestamp"] = ts, ["svix-signature"] = sig,
            ["content-type"] = "application/json",
         }, body)
      end
      i = i + 1
   end
end

function request()
   index = index + 1
   if index > #requests then
      index = #requests  -- only sent while the last replies are still arriving; a duplicate
   end
   return requests[index]
end

function response(status, headers, body)
   if body and body:find('"position"', 1, true) then
      replies = (replies or 0) + 1
   end
   if replies and replies >= #requests - 1 then
      wrk.thread:stop()  -- every event of this thread has its reply
   end
end

function done(summary, latency, requests)
   io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
