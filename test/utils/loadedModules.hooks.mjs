// The module hooks of loadedModules.mjs (they run on the loader's thread).
import { appendFileSync } from "node:fs"

const file = process.env.LOADED_MODULES_FILE

export async function load(url, context, next) {
  if (file !== undefined) appendFileSync(file, `${url}\n`)
  return next(url, context)
}
