import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Option, TestClock } from "effect"
import * as Limiter from "../../src/internal/limiter.js"

// Forked fibers start on the scheduler: yield until they have all reached the limiter.
const settle = (limiter: Limiter.Limiter, waiting: number) =>
  Effect.gen(function* () {
    for (let i = 0; i < 100 && limiter.waiting() < waiting; i++) yield* Effect.yieldNow()
  })

describe("Limiter", () => {
  it.effect("takes a free permit synchronously and gives it back on close", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(2)
      const a = limiter.take()
      const b = limiter.take()
      const c = limiter.take()
      assert.isTrue(a.granted && b.granted)
      assert.isFalse(c.granted)
      assert.strictEqual(limiter.available(), 0)
      assert.strictEqual(limiter.waiting(), 1)
      a.close()
      // handed straight to the queued ticket: the free count never goes up
      assert.isTrue(c.granted)
      assert.strictEqual(limiter.available(), 0)
      assert.strictEqual(limiter.waiting(), 0)
      a.close()
      assert.strictEqual(limiter.available(), 0, "closing twice releases once")
      b.close()
      c.close()
      assert.strictEqual(limiter.available(), 2)
    })
  )

  it.effect("2,500 queued waiters start in FIFO order, one woken per release, never more than the permits", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(3)
      const n = 2_500
      const gate = yield* Deferred.make<void>()
      const started: Array<number> = []
      const waitingAtStart: Array<number> = []
      let running = 0
      let peak = 0
      const fibers = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) =>
          Effect.fork(
            limiter.withPermit(
              Effect.suspend(() => {
                started.push(i)
                waitingAtStart.push(limiter.waiting())
                running++
                peak = Math.max(peak, running)
                return Effect.zipRight(Deferred.await(gate), Effect.yieldNow())
              }).pipe(Effect.ensuring(Effect.sync(() => running--)))
            )
          )
      )
      yield* settle(limiter, n - 3)
      assert.strictEqual(limiter.waiting(), n - 3)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.joinAll(fibers)
      assert.deepStrictEqual(
        started,
        Array.from({ length: n }, (_, i) => i)
      )
      // Each release dequeues exactly one waiter: when waiter i runs, at most the 3 permits'
      // releases have dequeued ahead of it, so between n-3-i and n-1-i are still queued.
      for (let i = 3; i < n; i++) {
        const w = waitingAtStart[i]!
        assert.isTrue(w <= n - 1 - i && w >= n - 3 - i, `waiter ${i} saw ${w} queued`)
      }
      assert.strictEqual(peak, 3)
      assert.strictEqual(limiter.available(), 3)
      assert.strictEqual(limiter.waiting(), 0)
    })
  )

  it.effect("permits held for 10 ms: 30 waiters on 3 permits finish in exactly 100 ms of TestClock time", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(3)
      const fiber = yield* Effect.fork(
        Effect.forEach(
          Array.from({ length: 30 }, (_, i) => i),
          () => limiter.withPermit(Effect.sleep("10 millis")),
          { concurrency: "unbounded", discard: true }
        )
      )
      yield* TestClock.adjust("99 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(fiber)
      assert.strictEqual(limiter.available(), 3)
    })
  )

  it.effect("an interrupted waiter leaves the queue; the others keep their order", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(1)
      const gate = yield* Deferred.make<void>()
      const order: Array<string> = []
      const holder = yield* Effect.fork(limiter.withPermit(Deferred.await(gate)))
      const waiter = (name: string) => Effect.fork(limiter.withPermit(Effect.sync(() => order.push(name))))
      const a = yield* waiter("a")
      const b = yield* waiter("b")
      const c = yield* waiter("c")
      yield* settle(limiter, 3)
      assert.strictEqual(limiter.waiting(), 3)
      yield* Fiber.interrupt(b)
      assert.strictEqual(limiter.waiting(), 2)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(a)
      yield* Fiber.join(c)
      assert.deepStrictEqual(order, ["a", "c"])
      assert.strictEqual(limiter.available(), 1)
    })
  )

  it.effect("a waiter interrupted right after being handed the permit gives it back", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(1)
      for (const interruptFirst of [false, true]) {
        const holder = limiter.take()
        let ran = false
        const waiter = yield* Effect.fork(limiter.withPermit(Effect.sync(() => (ran = true))))
        yield* settle(limiter, 1)
        assert.strictEqual(limiter.waiting(), 1)
        // Both in one synchronous step: the hand-off and the interruption race inside the fiber's mailbox.
        yield* Effect.sync(() => {
          if (interruptFirst) waiter.unsafeInterruptAsFork(waiter.id())
          holder.close()
          if (!interruptFirst) waiter.unsafeInterruptAsFork(waiter.id())
        })
        const exit = yield* Fiber.await(waiter)
        assert.isTrue(Exit.isInterrupted(exit), `interruptFirst=${interruptFirst}`)
        assert.isFalse(ran)
        assert.strictEqual(limiter.available(), 1, `permit given back (interruptFirst=${interruptFirst})`)
        assert.strictEqual(limiter.waiting(), 0)
      }
    })
  )

  it.effect("a ticket owner that outlives the waiting fiber decides: close gives back a handed-over permit", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(1)
      const holder = limiter.take()
      const ticket = limiter.take()
      const waiting = yield* Effect.fork(ticket.await)
      yield* settle(limiter, 1)
      holder.close()
      assert.isTrue(ticket.granted)
      yield* Fiber.interrupt(waiting)
      assert.strictEqual(limiter.available(), 0, "still owned by the ticket")
      ticket.close()
      assert.strictEqual(limiter.available(), 1)
    })
  )

  it.effect("a failure or defect inside withPermit releases the permit", () =>
    Effect.gen(function* () {
      const limiter = yield* Limiter.make(1)
      const failed = yield* Effect.exit(limiter.withPermit(Effect.fail("boom")))
      assert.isTrue(Exit.isFailure(failed))
      const died = yield* Effect.exit(limiter.withPermit(Effect.dieMessage("bug")))
      assert.isTrue(Exit.isFailure(died))
      assert.strictEqual(limiter.available(), 1)
      assert.strictEqual(yield* limiter.withPermit(Effect.succeed(7)), 7)
    })
  )
})
