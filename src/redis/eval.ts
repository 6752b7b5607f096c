/**
 * The `Redis` service's `eval`: one EVALSHA, and one EVAL after a NOSCRIPT, within one deadline.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import { Duration, Effect } from "effect"
import { Redis } from "effect/persistence"

// An EVAL that did not answer within what was left of its deadline (see evalWithin): sent, maybe run.
class EvalTimeoutError extends Error {}

const isNoScript = (error: Redis.RedisError): boolean =>
  error.cause instanceof Error && error.cause.message.startsWith("NOSCRIPT")

// effect's `eval` loads a script (SCRIPT LOAD) before its first EVALSHA and again after a
// NOSCRIPT (Redis restarted, SCRIPT FLUSH): up to three commands, each with the client's own
// deadline, so a guard relying on that deadline (see ClientDeadline) waited up to 3x it. Here
// the SHA-1 is known without asking Redis: one EVALSHA, and after a NOSCRIPT one EVAL (which
// loads the script too) within what is left of the first command's deadline.
/** @internal */
export const evalWithin =
  (send: Redis.Redis["Service"]["send"], deadline: number): Redis.Redis["Service"]["eval"] =>
  <Config extends { readonly params: ReadonlyArray<unknown>; readonly result: unknown }>(
    script: Redis.Script<Config>
  ) => {
    const sha = createHash("sha1").update(script.lua).digest("hex")
    return (...params: Config["params"]): Effect.Effect<Config["result"], Redis.RedisError> =>
      Effect.clockWith((clock) => {
        const started = clock.currentTimeMillisUnsafe()
        const args = [script.numberOfKeys(...params).toString(), ...script.params(...params).map(String)]
        return Effect.catchIf(send<Config["result"]>("EVALSHA", sha, ...args), isNoScript, () => {
          const left = deadline - (clock.currentTimeMillisUnsafe() - started)
          const timedOut = Effect.fail(
            new Redis.RedisError({ cause: new EvalTimeoutError(`EVAL did not answer within ${deadline} ms`) })
          )
          return left <= 0
            ? timedOut
            : Effect.timeoutOrElse(send<Config["result"]>("EVAL", script.lua, ...args), {
                duration: Duration.millis(left),
                orElse: () => timedOut
              })
        })
      })
  }
