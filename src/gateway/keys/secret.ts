/**
 * Virtual-key secrets: how they are made (`sk-orch-` and 32 characters of 24 random bytes),
 * hashed (SHA-256, hex: the only form ever stored), shown (a prefix of the secret, enough
 * for an admin to tell keys apart) and compared (by hash, in constant time).
 *
 * @internal
 */
import { hash as digest, randomBytes, timingSafeEqual } from "node:crypto"
import { Redacted } from "effect"

/**
 * The start of every secret this gateway makes.
 *
 * @internal
 */
export const secretPrefix = "sk-orch-"

/**
 * How many characters of a secret admins see (`sk-orch-` and 4 more).
 *
 * @internal
 */
export const shownLength = 12

/**
 * A SHA-256 digest as 64 lowercase hex characters.
 *
 * @internal
 */
export const sha256Pattern = /^[0-9a-f]{64}$/

/**
 * The SHA-256 of a secret, hex. The secret is read once, here, and never kept.
 *
 * @internal
 */
export const hash = (secret: Redacted.Redacted<string> | string): string =>
  // The one-shot digest (Node >= 21.7) makes no Hash object: a third of createHash's time here.
  digest("sha256", typeof secret === "string" ? secret : Redacted.value(secret), "hex")

/**
 * A new secret, its hash and the prefix shown to admins.
 *
 * @internal
 */
export const generate = (): {
  readonly secret: Redacted.Redacted<string>
  readonly sha256: string
  readonly prefix: string
} => {
  const plain = `${secretPrefix}${randomBytes(24).toString("base64url")}`
  return { secret: Redacted.make(plain), sha256: hash(plain), prefix: plain.slice(0, shownLength) }
}

/**
 * A random id of `length` characters from `[a-z0-9]`.
 *
 * @internal
 */
export const randomId = (length: number): string => {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
  const bytes = randomBytes(length)
  let out = ""
  for (let i = 0; i < length; i++) out += alphabet[bytes[i]! % alphabet.length]
  return out
}

/**
 * Whether `bearer` is the secret whose SHA-256 is `sha256` (constant time in the secret).
 *
 * @internal
 */
export const matches = (bearer: Redacted.Redacted<string> | undefined, sha256: string): boolean => {
  if (bearer === undefined) return false
  const expected = Buffer.from(sha256, "hex")
  const actual = digest("sha256", Redacted.value(bearer), "buffer")
  return expected.length === actual.length && timingSafeEqual(expected, actual)
}
