/**
 * The main job (`npm start`), fully offline on the bundled local model: domains, a
 * provider that fails and falls back to the local model, every domain in parallel, a batch
 * with live progress, and the statistics table.
 *
 *   npm start            (or: npx tsx examples/main.ts)
 *
 * The bundled models are tiny and have random weights: their text is NOT meaningful.
 * See docs/local-model.md to point the local provider at a real model.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Result } from "effect"
import * as Batch from "effect-orchestra/Batch"
import * as Domain from "effect-orchestra/Domain"
import * as Local from "effect-orchestra/Model/Local"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import * as Policy from "effect-orchestra/Policy"
import { Router } from "effect-orchestra/Router"
import * as Stats from "effect-orchestra/Stats"

const Manager = Orchestra.layer({
  providers: {
    local: Local.layer({ maxTokens: 24 }),
    // A remote model that is down today: every call fails with a retryable error after 150 ms.
    "flaky-remote": Mock.layer({
      name: "flaky-remote",
      latency: "150 millis",
      random: { success: 0, failures: { Overloaded: 1 } }
    })
  },
  defaultProvider: "local",
  extraDomains: [
    {
      name: "remote-support",
      provider: "flaky-remote",
      system: "You are a customer support agent.",
      retry: Policy.retry({ maxAttempts: 2, initialDelay: 100 })
    }
  ],
  maxConcurrent: 4
})

const queries: ReadonlyArray<Batch.Item> = [
  { query: "How do I reset my password?", domain: "support" },
  { query: "My parcel arrived damaged", domain: "support" },
  { query: "Can I change my delivery address?", domain: "support" },
  { query: "Why is my build failing on CI?", domain: "technical" },
  { query: "Explain database indexes", domain: "technical" },
  { query: "What is a race condition?", domain: "technical" },
  { query: "How does compound interest work?", domain: "finance" },
  { query: "What is a balance sheet?", domain: "finance" },
  { query: "Estimate next quarter's cash flow", domain: "finance" },
  { query: "Where is my refund?", domain: "remote-support" },
  { query: "Which plan suits a team of five?", domain: "support" },
  { query: "How do I rotate an API key?", domain: "technical" }
]

const bar = (done: number, total: number): string => {
  const width = 24
  const filled = Math.round((done / total) * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total}`
}

const program = Effect.gen(function* () {
  const router = yield* Router
  const batch = yield* Batch.Batch
  const stats = yield* Stats.Stats
  const domains = yield* Domain.Domains

  yield* Console.log("effect-orchestra demo: bundled local model (tiny, random weights: the text is not meaningful)\n")
  yield* Console.log(`domains: ${domains.all.map((d) => `${d.name} -> ${d.provider}`).join(", ")}\n`)

  yield* Console.log("1. Fallback: remote-support is down, support (local) answers")
  const fallback = yield* router.executeWithFallback({ prompt: "My invoice is wrong", maxTokens: 16 }, [
    "remote-support",
    "support"
  ])
  yield* Console.log(
    `   answered by ${fallback.domain} (${fallback.provider}) after ${fallback.domainsTried} domains, fallback used: ${fallback.fallbackUsed} (${fallback.attempts} attempts)`
  )
  yield* Console.log(`   text: ${JSON.stringify(fallback.response.text)}\n`)

  yield* Console.log("2. One question, every domain in parallel")
  const parallel = yield* router.executeParallelDomains(
    { prompt: "What should I do next?", maxTokens: 12 },
    ["support", "technical", "finance"],
    "all"
  )
  for (const outcome of parallel) {
    yield* Console.log(
      `   ${outcome.domain.padEnd(10)} ${Result.match(outcome.result, {
        onSuccess: (a) => JSON.stringify(a.response.text),
        onFailure: (e) => `failed: ${e.message}`
      })}`
    )
  }

  yield* Console.log(`\n3. A batch of ${queries.length} queries, ${batch.limit} at a time, falling back to support`)
  const result = yield* batch.run(queries, {
    fallback: ["support"],
    onEvent: (event) =>
      event._tag === "Succeeded" || event._tag === "Failed"
        ? Console.log(`   ${bar(event.done, event.total)}  #${event.index + 1} ${event._tag.toLowerCase()}`)
        : Effect.void
  })
  for (const item of result.results) {
    const how = item.answer
      ? `${item.answer.domain}${item.answer.fallbackUsed ? " (fallback)" : ""}`
      : `${item.status}: ${item.error?.message ?? ""}`
    yield* Console.log(`   #${String(item.index + 1).padStart(2)} ${item.status.padEnd(7)} ${how}`)
  }
  yield* Console.log(`   batch ${result.id} took ${result.elapsedMs} ms\n`)

  yield* Console.log(Stats.format(yield* stats.snapshot(), "4. Statistics (all providers)"))
  yield* Console.log(Stats.format(yield* stats.snapshot({ provider: "flaky-remote" }), "   flaky-remote only"))
})

program.pipe(Effect.provide(Manager), NodeRuntime.runMain)
