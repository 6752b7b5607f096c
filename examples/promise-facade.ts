/**
 * The Promise facade, for code that does not use Effect: `createOrchestra(layer)` gives
 * plain async functions (`execute`, `executeWithFallback`, `batch`, `stream`, `stats`,
 * `metrics`, `dispose`). Failures reject with an `OrchestraError` carrying the typed error;
 * `timeout` bounds a call; an `AbortSignal` cancels a call or a batch. Mock providers, so
 * this runs offline:
 *
 *   npx tsx examples/promise-facade.ts
 *
 * Everything in `main` is ordinary async/await. (The last line hands `main` to
 * `NodeRuntime.runMain` only so that this file ends like the other examples; a plain
 * `await main()` works the same.)
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { createOrchestra, OrchestraError } from "effect-orchestra/Facade"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import * as Stats from "effect-orchestra/Stats"

async function main(): Promise<void> {
  const orchestra = createOrchestra(
    Orchestra.layer({
      providers: {
        main: Mock.layer({ name: "main-model", latency: { uniform: ["30 millis", "80 millis"] } }),
        strict: Mock.layer({ name: "strict-model", random: { success: 0, failures: { InvalidRequest: 1 } } }),
        slow: Mock.layer({ name: "slow-model", latency: "5 seconds" })
      },
      extraDomains: [
        { name: "strict", provider: "strict" },
        { name: "slow", provider: "slow" }
      ],
      maxConcurrent: 3
    })
  )
  try {
    const answer = await orchestra.execute("How do I reset my password?", { domain: "support" })
    console.log(`execute: ${answer.response.text} (domain ${answer.domain}, provider ${answer.provider})`)

    // The conversation so far goes before the prompt.
    const followUp = await orchestra.execute("And if I lost my phone too?", {
      domain: "support",
      context: [
        { role: "user", content: "How do I reset my password?" },
        { role: "assistant", content: answer.response.text }
      ]
    })
    console.log(`with context: ${followUp.response.text}`)

    try {
      await orchestra.execute("Refund me twice", { domain: "strict" })
    } catch (error) {
      if (error instanceof OrchestraError && error.error._tag === "ModelError") {
        console.log(`rejected with OrchestraError: ${error.error._tag} / ${error.error.reason}`)
      } else throw error
    }

    // A deadline on the whole call, or the caller's own signal: both end as the library's TimeoutError.
    const bounded = [
      () => orchestra.execute("Take your time", { domain: "slow", timeout: "200 millis" }),
      () => orchestra.execute("Take your time", { domain: "slow", signal: AbortSignal.timeout(200) })
    ]
    for (const [i, call] of bounded.entries()) {
      const late = await call().catch((error: unknown) => error)
      const how = i === 0 ? "timeout" : "AbortSignal.timeout"
      if (late instanceof OrchestraError) console.log(`${how}: ${late.error._tag} (${late.error.message})`)
    }

    // Cancel a batch part-way: the result still has one outcome per item, and says which never ran.
    const controller = new AbortController()
    const items = Array.from({ length: 12 }, (_, i) => `ticket ${i + 1}`)
    const result = await orchestra.batch(items, {
      domain: "support",
      signal: controller.signal,
      onProgress: (event) => {
        if (event._tag === "Succeeded" && event.done === 5) controller.abort()
      }
    })
    const count = (status: string) => result.results.filter((r) => r.status === status).length
    console.log(
      `batch: ${result.results.length} items, ${count("success")} succeeded, ${count("cancelled")} cancelled (never ran: ${result.notRun.length})`
    )

    let text = ""
    for await (const part of orchestra.stream("Tell me a long story about rivers", { domain: "technical" })) {
      if (part._tag === "TextDelta") text += part.text
      if (text.length > 30) break // leaving the loop cancels the stream
    }
    console.log(`stream (left early): ${JSON.stringify(text)}`)

    console.log(Stats.format(orchestra.stats(), "orchestra.stats()"))
    const metrics = await orchestra.metrics()
    console.log(
      metrics
        .split("\n")
        .filter((line) => line.startsWith("orchestra_requests_total"))
        .join("\n")
    )
  } finally {
    await orchestra.dispose()
  }
  const late = await orchestra.execute("still there?").catch((error: unknown) => error)
  console.log(`after dispose: ${late instanceof OrchestraError ? `OrchestraError(${late.error._tag})` : "answered?"}`)
}

NodeRuntime.runMain(Effect.promise(main))
