/**
 * The guard every Redis-backed store's calls go through (a deadline, failures counted, an outage
 * reported once and probed in the background), and the checks of the options a store takes for it.
 *
 * @internal
 */
import { Clock, Duration, Effect, Metric, Option, Result, Scope } from "effect"
import { Redis } from "effect/persistence"
import * as Input from "../Input.js"
import * as Metrics from "../Metrics.js"
import type { Guard, GuardOptions, GuardSettings } from "../Redis.js"
import * as Counters from "../stats/counters.js"
import { wellFormed } from "../stats/labels.js"
import { ClientDeadline, ConnectionReset } from "./connection.js"
import { errorText, isClientTimeout, isErrorReply, StoreError } from "./errors.js"

/** @internal */
export const maxPrefixChars = 100

// Redis Cluster hashes a key by what its first "{" and the next "}" enclose, and the whole key when
// that is empty: a prefix opening with an empty tag ("gw{}:") hashes each key whole, so that a rate
// limit's state and its records, put in one slot by their own tag, land in different slots (CROSSSLOT).
const emptyTag = (prefix: string): boolean => {
  const open = prefix.indexOf("{")
  return open >= 0 && prefix.charCodeAt(open + 1) === 125 // "}"
}

/** @internal */
export const prefixOf = (input: unknown, fallback: string): Input.Checked<string> => {
  const prefix = Input.orDefault(input, fallback)
  if (typeof prefix !== "string" || prefix.length === 0 || prefix.length > maxPrefixChars) {
    return Result.fail({
      path: "prefix",
      message: `expected a string of 1 to ${maxPrefixChars} characters, got ${Input.shown(prefix)}`
    })
  }
  if (emptyTag(prefix)) {
    return Result.fail({
      path: "prefix",
      message: `expected no empty hash tag ("{}") before any other: Redis Cluster would hash every key whole and split what belongs in one slot, got ${Input.shown(prefix)}`
    })
  }
  // In a Redis command a lone surrogate is U+FFFD: two such prefixes would share their keys.
  return wellFormed(prefix, "prefix")
}

/** @internal */
export const guardSettings = (options: GuardOptions = {}, prefix = ""): Input.Checked<GuardSettings> => {
  // `redis: null` would fail reading its first field; a misspelt `timout` would keep the default deadline unsaid.
  const where = prefix === "" ? "options" : prefix.slice(0, -1)
  const issue = Array.isArray(options)
    ? { path: where, message: "expected an object, got an array" }
    : (Input.notAnObject(where, options) ?? Input.unknownKey(options, guardKeys, prefix))
  if (issue !== undefined) return Result.fail(issue)
  return Result.map(
    Input.all([
      Input.duration(`${prefix}timeout`, Input.orDefault(options.timeout, "500 millis")),
      Input.duration(`${prefix}reportAfter`, Input.orDefault(options.reportAfter, "1 second"), { allowZero: true }),
      Input.duration(`${prefix}probeInterval`, Input.orDefault(options.probeInterval, "1 second"))
    ]),
    ([timeout, reportAfter, probeInterval]) => ({ timeout, reportAfter, probeInterval })
  )
}

const guardKeys: ReadonlySet<string> = new Set(["timeout", "reportAfter", "probeInterval"])

/** @internal */
export const makeGuard = (options: {
  readonly store: string
  readonly settings: GuardSettings
  /** A metric, or a counter registered with its owner's scope (`stats/counters`' `scoped`), which closing it removes. */
  readonly errors?: Metric.Metric<number, unknown> | Counters.Counter | undefined
}): Effect.Effect<Guard> =>
  Effect.gen(function* () {
    const clientDeadline = yield* Effect.service(ClientDeadline)
    const reset = yield* Effect.service(ConnectionReset)
    // With a Redis service and a scope (a store's layer), the probe is a PING in the background.
    const redis = yield* Effect.serviceOption(Redis.Redis)
    const scope = yield* Effect.serviceOption(Scope.Scope)
    const { settings, store } = options
    // With a scope (a store's layer), the series is the layer's: closing it removes the series.
    // Counted by `Metric.update` alone, it stayed in the registry for good.
    const errors =
      options.errors ??
      (Option.isSome(scope)
        ? yield* Counters.scoped(Metrics.storeErrors as Metric.Metric<number, unknown>, { store }).pipe(
            Effect.provideService(Scope.Scope, scope.value)
          )
        : Metric.withAttributes(Metrics.storeErrors, { store }))
    const countError: Effect.Effect<void> = Metric.isMetric(errors)
      ? Metric.update(errors, 1)
      : Effect.sync(() => errors.add(1))
    const timeoutMillis = Duration.toMillis(settings.timeout)
    // The client already fails every command by this deadline: no timer of our own per call.
    const clientBound = clientDeadline !== undefined && clientDeadline <= timeoutMillis
    const reportAfter = Duration.toMillis(settings.reportAfter)
    const probeInterval = Duration.toMillis(settings.probeInterval)
    // One store's health: plain fields in this closure, read and written synchronously.
    let failingSince: number | undefined
    let failures = 0
    let reported = false
    let nextProbe = 0
    // The last failure was Redis's answer (an error reply: OOM, READONLY, MISCONF): a PING it answers says nothing
    // of the store's calls, which then probe it themselves, one per probeInterval (see `call`).
    let answered = false

    const failed = (error: StoreError): Effect.Effect<never, StoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        failures++
        if (failingSince === undefined) failingSince = now
        answered = error.cause !== undefined && isErrorReply(error.cause)
        let count = reset === undefined ? countError : Effect.andThen(reset(error, now - failingSince), countError)
        if (reported || now - failingSince < reportAfter) {
          // A call-probe that found Redis gone altogether: the PINGs take over.
          if (reported && !answered && probing !== undefined) count = Effect.andThen(count, probing)
          return Effect.andThen(count, Effect.fail(error))
        }
        reported = true
        nextProbe = now + probeInterval
        if (probing !== undefined && !answered) count = Effect.andThen(count, probing)
        const warning = Effect.logWarning(
          `Redis store "${store}" unavailable: ${failures} failed call${failures === 1 ? "" : "s"} in ${now - failingSince} ms, the last: ${error.message}`
        ).pipe(Effect.annotateLogs({ store, operation: error.operation }))
        return Effect.andThen(Effect.andThen(count, warning), Effect.fail(error))
      })

    const succeeded: Effect.Effect<void> = Effect.suspend(() => {
      const wasReported = reported
      failingSince = undefined
      failures = 0
      reported = false
      return wasReported
        ? Effect.logInfo(`Redis store "${store}" is back`).pipe(Effect.annotateLogs({ store }))
        : Effect.void
    })

    const run = <A, E>(operation: string, effect: Effect.Effect<A, E>): Effect.Effect<A, StoreError> => {
      const bounded: Effect.Effect<A, E | StoreError> = clientBound
        ? effect
        : Effect.timeoutOrElse(effect, {
            duration: settings.timeout,
            orElse: () =>
              Effect.fail(
                new StoreError({
                  store,
                  operation,
                  reason: "Timeout",
                  message: `${operation} timed out after ${timeoutMillis} ms`
                })
              )
          })
      return bounded.pipe(
        Effect.matchEffect({
          onFailure: (error) => {
            if (error instanceof StoreError) return failed(error)
            return failed(
              new StoreError({
                store,
                operation,
                reason: isClientTimeout(error) ? "Timeout" : "Failed",
                message: `${operation}: ${errorText(error)}`,
                cause: error
              })
            )
          },
          onSuccess: (value) => (failingSince === undefined ? Effect.succeed(value) : Effect.as(succeeded, value))
        })
      )
    }

    // While an outage is reported, one PING per probeInterval in the layer's scope until one
    // answers: callers never wait on the down Redis, and find it back as soon as it is. One loop at
    // a time: an outage reported again while the last one's loop still sleeps (a call sent before it
    // answered late) started one more, each PINGing for the rest of the outage.
    let probeRunning = false
    const probing: Effect.Effect<void> | undefined =
      Option.isSome(redis) && Option.isSome(scope)
        ? Effect.suspend(() => {
            if (probeRunning) return Effect.void
            probeRunning = true
            const loop: Effect.Effect<void> = Effect.suspend(() => {
              if (reported && !answered) {
                return Effect.sleep(settings.probeInterval).pipe(
                  Effect.andThen(Effect.ignore(run("PING", redis.value.send("PING")))),
                  Effect.andThen(loop)
                )
              }
              probeRunning = false
              return Effect.void
            })
            return Effect.asVoid(
              Effect.forkIn(
                Effect.onInterrupt(loop, () => Effect.sync(() => (probeRunning = false))),
                scope.value
              )
            )
          })
        : undefined

    const skipped = (operation: string) =>
      Effect.andThen(
        countError,
        Effect.fail(
          new StoreError({
            store,
            operation,
            reason: "Unavailable",
            message: `Redis store "${store}" is unavailable`
          })
        )
      )

    const call = <A, E>(operation: string, effect: Effect.Effect<A, E>): Effect.Effect<A, StoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (!reported) return run(operation, effect)
        if ((probing !== undefined && !answered) || now < nextProbe) return skipped(operation)
        // Without a Redis service and a scope to probe on its own, or when Redis answers the store's calls with an
        // error (a PING it answers would say it is back), this call is the probe.
        nextProbe = now + probeInterval
        return run(operation, effect)
      })

    return { store, call, available: Effect.sync(() => !reported) }
  })
