// Preloaded with `--import` in a child process: the first import of an effect package (`effect`,
// `@effect/...`) is held until `$HOLD_IMPORT_DIR/release` exists, and `$HOLD_IMPORT_DIR/holding` says
// it is held. A test signals the process there: while its modules are still loading.
import { register } from "node:module"

register("./holdImport.hooks.mjs", import.meta.url)
