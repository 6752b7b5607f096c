import { assert, describe, it } from "@effect/vitest"
import { Duration, Result } from "effect"
import * as Input from "../src/Input.js"

describe("Input.shown", () => {
  it("writes short values out as they read", () => {
    assert.strictEqual(Input.shown("soon"), '"soon"')
    assert.strictEqual(Input.shown("a\nb"), '"a\\nb"')
    assert.strictEqual(Input.shown(1.5), "1.5")
    assert.strictEqual(Input.shown(false), "false")
    assert.strictEqual(Input.shown(Duration.seconds(3)), "3s")
    assert.strictEqual(Input.shown(null), "null")
    assert.strictEqual(Input.shown([1]), "an array")
    const eighty = "x".repeat(80)
    assert.strictEqual(Input.shown(eighty), JSON.stringify(eighty))
  })

  it("a long string: its first 80 characters, an ellipsis and its length; it was written whole into the message", () => {
    const long = `${"a".repeat(79)}bcdef${"g".repeat(1_000_000)}`
    const text = Input.shown(long)
    assert.strictEqual(text, `"${"a".repeat(79)}b"… (1,000,084 characters)`)
    // Cut on a whole character: an emoji across the bound is left out, not halved.
    const emoji = `${"a".repeat(79)}😀${"z".repeat(10)}`
    assert.strictEqual(Input.shown(emoji), `"${"a".repeat(79)}"… (91 characters)`)
  })
})

describe("Input.shown: a Proxy", () => {
  it("a revoked Proxy, or one whose has trap throws, is shown by its kind: shown threw, and a check became a defect", () => {
    const { proxy, revoke } = Proxy.revocable({}, {})
    revoke()
    const trapped = new Proxy(
      {},
      {
        has() {
          throw new Error("trap")
        }
      }
    )
    assert.strictEqual(Input.shown(proxy), "an object")
    assert.strictEqual(Input.shown(trapped), "an object")
    assert.deepStrictEqual(Input.notABoolean({ all: trapped }, ["all"]), {
      path: "all",
      message: "expected true or false, got an object"
    })
    // Given as a duration: its issue, not a TypeError out of the check.
    for (const input of [proxy, trapped]) {
      const checked = Input.duration("timeout", input)
      assert.isTrue(Result.isFailure(checked) && checked.failure.path === "timeout")
    }
  })
})

describe("Input.thrownMessage", () => {
  it("a long message (a getter that threw a whole response body): its first 80 characters, an ellipsis and its length; it was written whole into every error message", () => {
    const long = `${"a".repeat(79)}bcdef${"g".repeat(1_000_000)}`
    assert.strictEqual(Input.thrownMessage(new Error(long)), `${"a".repeat(79)}b… (1,000,084 characters)`)
    assert.strictEqual(Input.thrownMessage(long), `${"a".repeat(79)}b… (1,000,084 characters)`)
    // Cut on a whole character: an emoji across the bound is left out, not halved.
    const emoji = `${"a".repeat(79)}😀${"z".repeat(10)}`
    assert.strictEqual(Input.thrownMessage(new TypeError(emoji)), `${"a".repeat(79)}… (91 characters)`)
    // Up to 80 characters, the message as it is.
    const eighty = "x".repeat(80)
    assert.strictEqual(Input.thrownMessage(new Error(eighty)), eighty)
    assert.strictEqual(Input.thrownMessage(42), "42")
  })
})

describe("Input.unknownKey", () => {
  const known: ReadonlySet<string> = new Set(["timeout"])
  it("names a plain misspelt key as written", () => {
    assert.strictEqual(Input.unknownKey({ timout: 1 }, known, "options.")?.path, "options.timout")
  })

  it("names the known key a misspelt one is likely a typo of, else the known ones, as misspeltKey does: it listed every key, no suggestion", () => {
    const keys: ReadonlySet<string> = new Set(["timeout", "retry", "cache"])
    assert.deepStrictEqual(Input.unknownKey({ timout: 1 }, keys, "options."), {
      path: "options.timout",
      message: "unknown option (did you mean timeout?)"
    })
    assert.deepStrictEqual(Input.unknownKey({ zzz: 1 }, keys), {
      path: "zzz",
      message: "unknown option (expected one of timeout, retry, cache)"
    })
    assert.deepStrictEqual(Input.unknownKey({ Retry: 1 }, keys, "", "field"), {
      path: "Retry",
      message: "unknown field (did you mean retry?)"
    })
    // The same message as misspeltKey's for the same key, from one place.
    assert.deepStrictEqual(Input.unknownKey({ timout: 1 }, keys), Input.misspeltKey({ timout: 1 }, keys))
  })

  it("quotes a key with a line break, a quote or a lone surrogate, and bounds a long one: it went raw into the message", () => {
    assert.strictEqual(Input.unknownKey({ "a\nb": 1 }, known, "o.")?.path, 'o."a\\nb"')
    assert.strictEqual(Input.unknownKey({ 'a"b': 1 }, known)?.path, '"a\\"b"')
    assert.strictEqual(Input.unknownKey({ "\ud800": 1 }, known)?.path, '"\\ud800"')
    const long = Input.unknownKey({ ["k".repeat(100_000)]: 1 }, known)?.path ?? ""
    assert.isBelow(long.length, 120)
    assert.include(long, "100,000 characters")
  })
})

describe("Input.wholeMillis", () => {
  const max = Input.maxRedisMillis
  it("rounds every positive number up, as documented: one below a nanosecond was refused as not above zero", () => {
    // 0.2 was 1 ms while 1e-9 (zero nanoseconds as a Duration) was "expected a duration above zero, got 1e-9".
    assert.deepStrictEqual(Input.wholeMillis("ttl", 0.2, max), Result.succeed(1))
    assert.deepStrictEqual(Input.wholeMillis("ttl", 1e-9, max), Result.succeed(1))
    assert.deepStrictEqual(Input.wholeMillis("ttl", Number.MIN_VALUE, max), Result.succeed(1))
    assert.deepStrictEqual(Input.wholeMillis("ttl", 1500.5, max), Result.succeed(1501))
    // Where zero is allowed, it was 0 ms (no grace at all) against 1 ms for 1e-6.
    assert.deepStrictEqual(Input.wholeMillis("staleFor", 1e-9, max, { allowZero: true }), Result.succeed(1))
    assert.deepStrictEqual(Input.wholeMillis("staleFor", 0, max, { allowZero: true }), Result.succeed(0))
    assert.deepStrictEqual(
      Input.wholeMillis("ttl", 0, max),
      Result.fail({ path: "ttl", message: "expected a duration above zero, got 0" })
    )
  })

  it("a duration below a nanosecond that is not a number says so: it was refused as not above zero", () => {
    assert.deepStrictEqual(
      Input.wholeMillis("ttl", "0.0000001 millis", max),
      Result.fail({
        path: "ttl",
        message: 'expected a duration of at least 1 nanosecond (the finest one holds), got "0.0000001 millis"'
      })
    )
    assert.deepStrictEqual(
      Input.duration("timeout", 1e-9),
      Result.fail({
        path: "timeout",
        message: "expected a duration of at least 1 nanosecond (the finest one holds), got 1e-9"
      })
    )
    assert.deepStrictEqual(
      Input.wholeMillis("ttl", "0 millis", max),
      Result.fail({ path: "ttl", message: 'expected a duration above zero, got "0 millis"' })
    )
  })
})

describe("Input.routePath", () => {
  it("a path whose segment is . or .. is refused: a URL normalizes it away, so no request reaches the route", () => {
    for (const path of ["/metrics/.", "/metrics/..", "/.", "/..", "/v1/../metrics", "/a/./b"]) {
      // What a client sends for it (fetch, curl, a browser) is another path.
      assert.notStrictEqual(new URL(`http://localhost${path}`).pathname, path)
      const checked = Input.routePath("metricsPath", path, "/metrics")
      assert.isTrue(Result.isFailure(checked), path)
      if (Result.isFailure(checked)) {
        assert.strictEqual(checked.failure.path, "metricsPath")
        assert.strictEqual(
          checked.failure.message,
          `expected a path such as "/metrics", got ${JSON.stringify(path)}: a "." or ".." segment is resolved away by clients, no request reaches it`
        )
      }
    }
    for (const path of ["/", "/metrics", "/.well-known/health", "/v1.2/x..y", "/a/.b/c.", "/..a"]) {
      assert.strictEqual(new URL(`http://localhost${path}`).pathname, path)
      assert.deepStrictEqual(
        Input.routePath("metricsPath", path, "/metrics"),
        Result.succeed(path as `/${string}`),
        path
      )
    }
  })
})
