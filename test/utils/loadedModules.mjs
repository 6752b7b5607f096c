// Preloaded with `--import` in a child process: every module the process loads (its URL) is appended, a line
// each, to the file `$LOADED_MODULES_FILE`. A test reads which modules a command loaded.
import { register } from "node:module"

register("./loadedModules.hooks.mjs", import.meta.url)
