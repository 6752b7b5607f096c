/**
 * What the Promise facade's tests assert of a rejection.
 */
import { assert } from "@effect/vitest"
import { OrchestraError } from "../../src/Facade.js"

/** What a promise rejected with; fails the test if it resolved. */
export const rejection = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => assert.fail("expected a rejection"),
    (error: unknown) => error
  )

/** The typed error of a rejection, which must be an OrchestraError. */
export const typed = async (promise: Promise<unknown>) => {
  const error = await rejection(promise)
  assert.instanceOf(error, OrchestraError, String(error))
  return (error as OrchestraError).error
}
