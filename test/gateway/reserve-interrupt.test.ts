/**
 * A reservation and the release that ends it are one step: an interruption (a client that
 * leaves, a shutdown) that lands as the reservation is handed back still releases it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Scheduler } from "effect"
import type * as Gateway from "../../src/Gateway.js"
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
  }
})
