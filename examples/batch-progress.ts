/**
 * A batch of 24 questions over the three predefined domains, at most 4 calls at a time,
 * with a progress line per event, one outcome per question in input order, and the
 * batch's own stats. One item is malformed: it gets its own `InvalidRequest` and the rest
 * run. The provider is a seeded mock (50-250 ms, some transient failures that the domains
 * retry); two questions go to a slow archive behind a 300 ms deadline and time out. Runs
 * offline:
 *
 *   npx tsx examples/batch-progress.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import * as Batch from "effect-orchestra/Batch"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import * as Stats from "effect-orchestra/Stats"

const Provider = Mock.layer({
  name: "helpdesk-model",
  latency: { uniform: ["50 millis", "250 millis"] },
  seed: 42,
  random: { success: 0.85, failures: { Overloaded: 2, RateLimited: 1 } },
  respond: (request) => `(${request.system?.split(" ").slice(3, 5).join(" ")}) answer to "${request.prompt}"`
})

// A slow search backend behind its own domain with a 300 ms deadline: its items time out.
const Archive = Mock.layer({ name: "archive-search", latency: "2 seconds" })

// The predefined domains (support, technical, finance) retry transient failures.
const Manager = Orchestra.layer({
  providers: { main: Provider, archive: Archive },
  maxConcurrent: 4,
  extraDomains: [{ name: "archive", provider: "archive", timeout: 300, system: "You search the cold archive." }]
})

const domains = ["support", "technical", "finance"] as const
const items: ReadonlyArray<Batch.Item> = Array.from({ length: 24 }, (_, i): Batch.Item => {
  if (i === 17) return { query: 17 } as unknown as Batch.Item // a malformed item: only this one fails for it
  if (i % 10 === 9) return { query: `question ${i + 1}`, domain: "archive" }
  return { query: `question ${i + 1}`, domain: domains[i % 3] }
})

const bar = (done: number, total: number) => {
  const width = 24
  const filled = Math.round((done / total) * width)
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(done).padStart(2)}/${total}`
}

const line = (event: Batch.StreamEvent) => {
  switch (event._tag) {
    case "Started":
    case "Done":
      return Effect.void
    case "Succeeded":
      return Console.log(`${bar(event.done, event.total)} #${event.index + 1} ok in ${event.durationMs} ms`)
    case "Failed":
      return Console.log(`${bar(event.done, event.total)} #${event.index + 1} ${event.status}: ${event.error?._tag}`)
    case "Retried":
      return Console.log(
        `${" ".repeat(32)} #${event.index + 1} retry ${event.attempt} in ${Math.round(event.delayMs)} ms`
      )
    case "Cancelled":
      return Console.log(`cancelled, never ran: ${event.notRun.join(", ")}`)
  }
}

const program = Effect.gen(function* () {
  // Progress as a Stream: events while the batch runs, then its result.
  const last = yield* Batch.stream(items).pipe(Stream.tap(line), Stream.runLast)
  if (last._tag === "None" || last.value._tag !== "Done") return yield* Effect.die("the stream ended without a result")
  const result = last.value.result

  yield* Console.log("\nOutcomes in input order:")
  for (const r of result.results) {
    const what = r.answer?.response.text ?? `${r.error?._tag}: ${r.error?.message}`
    yield* Console.log(`  #${String(r.index + 1).padStart(2)} ${r.status.padEnd(8)} retries ${r.retries}  ${what}`)
  }
  const ok = Batch.successes(result).length
  yield* Console.log(
    `\nbatch ${result.id}: ${result.results.length} items, ${ok} succeeded, ${result.results.length - ok} failed, in ${result.elapsedMs} ms`
  )
  yield* Console.log(Stats.format(result.stats, `Stats of ${result.id} (from its own outcomes)`))
})

program.pipe(Effect.provide(Manager), NodeRuntime.runMain)
