import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import {
  CircuitOpenError,
  isRetryable,
  ModelError,
  type Reason,
  shouldFallback,
  ShuttingDownError,
  StreamInterruptedError,
  TimeoutError
} from "../src/AiError.js"

const model = (reason: Reason, field?: string) => new ModelError({ reason, message: reason, field })

describe("AiError predicates", () => {
  const table: ReadonlyArray<
    readonly [
      string,
      ModelError | TimeoutError | CircuitOpenError | ShuttingDownError | StreamInterruptedError,
      boolean,
      boolean
    ]
  > = [
    ["RateLimited", model("RateLimited"), true, true],
    ["Overloaded", model("Overloaded"), true, true],
    ["Transport", model("Transport"), true, true],
    ["Timeout (provider)", model("Timeout"), true, true],
    ["Unavailable", model("Unavailable"), true, true],
    ["Unauthorized", model("Unauthorized"), false, true],
    ["Decode", model("Decode"), false, true],
    ["InvalidRequest", model("InvalidRequest", "temperature"), false, false],
    ["InvalidRequest on model (no such model here)", model("InvalidRequest", "model"), false, true],
    ["ContentFilter", model("ContentFilter"), false, false],
    ["TimeoutError before text", new TimeoutError({ limit: "request", timeout: Duration.seconds(1) }), true, true],
    [
      "TimeoutError after text",
      new TimeoutError({ limit: "idle", timeout: Duration.seconds(1), partialText: "Hel" }),
      false,
      false
    ],
    ["CircuitOpenError", new CircuitOpenError({ breaker: "p", state: "open" }), false, true],
    ["ShuttingDownError", new ShuttingDownError({ message: "closing" }), false, false],
    ["StreamInterruptedError", new StreamInterruptedError({ partialText: "Hel", reason: "Transport" }), false, false]
  ]
  for (const [name, error, retryable, fallback] of table) {
    it(`${name}: isRetryable ${retryable}, shouldFallback ${fallback}`, () => {
      assert.strictEqual(isRetryable(error), retryable)
      assert.strictEqual(shouldFallback(error), fallback)
    })
  }
})
