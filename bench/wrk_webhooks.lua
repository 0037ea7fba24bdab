-- wrk script: posts pre-signed, distinct Shopify deliveries read from a file made by bench/common.py.
-- Arguments after `--`: <requests file> <wrk thread count> <repeat|once>.
-- Each wrk thread takes its own slice of the file (line i goes to thread i % threads), so no two
-- threads post the same delivery. With `once`, a thread stops when its slice is used up; requests
-- its other connections still ask for meanwhile are fillers: a GET on the webhook URL, which the
-- server refuses at once with 405 (a POST there never gets 405), counted apart.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads, mode = args[1], tonumber(args[2]), args[3]
  repeat_all = (mode ~= "once")
  posts = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local webhook_id, hmac, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      posts[#posts + 1] = wrk.format("POST", wrk.path, {
        ["Content-Type"] = "application/json",
        ["X-Shopify-Topic"] = "fulfillments/create",
        ["X-Shopify-Hmac-Sha256"] = hmac,
        ["X-Shopify-Webhook-Id"] = webhook_id,
        ["X-Shopify-Shop-Domain"] = "bench.myshopify.com",
      }, body)
    end
    i = i + 1
  end
  filler_request = wrk.format("GET", wrk.path)
  -- wrk calls request() once on thread 0 before connecting, only to inspect the request; that
  -- call must not use up a delivery, or one of them would never be posted.
  inspecting = (id == 0)
  sent = 0
  webhook_responses = 0
  webhook_non2xx = 0
  filler = 0
end

function request()
  if inspecting then
    inspecting = false
    return posts[1]
  end
  sent = sent + 1
  if sent > #posts and not repeat_all then
    return filler_request
  end
  return posts[((sent - 1) % #posts) + 1]
end

function response(status, headers, body)
  if status == 405 and sent > #posts and not repeat_all then
    filler = filler + 1
  else
    webhook_responses = webhook_responses + 1
    if status < 200 or status > 299 then
      webhook_non2xx = webhook_non2xx + 1
    end
  end
  if not repeat_all and webhook_responses >= #posts then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local responses, non2xx, fillers = 0, 0, 0
  for _, thread in ipairs(threads) do
    responses = responses + thread:get("webhook_responses")
    non2xx = non2xx + thread:get("webhook_non2xx")
    fillers = fillers + thread:get("filler")
  end
  io.write(string.format(
    'WRKJSON {"duration_us": %d, "requests": %d, "webhook_responses": %d, "webhook_non2xx": %d, '
      .. '"filler": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.duration, summary.requests, responses, non2xx, fillers,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
