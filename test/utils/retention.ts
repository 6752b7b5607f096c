/** Whether objects are collected: a full GC between turns, and which of some weak references still hold. */
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

/** Collects between turns: a WeakRef read keeps its target until the turn ends. */
export const collect = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) {
    await new Promise((resolve) => setImmediate(resolve))
    gc()
  }
  await new Promise((resolve) => setImmediate(resolve))
}

/** The names of the references whose targets are still alive. */
export const alive = (refs: ReadonlyArray<readonly [string, WeakRef<object>]>): ReadonlyArray<string> =>
  refs.filter(([, ref]) => ref.deref() !== undefined).map(([name]) => name)
