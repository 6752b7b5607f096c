/**
 * A reservation and the release that ends it are one step: an interruption (a client that
 * leaves, a shutdown) that lands as the reservation is handed back still releases it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Redacted, Scheduler } from "effect"
import type * as Gateway from "../../src/Gateway.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Redis from "../../src/Redis.js"
import { skipRedis, startRedis } from "../utils/redis.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

describe("Gateway: a reservation interrupted as it is handed back", () => {
  for (const [route, body] of [
    ["chat/completions", { model: "d-a", messages: [{ role: "user", content: "hi" }] }],
    ["embeddings", { model: "d-a", input: ["hi"] }]
  ] as const) {
    it.live(`/v1/${route}: it is released, not held until its lease ends`, () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const double = Harness.keyStore({ "sk-interrupted": { id: "k" } })
        // The store answers, and the request is interrupted right after (its client left meanwhile):
        // the interruption lands at the request's next step.
        const keys: Gateway.KeyStoreService = {
          ...double.service,
          reserve: (key, model, estimate) =>
            Effect.withFiber((fiber) =>
              Effect.flatMap(double.service.reserve(key, model, estimate), (reservation) =>
                // Its last step: the reservation is the store's answer, handed back in the same step.
                Effect.sync(() => {
                  setImmediate(() => fiber.interruptUnsafe())
                  return reservation
                })
              )
            )
        }
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys }).pipe(
          // Every step may yield to another fiber (as any step may, after a fiber's budget of steps).
          Effect.provideService(Scheduler.MaxOpsBeforeYield, 1)
        )
        yield* Effect.promise(() =>
          fetch(`${gw.url}/v1/${route}`, {
            method: "POST",
            headers: { authorization: "Bearer sk-interrupted", "content-type": "application/json" },
            body: JSON.stringify(body),
            signal: AbortSignal.timeout(5_000)
          }).then(
            (response) => response.text(),
            () => "aborted"
          )
        )
        // The request's end releases it (after its answer: a real wait, bounded).
        yield* Harness.eventually(() => double.log.released.length === 1)
        assert.strictEqual(double.log.reserved.length, 1)
        assert.deepStrictEqual(double.log.released, [0])
        assert.strictEqual(double.log.settled.length, 0)
      })
    )

    it.live(
      `/v1/${route}: one the store holds, then waits on (a rate-limit slot), is released when the client leaves`,
      () =>
        Effect.gen(function* () {
          const upstream = yield* Server.make(Up.openAi())
          const double = Harness.keyStore({ "sk-waiting": { id: "k" } })
          // The store tells the reservation as it holds it (onHeld), then waits: it never answers.
          const keys: Gateway.KeyStoreService = {
            ...double.service,
            reserve: (key, model, estimate, onHeld) =>
              Effect.flatMap(double.service.reserve(key, model, estimate), (reservation) => {
                onHeld?.(reservation)
                return Effect.never
              })
          }
          const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys })
          const client = new AbortController()
          const answer = fetch(`${gw.url}/v1/${route}`, {
            method: "POST",
            headers: { authorization: "Bearer sk-waiting", "content-type": "application/json" },
            body: JSON.stringify(body),
            signal: client.signal
          }).then(
            (response) => response.text(),
            () => "aborted"
          )
          yield* Harness.eventually(() => double.log.reserved.length === 1)
          client.abort()
          assert.strictEqual(yield* Effect.promise(() => answer), "aborted")
          yield* Harness.eventually(() => double.log.released.length === 1)
          assert.deepStrictEqual(double.log.released, [0])
          assert.strictEqual(double.log.settled.length, 0)
        })
    )
  }
})

/**
 * `effect` run one scheduler step at a time (every operation may yield), interrupted after
 * `steps` of them; its exit, and whether it ended before the interruption.
 */
const interruptedAfter = <A, E>(effect: Effect.Effect<A, E>, steps: number) =>
  Effect.promise(async () => {
    const tasks: Array<() => void> = []
    const scheduler = new Scheduler.MixedScheduler("async", (task) => {
      tasks.push(task)
      return () => {
        const at = tasks.indexOf(task)
        if (at !== -1) tasks.splice(at, 1)
      }
    })
    const fiber = Effect.runFork(
      effect.pipe(
        Effect.provideService(Scheduler.Scheduler, scheduler),
        Effect.provideService(Scheduler.MaxOpsBeforeYield, 1)
      )
    )
    // A scheduler step, or a real turn of the event loop when the fiber waits for I/O (Redis).
    const step = async () => {
      const task = tasks.shift()
      if (task !== undefined) task()
      else await new Promise((resolve) => setImmediate(resolve))
    }
    for (let i = 0; i < steps && fiber.pollUnsafe() === undefined; i++) await step()
    const ended = fiber.pollUnsafe() !== undefined
    fiber.interruptUnsafe()
    while (fiber.pollUnsafe() === undefined) await step()
    return { exit: fiber.pollUnsafe()!, ended }
  })

describe("KeyStore: a reserve interrupted at any step", () => {
  const secret = "sk-stepped-0123456789abcdef"
  const definition = { id: "k", sha256: KeyStore.hashSecret(secret), rpm: 1_000_000, budget: { tokens: 1_000_000 } }
  const run = (store: KeyStore.KeyAdmin["Service"]) =>
    Effect.gen(function* () {
      const key = yield* store.authenticate(Redacted.make(secret))
      let interrupted = 0
      for (let steps = 0; steps < 5_000; steps++) {
        const handed: Array<unknown> = []
        const { exit, ended } = yield* interruptedAfter(
          store.reserve(key, "m", { inputTokens: 10, maxOutputTokens: 10 }, (held) => handed.push(held)),
          steps
        )
        if (Exit.isSuccess(exit)) handed.push(exit.value)
        else interrupted++
        // What the caller was handed is what it gives back (as the gateway does at the request's end).
        for (const held of handed) yield* store.release(held)
        const [line] = yield* store.spend("k")
        assert.strictEqual(line?.held, 0, `interrupted after ${steps} steps: still held`)
        if (ended) break
      }
      assert.isAbove(interrupted, 0)
    })

  it.live("memory: one its key's limit refuses gives back what it held, however late it is interrupted", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const limited = { ...definition, id: "limited", rpm: 1 }
        const store = Context.get(yield* Layer.build(KeyStore.layerMemory({ keys: [limited] })), KeyStore.KeyAdmin)
        const key = yield* store.authenticate(Redacted.make(secret))
        // The minute's one request: every reserve after it holds its budget, then is refused by the limit.
        yield* store.release(yield* store.reserve(key, "m", { inputTokens: 10, maxOutputTokens: 10 }))
        for (let steps = 0; steps < 5_000; steps++) {
          const handed: Array<unknown> = []
          const { exit, ended } = yield* interruptedAfter(
            store.reserve(key, "m", { inputTokens: 10, maxOutputTokens: 10 }, (held) => handed.push(held)),
            steps
          )
          assert.isTrue(Exit.isFailure(exit))
          for (const held of handed) yield* store.release(held)
          const [line] = yield* store.spend("limited")
          assert.strictEqual(line?.held, 0, `interrupted after ${steps} steps: still held`)
          if (ended) break
        }
      })
    )
  )

  it.live("memory: what it holds is handed to onHeld as it is made, so the caller gives it back", () =>
    Effect.scoped(
      Effect.flatMap(
        Effect.map(Layer.build(KeyStore.layerMemory({ keys: [definition] })), Context.get(KeyStore.KeyAdmin)),
        run
      )
    )
  )

  it.live.skipIf(skipRedis)(
    "Redis: what it holds is handed to onHeld as Redis answers, so the caller gives it back",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const context = yield* Layer.build(
            KeyStore.layerRedis({
              prefix: `stepped-${Date.now()}:`,
              keys: [definition],
              redis: { timeout: "10 seconds" }
            }).pipe(Layer.provideMerge(Redis.layer({ url: server.url, commandTimeout: "10 seconds" })))
          )
          yield* run(Context.get(context, KeyStore.KeyAdmin))
        })
      ),
    120_000
  )
})
