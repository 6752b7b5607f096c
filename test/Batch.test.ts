import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Metric, Option, Queue, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import type { AiError } from "../src/AiError.js"
import * as Batch from "../src/Batch.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import type { Domain, DomainInput } from "../src/Domain.js"
import { Executor } from "../src/Executor.js"
import { ModelProvider, type Service as ProviderService } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Policy from "../src/Policy.js"
import { Router } from "../src/Router.js"
import { Stats } from "../src/Stats.js"
import { captureLogs } from "./utils/logs.js"
import { custom, managerOver } from "./utils/batch.js"

const { Outcome } = Mock
const noRetry = Policy.retry({ maxAttempts: 1 })
const retry3 = Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 })

type ManagerOptions = Omit<Orchestra.Options<Record<string, Layer.Layer<ModelProvider>>>, "providers" | "domains"> & {
  readonly domains?: ReadonlyArray<Domain | DomainInput> | undefined
}

/**
 * The whole manager over mocks named by their keys, with domain `d-<key>` per mock (unless
 * `domains` is given), in a scope the test can close, with a private metric registry.
 */
const makeOrchestra = (mocks: Readonly<Record<string, Mock.Options>>, options: ManagerOptions = {}) =>
  Effect.gen(function* () {
    const controls: Record<string, Mock.Control> = {}
    const layers: Record<string, Layer.Layer<ModelProvider>> = {}
    for (const [key, mock] of Object.entries(mocks)) {
      const { provider, control } = yield* Mock.make({ name: key, ...mock })
      controls[key] = control
      layers[key] = Layer.succeed(ModelProvider, provider)
    }
    const domains = options.domains ?? Object.keys(mocks).map((key) => ({ name: `d-${key}`, provider: key }))
    const scope = yield* Scope.make()
    const registry: Metric.MetricRegistry = new Map()
    const context = yield* Layer.buildWithScope(
      Orchestra.layer({ breakers: false, ...options, providers: layers, domains }),
      scope
    ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      scope,
      registry,
      controls,
      batch: Context.get(context, Batch.Batch),
      router: Context.get(context, Router),
      executor: Context.get(context, Executor),
      stats: Context.get(context, Stats),
      breakers: Context.getOrUndefined(context, CircuitBreaker.Breakers),
      context
    }
  })

/** A compact trace of progress events: `tag:index@elapsed done/total`. */
const trace = (events: ReadonlyArray<Batch.ProgressEvent>): ReadonlyArray<string> =>
  events.map((e) =>
    e._tag === "Cancelled"
      ? `Cancelled:[${e.notRun.join(",")}]@${e.elapsedMs} ${e.done}/${e.total}`
      : `${e._tag}:${e.index}@${e.elapsedMs} ${e.done}/${e.total}`
  )

const invalidField = (error: AiError | undefined) =>
  error?._tag === "ModelError" && error.reason === "InvalidRequest" ? error.field : `${error?._tag}: ${error?.message}`

const response = (name: string, text: string) => ({
  text,
  finishReason: "stop" as const,
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: name,
  model: "m"
})

const customOrchestra = (provider: ProviderService, options: { readonly maxConcurrent?: number } = {}) =>
  Effect.map(managerOver(provider, options), (manager) => manager.batch)

describe("Batch.run outcomes", () => {
  it.effect("one outcome per item in input order: success, error, timeout, rejected; the batch never fails", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        {
          a: {
            script: [
              Outcome.succeed("first", { latency: "100 millis" }),
              Outcome.fail("InvalidRequest"),
              Outcome.succeed("third", { latency: "50 millis" }),
              Outcome.hang()
            ]
          },
          b: { script: [Outcome.fail("Overloaded")] }
        },
        {
          domains: [
            { name: "d-a", provider: "a", timeout: 1000, retry: noRetry },
            { name: "d-b", provider: "b", retry: noRetry }
          ],
          breakers: { failMax: 1, resetTimeout: "1 minute" }
        }
      )
      const fiber = yield* Effect.forkChild(
        batch.run(
          [
            "one",
            { query: "two", domain: "d-a" },
            { request: { prompt: "three" } },
            "four",
            { query: "five", domain: "d-b" },
            { query: "six", domain: "d-b" }
          ],
          { domain: "d-a", concurrency: 1 }
        )
      )
      yield* TestClock.adjust("5 seconds")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        result.results.map((r) => r.index),
        [0, 1, 2, 3, 4, 5]
      )
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success", "timeout", "error", "rejected"]
      )
      assert.strictEqual(result.results[0]!.answer?.response.text, "first")
      assert.strictEqual(result.results[0]!.durationMs, 100)
      assert.strictEqual(result.results[2]!.answer?.response.text, "third")
      assert.strictEqual(invalidField(result.results[1]!.error), undefined)
      assert.strictEqual(result.results[3]!.error?._tag, "TimeoutError")
      assert.strictEqual(result.results[3]!.durationMs, 1000)
      assert.strictEqual(result.results[5]!.error?._tag, "CircuitOpenError")
      assert.isTrue(result.results.every((r) => r.ran))
      assert.isFalse(result.cancelled)
      assert.deepStrictEqual(result.notRun, [])
      assert.strictEqual(yield* controls.a!.calls, 4)
      assert.strictEqual(yield* controls.b!.calls, 1, "the open breaker refused the sixth item without a call")
      assert.deepStrictEqual(
        Batch.successes(result).map((a) => a.response.text),
        ["first", "third"]
      )
      assert.strictEqual(Option.getOrNull(Option.map(Batch.firstError(result), (e) => e._tag)), "ModelError")
    })
  )

  it.effect(
    "stats.timeouts counts every item whose status is timeout, an exhausted chain whose last step timed out too",
    () =>
      Effect.gen(function* () {
        // Found in review: only a bare TimeoutError was counted; an item of status `timeout` whose
        // error is a FallbackExhaustedError (its last step timed out) was left out.
        const { batch, stats } = yield* makeOrchestra(
          {
            a: { script: [Outcome.hang(), Outcome.hang(), Outcome.hang()] },
            b: { script: [Outcome.hang(), Outcome.fail("Overloaded")] },
            c: { script: [Outcome.hang()] }
          },
          {
            domains: [
              { name: "d-a", provider: "a", timeout: 1000, retry: noRetry, fallback: ["d-b"] },
              { name: "d-b", provider: "b", timeout: 1000, retry: noRetry },
              { name: "d-c", provider: "c", timeout: 1000, retry: noRetry }
            ]
          }
        )
        const fiber = yield* Effect.forkChild(
          batch.run(
            [
              { query: "both steps time out", domain: "d-a" },
              { query: "a times out, b is overloaded", domain: "d-a" },
              { query: "one step, timed out", domain: "d-c" }
            ],
            { concurrency: 1 }
          )
        )
        yield* TestClock.adjust("10 seconds")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          result.results.map((r) => [r.status, r.error?._tag]),
          [
            ["timeout", "FallbackExhaustedError"],
            ["error", "FallbackExhaustedError"],
            ["timeout", "TimeoutError"]
          ]
        )
        assert.strictEqual(result.stats.timeouts, 2, "the items of status timeout")
        assert.strictEqual(
          result.stats.timeouts,
          result.results.filter((r) => r.status === "timeout").length,
          "as the statuses say"
        )
        // The executor counts attempts ended by a deadline: the same two items' last steps, and the
        // earlier step of the second that timed out before it fell back.
        assert.strictEqual((yield* stats.snapshot()).timeouts, 4)
      })
  )

  it.effect("a defect in one provider call becomes that item's error, on both paths", () =>
    Effect.gen(function* () {
      let calls = 0
      const buggy = custom("buggy", (request) =>
        Effect.suspend(() => {
          calls++
          return request.prompt === "boom"
            ? Effect.die(new Error("provider bug"))
            : Effect.succeed(response("buggy", "ok"))
        })
      )
      const batch = yield* customOrchestra(buggy)
      for (const domain of ["support", undefined]) {
        const result = yield* batch.run(["a", "boom", "c"], { domain })
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["success", "error", "success"],
          `domain ${domain}`
        )
        const error = result.results[1]!.error
        assert.strictEqual(error?._tag === "ModelError" && error.reason, "Unknown")
        assert.include(error?.message, "provider bug")
      }
      assert.strictEqual(calls, 6)
    })
  )

  it.effect("a provider failing with a value that is not an AiError is that item's ModelError, on every path", () =>
    Effect.gen(function* () {
      const provider = custom("sloppy", (request) =>
        request.prompt === "bad" ? Effect.fail("not an AiError" as never) : Effect.succeed(response("sloppy", "ok"))
      )
      const batch = yield* customOrchestra(provider)
      for (const domain of ["support", undefined]) {
        for (const onProgress of [undefined, () => {}]) {
          for (const items of [["a", "bad", "c"], ["bad"]]) {
            const result = yield* batch.run(items, { domain, onProgress })
            const failed = result.results[items.indexOf("bad")]!
            assert.strictEqual(failed.status, "error")
            assert.deepStrictEqual(
              failed.error?._tag === "ModelError" && [failed.error.reason, failed.error.cause],
              ["Unknown", "not an AiError"],
              `domain ${domain}`
            )
            assert.deepStrictEqual(result.stats.failuresByReason, { Unknown: 1 })
          }
        }
      }
    })
  )

  it.effect("a provider that interrupts itself is that item's error, never a cancelled batch", () =>
    Effect.gen(function* () {
      const provider = custom("quitter", (request) =>
        request.prompt === "quit" ? Effect.interrupt : Effect.succeed(response("quitter", "ok"))
      )
      const batch = yield* customOrchestra(provider)
      for (const domain of ["support", undefined]) {
        const result = yield* batch.run(["a", "quit", "c"], { domain })
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["success", "error", "success"],
          `domain ${domain}`
        )
        assert.isFalse(result.cancelled)
        assert.include(result.results[1]!.error?.message, "interrupted")
      }
    })
  )

  it.effect("a throwing onProgress or a dying onEvent does not fail the batch", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const result = yield* batch.run(["x", "y"], {
        domain: "d-a",
        onProgress: () => {
          throw new Error("callback bug")
        },
        onEvent: () => Effect.die("effect bug")
      })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "success"]
      )
    })
  )

  it.effect(
    "an onEvent that returns no Effect (undefined, a Promise) is logged once; every item gets its outcome",
    () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: {} })
        for (const onEvent of [() => undefined, async () => undefined]) {
          const logs = yield* captureLogs
          const result = yield* batch
            .run(["x", "y"], { domain: "d-a", id: "b2", onEvent: onEvent as never })
            .pipe(Effect.provide(logs.layer))
          assert.deepStrictEqual(
            result.results.map((r) => r.status),
            ["success", "success"]
          )
          const warnings = logs.lines.filter((line) => line.includes("onEvent callback failed"))
          assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
          assert.include(warnings[0]!, "onEvent must return an Effect")
        }
      })
  )

  it.effect(
    "an onEvent or a cancel whose Effect hands the run loop no Effect deep inside is logged once; the batch runs on",
    () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: {} })
        // Effect's run loop ends the fiber at once, skipping every handler on its stack: the
        // worker's, so the batch died with the defect; the cancel's watcher, so it went unsaid.
        const broken: Effect.Effect<void> = Effect.flatMap(Effect.void, (): Effect.Effect<void> => 42 as never)
        const cases: ReadonlyArray<[string, Batch.RunOptions]> = [
          ["onEvent", { onEvent: () => broken }],
          ["cancel", { cancel: broken }]
        ]
        for (const [name, options] of cases) {
          const logs = yield* captureLogs
          const exit = yield* Effect.exit(
            batch.run(["x", "y"], { domain: "d-a", id: "b3", ...options }).pipe(Effect.provide(logs.layer))
          )
          assert.isTrue(Exit.isSuccess(exit), `${name}: ${String(exit)}`)
          const result = (exit as Exit.Success<Batch.BatchResult>).value
          assert.deepStrictEqual(
            [result.cancelled, result.results.map((r) => r.status)],
            [false, ["success", "success"]],
            name
          )
          const warnings = logs.lines.filter((line) => line.includes("Batch b3"))
          assert.strictEqual(warnings.length, 1, `${name}: ${logs.lines.join("\n")}`)
          assert.include(warnings[0]!, "Not a valid effect: 42", name)
        }
      })
  )

  it.effect("a throwing onProgress alone (items started from JavaScript) still gets every event; one warning", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const logs = yield* captureLogs
      let calls = 0
      const result = yield* batch
        .run(["x", "y", "z"], {
          domain: "d-a",
          id: "b1",
          onProgress: () => {
            calls++
            throw new Error("callback bug")
          }
        })
        .pipe(Effect.provide(logs.layer))
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "success", "success"]
      )
      assert.strictEqual(calls, 6, "Started and Succeeded for each item")
      const warnings = logs.lines.filter((line) => line.includes("onProgress callback failed"))
      assert.deepStrictEqual(warnings.length, 1, logs.lines.join("\n"))
      assert.include(warnings[0]!, "Warn")
      assert.include(warnings[0]!, "Batch b1")
    })
  )

  it.effect("an async onProgress or onEvent that rejects is logged once, never an unhandled rejection", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const unhandled: Array<unknown> = []
      const trap = (reason: unknown) => unhandled.push(reason)
      process.on("unhandledRejection", trap)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("unhandledRejection", trap)))
      const rejecting = async () => {
        throw new Error("async callback bug")
      }
      const cases: ReadonlyArray<[string, "onProgress" | "onEvent", Batch.RunOptions]> = [
        ["onProgress alone", "onProgress", { onProgress: rejecting }],
        ["onProgress beside onEvent", "onProgress", { onProgress: rejecting, onEvent: () => Effect.void }],
        ["onEvent", "onEvent", { onEvent: rejecting as never }]
      ]
      for (const [name, callback, options] of cases) {
        const logs = yield* captureLogs
        const result = yield* batch.run(["x", "y"], { domain: "d-a", ...options }).pipe(Effect.provide(logs.layer))
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["success", "success"],
          name
        )
        // Unhandled rejections are reported once the microtasks have run.
        yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
        const warnings = logs.lines.filter((line) => line.includes(`${callback} callback failed`))
        assert.strictEqual(warnings.length, 1, `${name}: ${logs.lines.join("\n")}`)
      }
      const streamed = yield* Stream.runCollect(batch.stream(["x", "y"], { domain: "d-a", onProgress: rejecting }))
      assert.strictEqual(streamed.at(-1)?._tag, "Done")
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      assert.deepStrictEqual(unhandled.map(String), [])
    })
  )

  it.effect("an empty batch completes at once", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const result = yield* batch.run([], { domain: "d-a" })
      assert.deepStrictEqual(result.results, [])
      assert.strictEqual(result.stats.total, 0)
    })
  )

  it.effect("Batch.run runs on the Batch service in context", () =>
    Effect.gen(function* () {
      const { context } = yield* makeOrchestra({ a: { respond: () => "from context" } })
      const result = yield* Batch.run(["x"], { domain: "d-a", id: "mine" }).pipe(Effect.provide(context))
      assert.strictEqual(result.id, "mine")
      assert.strictEqual(result.results[0]!.answer?.response.text, "from context")
    })
  )
})

describe("Batch items", () => {
  it.effect("strings, {query, domain} and {request} reach the right domain with its system prompt", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        { a: {}, b: {} },
        {
          domains: [
            { name: "d-a", provider: "a", system: "You are A." },
            { name: "d-b", provider: "b", system: "You are B." }
          ]
        }
      )
      const result = yield* batch.run(
        [
          "plain",
          { query: "routed", domain: "d-b" },
          { request: { prompt: "full", system: "Own system", maxTokens: 7 } },
          { request: { prompt: "full-b" }, domain: "d-b" }
        ],
        { domain: "d-a", concurrency: 1 }
      )
      assert.deepStrictEqual(
        result.results.map((r) => r.answer?.domain),
        ["d-a", "d-b", "d-a", "d-b"]
      )
      const seen = (logged: ReadonlyArray<Mock.LoggedRequest>) =>
        logged.map((l) => {
          const request = l.request as {
            readonly prompt?: string
            readonly system?: string
            readonly maxTokens?: number
          }
          return [request.prompt, request.system, request.maxTokens]
        })
      assert.deepStrictEqual(seen(yield* controls.a!.requests), [
        ["plain", "You are A.", undefined],
        ["full", "Own system", 7]
      ])
      assert.deepStrictEqual(seen(yield* controls.b!.requests), [
        ["routed", "You are B.", undefined],
        ["full-b", "You are B.", undefined]
      ])
    })
  )

  it.effect("items without any domain go to the executor's provider, and answer as domain 'none'", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { respond: () => "default" }, b: {} })
      const result = yield* batch.run(["x", { query: "y" }, { request: { prompt: "z" } }])
      assert.deepStrictEqual(
        result.results.map((r) => [r.answer?.domain, r.answer?.provider, r.answer?.response.text]),
        [
          ["none", "a", "default"],
          ["none", "a", "default"],
          ["none", "a", "default"]
        ]
      )
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )

  it.effect("mixed items: with and without a domain in one batch, each on its own path", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { latency: "100 millis" }, b: { latency: "100 millis" } })
      const fiber = yield* Effect.forkChild(
        batch.run(["no domain", { query: "on b", domain: "d-b" }, { query: "on a", domain: "d-a" }, "again"], {
          concurrency: 4
        })
      )
      yield* TestClock.adjust("100 millis")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        result.results.map((r) => `${r.answer?.domain}/${r.answer?.provider}`),
        ["none/a", "d-b/b", "d-a/a", "none/a"]
      )
      assert.strictEqual(yield* controls.a!.peak, 3)
      assert.strictEqual(result.elapsedMs, 100)
    })
  )

  it.effect("bad items get their own InvalidRequest naming the item; the others run (issue 13 item 12)", () =>
    Effect.gen(function* () {
      const { batch, controls, stats } = yield* makeOrchestra({ a: {} })
      const items = [
        null,
        "fine",
        123,
        { request: null },
        { query: 5 },
        { query: "x", domain: 7 },
        {},
        ["nested"],
        { request: { prompt: "" } },
        { query: "to nowhere", domain: "no-such-domain" },
        { query: "also fine", domain: "d-a" }
      ] as unknown as ReadonlyArray<Batch.Item>
      const result = yield* batch.run(items)
      assert.deepStrictEqual(
        result.results.map((r) => (r.status === "success" ? "ok" : invalidField(r.error))),
        [
          "items[0]",
          "ok",
          "items[2]",
          "items[3].request",
          "items[4].query",
          "items[5].domain",
          "items[6]",
          "items[7]",
          "items[8].request.prompt",
          "items[9].domain",
          "ok"
        ]
      )
      assert.isTrue(result.results.every((r) => r.ran))
      assert.strictEqual(yield* controls.a!.calls, 2)
      assert.strictEqual(result.stats.total, 11)
      assert.deepStrictEqual(result.stats.failuresByReason, { InvalidRequest: 9 })
      // requests refused by the pipeline are counted on the provider, as any refused call
      assert.strictEqual((yield* stats.snapshot({ provider: "a" })).failuresByReason.InvalidRequest, 2)
    })
  )

  it.effect("an item with an unknown key, or with both query and request, is refused naming it, on every path", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: {}, b: {} })
      // A misspelt `domian` ran the item on the default provider ("a"), answering domain "none".
      const items = [
        { query: "x", domian: "d-b" },
        { query: "y", domain: "d-b", temprature: 0 },
        { query: "z", request: { prompt: "w" } },
        { query: "fine", domain: "d-b" }
      ] as unknown as ReadonlyArray<Batch.Item>
      const expected = ["items[0].domian", "items[1].temprature", "items[2]", "ok"]
      for (const options of [{}, { onProgress: () => undefined }, { onEvent: () => Effect.void }]) {
        const result = yield* batch.run(items, options)
        assert.deepStrictEqual(
          result.results.map((r) => (r.status === "success" ? "ok" : invalidField(r.error))),
          expected,
          Object.keys(options).join()
        )
      }
      const alone = yield* batch.run([items[0]!])
      assert.strictEqual(invalidField(alone.results[0]!.error), "items[0].domian")
      // The field it is likely a typo of, as every other option check names it.
      assert.include(alone.results[0]!.error?.message, "unknown field (did you mean domain?)")
      assert.strictEqual(yield* controls.a!.calls, 0)
      assert.strictEqual(yield* controls.b!.calls, 3)
    })
  )

  it.effect("a refused request or an unknown domain names its item, in every form and on every path", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({
        a: { script: [Outcome.fail("InvalidRequest"), Outcome.succeed("ok")] }
      })
      // Named as the executor and the router name them (`prompt`, `domain`), nobody could tell which item it was.
      const items = [
        "",
        { query: "" },
        { request: { prompt: 5 } },
        { request: { prompt: "x", maxTokens: -1 }, domain: "d-a" },
        { query: "x", domain: "nope" },
        { request: null, domain: "d-a" }
      ] as unknown as ReadonlyArray<Batch.Item>
      const expected = [
        "items[0]",
        "items[1].query",
        "items[2].request.prompt",
        "items[3].request.maxTokens",
        "items[4].domain",
        "items[5].request"
      ]
      for (const options of [{}, { onProgress: () => undefined }, { onEvent: () => Effect.void }]) {
        const result = yield* batch.run(items, options)
        const errors = result.results.map((r) => r.error)
        assert.deepStrictEqual(errors.map(invalidField), expected, Object.keys(options).join())
        assert.strictEqual(errors[4]?.message.startsWith('invalid items[4].domain: unknown domain "nope"'), true)
        assert.strictEqual(Option.getOrUndefined(Batch.firstError(result)), errors[0])
      }
      for (const [i, item] of items.entries()) {
        const alone = yield* batch.run([item])
        assert.strictEqual(invalidField(alone.results[0]!.error), expected[i]!.replace(`items[${i}]`, "items[0]"))
      }
      // A provider's own InvalidRequest is its answer, not the item's check: left as the provider gave it.
      const answered = yield* batch.run([{ query: "fine" }])
      const error = answered.results[0]!.error
      assert.isTrue(error?._tag === "ModelError" && error.reason === "InvalidRequest")
      assert.isFalse(error?._tag === "ModelError" && (error.field ?? "").startsWith("items["))
    })
  )

  it.effect("an empty domain name is unknown, whether or not items without a domain ran before", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: {} })
      for (const options of [{}, { onProgress: () => undefined }, { onEvent: () => Effect.void }]) {
        // The second run's routes already hold the one of the items that name no domain.
        for (const items of [[{ query: "x", domain: "" }], ["first", { query: "x", domain: "" }]]) {
          const result = yield* batch.run(items, options)
          const last = result.results.at(-1)!
          assert.strictEqual(invalidField(last.error), `items[${items.length - 1}].domain`, JSON.stringify(items))
        }
        const error = yield* Effect.flip(batch.run(["y"], { ...options, domain: "" }))
        assert.strictEqual(invalidField(error), "domain")
      }
      assert.strictEqual(yield* controls.a!.calls, 3, "only the items without a domain ran")
    })
  )

  it.effect("a batch that is not an array is one typed error", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: {} })
      for (const items of [null, undefined, "one prompt", 5, { 0: "x", length: 1 }]) {
        const error = yield* Effect.flip(batch.run(items as never))
        assert.strictEqual(invalidField(error), "items", String(items))
      }
      assert.strictEqual(yield* controls.a!.calls, 0)
    })
  )
})

describe("Batch options are checked before any item runs (issue 13 item 6)", () => {
  it.effect("a concurrency that is not a positive integer fails the run naming `concurrency`", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: {} })
      for (const domain of ["d-a", undefined]) {
        for (const concurrency of [Number.NaN, 0, -1, 1.5, Number.POSITIVE_INFINITY, "2"]) {
          const error = yield* Effect.flip(batch.run(["x", "y"], { domain, concurrency: concurrency as number }))
          assert.strictEqual(invalidField(error), "concurrency", `${concurrency} on domain ${domain}`)
          assert.include(error.message, "invalid concurrency")
        }
      }
      assert.strictEqual(yield* controls.a!.calls, 0)
    })
  )

  it.effect("unknown batch domains, bad fallbacks, callbacks, cancel and id fail the run naming the field", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: {} })
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [{ domain: "nowhere" }, "domain"],
        [{ domain: 5 }, "domain"],
        [{ fallback: "d-a" }, "fallback"],
        [{ fallback: ["d-a", "nowhere"] }, "fallback[1]"],
        [{ onProgress: "loud" }, "onProgress"],
        [{ onEvent: 1 }, "onEvent"],
        [{ cancel: Promise.resolve() }, "cancel"],
        [{ id: "" }, "id"],
        [{ id: 7 }, "id"],
        [{ concurency: 1 }, "concurency"],
        [{ domain: "d-a", timeout: 5 }, "timeout"],
        [null, "options"],
        // null is a wrong value, not the default.
        [{ fallback: null }, "fallback"],
        // A getter that throws is that field's InvalidRequest, not a defect of the run.
        [
          Object.defineProperty({}, "concurrency", {
            get() {
              throw new Error("getter")
            }
          }),
          "concurrency"
        ]
      ]
      for (const [options, field] of cases) {
        const error = yield* Effect.flip(batch.run(["x"], options as never))
        assert.strictEqual(invalidField(error), field, JSON.stringify(options))
      }
      assert.strictEqual(yield* controls.a!.calls, 0)
    })
  )

  it.effect("a maxConcurrent that is not a positive integer fails the layer with an OptionError naming it", () =>
    Effect.gen(function* () {
      for (const maxConcurrent of [Number.NaN, 0, -3, 2.5, Number.POSITIVE_INFINITY]) {
        const error = yield* Effect.flip(
          Effect.scoped(
            Layer.build(
              Orchestra.layer({ providers: { a: Mock.layer() }, maxConcurrent }).pipe(
                Layer.provide(Layer.succeed(Metric.MetricRegistry, new Map()))
              )
            )
          )
        )
        assert.strictEqual(error._tag, "OptionError")
        if (error._tag === "OptionError") assert.strictEqual(error.path, "maxConcurrent", String(maxConcurrent))
      }
      const misspelt = yield* Effect.flip(
        Effect.scoped(
          Layer.build(
            Batch.layer({ maxConcurent: 2 } as never).pipe(
              Layer.provide(Orchestra.layer({ providers: { a: Mock.layer() } })),
              Layer.provide(Layer.succeed(Metric.MetricRegistry, new Map()))
            )
          )
        )
      )
      assert.strictEqual(misspelt._tag === "OptionError" && misspelt.path, "maxConcurent")
    })
  )
})

describe("Batch on a domain gets the domain's policies, as Router.execute does", () => {
  it.effect("an open breaker on the domain's provider makes the item fall back along the domain's chain", () =>
    Effect.gen(function* () {
      const { batch, controls, breakers } = yield* makeOrchestra(
        { a: {}, b: { respond: () => "from b" } },
        {
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b" }
          ],
          breakers: {}
        }
      )
      yield* breakers!.isolate("a")
      const result = yield* batch.run([{ query: "q", domain: "d-a" }, "q2"], { domain: "d-a" })
      for (const r of result.results) {
        assert.strictEqual(r.answer?.domain, "d-b")
        assert.isTrue(r.answer?.fallbackUsed)
        assert.strictEqual(r.answer?.domainsTried, 2)
      }
      assert.strictEqual(yield* controls.a!.calls, 0, "the open breaker refused without calling")
      assert.strictEqual(result.stats.fallbacks, 2)
    })
  )

  it.effect("a cached answer is served without calling the provider", () =>
    Effect.gen(function* () {
      const { batch, controls, router } = yield* makeOrchestra(
        { a: { respond: (r) => `answer to ${r.prompt}` } },
        { cache: { ttl: "1 minute" } }
      )
      const first = yield* router.execute({ prompt: "cached" }, "d-a")
      assert.strictEqual(first.source, "provider")
      const result = yield* batch.run(["cached", "fresh"], { domain: "d-a", concurrency: 1 })
      assert.deepStrictEqual(
        result.results.map((r) => [r.answer?.source, r.answer?.response.text]),
        [
          ["cache", "answer to cached"],
          ["provider", "answer to fresh"]
        ]
      )
      assert.strictEqual(yield* controls.a!.calls, 2)
    })
  )

  it.effect("the domain's provider rate limit applies to batch items", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        { a: {} },
        { rateLimits: { providers: { a: { requestsPerMinute: 2 } }, maxWait: 0 } }
      )
      const result = yield* batch.run(["1", "2", "3"], { domain: "d-a", concurrency: 1 })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "success", "error"]
      )
      const error = result.results[2]!.error
      assert.strictEqual(error?._tag === "ModelError" && error.reason, "RateLimited")
      assert.strictEqual(yield* controls.a!.calls, 2)
    })
  )

  it.effect("the domain's retry policy and deadline apply; Retried events count the item's retries", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        {
          a: {
            script: [
              Outcome.fail("Overloaded", { latency: "10 millis" }),
              Outcome.hang(),
              Outcome.succeed("finally", { latency: "10 millis" })
            ]
          }
        },
        { domains: [{ name: "d-a", provider: "a", retry: retry3, timeout: 500 }] }
      )
      const events: Array<Batch.ProgressEvent> = []
      const fiber = yield* Effect.forkChild(batch.run(["q"], { domain: "d-a", onProgress: (e) => events.push(e) }))
      yield* TestClock.adjust("5 seconds")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(trace(events), [
        "Started:0@0 0/1",
        "Retried:0@10 0/1",
        "Retried:0@610 0/1",
        "Succeeded:0@820 1/1"
      ])
      assert.strictEqual(result.results[0]!.retries, 2)
      assert.strictEqual(result.results[0]!.answer?.attempts, 3)
      assert.strictEqual(result.stats.retries, 2)
      assert.strictEqual(yield* controls.a!.calls, 3)
    })
  )
})

describe("Batch.run of one item without callbacks (its own path)", () => {
  // The same item through the one-item path and through a batch's pool (onProgress puts
  // it there): the same result, statistics and provider calls.
  const hostile = {
    request: {
      get prompt(): string {
        throw new Error("boom")
      }
    }
  } as unknown as Batch.Item
  const cases: ReadonlyArray<readonly [string, Batch.Item, ReadonlyArray<ReturnType<typeof Outcome.succeed>>]> = [
    ["an answer", "q", [Outcome.succeed("fine", { latency: "100 millis" })]],
    [
      "two retries, then an answer",
      "q",
      [
        Outcome.fail("Overloaded", { latency: "10 millis" }),
        Outcome.hang(),
        Outcome.succeed("finally", { latency: "10 millis" })
      ]
    ],
    ["a failure that is not retried", "q", [Outcome.fail("InvalidRequest", { latency: "10 millis" })]],
    ["a timeout after its retries", "q", [Outcome.hang(), Outcome.hang(), Outcome.hang(), Outcome.hang()]],
    ["an item that is not a request", 42 as unknown as Batch.Item, []],
    ["a request whose reading throws", hostile, []]
  ]
  for (const [name, item, script] of cases) {
    it.effect(`${name}: the same outcome as in a batch's pool`, () =>
      Effect.gen(function* () {
        const runOnce = (listen: boolean) =>
          Effect.gen(function* () {
            const { batch, controls } = yield* makeOrchestra(
              { a: { script } },
              { domains: [{ name: "d-a", provider: "a", retry: retry3, timeout: 500 }] }
            )
            const options: Batch.RunOptions = listen
              ? { domain: "d-a", onProgress: () => undefined }
              : { domain: "d-a" }
            const fiber = yield* Effect.forkChild(batch.run([item], options))
            yield* TestClock.adjust("10 seconds")
            const result = yield* Fiber.join(fiber)
            const r = result.results[0]!
            return {
              result: {
                status: r.status,
                text: r.answer?.response.text,
                attempts: r.answer?.attempts,
                error: r.error === undefined ? undefined : `${r.error._tag}: ${r.error.message}`,
                ran: r.ran,
                durationMs: r.durationMs,
                retries: r.retries
              },
              elapsedMs: result.elapsedMs,
              stats: result.stats,
              calls: yield* controls.a!.calls
            }
          })
        const alone = yield* runOnce(false)
        const pooled = yield* runOnce(true)
        assert.deepStrictEqual(alone, pooled)
        assert.strictEqual(alone.result.ran, true)
      })
    )
  }
})

describe("Router (fixes found while porting Batch)", () => {
  it.effect("a null request on a domain is an InvalidRequest naming `request`, not a defect", () =>
    Effect.gen(function* () {
      const { router } = yield* makeOrchestra({ a: {} })
      const exit = yield* Effect.exit(router.execute(null as never, "d-a"))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const error = exit.cause.reasons.find((r) => r._tag === "Fail")
        assert.strictEqual(error?._tag === "Fail" && invalidField(error.error), "request")
      }
    })
  )

  it.effect("null options of the router's calls are an InvalidRequest naming `options`, not a defect", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({ a: {} })
      const ask = { prompt: "x" }
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["execute", router.execute(ask, "d-a", null as never)],
        ["executeWithFallback", router.executeWithFallback(ask, ["d-a"], null as never)],
        ["executeParallelDomains", router.executeParallelDomains(ask, ["d-a"], "first", null as never)],
        ["hedge", router.hedge(ask, ["d-a"], null as never)],
        ["stream", Stream.runDrain(router.stream(ask, "d-a", null as never))],
        ["embed", router.embed({ texts: ["x"] }, "d-a", null as never)],
        ["plan", router.plan(ask, "d-a", null as never)],
        ["prepare", router.prepare("d-a", null as never)]
      ]
      for (const [name, effect] of cases) {
        const exit = yield* Effect.exit(effect)
        const failed = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
        assert.strictEqual(failed?._tag === "Fail" ? invalidField(failed.error) : String(exit), "options", name)
      }
      assert.strictEqual(yield* controls.a!.calls, 0)
    })
  )
})

describe("Batch fallback", () => {
  it.effect("the batch's fallback comes after the domain's own chain, not instead of it", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        { a: { script: [Outcome.fail("Overloaded")] }, b: { respond: () => "b" }, c: { respond: () => "c" } },
        {
          domains: [
            { name: "d-a", provider: "a", retry: noRetry, fallback: ["d-b"] },
            { name: "d-b", provider: "b", retry: noRetry },
            { name: "d-c", provider: "c", retry: noRetry }
          ]
        }
      )
      const result = yield* batch.run(["1"], { domain: "d-a", fallback: ["d-c"] })
      const answer = result.results[0]!.answer
      assert.strictEqual(answer?.domain, "d-b", "the domain's own fallback answers first")
      assert.strictEqual(answer?.domainsTried, 2)
      assert.strictEqual(yield* controls.c!.calls, 0)
    })
  )

  it.effect("fallback domains per batch: items move on only when the error falls back", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        {
          a: { script: [Outcome.fail("Overloaded"), Outcome.fail("InvalidRequest"), Outcome.succeed("a")] },
          b: { respond: () => "b" }
        },
        {
          domains: [
            { name: "d-a", provider: "a", retry: noRetry },
            { name: "d-b", provider: "b", retry: noRetry }
          ]
        }
      )
      const result = yield* batch.run(["1", "2", "3"], { domain: "d-a", fallback: ["d-b"], concurrency: 1 })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success"]
      )
      assert.strictEqual(result.results[0]!.answer?.domain, "d-b")
      assert.isTrue(result.results[0]!.answer?.fallbackUsed)
      assert.strictEqual(result.results[0]!.answer?.attempts, 2)
      assert.strictEqual(result.results[2]!.answer?.domain, "d-a")
      assert.isFalse(result.results[2]!.answer?.fallbackUsed)
      assert.strictEqual(yield* controls.b!.calls, 1, "InvalidRequest did not fall back")
      assert.strictEqual(result.stats.fallbacks, 1)
    })
  )

  it.effect(
    "items without a domain fall back from the executor's provider to the batch's fallback domains, in one plan",
    () =>
      Effect.gen(function* () {
        const { batch, controls, stats } = yield* makeOrchestra(
          {
            a: { script: [Outcome.fail("Unavailable"), Outcome.fail("Unavailable")] },
            b: { script: [Outcome.succeed("b"), Outcome.fail("Overloaded")] }
          },
          {
            executor: { retry: { maxAttempts: 1 } },
            domains: [{ name: "d-b", provider: "b", retry: noRetry }]
          }
        )
        const result = yield* batch.run(["x", "y"], { fallback: ["d-b"], concurrency: 1 })
        const answer = result.results[0]!.answer
        assert.strictEqual(answer?.response.text, "b")
        assert.strictEqual(answer?.domain, "d-b")
        assert.isTrue(answer?.fallbackUsed)
        assert.strictEqual(answer?.attempts, 2)
        const error = result.results[1]!.error
        assert.strictEqual(error?._tag, "FallbackExhaustedError")
        if (error?._tag === "FallbackExhaustedError") {
          assert.deepStrictEqual(
            error.attempts.map((a) => [a.domain, a.provider]),
            [
              [undefined, "a"],
              ["d-b", "b"]
            ]
          )
        }
        assert.strictEqual(result.results[1]!.status, "error")
        assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls], [2, 2])
        assert.strictEqual(result.stats.fallbacks, 2)
        assert.strictEqual((yield* stats.snapshot()).fallbacks, 2, "the pipeline counted both hand-overs")
      })
  )
})

const modes = [
  { name: "items with a domain", domain: "d-a" as string | undefined },
  { name: "items without a domain (the executor's provider)", domain: undefined as string | undefined }
] as const

for (const mode of modes) {
  describe(`Batch progress, ${mode.name}`, () => {
    // onProgress alone starts the items from JavaScript, onEvent on worker fibers: same events.
    for (const via of ["onProgress", "onEvent"] as const) {
      it.effect(`${via}: events in order with done/total counts and elapsed time`, () =>
        Effect.gen(function* () {
          const { batch } = yield* makeOrchestra(
            {
              a: {
                script: [
                  Outcome.succeed("0", { latency: "100 millis" }),
                  Outcome.succeed("1", { latency: "300 millis" }),
                  Outcome.fail("InvalidRequest", { latency: "100 millis" })
                ]
              }
            },
            { domains: [{ name: "d-a", provider: "a", retry: noRetry }], executor: { retry: noRetry } }
          )
          const events: Array<Batch.ProgressEvent> = []
          const listen =
            via === "onProgress"
              ? { onProgress: (e: Batch.ProgressEvent) => events.push(e) }
              : { onEvent: (e: Batch.ProgressEvent) => Effect.sync(() => events.push(e)) }
          const fiber = yield* Effect.forkChild(
            batch.run(["0", "1", "2"], { domain: mode.domain, concurrency: 2, ...listen })
          )
          yield* TestClock.adjust("1 second")
          const result = yield* Fiber.join(fiber)
          assert.deepStrictEqual(trace(events), [
            "Started:0@0 0/3",
            "Started:1@0 0/3",
            "Succeeded:0@100 1/3",
            "Started:2@100 1/3",
            "Failed:2@200 2/3",
            "Succeeded:1@300 3/3"
          ])
          const failed = events[4]
          assert.strictEqual(failed?._tag === "Failed" && failed.status, "error")
          assert.strictEqual(failed?._tag === "Failed" && failed.durationMs, 100)
          const succeeded = events[5]
          assert.strictEqual(succeeded?._tag === "Succeeded" && succeeded.durationMs, 300)
          assert.strictEqual(result.elapsedMs, 300)
        })
      )
    }

    it.effect("onEvent: the same events as Effects, awaited in order", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "100 millis" } })
        const events: Array<string> = []
        const fiber = yield* Effect.forkChild(
          batch.run(["0", "1"], {
            domain: mode.domain,
            concurrency: 1,
            onEvent: (e) => Effect.sync(() => events.push(e._tag))
          })
        )
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(fiber)
        assert.deepStrictEqual(events, ["Started", "Succeeded", "Started", "Succeeded"])
      })
    )

    it.effect("Batch.stream: the same events as a Stream, then the result", () =>
      Effect.gen(function* () {
        // distinct latencies: calls ending at the same instant may complete in either order
        const { context } = yield* makeOrchestra({
          a: {
            script: [
              Outcome.succeed("0", { latency: "200 millis" }),
              Outcome.succeed("1", { latency: "300 millis" }),
              Outcome.succeed("2", { latency: "250 millis" }),
              Outcome.succeed("3", { latency: "300 millis" })
            ]
          }
        })
        const fiber = yield* Effect.forkChild(
          Stream.runCollect(Batch.stream(["0", "1", "2", "3"], { domain: mode.domain, concurrency: 2 })).pipe(
            Effect.provide(context)
          )
        )
        yield* TestClock.adjust("1 second")
        const all = yield* Fiber.join(fiber)
        const last = all[all.length - 1]
        assert.strictEqual(last?._tag, "Done")
        const events = all.slice(0, -1) as ReadonlyArray<Batch.ProgressEvent>
        assert.deepStrictEqual(trace(events), [
          "Started:0@0 0/4",
          "Started:1@0 0/4",
          "Succeeded:0@200 1/4",
          "Started:2@200 1/4",
          "Succeeded:1@300 2/4",
          "Started:3@300 2/4",
          "Succeeded:2@450 3/4",
          "Succeeded:3@600 4/4"
        ])
        if (last?._tag === "Done") {
          assert.strictEqual(last.result.results.length, 4)
          assert.isTrue(last.result.results.every((r) => r.status === "success"))
          assert.strictEqual(last.result.elapsedMs, 600)
        }
      })
    )

    it.effect("Batch.stream refuses a bufferSize that is not a positive integer, naming it", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: {} })
        for (const bufferSize of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "8" as never]) {
          const error = yield* Effect.flip(Stream.runCollect(batch.stream(["x"], { domain: mode.domain, bufferSize })))
          assert.strictEqual(invalidField(error), "bufferSize", String(bufferSize))
        }
        assert.strictEqual(yield* controls.a!.calls, 0)
      })
    )

    it.effect("Batch.run refuses bufferSize, a Batch.stream option it would ignore, naming it", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: {} })
        const error = yield* Effect.flip(batch.run(["x"], { domain: mode.domain, bufferSize: 8 } as never))
        assert.strictEqual(invalidField(error), "bufferSize")
        assert.include(error.message, "Batch.stream")
        assert.strictEqual(yield* controls.a!.calls, 0)
      })
    )

    it.effect("Batch.stream fails with the run's error when the batch is invalid", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: {} })
        const error = yield* Effect.flip(
          Stream.runCollect(batch.stream(["x"], { domain: mode.domain, concurrency: 0 }))
        )
        assert.strictEqual(invalidField(error), "concurrency")
      })
    )

    it.effect("leaving Batch.stream early interrupts the batch's calls", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
        const fiber = yield* Effect.forkChild(
          batch.stream(["0", "1", "2", "3", "4", "5"], { domain: mode.domain }).pipe(
            Stream.takeUntil((e) => e._tag === "Succeeded"),
            Stream.runCollect
          )
        )
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        assert.isAtLeast(yield* controls.a!.interrupted, 1)
        yield* TestClock.adjust("10 seconds")
        assert.isBelow(yield* controls.a!.calls, 6, "no new item started after the consumer left")
      })
    )

    it.effect(
      "Batch.stream holds the batch back while its consumer does not pull: at most bufferSize events wait",
      () =>
        Effect.gen(function* () {
          const { batch, controls } = yield* makeOrchestra({ a: { latency: "10 millis" } }, { maxConcurrent: 4 })
          const total = 2_000
          const items = Array.from({ length: total }, (_, i) => `${i}`)
          let produced = 0
          const scope = yield* Scope.make()
          const pull = yield* Stream.toPull(
            batch.stream(items, {
              domain: mode.domain,
              bufferSize: 16,
              onProgress: () => {
                produced++
              }
            })
          ).pipe(Scope.provide(scope))
          const taken: Array<Batch.StreamEvent> = [...(yield* pull)]
          yield* TestClock.adjust("1 hour")
          // Taken, plus the buffer, plus the events of the items in flight (a Started and an outcome each).
          assert.isAtMost(produced, taken.length + 16 + 4 * 2 + 2, "the batch waited for its consumer")
          assert.isBelow(yield* controls.a!.calls, total)
          // Pulled again, the batch goes on to its end: every item its one outcome, every event in order.
          const rest = yield* Effect.forkChild(
            Effect.gen(function* () {
              while (taken.at(-1)?._tag !== "Done") taken.push(...(yield* pull))
            })
          )
          // Step by step: an item starts only once the consumer has taken, after the clock's last step.
          for (let step = 0; step < 10_000 && rest.pollUnsafe() === undefined; step++) {
            yield* TestClock.adjust("10 millis")
          }
          yield* Fiber.join(rest)
          yield* Scope.close(scope, Exit.void)
          const done = taken.at(-1)
          assert.isTrue(done?._tag === "Done" && done.result.results.every((r) => r.status === "success"))
          const outcomes = taken.flatMap((e) => (e._tag === "Succeeded" ? [e.index] : []))
          assert.deepStrictEqual(
            [...outcomes].sort((a, b) => a - b),
            items.map((_, i) => i)
          )
          assert.strictEqual(taken.length, 2 * total + 1)
          assert.strictEqual(produced, 2 * total)
        })
    )

    it.effect("a Batch.stream left early returns once the calls of its batch have ended", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        for (const cancel of [undefined, Effect.never]) {
          const events = yield* Effect.forkChild(
            Stream.runCollect(Stream.take(batch.stream(["q0", "q1", "q2"], { domain: mode.domain, cancel }), 1))
          )
          yield* TestClock.adjust("500 millis")
          const taken = yield* Fiber.join(events)
          assert.strictEqual(taken.length, 1)
          assert.strictEqual(yield* controls.a!.inFlight, 0, "calls still ran once the stream had ended")
        }
      })
    )

    it.effect("cancel stops a batch that Batch.stream holds back: its result says which items never ran", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "10 millis" } }, { maxConcurrent: 4 })
        const total = 1_000
        const items = Array.from({ length: total }, (_, i) => `${i}`)
        const cancel = yield* Deferred.make<void>()
        const scope = yield* Scope.make()
        const pull = yield* Stream.toPull(
          batch.stream(items, { domain: mode.domain, bufferSize: 4, cancel: Deferred.await(cancel) })
        ).pipe(Scope.provide(scope))
        const taken: Array<Batch.StreamEvent> = [...(yield* pull)]
        yield* TestClock.adjust("1 hour")
        yield* Deferred.succeed(cancel, undefined)
        const rest = yield* Effect.forkChild(
          Effect.gen(function* () {
            while (taken.at(-1)?._tag !== "Done") taken.push(...(yield* pull))
          })
        )
        for (let step = 0; step < 1_000 && rest.pollUnsafe() === undefined; step++) {
          yield* TestClock.adjust("10 millis")
        }
        yield* Fiber.join(rest)
        yield* Scope.close(scope, Exit.void)
        const done = taken.at(-1)
        assert.isTrue(done?._tag === "Done")
        if (done?._tag !== "Done") return
        const { result } = done
        assert.isTrue(result.cancelled)
        assert.strictEqual(result.results.length, total)
        assert.isAbove(result.notRun.length, total / 2, "the held-back items never started")
        assert.strictEqual(taken.at(-2)?._tag, "Cancelled")
        assert.isBelow(yield* controls.a!.calls, total / 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
      })
    )

    it.effect("Batch.stream holds back a batch on worker fibers too (an executor of the caller's own)", () =>
      Effect.gen(function* () {
        const { executor, router, controls } = yield* makeOrchestra(
          { a: { latency: "10 millis" } },
          { maxConcurrent: 4 }
        )
        // A copy of the executor is not one the batch can start calls on from JavaScript: it runs workers.
        const batch = yield* Batch.make({ maxConcurrent: 4 }).pipe(
          Effect.provideService(Executor, { ...executor }),
          Effect.provideService(Router, router)
        )
        const total = 1_000
        const items = Array.from({ length: total }, (_, i) => `${i}`)
        let produced = 0
        const scope = yield* Scope.make()
        const pull = yield* Stream.toPull(
          batch.stream(items, {
            domain: mode.domain,
            bufferSize: 8,
            onProgress: () => {
              produced++
            }
          })
        ).pipe(Scope.provide(scope))
        const taken: Array<Batch.StreamEvent> = [...(yield* pull)]
        yield* TestClock.adjust("1 hour")
        assert.isAtMost(produced, taken.length + 8 + 4 * 2 + 2, "the workers waited for the consumer")
        const rest = yield* Effect.forkChild(
          Effect.gen(function* () {
            while (taken.at(-1)?._tag !== "Done") taken.push(...(yield* pull))
          })
        )
        for (let step = 0; step < 10_000 && rest.pollUnsafe() === undefined; step++) {
          yield* TestClock.adjust("10 millis")
        }
        yield* Fiber.join(rest)
        yield* Scope.close(scope, Exit.void)
        const done = taken.at(-1)
        assert.isTrue(done?._tag === "Done" && done.result.results.every((r) => r.status === "success"))
        assert.strictEqual(yield* controls.a!.calls, total)
        assert.strictEqual(taken.length, 2 * total + 1)
      })
    )

    it.effect("Batch.stream: time held back by its consumer is not counted as a wait for the shared limit", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "10 millis" } }, { maxConcurrent: 1 })
        const items = Array.from({ length: 20 }, (_, i) => `${i}`)
        const scope = yield* Scope.make()
        const pull = yield* Stream.toPull(batch.stream(items, { domain: mode.domain, bufferSize: 1 })).pipe(
          Scope.provide(scope)
        )
        const taken: Array<Batch.StreamEvent> = [...(yield* pull)]
        yield* TestClock.adjust("1 hour")
        const rest = yield* Effect.forkChild(
          Effect.gen(function* () {
            while (taken.at(-1)?._tag !== "Done") taken.push(...(yield* pull))
          })
        )
        for (let step = 0; step < 1_000 && rest.pollUnsafe() === undefined; step++) {
          yield* TestClock.adjust("10 millis")
        }
        yield* Fiber.join(rest)
        yield* Scope.close(scope, Exit.void)
        const done = taken.at(-1)
        assert.isTrue(done?._tag === "Done")
        if (done?._tag !== "Done") return
        // One item at a time, nobody else on the limit: no item waited for a permit.
        assert.strictEqual(done.result.stats.queueWait.max, 0)
      })
    )

    it.effect("a consumer that leaves while Batch.stream holds the batch back ends it: no call left running", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "10 millis" } }, { maxConcurrent: 4 })
        const items = Array.from({ length: 1_000 }, (_, i) => `${i}`)
        const scope = yield* Scope.make()
        const pull = yield* Stream.toPull(batch.stream(items, { domain: mode.domain, bufferSize: 4 })).pipe(
          Scope.provide(scope)
        )
        yield* pull
        yield* TestClock.adjust("1 hour")
        const calls = yield* controls.a!.calls
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        yield* TestClock.adjust("1 hour")
        assert.strictEqual(yield* controls.a!.calls, calls, "no item started after the consumer left")
      })
    )

    it.effect("Retried events appear for retried items, and the item counts its retries", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra(
          {
            a: {
              script: [
                Outcome.fail("Overloaded", { latency: "10 millis" }),
                Outcome.fail("RateLimited", { latency: "10 millis" }),
                Outcome.succeed("finally", { latency: "10 millis" })
              ]
            }
          },
          { domains: [{ name: "d-a", provider: "a", retry: retry3 }], executor: { retry: retry3 } }
        )
        const events: Array<Batch.ProgressEvent> = []
        const fiber = yield* Effect.forkChild(
          batch.run(["q"], { domain: mode.domain, onProgress: (e) => events.push(e) })
        )
        yield* TestClock.adjust("5 seconds")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(trace(events), [
          "Started:0@0 0/1",
          "Retried:0@10 0/1",
          "Retried:0@120 0/1",
          "Succeeded:0@330 1/1"
        ])
        assert.deepStrictEqual(
          events.flatMap((e) => (e._tag === "Retried" ? [[e.attempt, e.delayMs]] : [])),
          [
            [1, 100],
            [2, 200]
          ]
        )
        assert.strictEqual(result.results[0]!.retries, 2)
        assert.strictEqual(result.results[0]!.answer?.response.text, "finally")
        assert.strictEqual(result.stats.retries, 2)
      })
    )
  })

  describe(`Batch concurrency, ${mode.name}`, () => {
    it.effect("two concurrent batches of one manager share its limit: peak never above it, both progress", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
        const startsA: Array<number> = []
        const startsB: Array<number> = []
        const items = Array.from({ length: 10 }, (_, i) => `q${i}`)
        const a = yield* Effect.forkChild(
          batch.run(items, {
            domain: mode.domain,
            onProgress: (e) => e._tag === "Started" && startsA.push(e.elapsedMs)
          })
        )
        const b = yield* Effect.forkChild(
          batch.run(items, {
            domain: mode.domain,
            onProgress: (e) => e._tag === "Started" && startsB.push(e.elapsedMs)
          })
        )
        yield* TestClock.adjust("1 minute")
        const [ra, rb] = [yield* Fiber.join(a), yield* Fiber.join(b)]
        assert.strictEqual(yield* controls.a!.peak, 3)
        assert.strictEqual(yield* controls.a!.calls, 20)
        assert.isTrue(ra.results.every((r) => r.status === "success"))
        assert.isTrue(rb.results.every((r) => r.status === "success"))
        // 20 calls of 1 s through 3 permits: ceil(20 / 3) = 7 s for both together
        assert.strictEqual(Math.max(ra.elapsedMs, rb.elapsedMs), 7000)
        // FIFO hand-off: B is not starved until A is done
        assert.isBelow(startsB[2]!, 3000)
        assert.isBelow(startsA[startsA.length - 1]!, 7000)
        assert.isAtMost(ra.stats.concurrencyPeak, 3)
        assert.isAbove(ra.stats.queueWait.max, 0, "A's items waited for permits B held")
      })
    )

    it.effect("per-batch concurrency below the shared limit", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 10 })
        assert.strictEqual(batch.limit, 10)
        const fiber = yield* Effect.forkChild(
          batch.run(["0", "1", "2", "3", "4"], { domain: mode.domain, concurrency: 2 })
        )
        yield* TestClock.adjust("10 seconds")
        const result = yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.peak, 2)
        assert.strictEqual(result.elapsedMs, 3000)
        assert.strictEqual(result.stats.concurrencyPeak, 2)
      })
    )

    it.effect("a per-batch concurrency above the shared limit is capped by it", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const fiber = yield* Effect.forkChild(batch.run(["0", "1", "2", "3"], { domain: mode.domain, concurrency: 50 }))
        yield* TestClock.adjust("10 seconds")
        yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.peak, 2)
      })
    )

    it.effect("workers take items by index: a long batch reads only the items it has reached", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 4 })
        const read = new Set<number>()
        const backing = Array.from({ length: 100_000 }, (_, i) => `q${i}`)
        const items = new Proxy(backing, {
          get: (target, key, receiver) => {
            if (typeof key === "string" && /^\d+$/.test(key)) read.add(Number(key))
            return Reflect.get(target, key, receiver)
          }
        })
        const fiber = yield* Effect.forkChild(batch.run(items, { domain: mode.domain, concurrency: 2 }))
        yield* TestClock.adjust("2500 millis")
        assert.strictEqual(yield* controls.a!.inFlight, 2)
        assert.deepStrictEqual(
          [...read].sort((x, y) => x - y),
          [0, 1, 2, 3, 4, 5]
        )
        yield* Fiber.interrupt(fiber)
      })
    )
  })

  describe(`Batch cancellation, ${mode.name}`, () => {
    it.effect("a run interrupted while it has a cancel returns once the calls it interrupts have ended", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        let inFlightAtReturn = -1
        const fiber = yield* Effect.forkChild(
          batch.run(["q0", "q1", "q2"], { domain: mode.domain, cancel: Effect.never }).pipe(
            Effect.onInterrupt(() =>
              Effect.map(controls.a!.inFlight, (n) => {
                inFlightAtReturn = n
              })
            )
          )
        )
        yield* TestClock.adjust("500 millis")
        assert.strictEqual(yield* controls.a!.inFlight, 2)
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(inFlightAtReturn, 0, "the run's caller regained control with its items' calls running")
        assert.strictEqual(yield* controls.a!.interrupted, 2)
      })
    )

    it.effect("cancel interrupts in-flight calls and reports the items that never ran", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const stop = yield* Deferred.make<void>()
        const events: Array<Batch.ProgressEvent> = []
        const items = Array.from({ length: 8 }, (_, i) => `q${i}`)
        const fiber = yield* Effect.forkChild(
          batch.run(items, { domain: mode.domain, cancel: Deferred.await(stop), onProgress: (e) => events.push(e) })
        )
        yield* TestClock.adjust("1500 millis")
        assert.strictEqual(yield* controls.a!.inFlight, 2)
        yield* Deferred.succeed(stop, undefined)
        const result = yield* Fiber.join(fiber)
        assert.isTrue(result.cancelled)
        assert.deepStrictEqual(
          result.results.map((r) => [r.status, r.ran]),
          [
            ["success", true],
            ["success", true],
            ["cancelled", true],
            ["cancelled", true],
            ["cancelled", false],
            ["cancelled", false],
            ["cancelled", false],
            ["cancelled", false]
          ]
        )
        assert.deepStrictEqual(result.notRun, [4, 5, 6, 7])
        assert.strictEqual(result.results[2]!.durationMs, 500)
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        assert.strictEqual(yield* controls.a!.calls, 4)
        const last = events[events.length - 1]
        assert.strictEqual(last?._tag, "Cancelled")
        if (last?._tag === "Cancelled") {
          assert.deepStrictEqual(last.notRun, [4, 5, 6, 7])
          assert.strictEqual(last.done, 2)
          assert.strictEqual(last.elapsedMs, 1500)
        }
        assert.strictEqual(result.stats.total, 4)
        assert.deepStrictEqual(result.stats.failuresByReason, { Interrupted: 2 })
        // the permits came back: a later batch runs at full width
        const next = yield* Effect.forkChild(batch.run(["x", "y"], { domain: mode.domain }))
        yield* TestClock.adjust("1 second")
        const after = yield* Fiber.join(next)
        assert.isTrue(after.results.every((r) => r.status === "success"))
        assert.strictEqual(after.elapsedMs, 1000)
      })
    )

    it.effect("a cancel that has already happened runs nothing", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } })
        const result = yield* batch.run(["0", "1", "2"], { domain: mode.domain, cancel: Effect.void })
        assert.isTrue(result.cancelled)
        assert.deepStrictEqual(result.notRun, [0, 1, 2])
        assert.isTrue(result.results.every((r) => r.status === "cancelled" && !r.ran))
        assert.strictEqual(yield* controls.a!.calls, 0)
      })
    )

    it.effect("a cancel that never fires lets the batch finish", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "1 second" } })
        const fiber = yield* Effect.forkChild(batch.run(["0", "1"], { domain: mode.domain, cancel: Effect.never }))
        yield* TestClock.adjust("1 second")
        const result = yield* Fiber.join(fiber)
        assert.isFalse(result.cancelled)
        assert.deepStrictEqual(result.notRun, [])
      })
    )

    it.effect("a cancel that cannot be interrupted does not hold the batch once its items are done", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "1 second" } })
        // The batch interrupted its watcher and waited for it to stop: here, until the cancel fired (an hour).
        const cancel = Effect.uninterruptible(Effect.sleep("1 hour"))
        const fiber = yield* Effect.forkChild(batch.run(["0", "1"], { domain: mode.domain, cancel }))
        yield* TestClock.adjust("1 second")
        const exit = fiber.pollUnsafe()
        assert.isDefined(exit, "the batch returned once its items were done")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual([result.cancelled, result.elapsedMs, result.notRun], [false, 1000, []])
        // Its cancel firing later changes nothing.
        yield* TestClock.adjust("1 hour")
        assert.isFalse(result.cancelled)
      })
    )

    it.effect("interrupting the batch fiber interrupts its calls and frees the permits", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const fiber = yield* Effect.forkChild(batch.run(["0", "1", "2", "3"], { domain: mode.domain }))
        yield* TestClock.adjust("500 millis")
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        const next = yield* Effect.forkChild(batch.run(["x", "y"], { domain: mode.domain }))
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(next)).elapsedMs, 1000)
      })
    )
  })

  describe(`Batch shutdown, ${mode.name}`, () => {
    it.effect("closing the manager mid-batch: the batch returns and every item has an outcome", () =>
      Effect.gen(function* () {
        const { batch, controls, scope } = yield* makeOrchestra(
          { a: { latency: "1 second" } },
          { maxConcurrent: 2, executor: { shutdownDeadline: "500 millis", retry: noRetry } }
        )
        const fiber = yield* Effect.forkChild(batch.run(["0", "1", "2", "3", "4", "5"], { domain: mode.domain }))
        yield* TestClock.adjust("100 millis")
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("500 millis")
        yield* Fiber.join(closing)
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["rejected", "rejected", "rejected", "rejected", "rejected", "rejected"]
        )
        assert.isTrue(result.results.every((r) => r.error?._tag === "ShuttingDownError"))
        assert.deepStrictEqual(result.notRun, [])
        assert.strictEqual(result.results[0]!.durationMs, 600, "in flight until the shutdown deadline")
        assert.strictEqual(yield* controls.a!.calls, 2, "queued items never reached the provider")
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        // a batch started after the close: every item refused at once, none reaches the provider
        const late = yield* batch.run(["late 0", "late 1"], { domain: mode.domain })
        assert.deepStrictEqual(
          late.results.map((r) => r.error?._tag),
          ["ShuttingDownError", "ShuttingDownError"]
        )
        assert.strictEqual(yield* controls.a!.calls, 2)
      })
    )
  })

  describe(`Batch shutdown, a stream held back by its consumer, ${mode.name}`, () => {
    // Its items waited for room in the consumer's buffer through the close: none had its outcome (nor its
    // onProgress) until the consumer pulled again, which it might never do.
    // On worker fibers too (an onEvent callback): their items waited for room as the started ones did.
    for (const via of ["onProgress", "onEvent"] as const) {
      it.effect(`${via}: closing the manager ends the batch at once: every item its one outcome, the result last`, () =>
        Effect.gen(function* () {
          const { batch, controls, scope } = yield* makeOrchestra(
            { a: { latency: "10 millis" } },
            { maxConcurrent: 4, executor: { shutdownDeadline: "500 millis", retry: noRetry } }
          )
          const total = 1_000
          const items = Array.from({ length: total }, (_, i) => `${i}`)
          const outcomes = new Map<number, number>()
          const consumer = yield* Scope.make()
          const pull = yield* Stream.toPull(
            batch.stream(items, {
              domain: mode.domain,
              bufferSize: 4,
              [via]: (event: Batch.ProgressEvent) => {
                if (event._tag === "Succeeded" || event._tag === "Failed") {
                  outcomes.set(event.index, (outcomes.get(event.index) ?? 0) + 1)
                }
                return via === "onEvent" ? Effect.void : undefined
              }
            })
          ).pipe(Scope.provide(consumer))
          const taken: Array<Batch.StreamEvent> = [...(yield* pull)]
          yield* TestClock.adjust("1 hour")
          assert.isBelow(outcomes.size, total / 2, "held back by its consumer")
          const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
          yield* TestClock.adjust("1 second")
          yield* Fiber.join(closing)
          // Workers run an item's events one by one, each on a fiber: turns, not time.
          for (let turn = 0; turn < 100_000 && outcomes.size < total; turn++) yield* Effect.yieldNow
          assert.strictEqual(outcomes.size, total, "every item had its outcome once the manager closed")
          assert.isTrue([...outcomes.values()].every((n) => n === 1))
          const calls = yield* controls.a!.calls
          assert.isBelow(calls, total / 2, "the held-back items never reached the provider")
          // Pulled later, the events are all there, the result last: the items refused say they never ran.
          while (taken.at(-1)?._tag !== "Done") taken.push(...(yield* pull))
          yield* Scope.close(consumer, Exit.void)
          const done = taken.at(-1)
          assert.isTrue(done?._tag === "Done")
          if (done?._tag !== "Done") return
          assert.strictEqual(done.result.results.length, total)
          const notRan = done.result.results.filter((r) => r.ran === false)
          assert.isAbove(notRan.length, total / 2)
          assert.isTrue(notRan.every((r) => r.error?._tag === "ShuttingDownError"))
          assert.strictEqual(yield* controls.a!.calls, calls)
        })
      )
    }
  })

  describe(`Batch shutdown from a progress callback, ${mode.name}`, () => {
    for (const via of ["onProgress", "onEvent"] as const) {
      it.effect(`${via} closing the manager at an item's Started: that item never ran, and says so`, () =>
        Effect.gen(function* () {
          const { batch, controls, scope } = yield* makeOrchestra(
            { a: {} },
            { maxConcurrent: 1, executor: { shutdownDeadline: "500 millis", retry: noRetry } }
          )
          let closed = false
          const close = (event: Batch.ProgressEvent) => {
            if (event._tag !== "Started" || closed) return
            closed = true
            Effect.runFork(Scope.close(scope, Exit.void))
          }
          const options =
            via === "onProgress"
              ? { domain: mode.domain, onProgress: close }
              : { domain: mode.domain, onEvent: (event: Batch.ProgressEvent) => Effect.sync(() => close(event)) }
          const fiber = yield* Effect.forkChild(batch.run(["0", "1"], options))
          yield* TestClock.adjust("1 second")
          const result = yield* Fiber.join(fiber)
          assert.strictEqual(yield* controls.a!.calls, 0, "no item reached the provider")
          assert.deepStrictEqual(
            result.results.map((r) => [r.status, r.error?._tag, r.ran]),
            [
              ["rejected", "ShuttingDownError", false],
              ["rejected", "ShuttingDownError", false]
            ]
          )
          assert.deepStrictEqual(result.notRun, [])
          // Refused, they count as the refused items of a batch do.
          assert.deepStrictEqual([result.stats.total, result.stats.failuresByReason], [2, { ShuttingDown: 2 }])
        })
      )
    }
  })

  describe(`Batch shutdown, a one-item batch queued, ${mode.name}`, () => {
    it.effect("its turn coming once the manager closes, it is refused without running (ran: false)", () =>
      Effect.gen(function* () {
        const { batch, controls, scope } = yield* makeOrchestra(
          { a: { latency: "1 second" } },
          { maxConcurrent: 1, executor: { shutdownDeadline: "5 seconds", retry: noRetry } }
        )
        const first = yield* Effect.forkChild(batch.run(["first"], { domain: mode.domain }))
        yield* TestClock.adjust("10 millis")
        const queued = yield* Effect.forkChild(batch.run(["queued"], { domain: mode.domain }))
        yield* TestClock.adjust("10 millis")
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("2 seconds")
        yield* Fiber.join(closing)
        assert.deepStrictEqual(
          (yield* Fiber.join(first)).results.map((r) => [r.status, r.ran]),
          [["success", true]]
        )
        const refused = (yield* Fiber.join(queued)).results[0]!
        assert.deepStrictEqual(
          [refused.status, refused.error?._tag, refused.ran],
          ["rejected", "ShuttingDownError", false]
        )
        assert.strictEqual(yield* controls.a!.calls, 1)
      })
    )
  })

  describe(`Batch stats, ${mode.name}`, () => {
    it.effect("result.stats counts this batch only, even with another batch running at the same time", () =>
      Effect.gen(function* () {
        const { batch, stats } = yield* makeOrchestra(
          { a: { latency: "100 millis" } },
          { maxConcurrent: 4, domains: [{ name: "d-a", provider: "a", retry: noRetry }], executor: { retry: noRetry } }
        )
        const invalid = { request: { prompt: "bad", maxTokens: -1 } }
        const a = yield* Effect.forkChild(batch.run(["a0", invalid, "a2"], { domain: mode.domain, concurrency: 1 }))
        const b = yield* Effect.forkChild(
          batch.run(["b0", "b1", "b2", "b3", "b4"], { domain: mode.domain, id: "other-batch" })
        )
        yield* TestClock.adjust("5 seconds")
        const ra = yield* Fiber.join(a)
        const rb = yield* Fiber.join(b)
        assert.strictEqual(rb.id, "other-batch")
        assert.notStrictEqual(ra.id, rb.id)
        assert.deepStrictEqual(
          ra.results.map((r) => r.status),
          ["success", "error", "success"]
        )
        assert.strictEqual(ra.stats.total, 3)
        assert.strictEqual(ra.stats.successes, 2)
        assert.strictEqual(ra.stats.failures, 1)
        assert.deepStrictEqual(ra.stats.failuresByReason, { InvalidRequest: 1 })
        assert.strictEqual(ra.stats.concurrencyPeak, 1)
        assert.strictEqual(rb.stats.total, 5)
        assert.strictEqual(rb.stats.successes, 5)
        assert.strictEqual(rb.stats.failures, 0)
        assert.strictEqual(rb.stats.latency.avg, 100)
        assert.strictEqual(rb.stats.latency.p95, 100)
        assert.strictEqual(rb.stats.successRate, 100)
        assert.strictEqual(rb.stats.tokens.output, 5 * 5)
        assert.isAbove(rb.stats.concurrencyPeak, 1)
        const all = yield* stats.snapshot()
        assert.strictEqual(all.total, 8)
        assert.strictEqual(all.successes, 7)
      })
    )

    it.effect("stats come from the batch's own outcomes: many batches add no metric series", () =>
      Effect.gen(function* () {
        const { batch, registry } = yield* makeOrchestra({ a: { latency: "10 millis" } })
        const run = (id: string, n: number) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(
              batch.run(
                Array.from({ length: n }, (_, i) => `${id}-${i}`),
                { domain: mode.domain, id }
              )
            )
            yield* TestClock.adjust("1 second")
            return yield* Fiber.join(fiber)
          })
        yield* run("warm-up", 2)
        const series = registry.size
        for (let i = 0; i < 20; i++) yield* run(`batch-${i}`, 3)
        const last = yield* run("last", 4)
        assert.strictEqual(registry.size, series, "no series per batch")
        assert.strictEqual(last.stats.total, 4)
        assert.strictEqual(last.stats.successes, 4)
        assert.strictEqual(last.stats.latency.max, 10)
      })
    )
  })
}

describe("Batch permits, batches without callbacks (items started from JavaScript)", () => {
  it.effect("two silent batches share the limit in arrival order: neither holds it until it is done", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
      const items = Array.from({ length: 10 }, (_, i) => `q${i}`)
      const a = yield* Effect.forkChild(batch.run(items, { domain: "d-a" }))
      const b = yield* Effect.forkChild(batch.run(items, { domain: "d-a" }))
      yield* TestClock.adjust("1 minute")
      const [ra, rb] = [yield* Fiber.join(a), yield* Fiber.join(b)]
      assert.strictEqual(yield* controls.a!.peak, 3)
      assert.strictEqual(yield* controls.a!.calls, 20)
      assert.isTrue([...ra.results, ...rb.results].every((r) => r.status === "success"))
      // 20 calls of 1 s through 3 permits: 7 s for both. A batch that took its permits back at
      // once would finish alone in 4 s and leave the other waiting until then.
      assert.strictEqual(Math.max(ra.elapsedMs, rb.elapsedMs), 7000)
      assert.isAtLeast(ra.elapsedMs, 6000)
      assert.isAtLeast(rb.elapsedMs, 6000)
      assert.isAtMost(ra.stats.concurrencyPeak, 3)
      assert.isAbove(rb.stats.queueWait.max, 0, "B's items waited for permits A held")
    })
  )

  it.effect("a silent batch and one with callbacks share the limit; the silent one waits its turn", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
      const items = Array.from({ length: 6 }, (_, i) => `q${i}`)
      const startsB: Array<number> = []
      const a = yield* Effect.forkChild(batch.run(items, { domain: "d-a" }))
      const b = yield* Effect.forkChild(
        batch.run(items, {
          domain: "d-a",
          onEvent: (e) => Effect.sync(() => e._tag === "Started" && startsB.push(e.elapsedMs))
        })
      )
      yield* TestClock.adjust("1 minute")
      const [ra, rb] = [yield* Fiber.join(a), yield* Fiber.join(b)]
      assert.strictEqual(yield* controls.a!.peak, 2)
      assert.strictEqual(Math.max(ra.elapsedMs, rb.elapsedMs), 6000)
      assert.isAtLeast(ra.elapsedMs, 5000, "the silent batch shared the limit")
      assert.isBelow(startsB[1]!, 3000, "the batch with callbacks was not starved")
    })
  )

  it.effect("an item's permit goes back once its outcome is decided, not after a slow onEvent of that outcome", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: { latency: "100 millis" } }, { maxConcurrent: 1 })
      // A progress sink that takes 1 s for each outcome (a slow database) in batch A.
      const a = yield* Effect.forkChild(
        batch.run(["a0", "a1"], {
          domain: "d-a",
          onEvent: (e) => (e._tag === "Succeeded" ? Effect.sleep("1 second") : Effect.void)
        })
      )
      const b = yield* Effect.forkChild(batch.run(["b0"], { domain: "d-a" }))
      yield* TestClock.adjust("1 minute")
      const [ra, rb] = [yield* Fiber.join(a), yield* Fiber.join(b)]
      assert.deepStrictEqual(
        [...ra.results, ...rb.results].map((r) => r.status),
        ["success", "success", "success"]
      )
      // a0 answered at 100 ms: B's item took the permit then, not once A's sink was done with a0 (1,100 ms).
      assert.strictEqual(rb.elapsedMs, 200)
      assert.strictEqual(rb.stats.queueWait.max, 100)
      // A itself waits for its sink (its one worker takes a1 at 1,100 ms), and ends once it is done with a1.
      assert.strictEqual(ra.elapsedMs, 2200)
    })
  )

  it.effect("a silent batch interrupted while queued, and one cancelled mid-run, give every permit back", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
      const cancel = yield* Deferred.make<void>()
      const a = yield* Effect.forkChild(
        batch.run(["a0", "a1", "a2", "a3"], { domain: "d-a", cancel: Deferred.await(cancel) })
      )
      yield* TestClock.adjust("100 millis")
      // B finds both permits held: its fiber queues for one, and is interrupted there.
      const b = yield* Effect.forkChild(batch.run(["b0", "b1"], { domain: "d-a" }))
      yield* TestClock.adjust("100 millis")
      yield* Fiber.interrupt(b)
      // A is cancelled with two items running and two never started.
      yield* Deferred.succeed(cancel, undefined)
      const ra = yield* Fiber.join(a)
      assert.isTrue(ra.cancelled)
      assert.deepStrictEqual(ra.notRun, [2, 3])
      assert.deepStrictEqual(
        ra.results.map((r) => r.status),
        ["cancelled", "cancelled", "cancelled", "cancelled"]
      )
      // The whole limit is free again: four items on two permits take two seconds.
      const c = yield* Effect.forkChild(batch.run(["c0", "c1", "c2", "c3"], { domain: "d-a" }))
      yield* TestClock.adjust("5 seconds")
      const rc = yield* Fiber.join(c)
      assert.isTrue(rc.results.every((r) => r.status === "success"))
      assert.strictEqual(rc.elapsedMs, 2000)
      assert.strictEqual(rc.stats.concurrencyPeak, 2)
      assert.strictEqual(yield* controls.a!.calls, 6, "a0, a1 and c0..c3 reached the provider; b0, b1 never")
    })
  )

  // Found in review of the JavaScript-started pool.
  for (const kind of ["silent", "with onProgress", "with onEvent"] as const) {
    const opts = (extra: Batch.RunOptions = {}): Batch.RunOptions =>
      kind === "silent"
        ? extra
        : kind === "with onProgress"
          ? { ...extra, onProgress: () => undefined }
          : { ...extra, onEvent: () => Effect.void }

    it.effect(`1,000 batches queued behind one permit, each ending at once, all end (${kind})`, () =>
      Effect.gen(function* () {
        // A release used to resume the next batch inside itself: a chain of batches that end at
        // once and hand the permit on overflowed the stack, and the rest waited for ever.
        const { batch } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 1 })
        const blocker = yield* Effect.forkChild(batch.run(["x"], { domain: "d-a" }))
        const queued: Array<Fiber.Fiber<Batch.BatchResult, AiError>> = []
        for (let i = 0; i < 1000; i++) {
          queued.push(yield* Effect.forkChild(batch.run([42 as unknown as Batch.Item], opts({ domain: "d-a" }))))
        }
        yield* TestClock.adjust("2 seconds")
        assert.strictEqual((yield* Fiber.join(blocker)).results[0]!.status, "success")
        for (const fiber of queued) {
          const result = yield* Fiber.join(fiber)
          assert.strictEqual(result.results[0]!.status, "error")
        }
      })
    )

    it.effect(`an item whose own field throws when read is that item's error, alone or not (${kind})`, () =>
      Effect.gen(function* () {
        // Found in review: read outside the item's exit, it killed a one-item batch and a worker's batch.
        const batch = yield* customOrchestra(
          custom("p", (request) => Effect.succeed(response("p", request.prompt ?? ""))),
          { maxConcurrent: 1 }
        )
        const hostile = {
          get query(): string {
            throw new Error("boom")
          }
        } as unknown as Batch.Item
        for (const items of [[hostile], [hostile, "ok"]]) {
          const result = yield* batch.run(items, opts())
          assert.strictEqual(result.results[0]!.status, "error")
          const error = result.results[0]!.error
          // The item's own error, naming the field: not an "unexpected defect" of reason Unknown.
          assert.deepStrictEqual(error?._tag === "ModelError" && [error.reason, error.field], [
            "InvalidRequest",
            "items[0].query"
          ])
          assert.include(error?.message ?? "", "reading it threw: boom")
          assert.strictEqual(result.results.length, items.length)
        }
        const after = yield* batch.run(["again"], opts()).pipe(Effect.timeout("1 second"))
        assert.strictEqual(after.results[0]!.status, "success", "the permit was given back")
        // What the getter throws is the caller's: a value without a string form names the item all the same.
        const bare = {
          get query(): string {
            throw Object.create(null)
          }
        } as unknown as Batch.Item
        const result = yield* batch.run([bare, "ok"], opts())
        const error = result.results[0]!.error
        assert.deepStrictEqual(error?._tag === "ModelError" && [error.reason, error.field], [
          "InvalidRequest",
          "items[0].query"
        ])
        assert.strictEqual(result.results[1]!.status, "success")
      })
    )

    it.effect(`a request whose reading throws is that item's error; the batch and the limit go on (${kind})`, () =>
      Effect.gen(function* () {
        const batch = yield* customOrchestra(
          custom("p", (request) => Effect.succeed(response("p", request.prompt ?? ""))),
          { maxConcurrent: 1 }
        )
        // Resolves the executor's route first, so that the hostile item is started from JavaScript.
        yield* batch.run(["warm"], opts())
        const hostile = {
          request: {
            get prompt(): string {
              throw new Error("boom")
            }
          }
        } as unknown as Batch.Item
        const result = yield* batch.run([hostile, "ok"], opts())
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["error", "success"]
        )
        // The field's InvalidRequest, what it threw as its cause (was "unexpected defect: Error: boom").
        const error = result.results[0]!.error
        assert.deepStrictEqual(error?._tag === "ModelError" && [error.reason, error.field, error.message], [
          "InvalidRequest",
          "items[0].request.prompt",
          "invalid items[0].request.prompt: reading it threw: boom"
        ])
        assert.strictEqual(error?._tag === "ModelError" && (error.cause as Error).message, "boom")
        const after = yield* batch.run(["again"], opts()).pipe(Effect.timeout("1 second"))
        assert.strictEqual(after.results[0]!.status, "success")
      })
    )

    it.effect(`an item's wait for a permit counts from when its place opened, as on workers (${kind})`, () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
        const a = yield* Effect.forkChild(batch.run(["a0", "a1", "a2"], { domain: "d-a" }))
        yield* TestClock.adjust("1 millis")
        const b = yield* Effect.forkChild(batch.run(["b0", "b1", "b2"], opts({ domain: "d-a" })))
        yield* TestClock.adjust("5 seconds")
        yield* Fiber.join(a)
        const rb = yield* Fiber.join(b)
        assert.strictEqual(rb.stats.queueWait.min, 999)
        assert.strictEqual(rb.stats.queueWait.max, 999)
      })
    )
  }

  it.effect("a cancel raised from inside an item's start stops that item too and gives its permit back", () =>
    Effect.gen(function* () {
      const cancel = Deferred.makeUnsafe<void>()
      const calls: Array<string> = []
      const provider = custom("p", (request) => {
        const prompt = request.prompt ?? ""
        calls.push(prompt)
        // The cancel happens synchronously, while the batch is starting this item from
        // another item's end.
        if (prompt === "trigger") Deferred.doneUnsafe(cancel, Exit.void)
        return Effect.as(Effect.sleep(prompt === "slow5" ? "5 seconds" : "1 second"), response("p", prompt))
      })
      const batch = yield* customOrchestra(provider, { maxConcurrent: 2 })
      const a = yield* Effect.forkChild(
        batch.run(["slow", "slow5", "trigger", "slow", "slow"], { concurrency: 2, cancel: Deferred.await(cancel) })
      )
      yield* TestClock.adjust("10 seconds")
      const ra = yield* Fiber.join(a)
      assert.isTrue(ra.cancelled)
      assert.deepStrictEqual(calls, ["slow", "slow5", "trigger"])
      // Both permits are free again: four one-second items on two permits take two seconds.
      const c = yield* Effect.forkChild(batch.run(["c0", "c1", "c2", "c3"]))
      yield* TestClock.adjust("20 seconds")
      const rc = yield* Fiber.join(c)
      assert.strictEqual(rc.elapsedMs, 2000)
      assert.strictEqual(rc.stats.concurrencyPeak, 2)
    })
  )
})

describe("Batch cancellation from a progress callback (items that answer at once)", () => {
  // Found in review: a `cancel` completed from `onProgress` was seen only once the pool had
  // started up to 1,024 more items (it starts them in a loop from JavaScript, and the
  // cancellation reached it only when that loop yielded).
  const instant = custom("p", (request) => Effect.succeed(response("p", request.prompt ?? "")))
  for (const kind of ["onProgress", "onEvent"] as const) {
    it.effect(`no item starts after the cancel; every item has one outcome (${kind})`, () =>
      Effect.gen(function* () {
        const batch = yield* customOrchestra(instant, { maxConcurrent: 4 })
        // Resolves the executor's route first, so that the items are started from JavaScript.
        yield* batch.run(["warm", "up"])
        const stop = yield* Deferred.make<void>()
        let startedAfter = 0
        let started = 0
        const on = (event: Batch.ProgressEvent): void => {
          if (event._tag === "Started") {
            started++
            if (Deferred.isDoneUnsafe(stop)) startedAfter++
          }
          if (event._tag === "Succeeded" && event.done === 10) Deferred.doneUnsafe(stop, Exit.void)
        }
        const items = Array.from({ length: 3000 }, (_, i) => `q${i}`)
        const result = yield* batch.run(items, {
          cancel: Deferred.await(stop),
          ...(kind === "onProgress" ? { onProgress: on } : { onEvent: (e) => Effect.sync(() => on(e)) })
        })
        assert.isTrue(result.cancelled)
        assert.strictEqual(startedAfter, 0, "no item started after the cancel")
        assert.strictEqual(result.results.length, items.length)
        assert.isTrue(result.results.every((r, i) => r.index === i))
        assert.isTrue(result.results.every((r) => r.status === "success" || r.status === "cancelled"))
        assert.strictEqual(result.notRun.length, items.length - started, "the items that never started")
        assert.isTrue(result.notRun.every((i) => !result.results[i]!.ran))
        assert.isAtMost(started, 10 + 4, "at most the concurrency past the tenth answer")
        const after = yield* batch.run(["again", "and again"]).pipe(Effect.timeout("1 second"))
        assert.deepStrictEqual(
          after.results.map((r) => r.status),
          ["success", "success"],
          "every permit was given back"
        )
      })
    )
  }
})

describe("Batch stats: hedges", () => {
  it.effect("one item: its hedge counted, won", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra(
        {
          a: { script: [Outcome.succeed("a", { latency: "3 seconds" })] },
          b: { script: [Outcome.succeed("b", { latency: "500 millis" })] }
        },
        {
          domains: [
            { name: "main", provider: "a", fallback: ["backup"], hedgeAfter: "1 second", retry: noRetry },
            { name: "backup", provider: "b", retry: noRetry }
          ]
        }
      )
      const fiber = yield* Effect.forkChild(batch.run(["0"], { domain: "main" }))
      for (let i = 0; i < 20; i++) yield* TestClock.adjust("250 millis")
      const result = yield* Fiber.join(fiber)
      assert.strictEqual(result.results[0]!.answer?.response.text, "b")
      assert.deepStrictEqual([result.stats.hedges, result.stats.fallbacks], [{ started: 1, won: 1, lost: 0 }, 0])
    })
  )

  // onEvent runs the items on worker fibers, without callbacks they start from JavaScript: same counts.
  for (const via of ["silent", "onEvent"] as const) {
    it.effect(
      `${via}: count backups started on the hedge delay (not fallbacks after a failure), won or lost, of failed items too`,
      () =>
        Effect.gen(function* () {
          const slowly = (text: string) => Outcome.succeed(text, { latency: "3 seconds" })
          const { batch, stats } = yield* makeOrchestra(
            {
              a: {
                script: [
                  slowly("a0"),
                  Outcome.fail("Unavailable"),
                  slowly("a2"),
                  Outcome.fail("Unavailable", { latency: "3 seconds" })
                ]
              },
              b: {
                script: [
                  Outcome.succeed("b0", { latency: "500 millis" }),
                  Outcome.succeed("b1"),
                  Outcome.fail("Unavailable", { latency: "200 millis" }),
                  Outcome.fail("Unavailable", { latency: "500 millis" })
                ]
              },
              c: { script: [Outcome.succeed("c2", { latency: "100 millis" }), Outcome.fail("Unavailable")] }
            },
            {
              domains: [
                { name: "main", provider: "a", fallback: ["backup", "third"], hedgeAfter: "1 second", retry: noRetry },
                { name: "backup", provider: "b", retry: noRetry },
                { name: "third", provider: "c", retry: noRetry }
              ]
            }
          )
          const fiber = yield* Effect.forkChild(
            batch.run(["0", "1", "2", "3"], {
              domain: "main",
              concurrency: 1,
              ...(via === "onEvent" ? { onEvent: () => Effect.void } : {})
            })
          )
          for (let i = 0; i < 40; i++) yield* TestClock.adjust("250 millis")
          const result = yield* Fiber.join(fiber)
          assert.deepStrictEqual(
            result.results.map((r) => r.answer?.response.text ?? r.error?._tag),
            ["b0", "b1", "c2", "FallbackExhaustedError"]
          )
          // 0: the hedge on backup won. 1: backup took over from a failure, a fallback. 2: the hedge on backup
          // failed and third took over from it (a fallback), answering: the hedge lost. 3: the same, all failing.
          assert.deepStrictEqual(result.stats.hedges, { started: 3, won: 1, lost: 2 })
          assert.strictEqual(result.stats.fallbacks, 3)
          // As the pipeline counts them.
          const pipeline = yield* stats.snapshot()
          assert.deepStrictEqual(
            [pipeline.hedges.won, pipeline.hedges.lost, pipeline.fallbacks],
            [result.stats.hedges.won, result.stats.hedges.lost, result.stats.fallbacks]
          )
        })
    )
  }
})

describe("Batch stats: fallbacks", () => {
  for (const via of ["silent", "onEvent"] as const) {
    it.effect(
      `${via}: count the hand-overs of items that then failed otherwise than exhausted, as the pipeline does`,
      () =>
        Effect.gen(function* () {
          const { batch, stats } = yield* makeOrchestra(
            {
              a: { script: [Outcome.fail("Unavailable"), Outcome.fail("Unavailable")] },
              b: { script: [Outcome.hang(), Outcome.fail("ContentFilter")] }
            },
            {
              domains: [
                { name: "main", provider: "a", fallback: ["backup"], totalTimeout: "2 seconds", retry: noRetry },
                { name: "backup", provider: "b", retry: noRetry }
              ]
            }
          )
          const fiber = yield* Effect.forkChild(
            batch.run(["0", "1"], {
              domain: "main",
              concurrency: 1,
              ...(via === "onEvent" ? { onEvent: () => Effect.void } : {})
            })
          )
          for (let i = 0; i < 20; i++) yield* TestClock.adjust("250 millis")
          const result = yield* Fiber.join(fiber)
          // 0: backup took over, then the total deadline passed. 1: backup took over, then failed with what falls back nowhere.
          assert.deepStrictEqual(
            result.results.map((r) => r.error?._tag),
            ["TimeoutError", "ModelError"]
          )
          assert.strictEqual(result.stats.fallbacks, 2)
          assert.strictEqual((yield* stats.snapshot()).fallbacks, 2, "the pipeline counted both hand-overs")
        })
    )
  }
})

describe("Batch cancellation, items answering at once", () => {
  // The pool starting items from JavaScript yields every 1,024 items: a cancel woken by a queue filled from
  // onProgress (not only a Deferred) runs then, and the batch stops.
  it.effect("a cancel filled from onProgress through a Queue stops the batch within a few thousand items", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const stop = yield* Queue.unbounded<void>()
      const items = Array.from({ length: 20_000 }, (_, i) => `q${i}`)
      const result = yield* batch.run(items, {
        domain: "d-a",
        cancel: Queue.take(stop),
        onProgress: (event) => {
          if (event._tag === "Succeeded" && event.done === 10) Queue.offerUnsafe(stop, undefined)
        }
      })
      assert.isTrue(result.cancelled)
      assert.isAbove(result.notRun.length, 20_000 - 5_000)
    })
  )
})
