/**
 * `orchestra serve`: the OpenAI-compatible gateway (`Gateway.ts`) over the config's
 * providers and domains, with the server, keys, admin routes and Redis sharing of a
 * gateway file (`orchestra.gateway.json`, see `docs/gateway.md`). Runs until SIGTERM or
 * SIGINT, then drains. The handler is `gateway/command.ts`.
 *
 * @since 0.2.0
 */
import { Command, Flag } from "effect/cli"
import { config, integerFlag, json, lazy } from "./Common.js"

/**
 * @since 0.2.0
 * @category flags
 */
export const flags = {
  gateway: Flag.String("gateway").pipe(
    Flag.withDescription(
      "Gateway file: server, keys, admin, Redis (default: $ORCHESTRA_GATEWAY, else ./orchestra.gateway.json if present, else an open gateway on 127.0.0.1:4000)"
    ),
    Flag.optional
  ),
  host: Flag.String("host").pipe(
    Flag.withDescription("Listen on this address (overrides the file's server.host; default 127.0.0.1)"),
    Flag.optional
  ),
  // Read as text (`integerOf`): effect/cli's own integer parsing answers `--port 1.5` with the help page.
  port: integerFlag("port").pipe(
    Flag.withDescription(
      "Listen on this port, at most 65535; 0 for any free one (overrides the file's server.port; default 4000)"
    ),
    Flag.optional
  ),
  json,
  config
}

/**
 * @since 0.2.0
 * @category models
 */
export type Args = Command.Command.Config.Infer<typeof flags>

/**
 * @since 0.2.0
 * @category commands
 */
export const command = Command.make(
  "serve",
  flags,
  lazy(() => import("../gateway/command.js"))
).pipe(
  Command.withDescription(
    "Serve the OpenAI-compatible gateway (chat, streams, embeddings, models, /metrics) until SIGTERM, then drain"
  )
)
