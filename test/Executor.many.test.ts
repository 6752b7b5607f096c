/**
 * `executeMany` traced and untraced: each request is read as often either way (checked once),
 * and the cap on its requests (`maxRequests`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Result, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import type * as Executor from "../src/Executor.js"
import type { GenerateRequest } from "../src/Model.js"
import { setup } from "./utils/executor.js"
import { recording } from "./utils/tracer.js"

/** A request that counts each read of its fields. */
const counting = (prompt: string) => {
  const reads = { count: 0 }
  const request = new Proxy({ prompt } as GenerateRequest, {
    get(target, key, receiver) {
      if (typeof key === "string") reads.count++
      return Reflect.get(target, key, receiver)
    }
  })
  return { request, reads }
}

describe("Executor.executeMany: each request checked once", () => {
  it.effect("a traced executeMany reads each request as often as a traced execute does, and gives each its span", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: (r) => `re: ${r.prompt}` })
      const { spans, tracer } = recording()
      const traced = <A, E>(effect: Effect.Effect<A, E>) =>
        effect.pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, tracer))
      const alone = [counting("a"), counting("b")]
      for (const { request } of alone) yield* traced(executor.execute(request))
      const made = [counting("a"), counting("b")]
      const results = yield* traced(
        executor.executeMany(
          made.map((m) => m.request),
          { concurrency: 2 }
        )
      )
      assert.deepStrictEqual(
        results.map((r) => (Result.isSuccess(r) ? r.success.text : "error")),
        ["re: a", "re: b"]
      )
      assert.isAbove(alone[0]!.reads.count, 0)
      assert.deepStrictEqual(
        made.map((m) => m.reads.count),
        alone.map((m) => m.reads.count)
      )
      const calls = spans.filter((s) => s.name === "Executor.execute")
      assert.deepStrictEqual(
        calls.map((s) => [s.attributes.get("gen_ai.provider.name"), s.attributes.get("orchestra.domain")]),
        [
          ["mock", "none"],
          ["mock", "none"],
          ["mock", "none"],
          ["mock", "none"]
        ]
      )
      const many = spans.find((s) => s.name === "Executor.executeMany")
      assert.isDefined(many)
      assert.isTrue(calls.slice(2).every((s) => s.parent._tag === "Some" && s.parent.value.spanId === many!.spanId))
    })
  )

  it.effect("traced, a refused request still names its place, and the others run", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const { tracer } = recording()
      const results = yield* executor
        .executeMany([{ prompt: "a" }, { prompt: 5 } as never, { prompt: "c" }])
        .pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, tracer))
      assert.deepStrictEqual(
        results.map((r) => (Result.isSuccess(r) ? "ok" : r.failure._tag === "ModelError" && r.failure.field)),
        ["ok", "requests[1].prompt", "ok"]
      )
      assert.strictEqual(yield* control.calls, 2)
    })
  )
})

describe("Executor.executeMany: maxRequests", () => {
  // `ManyOptions` (src/Executor.ts) does not declare the option yet: given through a variable.
  const many = (maxRequests: unknown): Executor.ManyOptions => ({ concurrency: 2, maxRequests }) as Executor.ManyOptions

  it.effect("caps the requests of one call: an array or an iterable longer than it is refused, naming requests", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const results = yield* executor.executeMany([{ prompt: "a" }, { prompt: "b" }], many(2))
      assert.deepStrictEqual(results.map(Result.isSuccess), [true, true])
      let yielded = 0
      const iterable = {
        *[Symbol.iterator]() {
          for (;;) {
            yielded++
            yield { prompt: "x" }
          }
        }
      }
      for (const requests of [[{ prompt: "a" }, { prompt: "b" }, { prompt: "c" }], iterable]) {
        const error = yield* Effect.flip(executor.executeMany(requests, many(2)))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "requests"])
        assert.include(error.message, "expected at most 2 requests")
      }
      assert.strictEqual(yielded, 3, "an iterable is read one past the cap, no further")
      assert.strictEqual(yield* control.calls, 2)
    })
  )

  it.effect("NaN, 0, negative, fractional or not a number: refused at once, naming maxRequests", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const maxRequests of [Number.NaN, 0, -1, 1.5, "10", null, Number.POSITIVE_INFINITY]) {
        const error = yield* Effect.flip(executor.executeMany([{ prompt: "a" }], many(maxRequests)))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "maxRequests"], String(maxRequests))
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )
})

describe("Executor.executeMany: options that throw when read", () => {
  it.effect("a getter that throws is an InvalidRequest naming the option, not a defect of the whole call", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const field of ["concurrency", "maxRequests", "timeout", "retry", "domain", "provider", "cache"]) {
        const options = Object.defineProperty({}, field, {
          enumerable: true,
          get() {
            throw new Error(`${field} getter`)
          }
        }) as Executor.ManyOptions
        const error = yield* Effect.flip(executor.executeMany([{ prompt: "a" }], options))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", field])
        assert.include(error.message, `${field} getter`)
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )
})

describe("Executor.execute, embed and stream: options that throw when read", () => {
  const throwing = (field: string) =>
    Object.defineProperty({}, field, {
      enumerable: true,
      get() {
        throw new Error(`${field} getter`)
      }
    })
  const calls = (executor: Executor.Service, field: string) =>
    [
      ["execute", executor.execute({ prompt: "a" }, throwing(field) as Executor.ExecuteOptions)],
      ["embed", executor.embed({ texts: ["a"] }, throwing(field) as Executor.ExecuteOptions)],
      [
        "stream",
        Stream.runDrain(
          executor.stream(
            { prompt: "a" },
            throwing(field.replace(/^timeout$/, "firstChunkTimeout")) as Executor.StreamOptions
          )
        )
      ]
    ] as const

  it.effect("a getter that throws is an InvalidRequest naming the option, as in executeMany, not a defect", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const field of ["timeout", "retry", "domain", "provider", "cache"]) {
        for (const [name, call] of calls(executor, field)) {
          const exit = yield* Effect.exit(call)
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.isTrue(error?._tag === "Some", `${name} ${field}: a typed failure, not a defect`)
          const value =
            error?._tag === "Some" ? (error.value as { reason?: string; field?: string; message: string }) : undefined
          const named = name === "stream" ? field.replace(/^timeout$/, "firstChunkTimeout") : field
          assert.deepStrictEqual([value?.reason, value?.field], ["InvalidRequest", named], `${name} ${field}`)
          assert.include(value?.message, `${named} getter`)
        }
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )
})

describe("Executor.executeMany: interrupted", () => {
  it.effect("its caller regains control once the calls it interrupts have ended, traced or not", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ latency: "1 second" })
      const { tracer } = recording()
      for (const traced of [false, true]) {
        let inFlightAtReturn = -1
        const many = executor.executeMany([{ prompt: "a" }, { prompt: "b" }, { prompt: "c" }], { concurrency: 2 })
        const fiber = yield* Effect.forkChild(
          (traced ? many.pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, tracer)) : many).pipe(
            Effect.onInterrupt(() =>
              Effect.map(control.inFlight, (n) => {
                inFlightAtReturn = n
              })
            )
          )
        )
        yield* TestClock.adjust("500 millis")
        assert.strictEqual(yield* control.inFlight, 2)
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(inFlightAtReturn, 0, `traced: ${traced}`)
      }
    })
  )
})
