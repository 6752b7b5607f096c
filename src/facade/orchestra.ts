/**
 * The Promise facade's manager (`createOrchestra`): the manager built on a `ManagedRuntime`
 * on first use (`runtime.ts`), each call's program (`calls.ts`) run on it as a Promise
 * (`run.ts`; a stream: `stream.ts`), its options and arguments checked first (`input.ts`),
 * its failures rejected as typed errors (`rejection.ts`), and its figures (`stats.ts`).
 *
 * @internal
 */
import { type Clock, type Layer, Result } from "effect"
import type { Item } from "../Batch.js"
import type { FacadeOptions, Orchestra, ParallelOptions, Prompt } from "../Facade.js"
import type { Services } from "../Orchestra.js"
import * as Calls from "./calls.js"
import { type Checked, embedRequestOf, Keys, requestOf, withDomains } from "./input.js"
import { type Env, makeRejections } from "./rejection.js"
import { makeRun } from "./run.js"
import { makeManager } from "./runtime.js"
import { makeStats } from "./stats.js"
import { makeStream } from "./stream.js"

/**
 * Builds `createOrchestra` over the facade's error classes; `Facade.ts` calls it once, at load. `clock`
 * times each manager's rebuild backoff, `dispose()`'s bound and a call's wait for the build: the live
 * clock, but for tests (a `TestClock`).
 *
 * @internal
 */
export const makeCreateOrchestra = (env: Env, clock?: Clock.Clock) => {
  const rejections = makeRejections(env)

  const createOrchestra = <E>(layer: Layer.Layer<Services, E, never>, options?: FacadeOptions): Orchestra => {
    const manager = makeManager(rejections, layer, options, clock)
    const run = makeRun(rejections, manager)
    const { stats, resetStats, metrics } = makeStats(rejections, manager, run)
    const batch = (items: ReadonlyArray<Item>, checked: Checked) => Calls.batch(items, checked, manager.ended)
    return {
      execute: (prompt, options) => run(options, Keys.execute, (c) => requestOf(prompt, c.context), Calls.execute),
      executeWithFallback: (prompt, domains, options) =>
        run(
          options,
          Keys.fallback,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.executeWithFallback(r, d, c)
        ),
      executeParallelDomains: ((prompt: Prompt, domains: ReadonlyArray<string>, options?: ParallelOptions) =>
        run(
          options,
          Keys.parallel,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.executeParallelDomains(r, d, c)
        )) as Orchestra["executeParallelDomains"],
      hedge: (prompt, domains, options) =>
        run(
          options,
          Keys.hedge,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.hedge(r, d, options !== undefined, c)
        ),
      // The signal and the timeout cancel the batch (its result names the items that never ran), not the
      // promise. Its items are read as the batch reaches them (a batch of 100k reads one at a time).
      batch: (items, options) => run(options, Keys.batch, () => Result.succeed(items), batch, true),
      stream: makeStream(rejections, manager),
      embed: (input, options) => run(options, Keys.embed, () => embedRequestOf(input), Calls.embed),
      stats,
      resetStats,
      metrics,
      dispose: manager.dispose,
      [Symbol.asyncDispose]: manager.dispose
    }
  }

  return createOrchestra
}
