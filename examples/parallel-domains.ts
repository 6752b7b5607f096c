/**
 * One question to several domains at once. `all` waits for every domain and returns each
 * outcome, failures included; `first` returns the first success and interrupts the others
 * (their calls are cancelled, not left running). Each domain runs with its own policies,
 * its fallback chain included. Mock providers with different latencies, so this runs
 * offline:
 *
 *   npx tsx examples/parallel-domains.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect, Layer, Result } from "effect"
import { ModelProvider, type Service } from "effect-orchestra/Model"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import { Router } from "effect-orchestra/Router"

const program = Effect.gen(function* () {
  // Providers built here so that the example can read their controls (calls, interruptions).
  const fast = yield* Mock.make({ name: "fast-model", latency: "120 millis", respond: () => "Restart the router." })
  const slow = yield* Mock.make({ name: "slow-model", latency: "400 millis", respond: () => "Check the cable first." })
  const broken = yield* Mock.make({
    name: "broken-model",
    random: { success: 0, failures: { Unavailable: 1 } },
    latency: "50 millis"
  })
  const provider = (m: { readonly provider: Service }) => Layer.succeed(ModelProvider, m.provider)

  const manager = Orchestra.layer({
    providers: { fast: provider(fast), slow: provider(slow), broken: provider(broken) },
    domains: [
      { name: "support", provider: "fast", system: "You are a support agent." },
      { name: "technical", provider: "slow", system: "You are a network engineer." },
      { name: "finance", provider: "broken", system: "You are a billing clerk." }
    ],
    breakers: false
  })

  yield* Effect.gen(function* () {
    const router = yield* Router
    const request = { prompt: "My internet is down, what should I do?" }
    const domains = ["support", "technical", "finance"]

    let start = yield* Clock.currentTimeMillis
    const all = yield* router.executeParallelDomains(request, domains, "all")
    yield* Console.log(`mode "all" (${(yield* Clock.currentTimeMillis) - start} ms, as slow as the slowest domain):`)
    for (const outcome of all) {
      yield* Console.log(
        `  ${outcome.domain.padEnd(10)} ${Result.match(outcome.result, {
          onSuccess: (a) => `ok    ${a.provider}: ${a.response.text}`,
          onFailure: (e) => `error ${e._tag}: ${e.message}`
        })}`
      )
    }

    start = yield* Clock.currentTimeMillis
    const first = yield* router.executeParallelDomains(request, domains, "first")
    yield* Console.log(
      `\nmode "first" (${(yield* Clock.currentTimeMillis) - start} ms): ${first.domain} answered first: ${first.response.text}`
    )
    yield* Console.log(`  slow-model calls interrupted so far: ${yield* slow.control.interrupted}`)
    yield* Console.log(`  slow-model calls still running: ${yield* slow.control.inFlight}`)
  }).pipe(Effect.provide(manager))
})

program.pipe(NodeRuntime.runMain)
