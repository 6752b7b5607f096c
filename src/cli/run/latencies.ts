/**
 * The item latencies of one side of `orchestra bench`: exact up to a bound, then a sketch of
 * constant size. Kept exactly, a side of 1,000,000 prompts and 100 rounds was 800 MB of
 * durations (and as much again to sort them); past the bound, the percentiles are read from
 * logarithmic buckets within 1% of the exact ones, and the mean and the maximum stay exact.
 *
 * @since 0.3.0
 */

/**
 * The most durations one side keeps exactly (8 bytes each: 32 MB): a bench of the default
 * 3 rounds over the most prompts a batch takes by default (1,000,000) stays exact.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxExactLatencies = 4_000_000

// Buckets (LOWEST * GAMMA^(i-1), LOWEST * GAMMA^i]: a value read as the bucket's middle
// 2 * LOWEST * GAMMA^i / (GAMMA + 1) is within (GAMMA - 1) / (GAMMA + 1) < 1% of it.
const GAMMA = 1.02
const LOG_GAMMA = Math.log(GAMMA)
/** Durations at or under a microsecond share the first bucket (read as the minimum). */
const LOWEST = 1e-3
/** Up to ~11 days (LOWEST * GAMMA^1400 ms); longer ones share the last bucket (read as the maximum). */
const BUCKETS = 1400

const bucketOf = (ms: number): number =>
  ms <= LOWEST ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(ms / LOWEST) / LOG_GAMMA))

const middleOf = (bucket: number): number => (2 * LOWEST * GAMMA ** bucket) / (GAMMA + 1)

/**
 * @since 0.3.0
 * @category models
 */
export interface Summary {
  readonly p50: number
  readonly p95: number
  readonly avg: number
  readonly max: number
  /** False once the side had more durations than it keeps exactly: p50 and p95 are then within 1%. */
  readonly exact: boolean
}

/**
 * @since 0.3.0
 * @category models
 */
export class Latencies {
  private values: Float64Array | undefined
  private buckets: Float64Array | undefined = undefined
  private n = 0
  private sum = 0
  private min = Number.POSITIVE_INFINITY
  private largest = 0

  constructor(readonly maxExact: number = maxExactLatencies) {
    this.values = new Float64Array(Math.min(1024, maxExact))
  }

  get count(): number {
    return this.n
  }

  /** Bytes the durations take now: at most `maxExact` values, then the sketch's buckets alone. */
  get bytes(): number {
    return (this.values?.byteLength ?? 0) + (this.buckets?.byteLength ?? 0)
  }

  addAll(durations: ArrayLike<number>): void {
    for (let i = 0; i < durations.length; i++) this.add(durations[i]!)
  }

  add(ms: number): void {
    this.sum += ms
    if (ms < this.min) this.min = ms
    if (ms > this.largest) this.largest = ms
    const values = this.values
    if (values === undefined) {
      this.buckets![bucketOf(ms)]! += 1
    } else if (this.n < values.length) {
      values[this.n] = ms
    } else if (values.length < this.maxExact) {
      const grown = new Float64Array(Math.min(this.maxExact, values.length * 2))
      grown.set(values)
      grown[this.n] = ms
      this.values = grown
    } else {
      const buckets = new Float64Array(BUCKETS)
      for (let i = 0; i < values.length; i++) buckets[bucketOf(values[i]!)]! += 1
      buckets[bucketOf(ms)]! += 1
      this.buckets = buckets
      this.values = undefined
    }
    this.n++
  }

  /** The q-quantile, interpolated between the closest ranks (0 with no duration). */
  quantile(q: number): number {
    if (this.n === 0) return 0
    const at = (this.n - 1) * q
    const low = Math.floor(at)
    const high = Math.min(low + 1, this.n - 1)
    const values = this.values
    if (values !== undefined) {
      // Sorted in place: a copy was a second array of every duration.
      const sorted = values.subarray(0, this.n).sort()
      return sorted[low]! + (sorted[high]! - sorted[low]!) * (at - low)
    }
    const a = this.rank(low)
    const b = high === low ? a : this.rank(high)
    return a + (b - a) * (at - low)
  }

  // The value of the rank-th smallest duration (from 0), read from its bucket.
  private rank(rank: number): number {
    if (rank === 0) return this.min
    if (rank === this.n - 1) return this.largest
    const buckets = this.buckets!
    let cumulative = 0
    for (let i = 0; i < BUCKETS; i++) {
      cumulative += buckets[i]!
      if (cumulative > rank) {
        const value = i === 0 ? this.min : i === BUCKETS - 1 ? this.largest : middleOf(i)
        return Math.min(this.largest, Math.max(this.min, value))
      }
    }
    return this.largest
  }

  summary(round: (n: number) => number): Summary {
    return {
      p50: round(this.quantile(0.5)),
      p95: round(this.quantile(0.95)),
      avg: round(this.n === 0 ? 0 : this.sum / this.n),
      max: round(this.largest),
      exact: this.values !== undefined
    }
  }
}
