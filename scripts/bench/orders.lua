-- wrk script: POST /api/v1/orders for one item, rotating over the bearer tokens in tokens.txt.
-- Usage: ITEM_ID=1 wrk -t2 -c64 -d20s -s scripts/bench/orders.lua http://127.0.0.1:8080
local tokens = {}
for line in io.lines(os.getenv("TOKENS") or "tokens.txt") do tokens[#tokens + 1] = line end
local item = os.getenv("ITEM_ID") or "1"
local body = '{"lines":[{"itemId":' .. item .. ',"quantity":1}]}'
local counter = 0
local statuses = {}

function request()
  counter = counter + 1
  local token = tokens[(counter % #tokens) + 1]
  return wrk.format("POST", "/api/v1/orders",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
