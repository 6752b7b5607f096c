/**
 * How an `ExecutionStats` rounds its figures (a `Stats` window's and a batch's): to two
 * decimals, except where two decimals would say something the counts do not.
 *
 * @internal
 */

/** @internal */
export const round = (n: number): number => Math.round(n * 100) / 100

/**
 * Successes over finished calls, in %: never 100 while a call failed nor 0 while one succeeded
 * (one failure in 20,000 read 100).
 *
 * @internal
 */
export const successRate = (successes: number, finished: number): number => {
  if (finished === 0) return 0
  const rate = round((successes / finished) * 100)
  if (rate === 100 && successes < finished) return 99.99
  if (rate === 0 && successes > 0) return 0.01
  return rate
}

/**
 * A success rate (in %) as a table shows it: one decimal, unless it would read 100.0 % with a
 * failure or 0.0 % with a success.
 *
 * @internal
 */
export const percent = (rate: number): string => {
  const text = rate.toFixed(1)
  return (text === "100.0" && rate < 100) || (text === "0.0" && rate > 0) ? rate.toFixed(2) : text
}

/**
 * Finished calls per second over `ms`: three significant digits under one a second, where two
 * decimals read twelve calls an hour as none.
 *
 * @internal
 */
export const perSecond = (finished: number, ms: number): number => {
  if (ms <= 0) return 0
  const rate = (finished / ms) * 1000
  return rate < 1 ? Number(rate.toPrecision(3)) : round(rate)
}
