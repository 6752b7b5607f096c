/**
 * Defects found in review of the batch entry points (`Executor.executeMany`, `Batch.run`,
 * `Batch.stream`): each test failed before its fix.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Exit, Fiber, Result, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { type AiError, ModelError } from "../src/AiError.js"
import * as Batch from "../src/Batch.js"
import type { Service as ProviderService } from "../src/Model.js"
import * as Policy from "../src/Policy.js"
import { Router } from "../src/Router.js"
import { Executor } from "../src/Executor.js"
import { custom, managerOver as overProvider } from "./utils/batch.js"
import { setup } from "./utils/executor.js"
import { captureLogs } from "./utils/logs.js"
import { recording } from "./utils/tracer.js"

const response = (text: string) => ({
  text,
  finishReason: "stop" as const,
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "p",
  model: "m"
})

/** A manager over one provider `p` (domain `d`, 1 s deadline, no retry), in a scope of the test. */
const managerOver = (provider: ProviderService, options: { readonly maxConcurrent?: number } = {}) =>
  overProvider(provider, {
    ...options,
    domains: [{ name: "d", provider: "p", timeout: 1000, retry: Policy.retry({ maxAttempts: 1 }) }]
  })

/** `effect` in a span of a tracer the application provided: the executor's traced path. */
const inSpan = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(Effect.withSpan("test"), Effect.provideService(Tracer.Tracer, recording().tracer))

const fieldOf = (error: AiError | undefined): string | undefined =>
  error?._tag === "ModelError" && error.reason === "InvalidRequest" ? error.field : `${error?._tag}`

describe("executeMany names the request that was refused", () => {
  for (const traced of [false, true]) {
    it.effect(`requests[i] and its field, not request or prompt (${traced ? "traced" : "untraced"})`, () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({ respond: () => "ok" })
        const sparse: Array<{ prompt: string }> = [{ prompt: "a" }]
        sparse.length = 2
        const requests = [
          { prompt: "a" },
          { prompt: 1 },
          { prompt: "" },
          undefined,
          { messages: [{ role: "user", content: 5 }] },
          ...sparse
        ] as never
        const many = executor.executeMany(requests)
        const results = yield* traced ? inSpan(many) : many
        assert.deepStrictEqual(
          results.map((r) => (Result.isSuccess(r) ? "ok" : fieldOf(r.failure))),
          [
            "ok",
            "requests[1].prompt",
            "requests[2].prompt",
            "requests[3]",
            "requests[4].messages[0].content",
            "ok",
            "requests[6]"
          ]
        )
        const empty = results[2]!
        assert.strictEqual(
          Result.isFailure(empty) && empty.failure.message,
          "invalid requests[2].prompt: the prompt is empty"
        )
        assert.strictEqual(yield* control.calls, 2)
        // A single call still names its own request.
        const alone = yield* Effect.flip(executor.execute({ prompt: "" }))
        assert.strictEqual(fieldOf(alone), "prompt")
      })
    )
  }
})

describe("executeMany gives every request its own outcome", () => {
  for (const traced of [false, true]) {
    it.effect(
      `a request whose getter throws on any later read is that request's outcome (${traced ? "traced" : "untraced"})`,
      () =>
        Effect.gen(function* () {
          const { executor } = yield* setup({ respond: () => "ok" })
          // Whichever read throws (the check's, the plan's, the provider's): one outcome each, never a dead call.
          for (let reads = 1; reads <= 30; reads++) {
            let read = 0
            const request = {
              get prompt(): string {
                if (++read >= reads) throw new Error(`read ${read}`)
                return "hi"
              }
            }
            const many = executor.executeMany([request, { prompt: "x" }])
            const exit = yield* Effect.exit(traced ? inSpan(many) : many)
            assert.isTrue(Exit.isSuccess(exit), `throwing on read ${reads}: ${Exit.isFailure(exit) ? exit.cause : ""}`)
            if (Exit.isSuccess(exit)) {
              assert.deepStrictEqual(
                exit.value.map((r) => Result.isSuccess(r)),
                [read < reads, true],
                `throwing on read ${reads}`
              )
            }
          }
        })
    )
  }
})

describe("a batch has a bounded length", () => {
  it.effect("executeMany refuses more than 1,000,000 requests before reading them, naming requests", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      let reads = 0
      const huge = new Proxy([] as Array<{ prompt: string }>, {
        get: (target, key) => {
          if (key === "length") return 2 ** 32 - 1
          if (typeof key === "string" && /^\d+$/.test(key)) {
            if (++reads > 10) throw new Error("read the items of a batch that is too long")
            return { prompt: "x" }
          }
          return Reflect.get(target, key)
        }
      })
      const sparse: Array<{ prompt: string }> = []
      sparse.length = 2 ** 32 - 1
      for (const requests of [huge, sparse]) {
        const error = yield* Effect.flip(executor.executeMany(requests))
        assert.deepStrictEqual(
          [error.reason, error.field, error.message],
          [
            "InvalidRequest",
            "requests",
            "invalid requests: expected at most 1000000 requests (maxRequests), got 4294967295"
          ]
        )
      }
      assert.strictEqual(reads, 0)
      // An iterable has no length: it is read up to the limit, then refused (an endless one too).
      let yielded = 0
      const endless = {
        *[Symbol.iterator]() {
          while (true) {
            if (++yielded > 2_000_000) throw new Error("iterated past the limit")
            yield { prompt: "x" }
          }
        }
      }
      const error = yield* Effect.flip(executor.executeMany(endless))
      assert.deepStrictEqual(
        [error.field, error.message],
        ["requests", "invalid requests: expected at most 1000000 requests (maxRequests), got more"]
      )
      assert.strictEqual(yielded, 1_000_001)
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("an array whose length or items cannot be read is executeMany's InvalidRequest, not a defect", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const throwing = (key: string) =>
        new Proxy([{ prompt: "x" }], {
          get: (target, k) => {
            if (k === key) throw new Error(`${key} trap threw`)
            return Reflect.get(target, k)
          }
        })
      const length = yield* Effect.flip(executor.executeMany(throwing("length")))
      assert.deepStrictEqual(
        [length.field, length.message],
        ["requests", "invalid requests: reading its length threw: length trap threw"]
      )
      const item = yield* Effect.flip(executor.executeMany(throwing("0")))
      assert.deepStrictEqual(
        [item.field, item.message],
        ["requests[0]", "invalid requests[0]: reading it threw: 0 trap threw"]
      )
    })
  )

  it.effect("Batch.run refuses a batch longer than maxItems (default 1,000,000) before allocating, naming items", () =>
    Effect.gen(function* () {
      let reads = 0
      const provider = custom("p", () => Effect.succeed(response("ok")))
      const { batch } = yield* managerOver(provider)
      const lengths: ReadonlyArray<unknown> = [2 ** 32 - 1, 1_000_001]
      for (const length of lengths) {
        const huge = new Proxy([] as Array<string>, {
          get: (target, key) => {
            if (key === "length") return length
            if (typeof key === "string" && /^\d+$/.test(key)) reads++
            return Reflect.get(target, key)
          }
        })
        const error = yield* Effect.flip(batch.run(huge))
        assert.deepStrictEqual(
          [error.reason, error.field, error.message],
          ["InvalidRequest", "items", `invalid items: expected at most 1000000 items (maxItems), got ${length}`]
        )
        const streamed = yield* Effect.flip(Stream.runDrain(batch.stream(huge)))
        assert.strictEqual(streamed.field, "items")
      }
      // A length that is no array's (a Proxy's): refused naming items, not a RangeError.
      for (const length of [-1, 1.5, Number.NaN, "2", Number.POSITIVE_INFINITY]) {
        const odd = new Proxy(["a", "b"], { get: (t, k) => (k === "length" ? length : Reflect.get(t, k)) })
        const error = yield* Effect.flip(batch.run(odd))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "items"], String(length))
      }
      assert.strictEqual(reads, 0)
      // A sparse array of an acceptable length: each hole is that item's error, the rest run.
      const sparse: Array<string> = []
      sparse[1] = "q"
      sparse.length = 3
      const result = yield* batch.run(sparse)
      assert.deepStrictEqual(
        result.results.map((r) => (r.status === "success" ? "ok" : fieldOf(r.error))),
        ["items[0]", "ok", "items[2]"]
      )
    })
  )

  it.effect("an item's request with an array longer than 1,000,000 is refused naming it, before it is copied", () =>
    Effect.gen(function* () {
      const { batch } = yield* managerOver(custom("p", () => Effect.succeed(response("ok"))))
      const messages: Array<unknown> = [{ role: "user", content: "x" }]
      messages.length = 2 ** 21
      const result = yield* batch.run([{ request: { messages } as never }, "b"])
      const error = result.results[0]!.error
      assert.deepStrictEqual(
        [fieldOf(error), error?.message],
        ["items[0].request.messages", "invalid items[0].request.messages: expected at most 1000000 items, got 2097152"]
      )
      assert.strictEqual(result.results[1]!.status, "success")
    })
  )

  it.effect("a fallback list is bounded and read once: a huge or throwing one is an InvalidRequest naming it", () =>
    Effect.gen(function* () {
      const { batch } = yield* managerOver(custom("p", () => Effect.succeed(response("ok"))))
      let reads = 0
      const huge = new Proxy([] as Array<string>, {
        get: (target, key) => {
          if (key === "length") return 2 ** 32 - 1
          if (typeof key === "string" && /^\d+$/.test(key)) {
            if (++reads > 2_000) throw new Error("read past the limit")
            return "d"
          }
          return Reflect.get(target, key)
        }
      })
      const tooLong = yield* Effect.flip(batch.run(["a"], { fallback: huge }))
      assert.deepStrictEqual(
        [tooLong.reason, tooLong.field, tooLong.message],
        ["InvalidRequest", "fallback", "invalid fallback: expected at most 1000 domain names, got 4294967295"]
      )
      assert.strictEqual(reads, 0)
      const throwing = new Proxy(["d", "d"], {
        get: (target, key) => {
          if (key === "1") throw new Error("fallback trap threw")
          return Reflect.get(target, key)
        }
      })
      const threw = yield* Effect.flip(batch.run(["a"], { fallback: throwing }))
      assert.deepStrictEqual(
        [threw.reason, threw.field, threw.message],
        ["InvalidRequest", "fallback[1]", "invalid fallback[1]: reading it threw: fallback trap threw"]
      )
      // Read once: a list that changes after the check runs as it was checked.
      let flips = 0
      const changing = new Proxy(["d"], {
        get: (target, key) => (key === "0" ? (++flips === 1 ? "d" : "nope") : Reflect.get(target, key))
      })
      const result = yield* batch.run(["a", "b"], { fallback: changing })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "success"]
      )
      assert.strictEqual(flips, 1)
    })
  )

  it.effect("maxItems is the manager's option, checked as maxConcurrent is", () =>
    Effect.gen(function* () {
      const provider = custom("p", () => Effect.succeed(response("ok")))
      const { executor, router } = yield* managerOver(provider)
      const make = (options: Batch.Options) =>
        Batch.make(options).pipe(Effect.provideService(Executor, executor), Effect.provideService(Router, router))
      const small = yield* make({ maxItems: 2 })
      const error = yield* Effect.flip(small.run(["a", "b", "c"]))
      assert.deepStrictEqual(
        [error.field, error.message],
        ["items", "invalid items: expected at most 2 items (maxItems), got 3"]
      )
      assert.deepStrictEqual(
        (yield* small.run(["a", "b"])).results.map((r) => r.status),
        ["success", "success"]
      )
      for (const maxItems of [0, -1, 2.5, Number.NaN, "10"]) {
        const bad = yield* Effect.flip(make({ maxItems } as never))
        assert.strictEqual(bad._tag === "OptionError" && bad.path, "maxItems", String(maxItems))
      }
    })
  )
})

describe("a cancel that fails", () => {
  it.effect("is logged once (the batch is not cancelled and runs on), never silently lost", () =>
    Effect.gen(function* () {
      const { batch } = yield* managerOver(
        custom("p", () => Effect.succeed(response("ok")).pipe(Effect.delay("1 second")))
      )
      for (const [cancel, says] of [
        [Effect.fail("no reason"), "no reason"],
        [Effect.die(new Error("cancel died")), "cancel died"]
      ] as const) {
        const logs = yield* captureLogs
        const fiber = yield* Effect.forkChild(
          batch
            .run(["a", "b"], { id: "with-cancel", cancel: cancel as Effect.Effect<void> })
            .pipe(Effect.provide(logs.layer))
        )
        yield* TestClock.adjust("1 second")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual([result.cancelled, result.results.map((r) => r.status)], [false, ["success", "success"]])
        const warnings = logs.lines.filter((line) => line.includes("cancel"))
        assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
        assert.include(warnings[0]!, "Batch with-cancel: the cancel Effect failed")
        assert.include(warnings[0]!, says)
      }
    })
  )
})

describe("Batch.stream checks its options as run does", () => {
  it.effect("an onProgress that is not a function, or options that are not an object, fail naming them", () =>
    Effect.gen(function* () {
      const { batch } = yield* managerOver(custom("p", () => Effect.succeed(response("ok"))))
      const onProgress = yield* Effect.flip(Stream.runDrain(batch.stream(["a"], { onProgress: 5 as never })))
      assert.deepStrictEqual([onProgress.reason, onProgress.field], ["InvalidRequest", "onProgress"])
      const options = yield* Effect.flip(Stream.runDrain(batch.stream(["a"], null as never)))
      assert.deepStrictEqual([options.reason, options.field], ["InvalidRequest", "options"])
    })
  )
})

describe("a batch's fallback lists each domain once", () => {
  it.effect("an item with no domain tries a domain listed twice once, as an item with a domain does", () =>
    Effect.gen(function* () {
      let calls = 0
      const { batch } = yield* managerOver(
        custom("p", () =>
          Effect.suspend(() => {
            calls++
            return Effect.fail(new ModelError({ reason: "Unauthorized", message: "refused", provider: "p" }))
          })
        )
      )
      const result = yield* batch.run(["a", { request: { prompt: "b" }, domain: "d" }], { fallback: ["d", "d"] })
      const steps = result.results.map((r) =>
        r.error?._tag === "FallbackExhaustedError" ? r.error.attempts.map((a) => a.domain ?? null) : r.error?._tag
      )
      // Without a domain: the executor's provider, then `d` once; with `d`: `d` once (no chain of one is exhausted).
      assert.deepStrictEqual(steps, [[null, "d"], "ModelError"])
      assert.strictEqual(calls, 3)
    })
  )
})

describe("a batch's stats are its own", () => {
  it.effect(
    "changing one result's zero latencies (serviceTime, timeToFirstToken, an empty batch's) changes no other",
    () =>
      Effect.gen(function* () {
        const { batch } = yield* managerOver(custom("p", () => Effect.succeed(response("ok"))))
        type Mutable = { -readonly [K in "avg" | "min" | "max" | "p50" | "p95" | "p99"]: number }
        const first = (yield* batch.run([])).stats
        for (const latency of [first.serviceTime, first.timeToFirstToken, first.latency, first.queueWait]) {
          ;(latency as Mutable).avg = 5
          ;(latency as Mutable).p99 = 5
        }
        const later = [
          (yield* batch.run([])).stats,
          (yield* batch.run(["a"])).stats,
          (yield* batch.run(["a", "b"])).stats
        ]
        for (const stats of later) {
          assert.deepStrictEqual(
            [stats.serviceTime, stats.timeToFirstToken].map((l) => [l.avg, l.p99]),
            [
              [0, 0],
              [0, 0]
            ]
          )
        }
        assert.deepStrictEqual([later[0]!.latency.avg, later[0]!.queueWait.p99], [0, 0])
        // Nor does one figure of a result change another of the same result.
        assert.notStrictEqual(later[1]!.serviceTime, later[1]!.timeToFirstToken)
      })
  )
})

describe("a batch's id is bounded as a task id is", () => {
  it.effect("an id past 1,000 characters fails the run naming id, without echoing it; 1,000 are taken", () =>
    Effect.gen(function* () {
      let calls = 0
      const { batch } = yield* managerOver(
        custom("p", () =>
          Effect.sync(() => {
            calls++
            return response("ok")
          })
        )
      )
      const error = yield* Effect.flip(batch.run(["a"], { id: "x".repeat(1_001) }))
      assert.strictEqual(fieldOf(error), "id")
      assert.strictEqual(error.message, "invalid id: expected at most 1,000 characters, got 1,001")
      assert.strictEqual(calls, 0)
      const longest = "y".repeat(1_000)
      assert.strictEqual((yield* batch.run(["a"], { id: longest })).id, longest)
    })
  )
})

describe("a revoked Proxy is bad input, never a defect", () => {
  const revoked = <T extends object>(target: T): T => {
    const { proxy, revoke } = Proxy.revocable(target, {})
    revoke()
    return proxy
  }

  it.effect("as the items: an InvalidRequest naming items (run and stream); as one item: that item's own", () =>
    Effect.gen(function* () {
      const { batch } = yield* managerOver(custom("p", () => Effect.succeed(response("ok"))))
      const run = yield* Effect.flip(batch.run(revoked([] as Array<string>)))
      assert.deepStrictEqual([run.reason, run.field], ["InvalidRequest", "items"])
      const streamed = yield* Effect.flip(Stream.runDrain(batch.stream(revoked([] as Array<string>))))
      assert.deepStrictEqual([streamed.reason, streamed.field], ["InvalidRequest", "items"])
      for (const onProgress of [undefined, () => undefined]) {
        const result = yield* batch.run(["a", revoked([]) as never, revoked({}) as never, "d"], { onProgress })
        assert.deepStrictEqual(
          result.results.map((r) => (r.status === "success" ? "ok" : fieldOf(r.error))),
          ["ok", "items[1]", "items[2]", "ok"]
        )
        assert.include(result.results[1]!.error!.message, "revoked")
      }
    })
  )
})

describe("a batch's times are on the monotonic clock", () => {
  for (const onProgress of [undefined, () => undefined]) {
    it.effect(
      `a wall clock stepped back mid-item leaves durations and elapsed times as they were (${onProgress === undefined ? "one item alone" : "pool"})`,
      () =>
        Effect.gen(function* () {
          const { batch } = yield* managerOver(
            custom("p", () =>
              Effect.gen(function* () {
                yield* Effect.sleep("1 second")
                // An NTP step back of an hour as the call ends.
                const now = yield* Clock.currentTimeMillis
                yield* TestClock.setTime(now - 3_600_000)
                return response("ok")
              })
            )
          )
          const events: Array<Batch.ProgressEvent> = []
          const fiber = yield* Effect.forkChild(
            batch.run(["a"], onProgress === undefined ? {} : { onProgress: (event) => events.push(event) })
          )
          for (let i = 0; i < 3; i++) yield* TestClock.adjust("1 second")
          const result = yield* Fiber.join(fiber)
          assert.deepStrictEqual([result.results[0]!.durationMs, result.elapsedMs], [1_000, 1_000])
          assert.deepStrictEqual(result.stats.latency.max, 1_000)
          assert.isTrue(events.every((event) => event.elapsedMs >= 0))
        })
    )
  }
})
