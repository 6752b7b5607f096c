import { assert, describe, it } from "@effect/vitest"
import { Chunk, Duration, Effect, Exit, Fiber, Metric, Option, Ref, Stream, TestClock } from "effect"
import type { AiError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import { Dedupe } from "../src/internal/streaming.js"
import * as Metrics from "../src/Metrics.js"
import type { GenerateRequest, StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import { Outcome } from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Stats from "../src/Stats.js"
import * as Streaming from "../src/Streaming.js"

let counter = 0
const uniqueName = (base: string) => `${base}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const setup = (mocks: ReadonlyArray<Mock.Options>, options?: Streaming.Options) =>
  Effect.gen(function* () {
    const stats = yield* Stats.make
    const built = yield* Effect.forEach(mocks, (m) => Mock.make({ ...m, name: uniqueName(m.name ?? "mock") }))
    const streaming = Streaming.makeWith({ stats, provider: built[0]!.provider, options })
    return {
      streaming,
      stats,
      providers: built.map((b) => b.provider),
      controls: built.map((b) => b.control),
      steps: built.map((b): Streaming.Step => ({ provider: b.provider }))
    }
  })

const texts = (parts: ReadonlyArray<StreamPart>): ReadonlyArray<string> =>
  parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : []))

/** Runs a stream in a fiber, recording each part as it reaches the consumer. */
const consume = (stream: Stream.Stream<StreamPart, AiError>) =>
  Effect.gen(function* () {
    const seen: Array<StreamPart> = []
    const fiber = yield* Effect.fork(Stream.runForEach(stream, (part) => Effect.sync(() => seen.push(part))))
    return { seen, fiber }
  })

const story = "The quick brown fox jumps over the lazy dog"

describe("Streaming.stream", () => {
  it.effect("streams text deltas and exactly one final Finish, counted as a success", () =>
    Effect.gen(function* () {
      const { streaming, stats, controls } = yield* setup([{ respond: () => story, chunkDelay: "10 millis" }])
      const fiber = yield* Effect.fork(Stream.runCollect(streaming.stream({ prompt: "x" })))
      yield* TestClock.adjust("1 second")
      const parts = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
      assert.strictEqual(texts(parts).join(""), story)
      assert.strictEqual(texts(parts).length, 9)
      assert.deepStrictEqual(
        parts.map((p) => p._tag).filter((t) => t === "Finish"),
        ["Finish"]
      )
      assert.strictEqual(parts[parts.length - 1]!._tag, "Finish")
      const snapshot = yield* stats.snapshot({ provider: controls[0]!.name })
      assert.strictEqual(snapshot.total, 1)
      assert.strictEqual(snapshot.successes, 1)
      assert.strictEqual(snapshot.inFlight, 0)
      assert.strictEqual(snapshot.latency.max, 80)
    })
  )

  it.effect("rejects an invalid request with InvalidRequest before any provider call", () =>
    Effect.gen(function* () {
      const { streaming, stats, controls } = yield* setup([{}])
      const error = yield* Effect.flip(Stream.runCollect(streaming.stream({ prompt: "x", temperature: 9 })))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(error._tag === "ModelError" && error.field, "temperature")
      assert.strictEqual(error._tag === "ModelError" && error.provider, controls[0]!.name)
      assert.strictEqual(yield* controls[0]!.calls, 0)
      const snapshot = yield* stats.snapshot({ provider: controls[0]!.name })
      assert.deepStrictEqual(snapshot.failuresByReason, { InvalidRequest: 1 })
    })
  )

  it.effect("collectText and collect concatenate the deltas", () =>
    Effect.gen(function* () {
      const { streaming } = yield* setup([{ respond: () => story }])
      assert.strictEqual(yield* Streaming.collectText(streaming.stream({ prompt: "x" })), story)
      const { finish, text } = yield* Streaming.collect(streaming.stream({ prompt: "x" }))
      assert.strictEqual(text, story)
      assert.strictEqual(finish?.finishReason, "stop")
    })
  )
})

describe("Streaming timeouts", () => {
  it.effect("a first-chunk timeout interrupts the provider and falls back to the next one", () =>
    Effect.gen(function* () {
      const { controls, steps, streaming } = yield* setup([
        { latency: "10 seconds", respond: () => "slow answer" },
        { latency: "100 millis", respond: () => "fast answer" }
      ])
      const { fiber, seen } = yield* consume(
        streaming.stream({ prompt: "x" }, { steps, firstChunkTimeout: "2 seconds" })
      )
      yield* TestClock.adjust("1999 millis")
      assert.strictEqual(yield* controls[1]!.calls, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[1]!.calls, 1)
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(fiber)
      assert.strictEqual(texts(seen).join(""), "fast answer")
      const finish = seen[seen.length - 1]
      assert.strictEqual(finish?._tag === "Finish" && finish.provider, controls[1]!.name)
    })
  )

  it.effect("an idle timeout mid-stream fails with the partial text and does not fall back by default", () =>
    Effect.gen(function* () {
      const { controls, steps, streaming } = yield* setup([
        { script: [Outcome.hang({ afterChunks: 3 })], respond: () => story, chunkDelay: "100 millis" },
        { respond: () => "other" }
      ])
      const { fiber, seen } = yield* consume(streaming.stream({ prompt: "x" }, { steps, idleTimeout: "1 second" }))
      yield* TestClock.adjust("200 millis")
      assert.deepStrictEqual(texts(seen), ["The ", "quick ", "brown "])
      // the stall began at 200 ms (the mock waits one chunk delay, then hangs): not yet
      yield* TestClock.adjust("999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "TimeoutError")
      if (error._tag !== "TimeoutError") return
      assert.strictEqual(error.limit, "idle")
      assert.strictEqual(Duration.toMillis(error.timeout), 1000)
      assert.strictEqual(error.partialText, "The quick brown ")
      assert.strictEqual(error.provider, controls[0]!.name)
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[1]!.calls, 0)
    })
  )

  it.effect("a slow consumer does not trip the idle timeout", () =>
    Effect.gen(function* () {
      const { streaming } = yield* setup([{ respond: () => story, chunkDelay: "100 millis" }])
      const fiber = yield* Effect.fork(
        streaming.stream({ prompt: "x" }, { idleTimeout: "500 millis" }).pipe(
          Stream.tap(() => Effect.sleep("2 seconds")),
          Stream.runCollect
        )
      )
      yield* TestClock.adjust("1 minute")
      const parts = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
      assert.strictEqual(texts(parts).join(""), story)
    })
  )

  it.effect("the total timeout ends the stream with the partial text and interrupts the provider", () =>
    Effect.gen(function* () {
      const { controls, streaming } = yield* setup([{ respond: () => story, chunkDelay: "1 second" }])
      const { fiber, seen } = yield* consume(
        streaming.stream({ prompt: "x" }, { totalTimeout: "3500 millis", idleTimeout: "5 seconds" })
      )
      yield* TestClock.adjust("3499 millis")
      assert.strictEqual(texts(seen).length, 4)
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, "The quick brown fox ")
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[0]!.inFlight, 0)
    })
  )

  it.live("no deadline timer outlives its stream (a pending timer would keep the process alive)", () =>
    Effect.gen(function* () {
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length
      const { streaming } = yield* setup([{ respond: () => story, chunkDelay: "1 millis" }])
      const before = timers()
      const text = yield* Streaming.collectText(
        streaming.stream(
          { prompt: "x" },
          { firstChunkTimeout: "1 minute", idleTimeout: "1 minute", totalTimeout: "1 hour" }
        )
      )
      assert.strictEqual(text, story)
      // sleepers are interrupted asynchronously, and other code may hold short timers: poll
      let left = timers()
      for (let i = 0; i < 50 && left > before; i++) {
        yield* Effect.sleep("10 millis")
        left = timers()
      }
      assert.isAtMost(left, before)
    })
  )

  it.effect("the total timeout also bounds retries and fallbacks before the first chunk", () =>
    Effect.gen(function* () {
      const { controls, steps, streaming } = yield* setup([{ script: [Outcome.hang()] }, { latency: "1 hour" }])
      const fiber = yield* Effect.fork(
        Stream.runCollect(
          streaming.stream({ prompt: "x" }, { steps, firstChunkTimeout: "2 seconds", totalTimeout: "3 seconds" })
        )
      )
      yield* TestClock.adjust("3 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, undefined)
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[1]!.interrupted, 1)
    })
  )
})

describe("Streaming failures after the first chunk", () => {
  it.effect("a provider failure mid-stream is a StreamInterruptedError with the partial text, never a restart", () =>
    Effect.gen(function* () {
      const { controls, stats, steps, streaming } = yield* setup([
        { script: [Outcome.fail("Overloaded", { afterChunks: 2 })], respond: () => story },
        { respond: () => "other" }
      ])
      const { fiber, seen } = yield* consume(streaming.stream({ prompt: "x" }, { steps, retry: true }))
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "StreamInterruptedError")
      if (error._tag !== "StreamInterruptedError") return
      assert.strictEqual(error.partialText, "The quick ")
      assert.strictEqual(error.reason, "Overloaded")
      assert.strictEqual(error.provider, controls[0]!.name)
      assert.strictEqual((error.cause as AiError)._tag, "ModelError")
      assert.deepStrictEqual(texts(seen), ["The ", "quick "])
      assert.strictEqual(yield* controls[0]!.calls, 1)
      assert.strictEqual(yield* controls[1]!.calls, 0)
      const snapshot = yield* stats.snapshot({ provider: controls[0]!.name })
      assert.deepStrictEqual(snapshot.failuresByReason, { StreamInterrupted: 1 })
      const aborted = yield* Metric.value(
        Metric.taggedWithLabels(Metrics.streamsAborted, stats.labels({ provider: controls[0]!.name }).exact)
      )
      assert.strictEqual(aborted.count, 1)
    })
  )

  it.effect("with resume, the next provider continues and the concatenated output has no duplicated text", () =>
    Effect.gen(function* () {
      const continuation = (request: GenerateRequest): string => {
        const messages = request.messages ?? []
        const partial = messages.find((m) => m.role === "assistant")?.content ?? ""
        // repeats the last delivered word, as models often do when asked to continue
        const words = partial.trimEnd().split(" ")
        const last = words[words.length - 1] ?? ""
        return story.slice(story.lastIndexOf(last, partial.length))
      }
      const { controls, stats, steps, streaming } = yield* setup([
        { script: [Outcome.fail("Transport", { afterChunks: 3 })], respond: () => story, chunkDelay: "10 millis" },
        { respond: continuation, chunkDelay: "10 millis" }
      ])
      const fiber = yield* Effect.fork(
        Stream.runCollect(streaming.stream({ prompt: "tell me" }, { steps, resume: true }))
      )
      yield* TestClock.adjust("1 second")
      const parts = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
      assert.strictEqual(texts(parts).join(""), story)
      const requests = yield* controls[1]!.requests
      const resumed = requests[0] as GenerateRequest
      assert.deepStrictEqual(
        resumed.messages?.map((m) => m.role),
        ["user", "assistant", "user"]
      )
      assert.strictEqual(resumed.messages?.[0]?.content, "tell me")
      assert.strictEqual(resumed.messages?.[1]?.content, "The quick brown ")
      const finish = parts[parts.length - 1]
      assert.strictEqual(finish?._tag === "Finish" && finish.provider, controls[1]!.name)
      const resumes = yield* Metric.value(
        Metric.taggedWithLabels(Metrics.streamResumes, stats.labels({ provider: controls[0]!.name }).exact)
      )
      assert.strictEqual(resumes.count, 1)
    })
  )

  it.effect("with resume, a provider that restarts from the beginning is deduplicated", () =>
    Effect.gen(function* () {
      const { steps, streaming } = yield* setup([
        { script: [Outcome.hang({ afterChunks: 4 })], respond: () => story },
        { respond: () => story }
      ])
      const fiber = yield* Effect.fork(
        Stream.runCollect(streaming.stream({ prompt: "x" }, { steps, resume: true, idleTimeout: "1 second" }))
      )
      yield* TestClock.adjust("1 second")
      const parts = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
      assert.strictEqual(texts(parts).join(""), story)
    })
  )

  it("a resumed continuation loses its repeated prefix and keeps text that only looks like one", () => {
    const finish: StreamPart = {
      _tag: "Finish",
      finishReason: "stop",
      usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 },
      provider: "p",
      model: "m"
    }
    const run = (delivered: string, pieces: ReadonlyArray<string>): string => {
      const dedupe = new Dedupe(delivered, 4)
      const out = pieces.flatMap((text) =>
        texts(Chunk.toReadonlyArray(dedupe.feed(Chunk.of<StreamPart>({ _tag: "TextDelta", text }))))
      )
      return [...out, ...texts(Chunk.toReadonlyArray(dedupe.feed(Chunk.of(finish))))].join("")
    }
    assert.strictEqual(run("The quick brown ", ["brown ", "fox"]), "fox")
    assert.strictEqual(run("The quick brown ", ["The ", "quick ", "brown ", "fox"]), "fox")
    assert.strictEqual(run("The quick brown ", ["The ", "quick ", "red ", "fox"]), "The quick red fox")
    assert.strictEqual(run("in a", ["and more"]), "and more")
    assert.strictEqual(run("Hello ", [" world"]), "world")
    assert.strictEqual(run("abc abc ", ["abc ", "x"]), "x")
    // held back while it could still be a repeat; released when the stream ends
    const dedupe = new Dedupe("one two three", 4)
    assert.strictEqual(dedupe.feed(Chunk.of<StreamPart>({ _tag: "TextDelta", text: "two" })).length, 0)
    assert.strictEqual(dedupe.flush(), "two")
  })
})

describe("Streaming retries before the first chunk", () => {
  it.effect("retries with the exact backoff delays, then streams", () =>
    Effect.gen(function* () {
      const { controls, stats, streaming } = yield* setup([
        {
          script: [Outcome.fail("Overloaded"), Outcome.fail("RateLimited", { retryAfter: "1 second" })],
          respond: () => "finally"
        }
      ])
      const delays: Array<number> = []
      const fiber = yield* Effect.fork(
        Streaming.collectText(
          streaming.stream(
            { prompt: "x" },
            {
              retry: { maxAttempts: 3, initialDelay: 100, factor: 2, jitter: 0 },
              onRetry: (info) => Effect.sync(() => delays.push(Duration.toMillis(info.delay)))
            }
          )
        )
      )
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* controls[0]!.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls[0]!.calls, 2)
      // backoff says 200 ms, Retry-After says 1 s
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* controls[0]!.calls, 2)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* Fiber.join(fiber), "finally")
      assert.deepStrictEqual(delays, [100, 1000])
      const snapshot = yield* stats.snapshot({ provider: controls[0]!.name })
      assert.strictEqual(snapshot.retries, 2)
      assert.strictEqual(snapshot.total, 1)
      assert.strictEqual(snapshot.successes, 1)
    })
  )

  it.effect("a first-chunk timeout is retried on the same provider before falling back", () =>
    Effect.gen(function* () {
      const { controls, steps, streaming } = yield* setup([
        { script: [Outcome.succeed("late", { latency: "5 seconds" }), Outcome.succeed("on time")] },
        { respond: () => "fallback" }
      ])
      const fiber = yield* Effect.fork(
        Streaming.collectText(
          streaming.stream(
            { prompt: "x" },
            { steps, firstChunkTimeout: "1 second", retry: { initialDelay: 50, jitter: 0 } }
          )
        )
      )
      yield* TestClock.adjust("1050 millis")
      assert.strictEqual(yield* Fiber.join(fiber), "on time")
      assert.strictEqual(yield* controls[0]!.calls, 2)
      assert.strictEqual(yield* controls[1]!.calls, 0)
    })
  )

  it.effect("a non-retryable failure falls back at once; InvalidRequest from a provider does not", () =>
    Effect.gen(function* () {
      const { controls, steps, streaming } = yield* setup([
        { script: [Outcome.fail("Unauthorized"), Outcome.fail("InvalidRequest")] },
        { respond: () => "second" }
      ])
      const text = yield* Streaming.collectText(streaming.stream({ prompt: "x" }, { steps, retry: true }))
      assert.strictEqual(text, "second")
      assert.strictEqual(yield* controls[0]!.calls, 1)
      const error = yield* Effect.flip(Streaming.collectText(streaming.stream({ prompt: "x" }, { steps, retry: true })))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(yield* controls[1]!.calls, 1)
    })
  )
})

describe("Streaming cancellation", () => {
  it.effect("a consumer that takes 3 chunks and leaves interrupts the provider", () =>
    Effect.gen(function* () {
      const { controls, stats, streaming } = yield* setup([{ respond: () => story, chunkDelay: "100 millis" }])
      const fiber = yield* Effect.fork(Stream.runCollect(Stream.take(streaming.stream({ prompt: "x" }), 3)))
      yield* TestClock.adjust("1 second")
      const parts = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
      assert.deepStrictEqual(texts(parts), ["The ", "quick ", "brown "])
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[0]!.inFlight, 0)
      assert.strictEqual(yield* controls[0]!.completed, 0)
      const snapshot = yield* stats.snapshot({ provider: controls[0]!.name })
      assert.deepStrictEqual(snapshot.failuresByReason, { Interrupted: 1 })
      assert.strictEqual(snapshot.inFlight, 0)
    })
  )

  it.effect("interrupting the consumer while it waits interrupts the provider", () =>
    Effect.gen(function* () {
      const { controls, streaming } = yield* setup([{ script: [Outcome.hang({ afterChunks: 1 })] }])
      const fiber = yield* Effect.fork(Stream.runDrain(streaming.stream({ prompt: "x" })))
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* controls[0]!.inFlight, 1)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[0]!.inFlight, 0)
    })
  )

  it.effect("toAsyncIterable: leaving a for-await loop early interrupts the provider", () =>
    Effect.gen(function* () {
      // still streaming when the loop leaves: 5 chunks, then it stalls
      const { controls, streaming } = yield* setup([
        { respond: () => story, script: [Outcome.hang({ afterChunks: 5 })] }
      ])
      const runtime = yield* Effect.runtime<never>()
      const seen = yield* Effect.promise(async () => {
        const out: Array<string> = []
        for await (const part of Streaming.toAsyncIterable(streaming.stream({ prompt: "x" }), runtime)) {
          if (part._tag === "TextDelta") out.push(part.text)
          if (out.length === 2) break
        }
        return out
      })
      assert.deepStrictEqual(seen, ["The ", "quick "])
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      assert.strictEqual(yield* controls[0]!.inFlight, 0)
    })
  )

  it.effect("toAsyncIterable throws the typed error", () =>
    Effect.gen(function* () {
      const { streaming } = yield* setup([{ script: [Outcome.fail("Overloaded", { afterChunks: 1 })] }])
      const runtime = yield* Effect.runtime<never>()
      const thrown = yield* Effect.promise(async () => {
        try {
          for await (const _ of Streaming.toAsyncIterable(streaming.stream({ prompt: "x" }), runtime)) {
            // consume
          }
          return undefined
        } catch (error) {
          return error as AiError
        }
      })
      assert.strictEqual(thrown?._tag, "StreamInterruptedError")
    })
  )
})

describe("Streaming metrics", () => {
  it.effect("records time to first token and tokens per second", () =>
    Effect.gen(function* () {
      const { controls, stats, streaming } = yield* setup([
        { latency: "250 millis", chunkDelay: "100 millis", respond: () => story }
      ])
      const fiber = yield* Effect.fork(Stream.runDrain(streaming.stream({ prompt: "x" })))
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(fiber)
      const labels = stats.labels({ provider: controls[0]!.name }).exact
      const ttft = yield* Metric.value(Metric.taggedWithLabels(Metrics.timeToFirstToken, labels))
      assert.strictEqual(ttft.count, 1)
      assert.strictEqual(ttft.min, 250)
      const tps = yield* Metric.value(Metric.taggedWithLabels(Metrics.tokensPerSecond, labels))
      assert.strictEqual(tps.count, 1)
      // 9 chunks, the last 8 at 100 ms each after the first: 11 tokens (estimate) over 0.8 s
      assert.closeTo(tps.max, 11 / 0.8, 0.01)
    })
  )
})

describe("Streaming hedging", () => {
  it.effect("a backup starts after the delay; the first to deliver wins and the rival is interrupted", () =>
    Effect.gen(function* () {
      const { controls, stats, steps, streaming } = yield* setup([
        { latency: "5 seconds", respond: () => "primary" },
        { latency: "1 second", respond: () => "backup" }
      ])
      const fiber = yield* Effect.fork(
        Streaming.collectText(streaming.stream({ prompt: "x" }, { steps, hedge: { after: "500 millis" } }))
      )
      yield* TestClock.adjust("499 millis")
      assert.strictEqual(yield* controls[1]!.calls, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls[1]!.calls, 1)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(fiber), "backup")
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      const labels = stats.labels({ provider: controls[0]!.name })
      const won = yield* Metric.value(Metric.taggedWithLabels(Metrics.hedges, labels.with("outcome", "won")))
      assert.strictEqual(won.count, 1)
    })
  )

  it.effect("when the primary delivers first, the backup is interrupted and counted as lost", () =>
    Effect.gen(function* () {
      const { controls, stats, steps, streaming } = yield* setup([
        { latency: "700 millis", respond: () => "primary" },
        { latency: "1 second", respond: () => "backup" }
      ])
      const fiber = yield* Effect.fork(
        Streaming.collectText(streaming.stream({ prompt: "x" }, { steps, hedge: { after: "500 millis" } }))
      )
      yield* TestClock.adjust("700 millis")
      assert.strictEqual(yield* Fiber.join(fiber), "primary")
      assert.strictEqual(yield* controls[1]!.calls, 1)
      assert.strictEqual(yield* controls[1]!.interrupted, 1)
      const labels = stats.labels({ provider: controls[0]!.name })
      const lost = yield* Metric.value(Metric.taggedWithLabels(Metrics.hedges, labels.with("outcome", "lost")))
      assert.strictEqual(lost.count, 1)
    })
  )
})

describe("Streaming with breakers and caches", () => {
  it.scoped("a stream failing mid-way counts as a failure for its breaker", () =>
    Effect.gen(function* () {
      const { controls, providers, streaming } = yield* setup([
        { script: [Outcome.fail("Overloaded", { afterChunks: 2 })], respond: () => story },
        { respond: () => "second" }
      ])
      const breaker = yield* CircuitBreaker.make(uniqueName("breaker"), { failMax: 1, resetTimeout: "1 minute" })
      const steps: ReadonlyArray<Streaming.Step> = [{ provider: providers[0]!, breaker }, { provider: providers[1]! }]
      const first = yield* Effect.flip(Streaming.collectText(streaming.stream({ prompt: "x" }, { steps })))
      assert.strictEqual(first._tag, "StreamInterruptedError")
      assert.strictEqual(yield* breaker.state, "open")
      const second = yield* Streaming.collectText(streaming.stream({ prompt: "x" }, { steps }))
      assert.strictEqual(second, "second")
      assert.strictEqual(yield* controls[0]!.calls, 1)
    })
  )

  it.scoped("a completed stream is replayed from the cache as a stream; an unfinished one is not cached", () =>
    Effect.gen(function* () {
      // calls: 1st "x" completes, 2nd "y" stalls after 2 chunks, 3rd "y" completes
      const { controls, streaming } = yield* setup([
        { respond: () => story, script: [Outcome.succeed(), Outcome.hang({ afterChunks: 2 }), Outcome.succeed()] }
      ])
      const store = yield* ResponseCache.makeMemoryStore({ name: uniqueName("cache") })
      const cache = Streaming.cacheFrom(yield* ResponseCache.make(store))
      const first = yield* Stream.runCollect(streaming.stream({ prompt: "x" }, { cache: { store: cache } }))
      const second = yield* Stream.runCollect(streaming.stream({ prompt: "x" }, { cache: { store: cache } }))
      assert.strictEqual(yield* controls[0]!.calls, 1)
      assert.deepStrictEqual(Chunk.toReadonlyArray(second), Chunk.toReadonlyArray(first))
      assert.strictEqual(texts(Chunk.toReadonlyArray(second)).join(""), story)
      // the consumer leaves while the upstream is still streaming: nothing is cached
      yield* Stream.runCollect(Stream.take(streaming.stream({ prompt: "y" }, { cache: { store: cache } }), 1))
      assert.strictEqual(yield* controls[0]!.interrupted, 1)
      yield* Stream.runCollect(streaming.stream({ prompt: "y" }, { cache: { store: cache } }))
      assert.strictEqual(yield* controls[0]!.calls, 3)
    })
  )

  it.effect("a guard sees every attempt's outcome", () =>
    Effect.gen(function* () {
      const { providers, streaming } = yield* setup([
        { script: [Outcome.fail("Overloaded"), Outcome.succeed()], respond: () => story }
      ])
      const seen = yield* Ref.make<ReadonlyArray<string>>([])
      const guard: Streaming.Guard = {
        admit: Effect.succeed((exit) =>
          Ref.update(seen, (all) => [
            ...all,
            Exit.isSuccess(exit) ? "success" : Exit.isInterrupted(exit) ? "interrupted" : "failure"
          ])
        )
      }
      yield* Streaming.collectText(
        streaming.stream({ prompt: "x" }, { steps: [{ provider: providers[0]!, guard }], retry: { jitter: 0 } })
      ).pipe(
        Effect.fork,
        Effect.tap(() => TestClock.adjust("1 second")),
        Effect.flatMap(Fiber.join)
      )
      assert.deepStrictEqual(yield* Ref.get(seen), ["failure", "success"])
    })
  )
})
