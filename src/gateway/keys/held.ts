/**
 * A reservation the key store made (`Held`), and the one of a key with no budget on the model.
 *
 * @internal
 */
import type { Charge } from "./ledger.js"
import type { Price } from "./options.js"

/**
 * A reservation this store made; settled or released once.
 *
 * @internal
 */
export class Held {
  closed = false
  /** When its lease last started (its reserve, or its last renewal). */
  renewedAt = 0
  /** Unrecorded because the store did not answer its reserve within the deadline. */
  timedOut = false
  constructor(
    readonly id: string,
    readonly keyId: string,
    readonly model: string,
    readonly charges: ReadonlyArray<Charge>,
    readonly price: Price | undefined,
    readonly inputTokens: number,
    readonly maxOutputTokens: number,
    /** False when the store failed and budgets fail open: nothing is held, usage is still recorded. */
    readonly recorded: boolean
  ) {}
}

/** The reservation of a key with no budget on the model: nothing to settle. */
/**
 * @internal
 */
export const nothingHeld: unknown = Object.freeze({ _tag: "NothingHeld" })
