/**
 * Log lines captured in memory (`"<level>: <message>"`), with the layer that installs the logger.
 */
import { Effect, Logger } from "effect"

export const captureLogs = Effect.sync(() => {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    lines.push(`${logLevel}: ${(Array.isArray(message) ? message : [message]).map(String).join(" ")}`)
  })
  return { lines, layer: Logger.layer([logger]) }
})
