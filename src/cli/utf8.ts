/**
 * The bytes of a file the command line reads (a config, a prompts file) as text, refused
 * when they are not UTF-8: a file saved as Latin-1 or UTF-16 would otherwise be read with
 * U+FFFD in place of what it says, and sent on as if it were right.
 *
 * @since 0.3.0
 */
import { Result } from "effect"

/**
 * Decodes UTF-8 (a byte-order mark is dropped). Bytes that are not UTF-8 give the line
 * (1-based) of the first of them.
 *
 * @since 0.3.0
 * @category parsing
 */
export const decode = (bytes: Uint8Array): Result.Result<string, { readonly line: number }> => {
  try {
    return Result.succeed(new TextDecoder("utf-8", { fatal: true }).decode(bytes))
  } catch {
    let line = 1
    let start = 0
    for (let i = 0; i <= bytes.length; i++) {
      if (i < bytes.length && bytes[i] !== 0x0a) continue
      try {
        new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(start, i))
      } catch {
        return Result.fail({ line })
      }
      line++
      start = i + 1
    }
    return Result.fail({ line: 1 })
  }
}
