-- wrk script: POST /api/v1/orders, one unit of each item in ITEM_ID (comma-separated: one line
-- per item), rotating over the bearer tokens in tokens.txt.
-- Usage: ITEM_ID=1 wrk -t2 -c64 -d20s -s scripts/bench/orders.lua http://127.0.0.1:8080
--        ITEM_ID=1,2,3 …   (orders with 3 lines on different items)
local tokens = {}
for line in io.lines(os.getenv("TOKENS") or "tokens.txt") do tokens[#tokens + 1] = line end
local lines = {}
for item in string.gmatch(os.getenv("ITEM_ID") or "1", "[^,]+") do
  lines[#lines + 1] = '{"itemId":' .. item .. ',"quantity":1}'
end
local body = '{"lines":[' .. table.concat(lines, ",") .. ']}'
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
