/**
 * A fallback chain across three providers: a hosted model that is overloaded, a second
 * one that is down, and the bundled local model (transformers.js, in-process, offline) as
 * the last resort. Each answer says which domain and provider answered, after how many
 * domains and attempts, and whether a fallback was used. A bad request does not fall
 * back (every provider would refuse it), and a chain whose every step fails ends with a
 * `FallbackExhaustedError` listing each step's error.
 *
 *   npx tsx examples/fallback-chain.ts
 *
 * The bundled local model has random weights: its text is not meaningful (see
 * docs/local-model.md for a real one). It is here to show a real in-process provider
 * answering when the hosted ones cannot.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect } from "effect"
import * as Local from "effect-orchestra/Model/Local"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import * as Policy from "effect-orchestra/Policy"
import { Router } from "effect-orchestra/Router"
import * as Stats from "effect-orchestra/Stats"

// The hosted primary answers 503 Overloaded to everything for now (after 80 ms each).
const Primary = Mock.layer({
  name: "hosted-primary",
  random: { success: 0, failures: { Overloaded: 1 } },
  latency: "80 millis"
})
// The secondary region is down (Unavailable, at once).
const Secondary = Mock.layer({ name: "hosted-secondary", random: { success: 0, failures: { Unavailable: 1 } } })

const Manager = Orchestra.layer({
  providers: { primary: Primary, secondary: Secondary, local: Local.layer({ name: "local", maxTokens: 12 }) },
  domains: [
    // Each step has its own policy: the primary is retried once before moving on.
    { name: "primary", provider: "primary", retry: Policy.retry({ maxAttempts: 2, initialDelay: 50, jitter: 0 }) },
    { name: "secondary", provider: "secondary" },
    { name: "local", provider: "local", system: "Answer briefly." }
  ],
  breakers: false
})

const program = Effect.gen(function* () {
  const router = yield* Router
  const chain = ["primary", "secondary", "local"]

  yield* Console.log(`fallback chain: ${chain.join(" -> ")}\n`)
  for (const prompt of ["Where is my parcel?", "Reset my password"]) {
    const started = yield* Clock.currentTimeMillis
    const answer = yield* router.executeWithFallback({ prompt, maxTokens: 12 }, chain)
    const elapsed = (yield* Clock.currentTimeMillis) - started
    yield* Console.log(`"${prompt}"`)
    yield* Console.log(
      `  answered by domain "${answer.domain}" (provider ${answer.provider}) after ${answer.domainsTried} domains, fallback used: ${answer.fallbackUsed}, ${answer.attempts} attempts, ${elapsed} ms`
    )
    yield* Console.log(`  text: ${JSON.stringify(answer.response.text.slice(0, 60))}\n`)
  }

  // An invalid request (maxTokens 0) is refused before any provider: no fallback.
  const refused = yield* Effect.flip(router.executeWithFallback({ prompt: "x", maxTokens: 0 }, chain))
  yield* Console.log(
    `a bad request does not fall back: ${refused._tag} ${refused._tag === "ModelError" ? `${refused.reason} (field ${refused.field})` : ""}`
  )

  // Every step failing: one error that lists what each step said.
  const exhausted = yield* Effect.flip(router.executeWithFallback({ prompt: "x" }, ["primary", "secondary"]))
  if (exhausted._tag === "FallbackExhaustedError") {
    yield* Console.log(`every step failed: ${exhausted.message}\n`)
  }

  const stats = yield* Stats.Stats
  yield* Console.log(Stats.format(yield* stats.snapshot(), "All calls (each domain tried counts as one call)"))
})

program.pipe(Effect.provide(Manager), NodeRuntime.runMain)
