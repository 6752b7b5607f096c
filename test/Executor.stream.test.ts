import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Ref,
  Result,
  Scheduler,
  Scope,
  Stream
} from "effect"
import { TestClock } from "effect/testing"
import * as Tracer from "effect/Tracer"
import {
  type AiError,
  isRetryable,
  ModelError,
  ShuttingDownError,
  StreamInterruptedError,
  shouldFallback
} from "../src/AiError.js"
import type * as Input from "../src/Input.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import {
  ChunkDeadline,
  type GenerateRequest,
  ModelProvider,
  type Service,
  type StreamPart,
  usage
} from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import { Outcome } from "../src/Model/Mock.js"
import { decodeRetry } from "../src/Policy.js"
import { tokensOf } from "../src/executor/plan.js"
import * as Deadline from "../src/policy/deadline.js"
import * as Engine from "../src/policy/engine.js"
import { CurrentCut, type Cut, selfBounded, stopStreams } from "../src/policy/plan.js"
import * as Streams from "../src/policy/stream.js"
import { defaultInstruction, resumeRequest } from "../src/policy/stream-resume.js"
import { RateLimits } from "../src/RateLimit.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as StatsModule from "../src/Stats.js"
import { setup } from "./utils/executor.js"
import { captureLogs } from "./utils/logs.js"

const ask = { prompt: "tell me" }

const textOf = (parts: ReadonlyArray<StreamPart>) => parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")

const collect = (stream: Stream.Stream<StreamPart, AiError>) => Stream.runCollect(stream)

/** The stream's failure, its text deltas pushed to `seen` as they come. */
const failureAfterTexts = (stream: Stream.Stream<StreamPart, AiError>, seen: Array<string>) =>
  Effect.flip(
    Stream.runForEach(stream, (p) =>
      Effect.sync(() => {
        if (p._tag === "TextDelta") seen.push(p.text)
      })
    )
  )

/** Runs `use` with an executor over `provider`, closed afterwards. */
const withExecutorOver = <A, E>(
  provider: Service,
  use: (executor: Executor.Service) => Effect.Effect<A, E>
): Effect.Effect<A, E | Input.OptionError> =>
  Effect.scoped(
    Effect.flatMap(
      Layer.build(Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, provider)))),
      (context) => use(Context.get(context, Executor.Executor))
    )
  )

describe("Executor.stream", () => {
  it.effect(
    "reads the provider's stream under Model.ChunkDeadline: the longer of its first-chunk and idle deadlines",
    () =>
      Effect.gen(function* () {
        const seen: Array<number | undefined> = []
        const finish: StreamPart = {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
          provider: "p",
          model: "m"
        }
        const provider: Service = {
          name: "p",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          // What a provider's own idle timer reads to know whether the reader bounds the wait itself.
          stream: () =>
            Stream.unwrap(
              Effect.withFiber((fiber) => {
                seen.push(fiber.getRef(ChunkDeadline))
                return Effect.succeed(Stream.make(finish))
              })
            )
        }
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            yield* Stream.runDrain(executor.stream(ask, { firstChunkTimeout: "10 seconds", idleTimeout: "30 seconds" }))
            yield* Stream.runDrain(executor.stream(ask, { firstChunkTimeout: "40 seconds", idleTimeout: "30 seconds" }))
            yield* Stream.runDrain(executor.stream(ask, { firstChunkTimeout: "10 seconds", idleTimeout: "none" }))
          })
        )
        // Without an idle deadline the reader does not bound the wait: the provider keeps its own timer.
        assert.deepStrictEqual(seen, [30_000, 40_000, undefined])
      })
  )

  it.effect(
    "a provider stream that dies is that stream's ModelError, named as a call's is, with the defect as cause",
    () =>
      Effect.gen(function* () {
        const boom = new Error("boom")
        const provider: Service = {
          name: "p",
          defaultModel: "m",
          generate: () => Effect.die(boom),
          embed: () => Effect.die("unused"),
          stream: () => Stream.die(boom)
        }
        const [streamed, called] = yield* withExecutorOver(provider, (executor) =>
          Effect.all([Effect.flip(collect(executor.stream(ask))), Effect.flip(executor.execute(ask))])
        )
        assert.strictEqual(streamed._tag, "ModelError")
        assert.strictEqual(called._tag, "ModelError")
        if (streamed._tag === "ModelError" && called._tag === "ModelError") {
          assert.strictEqual(streamed.message, "the provider stream failed unexpectedly: Error: boom")
          assert.strictEqual(called.message, "the provider call failed unexpectedly: Error: boom")
          assert.strictEqual(streamed.cause, boom)
          assert.strictEqual(streamed.reason, called.reason)
        }
      })
  )

  it.effect("a stream ends at its provider's Finish: nothing after it is delivered or waited for", () =>
    Effect.gen(function* () {
      const finish: StreamPart = {
        _tag: "Finish",
        finishReason: "stop",
        usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
        provider: "p",
        model: "m"
      }
      let released = 0
      const scripts: ReadonlyArray<Stream.Stream<StreamPart, AiError>> = [
        // a second Finish and text after the first
        Stream.make({ _tag: "TextDelta", text: "a" }, finish, { _tag: "TextDelta", text: "b" }, finish),
        // an upstream that stays open after its Finish
        Stream.concat(Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text: "a" }, finish), Stream.never)
      ]
      let call = 0
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () => scripts[call++]!.pipe(Stream.ensuring(Effect.sync(() => released++)))
      }
      yield* withExecutorOver(provider, (executor) =>
        Effect.gen(function* () {
          for (let i = 0; i < scripts.length; i++) {
            const fiber = yield* Effect.forkChild(collect(executor.stream(ask, { idleTimeout: "5 seconds" })))
            yield* TestClock.adjust("1 minute")
            const parts = yield* Fiber.join(fiber)
            assert.deepStrictEqual(
              parts.map((p) => p._tag),
              ["TextDelta", "Finish"],
              `script ${i}`
            )
            assert.strictEqual(released, i + 1, "the upstream is closed when the stream ends")
          }
        })
      )
    })
  )

  it.effect("streams text deltas and one Finish, and counts the stream", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: () => "one two three", latency: 100, chunkDelay: 10 })
      const fiber = yield* Effect.forkChild(collect(executor.stream(ask)))
      yield* TestClock.adjust("1 second")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(textOf(parts), "one two three")
      assert.strictEqual(parts.filter((p) => p._tag === "Finish").length, 1)
      assert.strictEqual(parts[parts.length - 1]!._tag, "Finish")
      const stats = yield* executor.stats()
      assert.strictEqual(stats.successes, 1)
      assert.strictEqual(stats.timeToFirstToken.max, 100)
    })
  )

  it.effect("a first chunk that does not come in time is retried, then answers", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.hang(), Outcome.succeed("second try")]
      })
      const fiber = yield* Effect.forkChild(
        collect(executor.stream(ask, { firstChunkTimeout: "2 seconds", retry: { initialDelay: 500, jitter: 0 } }))
      )
      yield* TestClock.adjust("2 seconds")
      yield* TestClock.adjust("500 millis")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(textOf(parts), "second try")
      assert.strictEqual(yield* control.calls, 2)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.timeouts, 1)
      assert.strictEqual(stats.retries, 1)
    })
  )

  it.effect("a stall after the first chunk ends with an idle TimeoutError carrying the partial text", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.hang({ afterChunks: 2, text: "alpha beta gamma delta" })]
      })
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          Stream.runForEach(executor.stream(ask, { idleTimeout: "3 seconds", retry: true }), (p) =>
            Effect.sync(() => {
              if (p._tag === "TextDelta") seen.push(p.text)
            })
          )
        )
      )
      yield* TestClock.adjust("2999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "TimeoutError")
      if (error._tag === "TimeoutError") {
        assert.strictEqual(error.limit, "idle")
        assert.strictEqual(error.partialText, "alpha beta ")
      }
      assert.strictEqual(seen.join(""), "alpha beta ")
      yield* Effect.yieldNow
      assert.strictEqual(yield* control.calls, 1, "never restarted after text was delivered")
      assert.strictEqual(yield* control.interrupted, 1)
    })
  )

  it.effect("a drop after the first chunk is a StreamInterruptedError with the provider's own message (item 23)", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({
        script: [Outcome.fail("Overloaded", { afterChunks: 1, text: "partial answer", message: "Upstream overloaded" })]
      })
      const error = yield* Effect.flip(collect(executor.stream(ask, { retry: true })))
      assert.strictEqual(error._tag, "StreamInterruptedError")
      if (error._tag === "StreamInterruptedError") {
        assert.strictEqual(error.partialText, "partial ")
        assert.strictEqual(error.reason, "Overloaded")
        assert.include(error.message, "Upstream overloaded")
      }
    })
  )

  it.effect("before the first chunk a failure falls back to the next step", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Unavailable"), Outcome.succeed("from backup")] })
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const parts = yield* collect(executor.stream(ask, { steps: [{ provider: a }, { provider: b }] }))
      assert.strictEqual(textOf(parts), "from backup")
      const finish = parts.find((p) => p._tag === "Finish")
      assert.strictEqual(finish?._tag === "Finish" && finish.provider, "mock")
      assert.strictEqual((yield* executor.stats({ provider: "b" })).fallbacks, 1)
    })
  )

  it.effect("a Retry-After past the total deadline is not waited for: the next step streams at once", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.fail("RateLimited", { retryAfter: "30 seconds" }), Outcome.succeed("from backup")]
      })
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const fiber = yield* Effect.forkChild(
        collect(
          executor.stream(ask, {
            steps: [{ provider: a }, { provider: b }],
            retry: { initialDelay: 100, jitter: 0 },
            totalTimeout: "10 seconds"
          })
        )
      )
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(done, "the stream waited for a Retry-After its total deadline cuts")
      assert.strictEqual(textOf(yield* Fiber.join(fiber)), "from backup")
      assert.strictEqual(yield* control.calls, 2)
      assert.strictEqual((yield* executor.stats()).retries, 0)
    })
  )

  it.effect("an onRetry hook still running when the total deadline passes does not hold the stream past it", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("ok")] })
      let hooks = 0
      let hookInterrupted = false
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          collect(
            executor.stream(ask, {
              retry: { initialDelay: 10, jitter: 0 },
              totalTimeout: "1 second",
              onRetry: () =>
                Effect.onInterrupt(
                  Effect.andThen(
                    Effect.sync(() => hooks++),
                    Effect.sleep("1 hour")
                  ),
                  () =>
                    Effect.sync(() => {
                      hookInterrupted = true
                    })
                )
            })
          )
        )
      )
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* TestClock.adjust("2 hours")
      const error = yield* Fiber.join(fiber)
      assert.isDefined(done, "the stream waited for its onRetry hook past its total deadline")
      assert.deepStrictEqual(error._tag === "TimeoutError" && error.limit, "total")
      yield* Effect.yieldNow
      assert.deepStrictEqual([hooks, hookInterrupted, yield* control.calls], [1, true, 1])
      // A hook that returns: the retry goes on after it, its backoff then.
      const { executor: next, control: nextControl } = yield* setup({
        script: [Outcome.fail("Overloaded"), Outcome.succeed("ok")]
      })
      const retried = yield* Effect.forkChild(
        collect(
          next.stream(ask, {
            retry: { initialDelay: 100, jitter: 0 },
            onRetry: () => Effect.sleep("1 second")
          })
        )
      )
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* nextControl.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(textOf(yield* Fiber.join(retried)), "ok")
      assert.strictEqual(yield* nextControl.calls, 2)
    })
  )

  it.effect("a consumer that leaves early interrupts the upstream", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ respond: () => "a b c d e f g", chunkDelay: 100 })
      const fiber = yield* Effect.forkChild(collect(Stream.take(executor.stream(ask), 2)))
      yield* TestClock.adjust("1 second")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(parts.length, 2)
      yield* Effect.yieldNow
      assert.strictEqual(yield* control.interrupted, 1)
      assert.strictEqual(yield* control.inFlight, 0)
    })
  )

  it.effect("a consumer that stops at the Finish without reading on counts a success", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: () => "a b c" })
      const parts = yield* collect(executor.stream(ask).pipe(Stream.takeUntil((p) => p._tag === "Finish")))
      assert.strictEqual(parts[parts.length - 1]!._tag, "Finish")
      const stats = yield* executor.stats()
      assert.strictEqual(stats.successes, 1)
      assert.deepStrictEqual(stats.failuresByReason, {})
    })
  )

  it.effect("a consumer that stops at the Finish without reading on counts a success on the breaker too", () =>
    Effect.gen(function* () {
      let down = true
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          down
            ? Stream.fail(new ModelError({ reason: "Overloaded", message: "down", provider: "p" }))
            : Stream.make<[StreamPart, StreamPart]>(
                { _tag: "TextDelta", text: "a" },
                { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "p", model: "m" }
              )
      }
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(Layer.succeed(ModelProvider, provider)),
          Layer.provideMerge(CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "1 minute" }))
        )
      )
      const executor = Context.get(context, Executor.Executor)
      const breakers = Context.get(context, CircuitBreaker.Breakers)
      yield* Effect.flip(Stream.runDrain(executor.stream(ask)))
      assert.strictEqual(yield* breakers.state("p"), "open")
      yield* TestClock.adjust("1 minute")
      down = false
      // The probe's stream: its consumer has the whole answer, and stops there.
      const parts = yield* collect(executor.stream(ask).pipe(Stream.takeUntil((p) => p._tag === "Finish")))
      assert.strictEqual(parts[parts.length - 1]!._tag, "Finish")
      assert.strictEqual((yield* executor.stats()).successes, 1)
      assert.strictEqual(yield* breakers.state("p"), "closed", "the probe's success closes the circuit")
    })
  )

  it.effect("a stream's outcome read ahead counts on its breaker though the consumer left before reading it", () =>
    Effect.gen(function* () {
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          Stream.concat(
            Stream.make<[StreamPart, StreamPart, StreamPart]>(
              { _tag: "TextDelta", text: "a " },
              { _tag: "TextDelta", text: "b " },
              { _tag: "TextDelta", text: "c " }
            ),
            Stream.fail(new ModelError({ reason: "Overloaded", message: "dropped", provider: "p" }))
          )
      }
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(Layer.succeed(ModelProvider, provider)),
          Layer.provideMerge(CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "1 minute" }))
        )
      )
      const executor = Context.get(context, Executor.Executor)
      const breakers = Context.get(context, CircuitBreaker.Breakers)
      // A whole answer: a part, then its Finish 100 ms later.
      const answersWhole: Service = {
        ...provider,
        stream: () =>
          Stream.concat(
            Stream.make({ _tag: "TextDelta", text: "a " } as StreamPart),
            Stream.fromEffect(
              Effect.as(Effect.sleep("100 millis"), {
                _tag: "Finish",
                finishReason: "stop",
                usage: usage(1, 1),
                provider: "p",
                model: "m"
              } as StreamPart)
            )
          )
      }
      // The cut is read ahead with the text; the consumer takes two parts and leaves.
      const parts = yield* collect(Stream.take(executor.stream(ask), 2))
      assert.strictEqual(textOf(parts), "a b ")
      assert.strictEqual(yield* breakers.state("p"), "open", "the provider's cut is its failure")
      // An answer read ahead whole while the consumer was busy with its first part is the provider's
      // success: a probe closes the circuit.
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(yield* breakers.state("p"), "half-open")
      const whole = yield* Effect.forkChild(
        collect(
          executor
            .stream(ask, {
              provider: answersWhole
            })
            .pipe(
              Stream.tap(() => Effect.sleep("1 second")),
              Stream.take(1)
            )
        )
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(textOf(yield* Fiber.join(whole)), "a ")
      assert.strictEqual(yield* breakers.state("p"), "closed", "the probe's answer was whole")
      // The same when the total deadline, the consumer's time included, passes before the consumer reads that end:
      // the answer is whole, so the consumer gets it, as the breaker counts it.
      yield* Effect.flip(Stream.runDrain(executor.stream(ask)))
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(yield* breakers.state("p"), "half-open")
      const slow = yield* Effect.forkChild(
        collect(
          executor
            .stream(ask, {
              totalTimeout: "2 seconds",
              provider: answersWhole
            })
            .pipe(Stream.tap(() => Effect.sleep("5 seconds")))
        )
      )
      yield* TestClock.adjust("10 seconds")
      const late = yield* Fiber.join(slow)
      assert.deepStrictEqual(
        late.map((p) => p._tag),
        ["TextDelta", "Finish"]
      )
      assert.strictEqual(yield* breakers.state("p"), "closed", "the provider answered in full, in time")
      // A consumer that leaves a stream still going well is neutral.
      const fine = {
        ...provider,
        name: "q",
        stream: () => Stream.concat(provider.stream(ask).pipe(Stream.take(3)), Stream.never)
      }
      yield* collect(Stream.take(executor.stream(ask, { provider: fine }), 2))
      assert.strictEqual(yield* breakers.state("q"), "closed")
    })
  )

  it.effect("a slow consumer does not hold the provider's slot once the upstream has finished", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ respond: () => "a b c", maxConcurrency: 1 })
      const slow = yield* Effect.forkChild(Stream.runForEach(executor.stream(ask), () => Effect.sleep("10 seconds")))
      yield* TestClock.adjust("1 second")
      // The first upstream has sent everything, read ahead: the second stream may start now.
      const next = yield* Effect.forkChild(collect(executor.stream(ask)))
      yield* Effect.yieldNow
      const calls = yield* control.calls
      const done = next.pollUnsafe() !== undefined
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(slow)
      assert.strictEqual(textOf(yield* Fiber.join(next)), "a b c")
      assert.deepStrictEqual([calls, done], [2, true])
    })
  )

  it.effect("a total deadline ends the stream, consumer time included", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: () => "a b c d e f g h", chunkDelay: "1 second" })
      const fiber = yield* Effect.forkChild(Effect.flip(collect(executor.stream(ask, { totalTimeout: "3500 millis" }))))
      yield* TestClock.adjust("4 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, "a b c d ")
    })
  )

  it.effect(
    "a total deadline closes the upstream when it strikes, not at the consumer's next pull (a consumer stuck on its side)",
    () =>
      Effect.gen(function* () {
        let upstreamClosed = false
        const provider: Service = {
          name: "p",
          defaultModel: "m",
          generate: () => Effect.die("not used"),
          embed: () => Effect.die("not used"),
          // One chunk, then an upstream that never sends again: its connection is what the cut must free.
          stream: () =>
            Stream.concat(Stream.make({ _tag: "TextDelta", text: "a" } as StreamPart), Stream.never).pipe(
              Stream.ensuring(
                Effect.sync(() => {
                  upstreamClosed = true
                })
              )
            )
        }
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            const release = yield* Deferred.make<void>()
            const fiber = yield* Effect.forkChild(
              Effect.flip(
                // The consumer takes the first part and then waits on something of its own (a client's slow socket).
                Stream.runForEach(executor.stream(ask, { totalTimeout: "2 seconds", idleTimeout: "none" }), () =>
                  Deferred.await(release)
                )
              )
            )
            yield* TestClock.adjust("1 second")
            assert.isFalse(upstreamClosed)
            yield* TestClock.adjust("2 seconds")
            const closedAtCut = upstreamClosed
            yield* Deferred.succeed(release, undefined)
            const error = yield* Fiber.join(fiber)
            assert.isTrue(closedAtCut)
            assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
            assert.strictEqual(error._tag === "TimeoutError" && error.partialText, "a")
          })
        )
      })
  )

  it.effect("a slow consumer cut by the total deadline gets no text past the error's partialText", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: () => "a b c d e f g h i j", chunkDelay: "1 second" })
      const seen: Array<string> = []
      // 3 s per part: when the deadline passes, parts read ahead of the consumer wait in the buffer.
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          Stream.runForEach(executor.stream(ask, { totalTimeout: "5500 millis" }), (p) =>
            Effect.andThen(
              Effect.sync(() => {
                if (p._tag === "TextDelta") seen.push(p.text)
              }),
              Effect.sleep("3 seconds")
            )
          )
        )
      )
      yield* TestClock.adjust("1 minute")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, seen.join(""))
    })
  )

  it.effect(
    "a stream whose Finish the consumer holds is complete: a total deadline passing after it fails nothing",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "a b c d" })
        const seen: Array<string> = []
        // The whole answer arrives at once; the consumer takes 1 s a part, past the total deadline.
        const fiber = yield* Effect.forkChild(
          Stream.runForEach(executor.stream(ask, { totalTimeout: "2500 millis" }), (p) =>
            Effect.andThen(
              Effect.sync(() => seen.push(p._tag)),
              Effect.sleep("1 second")
            )
          )
        )
        yield* TestClock.adjust("1 minute")
        yield* Fiber.join(fiber)
        assert.deepStrictEqual(seen, ["TextDelta", "TextDelta", "TextDelta", "TextDelta", "Finish"])
        const stats = yield* executor.stats()
        assert.strictEqual(stats.successes, 1)
        assert.strictEqual(stats.timeouts, 0)
      })
  )

  it.effect("streams drain on shutdown up to the deadline, then end with ShuttingDownError (item 9)", () =>
    Effect.gen(function* () {
      const { executor, close } = yield* setup(
        { respond: () => "one two three four five six seven eight nine ten", chunkDelay: "500 millis" },
        { shutdownDeadline: "2 seconds", stream: { totalTimeout: "none" } }
      )
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(failureAfterTexts(executor.stream(ask), seen))
      yield* Effect.yieldNow
      const closing = yield* Effect.forkChild(close)
      yield* Effect.yieldNow
      const refused = yield* Effect.flip(collect(executor.stream(ask)))
      assert.strictEqual(refused._tag, "ShuttingDownError")
      yield* TestClock.adjust("1 second")
      assert.isUndefined(fiber.pollUnsafe(), "still draining")
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "ShuttingDownError")
      assert.isAbove(seen.length, 2)
      yield* Fiber.join(closing)
    })
  )

  it.effect("a stream its consumer dropped without closing does not hold the shutdown past its deadline", () =>
    Effect.gen(function* () {
      const { executor, close } = yield* setup(
        { respond: () => "one two three four five six seven eight nine ten", chunkDelay: "500 millis" },
        { shutdownDeadline: "1 second", stream: { totalTimeout: "none" } }
      )
      // Read once, then never again and never closed (an async iterator a caller dropped).
      const pull = yield* Stream.toPull(executor.stream(ask)).pipe(Scope.provide(yield* Scope.make()))
      const first = pull.pipe(Effect.forkChild)
      yield* TestClock.adjust("500 millis")
      yield* Fiber.join(yield* first)
      const closing = yield* Effect.forkChild(close)
      yield* Effect.yieldNow
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      // Before: the engine waited 5 s more for the stream to be closed, which never happens.
      assert.isDefined(closing.pollUnsafe(), "the executor closed at its shutdown deadline")
      yield* Fiber.join(closing)
    })
  )

  it.effect(
    "a stream stopped through its Cut (the gateway's drain) ends at once with that error, counted; one opened afterwards fails at once",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "a b c d e f g h", chunkDelay: "1 second" })
        const cut: Cut = { error: undefined }
        const seen: Array<string> = []
        const fiber = yield* Effect.forkChild(
          failureAfterTexts(executor.stream(ask), seen).pipe(Effect.provideService(CurrentCut, cut))
        )
        yield* TestClock.adjust("1500 millis")
        assert.isUndefined(fiber.pollUnsafe(), "still streaming")
        assert.strictEqual(cut.stops?.size, 1, "the running stream registered its stop")
        const stopped = new ShuttingDownError({ message: "the drain deadline passed" })
        stopStreams(cut, stopped)
        yield* Effect.yieldNow
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error, stopped, "the consumer gets the cut's own error, with no clock advanced")
        assert.deepStrictEqual(seen, ["a ", "b "])
        assert.strictEqual(cut.stops?.size, 0, "an ended stream unregisters")
        const stats = yield* executor.stats()
        assert.strictEqual(stats.failuresByReason["ShuttingDown"], 1)
        const later = yield* Effect.flip(collect(executor.stream(ask)).pipe(Effect.provideService(CurrentCut, cut)))
        assert.strictEqual(later, stopped)
        const other = yield* Effect.forkChild(collect(executor.stream(ask)))
        yield* TestClock.adjust("10 seconds")
        assert.strictEqual(textOf(yield* Fiber.join(other)), "a b c d e f g h", "a stream outside the cut runs on")
      })
  )

  it.effect(
    "a total deadline passing between two attempts (a slow onRetry) names the provider of the step it cut",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("ok")] })
        const a = { ...executor.provider, name: "a" }
        const fiber = yield* Effect.forkChild(
          Effect.flip(
            collect(
              executor.stream(ask, {
                provider: a,
                retry: { initialDelay: 100, jitter: 0 },
                totalTimeout: "1500 millis",
                // Its backoff then ends past the total deadline, which strikes while it runs.
                onRetry: () => Effect.sleep("1450 millis")
              })
            )
          )
        )
        yield* TestClock.adjust("1500 millis")
        const error = yield* Fiber.join(fiber)
        assert.deepStrictEqual(error._tag === "TimeoutError" && [error.limit, error.provider], ["total", "a"])
      })
  )

  // Found in review: the step counted Interrupted without the answer's usage, while its breaker recorded a success.
  it.effect(
    "a whole answer read ahead of a consumer that leaves before its Finish counts as a success with its usage",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup()
        const answersWhole: Service = {
          ...executor.provider,
          name: "whole",
          // Its Finish 100 ms after its text: read ahead while the consumer is busy with the text.
          stream: () =>
            Stream.concat(
              Stream.make({ _tag: "TextDelta", text: "a " } as StreamPart),
              Stream.fromEffect(
                Effect.as(Effect.sleep("100 millis"), {
                  _tag: "Finish",
                  finishReason: "stop",
                  usage: usage(3, 5),
                  provider: "whole",
                  model: "m"
                } as StreamPart)
              )
            )
        }
        const fiber = yield* Effect.forkChild(
          collect(
            executor.stream(ask, { provider: answersWhole }).pipe(
              Stream.tap(() => Effect.sleep("1 second")),
              Stream.take(1)
            )
          )
        )
        yield* TestClock.adjust("1 second")
        assert.strictEqual(textOf(yield* Fiber.join(fiber)), "a ")
        const stats = yield* executor.stats()
        assert.deepStrictEqual(
          [stats.successes, stats.failuresByReason, stats.tokens],
          [1, {}, { input: 3, output: 5 }],
          "the provider's answer was whole, its tokens spent"
        )
      })
  )

  // Found in review: between two attempts the step was left without an outcome.
  for (const [ending, reason] of [
    ["a cut", "ShuttingDown"],
    ["a consumer that leaves", "Interrupted"]
  ] as const) {
    it.effect(`${ending} during a retry's backoff ends the stream and counts its step as ${reason}`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({
          script: [Outcome.fail("Overloaded", { latency: "10 millis" }), Outcome.succeed("ok")]
        })
        const cut: Cut = { error: undefined }
        const fiber = yield* Effect.forkChild(
          Effect.flip(
            Stream.runDrain(
              executor.stream(ask, { retry: { maxAttempts: 3, initialDelay: "5 seconds", jitter: 0 } })
            ).pipe(Effect.provideService(CurrentCut, cut))
          )
        )
        yield* TestClock.adjust("100 millis")
        if (ending === "a cut") {
          stopStreams(cut, new ShuttingDownError({ message: "drain" }))
          yield* Effect.yieldNow
          assert.strictEqual((yield* Fiber.join(fiber))._tag, "ShuttingDownError")
        } else {
          yield* Fiber.interrupt(fiber)
        }
        const stats = yield* executor.stats()
        assert.strictEqual(stats.total, 1)
        assert.deepStrictEqual(stats.failuresByReason, { [reason]: 1 })
      })
    )
  }

  // An upstream that does not yield to its interruption (a connection opened in an acquire, a region
  // of its own): the deadline fires when due, as a call's does; the upstream ends in the background.
  for (const [deadline, options, after] of [
    ["firstChunk", { firstChunkTimeout: "1 second" }, []],
    ["idle", { idleTimeout: "1 second" }, [{ _tag: "TextDelta", text: "a" }]],
    ["total", { totalTimeout: "1 second", firstChunkTimeout: "none" }, []]
  ] as const) {
    it.effect(`the ${deadline} deadline fires when due on an upstream that ignores its interruption`, () =>
      Effect.gen(function* () {
        let ended = 0
        const stuck: Service = {
          name: "stuck",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          stream: () =>
            Stream.concat(
              Stream.fromIterable<StreamPart>(after),
              Stream.fromEffect(Effect.uninterruptible(Effect.sleep("1 hour"))).pipe(
                Stream.flatMap(() => Stream.empty as Stream.Stream<StreamPart>),
                Stream.ensuring(Effect.sync(() => ended++))
              )
            )
        }
        yield* withExecutorOver(stuck, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(Effect.flip(collect(executor.stream(ask, options))))
            yield* TestClock.adjust("1 second")
            yield* Effect.yieldNow
            const early = fiber.pollUnsafe()
            if (early === undefined) yield* TestClock.adjust("2 hours")
            const error = yield* Fiber.join(fiber)
            assert.isDefined(early, "the consumer waited for the upstream past its deadline")
            assert.deepStrictEqual(error._tag === "TimeoutError" && [error.limit, error.provider], [deadline, "stuck"])
            // The upstream still ends, when its own region does.
            yield* TestClock.adjust("2 hours")
            assert.strictEqual(ended, 1)
            assert.strictEqual((yield* executor.stats()).inFlight, 0)
          })
        )
      })
    )
  }

  it.effect("a consumer that takes the first chunk and leaves is let go at once, whatever the upstream does next", () =>
    Effect.gen(function* () {
      let ended = 0
      const stuck: Service = {
        name: "stuck",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        // One chunk, then a region that does not yield to its interruption (a blocking read).
        stream: () =>
          Stream.concat(
            Stream.make({ _tag: "TextDelta", text: "a" } as StreamPart),
            Stream.fromEffect(Effect.uninterruptible(Effect.sleep("1 hour"))).pipe(
              Stream.flatMap(() => Stream.empty as Stream.Stream<StreamPart>),
              Stream.ensuring(Effect.sync(() => ended++))
            )
          )
      }
      yield* withExecutorOver(stuck, (executor) =>
        Effect.gen(function* () {
          const fiber = yield* Effect.forkChild(collect(Stream.take(executor.stream(ask), 1)))
          yield* Effect.yieldNow
          const early = fiber.pollUnsafe()
          if (early === undefined) yield* TestClock.adjust("2 hours")
          const parts = yield* Fiber.join(fiber)
          assert.isDefined(early, "the consumer waited for the upstream it left")
          assert.strictEqual(textOf(parts), "a")
          yield* TestClock.adjust("2 hours")
          assert.strictEqual(ended, 1)
          const stats = yield* executor.stats()
          assert.deepStrictEqual([stats.inFlight, stats.failuresByReason], [0, { Interrupted: 1 }])
        })
      )
    })
  )

  it.effect(
    "a step stuck past its first-chunk deadline in a region it does not leave is fallen back from when due",
    () =>
      Effect.gen(function* () {
        const stuck: Service = {
          name: "stuck",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          stream: () =>
            Stream.fromEffect(Effect.uninterruptible(Effect.sleep("1 hour"))).pipe(
              Stream.flatMap(() => Stream.empty as Stream.Stream<StreamPart>)
            )
        }
        const backup: Service = {
          ...stuck,
          name: "backup",
          stream: () =>
            Stream.make<[StreamPart, StreamPart]>(
              { _tag: "TextDelta", text: "from backup" },
              { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "backup", model: "m" }
            )
        }
        yield* withExecutorOver(stuck, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(
              collect(
                executor.stream(ask, {
                  steps: [{ provider: stuck }, { provider: backup }],
                  firstChunkTimeout: "1 second"
                })
              )
            )
            yield* TestClock.adjust("1 second")
            yield* Effect.yieldNow
            const done = fiber.pollUnsafe()
            if (done === undefined) yield* TestClock.adjust("2 hours")
            assert.isDefined(done, "the fallback waited for the stuck step")
            assert.strictEqual(textOf(yield* Fiber.join(fiber)), "from backup")
          })
        )
      })
  )

  it.effect("a stream naming no model is cached under the provider's default model, so a new default asks again", () =>
    Effect.gen(function* () {
      const cache = yield* ResponseCache.makeMemory({ name: "default-model-stream-key" })
      const over = (model: string, text: string) =>
        setup({ model, respond: () => text }, { guards: { cache } }).pipe(Effect.map((s) => s.executor))
      const before = yield* over("m1", "from m1")
      assert.strictEqual(textOf(yield* collect(before.stream(ask))), "from m1")
      const after = yield* over("m2", "from m2")
      assert.strictEqual(textOf(yield* collect(after.stream(ask))), "from m2")
      assert.strictEqual(textOf(yield* collect(before.stream({ ...ask, model: "m2" }))), "from m2", "one entry")
    })
  )

  it.effect("a stream opened under a cut already stopped is not replayed from the cache (found in review)", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(Mock.layer({ respond: () => "a b" })),
          Layer.provide(ResponseCache.layerMemory({ name: "cut-replay" }))
        )
      )
      const executor = Context.get(context, Executor.Executor)
      assert.strictEqual(textOf(yield* collect(executor.stream(ask))), "a b", "now cached")
      const cut: Cut = { error: undefined }
      const stopped = new ShuttingDownError({ message: "drain" })
      stopStreams(cut, stopped)
      const error = yield* Effect.flip(collect(executor.stream(ask)).pipe(Effect.provideService(CurrentCut, cut)))
      assert.strictEqual(error, stopped)
    })
  )

  it.effect("resume continues on the next step and removes text it repeats", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({
        script: [
          Outcome.fail("Overloaded", { afterChunks: 3, text: "The quick brown fox jumps" }),
          Outcome.succeed(undefined, { chunks: ["brown ", "fox jumps ", "over the dog"] })
        ]
      })
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const parts = yield* collect(executor.stream(ask, { steps: [{ provider: a }, { provider: b }], resume: true }))
      assert.strictEqual(textOf(parts), "The quick brown fox jumps over the dog")
    })
  )

  it.effect(
    "a stream whose consumer holds a tool call is not resumed: the continuation cannot carry the call, and would repeat it",
    () =>
      Effect.gen(function* () {
        const call = { id: "c1", name: "lookup", arguments: "{}" }
        const cutAfterCall: Service = {
          name: "a",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          stream: () =>
            Stream.concat(
              Stream.make<[StreamPart, StreamPart]>(
                { _tag: "TextDelta", text: "Let me check. " },
                { _tag: "ToolCall", call }
              ),
              Stream.fail(new ModelError({ reason: "Overloaded", message: "dropped", provider: "a" }))
            )
        }
        let resumed = 0
        // The next step, asked to continue, makes the same call again (under an id of its own).
        const repeats: Service = {
          ...cutAfterCall,
          name: "b",
          stream: () => {
            resumed++
            return Stream.make<[StreamPart, StreamPart, StreamPart]>(
              { _tag: "TextDelta", text: "Let me check. " },
              { _tag: "ToolCall", call: { ...call, id: "c2" } },
              {
                _tag: "Finish",
                finishReason: "tool_calls",
                usage: usage(1, 1),
                provider: "b",
                model: "m"
              }
            )
          }
        }
        const seen: Array<StreamPart> = []
        const exit = yield* withExecutorOver(cutAfterCall, (executor) =>
          Effect.exit(
            Stream.runForEach(
              executor.stream(ask, { steps: [{ provider: cutAfterCall }, { provider: repeats }], resume: true }),
              (part) => Effect.sync(() => seen.push(part))
            )
          )
        )
        assert.deepStrictEqual(
          seen.map((part) => part._tag),
          ["TextDelta", "ToolCall"],
          "the call is delivered once"
        )
        assert.strictEqual(resumed, 0)
        const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause).pipe(Option.getOrUndefined) : undefined
        assert.deepStrictEqual(
          error?._tag === "StreamInterruptedError" && [error.partialText, error.reason, error.provider],
          ["Let me check. ", "Overloaded", "a"]
        )
      })
  )

  it.effect(
    "a TimeoutError names the deadline that fired: a resumed step's late first chunk, a stall after a chunk",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({
          script: [
            Outcome.fail("Overloaded", { afterChunks: 2, text: "alpha beta gamma" }),
            Outcome.hang(),
            Outcome.succeed(undefined, { chunks: ["", "late"], chunkDelay: "1 minute" })
          ]
        })
        const a = { ...executor.provider, name: "a" }
        const b = { ...executor.provider, name: "b" }
        const deadlines = { firstChunkTimeout: "2 seconds", idleTimeout: "30 seconds" } as const
        // b never sends its first chunk: that deadline (2 s) fired, not the idle one (30 s).
        const resumed = yield* Effect.forkChild(
          Effect.flip(
            collect(executor.stream(ask, { steps: [{ provider: a }, { provider: b }], resume: true, ...deadlines }))
          )
        )
        yield* TestClock.adjust("2 seconds")
        const late = yield* Fiber.join(resumed)
        assert.deepStrictEqual(
          late._tag === "TimeoutError" && [late.limit, Duration.toMillis(late.timeout), late.partialText],
          ["firstChunk", 2_000, "alpha beta "]
        )
        // An empty first chunk, then a stall: the idle deadline (30 s) fired, not the first-chunk one (2 s).
        const stalled = yield* Effect.forkChild(Effect.flip(collect(executor.stream(ask, deadlines))))
        yield* TestClock.adjust("30 seconds")
        const idle = yield* Fiber.join(stalled)
        assert.deepStrictEqual(idle._tag === "TimeoutError" && [idle.limit, Duration.toMillis(idle.timeout)], [
          "idle",
          30_000
        ])
      })
  )

  it.effect(
    "a provider stream failing with a value that is not an AiError ends with a typed ModelError naming it",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup()
        const values: ReadonlyArray<unknown> = [new Error("plain"), "bad", undefined, 7, Object.create(null)]
        for (const value of values) {
          const broken = {
            ...executor.provider,
            name: "broken",
            stream: () =>
              Stream.concat(
                Stream.make({ _tag: "TextDelta", text: "partial" } as StreamPart),
                Stream.fail(value as AiError)
              )
          }
          const before = yield* Effect.flip(collect(executor.stream(ask, { provider: broken })))
          // After text: the typed interruption, its reason and cause the provider's ModelError.
          assert.deepStrictEqual(
            before._tag === "StreamInterruptedError" && [
              before.partialText,
              before.reason,
              (before.cause as { _tag?: string })?._tag,
              (before.cause as { cause?: unknown })?.cause
            ],
            ["partial", "Unknown", "ModelError", value],
            typeof value
          )
          const first = yield* Effect.flip(
            collect(executor.stream(ask, { provider: { ...broken, stream: () => Stream.fail(value as AiError) } }))
          )
          assert.deepStrictEqual(
            first._tag === "ModelError" && [first.reason, first.provider, first.cause],
            ["Unknown", "broken", value],
            typeof value
          )
        }
        const stats = yield* executor.stats()
        assert.strictEqual(stats.inFlight, 0)
      })
  )

  it.effect("bad stream options are refused naming the option", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const [options, field] of [
        [{ idleTimeout: Number.NaN }, "idleTimeout"],
        [{ firstChunkTimeout: -1 }, "firstChunkTimeout"],
        [{ totalTimeout: "soon" }, "totalTimeout"],
        [{ resume: { maxResumes: 0 } }, "resume.maxResumes"],
        // `null` threw a TypeError out of the stream; the others were taken as "resume on".
        [{ resume: null }, "resume"],
        [{ resume: "yes" }, "resume"],
        [{ resume: 1 }, "resume"],
        [{ resume: [] }, "resume"],
        [{ resume: { instruction: 5 } }, "resume.instruction"],
        [{ resume: { maxResume: 2 } }, "resume.maxResume"],
        // A misspelt step key ran the executor's own provider, or its retry policy, unseen.
        [{ steps: [{ provder: executor.provider }] }, "steps[0].provder"],
        [{ steps: [{ provider: executor.provider, retyr: true }] }, "steps[0].retyr"],
        [{ steps: [{ provider: executor.provider, cache: "no" }] }, "steps[0].cache"],
        // A `prepare` that is no function died with "prepare is not a function" once the stream started.
        [{ steps: [{ provider: executor.provider, prepare: 5 }] }, "steps[0].prepare"],
        [{ steps: [{ provider: executor.provider, model: 5 }] }, "steps[0].model"],
        // A model no request may name was sent as it was: a step's model is checked as a request's is.
        [{ steps: [{ provider: executor.provider, model: "" }] }, "steps[0].model"],
        [{ steps: [{ provider: executor.provider, model: " gpt-4o" }] }, "steps[0].model"],
        [{ steps: [null] }, "steps[0]"],
        [{ steps: "fast" }, "steps"]
      ] as const) {
        const error = yield* Effect.flip(collect(executor.stream(ask, options as never)))
        assert.strictEqual(error._tag === "ModelError" && error.field, field, error.message)
      }
      assert.strictEqual(yield* control.calls, 0)
      void Duration
    })
  )
})

describe("Executor.stream: a resume that is no object", () => {
  it.effect(
    "is shown bounded, as every other check shows a value: a BigInt threw a TypeError out of the check, a long string went whole in",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup()
        for (const resume of [10n, "r".repeat(100_000)]) {
          const exit = yield* Effect.exit(collect(executor.stream(ask, { resume } as never)))
          assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit), typeof resume)
          const error = yield* Effect.flip(collect(executor.stream(ask, { resume } as never)))
          assert.strictEqual(error._tag === "ModelError" && error.field, "resume", error.message.slice(0, 300))
          assert.isBelow(error.message.length, 300, error.message.slice(0, 400))
        }
        assert.strictEqual(yield* control.calls, 0)
      })
  )
})

describe("Executor.stream: a stream refused for an option", () => {
  it.effect("cache that is no boolean is refused naming cache, not taken as on", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const cache of ["no", 0, null]) {
        const error = yield* Effect.flip(collect(executor.stream(ask, { cache } as never)))
        assert.deepStrictEqual(
          [error._tag, error._tag === "ModelError" ? [error.reason, error.field] : []],
          ["ModelError", ["InvalidRequest", "cache"]]
        )
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("options that are no object are refused naming options, counted on the executor's provider", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const own = executor.provider.name
      const before = (yield* executor.stats({ provider: own })).total
      for (const options of [null, 5, "fast"]) {
        const error = yield* Effect.flip(collect(executor.stream(ask, options as never)))
        assert.deepStrictEqual(
          [error._tag, error._tag === "ModelError" ? [error.reason, error.field, error.provider] : []],
          ["ModelError", ["InvalidRequest", "options", own]]
        )
        assert.notInclude(error.message, "threw")
      }
      assert.strictEqual((yield* executor.stats({ provider: own })).total - before, 3)
    })
  )

  it.effect("a step or resume whose getter throws is refused naming it, counted, not a defect", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const own = executor.provider.name
      const before = (yield* executor.stats({ provider: own })).total
      const step = {
        provider: executor.provider,
        get model(): string {
          throw new Error("getter bug")
        }
      }
      const exit = yield* Effect.exit(collect(executor.stream(ask, { steps: [step] })))
      assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit) && !Exit.hasDies(exit), String(exit))
      const error = yield* Effect.flip(collect(executor.stream(ask, { steps: [step] })))
      assert.deepStrictEqual(
        [error._tag, error._tag === "ModelError" ? [error.reason, error.field] : []],
        ["ModelError", ["InvalidRequest", "steps[0].model"]]
      )
      const resume = {
        get maxResumes(): number {
          throw new Error("getter bug")
        }
      }
      const refused = yield* Effect.flip(collect(executor.stream(ask, { resume })))
      assert.strictEqual(refused._tag === "ModelError" && refused.field, "resume.maxResumes")
      assert.strictEqual((yield* executor.stats({ provider: own })).total - before, 3)
    })
  )

  it.effect("counts as one request and one InvalidRequest failure of its provider, when it runs", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const other = yield* Mock.make({ name: "refused-other" })
      const own = executor.provider.name
      const before = yield* executor.stats({ provider: own })
      const bad: ReadonlyArray<unknown> = [
        { idleTimout: "1 second" },
        { cache: "no" },
        { idleTimeout: Number.NaN },
        { retry: "yes" },
        { resume: { maxResumes: 0 } },
        { steps: [] },
        { steps: [{ provider: executor.provider, retyr: true }] },
        {
          get domain(): string {
            throw new Error("getter bug")
          }
        }
      ]
      // Made, not run: nothing counted yet.
      const streams = bad.map((options) => executor.stream(ask, options as never))
      assert.strictEqual((yield* executor.stats({ provider: own })).total, before.total)
      for (const stream of streams) yield* Effect.flip(collect(stream))
      const after = yield* executor.stats({ provider: own })
      assert.deepStrictEqual(
        [
          after.total - before.total,
          (after.failuresByReason.InvalidRequest ?? 0) - (before.failuresByReason.InvalidRequest ?? 0)
        ],
        [bad.length, bad.length]
      )
      // On the provider it was meant for, and its domain.
      const error = yield* Effect.flip(
        collect(executor.stream(ask, { steps: [{ provider: other.provider, domain: "d" }], idleTimeout: -1 }))
      )
      assert.strictEqual(error._tag === "ModelError" && error.provider, "refused-other")
      const counted = yield* executor.stats({ provider: "refused-other", domain: "d" })
      assert.deepStrictEqual([counted.total, counted.failuresByReason], [1, { InvalidRequest: 1 }])
      assert.strictEqual(yield* other.control.calls, 0)
    })
  )
})

describe("Executor.stream: a step's prepare", () => {
  it.effect(
    "that throws fails the stream with an InvalidRequest naming it, counted, nothing sent; with a cache too",
    () =>
      Effect.gen(function* () {
        const cache = yield* ResponseCache.makeMemory({ name: "prepare-throws" })
        for (const guards of [{}, { cache }]) {
          const { executor } = yield* setup({}, { guards })
          const other = yield* Mock.make({ name: "other" })
          const down = yield* Mock.make({ name: "down", random: { success: 0 } })
          const prepare = () => {
            throw new Error("prepare bug")
          }
          for (const steps of [
            [{ provider: other.provider, prepare }],
            [{ provider: down.provider }, { provider: other.provider, prepare }]
          ]) {
            const exit = yield* Effect.exit(collect(executor.stream(ask, { steps, retry: false })))
            assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit) && !Exit.hasDies(exit), String(exit))
          }
          const error = yield* Effect.flip(
            collect(executor.stream(ask, { steps: [{ provider: other.provider, prepare }] }))
          )
          assert.deepStrictEqual(
            [error._tag, error._tag === "ModelError" ? [error.reason, error.field, error.message] : []],
            [
              "ModelError",
              ["InvalidRequest", "steps[0].prepare", "invalid steps[0].prepare: the prepare option threw: prepare bug"]
            ]
          )
          assert.strictEqual(yield* other.control.calls, 0)
          const stats = yield* executor.stats({ provider: "other" })
          assert.deepStrictEqual([stats.total, stats.failuresByReason], [3, { InvalidRequest: 3 }])
        }
      })
  )
})

describe("Executor.stream: a step's prepare answering no valid request", () => {
  it.effect("ends the attempt with an InvalidRequest naming it, nothing sent, as its documentation says", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({}, { requestLimits: { maxInputChars: 100 } })
      const sent: Array<unknown> = []
      const other = {
        provider: {
          name: "other",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          stream: (request: GenerateRequest) => {
            sent.push(request)
            return Stream.make<[StreamPart, StreamPart]>(
              { _tag: "TextDelta", text: "ok" },
              { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "other", model: "m" }
            )
          }
        } satisfies Service
      }
      const answers: ReadonlyArray<readonly [string, () => unknown]> = [
        ["nothing", () => undefined],
        ["a prompt that is no string", () => ({ prompt: 42 })],
        ["no conversation", () => ({})],
        ["a misspelt field", () => ({ prompt: "hi", temprature: 1 })],
        ["a request over the limits", () => ({ prompt: "x".repeat(1_000) })]
      ]
      for (const [name, prepare] of answers) {
        const error = yield* Effect.flip(
          collect(
            executor.stream(ask, {
              steps: [{ provider: other.provider, prepare: prepare as (r: GenerateRequest) => GenerateRequest }]
            })
          )
        )
        assert.deepStrictEqual(
          error._tag === "ModelError" && [error.reason, error.field],
          ["InvalidRequest", "steps[0].prepare"],
          `${name}: ${error.message}`
        )
      }
      assert.deepStrictEqual(sent, [])
      // A valid answer is sent as it is.
      const parts = yield* collect(
        executor.stream(ask, { steps: [{ provider: other.provider, prepare: (r) => ({ ...r, system: "be brief" }) }] })
      )
      assert.strictEqual(textOf(parts), "ok")
      assert.deepStrictEqual(sent, [{ ...ask, system: "be brief" }])
    })
  )
})

describe("Executor.stream: a step's own first-chunk deadline", () => {
  it.effect("bounds that step's first chunk instead of the stream's, and a bad one is refused naming it", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const slow = yield* Mock.make({ name: "slow", latency: "3 seconds", respond: () => "late" })
      const fiber = yield* Effect.forkChild(
        Stream.runCollect(
          executor.stream(ask, {
            firstChunkTimeout: "1 second",
            steps: [{ provider: slow.provider, firstChunkTimeout: "5 seconds" }]
          })
        )
      )
      yield* TestClock.adjust("3 seconds")
      const parts = yield* Fiber.join(fiber)
      assert.isTrue(parts.some((p) => p._tag === "TextDelta"))
      const error = yield* Effect.flip(
        Stream.runDrain(executor.stream(ask, { steps: [{ provider: slow.provider, firstChunkTimeout: Number.NaN }] }))
      )
      assert.strictEqual(error._tag === "ModelError" && error.field, "steps[0].firstChunkTimeout")
    })
  )
})

describe("Executor.stream: a consumer interrupted as its stream opens", () => {
  it.effect("is not left counted as running, whatever yield the interruption falls on", () =>
    Effect.gen(function* () {
      const finish = { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "p", model: "m" } as const
      const target = { name: "p", stream: () => Stream.make({ _tag: "TextDelta" as const, text: "a" }, finish) }
      const plan = {
        steps: [{ target, name: "p", timeout: undefined, retry: undefined }],
        firstChunkTimeout: undefined,
        idleTimeout: undefined,
        totalTimeout: Duration.seconds(30)
      }
      for (let k = 1; k <= 40; k++) {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(StatsModule.layer, scope)
        const stats = Context.get(context, StatsModule.Stats)
        const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
        const defaults = { firstChunkTimeout: undefined, idleTimeout: undefined, totalTimeout: undefined }
        const streams = Streams.make({ engine, defaults })
        // The consumer's fiber yields every k operations, and is interrupted at once.
        const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
        const consumer = Effect.runForkWith(base)(Stream.runCollect(streams.run(plan as never, { prompt: "x" })))
        consumer.interruptUnsafe()
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        // Counted as running, it made the shutdown wait its whole deadline for nothing.
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        for (let i = 0; i < 50; i++) yield* Effect.yieldNow
        assert.isDefined(closing.pollUnsafe(), `k=${k}: closing waited for a stream that is not running`)
      }
    })
  )

  it.effect("a consumer or producer that yields to the scheduler between its look and its wait misses no wake-up", () =>
    Effect.gen(function* () {
      // Each upstream chunk comes one scheduler turn after the last: of `size` parts, so that the
      // producer's read-ahead fills (100) or not (1). With the fibers yielding every 2 or 3
      // operations, a wake-up sent while the other fiber had yielded between its look and its
      // wait was lost: the consumer waited for parts already there, or the producer for room the
      // consumer had already made, and the stream hung.
      const over = (size: number): Service => ({
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          Stream.fromIterable([0, 1, 2, 3, 4]).pipe(
            Stream.mapEffect((i) =>
              Effect.as(
                Effect.yieldNow,
                i === 4
                  ? [
                      {
                        _tag: "Finish",
                        finishReason: "stop",
                        usage: usage(1, 4),
                        provider: "p",
                        model: "m"
                      } as StreamPart
                    ]
                  : Array.from({ length: size }, (): StreamPart => ({ _tag: "TextDelta", text: `${i} ` }))
              )
            ),
            Stream.flatMap((parts) => Stream.fromIterable(parts)),
            Stream.rechunk(size)
          )
      })
      const none = { firstChunkTimeout: "none", idleTimeout: "none", totalTimeout: "none" } as const
      for (const size of [1, 100]) {
        for (const ops of [2, 3]) {
          const parts = yield* withExecutorOver(over(size), (executor) =>
            Effect.gen(function* () {
              const fiber = yield* Effect.forkChild(
                collect(executor.stream(ask, none)).pipe(Effect.provideService(Scheduler.MaxOpsBeforeYield, ops))
              )
              for (let i = 0; i < 10_000 && fiber.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
              assert.isDefined(fiber.pollUnsafe(), `size ${size}, every ${ops} operations: the stream hung`)
              return yield* Fiber.join(fiber)
            })
          )
          assert.strictEqual(parts.length, 4 * size + 1)
          assert.strictEqual(parts.at(-1)?._tag, "Finish")
        }
      }
    })
  )
})

describe("Executor.stream: a provider's malformed parts", () => {
  const finish = {
    _tag: "Finish",
    finishReason: "stop",
    usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
    provider: "p",
    model: "m"
  }
  const over = (parts: ReadonlyArray<unknown>): Service => ({
    name: "p",
    defaultModel: "m",
    generate: () => Effect.die("not used"),
    stream: () => Stream.fromIterable(parts as ReadonlyArray<StreamPart>),
    embed: () => Effect.die("not used")
  })
  const cases: ReadonlyArray<readonly [string, ReadonlyArray<unknown>, string]> = [
    ["undefined", [{ _tag: "TextDelta", text: "a" }, undefined, finish], "part 2: undefined is not a StreamPart"],
    ["a TextDelta without text", [{ _tag: "TextDelta" }, finish], "part 1: a TextDelta's text"],
    ["a TextDelta whose text is a number", [{ _tag: "TextDelta", text: 42 }, finish], "part 1: a TextDelta's text"],
    ["an unknown tag", [{ _tag: "Bogus", text: "x" }, finish], 'part 1: _tag "Bogus"'],
    ["a ToolCall without its call", [{ _tag: "ToolCall" }, finish], "part 1: a ToolCall's call"],
    ["a Finish without usage", [{ ...finish, usage: undefined }], "part 1: a Finish's usage"]
  ]
  for (const [name, parts, says] of cases) {
    it.effect(`${name}: the stream fails with a Decode ModelError naming the part, never a defect`, () =>
      withExecutorOver(over(parts), (executor) =>
        Effect.gen(function* () {
          const exit = yield* Effect.exit(collect(executor.stream(ask, { retry: false })))
          assert.isTrue(Exit.isFailure(exit))
          if (Exit.isSuccess(exit)) return
          const error = exit.cause.reasons.find((reason) => reason._tag === "Fail")
          assert.isDefined(error, `not a typed failure: ${String(exit.cause)}`)
          const failure = (error as { readonly error: AiError }).error
          const found = failure._tag === "StreamInterruptedError" ? failure.cause : failure
          assert.strictEqual((found as { readonly _tag: string })._tag, "ModelError", String(failure))
          assert.strictEqual((found as { readonly reason: string }).reason, "Decode", String(found))
          assert.include(String((found as { readonly message: string }).message), says)
          assert.include(String((found as { readonly message: string }).message), "p")
        })
      )
    )
  }
})

describe("Executor.stream: review of the resume and the cache", () => {
  const finishOf = (provider: string): StreamPart => ({
    _tag: "Finish",
    finishReason: "stop",
    usage: usage(1, 1),
    provider,
    model: "m"
  })
  const cutAfter = (name: string, text: string): Service => ({
    name,
    defaultModel: "m",
    generate: () => Effect.die("unused"),
    embed: () => Effect.die("unused"),
    stream: () =>
      Stream.concat(
        Stream.make<[StreamPart]>({ _tag: "TextDelta", text }),
        Stream.fail(new ModelError({ reason: "Overloaded", message: "dropped", provider: name }))
      )
  })
  const recording = (name: string, sent: Array<GenerateRequest>, text = "more"): Service => ({
    name,
    defaultModel: "m",
    generate: () => Effect.die("unused"),
    embed: () => Effect.die("unused"),
    stream: (request) => {
      sent.push(request)
      return Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text }, finishOf(name))
    }
  })

  it.effect("a resumed request over the request limits is not sent: the stream ends with its partial text", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({}, { requestLimits: { maxInputChars: 100 } })
      const delivered = "word ".repeat(20)
      const sent: Array<GenerateRequest> = []
      const seen: Array<string> = []
      const error = yield* failureAfterTexts(
        executor.stream(ask, {
          steps: [{ provider: cutAfter("a", delivered) }, { provider: recording("b", sent) }],
          resume: { instruction: "go on" }
        }),
        seen
      )
      assert.strictEqual(sent.length, 0, "nothing over the limits sent")
      assert.strictEqual(seen.join(""), delivered)
      assert.deepStrictEqual(
        error._tag === "StreamInterruptedError" && [error.partialText, error.reason, error.provider],
        [delivered, "Overloaded", "a"]
      )
      // Under the limits, the same stream resumes.
      const short = yield* collect(
        executor.stream(ask, {
          steps: [{ provider: cutAfter("a", "word ") }, { provider: recording("b", sent) }],
          resume: { instruction: "go on" }
        })
      )
      assert.strictEqual(textOf(short), "word more")
      assert.strictEqual(sent.length, 1)
    })
  )

  it.effect("runStream: a plan without validate has its resumed request checked under the executor's limits", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({}, { requestLimits: { maxInputChars: 100 } })
      const delivered = "word ".repeat(20)
      const sent: Array<GenerateRequest> = []
      const plan: Executor.StreamPlan = {
        steps: [executor.stepFor(cutAfter("a", delivered)), executor.stepFor(recording("b", sent))],
        firstChunkTimeout: undefined,
        idleTimeout: undefined,
        totalTimeout: undefined,
        resume: { maxResumes: 1, minOverlap: 4, instruction: "go on" }
      }
      const error = yield* failureAfterTexts(executor.runStream(plan, ask), [])
      // Before, a plan built in code without `validate` sent any continuation, past every limit.
      assert.strictEqual(sent.length, 0, "nothing over the limits sent")
      assert.strictEqual(error._tag, "StreamInterruptedError")
    })
  )

  const failingCache = (name: string, broken: Effect.Effect<never, ModelError>) =>
    Effect.map(ResponseCache.makeMemory({ name }), (cache) => ({
      ...cache,
      getParts: () => broken,
      setParts: () => broken
    }))

  it.effect("a custom cache that fails or dies in getParts or setParts never fails a good stream", () =>
    Effect.gen(function* () {
      const failure = new ModelError({ reason: "Transport", message: "cache down" })
      for (const [name, broken] of [
        ["fails", Effect.fail(failure)],
        ["dies", Effect.die(new Error("cache bug"))]
      ] as const) {
        const cache = yield* failingCache(`custom-cache-${name}`, broken)
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
        const parts = yield* collect(executor.stream(ask))
        assert.strictEqual(textOf(parts), "a b", name)
        assert.strictEqual(parts.at(-1)?._tag, "Finish", name)
      }
    })
  )

  it.effect("a custom cache's getParts or setParts that throws or returns no Effect is a miss, as one that dies", () =>
    Effect.gen(function* () {
      const broken = [
        [
          "throws",
          () => {
            throw new Error("cache bug")
          }
        ],
        ["returns no Effect", () => 42]
      ] as const
      for (const [name, method] of broken) {
        for (const which of ["getParts", "setParts"] as const) {
          const memory = yield* ResponseCache.makeMemory({ name: `custom-cache-${which}-${name}` })
          const cache = { ...memory, [which]: method }
          const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache: cache as never } })
          const exit = yield* Effect.exit(collect(executor.stream(ask)))
          assert.isTrue(Exit.isSuccess(exit), `${which} that ${name} failed the stream`)
          if (Exit.isSuccess(exit)) assert.strictEqual(textOf(exit.value), "a b", `${which} ${name}`)
        }
      }
    })
  )

  it.effect("a custom cache written as a class (getParts and setParts reading `this`) is called as its methods", () =>
    Effect.gen(function* () {
      const memory = yield* ResponseCache.makeMemory({ name: "custom-cache-class" })
      // A cache whose methods reach their state through `this`, as a class's do: taken off the object and called
      // alone, getParts and setParts read `undefined.parts`, a miss and a write lost, so nothing was ever served.
      class PartsCache {
        readonly parts = new Map<string, ReadonlyArray<StreamPart>>()
        readonly key = memory.key
        readonly getOrCompute = memory.getOrCompute
        getParts(key: string) {
          return Effect.sync(() => Option.fromUndefinedOr(this.parts.get(key)))
        }
        setParts(key: string, parts: ReadonlyArray<StreamPart>) {
          return Effect.sync(() => {
            this.parts.set(key, parts)
          })
        }
      }
      const cache = new PartsCache()
      let calls = 0
      const { executor } = yield* setup(
        {
          respond: () => {
            calls++
            return "a b"
          }
        },
        { guards: { cache: cache as never } }
      )
      assert.strictEqual(textOf(yield* collect(executor.stream(ask))), "a b")
      assert.strictEqual(cache.parts.size, 1, "the answer was not kept")
      assert.strictEqual(textOf(yield* collect(executor.stream(ask))), "a b")
      assert.strictEqual(calls, 1, "the kept answer was not served")
    })
  )

  it.effect("a custom cache's key that throws is the stream's defect naming the cache's key and the step", () =>
    Effect.gen(function* () {
      const memory = yield* ResponseCache.makeMemory({ name: "custom-cache-key-throws" })
      const cache = {
        ...memory,
        key: () => {
          throw new Error("key bug")
        }
      }
      const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
      const exit = yield* Effect.exit(collect(executor.stream(ask)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause))
      if (Exit.isFailure(exit)) {
        const defect = Cause.squash(exit.cause) as Error
        assert.include(defect.message, `the cache's key threw (step ${executor.provider.name}): Error: key bug`)
      }
    })
  )

  it.effect("a user rate limit or breaker that throws is the stream's defect naming it, as a call's is", () =>
    Effect.gen(function* () {
      const cases = [
        [
          {
            rateLimit: {
              acquire: () => {
                throw new Error("limit bug")
              }
            }
          },
          "the rate limit's acquire threw (step mock): Error: limit bug"
        ],
        [
          {
            breaker: {
              execute: () => Effect.never,
              admit: () => {
                throw new Error("breaker bug")
              }
            }
          },
          "the circuit breaker's admit threw (step mock): Error: breaker bug"
        ]
      ] as const
      for (const [guards, message] of cases) {
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: guards as never })
        const exit = yield* Effect.exit(collect(executor.stream(ask, { retry: { maxAttempts: 3, jitter: 0 } })))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), `${message}: ${String(exit)}`)
        if (Exit.isFailure(exit)) assert.include((Cause.squash(exit.cause) as Error).message, message)
        // Not its provider's failure (retried, then counted): one failure, of reason Unknown.
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 }, message)
      }
    })
  )

  // Named "the provider call failed with a value that is not an AiError": the provider's failure, blamed on a
  // provider that was never asked, where a call names the guard (`step.ts`).
  it.effect("a user rate limit or breaker failing with a value that is not an AiError is a ModelError naming it", () =>
    Effect.gen(function* () {
      const cases = [
        [(failure: unknown) => ({ rateLimit: { acquire: () => Effect.fail(failure) } }), "rate limit"],
        [
          (failure: unknown) => ({ breaker: { execute: () => Effect.never, admit: () => Effect.fail(failure) } }),
          "circuit breaker"
        ]
      ] as const
      for (const [guardsOf, named] of cases) {
        for (const failure of ["store down", undefined]) {
          const { executor } = yield* setup({ respond: () => "a b" }, { guards: guardsOf(failure) as never })
          const error = yield* Effect.flip(collect(executor.stream(ask, { retry: { maxAttempts: 3, jitter: 0 } })))
          assert.deepStrictEqual(
            error._tag === "ModelError" && [error.reason, error.cause, error.provider],
            ["Unknown", failure, executor.provider.name],
            named
          )
          assert.include(error.message, `the ${named} failed with a value that is not an AiError`)
          assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 }, named)
        }
      }
    })
  )

  // Its defect was made the provider's failure ("the provider stream failed unexpectedly"), which fell back to
  // the next step: a call passes a guard's defect on as its own, tried on no other step.
  it.effect("a user rate limit or breaker whose Effect dies is the stream's defect, as a call's is", () =>
    Effect.gen(function* () {
      const bug = new Error("guard bug")
      const cases = [
        [{ rateLimit: { acquire: () => Effect.die(bug) } }, "rate limit"],
        [{ breaker: { execute: () => Effect.die(bug), admit: () => Effect.die(bug) } }, "circuit breaker"]
      ] as const
      for (const [guards, named] of cases) {
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: guards as never })
        const fallback = { ...executor.provider, name: "fallback" }
        const steps = [{ provider: executor.provider }, { provider: fallback }]
        const call = yield* Effect.exit(executor.execute(ask))
        assert.isTrue(Exit.isFailure(call) && Cause.squash(call.cause) === bug, `call, ${named}: ${String(call)}`)
        const exit = yield* Effect.exit(collect(executor.stream(ask, { steps })))
        assert.isTrue(Exit.isFailure(exit) && Cause.squash(exit.cause) === bug, `stream, ${named}: ${String(exit)}`)
        // Each counted once, as Unknown; the fallback never tried.
        const stats = yield* executor.stats()
        assert.deepStrictEqual(stats.failuresByReason, { Unknown: 2 }, named)
        assert.deepStrictEqual([stats.total, stats.fallbacks], [2, 0], named)
      }
    })
  )

  // It was "the provider stream was interrupted", blamed on a provider never asked; a call's is the guard's.
  it.effect("a user rate limit or breaker that interrupts itself is a ModelError naming it, as a call's is", () =>
    Effect.gen(function* () {
      const cases = [
        [{ rateLimit: { acquire: () => Effect.interrupt } }, "the rate limit"],
        [{ breaker: { execute: () => Effect.interrupt, admit: () => Effect.interrupt } }, "the circuit breaker"]
      ] as const
      for (const [guards, named] of cases) {
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: guards as never })
        const error = yield* Effect.flip(collect(executor.stream(ask)))
        assert.deepStrictEqual(error._tag === "ModelError" && [error.reason, error.message, error.provider], [
          "Unknown",
          `${named} was interrupted`,
          executor.provider.name
        ])
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 }, named)
      }
    })
  )

  it.effect("a user breaker's record that throws or returns no Effect is the stream's defect naming it", () =>
    Effect.gen(function* () {
      const cases = [
        [
          () => {
            throw new Error("record bug")
          },
          "the circuit breaker's record threw (step mock): Error: record bug"
        ],
        [() => 42, "the circuit breaker's record must return an Effect, got"]
      ] as const
      for (const [record, message] of cases) {
        const breaker = { execute: () => Effect.never, admit: () => Effect.succeed({ record }) }
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: { breaker } as never })
        const exit = yield* Effect.exit(collect(executor.stream(ask)))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), `${message}: ${String(exit)}`)
        if (Exit.isFailure(exit)) assert.include((Cause.squash(exit.cause) as Error).message, message)
        // Counted as a call's breaker's defect is: Unknown (not Interrupted: nobody interrupted it).
        const stats = yield* executor.stats()
        assert.deepStrictEqual([stats.inFlight, stats.failuresByReason], [0, { Unknown: 1 }], message)
      }
    })
  )

  // An admit answering no permit left the stream unrecorded on its breaker, silently: the breaker never
  // saw a failure of the provider (its circuit never opened) nor, half-open, its probe's answer.
  it.effect("a user breaker's admit that answers no permit is the stream's defect naming it", () =>
    Effect.gen(function* () {
      for (const permit of [undefined, null, {}, { record: 1 }]) {
        const breaker = { execute: () => Effect.never, admit: () => Effect.succeed(permit) }
        const { executor, control } = yield* setup({ respond: () => "a b" }, { guards: { breaker } as never })
        const exit = yield* Effect.exit(collect(executor.stream(ask, { retry: { maxAttempts: 3, jitter: 0 } })))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), `${String(permit)}: ${String(exit)}`)
        if (Exit.isFailure(exit)) {
          assert.include(
            (Cause.squash(exit.cause) as Error).message,
            "the circuit breaker's admit must answer a permit { record } (step mock), got"
          )
        }
        // Refused before its provider was asked; counted as a breaker's defect is, not retried.
        assert.strictEqual(yield* control.calls, 0)
        const stats = yield* executor.stats()
        assert.deepStrictEqual([stats.inFlight, stats.failuresByReason], [0, { Unknown: 1 }])
      }
    })
  )

  // A record that failed or died was dropped without a word: the breaker's store (a Redis down) missed
  // every outcome, and nobody was told.
  it.effect("a user breaker's record that fails is logged naming it, and the stream answers as it did", () =>
    Effect.gen(function* () {
      for (const failed of [Effect.fail("store down"), Effect.die(new Error("record bug"))]) {
        const logs = yield* captureLogs
        let records = 0
        const record = () => {
          records++
          return failed
        }
        const breaker = { execute: () => Effect.never, admit: () => Effect.succeed({ record }) }
        const { executor } = yield* setup({ respond: () => "a b" }, { guards: { breaker } as never })
        for (let i = 0; i < 2; i++) {
          const parts = yield* collect(executor.stream(ask)).pipe(Effect.provide(logs.layer))
          assert.strictEqual(parts.at(-1)?._tag, "Finish")
        }
        assert.strictEqual(records, 2)
        const warnings = logs.lines.filter((line) => line.includes("the circuit breaker's record failed"))
        // Once per breaker: a store that is down does not log a line per stream.
        assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
        assert.include(warnings[0], "(step mock)")
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, {})
      }
    })
  )

  // A custom cache whose read or write never ends held the stream for good: its read came before the
  // total deadline was armed, its write after the Finish, which the total deadline no longer cuts.
  it.effect("a custom cache's getParts that never ends is cut by the total deadline, as a call's lookup is", () =>
    Effect.gen(function* () {
      const cache = yield* failingCache("custom-cache-hung-read", Effect.never)
      const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
      const fiber = yield* Effect.forkChild(Effect.flip(collect(executor.stream(ask, { totalTimeout: "1 second" }))), {
        startImmediately: true
      })
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(done, "the stream waited for its cache's read past its total deadline")
      const error = yield* Fiber.join(fiber)
      assert.deepStrictEqual(error._tag === "TimeoutError" && error.limit, "total")
    })
  )

  it.effect("a custom cache's setParts that never ends does not hold a whole stream past its total deadline", () =>
    Effect.gen(function* () {
      const memory = yield* ResponseCache.makeMemory({ name: "custom-cache-hung-write" })
      const cache = { ...memory, setParts: () => Effect.never }
      const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
      const fiber = yield* Effect.forkChild(collect(executor.stream(ask, { totalTimeout: "1 second" })), {
        startImmediately: true
      })
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(done, "the stream waited for its cache's write past its total deadline")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(textOf(parts), "a b")
      assert.strictEqual(parts.at(-1)?._tag, "Finish")
    })
  )

  it.effect("a cache's getParts that is interrupted is not taken for a miss", () =>
    Effect.gen(function* () {
      const cache = yield* failingCache("custom-cache-interrupted", Effect.interrupt)
      const { executor } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
      const exit = yield* Effect.exit(collect(executor.stream(ask)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterrupts(exit.cause))
    })
  )

  it.effect("a step's prepare runs once for its request: the span, the cache key and the step's retries share it", () =>
    Effect.gen(function* () {
      const cache = yield* ResponseCache.makeMemory({ name: "prepare-once" })
      const { executor } = yield* setup({}, { guards: { cache } })
      let calls = 0
      const flaky: Service = {
        name: "a",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          ++calls === 1
            ? Stream.fail(new ModelError({ reason: "Overloaded", message: "busy", provider: "a" }))
            : Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text: "ok" }, finishOf("a"))
      }
      let prepared = 0
      const prepare = (r: GenerateRequest) => {
        prepared++
        return { ...r, system: "be brief" }
      }
      const collecting = Tracer.make({ span: (options) => new Tracer.NativeSpan(options) })
      const fiber = yield* Effect.forkChild(
        collect(
          executor.stream(ask, { steps: [{ provider: flaky, prepare }], retry: { initialDelay: 10, jitter: 0 } })
        ).pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, collecting))
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(textOf(yield* Fiber.join(fiber)), "ok")
      assert.strictEqual(calls, 2, "retried once")
      assert.strictEqual(prepared, 1)
    })
  )

  it.effect(
    "a resumed attempt that fails while text it sent may still be a repeat: that text is not delivered, the partial text is what was",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup()
        const delivered = "The quick brown fox jumps"
        // The continuation starts repeating the delivered text, then fails: what it sent is held back as a repeat.
        const repeatsThenFails: Service = {
          ...cutAfter("b", "brown fox"),
          stream: () =>
            Stream.concat(
              Stream.make<[StreamPart]>({ _tag: "TextDelta", text: "brown fox" }),
              Stream.fail(new ModelError({ reason: "Overloaded", message: "dropped", provider: "b" }))
            )
        }
        const seen: Array<string> = []
        const error = yield* failureAfterTexts(
          executor.stream(ask, {
            steps: [{ provider: cutAfter("a", delivered) }, { provider: repeatsThenFails }],
            resume: true
          }),
          seen
        )
        assert.strictEqual(seen.join(""), delivered)
        assert.deepStrictEqual(error._tag === "StreamInterruptedError" && [error.partialText, error.provider], [
          delivered,
          "b"
        ])
      })
  )
})

describe("Executor.stream: a step cut by the total deadline", () => {
  // A call's step cut by its total deadline counts a timeout; a stream's was counted a `Timeout`
  // failure without one when no attempt was running (a retry's hook) or its upstream had ended.
  for (const [when, mock, options, consume] of [
    [
      "between two attempts (a retry's onRetry hook)",
      { script: [Outcome.fail("Overloaded", { latency: "10 millis" }), Outcome.succeed("ok")] },
      {
        totalTimeout: "1 second",
        retry: { maxAttempts: 3, initialDelay: "500 millis", jitter: 0 },
        onRetry: () => Effect.sleep("2 seconds")
      },
      () => Effect.void
    ]
  ] as const) {
    it.effect(`${when} counts a timeout, as a call's does`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup(mock)
        const fiber = yield* Effect.forkChild(Effect.flip(Stream.runForEach(executor.stream(ask, options), consume)))
        yield* TestClock.adjust("1 minute")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
        const stats = yield* executor.stats()
        assert.deepStrictEqual([stats.failuresByReason, stats.timeouts], [{ Timeout: 1 }, 1])
      })
    )
  }
})

describe("Executor.stream: a total deadline passing once the whole answer is read ahead", () => {
  // The caller got a TimeoutError and its step counted a failure, while the breaker recorded the
  // provider's success: the answer, whole and paid for, was in memory, its upstream closed.
  it.effect(
    "cuts nothing: the consumer gets the answer whole, its step counts a success (its breaker records one)",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "a b c d", chunkDelay: "100 millis" })
        const seen: Array<string> = []
        // The answer is read ahead by 400 ms; the consumer takes 1 s a part, past the 700 ms deadline.
        const fiber = yield* Effect.forkChild(
          Stream.runForEach(executor.stream(ask, { totalTimeout: "700 millis" }), (p) =>
            Effect.andThen(
              Effect.sync(() => seen.push(p._tag === "TextDelta" ? p.text : p._tag)),
              Effect.sleep("1 second")
            )
          )
        )
        yield* TestClock.adjust("1 minute")
        yield* Fiber.join(fiber)
        assert.deepStrictEqual(seen, ["a ", "b ", "c ", "d", "Finish"])
        const stats = yield* executor.stats()
        assert.deepStrictEqual([stats.successes, stats.failuresByReason, stats.timeouts], [1, {}, 0])
      })
  )

  it.effect("still cuts a stream whose Finish has not arrived, its read-ahead text not delivered", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ respond: () => "a b c d e f", chunkDelay: "100 millis" })
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(
        failureAfterTexts(
          executor.stream(ask, { totalTimeout: "350 millis" }).pipe(Stream.tap(() => Effect.sleep("1 second"))),
          seen
        )
      )
      yield* TestClock.adjust("1 minute")
      const error = yield* Fiber.join(fiber)
      assert.deepStrictEqual(error._tag === "TimeoutError" && [error.limit, error.partialText], [
        "total",
        seen.join("")
      ])
      assert.strictEqual((yield* executor.stats()).timeouts, 1)
    })
  )
})

describe("Executor.stream: an upstream whose close fails after its Finish", () => {
  // Closed at its Finish by the producer, an upstream whose finalizer failed ended the stream with a
  // StreamInterruptedError after the consumer had its Finish (two outcomes), counted a failure.
  it.effect("ends complete: the consumer's Finish is the stream's end, counted a success", () =>
    Effect.gen(function* () {
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          Stream.make<[StreamPart, StreamPart]>(
            { _tag: "TextDelta", text: "a" },
            { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "p", model: "m" }
          ).pipe(Stream.ensuring(Effect.die("the connection's release threw")))
      }
      yield* withExecutorOver(provider, (executor) =>
        Effect.gen(function* () {
          const tags: Array<string> = []
          const exit = yield* Effect.exit(
            Stream.runForEach(executor.stream(ask), (p) => Effect.sync(() => tags.push(p._tag)))
          )
          assert.deepStrictEqual(tags, ["TextDelta", "Finish"])
          assert.isTrue(Exit.isSuccess(exit), String(Exit.isFailure(exit) && exit.cause))
          const stats = yield* executor.stats()
          assert.deepStrictEqual([stats.successes, stats.failuresByReason], [1, {}])
        })
      )
    })
  )
})

describe("Executor.stream: a deadline after a tool call and no text", () => {
  // The consumer holds the call: a TimeoutError without text reads as retryable (`isRetryable`,
  // `shouldFallback`), so an outer retry would run the stream again and deliver the call twice.
  it.effect("ends the stream with an error no retry restarts, carrying the deadline's reason", () =>
    Effect.gen(function* () {
      const call = { id: "c1", name: "lookup", arguments: "{}" }
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () => Stream.concat(Stream.make<[StreamPart]>({ _tag: "ToolCall", call }), Stream.never)
      }
      const tags: Array<string> = []
      yield* withExecutorOver(provider, (executor) =>
        Effect.gen(function* () {
          const fiber = yield* Effect.forkChild(
            Effect.flip(
              Stream.runForEach(executor.stream(ask, { idleTimeout: "1 second" }), (p) =>
                Effect.sync(() => tags.push(p._tag))
              )
            )
          )
          yield* TestClock.adjust("1 second")
          const error = yield* Fiber.join(fiber)
          assert.deepStrictEqual(tags, ["ToolCall"])
          assert.isFalse(isRetryable(error), `${error._tag} is retryable`)
          assert.isFalse(shouldFallback(error), `${error._tag} falls back`)
          assert.deepStrictEqual(
            error._tag === "StreamInterruptedError" && [error.partialText, error.provider, error.reason],
            ["", "p", "Timeout"]
          )
          assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Timeout: 1 })
        })
      )
    })
  )
})

describe("Executor.stream: the release grace of an upstream that closes at once", () => {
  // The grace an upstream's close is waited for is a timer only for a close that does not end at once:
  // armed at every Finish, it made a lane and a sleeping fiber per quiet stream.
  it.effect("arms no timer", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(StatsModule.layer, scope)
      const stats = Context.get(context, StatsModule.Stats)
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
      const streams = Streams.make({
        engine,
        defaults: { firstChunkTimeout: undefined, idleTimeout: undefined, totalTimeout: undefined }
      })
      const target = {
        name: "p",
        stream: () =>
          Stream.make<[StreamPart, StreamPart]>(
            { _tag: "TextDelta", text: "a" },
            { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "p", model: "m" }
          )
      }
      const plan = {
        steps: [{ target, name: "p", timeout: undefined }],
        firstChunkTimeout: undefined,
        idleTimeout: undefined,
        totalTimeout: undefined
      }
      const parts = yield* collect(streams.run(plan as never, { prompt: "x" }))
      assert.strictEqual(textOf(parts), "a")
      assert.deepStrictEqual([engine.lanes.lanes(), engine.lanes.size()], [0, 0])
      yield* Scope.close(scope, Exit.void)
    })
  )
})

describe("Executor.stream: a consumer that leaves during a retry's onRetry hook", () => {
  // The hook, interrupted by the stream's finalizer, armed the retry's backoff after the finalizer
  // had disposed of it: a watch left on the deadline lanes until its delay passed.
  it.effect("leaves nothing on the deadline lanes", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(StatsModule.layer, scope)
      const stats = Context.get(context, StatsModule.Stats)
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
      const streams = Streams.make({
        engine,
        defaults: { firstChunkTimeout: undefined, idleTimeout: undefined, totalTimeout: undefined }
      })
      const target = {
        name: "p",
        stream: () => Stream.fail(new ModelError({ reason: "Overloaded", message: "busy", provider: "p" }))
      }
      const retry = Result.getOrThrow(decodeRetry({ maxAttempts: 3, initialDelay: "1 hour", jitter: 0 }))
      const plan = {
        steps: [{ target, name: "p", timeout: undefined, retry }],
        firstChunkTimeout: undefined,
        idleTimeout: undefined,
        totalTimeout: undefined,
        onRetry: () => Effect.never
      }
      const consumer = yield* Effect.forkChild(Stream.runDrain(streams.run(plan as never, { prompt: "x" })))
      yield* TestClock.adjust("1 second")
      assert.isUndefined(consumer.pollUnsafe(), "in the hook")
      yield* Fiber.interrupt(consumer)
      assert.strictEqual(engine.lanes.size(), 0)
      yield* Scope.close(scope, Exit.void)
    })
  )
})

describe("Executor.stream: a consumer that leaves during a retry's onRetry hook, the deadline lanes closed", () => {
  // The hook, interrupted by the stream's finalizer, armed the retry's backoff on lanes already closed,
  // whose immediate "shutdown" ending ended the stream first: its step was left without an outcome.
  it.effect("counts its step as Interrupted", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(StatsModule.layer, scope)
      const stats = Context.get(context, StatsModule.Stats)
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
      const lanesScope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(lanesScope))
      const streams = Streams.make({
        engine: { ...engine, lanes },
        defaults: { firstChunkTimeout: undefined, idleTimeout: undefined, totalTimeout: undefined }
      })
      const target = {
        name: "lanes-closed",
        stream: () => Stream.fail(new ModelError({ reason: "Overloaded", message: "busy", provider: "lanes-closed" }))
      }
      const retry = Result.getOrThrow(decodeRetry({ maxAttempts: 3, initialDelay: "1 hour", jitter: 0 }))
      const plan = {
        steps: [{ target, name: "lanes-closed", timeout: undefined, retry }],
        firstChunkTimeout: undefined,
        idleTimeout: undefined,
        totalTimeout: undefined,
        onRetry: () => Effect.never
      }
      const consumer = yield* Effect.forkChild(Stream.runDrain(streams.run(plan as never, { prompt: "x" })))
      yield* TestClock.adjust("1 second")
      assert.isUndefined(consumer.pollUnsafe(), "in the hook")
      yield* Scope.close(lanesScope, Exit.void)
      yield* Fiber.interrupt(consumer)
      const counted = yield* stats.snapshot({ provider: "lanes-closed" })
      assert.deepStrictEqual([counted.total, counted.failuresByReason], [1, { Interrupted: 1 }])
      yield* Scope.close(scope, Exit.void)
    })
  )
})

describe("Executor.stream: resume after a provider's content filter", () => {
  // A call cut by its provider's content filter does not fall back (`shouldFallback`): a stream's
  // continuation on the next provider went on with the answer the filter had stopped.
  it.effect("is not resumed: the stream ends with its partial text, the next step never asked", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [
          Outcome.fail("ContentFilter", { afterChunks: 2, text: "alpha beta gamma" }),
          Outcome.succeed("gamma delta")
        ]
      })
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const seen: Array<string> = []
      const error = yield* failureAfterTexts(
        executor.stream(ask, { steps: [{ provider: a }, { provider: b }], resume: true }),
        seen
      )
      assert.deepStrictEqual(
        error._tag === "StreamInterruptedError" && [error.partialText, error.provider, error.reason],
        ["alpha beta ", "a", "ContentFilter"]
      )
      assert.strictEqual(seen.join(""), "alpha beta ")
      assert.strictEqual(yield* control.calls, 1)
    })
  )
})

describe("Executor.stream: a custom cache's getParts answering no whole stream", () => {
  // A live provider's parts are checked; a custom cache's were replayed as they came: a stream
  // without its Finish ended cleanly, a string was replayed a character a part, `undefined` threw.
  const finish: StreamPart = {
    _tag: "Finish",
    finishReason: "stop",
    usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
    provider: "p",
    model: "m"
  }
  for (const [name, answer] of [
    ["parts without their Finish", [{ _tag: "TextDelta", text: "half" }]],
    ["parts after the Finish", [{ _tag: "TextDelta", text: "x" }, finish, { _tag: "TextDelta", text: "y" }]],
    ["a malformed part", [{ _tag: "TextDelta" }, finish]],
    ["a string", "abc"],
    ["undefined", undefined]
  ] as const) {
    it.effect(`${name}: taken for a miss, the provider's stream answers`, () =>
      Effect.gen(function* () {
        const memory = yield* ResponseCache.makeMemory({ name: `custom-parts-${name}` })
        const cache = { ...memory, getParts: () => Effect.succeed(Option.some(answer as never)) }
        const { executor, control } = yield* setup({ respond: () => "a b" }, { guards: { cache } })
        const parts = yield* collect(executor.stream(ask))
        assert.strictEqual(textOf(parts), "a b")
        assert.strictEqual(parts.at(-1)?._tag, "Finish")
        assert.strictEqual(yield* control.calls, 1)
      })
    )
  }
})

describe("Executor.stream: an upstream that stays open after its Finish", () => {
  // As documented: the stream ends at the Finish and the upstream is closed then, not when a slow
  // consumer reaches the Finish (its connection held meanwhile, up to the total deadline).
  it.effect("is closed when its Finish arrives, whatever the consumer's pace", () =>
    Effect.gen(function* () {
      const finish: StreamPart = {
        _tag: "Finish",
        finishReason: "stop",
        usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
        provider: "p",
        model: "m"
      }
      let closed = false
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          Stream.concat(
            Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text: "a" }, finish),
            Stream.never
          ).pipe(
            Stream.ensuring(
              Effect.sync(() => {
                closed = true
              })
            )
          )
      }
      yield* withExecutorOver(provider, (executor) =>
        Effect.gen(function* () {
          const release = yield* Deferred.make<void>()
          const fiber = yield* Effect.forkChild(Stream.runForEach(executor.stream(ask), () => Deferred.await(release)))
          yield* TestClock.adjust("1 second")
          const closedBeforeRead = closed
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(fiber)
          assert.isTrue(closedBeforeRead, "the upstream was held open until the consumer read its Finish")
        })
      )
    })
  )
})

describe("Executor.stream: a provider's own StreamInterruptedError naming no provider", () => {
  // Every other failure after text names the step's provider; this one named none.
  it.effect("names the step's provider", () =>
    Effect.gen(function* () {
      const provider: Service = {
        name: "p",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: () =>
          Stream.concat(
            Stream.make<[StreamPart]>({ _tag: "TextDelta", text: "a" }),
            Stream.fail(new StreamInterruptedError({ partialText: "a", reason: "Transport", detail: "reset" }))
          )
      }
      const error = yield* withExecutorOver(provider, (executor) => Effect.flip(collect(executor.stream(ask))))
      assert.deepStrictEqual(
        error._tag === "StreamInterruptedError" && [error.partialText, error.provider, error.reason, error.detail],
        ["a", "p", "Transport", "reset"]
      )
    })
  )
})

describe("Executor.stream: resume after a request every provider refuses", () => {
  // A call refused so (`InvalidRequest` not about the model, `TooLarge` not about the answer) does
  // not fall back (`shouldFallback`): a continuation, the same request and longer, would be refused too.
  for (const reason of ["InvalidRequest", "TooLarge"] as const) {
    it.effect(
      `${reason} mid-stream is not resumed: the stream ends with its partial text, the next step never asked`,
      () =>
        Effect.gen(function* () {
          const { executor, control } = yield* setup({
            script: [Outcome.fail(reason, { afterChunks: 2, text: "alpha beta gamma" }), Outcome.succeed("gamma delta")]
          })
          const a = { ...executor.provider, name: "a" }
          const b = { ...executor.provider, name: "b" }
          const seen: Array<string> = []
          const error = yield* failureAfterTexts(
            executor.stream(ask, { steps: [{ provider: a }, { provider: b }], resume: true }),
            seen
          )
          assert.deepStrictEqual(
            error._tag === "StreamInterruptedError" && [error.partialText, error.provider, error.reason],
            ["alpha beta ", "a", reason]
          )
          assert.strictEqual(seen.join(""), "alpha beta ")
          assert.strictEqual(yield* control.calls, 1)
        })
    )
  }
})

describe("Executor.stream: a resumed step's rate limit", () => {
  // The continuation carries the partial answer and the instruction: its estimate was the original request's.
  it.effect("takes the tokens of the continuation it sends, not of the original request", () =>
    Effect.gen(function* () {
      const taken: Array<[string, number | undefined]> = []
      const limits = Layer.succeed(RateLimits, {
        acquire: (key, cost) => Effect.sync(() => void taken.push([key, cost?.tokens])),
        limitsOf: () => undefined
      })
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(
            Mock.layer({
              script: [
                Outcome.fail("Overloaded", { afterChunks: 2, text: "alpha beta gamma" }),
                Outcome.succeed("gamma")
              ]
            })
          ),
          Layer.provideMerge(limits)
        )
      )
      const executor = Context.get(context, Executor.Executor)
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const parts = yield* collect(executor.stream(ask, { steps: [{ provider: a }, { provider: b }], resume: true }))
      assert.strictEqual(textOf(parts), "alpha beta gamma")
      const continuation = resumeRequest(ask, "alpha beta ", defaultInstruction)
      assert.isAbove(tokensOf(continuation), tokensOf(ask))
      assert.deepStrictEqual(taken, [
        ["a", tokensOf(ask)],
        ["b", tokensOf(continuation)]
      ])
    })
  )
})

describe("Executor.stream: a step's rate limit with a prepare", () => {
  // The estimate was the caller's request's: a step that adds a long system prompt and a token
  // budget (a domain's) took a fraction of the tokens it sends.
  it.effect("takes the tokens of the request the step sends, its prepare applied, on every attempt", () =>
    Effect.gen(function* () {
      const taken: Array<[string, number | undefined]> = []
      const limits = Layer.succeed(RateLimits, {
        acquire: (key, cost) => Effect.sync(() => void taken.push([key, cost?.tokens])),
        limitsOf: () => undefined
      })
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(Mock.layer({ script: [Outcome.fail("Overloaded"), Outcome.succeed("fine")] })),
          Layer.provideMerge(limits)
        )
      )
      const executor = Context.get(context, Executor.Executor)
      const a = { ...executor.provider, name: "a" }
      const b = { ...executor.provider, name: "b" }
      const prepare = (r: GenerateRequest): GenerateRequest => ({
        ...r,
        system: "be terse ".repeat(200),
        maxTokens: 700
      })
      const parts = yield* collect(
        executor.stream(ask, {
          steps: [
            { provider: a, prepare },
            { provider: b, prepare }
          ]
        })
      )
      assert.strictEqual(textOf(parts), "fine")
      const sent = prepare(ask)
      assert.isAbove(tokensOf(sent), tokensOf(ask) + 700)
      assert.deepStrictEqual(taken, [
        ["a", tokensOf(sent)],
        ["b", tokensOf(sent)]
      ])
    })
  )
})

describe("Executor.stream: an upstream whose release never ends", () => {
  // A provider stream's own cleanup (a connection release) that never ends held the consumer for good:
  // the stream's end, a deadline's cut, a consumer leaving early all waited for the upstream's close.
  const finish: StreamPart = { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "p", model: "m" }
  // Its release as a stream's `ensuring` (run by the fiber reading it) or a resource's (run when its scope closes).
  const hung = (
    parts: Stream.Stream<StreamPart>,
    released: { count: number },
    kind: "ensuring" | "resource"
  ): Service => {
    const release = Effect.andThen(
      Effect.sync(() => released.count++),
      Effect.never
    )
    return {
      name: "p",
      defaultModel: "m",
      generate: () => Effect.die("unused"),
      embed: () => Effect.die("unused"),
      stream: () =>
        kind === "ensuring"
          ? Stream.ensuring(parts, release)
          : Stream.unwrap(
              Effect.as(
                Effect.acquireRelease(Effect.void, () => release),
                parts
              )
            )
    }
  }
  const within = <A, E>(fiber: Fiber.Fiber<A, E>) =>
    Effect.gen(function* () {
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      const early = fiber.pollUnsafe()
      if (early === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(early, "the consumer waited for the upstream's release past its grace")
      return yield* Fiber.join(fiber)
    })

  for (const kind of ["ensuring", "resource"] as const) {
    it.effect(`${kind}: a whole answer reaches its end within the release's grace, counted a success`, () =>
      Effect.gen(function* () {
        const released = { count: 0 }
        const provider = hung(
          Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text: "a" }, finish),
          released,
          kind
        )
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(collect(executor.stream(ask)), { startImmediately: true })
            const parts = yield* within(fiber)
            assert.strictEqual(textOf(parts), "a")
            assert.strictEqual(released.count, 1)
            const stats = yield* executor.stats()
            // Still in flight: its provider's release has not ended (as a call's that ignores its interruption).
            assert.deepStrictEqual([stats.successes, stats.failuresByReason, stats.inFlight], [1, {}, 1])
          })
        )
      })
    )

    it.effect(`${kind}: an idle deadline's TimeoutError reaches the consumer within the release's grace`, () =>
      Effect.gen(function* () {
        const released = { count: 0 }
        const provider = hung(
          Stream.concat(Stream.make<[StreamPart]>({ _tag: "TextDelta", text: "a" }), Stream.never),
          released,
          kind
        )
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(
              Effect.flip(collect(executor.stream(ask, { idleTimeout: "1 second" }))),
              {
                startImmediately: true
              }
            )
            yield* TestClock.adjust("1 second")
            const error = yield* within(fiber)
            assert.deepStrictEqual(error._tag === "TimeoutError" && [error.limit, error.partialText], ["idle", "a"])
            assert.strictEqual(released.count, 1)
          })
        )
      })
    )

    it.effect(`${kind}: a step cut at its first-chunk deadline falls back within the release's grace`, () =>
      Effect.gen(function* () {
        const released = { count: 0 }
        const stuck = hung(Stream.never, released, kind)
        const backup: Service = {
          ...stuck,
          name: "backup",
          stream: () => Stream.make<[StreamPart, StreamPart]>({ _tag: "TextDelta", text: "from backup" }, finish)
        }
        yield* withExecutorOver(stuck, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(
              collect(
                executor.stream(ask, {
                  steps: [{ provider: stuck }, { provider: backup }],
                  firstChunkTimeout: "1 second"
                })
              ),
              { startImmediately: true }
            )
            yield* TestClock.adjust("1 second")
            assert.strictEqual(textOf(yield* within(fiber)), "from backup")
          })
        )
      })
    )

    it.effect(`${kind}: a consumer that takes the first chunk and leaves is let go within the release's grace`, () =>
      Effect.gen(function* () {
        const released = { count: 0 }
        const provider = hung(
          Stream.concat(Stream.make<[StreamPart]>({ _tag: "TextDelta", text: "a" }), Stream.never),
          released,
          kind
        )
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.forkChild(collect(Stream.take(executor.stream(ask), 1)), {
              startImmediately: true
            })
            assert.strictEqual(textOf(yield* within(fiber)), "a")
            assert.strictEqual(released.count, 1)
          })
        )
      })
    )

    it.effect(`${kind}: an interrupted consumer is let go within the release's grace`, () =>
      Effect.gen(function* () {
        const released = { count: 0 }
        const provider = hung(
          Stream.concat(Stream.make<[StreamPart]>({ _tag: "TextDelta", text: "a" }), Stream.never),
          released,
          kind
        )
        yield* withExecutorOver(provider, (executor) =>
          Effect.gen(function* () {
            const consumer = yield* Effect.forkChild(collect(executor.stream(ask)), { startImmediately: true })
            yield* Effect.yieldNow
            const interrupting = yield* Effect.forkChild(Fiber.interrupt(consumer), { startImmediately: true })
            yield* within(interrupting)
            assert.strictEqual(released.count, 1)
          })
        )
      })
    )
  }
})

describe("Executor.stream: a user breaker whose record does not end", () => {
  it.effect("the stream ends after RELEASE_GRACE, with its answer; the record goes on in the background", () => {
    // Let go when the test ends, pass or fail, so nothing is left waiting.
    const stuck = Deferred.makeUnsafe<void>()
    return Effect.gen(function* () {
      const recording = yield* Ref.make(0)
      const breaker: CircuitBreaker.Service = {
        ...(yield* CircuitBreaker.makeMemory()),
        admit: (key) =>
          Effect.succeed({
            key,
            probe: false,
            record: () =>
              Effect.andThen(
                Ref.update(recording, (n) => n + 1),
                Deferred.await(stuck)
              )
          })
      }
      const { executor } = yield* setup({ respond: () => "a b c" }, { guards: { breaker } })
      const fiber = yield* Effect.forkChild(collect(executor.stream(ask)))
      yield* Effect.yieldNow
      yield* TestClock.adjust("999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      assert.strictEqual(yield* Ref.get(recording), 1)
      yield* TestClock.adjust("1 millis")
      for (let i = 0; i < 10 && fiber.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
      assert.isDefined(fiber.pollUnsafe(), "the stream waited for ever for its breaker's record")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(textOf(parts), "a b c")
    }).pipe(Effect.ensuring(Deferred.succeed(stuck, undefined)))
  })
})

describe("Executor.stream: a self-bounded breaker whose record dies", () => {
  it.effect(
    "the attempt's scopes close all the same: its upstream's resource is let go before the consumer leaves",
    () =>
      Effect.gen(function* () {
        const breaker: CircuitBreaker.Service = {
          ...(yield* CircuitBreaker.makeMemory()),
          admit: (key) => Effect.succeed({ key, probe: false, record: () => Effect.die("record died") })
        }
        // Forced into this library's own breakers' path (`selfBounded`: its record run as it is).
        selfBounded.add(breaker)
        let released = 0
        const provider: Service = {
          name: "p",
          defaultModel: "m",
          generate: () => Effect.die("unused"),
          embed: () => Effect.die("unused"),
          stream: () =>
            Stream.unwrap(
              Effect.as(
                Effect.acquireRelease(Effect.void, () => Effect.sync(() => released++)),
                Stream.fail(new ModelError({ reason: "InvalidRequest", provider: "p", message: "no" }))
              )
            )
        }
        const context = yield* Layer.build(
          Executor.layerWithStats({ guards: { breaker } }).pipe(
            Layer.provideMerge(Layer.succeed(ModelProvider, provider))
          )
        )
        const executor = Context.get(context, Executor.Executor)
        // The consumer keeps the stream's scope open after its end.
        const scope = yield* Scope.make()
        const pull = yield* Scope.provide(Stream.toPull(executor.stream(ask)), scope)
        const first = yield* Effect.exit(pull)
        const before = released
        yield* Scope.close(scope, Exit.void)
        assert.isTrue(Exit.isFailure(first) && Cause.hasDies(first.cause), "the record's defect ends the stream")
        assert.strictEqual(before, 1, "the upstream's resource was held until the consumer left")
      })
  )
})
