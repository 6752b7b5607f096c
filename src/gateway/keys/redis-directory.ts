/**
 * The key directory's scripts on Redis (see `redis.ts` for the keys): look a key up by its secret's hash
 * or its id, insert and remove one (clearing what an earlier key of its id left), page through the ids,
 * disable; and how a stored record is read back.
 *
 * @internal
 */
import { Result } from "effect"
import { Redis } from "effect/persistence"
import { decodeRecord, type KeyRecord } from "./options.js"

// HSCAN pages (COUNT 500) a listing adds to the index of ids at most: about 10,000 ids.
export const fillPages = 20

export const lookupScript = Redis.script(
  (hashes: string, keys: string, disabled: string, sha256: string) => [hashes, keys, disabled, sha256],
  {
    numberOfKeys: 3,
    lua: `
local id = redis.call("HGET", KEYS[1], ARGV[1])
if not id then return false end
local record = redis.call("HGET", KEYS[2], id)
if not record then return false end
return { record, redis.call("HEXISTS", KEYS[3], id) }
`
  }
).withReturnType<readonly [string, number] | null>()

export const byIdScript = Redis.script((keys: string, disabled: string, id: string) => [keys, disabled, id], {
  numberOfKeys: 2,
  lua: `
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return false end
return { record, redis.call("HEXISTS", KEYS[2], ARGV[1]) }
`
}).withReturnType<readonly [string, number] | null>()

// What is left of an earlier key of the id: `clear(from, n, at)` deletes, for KEYS[from .. from + n - 1] (the new
// or removed key's budget counters without their window) with their periods at ARGV[at ..] (0: none), each
// counter in the window of Redis's time now (older windows expire, and no one reads them), then every key after
// them (the key's rate-limit windows).
const clearLua = `
local function clear(from, n, at)
  local time = redis.call("TIME")
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  for i = 0, n - 1 do
    local h = KEYS[from + i]
    local period = tonumber(ARGV[at + i])
    if period > 0 then
      h = h .. ":" .. string.format("%.0f", period) .. ":" .. string.format("%.0f", math.floor(now / period))
    end
    redis.call("DEL", h, h .. ":leases")
  end
  for i = from + n, #KEYS do redis.call("DEL", KEYS[i]) end
end
`

// KEYS: keys, hashes, ids, disabled, then what `clear` clears. ARGV: id, sha256, json, maxKeys, count of counters,
// their periods. A disabled mark of an earlier key of the id (removed by hand) goes too: the key answered enabled.
export const insertScript = Redis.script(
  (
    keys: string,
    hashes: string,
    ids: string,
    disabled: string,
    cleared: ReadonlyArray<string>,
    id: string,
    sha256: string,
    json: string,
    maxKeys: number,
    periods: ReadonlyArray<number>
  ) => [keys, hashes, ids, disabled, ...cleared, id, sha256, json, maxKeys, periods.length, ...periods],
  {
    numberOfKeys: (_keys, _hashes, _ids, _disabled, cleared) => 4 + cleared.length,
    lua: `${clearLua}
if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then return "id-taken" end
if redis.call("HEXISTS", KEYS[2], ARGV[2]) == 1 then return "secret-taken" end
if redis.call("HLEN", KEYS[1]) >= tonumber(ARGV[4]) then return "full" end
clear(5, tonumber(ARGV[5]), 6)
redis.call("HDEL", KEYS[4], ARGV[1])
redis.call("HSET", KEYS[1], ARGV[1], ARGV[3])
redis.call("HSET", KEYS[2], ARGV[2], ARGV[1])
redis.call("ZADD", KEYS[3], 0, ARGV[1])
return "inserted"
`
  }
).withReturnType<string>()

// KEYS: keys, hashes, disabled, ids, then what `clear` clears. ARGV: id, sha256, json, count of counters, their
// periods. Removes the key only while it is still the one read: of the secret `sha256`, or (a record this version
// cannot read) stored as `json` exactly; the counters are that key's. "changed" when the id holds another now,
// "missing" when none.
export const removeScript = Redis.script(
  (
    keys: string,
    hashes: string,
    disabled: string,
    ids: string,
    cleared: ReadonlyArray<string>,
    id: string,
    sha256: string,
    json: string,
    periods: ReadonlyArray<number>
  ) => [keys, hashes, disabled, ids, ...cleared, id, sha256, json, periods.length, ...periods],
  {
    numberOfKeys: (_keys, _hashes, _disabled, _ids, cleared) => 4 + cleared.length,
    lua: `${clearLua}
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return "missing" end
local ok, decoded = pcall(cjson.decode, record)
local sha256 = ok and type(decoded) == "table" and type(decoded.sha256) == "string" and decoded.sha256 or false
if ARGV[3] ~= "" then
  if record ~= ARGV[3] then return "changed" end
elseif sha256 ~= ARGV[2] then
  return "changed"
end
redis.call("HDEL", KEYS[1], ARGV[1])
if sha256 and redis.call("HGET", KEYS[2], sha256) == ARGV[1] then redis.call("HDEL", KEYS[2], sha256) end
redis.call("HDEL", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
clear(5, tonumber(ARGV[4]), 5)
return "removed"
`
  }
).withReturnType<string>()

// KEYS: keys, ids. ARGV: ids an HSCAN of the keys found. Adds to the index those still keys: one deleted since the scan
// would stay in it for good, a ghost that the listing skips but counts, so that an index missing keys looked whole.
export const indexScript = Redis.script(
  (keys: string, ids: string, found: ReadonlyArray<string>) => [keys, ids, ...found],
  {
    numberOfKeys: 2,
    lua: `
for i = 1, #ARGV do
  if redis.call("HEXISTS", KEYS[1], ARGV[i]) == 1 then redis.call("ZADD", KEYS[2], 0, ARGV[i]) end
end
return 0
`
  }
)

// KEYS: keys, disabled, ids. ARGV: after ("" for the first page), count. Returns { more, incomplete,
// id1, json1, disabled1, ... }: up to count ids after `after`, each with its record ("" when gone)
// and 1 when disabled; incomplete 1 while the ids hold fewer than the keys.
export const pageScript = Redis.script(
  (keys: string, disabled: string, ids: string, after: string, count: number) => [keys, disabled, ids, after, count],
  {
    numberOfKeys: 3,
    lua: `
local count = tonumber(ARGV[2])
local from = ARGV[1] == "" and "-" or "(" .. ARGV[1]
local ids = redis.call("ZRANGEBYLEX", KEYS[3], from, "+", "LIMIT", 0, count + 1)
local incomplete = redis.call("ZCARD", KEYS[3]) < redis.call("HLEN", KEYS[1]) and 1 or 0
local out = { #ids > count and 1 or 0, incomplete }
for i = 1, math.min(#ids, count) do
  out[#out + 1] = ids[i]
  out[#out + 1] = redis.call("HGET", KEYS[1], ids[i]) or ""
  out[#out + 1] = redis.call("HEXISTS", KEYS[2], ids[i])
end
return out
`
  }
).withReturnType<ReadonlyArray<string | number>>()

export const disableScript = Redis.script(
  (keys: string, disabled: string, id: string, flag: boolean) => [keys, disabled, id, flag ? 1 : 0],
  {
    numberOfKeys: 2,
    lua: `
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return false end
if ARGV[2] == "1" then redis.call("HSET", KEYS[2], ARGV[1], 1) else redis.call("HDEL", KEYS[2], ARGV[1]) end
return record
`
  }
).withReturnType<string | null>()

// A stored record, or `undefined` when it does not parse or decode (edited by hand, written by a newer version).
export const record = (json: string, disabled: boolean): KeyRecord | undefined => {
  let parsed: unknown
  try {
    parsed = JSON.parse(json)
  } catch {
    return undefined
  }
  const checked = decodeRecord(parsed)
  return Result.isSuccess(checked) ? { ...checked.success, disabled } : undefined
}

// The id a record names, when it is at least an object with a string id.
export const storedId = (json: string): string | undefined => {
  try {
    const parsed: unknown = JSON.parse(json)
    const id = typeof parsed === "object" && parsed !== null ? (parsed as { id?: unknown }).id : undefined
    return typeof id === "string" ? id.slice(0, 64) : undefined
  } catch {
    return undefined
  }
}

// KEYS: keys, disabled. ARGV: ids. Returns those no longer stored, or disabled.
export const retiredScript = Redis.script(
  (keys: string, disabled: string, ids: ReadonlyArray<string>) => [keys, disabled, ...ids],
  {
    numberOfKeys: 2,
    lua: `
local out = {}
for i = 1, #ARGV do
  if redis.call("HEXISTS", KEYS[1], ARGV[i]) == 0 or redis.call("HEXISTS", KEYS[2], ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
  end
end
return out
`
  }
).withReturnType<ReadonlyArray<string>>()
