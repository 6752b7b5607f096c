/**
 * Shared helpers of the benchmarks: medians, aligned tables, the repository's root.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

/**
 * The repository's root: the first folder above `from` (a module's `import.meta.url`) with a
 * package.json. A bench runs from `bench/` under tsx and from `.cache/bench/` once bundled.
 */
export const repoRoot = (from: string): string => {
  let dir = dirname(fileURLToPath(from))
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(from)}`)
    dir = parent
  }
  return dir
}
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0
}

export const printTable = (
  title: string,
  header: ReadonlyArray<string>,
  rows: ReadonlyArray<ReadonlyArray<string>>
) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`
  console.log(`\n${title}\n`)
  console.log(line(header))
  console.log(`|${widths.map((w, i) => (i === 0 ? ` ${"-".repeat(w)} ` : ` ${"-".repeat(w - 1)}: `)).join("|")}|`)
  for (const row of rows) console.log(line(row))
}

/** Wall time and CPU time (user + system, this process) of one run, in milliseconds. */
export const measure = async (run: () => Promise<unknown>): Promise<{ wallMs: number; cpuMs: number }> => {
  const cpu0 = process.cpuUsage()
  const start = performance.now()
  await run()
  const wallMs = performance.now() - start
  const cpu = process.cpuUsage(cpu0)
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000 }
}
