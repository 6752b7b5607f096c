// The module hooks of holdImport.mjs (they run on the loader's thread).
import { existsSync, watch, writeFileSync } from "node:fs"
import * as NodePath from "node:path"

const dir = process.env.HOLD_IMPORT_DIR
let held = false

const released = () =>
  new Promise((resolve) => {
    const watcher = watch(dir, () => {
      if (existsSync(NodePath.join(dir, "release"))) {
        watcher.close()
        resolve()
      }
    })
    if (existsSync(NodePath.join(dir, "release"))) {
      watcher.close()
      resolve()
    }
  })

export async function resolve(specifier, context, next) {
  if (!held && dir !== undefined && /^(?:effect|@effect\/)/.test(specifier)) {
    held = true
    writeFileSync(NodePath.join(dir, "holding"), specifier)
    await released()
  }
  return next(specifier, context)
}
