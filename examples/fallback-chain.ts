/**
 * A fallback chain across three providers: a hosted model that is overloaded, a second
 * one that is down, and the bundled local model (transformers.js, in-process, offline) as
 * the last resort. Each answer says which domain and provider answered, after how many
 * domains, and whether a fallback was used. A bad request does not fall back: every
 * provider would refuse it.
 *
 *   npx tsx examples/fallback-chain.ts
 *
 * The bundled local model has random weights: its text is not meaningful (see
 * docs/local-model.md for a real one). It is here to show a real in-process provider
 * answering when the hosted ones cannot.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect } from "effect"
import { Local, Mock, Orchestra, Policy, Router, Stats } from "effect-orchestra"

// The hosted primary answers 503 Overloaded to everything for now (after 80 ms each).
const Primary = Mock.layer({
  name: "hosted-primary",
  random: { seed: 1, succeed: 0, fail: { Overloaded: 1 } },
  latency: "80 millis"
})
// The secondary region is down (Unavailable, after 40 ms).
const Secondary = Mock.layer({ name: "hosted-secondary", random: { seed: 2, succeed: 0, fail: { Unavailable: 1 } } })

const Manager = Orchestra.layer({
  providers: { primary: Primary, secondary: Secondary, local: Local.layer({ name: "local", maxTokens: 12 }) },
  domains: [
    // Each step has its own policy: the primary is retried twice before moving on.
    { name: "primary", provider: "primary", retry: Policy.retry({ maxAttempts: 2, initialDelay: 50, jitter: 0 }) },
    { name: "secondary", provider: "secondary" },
    { name: "local", provider: "local", system: "Answer briefly." }
  ],
  breakers: false
})

const program = Effect.gen(function* () {
  const router = yield* Router.Router
  const chain = ["primary", "secondary", "local"]

  yield* Console.log(`fallback chain: ${chain.join(" -> ")}\n`)
  for (const prompt of ["Where is my parcel?", "Reset my password"]) {
    const started = yield* Clock.currentTimeMillis
    const answer = yield* router.executeWithFallback({ prompt, maxTokens: 12 }, chain)
    const elapsed = (yield* Clock.currentTimeMillis) - started
    yield* Console.log(`"${prompt}"`)
    yield* Console.log(
      `  answered by domain "${answer.domain}" (provider ${answer.provider}) after ${answer.attempts} domains, fallback used: ${answer.fallbackUsed}, ${elapsed} ms`
    )
    yield* Console.log(`  text: ${JSON.stringify(answer.response.text.slice(0, 60))}\n`)
  }

  // An invalid request (maxTokens 0) is refused before any provider: no fallback.
  const refused = yield* Effect.flip(router.executeWithFallback({ prompt: "x", maxTokens: 0 }, chain))
  yield* Console.log(
    `a bad request does not fall back: ${refused._tag} ${refused._tag === "ModelError" ? refused.reason : ""}\n`
  )

  const stats = yield* Stats.Stats
  yield* Console.log(Stats.format(yield* stats.snapshot(), "All calls (each domain tried counts as one call)"))
})

program.pipe(Effect.provide(Manager), NodeRuntime.runMain)
