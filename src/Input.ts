/**
 * Every number a user gives (durations, limits, concurrency, sizes) is checked where it
 * enters. `NaN`, infinities, negative values, zero or fractions where they make no sense,
 * and strings that do not parse are refused with the path of the field; nothing falls back
 * to a default silently.
 *
 * Options given to a constructor or layer fail it with a {@link OptionError}; options given
 * per call fail the call with an `InvalidRequest` `ModelError` (see `AiError.invalidRequest`).
 *
 * @since 0.2.0
 */

// What a check found wrong, checks put together, and an issue raised as an error.
export {
  all,
  type Checked,
  getOrThrow,
  type Issue,
  issueOfError,
  OptionError,
  optional,
  orInvalidRequest,
  orOptionError,
  type OtherIssues,
  renamed,
  toInvalidRequest,
  toOptionError,
  underPath
} from "./input/issues.js"
// A caller's value as a message writes it.
export { kindOf, shown, thrownMessage, wholePrefix } from "./input/shown.js"
export {
  DurationFromInput,
  type DurationInput,
  type DurationOptions,
  duration,
  maxDurationMillis,
  maxRedisMillis,
  maxTimerMillis,
  optionalDuration,
  wholeMillis
} from "./input/durations.js"
export { int, number, positiveInt, type RangeOptions } from "./input/numbers.js"
// One value's kind or form, and a default for an absent field.
export { notABoolean, notAnObject, notOfKind, notOptions, oneOf, orDefault, routePath } from "./input/values.js"
// A caller's objects read once, into copies.
export { readFields, readOwnFields, snapshot } from "./input/fields.js"
// Unknown keys, with the known one each is likely a typo of.
export { misspeltKey, misspeltKeys, unknownFieldMessage, unknownKey } from "./input/keys.js"
// A Schema failure as an issue: config files, answers.
export { answerIssueOf, issueOf, knownFields, leafHook } from "./input/schema.js"
