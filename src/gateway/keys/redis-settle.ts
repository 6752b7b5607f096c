/**
 * The budget counters' scripts on Redis that end or extend a reservation (see `redis.ts` for the keys):
 * the settle, the give-back of a reserve whose answer never came, and the renewal of a lease.
 *
 * @internal
 */
import { Redis } from "effect/persistence"
import { leaseScript, ownsLua, readableLua } from "./redis-reserve.js"

// KEYS: per counter its hash and its leases (in the window it was reserved in). ARGV: reservation
// id, once (1: see `Ledger.settle`), lease ms, then per counter: amount held, amount spent, when
// it expires (ms since the epoch, its window's end and the longest lease; 0: never). A lease already swept is not given
// back twice. With once, a settle runs only while a lease of the id remains; a reservation that
// holds nothing leaves a mark instead, an empty lease of the first counter (swept as one). A
// counter that cannot be read is left as it is (and out of that test): the others are settled. KEYS end
// with the directory's keys and hashes, ARGV with per counter the id and secret's hash of its owner (""
// for none): a counter whose owner is no longer stored gets back what the id held on it, and nothing
// else (no spent, no expiry, no mark), so that it is not written again once its key was deleted.
// Returns per counter { 1, spent, held }, { 0, 0, 0 } for one that cannot be read, or { 2, 0, 0 } for
// one whose owner is gone, then 1 when it added the amounts (0: with once, the id was settled already,
// or its lease ended and was swept).
export const settleScript = Redis.script(
  (
    keys: ReadonlyArray<string>,
    directory: readonly [string, string],
    id: string,
    once: boolean,
    leaseMs: number,
    args: ReadonlyArray<number | string>
  ) => [...keys, ...directory, id, once ? 1 : 0, leaseMs, ...args],
  {
    numberOfKeys: (keys: ReadonlyArray<string>) => keys.length + 2,
    lua: `${readableLua}${ownsLua}
local id = ARGV[1]
local n = (#KEYS - 2) / 2
local ok = {}
local owned = {}
local mark = false
for i = 1, n do
  ok[i] = readable(KEYS[2 * i - 1], KEYS[2 * i])
  owned[i] = owns(KEYS[2 * n + 1], KEYS[2 * n + 2], ARGV[3 * n + 2 + 2 * i], ARGV[3 * n + 3 + 2 * i])
  if ok[i] and owned[i] and not mark then mark = KEYS[2 * i] end
end
local first = true
if ARGV[2] == "1" then
  first = false
  local leased = false
  for i = 1, n do
    local reserved = tonumber(ARGV[3 * i + 1])
    if ok[i] and reserved > 0 then
      leased = true
      if redis.call("ZSCORE", KEYS[2 * i], id .. "|" .. string.format("%.0f", reserved)) then first = true end
    end
  end
  if not leased and mark then
    local time = redis.call("TIME")
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    first = redis.call("ZADD", mark, "NX", now + tonumber(ARGV[3]), id .. "|0") == 1
  end
end
local out = {}
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local reserved = tonumber(ARGV[3 * i + 1])
  local actual = tonumber(ARGV[3 * i + 2])
  local expires = ARGV[3 * i + 3]
  if ok[i] then
    if first then
      if reserved > 0 and redis.call("ZREM", z, id .. "|" .. string.format("%.0f", reserved)) == 1 then
        redis.call("HINCRBY", h, "held", -reserved)
      end
      if owned[i] then
        if actual > 0 then redis.call("HINCRBY", h, "spent", actual) end
        if expires ~= "0" then
          redis.call("PEXPIREAT", h, expires)
          redis.call("PEXPIREAT", z, expires)
        end
      end
    end
    if owned[i] then
      local v = redis.call("HMGET", h, "spent", "held")
      out[3 * i - 2] = 1
      out[3 * i - 1] = tonumber(v[1]) or 0
      out[3 * i] = tonumber(v[2]) or 0
    else
      out[3 * i - 2] = 2
      out[3 * i - 1] = 0
      out[3 * i] = 0
    end
  else
    out[3 * i - 2] = 0
    out[3 * i - 1] = 0
    out[3 * i] = 0
  end
end
out[3 * n + 1] = first and 1 or 0
return out
`
  }
).withReturnType<ReadonlyArray<number>>()

// Windows a give-back looks through at most per counter, newest first: with a period far shorter than the
// lease, a reserve older than that many periods stays held until its lease ends.
const giveBackWindows = 1000

// KEYS: per counter its hash without the window. ARGV: lease ms, reservation id, then per counter: amount, period
// ms (0: none). After a reserve whose answer never came: it ran (if it did) within a lease before Redis's time
// now, in the window of its own time then, which the lease \`<id>|<amount>\` names (one window holds it); older, its
// lease has ended and holds nothing. Takes it back there, adding nothing spent. Returns per counter
// { 1, spent, held, window } where it was held (window -1 without a period), { 0, 0, 0, -1 } where nothing of the
// id was, { -1, 0, 0, window } where it was held on a counter that cannot be read (left as it is).
export const giveBackScript = leaseScript(`${readableLua}
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[1])
local id = ARGV[2]
local function holds(z, member)
  return redis.call("TYPE", z)["ok"] == "zset" and redis.call("ZSCORE", z, member) ~= false
end
local out = {}
for i = 1, #KEYS do
  local amount = tonumber(ARGV[2 * i + 1])
  local period = tonumber(ARGV[2 * i + 2])
  local member = id .. "|" .. string.format("%.0f", amount)
  local h = false
  local window = -1
  if amount > 0 then
    if period > 0 then
      local last = math.floor(now / period)
      local first = math.max(math.floor((now - lease) / period), last - ${giveBackWindows} + 1)
      for w = last, first, -1 do
        local hw = KEYS[i] .. ":" .. string.format("%.0f", period) .. ":" .. string.format("%.0f", w)
        if holds(hw .. ":leases", member) then
          h = hw
          window = w
          break
        end
      end
    elseif holds(KEYS[i] .. ":leases", member) then
      h = KEYS[i]
    end
  end
  local at = 4 * i - 3
  if not h then
    out[at], out[at + 1], out[at + 2], out[at + 3] = 0, 0, 0, -1
  elseif not readable(h, h .. ":leases") then
    out[at], out[at + 1], out[at + 2], out[at + 3] = -1, 0, 0, window
  else
    if redis.call("ZREM", h .. ":leases", member) == 1 then redis.call("HINCRBY", h, "held", -amount) end
    local v = redis.call("HMGET", h, "spent", "held")
    out[at], out[at + 1], out[at + 2], out[at + 3] = 1, tonumber(v[1]) or 0, tonumber(v[2]) or 0, window
  end
end
return out
`).withReturnType<ReadonlyArray<number>>()

// KEYS: as settleScript. ARGV: lease ms, reservation id, then per counter the amount held. A
// lease of the id still running on a counter ends `lease` from now instead (one that has ended
// is left to be swept, one settled is gone); the counter then lives at least as long. Returns
// how many leases were moved.
export const renewScript = leaseScript(`
local n = #KEYS / 2
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[1])
local moved = 0
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local amount = tonumber(ARGV[2 + i])
  if amount > 0 and redis.call("TYPE", z)["ok"] == "zset" then
    local member = ARGV[2] .. "|" .. string.format("%.0f", amount)
    local ends = tonumber(redis.call("ZSCORE", z, member))
    if ends and ends > now then
      redis.call("ZADD", z, "XX", now + lease, member)
      moved = moved + 1
      for _, key in ipairs({ h, z }) do
        local ttl = redis.call("PTTL", key)
        if ttl >= 0 and ttl < lease then redis.call("PEXPIRE", key, lease) end
      end
    end
  end
end
return moved
`).withReturnType<number>()
