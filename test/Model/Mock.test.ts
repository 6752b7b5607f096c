import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import type { AiError, ModelError } from "../../src/AiError.js"
import type { OptionError } from "../../src/Input.js"
import { ModelProvider, type StreamPart } from "../../src/Model.js"
import * as Mock from "../../src/Model/Mock.js"

const textOf = (parts: ReadonlyArray<StreamPart>): string =>
  parts.flatMap((part) => (part._tag === "TextDelta" ? [part.text] : [])).join("")

/** Parts of a stream with the (test) clock time each arrived at. */
const timedParts = (stream: Stream.Stream<StreamPart, unknown>) =>
  Effect.gen(function* () {
    const seen: Array<{ readonly at: number; readonly part: StreamPart }> = []
    const exit = yield* Effect.exit(
      Stream.runForEach(stream, (part) => Effect.map(Clock.currentTimeMillis, (at) => void seen.push({ at, part })))
    )
    return { seen, exit }
  })

const configError = (options: Mock.Options) =>
  Effect.map(Effect.flip(Mock.make(options)), (error: OptionError) => error)

describe("Mock", () => {
  it.effect("answers by echoing the last message, with usage, provider and model; counts and logs the call", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({ name: "echo" })
      const answer = yield* provider.generate({ system: "be brief", prompt: "hello there" })
      assert.strictEqual(answer.text, "mock answer to: hello there")
      assert.strictEqual(answer.finishReason, "stop")
      assert.strictEqual(answer.provider, "echo")
      assert.strictEqual(answer.model, "mock-model")
      assert.deepStrictEqual(answer.usage, { inputTokens: 5, outputTokens: 7, totalTokens: 12 })
      assert.strictEqual((yield* provider.generate({ prompt: "x", model: "other" })).model, "other")
      const counts = yield* control.counts
      assert.deepStrictEqual(counts, {
        calls: 2,
        generate: 2,
        stream: 0,
        embed: 0,
        succeeded: 2,
        failed: 0,
        interrupted: 0,
        inFlight: 0,
        peak: 1
      })
      const log = yield* control.requests
      assert.deepStrictEqual(
        log.map((entry) => [entry.index, entry.kind]),
        [
          [0, "generate"],
          [1, "generate"]
        ]
      )
      assert.deepStrictEqual(log[0]?.request, { system: "be brief", prompt: "hello there" })
    })
  )

  it.effect("a script gives outcomes in call order: text, failures with status/retryAfter/message, then defaults", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({
        respond: () => "default",
        script: [
          Mock.Outcome.fail("RateLimited", { retryAfter: "2 seconds" }),
          Mock.Outcome.fail("Overloaded", { status: 529, message: "try later" }),
          Mock.Outcome.succeed("scripted")
        ]
      })
      const first = yield* Effect.flip(provider.generate({ prompt: "a" }))
      assert.strictEqual(first._tag, "ModelError")
      const limited = first as ModelError
      assert.strictEqual(limited.reason, "RateLimited")
      assert.strictEqual(limited.status, 429)
      assert.deepStrictEqual(limited.retryAfter, Duration.seconds(2))
      assert.strictEqual(limited.provider, "mock")
      const second = (yield* Effect.flip(provider.generate({ prompt: "b" }))) as ModelError
      assert.deepStrictEqual([second.reason, second.status, second.message], ["Overloaded", 529, "try later"])
      assert.strictEqual((yield* provider.generate({ prompt: "c" })).text, "scripted")
      assert.strictEqual((yield* provider.generate({ prompt: "d" })).text, "default")
      const counts = yield* control.counts
      assert.deepStrictEqual([counts.succeeded, counts.failed], [2, 2])
    })
  )

  it.effect("a refused request fails InvalidRequest without taking a scripted outcome", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({ script: [Mock.Outcome.succeed("first valid call")] })
      const refused = (yield* Effect.flip(provider.generate({ prompt: "   " }))) as ModelError
      assert.deepStrictEqual([refused.reason, refused.field], ["InvalidRequest", "prompt"])
      assert.strictEqual((yield* provider.generate({ prompt: "ok" })).text, "first valid call")
      assert.deepStrictEqual([yield* control.calls, (yield* control.counts).failed], [2, 1])
    })
  )

  it.effect("latency passes on the clock: the answer arrives at 1 s, not before", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({ latency: "1 second" })
      const fiber = yield* Effect.forkChild(provider.generate({ prompt: "x" }))
      yield* TestClock.adjust("999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      assert.strictEqual(yield* control.inFlight, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* Fiber.join(fiber)).text, "mock answer to: x")
      assert.strictEqual(yield* control.inFlight, 0)
    })
  )

  it.effect("a hang never answers; interrupting it counts as interrupted, not completed", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({ script: [Mock.Outcome.hang()] })
      const fiber = yield* Effect.forkChild(provider.generate({ prompt: "x" }))
      yield* TestClock.adjust("1 hour")
      assert.isUndefined(fiber.pollUnsafe())
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual([yield* control.interrupted, yield* control.completed, yield* control.inFlight], [1, 0, 0])
    })
  )

  it.effect("peak counts calls running at once; maxConcurrency is declared on the service", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({ latency: 100, maxConcurrency: 2 })
      assert.strictEqual(provider.maxConcurrency, 2)
      assert.isUndefined((yield* Mock.make()).provider.maxConcurrency)
      const fiber = yield* Effect.forkChild(
        Effect.forEach([1, 2, 3, 4, 5], (i) => provider.generate({ prompt: `${i}` }), { concurrency: 3 })
      )
      yield* TestClock.adjust(500)
      assert.strictEqual((yield* Fiber.join(fiber)).length, 5)
      assert.strictEqual(yield* control.peak, 3)
    })
  )

  describe("streams", () => {
    it.effect("chunks arrive paced (first after latency, then chunkDelay apart), then one Finish", () =>
      Effect.gen(function* () {
        const { provider } = yield* Mock.make({ latency: 100, chunkDelay: 50, respond: () => "one two three" })
        const fiber = yield* Effect.forkChild(timedParts(provider.stream({ prompt: "x" })))
        yield* TestClock.adjust("1 second")
        const { seen, exit } = yield* Fiber.join(fiber)
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(
          seen.map(({ at, part }) => [at, part._tag === "TextDelta" ? part.text : part._tag]),
          [
            [100, "one "],
            [150, "two "],
            [200, "three"],
            [200, "Finish"]
          ]
        )
        const finish = seen[3]?.part
        assert.deepStrictEqual(finish, {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 1, outputTokens: 4, totalTokens: 5 },
          provider: "mock",
          model: "mock-model"
        })
      })
    )

    it.effect("explicit chunks with their own pacing; generate answers their concatenation", () =>
      Effect.gen(function* () {
        const outcome = Mock.Outcome.succeed(undefined, { chunks: ["Hel", "lo ", "🌍"], latency: 10, chunkDelay: 5 })
        const { provider } = yield* Mock.make({ script: [outcome, outcome] })
        const fiber = yield* Effect.forkChild(timedParts(provider.stream({ prompt: "x" })))
        yield* TestClock.adjust(100)
        const { seen } = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          seen.map(({ at }) => at),
          [10, 15, 20, 20]
        )
        assert.strictEqual(textOf(seen.map(({ part }) => part)), "Hello 🌍")
        const answer = yield* Effect.forkChild(provider.generate({ prompt: "x" }))
        yield* TestClock.adjust(10)
        assert.strictEqual((yield* Fiber.join(answer)).text, "Hello 🌍")
      })
    )

    it.effect("a drop after n chunks delivers them, then fails with the scripted reason and message", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({
          respond: () => "a b c d",
          chunkDelay: 10,
          script: [Mock.Outcome.fail("Transport", { afterChunks: 2, message: "connection reset" })]
        })
        const fiber = yield* Effect.forkChild(timedParts(provider.stream({ prompt: "x" })))
        yield* TestClock.adjust(100)
        const { seen, exit } = yield* Fiber.join(fiber)
        assert.strictEqual(textOf(seen.map(({ part }) => part)), "a b ")
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as { readonly error: ModelError }).error : undefined
        assert.deepStrictEqual([error?.reason, error?.message], ["Transport", "connection reset"])
        assert.deepStrictEqual([(yield* control.counts).failed, yield* control.inFlight], [1, 0])
      })
    )

    it.effect("a stall after n chunks delivers them and then nothing; leaving it counts as interrupted", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({
          respond: () => "a b c",
          script: [Mock.Outcome.hang({ afterChunks: 1 })]
        })
        const received: Array<StreamPart> = []
        const fiber = yield* Effect.forkChild(
          Stream.runForEach(provider.stream({ prompt: "x" }), (part) => Effect.sync(() => void received.push(part)))
        )
        yield* TestClock.adjust("1 hour")
        assert.strictEqual(textOf(received), "a ")
        assert.isUndefined(fiber.pollUnsafe())
        assert.strictEqual(yield* control.inFlight, 1)
        yield* Fiber.interrupt(fiber)
        assert.deepStrictEqual([yield* control.interrupted, yield* control.inFlight], [1, 0])
      })
    )

    it.effect("a consumer that stops early ends the call as interrupted; one that reads to the end, as succeeded", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({ respond: () => "a b c" })
        const first = yield* Stream.runCollect(Stream.take(provider.stream({ prompt: "x" }), 1))
        assert.strictEqual(first.length, 1)
        assert.deepStrictEqual([yield* control.interrupted, yield* control.inFlight], [1, 0])
        const all = yield* Stream.runCollect(
          Stream.takeUntil(provider.stream({ prompt: "x" }), (part) => part._tag === "Finish")
        )
        assert.strictEqual(all.length, 4)
        assert.deepStrictEqual([(yield* control.counts).succeeded, yield* control.inFlight], [1, 0])
      })
    )

    it.effect("tool calls come before the Finish; the finish reason is tool_calls", () =>
      Effect.gen(function* () {
        const call = { id: "call_1", name: "lookup", arguments: '{"q":"x"}' }
        const outcome = Mock.Outcome.succeed("", { toolCalls: [call] })
        const { provider } = yield* Mock.make({ script: [outcome, outcome] })
        const parts = yield* Stream.runCollect(provider.stream({ prompt: "x" }))
        assert.deepStrictEqual(
          parts.map((part) => part._tag),
          ["ToolCall", "Finish"]
        )
        assert.deepStrictEqual(parts[0], { _tag: "ToolCall", call })
        const answer = yield* provider.generate({ prompt: "x" })
        assert.deepStrictEqual([answer.toolCalls, answer.finishReason], [[call], "tool_calls"])
      })
    )
  })

  describe("random mode", () => {
    const outcomesOf = (seed: number, n: number) =>
      Effect.gen(function* () {
        const { provider } = yield* Mock.make({
          seed,
          random: { success: 0.6, hang: 0.1, failures: { Overloaded: 3, RateLimited: 1 } }
        })
        return yield* Effect.forEach(
          Array.from({ length: n }, (_, i) => i),
          (i) =>
            provider.generate({ prompt: `${i}` }).pipe(
              Effect.timeoutOption("1 second"),
              Effect.map((answer) => (answer._tag === "None" ? "Hang" : "Succeed")),
              Effect.catch((error) => Effect.succeed(error._tag === "ModelError" ? error.reason : error._tag)),
              Effect.forkChild
            )
        ).pipe(
          Effect.tap(() => TestClock.adjust("1 second")),
          Effect.flatMap(Fiber.joinAll)
        )
      })

    it.effect("is deterministic for a seed, different across seeds, and follows the probabilities", () =>
      Effect.gen(function* () {
        const a = yield* outcomesOf(7, 2_000)
        const b = yield* outcomesOf(7, 2_000)
        const c = yield* outcomesOf(8, 2_000)
        assert.deepStrictEqual(a, b)
        assert.notDeepEqual(a, c)
        // the ends of the range are seeds of their own
        assert.notDeepEqual(yield* outcomesOf(2 ** 32 - 1, 200), yield* outcomesOf(0, 200))
        const share = (what: string) => a.filter((o) => o === what).length / a.length
        assert.approximately(share("Succeed"), 0.6, 0.04)
        assert.approximately(share("Hang"), 0.1, 0.02)
        assert.approximately(share("Overloaded"), 0.225, 0.03)
        assert.approximately(share("RateLimited"), 0.075, 0.02)
      })
    )

    it.effect("a uniform latency spreads calls over [min, max]", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({ seed: 3, latency: { uniform: [100, 300] } })
        const fiber = yield* Effect.forkChild(
          Effect.forEach(
            Array.from({ length: 50 }, (_, i) => `${i}`),
            (prompt) => provider.generate({ prompt }),
            {
              concurrency: "unbounded"
            }
          )
        )
        yield* TestClock.adjust(99)
        assert.strictEqual(yield* control.completed, 0)
        yield* TestClock.adjust(101)
        const half = yield* control.completed
        assert.isAbove(half, 10)
        assert.isBelow(half, 40)
        yield* TestClock.adjust(100)
        assert.strictEqual((yield* Fiber.join(fiber)).length, 50)
      })
    )
  })

  describe("request log", () => {
    it.effect("keeps the last requestLogSize requests, oldest first; counts stay whole", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({ requestLogSize: 3 })
        for (let i = 0; i < 5; i++) yield* provider.generate({ prompt: `p${i}` })
        yield* provider.embed({ texts: ["e"] })
        const log = yield* control.requests
        assert.deepStrictEqual(
          log.map((entry) => [entry.index, entry.kind]),
          [
            [3, "generate"],
            [4, "generate"],
            [5, "embed"]
          ]
        )
        assert.deepStrictEqual([yield* control.calls, (yield* control.counts).embed], [6, 1])
      })
    )

    it.effect("keeps 1,000 by default, none with 0", () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make()
        for (let i = 0; i < 1_005; i++) yield* provider.generate({ prompt: "p" })
        const log = yield* control.requests
        assert.deepStrictEqual([log.length, log[0]?.index, log[999]?.index], [1_000, 5, 1_004])
        const silent = yield* Mock.make({ requestLogSize: 0 })
        yield* silent.provider.generate({ prompt: "p" })
        assert.deepStrictEqual([(yield* silent.control.requests).length, yield* silent.control.calls], [0, 1])
      })
    )
  })

  it.effect("embed: deterministic unit vectors of the given dimensions, in input order", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({ dimensions: 16 })
      const first = yield* provider.embed({ texts: ["alpha", "beta", "alpha", "g"] })
      const again = yield* provider.embed({ texts: ["beta"] })
      assert.strictEqual(first.vectors.length, 4)
      for (const vector of first.vectors) {
        assert.strictEqual(vector.length, 16)
        assert.approximately(Math.hypot(...vector), 1, 1e-9)
      }
      assert.deepStrictEqual(first.vectors[0], first.vectors[2])
      assert.deepStrictEqual(first.vectors[1], again.vectors[0])
      assert.notDeepEqual(first.vectors[0], first.vectors[1])
      assert.deepStrictEqual(first.usage, { inputTokens: 6, outputTokens: 0, totalTokens: 6 })
      // As every real provider: an empty text has no embedding.
      const empty = (yield* Effect.flip(provider.embed({ texts: ["alpha", ""] }))) as ModelError
      assert.deepStrictEqual([empty.reason, empty.field], ["InvalidRequest", "texts[1]"])
      const error = (yield* Effect.flip(
        (yield* Mock.make({ script: [Mock.Outcome.fail("Unavailable")] })).provider.embed({ texts: ["x"] })
      )) as ModelError
      assert.deepStrictEqual([error.reason, error.status], ["Unavailable", 503])
    })
  )

  it("embedText: distinct texts shorter than the dimensions get distinct vectors, every dimension used", () => {
    // A one-character text used to fill one dimension of eight with its sign: "a" and "b" were both
    // [-1, 0, 0, 0, 0, 0, 0, 0], so a similarity search over the mock ranked them equal.
    const letters = "abcdefghijklmnopqrstuvwxyz".split("")
    const keys = new Set(letters.map((letter) => Mock.embedText(letter, 8).join(",")))
    assert.strictEqual(keys.size, letters.length)
    for (const text of ["a", "hi", "alpha"]) {
      const vector = Mock.embedText(text, 8)
      assert.approximately(Math.hypot(...vector), 1, 1e-9)
      assert.isTrue(
        vector.every((x) => x !== 0),
        `${text}: ${vector.join(", ")}`
      )
      assert.deepStrictEqual(Mock.embedText(text, 8), vector)
    }
  })

  describe("options are checked when the mock is built", () => {
    it.effect("bad numbers and shapes are an OptionError naming the field", () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [Mock.Options, string]> = [
          [{ latency: Number.NaN }, "latency"],
          [{ latency: -5 }, "latency"],
          [{ chunkDelay: "soon" as Duration.Input }, "chunkDelay"],
          [{ latency: { uniform: [300, 100] } }, "latency.uniform"],
          [{ latency: { uniform: [100, Number.NaN] } }, "latency.uniform[1]"],
          [{ random: { success: 1.5 } }, "random.success"],
          [{ random: { success: Number.NaN } }, "random.success"],
          [{ random: { success: 0.5, hang: -0.1 } }, "random.hang"],
          [{ random: { success: 0.8, hang: 0.3 } }, "random.hang"],
          [{ random: { success: 0.5, failures: { Overloaded: -1 } } }, "random.failures.Overloaded"],
          [{ random: { success: 0.5, failures: { Overloaded: 0 } } }, "random.failures"],
          [
            { script: [Mock.Outcome.succeed(), Mock.Outcome.fail("Overloaded", { afterChunks: -1 })] },
            "script[1].afterChunks"
          ],
          [{ script: [Mock.Outcome.hang({ afterChunks: 1.5 })] }, "script[0].afterChunks"],
          [{ script: [Mock.Outcome.fail("Overloaded", { retryAfter: -1 })] }, "script[0].retryAfter"],
          [{ script: [Mock.Outcome.fail("Overloaded", { status: 42 })] }, "script[0].status"],
          [{ script: [Mock.Outcome.succeed("x", { latency: Number.NaN })] }, "script[0].latency"],
          [{ dimensions: 0 }, "dimensions"],
          [{ maxConcurrency: 2.5 }, "maxConcurrency"],
          [{ requestLogSize: -1 }, "requestLogSize"],
          [{ seed: 0.5 }, "seed"],
          [{ seed: Number.NaN }, "seed"],
          // The draws read 32 bits of the seed: 2^32 + 3 would be 3, -1 would be 2^32-1.
          [{ seed: 2 ** 32 }, "seed"],
          [{ seed: 2 ** 32 + 3 }, "seed"],
          [{ seed: -1 }, "seed"],
          [{ name: "" }, "name"],
          // null is a wrong value, not the default.
          [{ seed: null as never }, "seed"],
          [{ model: null as never }, "model"],
          [{ script: null as never }, "script"]
        ]
        for (const [options, path] of cases) {
          const error = yield* configError(options)
          assert.strictEqual(error._tag, "OptionError")
          assert.strictEqual(error.path, path, JSON.stringify(options))
        }
      })
    )

    it.effect(
      "a wrong shape (null, a string where an array goes) is an OptionError naming the field, not a TypeError",
      () =>
        Effect.gen(function* () {
          const cases: ReadonlyArray<readonly [unknown, string]> = [
            [null, "options"],
            [{ random: null }, "random"],
            [{ random: { success: 0.5, failures: null } }, "random.failures"],
            [{ random: { success: 0.5, failures: "Overloaded" } }, "random.failures"],
            [{ script: [{ _tag: "Succeed", chunks: "abc" }] }, "script[0].chunks"],
            [{ script: [{ _tag: "Succeed", toolCalls: "abc" }] }, "script[0].toolCalls"],
            [{ script: [{ _tag: "Succeed", toolCalls: null }] }, "script[0].toolCalls"],
            [{ script: [{ _tag: "Fail", reason: "Overloaded", message: 42 }] }, "script[0].message"],
            // A tag that is a key of every object is no outcome either.
            [{ script: [{ _tag: "toString" }] }, "script[0]._tag"],
            [{ script: [{ _tag: "constructor" }] }, "script[0]._tag"],
            [{ random: { success: 0.5, failures: { toString: 1 } } }, "random.failures.toString"]
          ]
          for (const [options, path] of cases) {
            const error = yield* Effect.suspend(() => configError(options as Mock.Options))
            assert.strictEqual(error._tag, "OptionError")
            assert.strictEqual(error.path, path, JSON.stringify(options))
          }
        })
    )

    it.effect("unknown options and reasons are refused, not ignored", () =>
      Effect.gen(function* () {
        const typo = yield* configError({ latancy: 100 } as Mock.Options)
        assert.strictEqual(typo.path, "latancy")
        const oldShape = yield* configError({ random: { seed: 1, succeed: 1 } } as unknown as Mock.Options)
        assert.strictEqual(oldShape.path, "random.seed")
        const reason = yield* configError({ script: [Mock.Outcome.fail("Nope" as "Overloaded")] })
        assert.strictEqual(reason.path, "script[0].reason")
      })
    )

    it.effect(
      "a misspelt key names the option it is likely a typo of, quoted and bounded as every other check writes a key: it listed every known key, the key raw",
      () =>
        Effect.gen(function* () {
          const typo = yield* configError({ latancy: 100 } as Mock.Options)
          assert.deepStrictEqual(
            [typo.path, typo.message],
            ["latancy", "invalid latancy: unknown option (did you mean latency?)"]
          )
          const nested = yield* configError({ random: { sucess: 0.5 } } as unknown as Mock.Options)
          assert.deepStrictEqual(
            [nested.path, nested.message],
            ["random.sucess", "invalid random.sucess: unknown option (did you mean success?)"]
          )
          // A key with a line break forged a line of a log; one of 100,000 characters went whole in.
          const forged = yield* configError({ "laten\ncy": 1 } as unknown as Mock.Options)
          assert.strictEqual(forged.path, '"laten\\ncy"')
          const long = yield* configError({ ["k".repeat(100_000)]: 1 } as unknown as Mock.Options)
          assert.isBelow(long.path.length, 200)
          assert.include(long.path, "(100,000 characters)")
        })
    )

    it.effect(
      "an unknown reason or finish reason is shown bounded, as every other check shows a value: a BigInt threw out of make, a long string went whole in",
      () =>
        Effect.gen(function* () {
          const cases: ReadonlyArray<readonly [unknown, string]> = [
            [{ _tag: "Fail", reason: 10n }, "script[0].reason"],
            [{ _tag: "Fail", reason: "r".repeat(100_000) }, "script[0].reason"],
            [{ _tag: "Succeed", finishReason: 10n }, "script[0].finishReason"],
            [{ _tag: "Succeed", finishReason: "f".repeat(100_000) }, "script[0].finishReason"]
          ]
          for (const [outcome, path] of cases) {
            const exit = yield* Effect.exit(Mock.make({ script: [outcome] } as unknown as Mock.Options))
            assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit), path)
            const error = yield* configError({ script: [outcome] } as unknown as Mock.Options)
            assert.strictEqual(error.path, path)
            assert.isBelow(error.message.length, 300, error.message.slice(0, 400))
          }
        })
    )

    it.effect("a respond that throws or answers no string fails the call with an InvalidRequest naming it", () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [Mock.Options["respond"], string]> = [
          [
            () => {
              throw new Error("respond bug")
            },
            "invalid respond: the respond option threw: respond bug"
          ],
          [() => 42 as unknown as string, "invalid respond: the respond option answered 42, not a string"],
          [() => undefined as unknown as string, "invalid respond: the respond option answered undefined, not a string"]
        ]
        for (const [respond, message] of cases) {
          const { provider, control } = yield* Mock.make({ name: "scripted", respond })
          const calls: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
            provider.generate({ prompt: "x" }),
            Stream.runCollect(provider.stream({ prompt: "x" }))
          ]
          for (const call of calls) {
            const exit = yield* Effect.exit(call)
            assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit), message)
            const error = yield* Effect.flip(call)
            assert.deepStrictEqual(
              [error._tag, error._tag === "ModelError" ? [error.reason, error.field, error.provider] : []],
              ["ModelError", ["InvalidRequest", "respond", "scripted"]]
            )
            assert.strictEqual(error.message, message)
          }
          assert.strictEqual(yield* control.inFlight, 0)
        }
      })
    )

    it.effect("respond runs once per call: a stream's Finish counts the text it streamed", () =>
      Effect.gen(function* () {
        let calls = 0
        const { provider } = yield* Mock.make({
          respond: () => (++calls === 1 ? "one two" : "a much longer answer here")
        })
        const parts = yield* Stream.runCollect(provider.stream({ prompt: "x" }))
        assert.strictEqual(calls, 1)
        assert.strictEqual(textOf(parts), "one two")
        const finish = parts.find((part) => part._tag === "Finish")
        assert.strictEqual(finish?._tag === "Finish" ? finish.usage.outputTokens : undefined, 2)
      })
    )

    it.effect("a scripted Fail or Hang with no chunks does not run respond: a stream fails as generate does", () =>
      Effect.gen(function* () {
        let calls = 0
        const respond = () => {
          calls++
          throw new Error("respond bug")
        }
        const { provider } = yield* Mock.make({
          respond,
          script: [Mock.Outcome.fail("Overloaded"), Mock.Outcome.fail("Overloaded"), Mock.Outcome.hang()]
        })
        const generated = (yield* Effect.flip(provider.generate({ prompt: "x" }))) as ModelError
        const streamed = (yield* Effect.flip(Stream.runCollect(provider.stream({ prompt: "x" })))) as ModelError
        assert.deepStrictEqual([generated.reason, streamed.reason], ["Overloaded", "Overloaded"])
        const hung = yield* Stream.runCollect(provider.stream({ prompt: "x" })).pipe(Effect.forkChild)
        yield* TestClock.adjust("1 hour")
        assert.isUndefined(hung.pollUnsafe())
        yield* Fiber.interrupt(hung)
        assert.strictEqual(calls, 0)
      })
    )

    it.effect("the layer fails with the OptionError; a good one provides the provider and its control", () =>
      Effect.gen(function* () {
        const failed = yield* Effect.flip(Layer.build(Mock.layer({ latency: Number.NaN })))
        assert.strictEqual(failed.path, "latency")
        const context = yield* Layer.build(Mock.layer({ name: "layered" }))
        const answer = yield* Context.get(context, ModelProvider).generate({ prompt: "x" })
        assert.strictEqual(answer.provider, "layered")
        assert.strictEqual(yield* Context.get(context, Mock.MockControl).calls, 1)
      })
    )
  })
})

describe("Mock options are read once", () => {
  // A getter that answers a checked value first and another after: what runs is what was checked.
  const flipping = <A, B>(first: A, then: B) => {
    let reads = 0
    return () => (reads++ === 0 ? first : then)
  }

  it.effect("an outcome's chunks, the script, respond and the random mix: each field checked is the one used", () =>
    Effect.gen(function* () {
      const outcome = Object.defineProperty({ _tag: "Succeed" }, "chunks", {
        enumerable: true,
        get: flipping(["a", "b"], 5)
      }) as Mock.Outcome
      const scripted = yield* Mock.make({ script: [outcome] })
      assert.strictEqual((yield* scripted.provider.generate({ prompt: "x" })).text, "ab")

      const options = Object.defineProperty({}, "script", {
        enumerable: true,
        get: flipping([Mock.Outcome.succeed("checked")], "no array")
      }) as Mock.Options
      const fromScript = yield* Mock.make(options)
      assert.strictEqual((yield* fromScript.provider.generate({ prompt: "x" })).text, "checked")

      const respond = Object.defineProperty({}, "respond", {
        enumerable: true,
        get: flipping(() => "answered", "no function")
      }) as Mock.Options
      const responding = yield* Mock.make(respond)
      assert.strictEqual((yield* responding.provider.generate({ prompt: "x" })).text, "answered")

      const mix = Object.defineProperty({ success: 0, hang: 0 }, "failures", {
        enumerable: true,
        get: flipping({ RateLimited: 1 }, null)
      }) as Mock.RandomMix
      const random = yield* Mock.make({ random: mix })
      const failed = yield* Effect.flip(random.provider.generate({ prompt: "x" }))
      assert.strictEqual(failed._tag === "ModelError" ? failed.reason : failed._tag, "RateLimited")
    })
  )
})
