/**
 * The admin routes' options checked, in a module of their own: `orchestra serve` checks them with the gateway
 * file's other mistakes before it loads the routes (and the gateway) it may never start.
 *
 * @internal
 */
import { Redacted, Result } from "effect"
import * as Input from "../Input.js"
import type { Options } from "./admin.js"
import { hash, sha256Pattern } from "./keys/secret.js"

// Not "/": the routes are `${path}/keys...`, which "//keys" would never match.
const checkPath = (input: unknown): Input.Checked<`/${string}`> =>
  input === "/"
    ? Result.fail({ path: "path", message: `expected a path such as "/admin", got "/"` })
    : Input.routePath("path", input, "/admin")

const checkKey = (input: unknown): Input.Checked<string> => {
  if (Redacted.isRedacted(input)) {
    const value = Redacted.value(input)
    // Never echo the value.
    // Sent as `Authorization: Bearer <key>`: a space, a line break (a mounted secret's trailing
    // newline) or a non-ASCII character could never match, so the admin routes would refuse every call.
    return typeof value === "string" && value.length >= 16 && /^[\x21-\x7e]+$/.test(value)
      ? Result.succeed(hash(value))
      : Result.fail({
          path: "key",
          message: "expected an admin key of at least 16 visible ASCII characters (no space or line break)"
        })
  }
  if (typeof input === "object" && input !== null && "sha256" in input) {
    const sha256 = (input as { readonly sha256: unknown }).sha256
    return typeof sha256 === "string" && sha256Pattern.test(sha256)
      ? Result.succeed(sha256)
      : Result.fail({ path: "key.sha256", message: "expected 64 lowercase hex characters" })
  }
  return Result.fail({ path: "key", message: "expected a Redacted admin key or { sha256 }" })
}

const known: ReadonlySet<string> = new Set(["key", "path", "maxBodyBytes"])

/**
 * The options of {@link make} checked as it checks them (the first wrong field), without building the routes:
 * `orchestra serve` says a wrong one with the gateway file's other mistakes.
 *
 * @internal
 */
export const check = (options: Options): Input.Checked<readonly [string, `/${string}`, number]> => {
  if (typeof options !== "object" || options === null)
    return Result.fail({ path: "(options)", message: "expected an object" })
  const unknown = Input.misspeltKey(options, known)
  if (unknown !== undefined) return Result.fail(unknown)
  return Input.all([
    checkKey(options.key),
    checkPath(Input.orDefault(options.path, "/admin")),
    Input.int("maxBodyBytes", Input.orDefault(options.maxBodyBytes, 64 * 1024), { min: 1024, max: 16 * 1024 * 1024 })
  ])
}
