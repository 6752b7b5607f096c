/**
 * The limits of a batch that are known before anything is built (the CLI reads them while it checks a config).
 *
 * @internal
 */

/**
 * The most items one batch takes when the manager's `maxItems` is not given.
 *
 * @since 0.3.0
 * @category constants
 */
export const defaultMaxItems = 1_000_000
