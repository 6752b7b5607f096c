/**
 * Reading `orchestra`'s command line before effect/cli parses it: where the command is, the
 * `--json` and `--wizard` it asks for (read as effect/cli reads a boolean flag), the common
 * flags given before the command moved after it, and a text flag's value that starts with a
 * dash joined to its flag.
 *
 * @since 0.3.0
 */

/** The flags that take text (a prompt, a name, a path), by every name they have: the long one for each. */
const textFlags: Readonly<Record<string, string>> = {
  "-p": "--prompt",
  "--prompt": "--prompt",
  "--prompts": "--prompts",
  "-f": "--file",
  "--file": "--file",
  "-d": "--domain",
  "--domain": "--domain",
  "--fallback": "--fallback",
  "--config": "--config",
  "--gateway": "--gateway",
  "--host": "--host"
}

const flagName = /^--?[A-Za-z][\w-]*$/

/** The short flags that take a value, by their long name: `-phello` is `--prompt=hello`, as getopt reads it. */
const shortValueFlags: Readonly<Record<string, string>> = {
  p: "--prompt",
  f: "--file",
  d: "--domain",
  c: "--concurrency"
}

// A short flag with its value in the same word (`-phello`, `-c3`); `-p=hello` effect/cli reads itself.
const gluedShort = /^-([A-Za-z])([^=][\s\S]*)$/

/**
 * The command line with a text flag's value that starts with a dash (`-p "-5 degrees in F?"`,
 * `--prompt "- a list item"`) joined to its flag (`--prompt=-5 degrees in F?`): effect/cli
 * would read it as more flags and refuse them, where getopt takes it as the value. A value
 * shaped like a flag name (`-p --json`) is left alone: that is a missing value. A short flag
 * glued to its value (`-phello`, `-c3`) is the flag and its value too (`--prompt=hello`), as getopt
 * reads it: effect/cli would read `-phi` as `-p -h -i`, and answer with the help page.
 *
 * @since 0.3.0
 * @category run
 */
export const joinDashValues = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const out: Array<string> = []
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!
    if (token === "--") return [...out, ...argv.slice(i)]
    // effect/cli would read `-phi` as `-p -h -i`: the help page, exit 0, and nothing run.
    const glued = gluedShort.exec(token)
    const long = glued === null ? undefined : shortValueFlags[glued[1]!]
    if (long !== undefined) {
      out.push(`${long}=${glued![2]}`)
      continue
    }
    const flag = Object.hasOwn(textFlags, token) ? textFlags[token] : undefined
    const next = argv[i + 1]
    if (flag !== undefined && next?.startsWith("-") && next !== "--" && !flagName.test(next)) {
      out.push(`${flag}=${next}`)
      i++
    } else out.push(token)
  }
  return out
}

/**
 * The command line up to `--`: what follows is values, never flags.
 *
 * @since 0.3.0
 * @category run
 */
export const flagsOf = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const end = argv.indexOf("--")
  return end < 0 ? argv : argv.slice(0, end)
}

// The values effect/cli reads a boolean flag's value as (`--json=yes`, `--json no`).
const truthy = new Set(["true", "1", "y", "yes", "on"])
const booleanLiterals = new Set([...truthy, "false", "0", "n", "no", "off"])

/**
 * Whether the command line asks for `--wizard`, read as effect/cli reads a boolean flag
 * (`--wizard`, `--wizard=yes`, `--wizard true`; not `--wizard=false`, `--wizard no` nor
 * `--no-wizard`), and the command line without it: effect/cli's own wizard, which asks on
 * stdout and takes `--wizard=false` for a yes, never runs. A value it would refuse
 * (`--wizard=maybe`) is left for it to say so.
 *
 * @since 0.3.0
 * @category run
 */
export const wizardOf = (
  argv: ReadonlyArray<string>
): { readonly asked: boolean; readonly rest: ReadonlyArray<string> } => {
  const flags = flagsOf(argv)
  const rest: Array<string> = []
  let asked = false
  for (let i = 0; i < flags.length; i++) {
    const token = flags[i]!
    const value = token.startsWith("--wizard=") ? token.slice(9) : undefined
    if (token === "--no-wizard" || (value !== undefined && booleanLiterals.has(value))) {
      asked ||= value !== undefined && truthy.has(value)
    } else if (token === "--wizard") {
      const next = flags[i + 1]
      if (next !== undefined && booleanLiterals.has(next)) {
        asked ||= truthy.has(next)
        i++
      } else asked = true
    } else rest.push(token)
  }
  return { asked, rest: [...rest, ...argv.slice(flags.length)] }
}

/**
 * Whether the command line asks for `--json` as effect/cli reads a boolean flag, before any `--`:
 * `--json`, `--json=yes`, `--json true`; not `--json false` nor `--no-json`.
 *
 * @since 0.3.0
 * @category run
 */
export const asksJson = (argv: ReadonlyArray<string>): boolean =>
  flagsOf(argv).some((token, i, flags) => {
    if (token.startsWith("--json=")) return truthy.has(token.slice(7))
    if (token !== "--json") return false
    const next = flags[i + 1]
    return next === undefined || !booleanLiterals.has(next) || truthy.has(next)
  })

/** Flags that take a value, before the command: every command's `--config`, effect/cli's own. */
const valueFlags = new Set(["--config", "--log-level", "--completions"])

/** Whether a flag before the command takes the next token as its value, as effect/cli reads it. */
const takesNext = (token: string, next: string | undefined): boolean =>
  next !== undefined &&
  !token.includes("=") &&
  ((valueFlags.has(token) && !next.startsWith("-")) || (token === "--json" && booleanLiterals.has(next)))

/**
 * Where the command's name is in a command line: the first token that is no flag nor a flag's
 * value (`orchestra --config test.json test` names `test`, not the file), or -1.
 *
 * @since 0.3.0
 * @category run
 */
export const commandAt = (argv: ReadonlyArray<string>): number => {
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!
    if (token === "--") return -1
    if (!token.startsWith("-") || token === "-") return i
    if (takesNext(token, argv[i + 1])) i++
  }
  return -1
}

/** Whether a token before the command is one of every command's flags, `--json` or `--config`. */
const isCommonFlag = (token: string): boolean => /^--(?:no-json$|json(?:$|=)|config(?:$|=))/.test(token)

/**
 * The command line with `--json` and `--config` given before the command (`orchestra --json
 * test -p hi`) moved after it: every command takes them, and effect/cli would refuse them as
 * flags of `orchestra` itself (and take the value of `--config` for a mistyped command). With
 * no command at all, they are dropped: the error is the missing command (still as JSON under
 * `--json`).
 *
 * @since 0.3.0
 * @category run
 */
export const commandFirst = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const at = commandAt(argv)
  const end = at < 0 ? (argv.includes("--") ? argv.indexOf("--") : argv.length) : at
  const before: Array<string> = []
  const common: Array<string> = []
  for (let i = 0; i < end; i++) {
    const token = argv[i]!
    const into = isCommonFlag(token) ? common : before
    into.push(token)
    // Its value goes with it, as commandAt read it.
    if (i + 1 < end && takesNext(token, argv[i + 1])) into.push(argv[++i]!)
  }
  if (common.length === 0) return argv
  return at < 0 ? [...before, ...argv.slice(end)] : [...before, argv[at]!, ...common, ...argv.slice(at + 1)]
}
